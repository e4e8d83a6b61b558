//! Lowerings of the op families real exports use beyond arithmetic and contractions — comparisons and
//! boolean masks, `Where`, arg-max/min, padding, tiling, cumulative sums, element gathers, resizing,
//! transposed convolutions, local response normalization, triangular masks — each written with ops the
//! canonical format already has, so no new canonical op (and no new case in the executors, `onestep` or
//! the prover) is needed. Booleans are integers 0/1 at scale 0. See `docs/spec/canonical.md`, "Lowerings".

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{CumSum, GatherElements, Pad, PadMode, Tile, Trilu};
use tract_onnx::tract_core::ops::cnn::{Deconv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::nn::{NearestUpsample, Resize};
use verity_engine::ir::{broadcast_shapes, numel, Op, ReduceKind, Window};

use super::{unsupported, Builder, Ref};
use crate::fgraph::{FOp, Func, Step};
use crate::CompileError;

/// Float constants at least this large (or infinite) are the "minus infinity" of attention masks
/// (`finfo(float32).min`, `-inf`); they are clamped to [`MASK_FILL`] at import.
pub const MASK_MAGNITUDE: f64 = 1e30;
/// What a mask fill is clamped to: far below any attention logit (a softmax's table ends 24 below the
/// row's maximum), small enough that a sum of it and a logit keeps 12 fractional bits. A `Max`/`Min`
/// against a fill (a clip at `finfo.min`) is no bound at all.
pub const MASK_FILL: f64 = 1024.0;

/// Clamp a float constant's mask fills (see [`MASK_MAGNITUDE`]); whether it held any.
pub fn clamp_mask_fills(data: &mut [f64]) -> bool {
    let mut any = false;
    for v in data {
        if !v.is_nan() && v.abs() >= MASK_MAGNITUDE {
            *v = MASK_FILL.copysign(*v);
            any = true;
        }
    }
    any
}

/// Row-major strides of a shape.
fn strides_of(shape: &[u32]) -> Vec<u64> {
    let mut st = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1] as u64;
    }
    st
}

/// A shape of ones except `n` at `axis`.
fn along(rank: usize, axis: usize, n: u32) -> Vec<u32> {
    let mut s = vec![1; rank];
    s[axis] = n;
    s
}

impl Builder<'_> {
    fn int_const(&mut self, shape: Vec<u32>, data: Vec<f64>) -> Ref {
        self.konst(shape, data, true)
    }

    fn op(&mut self, name: String, origin: &str, op: FOp, ins: Vec<Ref>, shape: Vec<u32>) -> Ref {
        self.push(name, origin, op, ins, shape)
    }

    /// `Step(t)` of `a − b`: the comparisons (`LT`, `GT`, …) and `Xor`.
    pub(super) fn test_of_difference(
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
    pub(super) fn not(&mut self, node: &TypedNode, x: Ref, out_shape: Vec<u32>) -> Ref {
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
    pub(super) fn zeros(&mut self, node: &TypedNode, out_shape: Vec<u32>) -> Ref {
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
    pub(super) fn select(
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
    pub(super) fn arg_extreme(
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
        let axis = &axis;
        let origin = origin.to_string();
        let name = &name.to_string();
        let shape = self.shape_of(x);
        let (rank, a) = (shape.len(), *axis as usize);
        let n = shape[a];
        let kind = if max {
            ReduceKind::Max
        } else {
            ReduceKind::Min
        };
        let ext = self.op(
            format!("{name}.extreme"),
            &origin,
            FOp::Canon(Op::Reduce {
                kind,
                axes: vec![*axis],
            }),
            vec![x],
            out_shape.clone(),
        );
        let d = self.op(
            format!("{name}.difference"),
            &origin,
            FOp::Canon(Op::Sub),
            vec![x, ext],
            shape.clone(),
        );
        let eq = self.op(
            format!("{name}.is_extreme"),
            &origin,
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
            &origin,
            FOp::Canon(Op::Mul),
            vec![eq, ramp],
            shape,
        );
        let best = self.op(
            format!("{name}.best"),
            &origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Max,
                axes: vec![*axis],
            }),
            vec![w],
            out_shape.clone(),
        );
        if last {
            let one = self.int_const(vec![], vec![1.0]);
            self.op(
                name.to_string(),
                &origin,
                FOp::Canon(Op::Sub),
                vec![best, one],
                out_shape,
            )
        } else {
            let nn = self.int_const(vec![], vec![n as f64]);
            self.op(
                name.to_string(),
                &origin,
                FOp::Canon(Op::Sub),
                vec![nn, best],
                out_shape,
            )
        }
    }

    /// `Pad` (constant, reflect, edge): slices of the input (or constants) concatenated around it, one
    /// axis at a time.
    pub(super) fn pad(
        &mut self,
        node: &TypedNode,
        p: &Pad,
        x: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let int = self.is_int_ref(x);
        let fill = match &p.mode {
            PadMode::Constant(v) => {
                let v = super::tensor_f64(v).map_err(|e| unsupported(node, e))?;
                let mut v = vec![v.first().copied().unwrap_or(0.0)];
                let _ = clamp_mask_fills(&mut v);
                Some(v[0])
            }
            _ => None,
        };
        let mut cur = x;
        for (axis, &(before, after)) in p.pads.iter().enumerate() {
            if before == 0 && after == 0 {
                continue;
            }
            let shape = self.shape_of(cur);
            let n = shape[axis] as usize;
            let mut parts = Vec::new();
            let slab =
                |b: &mut Self, count: usize, at_end: bool| -> Result<Vec<Ref>, CompileError> {
                    if count == 0 {
                        return Ok(vec![]);
                    }
                    let mut s = shape.clone();
                    s[axis] = count as u32;
                    if let Some(v) = fill {
                        let c = b.konst(
                            s.clone(),
                            vec![v; numel(&s) as usize],
                            int && v.fract() == 0.0,
                        );
                        return Ok(vec![c]);
                    }
                    // reflect mirrors without the edge element; edge repeats it
                    let reflect = matches!(p.mode, PadMode::Reflect);
                    if n == 0 || (reflect && count >= n) {
                        return Err(unsupported(node, "padding wider than the reflected axis"));
                    }
                    let one = |b: &mut Self, i: usize| -> Ref {
                        let mut s1 = shape.clone();
                        s1[axis] = 1;
                        b.op(
                            format!("{}.{axis}.{i}", node.name),
                            &origin,
                            FOp::Canon(Op::Slice {
                                axis: axis as u32,
                                start: i as u32,
                                end: i as u32 + 1,
                                step: 1,
                            }),
                            vec![cur],
                            s1,
                        )
                    };
                    Ok((0..count)
                        .map(|k| {
                            // k-th element outward from the edge, listed in output order
                            let i = match (at_end, reflect) {
                                (false, true) => count - k,
                                (false, false) => 0,
                                (true, true) => n - 2 - k,
                                (true, false) => n - 1,
                            };
                            one(b, i)
                        })
                        .collect())
                };
            parts.extend(slab(self, before, false)?);
            parts.push(cur);
            parts.extend(slab(self, after, true)?);
            let mut s = shape.clone();
            s[axis] = (n + before + after) as u32;
            cur = self.op(
                format!("{}.{axis}", node.name),
                &origin,
                FOp::Canon(Op::Concat { axis: axis as u32 }),
                parts,
                s,
            );
        }
        if self.shape_of(cur) != out_shape {
            return Err(unsupported(node, "padded shape differs from the graph's"));
        }
        Ok(cur)
    }

    /// `Tile`: copies concatenated along each repeated axis.
    pub(super) fn tile(
        &mut self,
        node: &TypedNode,
        t: &Tile,
        x: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let mut cur = x;
        for (axis, m) in t.multipliers.iter().enumerate() {
            let m = m
                .to_i64()
                .map_err(|_| unsupported(node, "symbolic repeat count"))?;
            if m == 1 {
                continue;
            }
            if !(1..=4096).contains(&m) {
                return Err(unsupported(node, format!("repeat count {m}")));
            }
            let mut s = self.shape_of(cur);
            s[axis] *= m as u32;
            cur = self.op(
                format!("{}.{axis}", node.name),
                &origin,
                FOp::Canon(Op::Concat { axis: axis as u32 }),
                vec![cur; m as usize],
                s,
            );
        }
        if self.shape_of(cur) != out_shape {
            return Err(unsupported(node, "tiled shape differs from the graph's"));
        }
        Ok(cur)
    }

    /// `CumSum`: a contraction with a constant triangular 0/1 matrix along the axis.
    pub(super) fn cumsum(
        &mut self,
        node: &TypedNode,
        c: &CumSum,
        x: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let shape = self.shape_of(x);
        let (rank, axis) = (shape.len(), c.axis);
        let n = shape[axis] as usize;
        if n > 4096 || rank + 1 > 8 {
            return Err(unsupported(
                node,
                "cumulative sum over more than 4096 elements",
            ));
        }
        // t[j, i] = 1 when input j adds into output i
        let mut t = vec![0.0; n * n];
        for j in 0..n {
            for i in 0..n {
                let adds = match (c.reverse, c.exclusive) {
                    (false, false) => j <= i,
                    (false, true) => j < i,
                    (true, false) => j >= i,
                    (true, true) => j > i,
                };
                if adds {
                    t[j * n + i] = 1.0;
                }
            }
        }
        let int = self.is_int_ref(x);
        let t = self.konst(vec![n as u32, n as u32], t, int);
        let a: Vec<u8> = (0..rank as u8).collect();
        let b = vec![axis as u8, rank as u8];
        let mut out = a.clone();
        out[axis] = rank as u8;
        Ok(self.op(
            node.name.clone(),
            &node.op.name(),
            FOp::Canon(Op::EinSum { a, b, out }),
            vec![x, t],
            out_shape,
        ))
    }

    /// `GatherElements`: the data flattened and gathered at flat indices `index · stride + offset`
    /// (negative indices count from the end).
    pub(super) fn gather_elements(
        &mut self,
        node: &TypedNode,
        g: &GatherElements,
        data: Ref,
        idx: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let name = &node.name;
        if !self.is_int_ref(idx) {
            return Err(unsupported(node, "gather indices must be integers"));
        }
        let ds = self.shape_of(data);
        let is = self.shape_of(idx);
        let axis = g.axis;
        let n = ds[axis] as i64;
        let dst = strides_of(&ds);
        let total = numel(&ds);
        if total > u32::MAX as u64 / 2 {
            return Err(unsupported(node, "data too large to gather from"));
        }
        // flat offset of every index position, its own axis excluded
        let ist = strides_of(&is);
        let count = numel(&is) as usize;
        let offset: Vec<f64> = (0..count as u64)
            .map(|f| {
                (0..is.len())
                    .filter(|&k| k != axis)
                    .map(|k| ((f / ist[k]) % is[k] as u64) * dst[k])
                    .sum::<u64>() as f64
            })
            .collect();
        let flat_idx = match self.fold(idx) {
            Some(c) => {
                let mut flat = Vec::with_capacity(count);
                for (i, &v) in c.data.iter().enumerate() {
                    let v = v as i64;
                    if v < -n || v >= n {
                        return Err(unsupported(node, format!("index {v} out of range")));
                    }
                    let v = if v < 0 { v + n } else { v };
                    flat.push(offset[i] + (v as u64 * dst[axis]) as f64);
                }
                self.int_const(is.clone(), flat)
            }
            None => {
                // index + n · (index < 0), times the stride, plus the offset
                let zero = self.int_const(vec![], vec![0.0]);
                let neg = self.op(
                    format!("{name}.negative"),
                    &origin,
                    FOp::Canon(Op::Sub),
                    vec![zero, idx],
                    is.clone(),
                );
                let neg = self.op(
                    format!("{name}.is_negative"),
                    &origin,
                    FOp::Step(Step::Positive),
                    vec![neg],
                    is.clone(),
                );
                let nn = self.int_const(vec![], vec![n as f64]);
                let wrap = self.op(
                    format!("{name}.wrap"),
                    &origin,
                    FOp::Canon(Op::Mul),
                    vec![neg, nn],
                    is.clone(),
                );
                let i = self.op(
                    format!("{name}.index"),
                    &origin,
                    FOp::Canon(Op::Add),
                    vec![idx, wrap],
                    is.clone(),
                );
                let st = self.int_const(vec![], vec![dst[axis] as f64]);
                let i = self.op(
                    format!("{name}.scaled"),
                    &origin,
                    FOp::Canon(Op::Mul),
                    vec![i, st],
                    is.clone(),
                );
                let off = self.int_const(is.clone(), offset);
                self.op(
                    format!("{name}.flat_index"),
                    &origin,
                    FOp::Canon(Op::Add),
                    vec![i, off],
                    is.clone(),
                )
            }
        };
        let flat = self.op(
            format!("{name}.flat"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![data],
            vec![total as u32],
        );
        Ok(self.op(
            name.clone(),
            &origin,
            FOp::Canon(Op::Gather { axis: 0 }),
            vec![flat, flat_idx],
            out_shape,
        ))
    }

    /// Integer nearest upsampling: a gather per scaled axis.
    pub(super) fn nearest_upsample(
        &mut self,
        node: &TypedNode,
        u: &NearestUpsample,
        x: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let mut cur = x;
        for (axis, &s) in u.scales.iter().enumerate() {
            if s == 1 {
                continue;
            }
            let n = self.shape_of(cur)[axis] as usize;
            let idx: Vec<usize> = (0..n * s).map(|i| i / s).collect();
            cur = self.resample_gather(node, cur, axis, &idx);
        }
        if self.shape_of(cur) != out_shape {
            return Err(unsupported(
                node,
                "upsampled shape differs from the graph's",
            ));
        }
        Ok(cur)
    }

    fn resample_gather(&mut self, node: &TypedNode, x: Ref, axis: usize, idx: &[usize]) -> Ref {
        let idx_c = self.int_const(
            vec![idx.len() as u32],
            idx.iter().map(|&i| i as f64).collect(),
        );
        let mut s = self.shape_of(x);
        s[axis] = idx.len() as u32;
        self.op(
            format!("{}.{axis}", node.name),
            &node.op.name(),
            FOp::Canon(Op::Gather { axis: axis as u32 }),
            vec![x, idx_c],
            s,
        )
    }

    /// `Resize`: per resized axis, a gather (nearest) or a contraction with a constant interpolation
    /// matrix (linear, cubic), the weights tract's own plan gives.
    pub(super) fn resize(
        &mut self,
        node: &TypedNode,
        r: &Resize,
        ins: &[Ref],
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let x = ins[0];
        let in_shape = self.shape_of(x);
        let rank = in_shape.len();
        let scales: Option<Vec<f64>> = r
            .optional_scales_input
            .and_then(|i| ins.get(i))
            .and_then(|&s| self.fold(s))
            .map(|c| c.data)
            .filter(|d| d.len() == rank);
        let mut cur = x;
        for axis in 0..rank {
            let (len_in, len_out) = (in_shape[axis] as usize, out_shape[axis] as usize);
            let scale = match &scales {
                Some(s) => s[axis] as f32,
                None => len_out as f32 / len_in as f32,
            };
            if len_in == len_out && scale == 1.0 {
                continue;
            }
            if len_in == 0 || len_out == 0 || len_in * len_out > 1 << 24 {
                return Err(unsupported(node, "resized axis too large"));
            }
            let plan = r.plan_axis(scale, len_in, len_out);
            if plan.extrapolated.contains(&true) {
                return Err(unsupported(node, "resizing that extrapolates"));
            }
            let mut m = vec![0.0f64; len_in * len_out];
            let mut single = Vec::with_capacity(len_out);
            for o in 0..len_out {
                let taps = (0..plan.window).map(|k| {
                    (
                        plan.indices[o * plan.window + k],
                        plan.weights[o * plan.window + k] as f64,
                    )
                });
                let mut nonzero = 0;
                for (i, w) in taps {
                    if w != 0.0 {
                        m[i * len_out + o] += w;
                        nonzero += 1;
                        single.push(i);
                    }
                }
                if nonzero != 1 {
                    single.clear();
                    single.push(usize::MAX);
                }
            }
            let exact_pick = single.len() == len_out
                && single
                    .iter()
                    .enumerate()
                    .all(|(o, &i)| i < len_in && m[i * len_out + o] == 1.0);
            cur = if exact_pick {
                self.resample_gather(node, cur, axis, &single)
            } else {
                let mc = self.konst(vec![len_in as u32, len_out as u32], m, false);
                let a: Vec<u8> = (0..rank as u8).collect();
                let b = vec![axis as u8, rank as u8];
                let mut out = a.clone();
                out[axis] = rank as u8;
                let mut s = self.shape_of(cur);
                s[axis] = len_out as u32;
                self.op(
                    format!("{}.{axis}", node.name),
                    &node.op.name(),
                    FOp::Canon(Op::EinSum { a, b, out }),
                    vec![cur, mc],
                    s,
                )
            };
        }
        if self.shape_of(cur) != out_shape {
            return Err(unsupported(node, "resized shape differs from the graph's"));
        }
        Ok(cur)
    }

    /// `Trilu`: a product with a constant 0/1 mask over the last two axes.
    pub(super) fn trilu(
        &mut self,
        node: &TypedNode,
        t: &Trilu,
        ins: &[Ref],
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let k = match ins.get(1) {
            Some(&k) => {
                let c = self
                    .fold(k)
                    .ok_or_else(|| unsupported(node, "the diagonal offset must be a constant"))?;
                c.data.first().copied().unwrap_or(0.0) as i64
            }
            None => 0,
        };
        let r = out_shape.len();
        if r < 2 {
            return Err(unsupported(node, "Trilu needs two axes"));
        }
        let (h, w) = (out_shape[r - 2] as i64, out_shape[r - 1] as i64);
        let mut mask = Vec::with_capacity((h * w) as usize);
        for i in 0..h {
            for j in 0..w {
                let keep = if t.upper { j - i >= k } else { j - i <= k };
                mask.push(if keep { 1.0 } else { 0.0 });
            }
        }
        let m = self.int_const(vec![h as u32, w as u32], mask);
        Ok(self.op(
            node.name.clone(),
            &node.op.name(),
            FOp::Canon(Op::Mul),
            vec![ins[0], m],
            out_shape,
        ))
    }

    /// `ConvTranspose` (1-D, 2-D): zeros inserted between the input's elements (stride), then a
    /// convolution with the spatially flipped kernel and the complementary padding; what the padding
    /// would remove beyond the kernel's reach is sliced off.
    pub(super) fn deconv(
        &mut self,
        node: &TypedNode,
        d: &Deconv,
        ins: &[Ref],
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let name = &node.name;
        let spec = &d.pool_spec;
        let rank = spec.kernel_shape.len();
        if d.kernel_format != KernelFormat::OIHW || !(rank == 1 || rank == 2) {
            return Err(unsupported(
                node,
                "only 1-D and 2-D transposed convolutions",
            ));
        }
        let x = ins[0];
        let xs = self.shape_of(x);
        if xs.len() != rank + 2 || out_shape.len() != rank + 2 {
            return Err(unsupported(
                node,
                "transposed convolution over channels-first data only",
            ));
        }
        let w = self
            .fold(ins[1])
            .ok_or_else(|| unsupported(node, "the kernel must be a constant"))?;
        let (pb, pa): (Vec<usize>, Vec<usize>) = match &spec.padding {
            PaddingSpec::Valid => (vec![0; rank], vec![0; rank]),
            PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => {
                (b.to_vec(), a.to_vec())
            }
            other => return Err(unsupported(node, format!("padding {other:?}"))),
        };
        let st = spec.strides().to_vec();
        let dil = spec.dilations().to_vec();
        let k = spec.kernel_shape.to_vec();
        // as 2-D: a 1-D op is height 1
        let two = |v: &[usize], one: usize| -> [usize; 2] {
            if v.len() == 1 {
                [one, v[0]]
            } else {
                [v[0], v[1]]
            }
        };
        let (st, dil, k, pb, pa) = (
            two(&st, 1),
            two(&dil, 1),
            two(&k, 1),
            two(&pb, 0),
            two(&pa, 0),
        );
        let adj = two(&d.adjustments, 0);
        let (n, c) = (xs[0], xs[1]);
        let sp = two(&xs[2..].iter().map(|&v| v as usize).collect::<Vec<_>>(), 1);
        let mut cur = self.op(
            format!("{name}.as_2d"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![x],
            vec![n, c, sp[0] as u32, sp[1] as u32],
        );
        // zero insertion along H (axis 2) and W (axis 3)
        for ax in 0..2 {
            let s = st[ax];
            if s == 1 || sp[ax] == 0 {
                continue;
            }
            let shape = self.shape_of(cur);
            // [.., L, ..] -> [.., L, 1, ..] beside zeros [.., L, s-1, ..] -> [.., L·s, ..]
            let mut e = shape.clone();
            e.insert(ax + 3, 1);
            let ex = self.op(
                format!("{name}.spread{ax}"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![cur],
                e.clone(),
            );
            let mut z = e.clone();
            z[ax + 3] = (s - 1) as u32;
            let zeros = self.konst(z.clone(), vec![0.0; numel(&z) as usize], false);
            let mut cat = e.clone();
            cat[ax + 3] = s as u32;
            let both = self.op(
                format!("{name}.zeros{ax}"),
                &origin,
                FOp::Canon(Op::Concat {
                    axis: (ax + 3) as u32,
                }),
                vec![ex, zeros],
                cat,
            );
            let mut flat = shape.clone();
            flat[ax + 2] *= s as u32;
            let fl = self.op(
                format!("{name}.strided{ax}"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![both],
                flat.clone(),
            );
            let keep = ((sp[ax] - 1) * s + 1) as u32;
            let mut sl = flat;
            sl[ax + 2] = keep;
            cur = self.op(
                format!("{name}.dilated{ax}"),
                &origin,
                FOp::Canon(Op::Slice {
                    axis: (ax + 2) as u32,
                    start: 0,
                    end: keep,
                    step: 1,
                }),
                vec![fl],
                sl,
            );
        }
        // the flipped kernel [O, C/g, kh, kw]
        let ws = &w.shape;
        let (o, cg) = (ws[0] as usize, ws[1] as usize);
        let mut wf = vec![0.0; o * cg * k[0] * k[1]];
        for oc in 0..o * cg {
            for i in 0..k[0] {
                for j in 0..k[1] {
                    wf[(oc * k[0] + i) * k[1] + j] =
                        w.data[(oc * k[0] + (k[0] - 1 - i)) * k[1] + (k[1] - 1 - j)];
                }
            }
        }
        let wk = self.konst(
            vec![o as u32, cg as u32, k[0] as u32, k[1] as u32],
            wf,
            false,
        );
        let mut conv_ins = vec![cur, wk];
        if let Some(&b) = ins.get(2) {
            match self.fold(b) {
                Some(bc) if bc.data.iter().all(|&v| v == 0.0) => {}
                Some(bc) if bc.data.len() == 1 || bc.data.len() == o => {
                    let data = if bc.data.len() == 1 {
                        vec![bc.data[0]; o]
                    } else {
                        bc.data
                    };
                    conv_ins.push(self.konst(vec![o as u32], data, false));
                }
                _ => {
                    return Err(unsupported(
                        node,
                        "bias must be a constant per output channel",
                    ))
                }
            }
        }
        // padding of the equivalent convolution: span − 1 − pad (negative: cropped afterwards)
        let mut before = [0u32; 2];
        let mut after = [0u32; 2];
        let mut crop = [(0usize, 0usize); 2];
        for ax in 0..2 {
            let span = (k[ax] - 1) * dil[ax];
            let b = span as i64 - pb[ax] as i64;
            let a = span as i64 - pa[ax] as i64 + adj[ax] as i64;
            if b >= 0 {
                before[ax] = b as u32;
            } else {
                crop[ax].0 = (-b) as usize;
            }
            if a >= 0 {
                after[ax] = a as u32;
            } else {
                crop[ax].1 = (-a) as usize;
            }
        }
        let window = Window {
            kernel: [k[0] as u32, k[1] as u32],
            stride: [1, 1],
            dilation: [dil[0] as u32, dil[1] as u32],
            pads: [before[0], before[1], after[0], after[1]],
        };
        let cs = self.shape_of(cur);
        let (h, wd) = window
            .output_hw(cs[2], cs[3])
            .ok_or_else(|| unsupported(node, "window does not fit"))?;
        let groups = (c as usize / cg.max(1)) as u32;
        let mut y = self.op(
            format!("{name}.conv"),
            &origin,
            FOp::Canon(Op::Conv2d { window, groups }),
            conv_ins,
            vec![n, o as u32, h, wd],
        );
        for ax in 0..2 {
            let (c0, c1) = crop[ax];
            if c0 == 0 && c1 == 0 {
                continue;
            }
            let mut s = self.shape_of(y);
            let len = s[ax + 2] as usize;
            if c0 + c1 >= len {
                return Err(unsupported(node, "padding removes the whole output"));
            }
            s[ax + 2] = (len - c0 - c1) as u32;
            y = self.op(
                format!("{name}.crop{ax}"),
                &origin,
                FOp::Canon(Op::Slice {
                    axis: (ax + 2) as u32,
                    start: c0 as u32,
                    end: (len - c1) as u32,
                    step: 1,
                }),
                vec![y],
                s,
            );
        }
        if numel(&self.shape_of(y)) != numel(&out_shape) {
            return Err(unsupported(
                node,
                format!(
                    "transposed convolution shape {:?} differs from the graph's {out_shape:?}",
                    self.shape_of(y)
                ),
            ));
        }
        Ok(self.op(
            name.clone(),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![y],
            out_shape,
        ))
    }

    /// Local response normalization over channels:
    /// `x / (bias + alpha/size · Σ x² over the channel window)^beta` — the window sum a contraction
    /// with a constant band matrix (scaled, plus the bias), the power a table.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lrn(
        &mut self,
        node: &TypedNode,
        alpha: f64,
        beta: f64,
        bias: f64,
        size: usize,
        x: Ref,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let name = &node.name;
        let shape = self.shape_of(x);
        let rank = shape.len();
        if rank < 2 || size == 0 || bias.is_nan() || bias <= 0.0 {
            return Err(unsupported(
                node,
                "LRN needs a channel axis and a positive bias",
            ));
        }
        let c = shape[1] as usize;
        // channels c − ⌊(size−1)/2⌋ … c + ⌈(size−1)/2⌉
        let (lo, hi) = ((size - 1) / 2, size / 2);
        let mut band = vec![0.0; c * c];
        for j in 0..c {
            let (from, to) = (j.saturating_sub(lo), (j + hi).min(c - 1));
            for i in from..=to {
                band[i * c + j] = alpha / size as f64;
            }
        }
        let sq = self.op(
            format!("{name}.square"),
            &origin,
            FOp::Canon(Op::Mul),
            vec![x, x],
            shape.clone(),
        );
        let band = self.konst(vec![c as u32, c as u32], band, false);
        let bias = self.konst(along(rank - 1, 0, c as u32), vec![bias; c], false);
        let a: Vec<u8> = (0..rank as u8).collect();
        let b = vec![1u8, rank as u8];
        let mut out = a.clone();
        out[1] = rank as u8;
        let base = self.op(
            format!("{name}.base"),
            &origin,
            FOp::Canon(Op::EinSum { a, b, out }),
            vec![sq, band, bias],
            shape.clone(),
        );
        let p = self.op(
            format!("{name}.power"),
            &origin,
            FOp::Func(Func::Pow((-beta).to_bits())),
            vec![base],
            shape,
        );
        Ok(self.op(
            name.clone(),
            &origin,
            FOp::Canon(Op::Mul),
            vec![x, p],
            out_shape,
        ))
    }
}

impl Builder<'_> {
    /// `ln(x)`, with the two patterns whose logarithm a table over the result would hold poorly:
    /// `ln(softmax(x))` becomes `(x − max) − ln Σ e^(x − max)` (a log-softmax; a table of `ln` over
    /// probabilities near 0 would lose the small ones), `ln Σ e^x` becomes `max + ln Σ e^(x − max)`, and
    /// `ln(e^x + 1)` becomes one softplus table on `x`.
    pub(super) fn ln(&mut self, node: &TypedNode, x: Ref, out_shape: Vec<u32>) -> Ref {
        let origin = node.op.name().to_string();
        let name = &node.name;
        if let Ref::N(i) = x {
            let (n, ins) = self.nodes[i].clone();
            if let FOp::Softmax { axis } = n.op {
                let (d, l, _) = self.log_sum_exp_parts(name, &origin, ins[0], vec![axis]);
                return self.op(
                    name.clone(),
                    &origin,
                    FOp::Canon(Op::Sub),
                    vec![d, l],
                    out_shape,
                );
            }
            // ln Σ e^x
            if let FOp::Canon(Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
            }) = &n.op
            {
                if let Ref::N(j) = ins[0] {
                    let (en, eins) = self.nodes[j].clone();
                    if en.op == FOp::Func(Func::Exp) {
                        let (_, l, m) =
                            self.log_sum_exp_parts(name, &origin, eins[0], axes.clone());
                        return self.op(
                            name.clone(),
                            &origin,
                            FOp::Canon(Op::Add),
                            vec![l, m],
                            out_shape,
                        );
                    }
                }
            }
            if let (FOp::Canon(Op::Add), [a, b]) = (&n.op, &ins[..]) {
                let one = |r: Ref| {
                    self.fold(r)
                        .is_some_and(|c| c.data.iter().all(|&v| v == 1.0))
                };
                for (e, c) in [(*a, *b), (*b, *a)] {
                    if let (Ref::N(j), true) = (e, one(c)) {
                        let (en, eins) = self.nodes[j].clone();
                        if en.op == FOp::Func(Func::Exp) && en.shape == out_shape {
                            return self.op(
                                name.clone(),
                                &origin,
                                FOp::Func(Func::Softplus),
                                vec![eins[0]],
                                out_shape,
                            );
                        }
                    }
                }
            }
        }
        self.op(
            name.clone(),
            &origin,
            FOp::Func(Func::Ln),
            vec![x],
            out_shape,
        )
    }

    /// `x − max` and `ln Σ e^(x − max)` over `axes` (each sum of exponentials is then at least 1, and
    /// no exponential overflows), and the maximum.
    fn log_sum_exp_parts(
        &mut self,
        name: &str,
        origin: &str,
        x: Ref,
        axes: Vec<u32>,
    ) -> (Ref, Ref, Ref) {
        let shape = self.shape_of(x);
        let mut red = shape.clone();
        for &a in &axes {
            red[a as usize] = 1;
        }
        let m = self.op(
            format!("{name}.max"),
            origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Max,
                axes: axes.clone(),
            }),
            vec![x],
            red.clone(),
        );
        let d = self.op(
            format!("{name}.shifted"),
            origin,
            FOp::Canon(Op::Sub),
            vec![x, m],
            shape.clone(),
        );
        let e = self.op(
            format!("{name}.exp"),
            origin,
            FOp::Func(Func::ExpShifted),
            vec![d],
            shape,
        );
        let s = self.op(
            format!("{name}.sum"),
            origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
            }),
            vec![e],
            red.clone(),
        );
        let l = self.op(
            format!("{name}.log_sum"),
            origin,
            FOp::Func(Func::Ln),
            vec![s],
            red,
        );
        (d, l, m)
    }
}

impl Builder<'_> {
    /// tract expands ONNX `Celu` as `max(0, x) + min(0, e^(x/α) − 1)`, without the factor α of the
    /// negative part (`α · (e^(x/α) − 1)`); the expansion is recognized by its node names
    /// (`….x_over_alpha` → `….exp` → `….minus_one`) and α ≠ 1 is returned, so the op can be refused
    /// rather than compiled wrong.
    pub(super) fn celu_alpha(&self, node: &TypedNode, x: Ref) -> Option<f64> {
        let base = node.name.strip_suffix(".minus_one")?;
        let Ref::N(e) = x else { return None };
        let (en, eins) = &self.nodes[e];
        if en.op != FOp::Func(Func::Exp) || en.name != format!("{base}.exp") {
            return None;
        }
        let Ref::N(d) = eins[0] else { return None };
        let (dn, dins) = &self.nodes[d];
        if dn.name != format!("{base}.x_over_alpha") || dn.op != FOp::Canon(Op::Mul) {
            return None;
        }
        let c = self.fold(*dins.get(1)?)?;
        let inv = *c.data.first()?;
        let alpha = 1.0 / inv;
        (c.data.iter().all(|&v| v == inv) && inv != 0.0 && alpha != 1.0).then_some(alpha)
    }
}

impl Builder<'_> {
    /// `TopK` with a constant `k` (at most [`MAX_TOP_K`]): `k` rounds of "the first maximum, its
    /// index, then that element replaced by something below the row's minimum", the rounds' values and
    /// indices concatenated — ties go to the lower index, as ONNX says. `largest = false` runs on `−x`.
    pub(super) fn top_k(
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
            .and_then(|c| c.data.first().copied())
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
}

/// The largest `k` a `TopK` is lowered for (each round is a handful of element-wise ops over the input).
pub const MAX_TOP_K: i64 = 64;

impl Builder<'_> {
    /// A 3-D window over `[N, C, D, H, W]` as 2-D ops: the depth taps become channels (convolution:
    /// `kd` strided depth slices concatenated along the channels, depth folded into the batch, one
    /// `Conv2d` over `kd · C/g` channels per group, so each output is still one exact sum) or an
    /// element-wise maximum / sum of the depth slices before the 2-D pool (pooling; depth padding is
    /// refused for pools, zeros are inserted for convolutions).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn windowed_3d(
        &mut self,
        node: &TypedNode,
        spec: &tract_onnx::tract_core::ops::cnn::PoolSpec,
        x: Ref,
        weights: Option<Ref>,
        extra: Vec<Ref>,
        out_shape: Vec<u32>,
        kind: Op,
    ) -> Result<Ref, CompileError> {
        let origin = node.op.name().to_string();
        let name = &node.name;
        let xs = self.shape_of(x);
        let k: Vec<usize> = spec.kernel_shape.to_vec();
        let d: Vec<usize> = spec.dilations().to_vec();
        let st: Vec<usize> = spec.strides().to_vec();
        let spatial: Vec<usize> = xs[2..].iter().map(|&v| v as usize).collect();
        let pads = spec.padding.compute(&spatial, &k, &d, &st);
        let (pd0, pd1) = (pads[0].pad_before, pads[0].pad_after);
        let (n, c) = (xs[0], xs[1]);
        let d_out = out_shape[2];
        let (h_out, w_out) = (out_shape[3], out_shape[4]);
        if (k[0] - 1) * d[0] + 1 > spatial[0] + pd0 + pd1 {
            return Err(unsupported(node, "window deeper than the padded input"));
        }
        let is_conv = matches!(kind, Op::Conv2d { .. });
        if !is_conv && (pd0 > 0 || pd1 > 0) {
            return Err(unsupported(
                node,
                "3-D pooling with padding along the depth",
            ));
        }
        // zero padding along the depth (convolutions)
        let mut cur = x;
        if pd0 + pd1 > 0 {
            let mut parts = vec![];
            for (i, p) in [pd0, pd1].into_iter().enumerate() {
                if p > 0 {
                    let zs = vec![n, c, p as u32, xs[3], xs[4]];
                    parts.push((
                        i,
                        self.konst(zs.clone(), vec![0.0; numel(&zs) as usize], false),
                    ));
                }
            }
            let mut ins: Vec<Ref> = parts.iter().filter(|(i, _)| *i == 0).map(|p| p.1).collect();
            ins.push(x);
            ins.extend(parts.iter().filter(|(i, _)| *i == 1).map(|p| p.1));
            cur = self.op(
                format!("{name}.depth_padded"),
                &origin,
                FOp::Canon(Op::Concat { axis: 2 }),
                ins,
                vec![n, c, xs[2] + (pd0 + pd1) as u32, xs[3], xs[4]],
            );
        }
        let slice_shape = vec![n, c, d_out, xs[3], xs[4]];
        let taps: Vec<Ref> = (0..k[0])
            .map(|dz| {
                let start = (dz * d[0]) as u32;
                self.op(
                    format!("{name}.depth{dz}"),
                    &origin,
                    FOp::Canon(Op::Slice {
                        axis: 2,
                        start,
                        end: start + (d_out - 1) * st[0] as u32 + 1,
                        step: st[0] as u32,
                    }),
                    vec![cur],
                    slice_shape.clone(),
                )
            })
            .collect();
        let window = Window {
            kernel: [k[1] as u32, k[2] as u32],
            stride: [st[1] as u32, st[2] as u32],
            dilation: [d[1] as u32, d[2] as u32],
            pads: [
                pads[1].pad_before as u32,
                pads[2].pad_before as u32,
                pads[1].pad_after as u32,
                pads[2].pad_after as u32,
            ],
        };
        if window.output_hw(xs[3], xs[4]) != Some((h_out, w_out)) {
            return Err(unsupported(node, "ceil-mode or uneven 3-D windows"));
        }
        if !is_conv {
            // pool the depth taps element-wise, then 2-D over [N, C·D_out, H, W]
            let combine = if matches!(kind, Op::MaxPool2d { .. }) {
                Op::Max
            } else {
                Op::Add
            };
            let mut acc = taps[0];
            for (i, &t) in taps.iter().enumerate().skip(1) {
                acc = self.op(
                    format!("{name}.taps{i}"),
                    &origin,
                    FOp::Canon(combine.clone()),
                    vec![acc, t],
                    slice_shape.clone(),
                );
            }
            let flat = self.op(
                format!("{name}.as_2d"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![acc],
                vec![n, c * d_out, xs[3], xs[4]],
            );
            let op = match kind {
                Op::MaxPool2d { .. } => Op::MaxPool2d { window },
                Op::AvgPool2d {
                    count_include_pad, ..
                } => Op::AvgPool2d {
                    window,
                    count_include_pad,
                },
                _ => return Err(unsupported(node, "unexpected window op")),
            };
            let pooled = self.op(
                format!("{name}.2d"),
                &origin,
                FOp::Canon(op),
                vec![flat],
                vec![n, c * d_out, h_out, w_out],
            );
            let mut y = self.op(
                format!("{name}.3d"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![pooled],
                out_shape.clone(),
            );
            if combine == Op::Add && k[0] > 1 {
                let inv = self.konst(vec![], vec![1.0 / k[0] as f64], false);
                y = self.op(
                    name.clone(),
                    &origin,
                    FOp::Canon(Op::Mul),
                    vec![y, inv],
                    out_shape,
                );
            }
            return Ok(y);
        }
        let Op::Conv2d { groups, .. } = kind else {
            return Err(unsupported(node, "unexpected window op"));
        };
        let w = weights
            .and_then(|w| self.fold(w))
            .ok_or_else(|| unsupported(node, "3-D convolution kernels must be constants"))?;
        let (o, cg) = (w.shape[0] as usize, w.shape[1] as usize);
        let g = groups as usize;
        let (kd, kh, kw) = (k[0], k[1], k[2]);
        // channels ordered (group, depth tap, channel of the group)
        let cat = self.op(
            format!("{name}.taps"),
            &origin,
            FOp::Canon(Op::Concat { axis: 1 }),
            taps,
            vec![n, c * kd as u32, d_out, xs[3], xs[4]],
        );
        let grouped = if g > 1 {
            let perm: Vec<f64> = (0..g)
                .flat_map(|j| {
                    (0..kd).flat_map(move |dz| {
                        (0..cg).map(move |ci| (dz * c as usize + j * cg + ci) as f64)
                    })
                })
                .collect();
            let idx = self.int_const(vec![perm.len() as u32], perm);
            self.op(
                format!("{name}.grouped"),
                &origin,
                FOp::Canon(Op::Gather { axis: 1 }),
                vec![cat, idx],
                vec![n, c * kd as u32, d_out, xs[3], xs[4]],
            )
        } else {
            cat
        };
        let moved = self.op(
            format!("{name}.depth_first"),
            &origin,
            FOp::Canon(Op::Transpose {
                perm: vec![0, 2, 1, 3, 4],
            }),
            vec![grouped],
            vec![n, d_out, c * kd as u32, xs[3], xs[4]],
        );
        let batched = self.op(
            format!("{name}.batched"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![moved],
            vec![n * d_out, c * kd as u32, xs[3], xs[4]],
        );
        // w[o, ci, dz, i, j] -> w2[o, dz·cg + ci, i, j]
        let mut w2 = vec![0.0; o * kd * cg * kh * kw];
        for oc in 0..o {
            for ci in 0..cg {
                for dz in 0..kd {
                    for ij in 0..kh * kw {
                        w2[((oc * kd + dz) * cg + ci) * kh * kw + ij] =
                            w.data[((oc * cg + ci) * kd + dz) * kh * kw + ij];
                    }
                }
            }
        }
        let wk = self.konst(
            vec![o as u32, (kd * cg) as u32, kh as u32, kw as u32],
            w2,
            false,
        );
        let mut ins = vec![batched, wk];
        ins.extend(extra);
        let conv = self.op(
            format!("{name}.2d"),
            &origin,
            FOp::Canon(Op::Conv2d { window, groups }),
            ins,
            vec![n * d_out, o as u32, h_out, w_out],
        );
        let unbatched = self.op(
            format!("{name}.unbatched"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![conv],
            vec![n, d_out, o as u32, h_out, w_out],
        );
        Ok(self.op(
            name.clone(),
            &origin,
            FOp::Canon(Op::Transpose {
                perm: vec![0, 2, 1, 3, 4],
            }),
            vec![unbatched],
            out_shape,
        ))
    }
}

/// The longest constant axis a computed index selects from by a one-hot product.
pub const ONE_HOT_GATHER: u32 = 256;

impl Builder<'_> {
    /// A `Gather` from a constant table (axis length at most [`ONE_HOT_GATHER`]) at indices computed
    /// inside the model (a label from an arg-max, a class from a lookup) as a one-hot product:
    /// `onehot[…, j] = [index = j]`, contracted with the table — integer-exact, and made of ops the
    /// prover proves (a computed index into a table is not). `None` when the gather stays a `Gather`.
    pub(super) fn one_hot_gather(
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
        // negative indices count from the end
        let zero = self.int_const(vec![], vec![0.0]);
        let neg = self.op(
            format!("{name}.negated"),
            &origin,
            FOp::Canon(Op::Sub),
            vec![zero, idx],
            is.clone(),
        );
        let neg = self.op(
            format!("{name}.is_negative"),
            &origin,
            FOp::Step(Step::Positive),
            vec![neg],
            is.clone(),
        );
        let nn = self.int_const(vec![], vec![n as f64]);
        let wrap = self.op(
            format!("{name}.wrap"),
            &origin,
            FOp::Canon(Op::Mul),
            vec![neg, nn],
            is.clone(),
        );
        let i = self.op(
            format!("{name}.index"),
            &origin,
            FOp::Canon(Op::Add),
            vec![idx, wrap],
            is.clone(),
        );
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
}
