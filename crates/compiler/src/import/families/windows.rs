//! Windows: transposed convolutions, local response normalization, 3-D convolution and pooling.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Deconv, KernelFormat, PaddingSpec, PoolSpec};
use verity_engine::ir::{numel, Op, Window};

use super::along;
use crate::fgraph::{FOp, Func};
use crate::import::{unsupported, Builder, Ref};
use crate::CompileError;

impl Builder<'_> {
    /// `ConvTranspose` (1-D, 2-D): zeros inserted between the input's elements (stride), then a
    /// convolution with the spatially flipped kernel and the complementary padding; what the padding
    /// would remove beyond the kernel's reach is sliced off.
    pub(in crate::import) fn deconv(
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
            if numel(&z) > super::layout::MAX_SLAB {
                return Err(unsupported(node, "stride too large for the input"));
            }
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
                    wf[(oc * k[0] + i) * k[1] + j] = w
                        .data
                        .get((oc * k[0] + (k[0] - 1 - i)) * k[1] + (k[1] - 1 - j));
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
                Some(bc) if bc.data.iter().all(|v| v == 0.0) => {}
                Some(bc) if bc.data.len() == 1 || bc.data.len() == o => {
                    let data = if bc.data.len() == 1 {
                        vec![bc.data.get(0); o]
                    } else {
                        bc.data.into_f64()
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
    pub(in crate::import) fn lrn(
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

    /// A 3-D window over `[N, C, D, H, W]` as 2-D ops: the depth taps become channels (convolution:
    /// `kd` strided depth slices concatenated along the channels, depth folded into the batch, one
    /// `Conv2d` over `kd · C/g` channels per group, so each output is still one exact sum) or an
    /// element-wise maximum / sum of the depth slices before the 2-D pool (pooling; depth padding is
    /// refused for pools, zeros are inserted for convolutions).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::import) fn windowed_3d(
        &mut self,
        node: &TypedNode,
        spec: &PoolSpec,
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
                    if numel(&zs) > super::layout::MAX_SLAB {
                        return Err(unsupported(node, "depth padding too large"));
                    }
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
                            w.data.get(((oc * cg + ci) * kd + dz) * kh * kw + ij);
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
