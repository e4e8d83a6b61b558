//! Layout: padding, tiling, cumulative sums, element gathers, resizing and triangular masks.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{CumSum, GatherElements, Pad, PadMode, Tile, Trilu};
use tract_onnx::tract_core::ops::nn::{NearestUpsample, Resize};
use verity_engine::ir::{numel, Op};

use super::{clamp_mask_fills, strides_of};
use crate::fgraph::FOp;
use crate::import::{tensor_f64, unsupported, Builder, Ref};
use crate::CompileError;

/// The most elements a padding slab (or inserted zeros) may hold.
pub(super) const MAX_SLAB: u64 = 1 << 24;
/// The widest reflect padding (one slice per padded element).
const MAX_REFLECT: usize = 4096;

impl Builder<'_> {
    /// `Pad` (constant, reflect, edge): slices of the input (or constants) concatenated around it, one
    /// axis at a time.
    pub(in crate::import) fn pad(
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
                let v = tensor_f64(v).map_err(|e| unsupported(node, e))?;
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
                    if numel(&s) > MAX_SLAB {
                        return Err(unsupported(node, "padding of more than 2^24 elements"));
                    }
                    if let Some(v) = fill {
                        let c = b.konst(
                            s.clone(),
                            vec![v; numel(&s) as usize],
                            int && v.fract() == 0.0,
                        );
                        return Ok(vec![c]);
                    }
                    // reflect mirrors without the edge element (one slice per element); edge repeats it
                    let reflect = matches!(p.mode, PadMode::Reflect);
                    if n == 0 || (reflect && count >= n) {
                        return Err(unsupported(node, "padding wider than the reflected axis"));
                    }
                    if reflect && count > MAX_REFLECT {
                        return Err(unsupported(
                            node,
                            format!("reflect padding of more than {MAX_REFLECT} elements"),
                        ));
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
                    if !reflect {
                        let edge = one(b, if at_end { n - 1 } else { 0 });
                        return Ok(vec![b.op(
                            format!("{}.{axis}.edge{}", node.name, at_end as u8),
                            &origin,
                            FOp::Canon(Op::Broadcast),
                            vec![edge],
                            s,
                        )]);
                    }
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
    pub(in crate::import) fn tile(
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
    pub(in crate::import) fn cumsum(
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
    pub(in crate::import) fn gather_elements(
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
                for (i, v) in c.data.iter().enumerate() {
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
                let i = self.wrapped_index(name, &origin, idx, n as u32, &is);
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
    pub(in crate::import) fn nearest_upsample(
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
    pub(in crate::import) fn resize(
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
            .map(|c| c.data.into_f64())
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
    pub(in crate::import) fn trilu(
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
                c.data.first().unwrap_or(0.0) as i64
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
}
