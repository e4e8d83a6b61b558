//! Calibration and quantization: choose a power-of-two scale for every value from the ranges seen on
//! calibration inputs, quantize constants, and build lookup tables. Everything here is deterministic:
//! ranges come from the `f64` evaluator, exponents are found with exact power-of-two arithmetic, and
//! tables are filled with `libm`.

use std::collections::BTreeMap;

use verity_engine::elements::Elements;
use verity_engine::io::quantize_value;
use verity_engine::ir::{Const, Input, InputKind, Model, Node, Op, Output};
use verity_engine::segments::{interpolated, KNOTS};

use crate::fgraph::{FConst, FGraph, FOp, Func};
use crate::CompileError;

/// Calibrated activations may use up to this many bits of magnitude (|q| < 2^23), leaving 8 bits of the
/// 32-bit element type as headroom for inputs beyond the calibration range.
pub const ACTIVATION_BITS: i32 = 23;
/// Constants may use up to 30 bits of magnitude.
pub const CONST_BITS: i32 = 30;
/// Largest number of entries in a function table.
pub const MAX_TABLE: f64 = 32768.0;
/// Largest number of entries in the table of a saturating function (sigmoid, tanh, erf) in a model of
/// 8- or 16-bit activations, whose entries also keep 14 bits of magnitude ([`NARROW_TABLE_BITS`], so
/// the file stores them as `i16`): steps and values far finer than those activations resolve, in a
/// quarter of the bytes.
pub const NARROW_TABLE: f64 = 8192.0;
/// Magnitude bits of a [`NARROW_TABLE`]'s entries.
pub const NARROW_TABLE_BITS: i32 = 14;
/// Softmax's exp table covers `x - max` in `[-SOFTMAX_RANGE, 0]`.
pub const SOFTMAX_RANGE: f64 = 24.0;
/// Fractional bits of the softmax exp table index.
pub const SOFTMAX_INDEX_BITS: i32 = 9;
/// Scale of softmax exp table entries.
pub const SOFTMAX_EXP_SCALE: i8 = 30;

/// How wide the canonical model's contractions are; [`Precision::INT8`] by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit activations and weights with one power-of-two scale per tensor (format v1 models).
    I32,
    /// Every contraction with constant weights gets `weights`-bit weights (8 or 16 per output channel;
    /// 4 per block of [`crate::narrow::BLOCK`] elements along the reduced axis of a matrix product) and
    /// `acts`-bit activations (8 or 16), quantized at a scale fixed by calibration or, when `dynamic`,
    /// per row at run time from the row's largest magnitude; the rest stays 32-bit (see
    /// [`crate::narrow`]).
    Narrow {
        /// Weight bits: 4, 8 or 16.
        weights: u8,
        /// Activation bits: 8 or 16.
        acts: u8,
        /// Activations of matrix products are quantized per row at run time.
        dynamic: bool,
    },
    /// Mixed precision chosen by measurement (`auto`, `auto:<percent>`): every contraction starts at
    /// `int8`; while the error on the calibration samples is above the target, the contractions whose
    /// 8-bit weights or activations add the most quantization noise get 16-bit ones (see
    /// [`crate::mixed`]).
    Auto {
        /// The largest acceptable error on the calibration samples, in millionths of the output's
        /// magnitude (10,000: 1%).
        target_ppm: u32,
    },
}

impl Precision {
    /// 8-bit weights and activations (`int8`, alias `w8a8`).
    pub const INT8: Precision = Precision::Narrow {
        weights: 8,
        acts: 8,
        dynamic: false,
    };
}

impl Precision {
    /// Whether contractions get narrow operands (every precision but `i32`).
    pub fn is_narrow(self) -> bool {
        self != Precision::I32
    }

    /// The widths every contraction starts from (`None` at `i32`).
    pub(crate) fn widths(self) -> Option<crate::narrow::Widths> {
        use crate::narrow::Widths;
        match self {
            Precision::I32 => None,
            Precision::Narrow {
                weights,
                acts,
                dynamic,
            } => Some(Widths::new(weights, acts, dynamic)),
            Precision::Auto { .. } => Some(Widths::new(8, 8, false)),
        }
    }
}

/// The target of `auto` without one: 1% of the output's magnitude.
pub const AUTO_TARGET_PPM: u32 = 10_000;

impl Default for Precision {
    fn default() -> Self {
        Precision::INT8
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Precision::I32 => f.write_str("i32"),
            p if p == Precision::INT8 => f.write_str("int8"),
            Precision::Auto {
                target_ppm: AUTO_TARGET_PPM,
            } => f.write_str("auto"),
            Precision::Auto { target_ppm } => write!(f, "auto:{}", target_ppm as f64 / 1e4),
            Precision::Narrow {
                weights,
                acts,
                dynamic,
            } => write!(f, "w{weights}a{acts}{}", if dynamic { "d" } else { "" }),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "precision '{s}' must be i32, int8, int4, auto, auto:<percent> (a target error in \
                 (0, 100]) or wXaY[d] with X (weight bits) 4, 8, 12 or 16, Y (activation bits) 8, \
                 12 or 16, and d for activations quantized per row at run time, e.g. w8a16 or w4a8d"
            )
        };
        if let Some(t) = s.strip_prefix("auto:") {
            let pct: f64 = t.parse().map_err(|_| bad())?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(bad());
            }
            let target_ppm = (pct * 1e4).round() as u32;
            return Ok(Precision::Auto {
                target_ppm: target_ppm.max(1),
            });
        }
        match s {
            "i32" => Ok(Precision::I32),
            "auto" => Ok(Precision::Auto {
                target_ppm: AUTO_TARGET_PPM,
            }),
            "int8" => Ok(Precision::INT8),
            "int4" => Ok(Precision::Narrow {
                weights: 4,
                acts: 8,
                dynamic: false,
            }),
            _ => {
                let (w, a) = s
                    .strip_prefix('w')
                    .and_then(|r| r.split_once('a'))
                    .ok_or_else(bad)?;
                let (a, dynamic) = match a.strip_suffix('d') {
                    Some(a) => (a, true),
                    None => (a, false),
                };
                let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
                if !digits(w) || !digits(a) {
                    return Err(bad());
                }
                let (weights, acts): (u8, u8) =
                    (w.parse().map_err(|_| bad())?, a.parse().map_err(|_| bad())?);
                if ![4, 8, 12, 16].contains(&weights) || ![8, 12, 16].contains(&acts) {
                    return Err(bad());
                }
                Ok(Precision::Narrow {
                    weights,
                    acts,
                    dynamic,
                })
            }
        }
    }
}

/// Per-value statistics gathered by calibration.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
    /// Sum of the squares of the finite values seen.
    pub sum_sq: f64,
    /// Number of finite values seen.
    pub count: u64,
    /// Per axis of the value (inputs and nodes; none for constants), the sum of its finite values at
    /// each position of that axis over every other axis and every sample: the marginal means that bias
    /// correction needs ([`Stats::axis_mean`]).
    pub sums: Vec<Vec<f64>>,
}

impl Stats {
    fn abs(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }

    /// The mean square of the values seen (0 when none).
    pub fn mean_sq(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_sq / self.count as f64
        }
    }

    /// The mean of the values at each position of `axis` (over every other axis and every sample),
    /// or `None` when calibration did not record it or saw a non-finite value.
    pub fn axis_mean(&self, axis: usize) -> Option<Vec<f64>> {
        let s = self.sums.get(axis)?;
        let total: u64 = self.sums.iter().map(|a| a.len() as u64).product();
        // every value finite: each position of the axis saw `count / d` of them
        if total == 0 || self.count == 0 || !self.count.is_multiple_of(total) {
            return None;
        }
        let per = (self.count / s.len() as u64) as f64;
        Some(s.iter().map(|v| v / per).collect())
    }
}

/// Add `data` (laid out as `shape`) to the marginal sums `sums` (one vector per axis).
fn add_marginals(shape: &[u32], data: &[f64], sums: &mut Vec<Vec<f64>>) {
    if sums.is_empty() {
        *sums = shape.iter().map(|&d| vec![0.0; d as usize]).collect();
    }
    for (a, s) in sums.iter_mut().enumerate() {
        let d = s.len();
        let inner: usize = shape[a + 1..].iter().map(|&x| x as usize).product();
        if d == 0 || inner == 0 {
            continue;
        }
        for (i, run) in data.chunks(inner).enumerate() {
            s[i % d] += run.iter().filter(|x| x.is_finite()).sum::<f64>();
        }
    }
}

/// Run the float graph on every sample and record the range of every value.
pub fn calibrate(g: &FGraph, samples: &[Vec<Vec<f64>>]) -> Result<Vec<Stats>, CompileError> {
    Ok(calibrate_keeping(g, samples, false)?.0)
}

/// A graph's outputs on one sample, in order.
pub type Outputs = Vec<Vec<f64>>;

/// [`calibrate`], also giving the graph's outputs on every sample when `keep` (else none).
pub fn calibrate_keeping(
    g: &FGraph,
    samples: &[Vec<Vec<f64>>],
    keep: bool,
) -> Result<(Vec<Stats>, Vec<Outputs>), CompileError> {
    let n = g.inputs.len() + g.consts.len() + g.nodes.len();
    let mut stats = vec![
        Stats {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum_sq: 0.0,
            count: 0,
            sums: Vec::new(),
        };
        n
    ];
    fn widen(st: &mut Stats, v: impl Iterator<Item = f64>) {
        for x in v {
            if x.is_finite() {
                st.min = st.min.min(x);
                st.max = st.max.max(x);
                st.sum_sq += x * x;
                st.count += 1;
            }
        }
    }
    let mut outputs = Vec::new();
    // constants do not depend on the samples: once
    let (ni, nc) = (g.inputs.len(), g.consts.len());
    for (st, c) in stats[ni..ni + nc].iter_mut().zip(&g.consts) {
        widen(st, c.data.iter());
    }
    for s in samples {
        // a non-finite node output on calibration data is an error worth reporting (the first node)
        let mut bad = None;
        let outs = g.eval_visit(s, |v, data| {
            widen(&mut stats[v], data.iter().copied());
            add_marginals(g.shape(v as u32), data, &mut stats[v].sums);
            if bad.is_none() && v >= ni + nc && data.iter().any(|x| !x.is_finite()) {
                bad = Some(v - ni - nc);
            }
        });
        if verity_engine::cancel::requested() {
            return Err(CompileError::Cancelled);
        }
        if let Some(k) = bad {
            let node = &g.nodes[k];
            return Err(CompileError::Calibration(format!(
                "node '{}' ({}) produces a non-finite value on the calibration data",
                node.name, node.origin
            )));
        }
        if keep {
            outputs.push(outs);
        }
    }
    for st in &mut stats {
        if st.min > st.max {
            (st.min, st.max) = (0.0, 0.0);
        }
    }
    Ok((stats, outputs))
}

pub use verity_engine::calib::ceil_log2;

/// The scale of values of largest magnitude `m` given `bits` bits of magnitude: the finest that keeps
/// them below `2^bits`, at most `max_scale` (`B`) fractional bits — or, for values below 1, `B` bits
/// below their leading one (at most `2B` fractional bits), so a small tensor (a normalization's
/// variance, a random classifier's logits) keeps the relative precision of one of magnitude 1.
fn scale_for(m: f64, bits: i32, max_scale: i8) -> i8 {
    if m.is_nan() || m <= 0.0 || m.is_infinite() {
        return max_scale;
    }
    let c = ceil_log2(m);
    let b = max_scale as i32;
    let cap = b + (-c).clamp(0, b.max(0));
    (bits - c).clamp(-30, cap.max(-30)) as i8
}

/// Real constants of at least this many elements are quantized only when read (see [`quantize`]).
const DEFER_ELEMENTS: usize = 1 << 12;

/// [`quantize_slice`]'s errors, without keeping the values.
fn check_slice(
    mut data: impl Iterator<Item = f64>,
    scale: i8,
    what: &str,
) -> Result<(), CompileError> {
    data.try_for_each(|x| {
        quantize_value(x, scale)
            .map(|_| ())
            .map_err(|e| CompileError::Calibration(format!("{what}: {e}")))
    })
}

/// `data` at `scale`, each value rounded half up (an error names `what`).
pub(crate) fn quantize_slice(
    data: impl Iterator<Item = f64>,
    scale: i8,
    what: &str,
) -> Result<Vec<i32>, CompileError> {
    data.map(|x| {
        quantize_value(x, scale).map_err(|e| CompileError::Calibration(format!("{what}: {e}")))
    })
    .collect()
}

fn clamp_bound(x: f64, scale: i8) -> i32 {
    if x == f64::INFINITY {
        i32::MAX
    } else if x == f64::NEG_INFINITY {
        i32::MIN
    } else {
        let v = (x * libm::ldexp(1.0, scale as i32) + 0.5).floor();
        v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
    }
}

struct Table {
    shift: i32,
    lo: i32,
    scale: i8,
    data: Vec<i32>,
}

/// A table for `f` over `[a, b]`, indexed by an input at scale `s_in`.
#[allow(clippy::too_many_arguments)]
fn build_table(
    f: impl Fn(f64) -> f64,
    a: f64,
    b: f64,
    s_in: i8,
    max_index_bits: i32,
    out_scale: Option<i8>,
    scale_bits: i8,
    entries: f64,
) -> Table {
    let t = index_bits(a, b, s_in, max_index_bits, entries);
    let step = libm::ldexp(1.0, -t);
    let lo = (a * libm::ldexp(1.0, t)).floor() as i32;
    // never more than `entries` + 1 entries, even for a domain too wide for the coarsest index (inputs
    // past the end read the last entry)
    let hi = ((b * libm::ldexp(1.0, t)).ceil() as i64).min(lo as i64 + entries as i64) as i32;
    let points: Vec<f64> = (lo..=hi).map(|i| f(i as f64 * step)).collect();
    let scale = out_scale.unwrap_or_else(|| {
        let m = points.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        scale_for(m, CONST_BITS, scale_bits)
    });
    let data = points.iter().map(|&v| clamp_bound(v, scale)).collect();
    Table {
        shift: s_in as i32 - t,
        lo,
        scale,
        data,
    }
}

/// The finest index step `2^-t` (`t ≤ min(s_in, max_index_bits)`) at which a table over `[a, b]` has
/// at most `entries` intervals.
fn index_bits(a: f64, b: f64, s_in: i8, max_index_bits: i32, entries: f64) -> i32 {
    let width = (b - a).max(libm::ldexp(1.0, -20));
    let mut t = (s_in as i32).min(max_index_bits);
    while t > -20 && width * libm::ldexp(1.0, t) > entries {
        t -= 1;
    }
    t
}

/// The table of a saturating function `f` of a narrow model, at entry scale `scale`, interpolated in
/// integers between at most [`KNOTS`] knots: entry `j·2^g + l` is
/// `k_j + ⌊((k_{j+1} − k_j)·l + 2^(g−1)) / 2^g⌋` ([`fitted_knots`] chooses the `k_j`).
/// The domain `[a, b]` is first trimmed to where the rounded function still changes (inputs past
/// either end read its end value, as they would from the whole domain), then indexed at the finest
/// step of at most [`NARROW_TABLE`] intervals, with the fewest entries per segment (`2^g`) that
/// keep the knots within [`KNOTS`]. An engine reads such a table from its knots in registers
/// instead of gathering its entries (the same integers: they are the entries). `None` when the
/// trimmed table has no more entries than knots would (the exact table is then as small).
fn knotted_table(
    f: impl Fn(f64) -> f64,
    (a, b): (f64, f64),
    s_in: i8,
    max_index_bits: i32,
    scale: i8,
) -> Option<Table> {
    let q = |x: f64| clamp_bound(f(x), scale);
    let t = index_bits(a, b, s_in, max_index_bits, NARROW_TABLE);
    let step = libm::ldexp(1.0, -t);
    let (lo, hi) = (
        (a * libm::ldexp(1.0, t)).floor() as i64,
        (b * libm::ldexp(1.0, t)).ceil() as i64,
    );
    let at = |i: i64| q(i as f64 * step);
    let (q_lo, q_hi) = (at(lo), at(hi));
    let first = (lo..=hi).find(|&i| at(i) != q_lo)? - 1;
    let last = (lo..=hi).rev().find(|&i| at(i) != q_hi)? + 1;
    let (a, b) = (first as f64 * step, last as f64 * step);
    let t = index_bits(a, b, s_in, max_index_bits, NARROW_TABLE);
    let lo = (a * libm::ldexp(1.0, t)).floor() as i64;
    let n = (b * libm::ldexp(1.0, t)).ceil() as i64 - lo;
    let most = KNOTS as i64;
    if n < most {
        return None;
    }
    let g = (1..=14).find(|&g| (n + (1 << g) - 1) >> g < most)?;
    let segments = (n + (1 << g) - 1) >> g;
    let step = libm::ldexp(1.0, -t);
    let y: Vec<f64> = (0..=segments << g)
        .map(|i| f((lo + i) as f64 * step) * libm::ldexp(1.0, scale as i32))
        .collect();
    let ends = (q(lo as f64 * step), q((lo + (segments << g)) as f64 * step));
    let knots = fitted_knots(&y, g, ends);
    Some(Table {
        shift: s_in as i32 - t,
        lo: i32::try_from(lo).ok()?,
        scale,
        data: interpolated(&knots, g, ((segments as usize) << g) + 1),
    })
}

/// The knots `k_0 ..= k_S` (`S = (y.len() − 1) / 2^g`) whose linear interpolation, `k_j·(1 − u) +
/// k_{j+1}·u` at point `j·2^g + l` (`u = l / 2^g`), is nearest the values `y` in the least-squares
/// sense, the end knots pinned to `ends` (the function's rounded values there, which inputs past the
/// table read), each rounded to an integer. The normal equations are tridiagonal (each point weighs
/// on its segment's two knots), solved by elimination in `f64` (deterministic: no library functions).
/// Unlike the function's own values at the knots, whose chords lie on one side of a convex stretch,
/// the fitted line crosses the function in every segment: about half the largest error, and none on
/// average.
fn fitted_knots(y: &[f64], g: u32, ends: (i32, i32)) -> Vec<i32> {
    let m = 1usize << g;
    let s = (y.len() - 1) / m;
    // the sums over one segment's points of (1 − u)², u(1 − u) and u²
    let (mut s00, mut s01, mut s11) = (0.0, 0.0, 0.0);
    for l in 0..m {
        let u = l as f64 / m as f64;
        s00 += (1.0 - u) * (1.0 - u);
        s01 += u * (1.0 - u);
        s11 += u * u;
    }
    // the right-hand sides: knot j gathers (1 − u)·y over segment j and u·y over segment j − 1
    let mut rhs = vec![0.0f64; s + 1];
    for (i, &v) in y.iter().enumerate().take(s * m) {
        let (j, u) = (i / m, (i % m) as f64 / m as f64);
        rhs[j] += (1.0 - u) * v;
        rhs[j + 1] += u * v;
    }
    let mut k = vec![ends.0 as f64; s + 1];
    k[s] = ends.1 as f64;
    if s >= 2 {
        // unknowns 1..s−1: diagonal s11 + s00, neighbours s01; the pinned ends move to the right
        let n = s - 1;
        let diag = s11 + s00;
        let mut r: Vec<f64> = (1..s).map(|j| rhs[j]).collect();
        r[0] -= s01 * k[0];
        r[n - 1] -= s01 * k[s];
        // forward elimination (the matrix is diagonally dominant: no pivoting)
        let mut c = vec![0.0f64; n];
        let mut d = diag;
        c[0] = s01 / d;
        r[0] /= d;
        for i in 1..n {
            d = diag - s01 * c[i - 1];
            c[i] = s01 / d;
            r[i] = (r[i] - s01 * r[i - 1]) / d;
        }
        for i in (0..n - 1).rev() {
            r[i] -= c[i] * r[i + 1];
        }
        k[1..s].copy_from_slice(&r);
    }
    k.iter().map(|&v| (v + 0.5).floor() as i32).collect()
}

/// Quantize the float graph with the calibrated statistics, at the given precision (`auto` lowers
/// every contraction at `int8` here: [`crate::mixed::choose`] measures and widens).
pub fn quantize(
    g: &FGraph,
    stats: &[Stats],
    scale_bits: i8,
    precision: Precision,
) -> Result<Model, CompileError> {
    let (model, float_of) = lower(g, stats, scale_bits, precision)?;
    match precision.widths() {
        Some(w) => {
            let plan = crate::narrow::Plan::uniform(w);
            validated(crate::narrow::narrow(g, stats, &model, &float_of, &plan).0)
        }
        None => validated(model),
    }
}

/// The model, once it passes [`Model::validate`].
pub(crate) fn validated(model: Model) -> Result<Model, CompileError> {
    model
        .validate()
        .map_err(|e| CompileError::Calibration(format!("quantized model is invalid: {e}")))?;
    Ok(model)
}

/// The 32-bit model (its narrow-precision function tables and deferred weights when `precision` is
/// narrow) and, per canonical value, the float value it stands for (function tables have none).
pub(crate) fn lower(
    g: &FGraph,
    stats: &[Stats],
    scale_bits: i8,
    precision: Precision,
) -> Result<(Model, Vec<Option<usize>>), CompileError> {
    let ni = g.inputs.len();
    let nc = g.consts.len();
    let act = |v: usize| -> i8 { scale_for(stats[v].abs(), ACTIVATION_BITS, scale_bits) };
    let inputs: Vec<Input> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| Input {
            name: inp.name.clone(),
            shape: inp.shape.clone(),
            scale: if inp.kind == InputKind::Int {
                0
            } else {
                act(i)
            },
            kind: inp.kind,
        })
        .collect();
    // Constant scales: integer constants stay exact; biases are capped by their accumulator's scale,
    // which is known only once operand scales are, so constants are quantized after node scales.
    let mut scales: Vec<i8> = vec![0; ni + nc + g.nodes.len()];
    for (i, inp) in inputs.iter().enumerate() {
        scales[i] = inp.scale;
    }
    for (i, c) in g.consts.iter().enumerate() {
        scales[ni + i] = if c.int {
            0
        } else {
            scale_for(stats[ni + i].abs(), CONST_BITS, scale_bits)
        };
    }
    let node_base = ni + nc;
    // Pass 1: node scales with the default constant scales; then cap each bias at its accumulator scale.
    for k in 0..g.nodes.len() {
        let (_, scale, _) = lower_node(g, stats, &scales, k, scale_bits, precision);
        scales[node_base + k] = scale;
    }
    for n in &g.nodes {
        if let FOp::Canon(Op::EinSum { .. } | Op::Conv2d { .. }) = n.op {
            if let Some(&b) = n.inputs.get(2) {
                let acc = scales[n.inputs[0] as usize] as i32 + scales[n.inputs[1] as usize] as i32;
                let b = b as usize;
                scales[b] = (scales[b] as i32).min(acc) as i8;
            }
        }
    }
    // at a narrow precision the weights of the contractions are quantized again from their float
    // values, so large real constants are only checked here and quantized when the narrow lowering
    // reads them as they are (`narrow::Builder::value`): no 32-bit copy of every weight
    let deferred = |c: &FConst| precision.is_narrow() && !c.int && c.data.len() >= DEFER_ELEMENTS;
    let mut consts: Vec<Const> = Vec::with_capacity(nc);
    for (i, c) in g.consts.iter().enumerate() {
        let s = scales[ni + i];
        if c.int && c.data.iter().any(|x| x.fract() != 0.0) {
            return Err(CompileError::Calibration(
                "an integer constant holds a fraction".into(),
            ));
        }
        let data = if deferred(c) {
            check_slice(c.data.iter(), s, "constant")?;
            Elements::from(Vec::<i32>::new())
        } else {
            quantize_slice(c.data.iter(), s, "constant")?.into()
        };
        consts.push(Const {
            shape: c.shape.clone(),
            scale: s,
            data,
        });
    }
    // Pass 2: build the canonical nodes. Tables become constants after the graph's own constants.
    // Identical tables (a function at one index step and entry scale, as most sigmoids of a network
    // are) are one constant.
    let mut tables: Vec<Const> = Vec::new();
    let mut table_ids: BTreeMap<(i8, Vec<i32>), u32> = BTreeMap::new();
    let mut nodes: Vec<Node> = Vec::with_capacity(g.nodes.len());
    for (k, n) in g.nodes.iter().enumerate() {
        let (op, scale, extra) = lower_node(g, stats, &scales, k, scale_bits, precision);
        scales[node_base + k] = scale;
        let mut inputs = n.inputs.clone();
        if let Some(t) = extra {
            let id = *table_ids
                .entry((t.scale, t.data))
                .or_insert_with_key(|(s, d)| {
                    tables.push(Const {
                        shape: vec![d.len() as u32],
                        scale: *s,
                        data: d.clone().into(),
                    });
                    // placeholder id, renumbered below
                    u32::MAX - (tables.len() as u32 - 1)
                });
            inputs.push(id);
        }
        nodes.push(Node {
            name: n.name.clone(),
            op,
            inputs,
            shape: n.shape.clone(),
            scale,
        });
    }
    // Renumber: tables become constants nc.., node ids shift by the number of tables.
    let nt = tables.len() as u32;
    let remap = |v: u32| -> u32 {
        if v > u32::MAX - nt {
            (ni + nc) as u32 + (u32::MAX - v)
        } else if (v as usize) >= node_base {
            v + nt
        } else {
            v
        }
    };
    for n in &mut nodes {
        for i in &mut n.inputs {
            *i = remap(*i);
        }
    }
    consts.extend(tables);
    let outputs = g
        .outputs
        .iter()
        .map(|(name, v)| Output {
            name: name.clone(),
            value: remap(*v),
        })
        .collect();
    let model = Model {
        inputs,
        consts,
        nodes,
        outputs,
    };
    // canonical value → float value (function tables have none)
    let float_of: Vec<Option<usize>> = (0..model.value_count())
        .map(|v| {
            if v < node_base {
                Some(v)
            } else if v < node_base + nt as usize {
                None
            } else {
                Some(v - nt as usize)
            }
        })
        .collect();
    Ok((model, float_of))
}

/// The canonical op, output scale and (for table ops) table of float node `k`, given the scales chosen
/// so far.
fn lower_node(
    g: &FGraph,
    stats: &[Stats],
    scales: &[i8],
    k: usize,
    scale_bits: i8,
    precision: Precision,
) -> (Op, i8, Option<Table>) {
    let n = &g.nodes[k];
    let v = g.inputs.len() + g.consts.len() + k;
    let act = |v: usize| -> i8 { scale_for(stats[v].abs(), ACTIVATION_BITS, scale_bits) };
    let s_in = n.inputs.first().map_or(0, |&i| scales[i as usize]);
    match &n.op {
        FOp::Canon(op) => {
            let keeps_scale = matches!(
                op,
                Op::MaxPool2d { .. }
                    | Op::Reshape
                    | Op::Transpose { .. }
                    | Op::Slice { .. }
                    | Op::Gather { .. }
                    | Op::Broadcast
            );
            let s = if keeps_scale {
                s_in
            } else if g.is_int(v as u32) {
                0
            } else if let Op::Concat { .. } = op {
                n.inputs
                    .iter()
                    .map(|&i| scales[i as usize])
                    .min()
                    .unwrap_or(0)
                    .min(act(v))
            } else {
                act(v)
            };
            (op.clone(), s, None)
        }
        FOp::Clamp { lo, hi } => (
            Op::Clamp {
                lo: clamp_bound(*lo, s_in),
                hi: clamp_bound(*hi, s_in),
            },
            s_in,
            None,
        ),
        FOp::LeakyRelu { alpha } => {
            let a_s = scale_for(alpha.abs(), CONST_BITS, 16);
            (
                Op::LeakyRelu {
                    alpha_q: clamp_bound(*alpha, a_s),
                    alpha_scale: a_s,
                },
                act(v),
                None,
            )
        }
        FOp::Step(t) => {
            let (lo, data) = t.table();
            (
                Op::Lookup { shift: 0, lo },
                0,
                Some(Table {
                    shift: 0,
                    lo,
                    scale: 0,
                    data,
                }),
            )
        }
        FOp::Func(f) => {
            let st = &stats[n.inputs[0] as usize];
            let (a, b) = match f.saturation() {
                Some(dom) => dom,
                None if f.positive_domain() => {
                    // from the smallest positive input the scale holds (or the calibrated minimum
                    // halved, if larger) to twice the calibrated maximum
                    let tiny = libm::ldexp(1.0, -(s_in as i32));
                    let a = (st.min * 0.5).max(tiny);
                    (a, (st.max * 2.0).max(a * 2.0))
                }
                None => {
                    let pad = ((st.max - st.min) * 0.5).max(1.0);
                    ((st.min - pad).max(-40.0), (st.max + pad).min(40.0))
                }
            };
            // a positive-domain function's entries below `a` (the table's first grid point can be)
            // read its value at `a`
            let floor = if f.positive_domain() { a } else { f64::MIN };
            let narrow = precision.is_narrow() && f.saturation().is_some();
            let (entries, out_scale) = if narrow {
                // the saturating functions are monotone: their largest magnitude is at an end of the
                // domain (or at 0 for good measure)
                let top = (a..=b).contains(&0.0).then_some(0.0).into_iter();
                let m = [a, b]
                    .into_iter()
                    .chain(top)
                    .map(|x| f.eval(x.max(floor)).abs());
                let m = m.fold(0.0f64, f64::max);
                (
                    NARROW_TABLE,
                    Some(scale_for(m, NARROW_TABLE_BITS, scale_bits)),
                )
            } else {
                (MAX_TABLE, None)
            };
            let floor_f = |x: f64| f.eval(x.max(floor));
            let knotted = out_scale.and_then(|s| knotted_table(floor_f, (a, b), s_in, 16, s));
            let t = knotted.unwrap_or_else(|| {
                build_table(floor_f, a, b, s_in, 16, out_scale, scale_bits, entries)
            });
            (
                Op::Lookup {
                    shift: t.shift,
                    lo: t.lo,
                },
                t.scale,
                Some(t),
            )
        }
        FOp::Softmax { axis } => {
            let t = build_table(
                |x| Func::Exp.eval(x),
                -SOFTMAX_RANGE,
                0.0,
                s_in,
                SOFTMAX_INDEX_BITS,
                Some(SOFTMAX_EXP_SCALE),
                scale_bits,
                MAX_TABLE,
            );
            (
                Op::Softmax {
                    axis: *axis,
                    shift: t.shift,
                    lo: t.lo,
                },
                act(v).min(30),
                Some(t),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fgraph::{FData, FInput, FNode};
    use verity_engine::ir::Window;

    /// Scales: at most `B` fractional bits from magnitude 1 up (and fewer once the magnitude bits run
    /// out), `B` bits below the leading one under 1, at most `2B`.
    #[test]
    fn scales_keep_b_bits_below_the_leading_one() {
        // (largest magnitude, magnitude bits, B, scale)
        for (m, bits, b, want) in [
            (0.75, 23, 16, 16),
            (1.0, 23, 16, 16),
            (200.0, 23, 16, 15),
            (0.3, 23, 16, 17),
            (3e-5, 23, 16, 31),
            (3e-5, 30, 16, 31),
            (1e-12, 23, 16, 32),
            (1e-12, 23, 8, 16),
            (0.3, 23, 0, 0),
            (2f64.powi(40), 23, 16, -17),
            (0.0, 23, 16, 16),
        ] {
            assert_eq!(scale_for(m, bits, b), want, "{m} with {bits} bits, B = {b}");
        }
    }

    /// At a narrow precision a large real constant is quantized only when the narrow lowering keeps it:
    /// a convolution's weights become its 8-bit ones (no 32-bit copy is kept), and a large constant an
    /// `Add` reads is quantized as at 32 bits, to the same integers; the model runs.
    #[test]
    fn deferred_constants_are_quantized_where_they_are_kept() {
        let n = 64 * 8 * 8;
        let wave = |k: usize, f: f64| (0..k).map(|i| ((i as f64) * f).sin()).collect::<Vec<f64>>();
        let g = FGraph {
            inputs: vec![FInput {
                name: "x".into(),
                shape: vec![1, 64, 8, 8],
                kind: InputKind::Fixed,
            }],
            consts: vec![
                FConst {
                    shape: vec![64, 64, 3, 3],
                    data: FData::F64(wave(64 * 64 * 9, 0.37)),
                    int: false,
                },
                FConst {
                    shape: vec![1, 64, 8, 8],
                    data: FData::F64(wave(n, 0.11)),
                    int: false,
                },
            ],
            nodes: vec![
                FNode {
                    name: "conv".into(),
                    origin: String::new(),
                    op: FOp::Canon(Op::Conv2d {
                        window: Window {
                            kernel: [3, 3],
                            stride: [1, 1],
                            dilation: [1, 1],
                            pads: [1; 4],
                        },
                        groups: 1,
                    }),
                    inputs: vec![0, 1],
                    shape: vec![1, 64, 8, 8],
                },
                FNode {
                    name: "add".into(),
                    origin: String::new(),
                    op: FOp::Canon(Op::Add),
                    inputs: vec![3, 2],
                    shape: vec![1, 64, 8, 8],
                },
            ],
            outputs: vec![("y".into(), 4)],
        };
        let samples: Vec<Vec<Vec<f64>>> = (0..3).map(|s| vec![wave(n, 0.05 + s as f64)]).collect();
        let stats = calibrate(&g, &samples).expect("calibrates");
        let wide = quantize(&g, &stats, 16, Precision::I32).expect("i32");
        let narrow = quantize(&g, &stats, 16, Precision::INT8).expect("int8");
        let added = |m: &Model| {
            let add = m.nodes.iter().find(|k| k.op == Op::Add).expect("the add");
            m.const_of(add.inputs[1]).expect("a constant").clone()
        };
        let (a, b) = (added(&wide), added(&narrow));
        assert_eq!((a.scale, a.shape.clone()), (b.scale, b.shape.clone()));
        assert_eq!(a.data.len(), n);
        assert_eq!(&a.data[..], &b.data[..]);
        // the convolution's weights are bytes, and no constant holds the 32-bit form
        let conv = narrow
            .nodes
            .iter()
            .find(|k| matches!(k.op, Op::Conv2d { .. }));
        let w = narrow
            .const_of(conv.expect("the conv").inputs[1])
            .expect("weights");
        assert!(w.data.bytes().is_some());
        let sized = |m: &Model| {
            m.consts
                .iter()
                .filter(|c| c.data.len() == 64 * 64 * 9)
                .count()
        };
        assert_eq!((sized(&wide), sized(&narrow)), (1, 1));
        let x = verity_engine::io::quantize_inputs(
            &narrow,
            &[verity_engine::io::FloatTensor {
                shape: vec![1, 64, 8, 8],
                data: wave(n, 0.3),
            }],
        )
        .expect("fits");
        let y = verity_engine::Executor::new(&narrow, verity_engine::Mode::default()).run(x);
        assert_eq!(y.expect("runs")[0].len(), n);
    }

    /// A narrow model's sigmoid and tanh tables are interpolated between knots an engine holds in
    /// registers, their entries within a small error of the functions (least-squares knots: about
    /// as often above as below), trimmed to where the rounded function changes; two reads of one
    /// function at one scale share one table at either precision, and the model gives the same
    /// integers as the tables read entry by entry.
    #[test]
    fn saturating_tables_are_knotted_and_shared() {
        let n = 512usize;
        let node = |name: &str, f: Func| FNode {
            name: name.into(),
            origin: String::new(),
            op: FOp::Func(f),
            inputs: vec![0],
            shape: vec![n as u32],
        };
        let g = FGraph {
            inputs: vec![FInput {
                name: "x".into(),
                shape: vec![n as u32],
                kind: InputKind::Fixed,
            }],
            consts: vec![],
            nodes: vec![
                node("a", Func::Sigmoid),
                node("b", Func::Sigmoid),
                node("c", Func::Tanh),
            ],
            outputs: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
        };
        let x = |s: f64| {
            (0..n)
                .map(|i| (i as f64 - 256.0) / 20.0 + s)
                .collect::<Vec<_>>()
        };
        let samples: Vec<Vec<Vec<f64>>> = (0..2).map(|s| vec![x(s as f64 * 0.01)]).collect();
        let stats = calibrate(&g, &samples).expect("calibrates");
        for precision in [Precision::I32, Precision::INT8] {
            let m = quantize(&g, &stats, 16, precision).expect("quantizes");
            let tables: Vec<u32> = m.nodes.iter().map(|k| k.inputs[1]).collect();
            assert_eq!(tables[0], tables[1], "{precision:?}: one sigmoid table");
            assert_ne!(tables[0], tables[2], "{precision:?}");
            assert_eq!(m.consts.len(), 2, "{precision:?}");
            if precision == Precision::I32 {
                continue;
            }
            for (k, f) in [(0, Func::Sigmoid), (2, Func::Tanh)] {
                let node = &m.nodes[k];
                let Op::Lookup { shift, lo } = node.op else {
                    panic!("{node:?}")
                };
                let t = &m.const_of(tables[k]).expect("a table").data;
                let (gbits, knots) = verity_engine::segments::knots(t).expect("knots");
                assert!(
                    knots.len() > 64 && gbits >= 5,
                    "{f:?}: {} knots",
                    knots.len()
                );
                // the grid: entry i at input (lo + i)·2^(shift − s_x)
                let step = libm::ldexp(1.0, shift - m.inputs[0].scale as i32);
                let unit = libm::ldexp(1.0, m.consts[0].scale as i32);
                let errors: Vec<f64> = t
                    .iter()
                    .enumerate()
                    .map(|(i, &e)| e as f64 - f.eval((lo as f64 + i as f64) * step) * unit)
                    .collect();
                let worst = errors.iter().fold(0.0f64, |w, e| w.max(e.abs()));
                let mean = errors.iter().sum::<f64>() / errors.len() as f64;
                // at most 2^-9 of the function's range (the entries of a table of the function's own
                // values every 2^-9, 2^-10 at these slopes), and unbiased
                assert!(worst < unit / 512.0, "{f:?}: largest error {worst}");
                assert!(mean.abs() < 1.0, "{f:?}: mean error {mean}");
                let above = errors.iter().filter(|&&e| e > 0.5).count();
                let below = errors.iter().filter(|&&e| e < -0.5).count();
                assert!(
                    above * 3 > below && below * 3 > above,
                    "{above} above, {below} below"
                );
                // the ends saturate: the first and last entries are the rounded function there
                let end = |i: usize| {
                    clamp_bound(f.eval((lo as f64 + i as f64) * step), m.consts[0].scale)
                };
                assert_eq!((t[0], t[t.len() - 1]), (end(0), end(t.len() - 1)));
            }
            let q = verity_engine::io::quantize_inputs(
                &m,
                &[verity_engine::io::FloatTensor {
                    shape: vec![n],
                    data: x(0.003),
                }],
            )
            .expect("fits");
            let fast =
                verity_engine::Executor::new(&m, verity_engine::Mode::default()).run(q.clone());
            let reference = verity_engine::Executor::new(&m, verity_engine::Mode::Reference).run(q);
            assert_eq!(fast.expect("runs"), reference.expect("runs"));
        }
    }

    /// An 8-bit activation's exact factor folded into a table of knots (`x · sigmoid(x)` read by a
    /// narrowed product) scales the knots: the copy is again a table of knots, its entries the
    /// scaled function's within the same small error, and the model gives the same integers fast and
    /// by reference.
    #[test]
    fn a_folded_factor_keeps_a_table_of_knots() {
        let (m, k, n) = (4usize, 32usize, 16usize);
        let g = FGraph {
            inputs: vec![FInput {
                name: "x".into(),
                shape: vec![m as u32, k as u32],
                kind: InputKind::Fixed,
            }],
            consts: vec![FConst {
                shape: vec![k as u32, n as u32],
                data: FData::F64((0..k * n).map(|i| ((i as f64) * 0.37).sin()).collect()),
                int: false,
            }],
            nodes: vec![
                FNode {
                    name: "sigmoid".into(),
                    origin: String::new(),
                    op: FOp::Func(Func::Sigmoid),
                    inputs: vec![0],
                    shape: vec![m as u32, k as u32],
                },
                FNode {
                    name: "silu".into(),
                    origin: String::new(),
                    op: FOp::Canon(Op::Mul),
                    inputs: vec![0, 2],
                    shape: vec![m as u32, k as u32],
                },
                FNode {
                    name: "fc".into(),
                    origin: String::new(),
                    op: FOp::Canon(Op::EinSum {
                        a: b"mk".to_vec(),
                        b: b"kn".to_vec(),
                        out: b"mn".to_vec(),
                    }),
                    inputs: vec![3, 1],
                    shape: vec![m as u32, n as u32],
                },
            ],
            outputs: vec![("y".into(), 4)],
        };
        // x in [−3, 3]: x · sigmoid(x) up to 2.86, a factor of 4 / 2.86 (1.25 in quarters)
        let x = |s: f64| {
            (0..m * k)
                .map(|i| ((i as f64 * 0.61 + s).sin()) * 3.0)
                .collect::<Vec<_>>()
        };
        let samples: Vec<Vec<Vec<f64>>> = (0..4).map(|s| vec![x(s as f64)]).collect();
        let stats = calibrate(&g, &samples).expect("calibrates");
        let model = quantize(&g, &stats, 16, Precision::INT8).expect("quantizes");
        let lookup = model
            .nodes
            .iter()
            .find(|k| matches!(k.op, Op::Lookup { .. }))
            .expect("the sigmoid");
        let t = &model.const_of(lookup.inputs[1]).expect("a table").data;
        let top = t.iter().map(|v| v.abs()).max().unwrap_or(0);
        assert!(top > 1 << 14, "the factor is folded into the table ({top})");
        let (_, knots) = verity_engine::segments::knots(t).expect("a table of knots");
        assert!(knots.len() > 64);
        // the entries against the scaled function
        let Op::Lookup { shift, lo } = lookup.op else {
            unreachable!()
        };
        let factor = top as f64 / 16384.0;
        let step = libm::ldexp(1.0, shift - model.inputs[0].scale as i32);
        let worst = t.iter().enumerate().fold(0.0f64, |w, (i, &e)| {
            let want = Func::Sigmoid.eval((lo as f64 + i as f64) * step) * 16384.0 * factor;
            w.max((e as f64 - want).abs())
        });
        assert!(worst < 48.0, "largest error {worst}");
        let q = verity_engine::io::quantize_inputs(
            &model,
            &[verity_engine::io::FloatTensor {
                shape: vec![m, k],
                data: x(0.5),
            }],
        )
        .expect("fits");
        let fast =
            verity_engine::Executor::new(&model, verity_engine::Mode::default()).run(q.clone());
        let reference = verity_engine::Executor::new(&model, verity_engine::Mode::Reference).run(q);
        assert_eq!(fast.expect("runs"), reference.expect("runs"));
    }
}
