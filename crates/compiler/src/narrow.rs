//! The narrow lowering (`--precision int8`, `w8a16`, `w16a16`, …): every contraction with a constant weight
//! operand (`EinSum`, `Conv2d`) is rewritten so that its weights hold 8- or 16-bit values and its
//! activation operand 8- or 16-bit ones, which the engine multiplies with its 8-bit kernels (16-bit
//! activations as two 8-bit halves):
//!
//! ```text
//! x (i32, scale s_x) ── Clamp{0,2^A−1} or Clamp{−2^(A−1),2^(A−1)−1} at scale s_a ──┐
//!                                  q (weights, scale 0) ── EinSum/Conv2d (+ bias in accumulator units)
//!                                          (output at s_a − r) └─ Mul by m (per-channel multiplier, scale s_m) → y
//! ```
//!
//! Weights are quantized per output channel: `w ≈ q · m_c · 2^-s_m` with `|q| ≤ 2^(W−1) − 1` and a 24-bit
//! multiplier `m_c`, so the channel's real scale is represented to 2^-24 relative precision. Activations
//! feeding a contraction are requantized by a saturating `Clamp` at a power-of-two scale chosen from
//! calibration (unsigned when the calibrated values are non-negative, as after a ReLU, else signed). The
//! accumulator is rounded by `r` bits only when its bound (reduction length × largest activation ×
//! largest weight + bias) could leave `i32` (never for 8-bit activations and weights up to 33,155 terms).
//! Everything else keeps the 32-bit path; every op used is a v1 op, so the semantics, one-step checks and
//! proofs apply unchanged. Deterministic like the rest of the compiler: exact `f64` arithmetic only.

use std::collections::BTreeMap;

use verity_engine::exec::{broadcast_strides, for_each_index};
use verity_engine::ir::{Const, Model, Node, Op, Output, ValueId};

use crate::fgraph::FGraph;
use crate::quantize::{ceil_log2, Stats};

/// Bits of a per-channel multiplier: 2^-24 relative precision for a weight scale, and an accumulator
/// times its multiplier stays below 2^56, well inside what the zk prover's exact products allow.
const MULT_BITS: i32 = 24;
/// Largest activation scale the lowering picks (a value range of zero would otherwise ask for any).
const MAX_ACT_SCALE: i32 = 24;

/// A value of the model being built: a model input, a new constant, or a new node.
#[derive(Clone, Copy, Debug)]
enum R {
    In(u32),
    C(usize),
    N(usize),
}

struct Builder<'a> {
    old: &'a Model,
    consts: Vec<Const>,
    nodes: Vec<(Node, Vec<R>)>,
    /// Old value id → new value.
    map: Vec<Option<R>>,
    /// Old value id → its narrow requantization and that node's scale.
    narrowed: BTreeMap<ValueId, (R, i8)>,
}

impl Builder<'_> {
    fn value(&mut self, v: ValueId) -> R {
        if let Some(r) = self.map[v as usize] {
            return r;
        }
        // only constants are mapped lazily (so unused ones are dropped)
        let c = self
            .old
            .const_of(v)
            .cloned()
            .expect("inputs and nodes are mapped before use");
        let r = self.push_const(c);
        self.map[v as usize] = Some(r);
        r
    }

    fn push_const(&mut self, c: Const) -> R {
        self.consts.push(c);
        R::C(self.consts.len() - 1)
    }

    fn push_node(&mut self, name: String, op: Op, inputs: Vec<R>, shape: Vec<u32>, scale: i8) -> R {
        let node = Node {
            name,
            op,
            inputs: Vec::new(),
            shape,
            scale,
        };
        self.nodes.push((node, inputs));
        R::N(self.nodes.len() - 1)
    }

    fn scale_of(&self, r: R) -> i8 {
        match r {
            R::In(i) => self.old.inputs[i as usize].scale,
            R::C(c) => self.consts[c].scale,
            R::N(n) => self.nodes[n].0.scale,
        }
    }

    fn finish(self) -> Model {
        let ni = self.old.inputs.len() as u32;
        let nc = self.consts.len() as u32;
        let id = |r: R| -> ValueId {
            match r {
                R::In(i) => i,
                R::C(c) => ni + c as u32,
                R::N(n) => ni + nc + n as u32,
            }
        };
        let nodes = self
            .nodes
            .into_iter()
            .map(|(mut n, ins)| {
                n.inputs = ins.into_iter().map(id).collect();
                n
            })
            .collect();
        let outputs = self
            .old
            .outputs
            .iter()
            .map(|o| Output {
                name: o.name.clone(),
                value: id(self.map[o.value as usize].expect("outputs refer to mapped values")),
            })
            .collect();
        Model {
            inputs: self.old.inputs.clone(),
            consts: self.consts,
            nodes,
            outputs,
        }
    }
}

/// Round half up, as everywhere in Verity.
fn round(x: f64) -> f64 {
    (x + 0.5).floor()
}

/// Rewrite `model` (compiled from `g` with calibration `stats`; `float_of` maps each canonical value to
/// its float value, `None` for function tables) into its narrow form with `wbits`-bit weights (8 or 16)
/// and `abits`-bit activations (8 or 16). Contractions that cannot be narrowed (integer operands, two
/// activations, shifts out of range) keep their 32-bit form.
pub fn narrow(
    g: &FGraph,
    stats: &[Stats],
    model: &Model,
    float_of: &[Option<usize>],
    wbits: u8,
    abits: u8,
) -> Model {
    let widths = Widths {
        qmax: ((1i64 << (wbits - 1)) - 1) as f64,
        abits: abits as i32,
    };
    let mut b = Builder {
        old: model,
        consts: Vec::new(),
        nodes: Vec::new(),
        map: vec![None; model.value_count()],
        narrowed: BTreeMap::new(),
    };
    for i in 0..model.inputs.len() {
        b.map[i] = Some(R::In(i as u32));
    }
    let first = model.first_node_value();
    for (k, node) in model.nodes.iter().enumerate() {
        let r = match narrow_node(&mut b, g, stats, float_of, node, widths) {
            Some(r) => r,
            None => {
                let ins = node.inputs.iter().map(|&v| b.value(v)).collect();
                b.push_node(
                    node.name.clone(),
                    node.op.clone(),
                    ins,
                    node.shape.clone(),
                    node.scale,
                )
            }
        };
        b.map[first + k] = Some(r);
    }
    b.finish()
}

/// The lowering's widths.
#[derive(Clone, Copy)]
struct Widths {
    /// Largest magnitude of a quantized weight.
    qmax: f64,
    /// Bits of an activation (one of them the sign for signed values).
    abits: i32,
}

/// The narrow form of one contraction, if it has one: returns the value replacing the node's output.
fn narrow_node(
    b: &mut Builder<'_>,
    g: &FGraph,
    stats: &[Stats],
    float_of: &[Option<usize>],
    node: &Node,
    Widths { qmax, abits }: Widths,
) -> Option<R> {
    let old = b.old;
    let fconst = |v: ValueId| {
        let f = float_of[v as usize]?;
        g.const_of(f as u32).filter(|c| !c.int)
    };
    // which input is the weight, its output-channel axis (in the weight, in the output) and its
    // reduced axes (in the activation and not in the output)
    let (wi, w_axis, out_axis, reduced) = match &node.op {
        Op::Conv2d { .. } => (1usize, Some(0usize), Some(1usize), vec![1, 2, 3]),
        Op::EinSum { a, b: bl, out } => {
            let (wi, wl, al) = if fconst(node.inputs[1]).is_some() {
                (1, bl, a)
            } else {
                (0, a, bl)
            };
            let chans: Vec<usize> = (0..wl.len())
                .filter(|&i| out.contains(&wl[i]) && !al.contains(&wl[i]))
                .collect();
            let reduced = (0..wl.len())
                .filter(|&i| al.contains(&wl[i]) && !out.contains(&wl[i]))
                .collect();
            match chans[..] {
                [i] => (wi, Some(i), out.iter().position(|&l| l == wl[i]), reduced),
                _ => (wi, None, None, reduced),
            }
        }
        _ => return None,
    };
    let xi = 1 - wi;
    let (x, w) = (node.inputs[xi], node.inputs[wi]);
    let wf = fconst(w)?;
    let terms: f64 = reduced.iter().map(|&i| wf.shape[i] as f64).product();
    if old.const_of(x).is_some() {
        return None;
    }
    let xs = &stats[float_of[x as usize]?];
    if g.is_int(float_of[x as usize]? as u32) {
        return None;
    }
    // requantize the activation to its narrow width (shared by every contraction reading it)
    // the activation's range: unsigned when its calibrated values are non-negative
    let unsigned = xs.min >= 0.0;
    let (lo, hi) = if unsigned {
        (0, (1 << abits) - 1)
    } else {
        (-(1 << (abits - 1)), (1 << (abits - 1)) - 1)
    };
    let (xr, s8) = match b.narrowed.get(&x) {
        Some(&v) => v,
        None => {
            let m = xs.min.abs().max(xs.max.abs());
            let bits = if unsigned { abits } else { abits - 1 };
            let s8 = if m > 0.0 {
                (bits - ceil_log2(m)).clamp(-30, MAX_ACT_SCALE)
            } else {
                MAX_ACT_SCALE
            } as i8;
            let sx = old.value(x)?.scale;
            if (sx as i32 - s8 as i32).abs() > verity_engine::arith::MAX_SHIFT {
                return None;
            }
            let src = b.value(x);
            let r = b.push_node(
                format!("{}/q{abits}", node.name),
                Op::Clamp { lo, hi },
                vec![src],
                old.value(x)?.shape.to_vec(),
                s8,
            );
            b.narrowed.insert(x, (r, s8));
            (r, s8)
        }
    };
    // per-channel weights: w ≈ q · m_c · 2^-s_m
    let ws: Vec<usize> = wf.shape.iter().map(|&d| d as usize).collect();
    let (chans, inner) = match w_axis {
        Some(ax) => (ws[ax], ws[ax + 1..].iter().product::<usize>()),
        None => (1, wf.data.len()),
    };
    let chan_of = |i: usize| (i / inner) % chans;
    let mut amax = vec![0f64; chans];
    for (i, &v) in wf.data.iter().enumerate() {
        let c = chan_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    // the bias, in accumulator units, must fit i32: a channel's scale is raised if its bias needs it
    let bias = node.inputs.get(2).and_then(|&v| fconst(v));
    if node.inputs.len() > 2 && bias.is_none() {
        return None;
    }
    let out_rank = node.shape.len();
    let m_shape: Vec<u32> = match out_axis {
        Some(p) => std::iter::once(chans as u32)
            .chain(std::iter::repeat_n(1, out_rank - 1 - p))
            .collect(),
        None => vec![1],
    };
    // how the multipliers line up with a bias: a convolution's bias is one value per channel; an
    // EinSum's broadcasts to the output like the multipliers (and grows a channel axis if it lacks one)
    let m_index: Vec<u32> = match node.op {
        Op::Conv2d { .. } => vec![chans as u32],
        _ => m_shape.clone(),
    };
    let bias_plan = bias.map(|bc| {
        let bshape: Vec<u32> =
            verity_engine::ir::broadcast_shapes(&bc.shape, &m_index).unwrap_or(bc.shape.clone());
        (bc, bshape)
    });
    let s8f = libm::ldexp(1.0, s8 as i32);
    let mut need = amax.iter().map(|&a| a / qmax).collect::<Vec<f64>>();
    if let Some((bc, bshape)) = &bias_plan {
        let us = |s: &[u32]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
        let (bs, ms) = (us(bshape), us(&m_index));
        let st_b = broadcast_strides(&bs, &us(&bc.shape));
        let st_m = broadcast_strides(&bs, &ms);
        for_each_index(&bs, &[st_b, st_m], |_, offs| {
            let (v, c) = (bc.data[offs[0]].abs(), offs[1]);
            need[c] = need[c].max(v * s8f / libm::ldexp(1.0, 30));
        });
    }
    let top = need.iter().fold(0f64, |m, &v| m.max(v));
    if top == 0.0 {
        return None;
    }
    let s_m = (MULT_BITS - ceil_log2(top)).clamp(-30, 60);
    let smf = libm::ldexp(1.0, s_m);
    // a channel with nothing to represent takes the largest scale (its weights are 0 either way)
    let mult: Vec<i32> = need
        .iter()
        .map(|&n| {
            round(if n > 0.0 { n } else { top } * smf).clamp(1.0, (1u64 << 31) as f64 - 1.0) as i32
        })
        .collect();
    let q: Vec<i32> = wf
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let sc = mult[chan_of(i)] as f64 / smf;
            round(v / sc).clamp(-qmax, qmax) as i32
        })
        .collect();
    let bias_c = match &bias_plan {
        Some((bc, bshape)) => {
            let us = |s: &[u32]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
            let (bs, ms) = (us(bshape), us(&m_index));
            let st_b = broadcast_strides(&bs, &us(&bc.shape));
            let st_m = broadcast_strides(&bs, &ms);
            let mut data = vec![0i32; bs.iter().product()];
            let mut ok = true;
            for_each_index(&bs, &[st_b, st_m], |flat, offs| {
                let acc_unit = mult[offs[1]] as f64 / smf / s8f;
                let v = round(bc.data[offs[0]] / acc_unit);
                ok &= v.abs() < 2147483647.0;
                data[flat] = v as i32;
            });
            if !ok {
                return None;
            }
            Some(Const {
                shape: bshape.clone(),
                scale: s8,
                data,
            })
        }
        None => None,
    };
    // the accumulator's bound (the bias, in accumulator units, is below 2^30): rounded by `r` bits
    // where it could leave i32
    let xmax = (-lo).max(hi) as f64;
    let bound = terms * xmax * qmax + libm::ldexp(1.0, 30);
    // smallest r with |rshift(acc, r)| < 2^31, i.e. (bound + 2^(r−1)) / 2^r < 2^31 (exact in f64)
    let mut r = 0;
    while (bound + if r > 0 { libm::ldexp(1.0, r - 1) } else { 0.0 }) / libm::ldexp(1.0, r)
        >= libm::ldexp(1.0, 31)
    {
        r += 1;
    }
    let s_acc = s8 as i32 - r;
    // the shifts must be legal ones
    if (s_acc + s_m - node.scale as i32).abs() > verity_engine::arith::MAX_SHIFT
        || !(-128..=127).contains(&s_m)
        || s_acc < -128
    {
        return None;
    }
    let qr = b.push_const(Const {
        shape: wf.shape.clone(),
        scale: 0,
        data: q,
    });
    let mr = b.push_const(Const {
        shape: m_shape,
        scale: s_m as i8,
        data: mult,
    });
    let mut ins = if wi == 1 { vec![xr, qr] } else { vec![qr, xr] };
    if let Some(c) = bias_c {
        ins.push(b.push_const(c));
    }
    debug_assert_eq!(b.scale_of(xr), s8);
    let acc = b.push_node(
        format!("{}/acc", node.name),
        node.op.clone(),
        ins,
        node.shape.clone(),
        s_acc as i8,
    );
    Some(b.push_node(
        node.name.clone(),
        Op::Mul,
        vec![acc, mr],
        node.shape.clone(),
        node.scale,
    ))
}
