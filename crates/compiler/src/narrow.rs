//! The narrow lowering (`--precision int8`, `w8a16`, `w16a16`, `w4a8`, `w8a8d`, …): every contraction
//! with a constant weight operand (`EinSum`, `Conv2d`) is rewritten so that its weights hold 4-, 8- or
//! 16-bit values and its activation operand 8- or 16-bit ones, which the engine multiplies with its
//! 8-bit kernels (16-bit activations as two 8-bit halves, 16-bit weights as two `i8` parts); a plan
//! ([`Plan`]) can give single contractions 16-bit weights or activations (`auto`, [`crate::mixed`]):
//!
//! ```text
//! x (i32, scale s_x) ── Clamp{0,2^U−1} or Clamp{−2^(A−1),2^(A−1)−1} at scale s_a ──┐
//!                                  q (weights, scale 0) ── EinSum/Conv2d (+ bias in accumulator units)
//!                                          (output at s_a − r) └─ Mul by m (per-channel multiplier, scale s_m) → y
//! ```
//!
//! (`U = 8` for 8-bit activations, 15 for 16-bit ones: a 16-bit activation is an `i16` value either
//! way, which the depthwise kernel's pairs take.) Weights are quantized per output channel:
//! `w ≈ q · m_c · 2^-s_m` with `|q| ≤ 2^(W−1) − 1` (32639 for 16-bit weights) and a 24-bit
//! multiplier `m_c`, so the channel's real scale is represented to 2^-24 relative precision. Activations
//! feeding a contraction are requantized by a saturating `Clamp` at a power-of-two scale chosen from
//! calibration (unsigned when the calibrated values are non-negative, as after a ReLU, else signed). The
//! accumulator is rounded by `r` bits only when its bound (reduction length × largest activation ×
//! largest weight + bias) could leave `i32` (never for 8-bit activations and weights up to 33,155 terms).
//!
//! Two variants for matrix products (`EinSum`), spec §7.2:
//! - **4-bit weights** (`w4…`) have one multiplier per (channel, block of [`BLOCK`] elements along the
//!   reduced axis), as GGUF's block formats: the reduced axis is viewed as `[blocks, BLOCK]`, the
//!   product keeps the block axis, `Mul` scales each block and a `Reduce` sums the blocks. A product
//!   whose reduced axis does not divide into blocks (and every convolution) takes 8-bit weights.
//! - **Dynamic activations** (`…d`): each row (one position of the axes kept in the output) is
//!   quantized at run time from its largest magnitude `M`: `q = div_round(x · 2^(Y−1), M)`, clamped to
//!   `±(2^(Y−1) − 1)`; the product is scaled back by `M` after the channel (or block) multipliers, and
//!   the bias is added last.
//!
//! Everything else keeps the 32-bit path; every op used is a v1 op, so the semantics, one-step checks
//! and proofs apply unchanged. Deterministic like the rest of the compiler: exact `f64` arithmetic only.

use std::collections::BTreeMap;

use verity_engine::elements::Elements;
use verity_engine::exec::{broadcast_strides, for_each_index};
use verity_engine::ir::{Const, Model, Node, Op, Output, ReduceKind, ValueId};

use crate::fgraph::{on_slice, FConst, FGraph};
use crate::quantize::{ceil_log2, Stats};

/// Bits of a per-channel multiplier: 2^-24 relative precision for a weight scale, and an accumulator
/// times its multiplier stays below 2^56, well inside what the zk prover's exact products allow.
const MULT_BITS: i32 = 24;
/// Largest activation scale the lowering picks (a value range of zero would otherwise ask for any).
const MAX_ACT_SCALE: i32 = 24;
/// Fractional bits of an activation's exact factor ([`exact_factor`]).
const FACTOR_BITS: i32 = 14;
/// Factors below this are not applied (they would gain less than 1/64 of a step).
const FACTOR_MIN: f64 = 1.0 + 1.0 / 64.0;

/// A value of the model being built: a model input, a new constant, or a new node.
#[derive(Clone, Copy, Debug)]
enum R {
    In(u32),
    C(usize),
    N(usize),
}

struct Builder<'a> {
    old: &'a Model,
    /// The float graph and, per old value, its float value: the source of the old model's deferred
    /// constants (see [`crate::quantize::quantize`]).
    float: (&'a FGraph, &'a [Option<usize>]),
    consts: Vec<Const>,
    nodes: Vec<(Node, Vec<R>)>,
    /// Old value id → new value.
    map: Vec<Option<R>>,
    /// (old value id, bits, axes of a per-row quantization or none) → its narrow requantization.
    narrowed: BTreeMap<(ValueId, i32, Vec<u32>), Quantized>,
    /// The contractions narrowed so far (the last one's node index is set by [`narrow`]).
    done: Vec<Narrowed>,
    /// Old value id → the indices of the old nodes reading it.
    readers: Vec<Vec<usize>>,
    /// Per old node, its activation input when it is a contraction its plan narrows with a
    /// calibrated (static) activation ([`static_activation`]).
    static_reader: Vec<Option<ValueId>>,
    /// New node index of a narrowed contraction's output `Mul` → its multipliers' constant.
    out_mults: BTreeMap<usize, usize>,
    /// Old values whose new form was multiplied by a factor (folded into their producer's
    /// multipliers): the factor.
    folded: BTreeMap<ValueId, f64>,
    /// Old value → its new form times its exact factor (a `Mul` by a constant), and the factor.
    scaled: BTreeMap<ValueId, (R, f64)>,
    /// Old value → its folded form divided back by its factor, for a reader that needs the value.
    restored: BTreeMap<ValueId, R>,
    /// (table constant, factor in quarters) → its scaled copy.
    tables: BTreeMap<(usize, u32), R>,
}

impl Builder<'_> {
    fn value(&mut self, v: ValueId) -> R {
        if let Some(r) = self.map[v as usize] {
            return r;
        }
        // only constants are mapped lazily (so unused ones are dropped)
        let mut c = self
            .old
            .const_of(v)
            .cloned()
            .expect("inputs and nodes are mapped before use");
        if c.data.len() as u64 != verity_engine::ir::numel(&c.shape) {
            // deferred: quantized from its float value now (checked when it was deferred)
            let (g, float_of) = self.float;
            let f = float_of[v as usize].and_then(|f| g.const_of(f as u32));
            let f = f.expect("a deferred constant has a float value");
            let q = crate::quantize::quantize_slice(f.data.iter(), c.scale, "constant");
            c.data = q.expect("checked when deferred").into();
        }
        let r = self.push_const(c);
        self.map[v as usize] = Some(r);
        r
    }

    /// The new form of old value `v` as its readers outside the narrow contractions need it: divided
    /// back by the factor folded into it, if any (a `Mul` by `1/f`, shared).
    fn plain(&mut self, v: ValueId) -> R {
        let r = self.value(v);
        let Some(&f) = self.folded.get(&v) else {
            return r;
        };
        if let Some(&p) = self.restored.get(&v) {
            return p;
        }
        let old = self.old.value(v).expect("a folded value is a node");
        let (shape, scale) = (old.shape.to_vec(), old.scale);
        let inv = self.push_const(Const {
            shape: vec![1],
            scale: 24,
            data: vec![round(libm::ldexp(1.0 / f, 24)) as i32].into(),
        });
        let name = format!("{}/unscaled", self.name_of(v));
        let p = self.push_node(name, Op::Mul, vec![r, inv], shape, scale);
        self.restored.insert(v, p);
        p
    }

    /// The name of old value `v`: its input's or its node's.
    fn name_of(&self, v: ValueId) -> &str {
        match (v as usize).checked_sub(self.old.first_node_value()) {
            Some(k) => &self.old.nodes[k].name,
            None => &self.old.inputs[v as usize].name,
        }
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
/// its float value, `None` for function tables) into its narrow form with the given widths.
/// Contractions that cannot be narrowed (integer operands, two activations, shifts out of range) keep
/// their 32-bit form.
pub fn narrow(
    g: &FGraph,
    stats: &[Stats],
    model: &Model,
    float_of: &[Option<usize>],
    plan: &Plan,
) -> (Model, Vec<Narrowed>) {
    let mut b = Builder {
        old: model,
        float: (g, float_of),
        consts: Vec::new(),
        nodes: Vec::new(),
        map: vec![None; model.value_count()],
        narrowed: BTreeMap::new(),
        done: Vec::new(),
        readers: vec![Vec::new(); model.value_count()],
        static_reader: vec![None; model.nodes.len()],
        out_mults: BTreeMap::new(),
        folded: BTreeMap::new(),
        scaled: BTreeMap::new(),
        restored: BTreeMap::new(),
        tables: BTreeMap::new(),
    };
    for (k, node) in model.nodes.iter().enumerate() {
        for &v in &node.inputs {
            b.readers[v as usize].push(k);
        }
        b.static_reader[k] = static_activation(g, float_of, node, plan.widths(k).0);
    }
    for i in 0..model.inputs.len() {
        b.map[i] = Some(R::In(i as u32));
    }
    let first = model.first_node_value();
    for (k, node) in model.nodes.iter().enumerate() {
        let r = match narrow_node(&mut b, g, stats, float_of, node, plan.widths(k)) {
            Some(r) => r,
            None => {
                let ins = node.inputs.iter().map(|&v| b.plain(v)).collect();
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
        if let Some(d) = b.done.last_mut().filter(|d| d.node == usize::MAX) {
            d.node = k;
        }
    }
    let done = std::mem::take(&mut b.done);
    (b.finish(), done)
}

/// Which widths each contraction gets: `base`, with 16 bits for the weights or the activations of the
/// contractions listed (by their index among the 32-bit model's nodes).
#[derive(Clone, Debug)]
pub struct Plan {
    /// The widths of every other contraction.
    pub base: Widths,
    /// Contractions with [`WIDE_BITS`]-bit weights.
    pub wide_weights: std::collections::BTreeSet<usize>,
    /// Contractions with [`WIDE_BITS`]-bit activations.
    pub wide_acts: std::collections::BTreeSet<usize>,
    /// List the contractions narrowed, with their noise ([`Narrowed`]).
    pub measure: bool,
}

impl Plan {
    /// The same widths everywhere.
    pub fn uniform(base: Widths) -> Plan {
        Plan {
            base,
            wide_weights: Default::default(),
            wide_acts: Default::default(),
            measure: false,
        }
    }

    fn widths(&self, k: usize) -> (Widths, bool) {
        let mut w = self.base;
        if self.wide_weights.contains(&k) {
            w.wbits = WIDE_BITS;
        }
        if self.wide_acts.contains(&k) {
            w.abits = WIDE_BITS as i32;
        }
        (w, self.measure)
    }
}

/// The bits a [`Plan`] gives the operands it widens: 12, so their quantization noise is 1/256 of the
/// 8-bit one's (24 dB less) while a contraction with both operands widened stays cheap — the engine
/// multiplies 12-bit weights by 12-bit activations as 16-bit values in one pass (their products are
/// small enough for blocks of `i32` sums), half the cost of four 8-bit products, where full 16-bit
/// operands take four (or two passes of 8-bit weight parts by 16-bit values).
pub const WIDE_BITS: u8 = 12;

/// A contraction the lowering narrowed, and how much noise its operands' 8-bit forms add.
#[derive(Clone, Debug)]
pub struct Narrowed {
    /// Its index among the 32-bit model's nodes.
    pub node: usize,
    /// The weights' quantization noise at 8 bits per output channel, relative to their power:
    /// `Σ_c n_c · (max_c / 127)² / 12 / Σ w²`.
    pub weight_noise: f64,
    /// The activation's at 8 bits at its calibrated scale, relative to its calibrated mean square:
    /// `(2^−s / f)² / 12 / mean(x²)`; `None` when it is quantized per row at run time.
    pub act_noise: Option<f64>,
    /// Its multiply-accumulates: output elements times the reduction length.
    pub macs: f64,
}

/// Elements per block of 4-bit weights along the reduced axis of a matrix product (as in GGUF's 4-bit
/// formats); each block has its own multiplier.
pub const BLOCK: usize = 32;

/// The lowering's widths.
#[derive(Clone, Copy, Debug)]
pub struct Widths {
    /// Weight bits: 4 (per block), 8, 12 or 16 (per output channel).
    wbits: u8,
    /// Bits of an activation (one of them the sign for signed values).
    abits: i32,
    /// Activations of matrix products are quantized per row at run time.
    dynamic: bool,
}

impl Widths {
    /// `weights` ∈ {4, 8, 12, 16}, `acts` ∈ {8, 12, 16}.
    pub fn new(weights: u8, acts: u8, dynamic: bool) -> Widths {
        Widths {
            wbits: weights,
            abits: acts as i32,
            dynamic,
        }
    }
}

/// How one contraction's operands are laid out.
struct Roles {
    /// Index of the weight among the node's inputs.
    wi: usize,
    /// The weight's output-channel axis, and where it is in the output.
    chan: Option<(usize, usize)>,
    /// The weight's reduced axes (in the activation and not in the output).
    reduced: Vec<usize>,
}

fn roles(node: &Node, weight_is_b: bool) -> Option<Roles> {
    match &node.op {
        Op::Conv2d { .. } => Some(Roles {
            wi: 1,
            chan: Some((0, 1)),
            reduced: vec![1, 2, 3],
        }),
        Op::EinSum { a, b: bl, out } => {
            let (wi, wl, al) = if weight_is_b { (1, bl, a) } else { (0, a, bl) };
            let chans: Vec<usize> = (0..wl.len())
                .filter(|&i| out.contains(&wl[i]) && !al.contains(&wl[i]))
                .collect();
            let reduced = (0..wl.len())
                .filter(|&i| al.contains(&wl[i]) && !out.contains(&wl[i]))
                .collect();
            let chan = match chans[..] {
                [i] => out.iter().position(|&l| l == wl[i]).map(|p| (i, p)),
                _ => None,
            };
            Some(Roles { wi, chan, reduced })
        }
        _ => None,
    }
}

/// An activation requantized for the narrow contractions that read it.
#[derive(Clone)]
struct Quantized {
    /// The narrow values and their scale.
    q: R,
    scale: i8,
    /// Their range.
    lo: i32,
    hi: i32,
    /// The factor `f` (at least 1, below 2) the values were multiplied by before their scale: a
    /// value's real magnitude is `q · 2^−scale / f` (see [`exact_factor`]).
    factor: f64,
    /// Per-row quantization: the rows' largest magnitudes (at the activation's scale), laid out to
    /// broadcast against the contraction's output.
    rows: Option<R>,
}

/// The magnitude bits of an activation requantized to `abits` bits: all of them for non-negative values
/// narrower than 16 bits (`0..=255` at 8 bits, `0..=4095` at 12), one fewer otherwise — 16-bit
/// activations are `i16` values either way (`0..=32767` or `−32768..=32767`), which every 16-bit
/// kernel takes (depthwise pairs included).
fn act_bits(unsigned: bool, abits: i32) -> i32 {
    if unsigned && abits < 16 {
        abits
    } else {
        abits - 1
    }
}

/// The factor `f = ⌊2^(⌈log₂ M⌉ + 14) / M⌋ · 2^−14` (`M` the calibrated largest magnitude) that brings
/// an activation's range up to just below the next power of two, so its narrow values use their full
/// range (a power-of-two scale alone leaves up to half of it unused: about half a bit on average);
/// 1 when it would gain less than 1/64 of a step or `M` is 0.
fn exact_factor(xs: &Stats) -> f64 {
    let m = xs.min.abs().max(xs.max.abs());
    if !(m > 0.0 && m.is_finite()) {
        return 1.0;
    }
    let f = libm::ldexp(
        (libm::ldexp(1.0, ceil_log2(m) + FACTOR_BITS) / m).floor(),
        -FACTOR_BITS,
    );
    if f >= FACTOR_MIN {
        f
    } else {
        1.0
    }
}

/// The activation input of `node` when its plan narrows it with a calibrated (not per-row) activation
/// read from a node: a `Conv2d`, or an `EinSum` without dynamic activations, with a constant real weight.
fn static_activation(
    g: &FGraph,
    float_of: &[Option<usize>],
    node: &Node,
    widths: Widths,
) -> Option<ValueId> {
    let fconst = |v: ValueId| {
        let f = float_of[v as usize]?;
        g.const_of(f as u32).filter(|c| !c.int)
    };
    if widths.dynamic && matches!(node.op, Op::EinSum { .. }) {
        return None;
    }
    let weight_is_b = node.inputs.len() > 1 && fconst(node.inputs[1]).is_some();
    let Roles { wi, .. } = roles(node, weight_is_b)?;
    fconst(node.inputs[wi])?;
    let x = *node.inputs.get(1 - wi)?;
    (fconst(x).is_none() && !g.is_int(float_of[x as usize]? as u32)).then_some(x)
}

/// The scale of an activation requantized to `abits` bits (unsigned when its calibrated values are
/// non-negative): the finest at which its calibrated range, times `factor`, fits.
fn act_scale(xs: &Stats, abits: i32, factor: f64) -> i32 {
    let m = xs.min.abs().max(xs.max.abs()) * factor;
    let bits = act_bits(xs.min >= 0.0, abits);
    if m > 0.0 {
        (bits - ceil_log2(m)).clamp(-30, MAX_ACT_SCALE)
    } else {
        MAX_ACT_SCALE
    }
}

/// Requantize activation `x` (read by `node`) to `abits` bits at the scale calibration chose.
fn quantize_static(
    b: &mut Builder<'_>,
    xs: &Stats,
    x: ValueId,
    node: &Node,
    abits: i32,
) -> Option<Quantized> {
    // unsigned when the calibrated values are non-negative
    let unsigned = xs.min >= 0.0;
    let (lo, hi) = if unsigned {
        (0, (1 << act_bits(true, abits)) - 1)
    } else {
        (-(1 << (abits - 1)), (1 << (abits - 1)) - 1)
    };
    if let Some(q) = b.narrowed.get(&(x, abits, Vec::new())) {
        return Some(q.clone());
    }
    // the factor applied may be rounded down (a table's quarters), never below the same power of two:
    // the scale is the one of the exact factor
    let factor = exact_factor(xs);
    let s8 = act_scale(xs, abits, factor) as i8;
    let old = b.old.value(x)?;
    if (old.scale as i32 - s8 as i32).abs() > verity_engine::arith::MAX_SHIFT {
        return None;
    }
    let shape = old.shape.to_vec();
    let (src, factor) = scaled(b, x, factor);
    let q = b.push_node(
        format!("{}/q{abits}", node.name),
        Op::Clamp { lo, hi },
        vec![src],
        shape,
        s8,
    );
    let out = Quantized {
        q,
        scale: s8,
        lo,
        hi,
        factor,
        rows: None,
    };
    b.narrowed.insert((x, abits, Vec::new()), out.clone());
    Some(out)
}

/// Old value `x`'s new form multiplied by `factor` (exactly 1 or an [`exact_factor`]), and the
/// factor applied: itself when 1; else, when every reader of `x` is a narrow contraction with a
/// calibrated activation (which divides the factor back out of its own multipliers), folded into what
/// makes it ([`fold`]); else `Mul(x, ⌊f · 2^14⌋)` at `x`'s scale (shared by its readers).
fn scaled(b: &mut Builder<'_>, x: ValueId, factor: f64) -> (R, f64) {
    if factor == 1.0 {
        return (b.value(x), 1.0);
    }
    if let Some(&f) = b.folded.get(&x) {
        return (b.value(x), f);
    }
    if let Some(&(r, f)) = b.scaled.get(&x) {
        return (r, f);
    }
    if let Some(f) = fold(b, x, factor) {
        b.folded.insert(x, f);
        return (b.value(x), f);
    }
    let old = b
        .old
        .value(x)
        .expect("a narrow activation is an input or a node");
    let (shape, scale) = (old.shape.to_vec(), old.scale);
    let src = b.value(x);
    let f = b.push_const(Const {
        shape: vec![1],
        scale: FACTOR_BITS as i8,
        data: vec![libm::ldexp(factor, FACTOR_BITS) as i32].into(),
    });
    let name = format!("{}/scaled", b.name_of(x));
    let r = b.push_node(name, Op::Mul, vec![src, f], shape, scale);
    b.scaled.insert(x, (r, factor));
    (r, factor)
}

/// Where a factor folds into a `Mul` making a value.
enum FoldAt {
    /// A narrow contraction's output multipliers (scaled in place).
    Multipliers(usize),
    /// A constant operand (input `i` of new node `n`), replaced by a scaled copy.
    Constant { n: usize, i: usize },
    /// The table of a `Lookup` (new node `n`) read by nothing but the `Mul`, replaced by a scaled
    /// copy; the factor is rounded down to quarters, so a shared table has at most three copies.
    Table { n: usize },
}

/// Multiply old value `x`'s new form by `factor` (or a little less: the factor applied is returned)
/// where it is made, if that changes nothing else (see [`scaled`]): `x` is not an output, every reader
/// narrows it as a calibrated activation, and it is made by a `Mul` — of a narrow contraction's
/// accumulator by its multipliers, of anything by a constant, or of anything by a `Lookup` read by
/// nothing else (`x · sigmoid(x)`, a squeeze-excitation gate) — possibly followed by a chain of ops
/// that commute with a positive factor (`Clamp` with `lo ≤ 0 ≤ hi`, whose bounds are scaled alike;
/// `Reshape`, `Transpose`, `MaxPool2d`), each value of the chain read by nothing else.
fn fold(b: &mut Builder<'_>, x: ValueId, factor: f64) -> Option<f64> {
    let old = b.old;
    let first = old.first_node_value();
    let output = |v: ValueId| old.outputs.iter().any(|o| o.value == v);
    let only_reader =
        |b: &Builder<'_>, v: ValueId, k: usize| b.readers[v as usize] == [k] && !output(v);
    if (x as usize) < first
        || output(x)
        || !b.readers[x as usize]
            .iter()
            .all(|&k| b.static_reader[k] == Some(x))
    {
        return None;
    }
    // walk back to the Mul, noting the clamps to scale
    let (mut v, mut clamps) = (x, Vec::new());
    let (at, mul) = loop {
        let Some(R::N(n)) = b.map[v as usize] else {
            return None;
        };
        if b.out_mults.contains_key(&n) {
            break (FoldAt::Multipliers(b.out_mults[&n]), n);
        }
        let k = (v as usize).checked_sub(first)?;
        let node = &old.nodes[k];
        match (&node.op, &b.nodes[n].0.op) {
            (Op::Clamp { lo, hi }, Op::Clamp { .. }) if *lo <= 0 && *hi >= 0 => clamps.push(n),
            (Op::Reshape, Op::Reshape)
            | (Op::Transpose { .. }, Op::Transpose { .. })
            | (Op::MaxPool2d { .. }, Op::MaxPool2d { .. }) => {}
            (Op::Mul, Op::Mul) if node.inputs.len() == 2 => {
                let ins = &b.nodes[n].1;
                if let Some(i) = (0..2).find(|&i| matches!(ins[i], R::C(_))) {
                    break (FoldAt::Constant { n, i }, n);
                }
                let table = (0..2).find_map(|i| {
                    let t = node.inputs[i];
                    let kt = (t as usize).checked_sub(first)?;
                    let R::N(nt) = b.map[t as usize]? else {
                        return None;
                    };
                    let lookup = matches!(old.nodes[kt].op, Op::Lookup { .. })
                        && matches!(b.nodes[nt].0.op, Op::Lookup { .. })
                        && matches!(b.nodes[nt].1.get(1), Some(R::C(_)));
                    (lookup && only_reader(b, t, k)).then_some(nt)
                });
                match table {
                    Some(nt) => break (FoldAt::Table { n: nt }, n),
                    None => return None,
                }
            }
            _ => return None,
        }
        let y = node.inputs[0];
        if !only_reader(b, y, k) {
            return None;
        }
        v = y;
    };
    let factor = match at {
        FoldAt::Table { .. } => (factor * 4.0).floor() / 4.0,
        _ => factor,
    };
    if factor < FACTOR_MIN {
        return None;
    }
    let scale = |v: i32| -> i32 {
        if v == i32::MIN || v == i32::MAX {
            v
        } else {
            round(v as f64 * factor).clamp(i32::MIN as f64, i32::MAX as f64) as i32
        }
    };
    match at {
        FoldAt::Multipliers(c) => {
            let orig: Vec<i32> = b.consts[c].data.iter().copied().collect();
            let mut m: Vec<i32> = orig.iter().map(|&m| scale(m)).collect();
            if m.iter().any(|v| v.unsigned_abs() >= 1 << MULT_BITS) {
                // one bit coarser, so the multipliers keep MULT_BITS bits: the Mul's shift is one less
                let s_m = b.consts[c].scale as i32 - 1;
                let (acc, out) = (b.nodes[mul].1[0], b.nodes[mul].0.scale as i32);
                if !legal(b.scale_of(acc) as i32 + s_m - out) || s_m < -128 {
                    return None;
                }
                m = orig
                    .iter()
                    .map(|&v| round(v as f64 * factor / 2.0).max(1.0) as i32)
                    .collect();
                b.consts[c].scale = s_m as i8;
            }
            b.consts[c].data = m.into();
        }
        FoldAt::Constant { n, i } => {
            let R::C(c) = b.nodes[n].1[i] else {
                return None;
            };
            // the copy keeps at least MULT_BITS significant bits (a few more fractional bits if the
            // constant's values are small), which the Mul's shift absorbs
            let top = top_of(&b.consts[c]);
            if top == 0 {
                return None;
            }
            let extra = (MULT_BITS - (32 - top.leading_zeros() as i32)).max(0);
            let s_c = b.consts[c].scale as i32 + extra;
            let other = b.scale_of(b.nodes[n].1[1 - i]) as i32;
            if !legal(other + s_c - b.nodes[n].0.scale as i32) || s_c > 127 {
                return None;
            }
            let data: Vec<i32> = b.consts[c]
                .data
                .iter()
                .map(|&v| round(libm::ldexp(v as f64 * factor, extra)) as i32)
                .collect();
            let shape = b.consts[c].shape.clone();
            let copy = b.push_const(Const {
                shape,
                scale: s_c as i8,
                data: data.into(),
            });
            b.nodes[n].1[i] = copy;
        }
        FoldAt::Table { n } => {
            let R::C(c) = b.nodes[n].1[1] else {
                return None;
            };
            let key = (c, (factor * 4.0) as u32);
            let copy = match b.tables.get(&key) {
                Some(&t) => t,
                None => {
                    let top = top_of(&b.consts[c]);
                    // a table of i16 entries stays one (the fast lookups need it)
                    let room = if top <= i16::MAX as u32 {
                        i16::MAX as f64
                    } else {
                        i32::MAX as f64
                    };
                    if top as f64 * factor > room {
                        return None;
                    }
                    // a table interpolated between knots stays one: its knots are scaled
                    let d = &b.consts[c].data;
                    let data: Vec<i32> = match verity_engine::segments::knots(d) {
                        Some((g, k)) => {
                            let k: Vec<i32> = k.iter().map(|&v| scale(v)).collect();
                            verity_engine::segments::interpolated(&k, g, d.len())
                        }
                        None => d.iter().map(|&v| scale(v)).collect(),
                    };
                    let t = b.consts[c].clone();
                    b.push_const(Const {
                        data: data.into(),
                        ..t
                    })
                }
            };
            b.tables.insert(key, copy);
            b.nodes[n].1[1] = copy;
        }
    }
    for n in clamps {
        if let Op::Clamp { lo, hi } = b.nodes[n].0.op {
            b.nodes[n].0.op = Op::Clamp {
                lo: scale(lo),
                hi: scale(hi),
            };
        }
    }
    Some(factor)
}

/// The largest magnitude of a constant's values.
fn top_of(c: &Const) -> u32 {
    c.data.iter().fold(0u32, |m, v| m.max(v.unsigned_abs()))
}

/// Requantize activation `x` of `EinSum` `node` (operand labels `xl`) per row at run time: a row is
/// one position of the axes kept in the output; with `M` the row's largest magnitude (at least one
/// unit), `q = clamp(div_round(x · 2^(Y−1), M), ±(2^(Y−1) − 1))` at scale `Y − 1`, so `x ≈ q · M · 2^−(Y−1)`.
fn quantize_dynamic(
    b: &mut Builder<'_>,
    x: ValueId,
    xl: &[u8],
    node: &Node,
    abits: i32,
) -> Option<Quantized> {
    let Op::EinSum { out, .. } = &node.op else {
        return None;
    };
    let old = b.old.value(x)?;
    let (sx, xshape) = (old.scale, old.shape.to_vec());
    let axes: Vec<u32> = (0..xl.len())
        .filter(|&i| !out.contains(&xl[i]))
        .map(|i| i as u32)
        .collect();
    if axes.is_empty() {
        return None;
    }
    // the rows' maxima line up with the output when the kept labels keep their order there
    let kept: Vec<u8> = xl.iter().copied().filter(|l| out.contains(l)).collect();
    let in_out: Vec<u8> = out.iter().copied().filter(|l| kept.contains(l)).collect();
    if kept != in_out {
        return None;
    }
    let rows_shape: Vec<u32> = out
        .iter()
        .map(|l| match xl.iter().position(|m| m == l) {
            Some(i) => xshape[i],
            None => 1,
        })
        .collect();
    let key = (x, abits, axes.clone());
    let q = match b.narrowed.get(&key) {
        Some(q) => q.clone(),
        None => {
            let name = &node.name;
            let src = b.value(x);
            let mut reduced = xshape.clone();
            for &a in &axes {
                reduced[a as usize] = 1;
            }
            let abs = b.push_node(
                format!("{name}/abs"),
                Op::LeakyRelu {
                    alpha_q: -1,
                    alpha_scale: 0,
                },
                vec![src],
                xshape.clone(),
                sx,
            );
            let max = b.push_node(
                format!("{name}/rowmax"),
                Op::Reduce {
                    kind: ReduceKind::Max,
                    axes,
                },
                vec![abs],
                reduced.clone(),
                sx,
            );
            let m = b.push_node(
                format!("{name}/rowmax1"),
                Op::Clamp {
                    lo: 1,
                    hi: i32::MAX,
                },
                vec![max],
                reduced,
                sx,
            );
            let sq = (abits - 1) as i8;
            let top = (1 << (abits - 1)) - 1;
            let div = b.push_node(
                format!("{name}/div"),
                Op::Div,
                vec![src, m],
                xshape.clone(),
                sq,
            );
            let q = b.push_node(
                format!("{name}/q{abits}d"),
                Op::Clamp { lo: -top, hi: top },
                vec![div],
                xshape,
                sq,
            );
            let out = Quantized {
                q,
                scale: sq,
                lo: -top,
                hi: top,
                factor: 1.0,
                rows: Some(m),
            };
            b.narrowed.insert(key, out.clone());
            out
        }
    };
    // the rows' maxima in the output's layout (same elements, so a reshape)
    let m = q.rows?;
    let rows = b.push_node(
        format!("{}/rows", node.name),
        Op::Reshape,
        vec![m],
        rows_shape,
        sx,
    );
    Some(Quantized {
        rows: Some(rows),
        ..q
    })
}

/// Per-group multipliers: `σ_i = need_i` scaled to `bits` bits at one scale `s_m`: `(m_i, s_m)` with
/// `m_i = ⌊σ_i · 2^s_m + ½⌋ ≥ 1`; `None` when there is nothing to represent.
fn multipliers(need: &[f64], bits: i32) -> Option<(Vec<i32>, i32)> {
    let top = need.iter().fold(0f64, |m, &v| m.max(v));
    if top == 0.0 {
        return None;
    }
    let s_m = (bits - ceil_log2(top)).clamp(-30, 60);
    let smf = libm::ldexp(1.0, s_m);
    // a group with nothing to represent takes the largest scale (its weights are 0 either way)
    let mult = need
        .iter()
        .map(|&n| {
            round(if n > 0.0 { n } else { top } * smf).clamp(1.0, (1u64 << 31) as f64 - 1.0) as i32
        })
        .collect();
    Some((mult, s_m))
}

/// The least `r ≥ 0` with `(bound + 2^(r−1)) / 2^r < 2^31`: the bits an accumulator whose magnitude
/// is at most `bound` is rounded by to stay in `i32` (exact in `f64`).
fn acc_shift(bound: f64) -> i32 {
    let mut r = 0;
    while (bound + if r > 0 { libm::ldexp(1.0, r - 1) } else { 0.0 }) / libm::ldexp(1.0, r)
        >= libm::ldexp(1.0, 31)
    {
        r += 1;
    }
    r
}

fn legal(shift: i32) -> bool {
    shift.abs() <= verity_engine::arith::MAX_SHIFT
}

/// The narrow form of one contraction, if it has one: returns the value replacing the node's output.
fn narrow_node(
    b: &mut Builder<'_>,
    g: &FGraph,
    stats: &[Stats],
    float_of: &[Option<usize>],
    node: &Node,
    (widths, measure): (Widths, bool),
) -> Option<R> {
    let old = b.old;
    let fconst = |v: ValueId| {
        let f = float_of[v as usize]?;
        g.const_of(f as u32).filter(|c| !c.int)
    };
    let Roles { wi, chan, reduced } = roles(
        node,
        node.inputs.len() > 1 && fconst(node.inputs[1]).is_some(),
    )?;
    let xi = 1 - wi;
    let (x, w) = (*node.inputs.get(xi)?, node.inputs[wi]);
    let wf = fconst(w)?;
    let ws: Vec<usize> = wf.shape.iter().map(|&d| d as usize).collect();
    let terms: f64 = reduced.iter().map(|&i| ws[i] as f64).product();
    if old.const_of(x).is_some() {
        return None;
    }
    let xs = &stats[float_of[x as usize]?];
    if g.is_int(float_of[x as usize]? as u32) {
        return None;
    }
    let given = match node.inputs.get(2) {
        Some(&v) => Some(fconst(v)?),
        None => None,
    };
    let einsum = match &node.op {
        Op::EinSum { a, b: bl, out } => Some((a, bl, out)),
        _ => None,
    };
    // 4-bit weights come in blocks along the one reduced axis of a matrix product; a contraction
    // without such an axis takes 8-bit weights per channel
    let block_axis = match (widths.wbits, &reduced[..]) {
        (4, &[k]) if einsum.is_some() && ws[k].is_multiple_of(BLOCK) => Some(k),
        _ => None,
    };
    let wbits = match widths.wbits {
        4 if block_axis.is_none() => 8,
        w => w,
    };
    // 16-bit weights stop at 32639, where each splits into two `i8` parts for the 8-bit kernels
    let qmax = match wbits {
        16 => verity_engine::qgemm::WEIGHT16_MAX as f64,
        w => ((1i64 << (w - 1)) - 1) as f64,
    };
    // the activation, requantized (shared by every contraction reading it the same way)
    let dynamic = match (widths.dynamic, einsum) {
        (true, Some((a, bl, _))) => {
            let xl = if xi == 0 { a } else { bl };
            quantize_dynamic(b, x, xl, node, widths.abits)
        }
        _ => None,
    };
    let xq = match dynamic {
        Some(q) => q,
        None => quantize_static(b, xs, x, node, widths.abits)?,
    };
    // the largest real value of the quantized activation (relative to the row's maximum if dynamic)
    let amax_int = (-xq.lo).max(xq.hi) as f64;
    let amax = amax_int / libm::ldexp(1.0, xq.scale as i32) / xq.factor;
    let bias = Bias {
        given,
        fix: bias_fix(node, &ws, chan, &reduced, xs, xi),
    };
    let bias = &bias;
    let y = match block_axis {
        None if xq.rows.is_none() => per_channel(b, node, wf, bias, &xq, chan, terms, qmax, wi),
        None => dynamic_per_channel(b, node, wf, bias, &xq, chan, terms, qmax, wi),
        Some(k) => blocked(b, node, wf, bias, &xq, chan, k, qmax, wi, amax),
    }?;
    if measure {
        let (chans, inner) = channels(&ws, chan);
        let weight_noise = on_slice!(wf.data.view(), |d| weight_noise8(d, chans, inner));
        let act_noise = xq.rows.is_none().then(|| {
            let f = exact_factor(xs);
            let step = libm::ldexp(1.0, -act_scale(xs, 8, f)) / f;
            let ms = xs.mean_sq();
            if ms > 0.0 {
                step * step / 12.0 / ms
            } else {
                0.0
            }
        });
        b.done.push(Narrowed {
            node: usize::MAX,
            weight_noise,
            act_noise,
            macs: node.shape.iter().map(|&d| d as f64).product::<f64>() * terms,
        });
    }
    Some(y)
}

/// A contraction's bias and what correcting it for the weights' rounding needs.
struct Bias<'a> {
    /// The model's bias, if any.
    given: Option<&'a FConst>,
    /// The activation's calibrated means along the reduced axis, if the correction applies.
    fix: Option<BiasFix>,
}

/// The calibrated mean of the activation at each position of the reduced axis, and how a weight
/// element's index maps to it.
struct BiasFix {
    mean: Vec<f64>,
    at: MeanIndex,
}

/// A weight element index → the position of the activation's mean it multiplies.
#[derive(Clone, Copy)]
enum MeanIndex {
    /// `[O, C/G, kh, kw]` convolution weights with `G` groups: element `i` reads input channel
    /// `(o / (O/G)) · (C/G) + ci`.
    Conv {
        taps: usize,
        cg: usize,
        per_group: usize,
    },
    /// One reduced axis of `dim` positions at stride `stride` in the weights.
    Axis { stride: usize, dim: usize },
}

impl MeanIndex {
    fn at(self, i: usize) -> usize {
        match self {
            MeanIndex::Conv {
                taps,
                cg,
                per_group,
            } => {
                let o = i / (taps * cg);
                (o / per_group) * cg + (i / taps) % cg
            }
            MeanIndex::Axis { stride, dim } => (i / stride) % dim,
        }
    }
}

/// What [`Bias::fix`] needs for `node`, when its weights (shape `ws`) have only an output-channel
/// axis and reduced axes and the activation's marginal means along the reduced axis were calibrated:
/// a convolution's input channels, or the one reduced axis of an `EinSum`.
fn bias_fix(
    node: &Node,
    ws: &[usize],
    chan: Option<(usize, usize)>,
    reduced: &[usize],
    xs: &Stats,
    xi: usize,
) -> Option<BiasFix> {
    let only = (0..ws.len())
        .all(|i| reduced.contains(&i) || chan.is_some_and(|(c, _)| c == i) || ws[i] == 1);
    if !only {
        return None;
    }
    let (mean, at) = match &node.op {
        Op::Conv2d { groups, .. } => {
            let [o, cg, kh, kw] = ws[..] else {
                return None;
            };
            let g = *groups as usize;
            let mean = xs.axis_mean(1)?;
            (mean.len() == cg * g && o % g == 0).then_some(())?;
            let at = MeanIndex::Conv {
                taps: kh * kw,
                cg,
                per_group: o / g,
            };
            (mean, at)
        }
        Op::EinSum { a, b: bl, .. } => {
            let &[r] = reduced else {
                return None;
            };
            let (xl, wl) = if xi == 0 { (a, bl) } else { (bl, a) };
            let mut axes = xl.iter().enumerate().filter(|(_, &l)| l == wl[r]);
            let (axis, _) = axes.next()?;
            if axes.next().is_some() {
                return None;
            }
            let mean = xs.axis_mean(axis)?;
            (mean.len() == ws[r]).then_some(())?;
            let at = MeanIndex::Axis {
                stride: ws[r + 1..].iter().product(),
                dim: ws[r],
            };
            (mean, at)
        }
        _ => return None,
    };
    Some(BiasFix { mean, at })
}

/// Per channel, `Σ (q · step − w) · mean(x)` over the channel's weights `data` (see
/// [`Bias::corrected`]).
fn rounding_offsets<T: Copy + Into<f64>>(
    data: &[T],
    fix: &BiasFix,
    (mult, smf): (&[i32], f64),
    group_of: &impl Fn(usize) -> usize,
    chan_of: &impl Fn(usize) -> usize,
    chans: usize,
    qmax: f64,
) -> Vec<f64> {
    let mut corr = vec![0f64; chans];
    for (i, &w) in data.iter().enumerate() {
        let w = w.into();
        let step = mult[group_of(i)] as f64 / smf;
        let q = round(w / step).clamp(-qmax, qmax);
        corr[chan_of(i)] += (q * step - w) * fix.mean[fix.at.at(i)];
    }
    corr
}

impl Bias<'_> {
    /// The bias corrected for the weights' rounding (spec §5): with `step_g = m_g · 2^−s_m` and
    /// `q = clamp(round(w / step_g), ±qmax)` as the weights are quantized, each output channel's
    /// expected error `Σ (q · step_g − w) · mean(x)` over its weights is subtracted from its bias
    /// (which is created, one per channel, when the model has none). Laid out as `index` (the
    /// multipliers' shape against the output; a convolution's `[O]`); `None` when nothing applies.
    #[allow(clippy::too_many_arguments)]
    fn corrected(
        &self,
        wf: &FConst,
        (mult, s_m): (&[i32], i32),
        group_of: impl Fn(usize) -> usize,
        chan_of: impl Fn(usize) -> usize,
        chans: usize,
        qmax: f64,
        index: &[u32],
    ) -> Option<FConst> {
        let fix = self.fix.as_ref()?;
        let smf = libm::ldexp(1.0, s_m);
        let corr = on_slice!(wf.data.view(), |d| rounding_offsets(
            d,
            fix,
            (mult, smf),
            &group_of,
            &chan_of,
            chans,
            qmax
        ));
        if self.given.is_none() && corr.iter().all(|&c| c == 0.0) {
            // exact weights: no bias to add (and a product without one keeps its sparse forms)
            return None;
        }
        let us = |s: &[u32]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
        let (shape, data): (Vec<u32>, Vec<f64>) = match self.given {
            Some(bc) => {
                let bshape = verity_engine::ir::broadcast_shapes(&bc.shape, index)?;
                let bs = us(&bshape);
                let st_b = broadcast_strides(&bs, &us(&bc.shape));
                let st_m = broadcast_strides(&bs, &us(index));
                let mut data = vec![0f64; bs.iter().product()];
                for_each_index(&bs, &[st_b, st_m], |flat, offs| {
                    data[flat] = bc.data.get(offs[0]) - corr[offs[1]];
                });
                (bshape, data)
            }
            None => (index.to_vec(), corr.iter().map(|c| -c).collect()),
        };
        Some(FConst {
            shape,
            data: data.into(),
            int: false,
        })
    }
}

/// [`Narrowed::weight_noise`] of weights laid out as `[…, chans, inner]`-periodic channels (a channel
/// its 8-bit form holds exactly, [`group_scales`], adds none).
fn weight_noise8<T: Copy + Into<f64>>(data: &[T], chans: usize, inner: usize) -> f64 {
    let (need, exact) = group_scales(data, chans, |i| (i / inner) % chans, 127.0);
    let power: f64 = data.iter().map(|&v| v.into() * v.into()).sum();
    // every channel holds `len / chans` weights
    let per = (data.len() / chans) as f64;
    let noise: f64 = (0..chans)
        .filter(|&c| !exact[c])
        .map(|c| per * need[c] * need[c] / 12.0)
        .sum();
    if power > 0.0 {
        noise / power
    } else {
        0.0
    }
}

/// The shape of per-channel multipliers broadcasting against an output of rank `out_rank` whose
/// channel axis is `p` (one multiplier for the tensor without a channel axis), then `tail`.
fn mult_shape(
    chans: usize,
    chan: Option<(usize, usize)>,
    out_rank: usize,
    tail: &[u32],
) -> Vec<u32> {
    let mut s: Vec<u32> = match chan {
        Some((_, p)) => std::iter::once(chans as u32)
            .chain(std::iter::repeat_n(1, out_rank - 1 - p))
            .collect(),
        None if tail.is_empty() => vec![1],
        None => Vec::new(),
    };
    s.extend_from_slice(tail);
    s
}

/// The weight's channel count and the element index → channel map's inner stride.
fn channels(ws: &[usize], chan: Option<(usize, usize)>) -> (usize, usize) {
    match chan {
        Some((ax, _)) => (ws[ax], ws[ax + 1..].iter().product()),
        None => (1, ws.iter().product()),
    }
}

/// Each weight group's need ([`group_scales`]).
fn group_need<T: Copy + Into<f64>>(
    data: &[T],
    n: usize,
    group_of: impl Fn(usize) -> usize,
    qmax: f64,
) -> Vec<f64> {
    group_scales(data, n, group_of, qmax).0
}

/// Each weight group's need — its largest magnitude over `qmax`, or, when every value of the group
/// is an integer multiple of the power of two just above that (an interpolation's coefficients, a
/// mask, small integers), that power of two, so its quantized values are exact — and whether it is
/// exact (`group_of` maps an element's index to one of `n` groups; an all-zero group is exact).
fn group_scales<T: Copy + Into<f64>>(
    data: &[T],
    n: usize,
    group_of: impl Fn(usize) -> usize,
    qmax: f64,
) -> (Vec<f64>, Vec<bool>) {
    let mut amax = vec![0f64; n];
    for (i, &v) in data.iter().enumerate() {
        let g = group_of(i);
        amax[g] = amax[g].max(v.into().abs());
    }
    let mut need: Vec<f64> = amax.into_iter().map(|a| a / qmax).collect();
    let step: Vec<f64> = need
        .iter()
        .map(|&v| {
            if v > 0.0 {
                libm::ldexp(1.0, ceil_log2(v))
            } else {
                0.0
            }
        })
        .collect();
    // a power-of-two step divides exactly in f64
    let mut exact = vec![true; n];
    for (i, &v) in data.iter().enumerate() {
        let g = group_of(i);
        if exact[g] && step[g] > 0.0 {
            let q = v.into() / step[g];
            exact[g] = q == q.trunc();
        }
    }
    for g in 0..n {
        if exact[g] && step[g] > 0.0 {
            need[g] = step[g];
        }
    }
    (need, exact)
}

/// The weights quantized by their group's multiplier (`mult` at scale `s_m`):
/// `q = clamp(⌊w / (m_g · 2^−s_m) + ½⌋, −qmax, qmax)`, held at their width (bytes when `qmax` ≤ 127,
/// never a wider copy first); and per channel (`per` groups each, in order) the real magnitude
/// `Σ|q| · m_g · 2^−s_m` the quantized weights add up to.
fn quantize_groups<T: Copy + Into<f64>>(
    data: &[T],
    mult: &[i32],
    s_m: i32,
    group_of: impl Fn(usize) -> usize,
    per: usize,
    qmax: f64,
) -> (Elements, Vec<f64>) {
    let smf = libm::ldexp(1.0, s_m);
    let mut l1 = vec![0f64; mult.len() / per];
    let mut q = data.iter().enumerate().map(|(i, &v)| {
        let g = group_of(i);
        let sc = mult[g] as f64 / smf;
        let q = round(v.into() / sc).clamp(-qmax, qmax);
        l1[g / per] += q.abs() * sc;
        q
    });
    let q = if qmax <= i8::MAX as f64 {
        Elements::from(q.by_ref().map(|q| q as i8).collect::<Vec<i8>>())
    } else {
        Elements::from(q.by_ref().map(|q| q as i32).collect::<Vec<i32>>())
    };
    (q, l1)
}

/// Push the quantized weights (scale 0), their multipliers and, when given, the bias constant (in that
/// order), then the contraction `<node>/acc` of `act` and the weights (the weights at input `wi`).
#[allow(clippy::too_many_arguments)]
fn push_acc(
    b: &mut Builder<'_>,
    node: &Node,
    op: Op,
    wi: usize,
    act: R,
    weights: Const,
    mult: Const,
    bias: Option<Const>,
    shape: Vec<u32>,
    s_acc: i32,
) -> (R, R) {
    let qr = b.push_const(weights);
    let mr = b.push_const(mult);
    let mut ins = if wi == 1 {
        vec![act, qr]
    } else {
        vec![qr, act]
    };
    if let Some(c) = bias {
        ins.push(b.push_const(c));
    }
    let acc = b.push_node(format!("{}/acc", node.name), op, ins, shape, s_acc as i8);
    (acc, mr)
}

/// Static activations, weights per output channel, bias folded into the accumulator:
/// `y = Mul(C(x_q, q, c), m)` (spec §7.2).
#[allow(clippy::too_many_arguments)]
fn per_channel(
    b: &mut Builder<'_>,
    node: &Node,
    wf: &FConst,
    bias: &Bias<'_>,
    xq: &Quantized,
    chan: Option<(usize, usize)>,
    terms: f64,
    qmax: f64,
    wi: usize,
) -> Option<R> {
    let s8 = xq.scale;
    let ws: Vec<usize> = wf.shape.iter().map(|&d| d as usize).collect();
    let (chans, inner) = channels(&ws, chan);
    let chan_of = |i: usize| (i / inner) % chans;
    let mut need = on_slice!(wf.data.view(), |d| group_need(d, chans, chan_of, qmax));
    // the bias, in accumulator units, must fit i32: a channel's scale is raised if its bias needs it
    let out_rank = node.shape.len();
    let m_shape = mult_shape(chans, chan, out_rank, &[]);
    // how the multipliers line up with a bias: a convolution's bias is one value per channel; an
    // EinSum's broadcasts to the output like the multipliers (and grows a channel axis if it lacks one)
    let m_index: Vec<u32> = match node.op {
        Op::Conv2d { .. } => vec![chans as u32],
        _ => m_shape.clone(),
    };
    let plan = |bc: &FConst| -> Vec<u32> {
        verity_engine::ir::broadcast_shapes(&bc.shape, &m_index).unwrap_or(bc.shape.clone())
    };
    let bias_plan = bias.given.map(|bc| (bc, plan(bc)));
    // the activation's unit is `2^−s8 / f`
    let s8f = libm::ldexp(1.0, s8 as i32) * xq.factor;
    let us = |s: &[u32]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
    if let Some((bc, bshape)) = &bias_plan {
        let (bs, ms) = (us(bshape), us(&m_index));
        let st_b = broadcast_strides(&bs, &us(&bc.shape));
        let st_m = broadcast_strides(&bs, &ms);
        for_each_index(&bs, &[st_b, st_m], |_, offs| {
            let (v, c) = (bc.data.get(offs[0]).abs(), offs[1]);
            need[c] = need[c].max(v * s8f / libm::ldexp(1.0, 30));
        });
    }
    let (mult, s_m) = multipliers(&need, MULT_BITS)?;
    let smf = libm::ldexp(1.0, s_m);
    let fixed = bias.corrected(wf, (&mult, s_m), chan_of, chan_of, chans, qmax, &m_index);
    let bias_plan = match &fixed {
        Some(bc) => Some((bc, plan(bc))),
        None => bias_plan,
    };
    let (q, _) = on_slice!(wf.data.view(), |d| quantize_groups(
        d, &mult, s_m, chan_of, 1, qmax
    ));
    let bias_c = match &bias_plan {
        Some((bc, bshape)) => {
            let (bs, ms) = (us(bshape), us(&m_index));
            let st_b = broadcast_strides(&bs, &us(&bc.shape));
            let st_m = broadcast_strides(&bs, &ms);
            let mut data = vec![0i32; bs.iter().product()];
            let mut ok = true;
            for_each_index(&bs, &[st_b, st_m], |flat, offs| {
                let acc_unit = mult[offs[1]] as f64 / smf / s8f;
                let v = round(bc.data.get(offs[0]) / acc_unit);
                ok &= v.abs() < 2147483647.0;
                data[flat] = v as i32;
            });
            if !ok {
                return None;
            }
            Some(Const {
                shape: bshape.clone(),
                scale: s8,
                data: data.into(),
            })
        }
        None => None,
    };
    // the accumulator's bound (the bias, in accumulator units, is below 2^30): rounded by `r` bits
    // where it could leave i32
    let xmax = (-xq.lo).max(xq.hi) as f64;
    let r = acc_shift(terms * xmax * qmax + libm::ldexp(1.0, 30));
    let s_acc = s8 as i32 - r;
    // the shifts must be legal ones
    if !legal(s_acc + s_m - node.scale as i32) || !(-128..=127).contains(&s_m) || s_acc < -128 {
        return None;
    }
    debug_assert_eq!(b.scale_of(xq.q), s8);
    let (acc, mr) = push_acc(
        b,
        node,
        node.op.clone(),
        wi,
        xq.q,
        Const {
            shape: wf.shape.clone(),
            scale: 0,
            data: q,
        },
        Const {
            shape: m_shape,
            scale: s_m as i8,
            data: out_mults(&mult, xq.factor).into(),
        },
        bias_c,
        node.shape.clone(),
        s_acc,
    );
    let y = b.push_node(
        node.name.clone(),
        Op::Mul,
        vec![acc, mr],
        node.shape.clone(),
        node.scale,
    );
    if let (R::N(n), R::C(c)) = (y, mr) {
        b.out_mults.insert(n, c);
    }
    Some(y)
}

/// The last steps of a contraction whose bias could not be folded into its accumulator: `u` (at
/// scale `s_u`) times the rows' maxima of a dynamic activation, then plus the bias (requantized to
/// the output's scale). The last node takes the contraction's name.
fn finish(
    b: &mut Builder<'_>,
    node: &Node,
    u: R,
    rows: Option<R>,
    bias: Option<&FConst>,
) -> Option<R> {
    let s_y = node.scale as i32;
    let bias_c = match bias {
        Some(bc) => {
            let f = libm::ldexp(1.0, s_y);
            let data: Vec<f64> = bc.data.iter().map(|v| round(v * f)).collect();
            if data.iter().any(|v| v.abs() >= 2147483647.0) {
                return None;
            }
            Some(Const {
                shape: bc.shape.clone(),
                scale: node.scale,
                data: data
                    .into_iter()
                    .map(|v| v as i32)
                    .collect::<Vec<_>>()
                    .into(),
            })
        }
        None => None,
    };
    let name = |last: bool, what: &str| {
        if last {
            node.name.clone()
        } else {
            format!("{}/{what}", node.name)
        }
    };
    let mut y = u;
    if let Some(rows) = rows {
        let s = b.scale_of(u) as i32 + b.scale_of(rows) as i32;
        if !legal(s - s_y) {
            return None;
        }
        y = b.push_node(
            name(bias_c.is_none(), "scaled"),
            Op::Mul,
            vec![u, rows],
            node.shape.clone(),
            node.scale,
        );
    }
    if let Some(c) = bias_c {
        if !legal(b.scale_of(y) as i32 - s_y) {
            return None;
        }
        let c = b.push_const(c);
        y = b.push_node(
            node.name.clone(),
            Op::Add,
            vec![y, c],
            node.shape.clone(),
            node.scale,
        );
    }
    Some(y)
}

/// The output scale of a contraction's partial result whose real magnitude is at most `bound`: 30
/// bits for it (so it fits `i32` after rounding).
fn bound_scale(bound: f64) -> i32 {
    if bound > 0.0 {
        (30 - ceil_log2(bound)).clamp(-60, 60)
    } else {
        30
    }
}

/// Dynamic activations, weights per output channel: `u = Mul(C(x_q, q), m)` bounded by the rows'
/// largest product (`|x_q| < 1` relative to the row's maximum), then times the rows' maxima and plus
/// the bias ([`finish`]).
#[allow(clippy::too_many_arguments)]
fn dynamic_per_channel(
    b: &mut Builder<'_>,
    node: &Node,
    wf: &FConst,
    bias: &Bias<'_>,
    xq: &Quantized,
    chan: Option<(usize, usize)>,
    terms: f64,
    qmax: f64,
    wi: usize,
) -> Option<R> {
    let ws: Vec<usize> = wf.shape.iter().map(|&d| d as usize).collect();
    let (chans, inner) = channels(&ws, chan);
    let chan_of = |i: usize| (i / inner) % chans;
    let need = on_slice!(wf.data.view(), |d| group_need(d, chans, chan_of, qmax));
    let (mult, s_m) = multipliers(&need, MULT_BITS)?;
    let m_index = mult_shape(chans, chan, node.shape.len(), &[]);
    let fixed = bias.corrected(wf, (&mult, s_m), chan_of, chan_of, chans, qmax, &m_index);
    let (q, l1) = on_slice!(wf.data.view(), |d| quantize_groups(
        d, &mult, s_m, chan_of, 1, qmax
    ));
    let xmax = (-xq.lo).max(xq.hi) as f64;
    let s_acc = xq.scale as i32 - acc_shift(terms * xmax * qmax);
    let s_u = bound_scale(l1.iter().fold(0f64, |m, &v| m.max(v)));
    if !legal(s_acc + s_m - s_u) || !(-128..=127).contains(&s_m) || s_acc < -128 {
        return None;
    }
    let (acc, mr) = push_acc(
        b,
        node,
        node.op.clone(),
        wi,
        xq.q,
        Const {
            shape: wf.shape.clone(),
            scale: 0,
            data: q,
        },
        Const {
            shape: mult_shape(chans, chan, node.shape.len(), &[]),
            scale: s_m as i8,
            data: mult.into(),
        },
        None,
        node.shape.clone(),
        s_acc,
    );
    let u = b.push_node(
        format!("{}/u", node.name),
        Op::Mul,
        vec![acc, mr],
        node.shape.clone(),
        s_u as i8,
    );
    finish(b, node, u, xq.rows, fixed.as_ref().or(bias.given))
}

/// 4-bit weights in blocks of [`BLOCK`] along reduced weight axis `k` of an `EinSum`, one multiplier
/// per (channel, block): the reduced axis of both operands is viewed as `[blocks, BLOCK]`, the product
/// keeps the block axis last, each block's sum is scaled by its multiplier, and the blocks are summed:
///
/// ```text
/// acc = EinSum(Reshape(x_q), q)  [out…, G]      p = Mul(acc, m [chan…, G])      u = Reduce Sum(p, G)
/// ```
/// then [`finish`] (rows' maxima, bias). Spec §7.2.
#[allow(clippy::too_many_arguments)]
fn blocked(
    b: &mut Builder<'_>,
    node: &Node,
    wf: &FConst,
    bias: &Bias<'_>,
    xq: &Quantized,
    chan: Option<(usize, usize)>,
    k: usize,
    qmax: f64,
    wi: usize,
    amax: f64,
) -> Option<R> {
    let Op::EinSum { a, b: bl, out } = &node.op else {
        return None;
    };
    let ws: Vec<usize> = wf.shape.iter().map(|&d| d as usize).collect();
    let kk = ws[k];
    let groups = kk / BLOCK;
    let kinner: usize = ws[k + 1..].iter().product();
    let (chans, inner) = channels(&ws, chan);
    let group_of = |i: usize| ((i / inner) % chans) * groups + ((i / kinner) % kk) / BLOCK;
    let need = on_slice!(wf.data.view(), |d| group_need(
        d,
        chans * groups,
        group_of,
        qmax
    ));
    let (mult, s_m) = multipliers(&need, MULT_BITS)?;
    let m_index = mult_shape(chans, chan, node.shape.len(), &[]);
    let chan_of = |i: usize| (i / inner) % chans;
    let fixed = bias.corrected(wf, (&mult, s_m), group_of, chan_of, chans, qmax, &m_index);
    let bias = fixed.as_ref().or(bias.given);
    let smf = libm::ldexp(1.0, s_m);
    let (q, l1) = on_slice!(wf.data.view(), |d| quantize_groups(
        d, &mult, s_m, group_of, groups, qmax
    ));
    // the operands' labels with the reduced label `kl` split into (block `gl`, `kl`)
    let (wl, xl) = if wi == 1 { (bl, a) } else { (a, bl) };
    let kl = wl[k];
    let xk = xl.iter().position(|&l| l == kl)?;
    let xshape = b.old.value(node.inputs[1 - wi])?.shape.to_vec();
    if xshape[xk] as usize != kk {
        return None;
    }
    let gl = (0..=255u8).find(|l| !a.contains(l) && !bl.contains(l) && !out.contains(l))?;
    let split = |labels: &[u8], at: usize| -> Vec<u8> {
        let mut v = labels[..at].to_vec();
        v.extend([gl, kl]);
        v.extend_from_slice(&labels[at + 1..]);
        v
    };
    let split_shape = |shape: &[u32], at: usize| -> Vec<u32> {
        let mut v = shape[..at].to_vec();
        v.extend([groups as u32, BLOCK as u32]);
        v.extend_from_slice(&shape[at + 1..]);
        v
    };
    let (wl2, xl2) = (split(wl, k), split(xl, xk));
    let mut out2 = out.clone();
    out2.push(gl);
    let mut acc_shape = node.shape.clone();
    acc_shape.push(groups as u32);
    let xmax = (-xq.lo).max(xq.hi) as f64;
    let s_acc = xq.scale as i32 - acc_shift(BLOCK as f64 * xmax * qmax);
    let s_p = bound_scale(BLOCK as f64 * amax * qmax * (need_top(&mult) / smf));
    let s_u = match xq.rows {
        Some(_) => bound_scale(l1.iter().fold(0f64, |m, &v| m.max(v))),
        None => node.scale as i32,
    };
    if !legal(s_acc + s_m - s_p) || !legal(s_p - s_u) || !(-128..=127).contains(&s_m) {
        return None;
    }
    let name = &node.name;
    let xb = b.push_node(
        format!("{name}/blocks"),
        Op::Reshape,
        vec![xq.q],
        split_shape(&xshape, xk),
        xq.scale,
    );
    let op = if wi == 1 {
        Op::EinSum {
            a: xl2,
            b: wl2,
            out: out2,
        }
    } else {
        Op::EinSum {
            a: wl2,
            b: xl2,
            out: out2,
        }
    };
    let (acc, mr) = push_acc(
        b,
        node,
        op,
        wi,
        xb,
        Const {
            shape: split_shape(&wf.shape, k),
            scale: 0,
            data: q,
        },
        Const {
            shape: mult_shape(chans, chan, node.shape.len(), &[groups as u32]),
            scale: s_m as i8,
            data: out_mults(&mult, xq.factor).into(),
        },
        None,
        acc_shape.clone(),
        s_acc,
    );
    let p = b.push_node(
        format!("{name}/blockscaled"),
        Op::Mul,
        vec![acc, mr],
        acc_shape,
        s_p as i8,
    );
    let mut sum_shape = node.shape.clone();
    sum_shape.push(1);
    let sum = b.push_node(
        format!("{name}/blocksum"),
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![node.shape.len() as u32],
        },
        vec![p],
        sum_shape,
        s_u as i8,
    );
    let last = xq.rows.is_none() && bias.is_none();
    let u = b.push_node(
        if last {
            name.clone()
        } else {
            format!("{name}/u")
        },
        Op::Reshape,
        vec![sum],
        node.shape.clone(),
        s_u as i8,
    );
    finish(b, node, u, xq.rows, bias)
}

/// A contraction's multipliers for an activation multiplied by `factor` (see [`Quantized::factor`]):
/// each divided by it, at least 1.
fn out_mults(mult: &[i32], factor: f64) -> Vec<i32> {
    if factor == 1.0 {
        return mult.to_vec();
    }
    mult.iter()
        .map(|&m| round(m as f64 / factor).max(1.0) as i32)
        .collect()
}

fn need_top(mult: &[i32]) -> f64 {
    mult.iter().fold(0f64, |m, &v| m.max(v as f64))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fgraph::{FData, FInput, FNode, FOp};
    use crate::quantize::{calibrate, lower};
    use crate::Precision;
    use verity_engine::ir::{InputKind, Window};
    use verity_engine::{Executor, Mode};

    /// `k` samples of a sine of frequency `f`: deterministic test data.
    pub(crate) fn wave(k: usize, f: f64) -> Vec<f64> {
        (0..k).map(|i| ((i as f64) * f).sin()).collect()
    }

    /// A `k`×`k` convolution, stride 1, padded by `p` on every side.
    pub(crate) fn conv(name: &str, k: u32, p: u32, inputs: Vec<u32>, shape: Vec<u32>) -> FNode {
        FNode {
            name: name.into(),
            origin: String::new(),
            op: FOp::Canon(Op::Conv2d {
                window: Window {
                    kernel: [k, k],
                    stride: [1, 1],
                    dilation: [1, 1],
                    pads: [p; 4],
                },
                groups: 1,
            }),
            inputs,
            shape,
        }
    }

    /// A factor folded into a value whose reader then keeps its 32-bit form (here: all-zero weights
    /// and bias, which have no multiplier) reaches that reader divided back out
    /// (`<value>/unscaled`): the reader sees the value the 32-bit model computes, to the rounding of
    /// the factor's inverse.
    #[test]
    fn a_reader_left_at_32_bits_reads_the_value_without_its_factor() {
        let g = FGraph {
            inputs: vec![FInput {
                name: "x".into(),
                shape: vec![1, 4, 6, 6],
                kind: InputKind::Fixed,
            }],
            consts: vec![
                FConst {
                    shape: vec![4, 4, 3, 3],
                    data: FData::F64(wave(144, 0.37)),
                    int: false,
                },
                FConst {
                    shape: vec![4, 4, 1, 1],
                    data: FData::F64(vec![0.0; 16]),
                    int: false,
                },
                FConst {
                    shape: vec![4],
                    data: FData::F64(vec![0.0; 4]),
                    int: false,
                },
            ],
            nodes: vec![
                conv("conv1", 3, 1, vec![0, 1], vec![1, 4, 6, 6]),
                FNode {
                    name: "relu".into(),
                    origin: String::new(),
                    op: FOp::Clamp {
                        lo: 0.0,
                        hi: f64::INFINITY,
                    },
                    inputs: vec![4],
                    shape: vec![1, 4, 6, 6],
                },
                conv("conv2", 1, 0, vec![5, 2, 3], vec![1, 4, 6, 6]),
            ],
            outputs: vec![("y".into(), 6)],
        };
        // calibrated so that the ReLU's range is far from a power of two: a factor well above 1
        let samples: Vec<Vec<Vec<f64>>> = (0..3)
            .map(|s| vec![wave(144, 0.05 + s as f64).iter().map(|v| 0.7 * v).collect()])
            .collect();
        let stats = calibrate(&g, &samples).expect("calibrates");
        let (wide, float_of) = lower(&g, &stats, 16, Precision::INT8).expect("lowers");
        let (m, _) = narrow(
            &g,
            &stats,
            &wide,
            &float_of,
            &Plan::uniform(Widths::new(8, 8, false)),
        );
        m.validate().expect("valid");
        let relu = m.nodes.iter().position(|n| n.name == "relu").unwrap();
        let unscaled = m
            .nodes
            .iter()
            .position(|n| n.name == "relu/unscaled")
            .expect("the 32-bit reader reads the value without its factor");
        assert_eq!(
            m.nodes[unscaled].inputs[0],
            (m.first_node_value() + relu) as u32
        );
        let f = exact_factor(&stats[5]);
        assert!(f > 1.1, "factor {f}");
        // the first convolution's multipliers carry the factor; the second stays 32-bit
        assert!(m.nodes.iter().any(|n| n.name == "conv1/acc"));
        assert!(!m.nodes.iter().any(|n| n.name == "conv2/acc"));
        // both models' every value on one calibration sample
        let trace = |model: &Model| {
            let x = verity_engine::io::FloatTensor {
                shape: vec![1, 4, 6, 6],
                data: samples[1][0].clone(),
            };
            let q = verity_engine::io::quantize_inputs(model, &[x]).unwrap();
            Executor::new(model, Mode::Reference)
                .run_trace(q)
                .unwrap()
                .1
        };
        let (t, tw) = (trace(&m), trace(&wide));
        let ni = m.inputs.len();
        let (got, scaled) = (&t.tensors[ni + unscaled], &t.tensors[ni + relu]);
        let want = &tw.tensors[ni + wide.nodes.iter().position(|n| n.name == "relu").unwrap()];
        let top = want.iter().map(|v| v.abs()).max().unwrap() as f64;
        assert!(top > 1000.0);
        // the folded value is f times the 32-bit one (to the 8-bit operands' error), and the restored
        // one is it divided by f (to one unit)
        for ((g, s), w) in got.iter().zip(scaled).zip(want) {
            let (g, s, w) = (*g as f64, *s as f64, *w as f64);
            assert!((s - f * w).abs() <= 0.05 * f * top, "{s} vs {f} × {w}");
            assert!((g - s / f).abs() <= 1.0, "{g} vs {s} / {f}");
        }
    }

    /// Weight groups on a power-of-two grid of at most `qmax` steps (an interpolation's coefficients,
    /// small integers, zeros) are quantized exactly and count no noise; any other keeps its largest
    /// magnitude over `qmax`.
    #[test]
    fn weights_on_a_power_of_two_grid_are_held_exactly() {
        // groups: quarters; a group needing a finer grid than 127 steps; zeros; integers; thirds
        let data = [
            0.25,
            0.75,
            0.5,
            1.0,
            1.0 / 1024.0,
            0.0,
            0.0,
            0.0,
            3.0,
            -5.0,
            1.0 / 3.0,
            2.0 / 3.0,
        ];
        let group = |i: usize| [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4][i];
        let (need, exact) = group_scales(&data, 5, group, 127.0);
        assert_eq!(exact, vec![true, false, true, true, false]);
        assert_eq!(need[0], 1.0 / 128.0);
        assert_eq!(need[1], 1.0 / 127.0);
        assert_eq!(need[3], 1.0 / 16.0);
        assert_eq!(need[4], (2.0 / 3.0) / 127.0);
        let (mult, s_m) = multipliers(&need, MULT_BITS).expect("multipliers");
        let (q, _) = quantize_groups(&data, &mult, s_m, group, 1, 127.0);
        let q = q.transient();
        for (i, &w) in data.iter().enumerate() {
            let back = q[i] as f64 * mult[group(i)] as f64 / libm::ldexp(1.0, s_m);
            assert_eq!(back == w, exact[group(i)], "{i}: {w} → {}", q[i]);
        }
        // the noise figure counts only the inexact channels (one channel per group here)
        let (chans, inner) = (2, 3);
        let grid = [0.25, -0.75, 0.5, 0.125, 0.0, 1.0];
        assert_eq!(weight_noise8(&grid, chans, inner), 0.0);
        let mut off = grid;
        off[4] = 0.1;
        assert!(weight_noise8(&off, chans, inner) > 0.0);
    }

    /// A linear resize after a convolution, at `int8`: the interpolation's 8-bit weights are its
    /// coefficients exactly (a power of two times them, per output column), it adds no weight noise
    /// to the search's figures, and, having no rounding to correct, its product gets no bias (so the
    /// engine's sparse form of it applies); fast and reference executors agree.
    #[test]
    fn an_interpolation_is_narrowed_exactly() {
        let (k, n) = (7usize, 14usize);
        let interp = crate::mixed::tests::interpolation(k, n);
        let g = FGraph {
            inputs: vec![FInput {
                name: "x".into(),
                shape: vec![1, 2, 5, 7],
                kind: InputKind::Fixed,
            }],
            consts: vec![
                FConst {
                    shape: vec![3, 2, 3, 3],
                    data: FData::F64(wave(54, 0.41)),
                    int: false,
                },
                FConst {
                    shape: vec![k as u32, n as u32],
                    data: FData::F64(interp.clone()),
                    int: false,
                },
            ],
            nodes: vec![
                conv("conv", 3, 1, vec![0, 1], vec![1, 3, 5, 7]),
                FNode {
                    name: "resize".into(),
                    origin: String::new(),
                    op: FOp::Canon(Op::EinSum {
                        a: vec![0, 1, 2, 3],
                        b: vec![3, 4],
                        out: vec![0, 1, 2, 4],
                    }),
                    inputs: vec![3, 2],
                    shape: vec![1, 3, 5, n as u32],
                },
            ],
            outputs: vec![("y".into(), 4)],
        };
        let samples: Vec<Vec<Vec<f64>>> = (0..3).map(|s| vec![wave(70, 0.13 + s as f64)]).collect();
        let stats = calibrate(&g, &samples).expect("calibrates");
        let (wide, float_of) = lower(&g, &stats, 16, Precision::INT8).expect("lowers");
        let mut plan = Plan::uniform(Widths::new(8, 8, false));
        plan.measure = true;
        let (m, narrowed) = narrow(&g, &stats, &wide, &float_of, &plan);
        m.validate().expect("valid");
        assert_eq!(narrowed.len(), 2);
        assert!(
            narrowed[0].weight_noise > 0.0,
            "the convolution's weights are rounded"
        );
        assert_eq!(narrowed[1].weight_noise, 0.0, "the interpolation's are not");
        let acc = m
            .nodes
            .iter()
            .find(|x| x.name == "resize/acc")
            .expect("narrowed");
        assert_eq!(acc.inputs.len(), 2, "no bias");
        let q = m
            .const_of(acc.inputs[1])
            .expect("the weights")
            .data
            .transient();
        assert!(q.iter().all(|v| v.abs() <= 127));
        for o in 0..n {
            // one power of two per column takes every coefficient to its 8-bit value
            let col: Vec<(f64, i32)> = (0..k).map(|i| (interp[i * n + o], q[i * n + o])).collect();
            let (w, v) = col.iter().copied().find(|c| c.0 != 0.0).unwrap();
            let ratio = v as f64 / w;
            assert_eq!(ratio, libm::ldexp(1.0, ceil_log2(ratio)), "column {o}");
            assert!(
                col.iter().all(|&(w, v)| w * ratio == v as f64),
                "column {o}: {col:?}"
            );
        }
        let x = verity_engine::io::FloatTensor {
            shape: vec![1, 2, 5, 7],
            data: samples[2][0].clone(),
        };
        let q = verity_engine::io::quantize_inputs(&m, &[x]).unwrap();
        let fast = Executor::new(&m, Mode::Fast { threads: 2 })
            .run(q.clone())
            .unwrap();
        let reference = Executor::new(&m, Mode::Reference).run(q).unwrap();
        assert_eq!(fast, reference);
    }
}
