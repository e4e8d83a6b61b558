//! Comparisons and booleans (exact tests of quantized integers), `Where`, arg-max/min, top-k, and gathers at
//! computed indices from constant tables.

use tract_onnx::prelude::*;
use verity_engine::ir::{broadcast_shapes, numel, Op, ReduceKind};

use super::along;
use crate::fgraph::{FOp, Step};
use crate::import::{unsupported, Builder, Ref};
use crate::CompileError;

/// The largest `k` a `TopK` is lowered for (each round is a handful of element-wise ops over the input).
pub const MAX_TOP_K: i64 = 64;

/// The longest constant axis a computed index selects from by a one-hot product.
pub const ONE_HOT_GATHER: u32 = 256;

impl Builder<'_> {
    /// `Step(t)` of `a − b`: the comparisons (`LT`, `GT`, …) and `Xor`.
    pub(in crate::import) fn test_of_difference(
        &mut self,
        node: &TypedNode,
        t: Step,
        a: Ref,
        b: Ref,
        out_shape: Vec<u32>,
    ) -> Ref {
        let origin = node.op.name().to_string();
        let d = self.op(
            format!("{}.difference", node.name),
            &origin,
            FOp::Canon(Op::Sub),
            vec![a, b],
            out_shape.clone(),
        );
        self.op(node.name.clone(), &origin, FOp::Step(t), vec![d], out_shape)
    }

    /// `1 − x` on a boolean.
    pub(in crate::import) fn not(&mut self, node: &TypedNode, x: Ref, out_shape: Vec<u32>) -> Ref {
        let one = self.int_const(vec![], vec![1.0]);
        self.op(
            node.name.clone(),
            &node.op.name(),
            FOp::Canon(Op::Sub),
            vec![one, x],
            out_shape,
        )
    }

    /// An all-zero integer tensor (`IsNaN`, `IsInf`: quantized values are always finite).
    pub(in crate::import) fn zeros(&mut self, node: &TypedNode, out_shape: Vec<u32>) -> Ref {
        let zero = self.int_const(vec![], vec![0.0]);
        self.op(
            node.name.clone(),
            &node.op.name(),
            FOp::Canon(Op::Broadcast),
            vec![zero],
            out_shape,
        )
    }

    /// `Where(c, t, f)` = `f + c · (t − f)`.
    pub(in crate::import) fn select(
        &mut self,
        node: &TypedNode,
        ins: &[Ref],
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let [c, t, f] = ins else {
            return Err(unsupported(node, "Where needs three inputs"));
        };
        let origin = node.op.name().to_string();
        let tf = broadcast_shapes(&self.shape_of(*t), &self.shape_of(*f))
            .ok_or_else(|| unsupported(node, "operands do not broadcast"))?;
        let d = self.op(
            format!("{}.difference", node.name),
            &origin,
            FOp::Canon(Op::Sub),
            vec![*t, *f],
            tf,
        );
        let m = self.op(
            format!("{}.chosen", node.name),
            &origin,
            FOp::Canon(Op::Mul),
            vec![*c, d],
            out_shape.clone(),
        );
        Ok(self.op(
            node.name.clone(),
            &origin,
            FOp::Canon(Op::Add),
            vec![*f, m],
            out_shape,
        ))
    }

    /// `ArgMax`/`ArgMin` along one axis (kept as size 1), first or last index among ties: the extreme,
    /// a 0/1 tensor of the elements equal to it, times a ramp that makes the wanted index the largest,
    /// a maximum, and the ramp undone — all integer-exact.
    pub(in crate::import) fn arg_extreme(
        &mut self,
        node: &TypedNode,
        x: Ref,
        axes: &[u32],
        max: bool,
        last: bool,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let [axis] = axes else {
            return Err(unsupported(node, "arg-max/min over several axes"));
        };
        let origin = node.op.name().to_string();
        Ok(self.arg_extreme_named(&node.name, &origin, x, *axis, max, last, out_shape))
    }

    #[allow(clippy::too_many_arguments)]
    fn arg_extreme_named(
        &mut self,
        name: &str,
        origin: &str,
        x: Ref,
        axis: u32,
        max: bool,
        last: bool,
        out_shape: Vec<u32>,
    ) -> Ref {
        let shape = self.shape_of(x);
        let (rank, a) = (shape.len(), axis as usize);
        let n = shape[a];
        let kind = if max {
            ReduceKind::Max
        } else {
            ReduceKind::Min
        };
        let ext = self.op(
            format!("{name}.extreme"),
            origin,
            FOp::Canon(Op::Reduce {
                kind,
                axes: vec![axis],
            }),
            vec![x],
            out_shape.clone(),
        );
        let d = self.op(
            format!("{name}.difference"),
            origin,
            FOp::Canon(Op::Sub),
            vec![x, ext],
            shape.clone(),
        );
        let eq = self.op(
            format!("{name}.is_extreme"),
            origin,
            FOp::Step(Step::Zero),
            vec![d],
            shape.clone(),
        );
        // first index: weight n − j (largest at the first tie); last: j + 1
        let ramp: Vec<f64> = (0..n)
            .map(|j| if last { j as f64 + 1.0 } else { (n - j) as f64 })
            .collect();
        let ramp = self.int_const(along(rank, a, n), ramp);
        let w = self.op(
            format!("{name}.ranked"),
            origin,
            FOp::Canon(Op::Mul),
            vec![eq, ramp],
            shape,
        );
        let best = self.op(
            format!("{name}.best"),
            origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Max,
                axes: vec![axis],
            }),
            vec![w],
            out_shape.clone(),
        );
        if last {
            let one = self.int_const(vec![], vec![1.0]);
            self.op(
                name.to_string(),
                origin,
                FOp::Canon(Op::Sub),
                vec![best, one],
                out_shape,
            )
        } else {
            let nn = self.int_const(vec![], vec![n as f64]);
            self.op(
                name.to_string(),
                origin,
                FOp::Canon(Op::Sub),
                vec![nn, best],
                out_shape,
            )
        }
    }

    /// `TopK` with a constant `k` (at most [`MAX_TOP_K`]): `k` rounds of "the first maximum, its
    /// index, then that element replaced by something below the row's minimum", the rounds' values and
    /// indices concatenated — ties go to the lower index, as ONNX says. `largest = false` runs on `−x`.
    pub(in crate::import) fn top_k(
        &mut self,
        node: &TypedNode,
        axis: usize,
        largest: bool,
        x: Ref,
        k: Ref,
    ) -> Result<(Ref, Ref), CompileError> {
        let origin = node.op.name().to_string();
        let name = &node.name;
        let k = self
            .fold(k)
            .and_then(|c| c.data.first())
            .ok_or_else(|| unsupported(node, "k must be a constant"))? as i64;
        let shape = self.shape_of(x);
        let n = shape[axis] as i64;
        if k < 1 || k > n || k > MAX_TOP_K {
            return Err(unsupported(
                node,
                format!("k = {k} (1 ≤ k ≤ min(axis length {n}, {MAX_TOP_K}))"),
            ));
        }
        let rank = shape.len();
        let mut red = shape.clone();
        red[axis] = 1;
        let mut cur = if largest {
            x
        } else {
            let m1 = self.int_const(vec![], vec![-1.0]);
            self.op(
                format!("{name}.negated"),
                &origin,
                FOp::Canon(Op::Mul),
                vec![x, m1],
                shape.clone(),
            )
        };
        // below every element: the row's minimum minus one
        let min = self.op(
            format!("{name}.min"),
            &origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Min,
                axes: vec![axis as u32],
            }),
            vec![cur],
            red.clone(),
        );
        let one = self.int_const(vec![], vec![1.0]);
        let floor = self.op(
            format!("{name}.floor"),
            &origin,
            FOp::Canon(Op::Sub),
            vec![min, one],
            red.clone(),
        );
        let positions = self.int_const(
            along(rank, axis, n as u32),
            (0..n).map(|j| j as f64).collect(),
        );
        let (mut values, mut indices) = (vec![], vec![]);
        for round in 0..k {
            let tag = format!("{name}.{round}");
            let v = self.op(
                format!("{tag}.value"),
                &origin,
                FOp::Canon(Op::Reduce {
                    kind: ReduceKind::Max,
                    axes: vec![axis as u32],
                }),
                vec![cur],
                red.clone(),
            );
            let i =
                self.arg_extreme_named(&tag, &origin, cur, axis as u32, true, false, red.clone());
            values.push(v);
            indices.push(i);
            if round + 1 < k {
                // cur = picked ? floor : cur
                let d = self.op(
                    format!("{tag}.offset"),
                    &origin,
                    FOp::Canon(Op::Sub),
                    vec![positions, i],
                    shape.clone(),
                );
                let picked = self.op(
                    format!("{tag}.picked"),
                    &origin,
                    FOp::Step(Step::Zero),
                    vec![d],
                    shape.clone(),
                );
                let gap = self.op(
                    format!("{tag}.gap"),
                    &origin,
                    FOp::Canon(Op::Sub),
                    vec![floor, cur],
                    shape.clone(),
                );
                let drop = self.op(
                    format!("{tag}.drop"),
                    &origin,
                    FOp::Canon(Op::Mul),
                    vec![picked, gap],
                    shape.clone(),
                );
                cur = self.op(
                    format!("{tag}.rest"),
                    &origin,
                    FOp::Canon(Op::Add),
                    vec![cur, drop],
                    shape.clone(),
                );
            }
        }
        let mut out = shape.clone();
        out[axis] = k as u32;
        let cat = |b: &mut Self, parts: Vec<Ref>, what: &str| {
            if parts.len() == 1 {
                parts[0]
            } else {
                b.op(
                    format!("{name}.{what}"),
                    &origin,
                    FOp::Canon(Op::Concat { axis: axis as u32 }),
                    parts,
                    out.clone(),
                )
            }
        };
        let mut v = cat(self, values, "values");
        if !largest {
            let m1 = self.int_const(vec![], vec![-1.0]);
            v = self.op(
                format!("{name}.values_back"),
                &origin,
                FOp::Canon(Op::Mul),
                vec![v, m1],
                out.clone(),
            );
        }
        let i = cat(self, indices, "indices");
        Ok((v, i))
    }

    /// A `Gather` from a constant table (axis length at most [`ONE_HOT_GATHER`]) at indices computed
    /// inside the model (a label from an arg-max, a class from a lookup) as a one-hot product:
    /// `onehot[…, j] = [index = j]`, contracted with the table — integer-exact, and made of ops the
    /// prover proves (a computed index into a table is not). `None` when the gather stays a `Gather`.
    pub(in crate::import) fn one_hot_gather(
        &mut self,
        node: &TypedNode,
        data: Ref,
        idx: Ref,
        axis: usize,
        out_shape: &[u32],
    ) -> Option<Ref> {
        if !matches!(idx, Ref::N(_)) || self.const_data(data).is_none() {
            return None;
        }
        let ds = self.shape_of(data);
        let is = self.shape_of(idx);
        let n = ds[axis];
        if n > ONE_HOT_GATHER || ds.len() + is.len() > 12 || numel(&is) * n as u64 > 1 << 24 {
            return None;
        }
        let origin = node.op.name().to_string();
        let name = &node.name;
        let i = self.wrapped_index(name, &origin, idx, n, &is);
        let mut col = is.clone();
        col.push(1);
        let i = self.op(
            format!("{name}.column"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![i],
            col,
        );
        let positions = self.int_const(vec![n], (0..n).map(|j| j as f64).collect());
        let mut hot_shape = is.clone();
        hot_shape.push(n);
        let d = self.op(
            format!("{name}.offset"),
            &origin,
            FOp::Canon(Op::Sub),
            vec![i, positions],
            hot_shape.clone(),
        );
        let hot = self.op(
            format!("{name}.one_hot"),
            &origin,
            FOp::Step(Step::Zero),
            vec![d],
            hot_shape,
        );
        // labels: the table's axes 0..r (axis `axis` is the summed one), the indices' axes r..
        let r = ds.len() as u8;
        let mut a: Vec<u8> = (r..r + is.len() as u8).collect();
        a.push(axis as u8);
        let b: Vec<u8> = (0..r).collect();
        let mut out: Vec<u8> = (0..axis as u8).collect();
        out.extend(r..r + is.len() as u8);
        out.extend(axis as u8 + 1..r);
        Some(self.op(
            name.clone(),
            &origin,
            FOp::Canon(Op::EinSum { a, b, out }),
            vec![hot, data],
            out_shape.to_vec(),
        ))
    }

    /// `index + n · (index < 0)`: integer indices into an axis of length `n`, negative ones counted
    /// from its end (exact; a test and integer arithmetic).
    pub(in crate::import) fn wrapped_index(
        &mut self,
        name: &str,
        origin: &str,
        idx: Ref,
        n: u32,
        shape: &[u32],
    ) -> Ref {
        let zero = self.int_const(vec![], vec![0.0]);
        let neg = self.op(
            format!("{name}.negated"),
            origin,
            FOp::Canon(Op::Sub),
            vec![zero, idx],
            shape.to_vec(),
        );
        let neg = self.op(
            format!("{name}.is_negative"),
            origin,
            FOp::Step(Step::Positive),
            vec![neg],
            shape.to_vec(),
        );
        let nn = self.int_const(vec![], vec![n as f64]);
        let wrap = self.op(
            format!("{name}.wrap"),
            origin,
            FOp::Canon(Op::Mul),
            vec![neg, nn],
            shape.to_vec(),
        );
        self.op(
            format!("{name}.index"),
            origin,
            FOp::Canon(Op::Add),
            vec![idx, wrap],
            shape.to_vec(),
        )
    }
}
