//! The circuit of a model: what is committed for each node and which relation ties it to its operands.
//! Built once per model ([`keygen`]); a model using something the prover cannot handle is refused here,
//! with the node and the reason.
//!
//! Every node output is a committed integer tensor (a [`NumSpec`]: 16-bit limbs in the trace table `T`,
//! so its range is proven by the range argument). A node is one or more [`Step`]s: a linear map of the
//! operands followed by a rescale or a rounded division (`Lin`), or an exact maximum/minimum over
//! candidates (`Extreme`). Constants (weights, biases) live in a second table `W`, committed once per
//! model; the model inputs are public.

use verity_core::Hash;
use verity_engine::ir::{Model, Op, ReduceKind, ValueId, Window};

use crate::dims::Dims;
use crate::field::{from_i64, F};
use crate::pcs::{self, Committed};
use crate::ZkError;

/// Limb widths a circuit may use: every entry of its trace table is below `2^limb_bits`. Wide limbs need
/// fewer entries per value but a larger range table; each model gets the width that makes its trace
/// table smaller.
pub const LIMB_CHOICES: [u32; 2] = [16, 8];
/// Field relations are exact integer relations while every side stays below this magnitude.
pub const EXACT: u128 = 1 << 62;

/// Where a tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// Model input `i` (public).
    Input(usize),
    /// Constant `c` (in `W`).
    Weight(usize),
    /// Committed integer tensor `n`.
    Num(usize),
}

/// A committed integer tensor: at every real position `value = Σᵢ 2^(16i)·limbᵢ + offset`; padding is 0.
#[derive(Clone, Debug)]
pub struct NumSpec {
    /// Shape.
    pub dims: Dims,
    /// The trace slots of its limbs, lowest first.
    pub limbs: Vec<usize>,
    /// Added to the limbs' value.
    pub offset: i64,
}

/// A region of the trace table: `2^bits` entries at `offset` (a multiple of `2^bits`).
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// First entry.
    pub offset: usize,
    /// Variables.
    pub bits: usize,
    /// The tensor whose limb it holds (`None`: multiplicities, not range-checked).
    pub num: Option<usize>,
    /// For multiplicities: entries in use (a prefix).
    pub len: usize,
}

/// An upper bound per element.
#[derive(Clone, Debug)]
pub enum Bound {
    /// The same bound everywhere.
    Const(u64),
    /// Row-major bounds, one per element.
    Table(Vec<u64>),
}

/// A committed value in `[0, bound)`: limbs give `[0, 2^(16L))`; a committed complement
/// `bound − 1 − value` (also limbs) gives the upper end when the bound is not `2^(16L)`.
#[derive(Clone, Debug)]
pub struct Bounded {
    /// The value.
    pub num: usize,
    /// Its complement, when needed.
    pub comp: Option<usize>,
    /// The bound.
    pub bound: Bound,
}

/// What turns the linear part `pre` into the step's output `y`.
#[derive(Clone, Debug)]
pub enum Post {
    /// `y = rshift(pre, k)`: for `k > 0`, `2^k·y + rem = pre + 2^(k−1)`, `0 ≤ rem < 2^k`.
    Resc {
        /// The shift.
        k: i32,
        /// The remainder (k > 0).
        rem: Option<Bounded>,
    },
    /// `y = div_round(pre·2^e, den)`: `2·pre·2^e + den = 2·den·y + rem`, `0 ≤ rem < 2·den`.
    Div {
        /// Left shift of `pre`.
        e: u32,
        /// Divisors (already shifted), per element or constant.
        den: Bound,
        /// The remainder.
        rem: Bounded,
    },
}

/// The linear part of a step.
#[derive(Clone, Debug)]
pub enum Lin {
    /// The operand itself (same shape).
    Copy(Src),
    /// `a·2^la ± b·2^lb`, broadcast.
    AddSub {
        /// Left.
        a: Src,
        /// Right.
        b: Src,
        /// Left shift of a.
        la: u32,
        /// Left shift of b.
        lb: u32,
        /// Subtract.
        sub: bool,
    },
    /// `a·b`, broadcast.
    Mul {
        /// Left.
        a: Src,
        /// Right.
        b: Src,
    },
    /// Two-operand Einstein summation plus `bias·2^shift`.
    EinSum {
        /// Left.
        a: Src,
        /// Right.
        b: Src,
        /// Bias and its shift.
        bias: Option<(Src, u32)>,
        /// Labels.
        la: Vec<u8>,
        /// Labels.
        lb: Vec<u8>,
        /// Labels.
        lo: Vec<u8>,
    },
    /// Convolution (one group) plus `bias[o]·2^shift`.
    Conv {
        /// Input.
        x: Src,
        /// Weights.
        w: Src,
        /// Bias and its shift.
        bias: Option<(Src, u32)>,
        /// Geometry.
        window: Window,
        /// Channel groups.
        groups: usize,
    },
    /// Sum over axes (kept as size 1).
    Reduce {
        /// Input.
        x: Src,
        /// Reduced axes.
        axes: Vec<usize>,
    },
    /// Output element `o` is the sum of the listed source elements (a fixed wiring).
    Wire {
        /// Sources.
        parts: Vec<Src>,
        /// Per source, pairs (output element, source element), row-major indices.
        map: Vec<Vec<(u32, u32)>>,
    },
    /// Gather along `axis` of `data` by the integer tensor `indices` (public or constant).
    Gather {
        /// Data.
        data: Src,
        /// Indices.
        indices: Src,
        /// Axis.
        axis: usize,
    },
}

/// A lookup table: a constant of the model, or a table fixed by the protocol (the verifier builds it).
#[derive(Clone, Debug)]
pub enum TableRef {
    /// Constant `c` (in `W`).
    Const(usize),
    /// Public entries.
    Public(Vec<i64>),
}

/// A candidate of a maximum or minimum, as a tensor of the output's shape.
#[derive(Clone, Debug)]
pub enum Cand {
    /// A broadcast view of a tensor, times `2^shift`.
    View(Src, u32),
    /// A constant.
    Const(i64),
    /// Pooling tap `t` of `src`: pairs (output element, source element); outputs without a real tap
    /// repeat another tap of their window, or are 0 when the window has none.
    Tap(Src, Vec<(u32, u32)>),
}

/// One relation with a committed output.
#[derive(Clone, Debug)]
pub enum Step {
    /// `out = post(lin(operands))`.
    Lin {
        /// Output tensor.
        out: usize,
        /// Linear part.
        lin: Lin,
        /// Rounding.
        post: Post,
    },
    /// `out[x] = table[idx[x] − lo]` for a constant 1-D table: the pairs are looked up (logUp).
    Table {
        /// Committed indices (already clamped to the table).
        idx: usize,
        /// Index of the table's first entry.
        lo: i64,
        /// Committed values.
        out: usize,
        /// The table.
        table: TableRef,
        /// Trace slot of the multiplicities.
        mult: usize,
    },
    /// `out = div_round(num·2^shift, den)` with a committed, broadcast divisor:
    /// `2·num·2^shift + den = 2·den·out + rem`, `0 ≤ rem < 2·den` (`rem + comp = 2·den − 1`).
    DivBy {
        /// Output, bounded.
        out: Bounded,
        /// Numerator.
        num: usize,
        /// Its left shift.
        shift: u32,
        /// Divisor (broadcast to the output).
        den: usize,
        /// Remainder.
        rem: usize,
        /// `2·den − 1 − rem`.
        comp: usize,
    },
    /// `y = isqrt_round(floor(2^e / v))` for `v ≥ 1` (the canonical Rsqrt), with the bit length `i + 1`
    /// of `v` (`p = 2^i ≤ v < 2p`, looked up with `q = 2^⌊i/2⌋`) bounding `y·q < 2^ybits` so that every
    /// product below stays exact: `d1 = 2^e − v·(y² − y + 1) ≥ 0`, `d2 = v·(y² + y + 1) − 2^e − 1 ≥ 0`.
    Rsqrt {
        /// The operand.
        v: Src,
        /// Output (non-negative).
        y: usize,
        /// Exponent.
        e: u32,
        /// `y·q < 2^ybits`.
        ybits: u32,
        /// Bit length minus one.
        idx: usize,
        /// `2^idx`.
        p: usize,
        /// `2^⌊idx/2⌋`.
        q: usize,
        /// `v − p`.
        dlo: usize,
        /// `2p − 1 − v`.
        dhi: usize,
        /// `2^ybits − 1 − y·q`.
        r: usize,
        /// Lower condition.
        d1: Bounded,
        /// Upper condition.
        d2: Bounded,
    },
    /// Leaky ReLU: with the sign bit `b` of `x` (`a = x − 2·bx − b ≥ 0`, `bx = b·x`), the positive part
    /// `p = rshift(x − bx, kp)` and the negative part `n = rshift(alpha·bx, kn)` (one of them is 0), and
    /// `y = p + n`.
    LeakyRelu {
        /// Input.
        x: Src,
        /// Output.
        y: usize,
        /// Sign bit (1: negative).
        b: Bounded,
        /// `b·x`.
        bx: usize,
        /// `x − 2·bx − b` (non-negative).
        a: usize,
        /// Positive part.
        p: usize,
        /// Its shift and remainder.
        kp: i32,
        /// Remainder of the positive part.
        rem_p: Option<Bounded>,
        /// Negative part.
        n: usize,
        /// Its shift.
        kn: i32,
        /// Remainder of the negative part.
        rem_n: Option<Bounded>,
        /// Slope numerator.
        alpha: i64,
    },
    /// `y = div_round(2^ne, v·2^s)` for `v ≠ 0` (the canonical Recip), signs normalized like
    /// `div_round`: with the sign bit `b` of `v`, `|v| = v − 2·bv ≥ 1` (`bv = b·v`), its bit length
    /// (`p = 2^i ≤ |v| < 2p`, looked up) and `|y| = ya`, `y = ya − 2·by` (`by = b·ya`):
    /// `2·(1 − 2b)·2^ne + D = 2·D·y + rem`, `rem + comp = 2D − 1` (`D = |v|·2^s`), and
    /// `ya·p < 2^(ne+1)` keeps `D·y` below `2^(ne+s+2)`.
    Recip {
        /// The operand.
        v: Src,
        /// Output.
        y: usize,
        /// Numerator exponent.
        ne: u32,
        /// Denominator shift.
        s: u32,
        /// Sign bit of `v`.
        b: Bounded,
        /// `b·v`.
        bv: usize,
        /// `|v|` (≥ 1).
        av: usize,
        /// Bit length minus one of `|v|`.
        idx: usize,
        /// `2^idx`.
        p: usize,
        /// `|v| − p`.
        dlo: usize,
        /// `2p − 1 − |v|`.
        dhi: usize,
        /// `|y|`.
        ya: usize,
        /// `b·|y|`.
        by: usize,
        /// `2^rbits − 1 − |y|·p`.
        r: usize,
        /// Bound of `|y|·p`: `max(ne + 1, 32)` bits.
        rbits: u32,
        /// Division remainder.
        rem: usize,
        /// `2D − 1 − rem`.
        comp: usize,
    },
    /// `out = src`, where `out` has a narrower range than `src`: bounds `src`.
    Narrow {
        /// The narrow copy.
        out: Bounded,
        /// The tensor bounded.
        src: Src,
    },
    /// `y = isqrt_round(n)` with `n = src·2^shift`: `z = [y = 0]` (`z·y = 0`),
    /// `d1 = n − y² + y − 1 + z ≥ 0`, `d2 = y² + y − n ≥ 0`.
    Sqrt {
        /// `n` before its shift.
        n: Src,
        /// Left shift of `n`.
        shift: u32,
        /// Output (`< 2^30`).
        y: Bounded,
        /// Zero flag.
        z: Bounded,
        /// Lower condition.
        d1: Bounded,
        /// Upper condition.
        d2: Bounded,
    },
    /// `out = max (or min) of cands`: `dᵢ = ±(out − candᵢ) ≥ 0` and `∏ dᵢ = 0`.
    Extreme {
        /// Output tensor.
        out: usize,
        /// Candidates.
        cands: Vec<Cand>,
        /// Minimum instead of maximum.
        min: bool,
        /// The committed differences.
        diffs: Vec<usize>,
    },
}

impl Step {
    /// The committed output.
    pub fn out(&self) -> usize {
        match self {
            Step::Lin { out, .. } | Step::Extreme { out, .. } | Step::Table { out, .. } => *out,
            Step::DivBy { out, .. } | Step::Narrow { out, .. } => out.num,
            Step::Sqrt { y, .. } => y.num,
            Step::Rsqrt { y, .. } | Step::LeakyRelu { y, .. } | Step::Recip { y, .. } => *y,
        }
    }
}

/// A model's circuit and the layout of its tables (the verifying key is this plus the `W` root).
#[derive(Clone, Debug)]
pub struct Circuit {
    /// The model ID.
    pub model_id: Hash,
    /// Input shapes.
    pub inputs: Vec<Dims>,
    /// Steps of each node, in order.
    pub nodes: Vec<Vec<Step>>,
    /// Node output tensors.
    pub node_out: Vec<usize>,
    /// Committed tensors.
    pub nums: Vec<NumSpec>,
    /// Trace slots.
    pub slots: Vec<Slot>,
    /// The multiplicity slot (`2^limb_bits` entries).
    pub mult: usize,
    /// Bits per limb.
    pub limb_bits: u32,
    /// Variables of `T`.
    pub t_bits: usize,
    /// Entries of `T` in use (the rest are zero).
    pub t_len: usize,
    /// Constant shapes and their `W` slots `(offset, bits)`.
    pub weights: Vec<(Dims, usize)>,
    /// Variables of `W`.
    pub w_bits: usize,
    /// Entries of `W` in use.
    pub w_len: usize,
    /// The model outputs (sources).
    pub outputs: Vec<Src>,
}

/// What the prover keeps: the circuit, the constants and the `W` commitment.
#[derive(Clone, Debug)]
pub struct ProvingKey {
    /// The circuit.
    pub circuit: Circuit,
    /// The model.
    pub model: Model,
    /// The committed `W`.
    pub w: Committed,
}

/// What a verifier needs besides the model's structure: the `W` commitment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    /// The model ID.
    pub model_id: Hash,
    /// The `W` root.
    pub w_root: Hash,
}

struct Builder<'m> {
    model: &'m Model,
    nums: Vec<NumSpec>,
    limb_bits: Vec<(Option<usize>, usize, usize)>, // (num, bits, len) per slot, in creation order
    maxabs: Vec<u128>,                             // per constant
    limb: u32,
    num_max: Vec<u128>, // per committed tensor: the largest magnitude its range allows
}

fn us(s: &[u32]) -> Vec<usize> {
    s.iter().map(|&d| d as usize).collect()
}

impl Builder<'_> {
    fn limbs_for(&self, bits: u32) -> usize {
        (bits.max(1)).div_ceil(self.limb) as usize
    }

    fn num(&mut self, shape: &[usize], bits: u32, offset: i64) -> usize {
        let id = self.nums.len();
        let dims = Dims::new(shape);
        let l = self.limbs_for(bits);
        let mut limbs = Vec::with_capacity(l);
        for _ in 0..l {
            limbs.push(self.limb_bits.len());
            self.limb_bits.push((Some(id), dims.nvars(), 0));
        }
        let span = 1i128 << (self.limb as usize * l).min(64);
        let hi = (offset as i128 + span - 1).unsigned_abs();
        self.num_max.push(hi.max(offset.unsigned_abs() as u128));
        self.nums.push(NumSpec {
            dims,
            limbs,
            offset,
        });
        id
    }

    /// A multiplicity slot of `len` entries (not range-checked).
    fn mult_slot(&mut self, len: usize) -> usize {
        self.limb_bits.push((None, crate::mle::vars(len), len));
        self.limb_bits.len() - 1
    }

    /// An i32 tensor.
    fn int(&mut self, shape: &[usize]) -> usize {
        self.num(shape, 32, -(1i64 << 31))
    }

    fn bounded(&mut self, shape: &[usize], bound: Bound) -> Bounded {
        self.bounded_from(shape, bound, 0)
    }

    /// A committed value in `[offset, offset + bound)`.
    fn bounded_from(&mut self, shape: &[usize], bound: Bound, offset: i64) -> Bounded {
        let max = match &bound {
            Bound::Const(b) => *b,
            Bound::Table(t) => t.iter().copied().max().unwrap_or(1),
        };
        let bits = 64 - max.saturating_sub(1).leading_zeros();
        let num = self.num(shape, bits, offset);
        let full = (self.limb * self.limbs_for(bits) as u32).min(63);
        let exact_pow = matches!(bound, Bound::Const(b) if b == 1u64 << full);
        let comp = (!exact_pow).then(|| self.num(shape, bits, 0));
        let top = (offset as i128 + max as i128 - 1).unsigned_abs();
        self.num_max[num] = top.max(offset.unsigned_abs() as u128);
        Bounded { num, comp, bound }
    }

    /// Prove that committed tensor `v` lies in `[−2^(bits−1), 2^(bits−1))` (a narrower copy), so the
    /// relations that use it may assume that bound.
    fn narrow(&mut self, steps: &mut Vec<Step>, v: usize, bits: u32) {
        if self.num_max[v] <= 1u128 << (bits - 1) {
            return;
        }
        let shape = self.nums[v].dims.dims.clone();
        let out = self.bounded_from(&shape, Bound::Const(1u64 << bits), -(1i64 << (bits - 1)));
        steps.push(Step::Narrow {
            out,
            src: Src::Num(v),
        });
        self.num_max[v] = 1u128 << (bits - 1);
    }

    /// Narrow the committed operands of a relation until `bound(max a, max b)` is below [`EXACT`].
    fn fit_operands(
        &mut self,
        steps: &mut Vec<Step>,
        a: Src,
        b: Src,
        bound: impl Fn(u128, u128) -> u128,
    ) {
        for bits in (2..=31u32).rev() {
            if bound(self.maxabs(a), self.maxabs(b)) < EXACT {
                return;
            }
            for s in [a, b] {
                if let Src::Num(n) = s {
                    if self.num_max[n] > 1u128 << (bits - 1) {
                        self.narrow(steps, n, bits);
                    }
                }
            }
        }
    }

    fn src(&self, v: ValueId, node_out: &[usize]) -> Src {
        let (v, ni, nc) = (v as usize, self.model.inputs.len(), self.model.consts.len());
        if v < ni {
            Src::Input(v)
        } else if v < ni + nc {
            Src::Weight(v - ni)
        } else {
            Src::Num(node_out[v - ni - nc])
        }
    }

    fn maxabs(&self, s: Src) -> u128 {
        match s {
            Src::Weight(c) => self.maxabs[c],
            Src::Num(n) => self.num_max[n],
            Src::Input(_) => 1 << 31,
        }
    }
}

fn unsupported(node: &str, op: &str, why: impl std::fmt::Display) -> ZkError {
    ZkError::Unsupported(format!("node {node:?} ({op}): {why}"))
}

/// Taps of a pooling window as (output, source) pairs per tap; outputs whose tap is padding repeat
/// their window's first real tap; windows without a real tap are left out (their value is 0).
fn pool_taps(xs: &[usize], w: &Window, out: &[usize]) -> Vec<Vec<(u32, u32)>> {
    let (c_all, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out[2], out[3]);
    let (kh, kw) = (w.kernel[0] as usize, w.kernel[1] as usize);
    let mut taps = vec![Vec::new(); kh * kw];
    for c in 0..c_all {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((c * oh + oy) * ow + ox) as u32;
                let mut real: Vec<Option<u32>> = Vec::with_capacity(kh * kw);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * w.stride[0] as usize + ky * w.dilation[0] as usize) as i64
                            - w.pads[0] as i64;
                        let ix = (ox * w.stride[1] as usize + kx * w.dilation[1] as usize) as i64
                            - w.pads[1] as i64;
                        real.push(
                            (iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < wd)
                                .then(|| ((c * h + iy as usize) * wd + ix as usize) as u32),
                        );
                    }
                }
                if let Some(first) = real.iter().flatten().next().copied() {
                    for (t, r) in real.iter().enumerate() {
                        taps[t].push((o, r.unwrap_or(first)));
                    }
                }
            }
        }
    }
    taps
}

/// Count of real taps per output of a pooling window.
fn pool_counts(xs: &[usize], w: &Window, out: &[usize]) -> Vec<u64> {
    let (c_all, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out[2], out[3]);
    let count = |o: usize, n: usize, ax: usize| -> u64 {
        (0..w.kernel[ax] as usize)
            .filter(|&t| {
                let i = (o * w.stride[ax] as usize + t * w.dilation[ax] as usize) as i64
                    - w.pads[ax] as i64;
                i >= 0 && (i as usize) < n
            })
            .count() as u64
    };
    let mut out_v = Vec::with_capacity(c_all * oh * ow);
    for _ in 0..c_all {
        for oy in 0..oh {
            for ox in 0..ow {
                out_v.push(count(oy, h, 0) * count(ox, wd, 1));
            }
        }
    }
    out_v
}

/// Row-major wiring of shape-only ops: for each output element the source element.
fn shape_map(op: &Op, s0: &[usize], out: &[usize]) -> Option<Vec<(u32, u32)>> {
    use verity_engine::exec::{broadcast_strides, for_each_index, strides};
    let n: usize = out.iter().product();
    let mut m = Vec::with_capacity(n);
    match op {
        Op::Reshape | Op::Rescale => {
            for i in 0..n {
                m.push((i as u32, i as u32));
            }
        }
        Op::Transpose { perm } => {
            let st = strides(s0);
            let ps: Vec<usize> = perm.iter().map(|&p| st[p as usize]).collect();
            for_each_index(out, &[ps], |flat, o| m.push((flat as u32, o[0] as u32)));
        }
        Op::Slice {
            axis, start, step, ..
        } => {
            let ax = *axis as usize;
            let mut st = strides(s0);
            let base = *start as usize * st[ax];
            st[ax] *= *step as usize;
            for_each_index(out, &[st], |flat, o| {
                m.push((flat as u32, (base + o[0]) as u32))
            });
        }
        Op::Broadcast => {
            let st = broadcast_strides(out, s0);
            for_each_index(out, &[st], |flat, o| m.push((flat as u32, o[0] as u32)));
        }
        _ => return None,
    }
    Some(m)
}

/// The circuit of a validated model (no commitment: cheap, what a verifier derives from the model), with
/// the limb width that gives the smaller trace table (the wider one on a tie).
pub fn circuit(model: &Model, model_id: Hash) -> Result<Circuit, ZkError> {
    let mut best: Option<Circuit> = None;
    for limb in LIMB_CHOICES {
        let c = build(model, model_id, limb)?;
        if best.as_ref().is_none_or(|b| c.t_bits < b.t_bits) {
            best = Some(c);
        }
    }
    best.ok_or_else(|| ZkError::Unsupported("no limb width".into()))
}

fn build(model: &Model, model_id: Hash, limb: u32) -> Result<Circuit, ZkError> {
    let maxabs = model
        .consts
        .iter()
        .map(|c| {
            c.data
                .iter()
                .map(|v| v.unsigned_abs() as u128)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut b = Builder {
        model,
        nums: Vec::new(),
        limb_bits: Vec::new(),
        maxabs,
        limb,
        num_max: Vec::new(),
    };
    let mut nodes = Vec::with_capacity(model.nodes.len());
    let mut node_out: Vec<usize> = Vec::with_capacity(model.nodes.len());
    for node in &model.nodes {
        let (steps, out) = node_steps(&mut b, node, &node_out)?;
        node_out.push(out);
        nodes.push(steps);
    }
    let outputs = model
        .outputs
        .iter()
        .map(|o| match b.src(o.value, &node_out) {
            Src::Weight(_) => Err(ZkError::Unsupported(format!(
                "output {:?} is a constant",
                o.name
            ))),
            s => Ok(s),
        })
        .collect::<Result<Vec<_>, _>>()?;

    // trace layout: limb slots by size (largest first) then the multiplicities, each aligned
    let mut order: Vec<(usize, usize, Option<usize>, usize)> = b
        .limb_bits
        .iter()
        .map(|&(num, bits, len)| (bits, 0, num, len))
        .collect();
    order.push((limb as usize, 0, None, 1 << limb));
    for (i, o) in order.iter_mut().enumerate() {
        o.1 = i;
    }
    order.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut slots = vec![
        Slot {
            offset: 0,
            bits: 0,
            num: None,
            len: 0,
        };
        order.len()
    ];
    let mut at = 0usize;
    for &(bits, i, num, len) in &order {
        slots[i] = Slot {
            offset: at,
            bits,
            num,
            len,
        };
        at += 1 << bits;
    }
    let t_bits = crate::mle::vars(at);
    let mult = order.len() - 1; // created last

    // W layout
    let mut worder: Vec<(usize, usize)> = model
        .consts
        .iter()
        .enumerate()
        .map(|(i, c)| (Dims::new(&us(&c.shape)).nvars(), i))
        .collect();
    worder.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut weights: Vec<(Dims, usize)> = model
        .consts
        .iter()
        .map(|c| (Dims::new(&us(&c.shape)), 0))
        .collect();
    let mut wat = 0usize;
    for &(bits, i) in &worder {
        weights[i].1 = wat;
        wat += 1 << bits;
    }
    let w_bits = crate::mle::vars(wat.max(1));
    Ok(Circuit {
        model_id,
        inputs: model
            .inputs
            .iter()
            .map(|i| Dims::new(&us(&i.shape)))
            .collect(),
        nodes,
        node_out,
        nums: b.nums,
        slots,
        mult,
        limb_bits: limb,
        t_bits,
        t_len: at,
        weights,
        w_bits,
        w_len: wat.max(1),
        outputs,
    })
}

/// The constants table `W` of a circuit.
pub fn w_table(model: &Model, c: &Circuit) -> Vec<F> {
    let mut wtab = vec![F::default(); c.w_len];
    for (k, (d, off)) in model.consts.iter().zip(&c.weights) {
        for (p, &v) in d.positions().into_iter().zip(k.data.iter()) {
            wtab[off + p] = from_i64(v as i64);
        }
    }
    wtab
}

/// Build the circuit of a validated model and commit its constants (once per model).
pub fn keygen(model: &Model, model_id: Hash) -> Result<ProvingKey, ZkError> {
    let circuit = circuit(model, model_id)?;
    let w = pcs::commit(w_table(model, &circuit), circuit.w_bits);
    Ok(ProvingKey {
        circuit,
        model: model.clone(),
        w,
    })
}

impl ProvingKey {
    /// The verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            model_id: self.circuit.model_id,
            w_root: self.w.root,
        }
    }
}

fn check_exact(node: &str, op: &str, bound: u128) -> Result<(), ZkError> {
    if bound >= EXACT {
        return Err(unsupported(
            node,
            op,
            format!(
                "its intermediate values can reach 2^{:.1}, beyond the 2^62 the field keeps exact",
                (bound as f64).log2()
            ),
        ));
    }
    Ok(())
}

/// The bias of a contraction of `k` products (operands `srcs[0..2]`, optional bias `srcs[2]`, all with
/// scales in `ins`) accumulated at scale `acc`, and its shift; the operands narrowed if needed so that
/// `k·max|a|·max|b| + max|bias|·2^shift` stays exact.
fn contraction(
    b: &mut Builder,
    steps: &mut Vec<Step>,
    (name, opn): (&str, &str),
    srcs: &[Src],
    ins: &[(Vec<usize>, i32)],
    acc: i32,
    k: u128,
) -> Result<Option<(Src, u32)>, ZkError> {
    let bias = match srcs.get(2) {
        Some(&s) => {
            let sh = acc - ins[2].1;
            if !(0..=30).contains(&sh) {
                return Err(unsupported(name, opn, "the bias scale is out of range"));
            }
            Some((s, sh as u32))
        }
        None => None,
    };
    let bb = bias.map_or(0, |(s, sh)| b.maxabs(s) << sh);
    b.fit_operands(steps, srcs[0], srcs[1], |x, y| k * x * y + bb);
    check_exact(name, opn, k * b.maxabs(srcs[0]) * b.maxabs(srcs[1]) + bb)?;
    Ok(bias)
}

fn post_resc(
    b: &mut Builder,
    name: &str,
    op: &str,
    shape: &[usize],
    k: i32,
) -> Result<Post, ZkError> {
    if !(-30..=30).contains(&k) {
        return Err(unsupported(
            name,
            op,
            format!("a rescale by 2^{k} is out of range"),
        ));
    }
    let rem = (k > 0).then(|| b.bounded(shape, Bound::Const(1u64 << k)));
    Ok(Post::Resc { k, rem })
}

fn node_steps(
    b: &mut Builder,
    node: &verity_engine::ir::Node,
    node_out: &[usize],
) -> Result<(Vec<Step>, usize), ZkError> {
    let m = b.model;
    let name = node.name.as_str();
    let opn = node.op.name();
    let out_shape = us(&node.shape);
    let so = node.scale as i32;
    let info = |v: ValueId| {
        let i = m.value(v).expect("validated model");
        (us(i.shape), i.scale as i32)
    };
    let ins: Vec<(Vec<usize>, i32)> = node.inputs.iter().map(|&v| info(v)).collect();
    let srcs: Vec<Src> = node.inputs.iter().map(|&v| b.src(v, node_out)).collect();
    let (s0, sc0) = (ins[0].0.clone(), ins[0].1);
    let mut steps = Vec::new();
    let mut out_override: Option<usize> = None;
    match &node.op {
        Op::EinSum { a, b: lb, out } => {
            let acc = sc0 + ins[1].1;
            for labels in [a, lb] {
                for (i, l) in labels.iter().enumerate() {
                    if labels[..i].contains(l) {
                        return Err(unsupported(name, opn, "a label repeats within one operand"));
                    }
                }
            }
            let size = |l: u8| -> Option<usize> {
                [(a, &ins[0].0), (lb, &ins[1].0), (out, &out_shape)]
                    .iter()
                    .find_map(|(ls, sh)| ls.iter().position(|&x| x == l).map(|p| sh[p]))
            };
            for (ls, sh) in [(a, &ins[0].0), (lb, &ins[1].0), (out, &out_shape)] {
                for (l, d) in ls.iter().zip(sh.iter()) {
                    if size(*l) != Some(*d) {
                        return Err(unsupported(
                            name,
                            opn,
                            "an axis broadcasts inside the summation",
                        ));
                    }
                }
            }
            for (l, &d) in out.iter().zip(&out_shape) {
                if !a.contains(l) && !lb.contains(l) && d != 1 {
                    return Err(unsupported(
                        name,
                        opn,
                        "an output label is in neither operand",
                    ));
                }
            }
            let k_sum: u128 = a
                .iter()
                .chain(lb.iter())
                .filter(|l| !out.contains(l))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|&l| size(l).unwrap_or(1) as u128)
                .product();
            let bias = contraction(b, &mut steps, (name, opn), &srcs, &ins, acc, k_sum)?;
            let y = b.int(&out_shape);
            let post = post_resc(b, name, opn, &out_shape, acc - so)?;
            steps.push(Step::Lin {
                out: y,
                lin: Lin::EinSum {
                    a: srcs[0],
                    b: srcs[1],
                    bias,
                    la: a.clone(),
                    lb: lb.clone(),
                    lo: out.clone(),
                },
                post,
            });
        }
        Op::Conv2d { window, groups } => {
            let acc = sc0 + ins[1].1;
            let w = &ins[1].0;
            let k = (w[1] * w[2] * w[3]) as u128;
            let bias = contraction(b, &mut steps, (name, opn), &srcs, &ins, acc, k)?;
            let y = b.int(&out_shape);
            let post = post_resc(b, name, opn, &out_shape, acc - so)?;
            steps.push(Step::Lin {
                out: y,
                lin: Lin::Conv {
                    x: srcs[0],
                    w: srcs[1],
                    bias,
                    window: *window,
                    groups: *groups as usize,
                },
                post,
            });
        }
        Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min => {
            let (sa, sb) = (sc0, ins[1].1);
            let s = sa.max(sb);
            let (la, lb) = ((s - sa) as u32, (s - sb) as u32);
            // a product does not align its operands' scales; the others shift one of them
            if !matches!(node.op, Op::Mul) && (la > 30 || lb > 30) {
                return Err(unsupported(name, opn, "operand scales are too far apart"));
            }
            if matches!(node.op, Op::Mul) {
                b.fit_operands(&mut steps, srcs[0], srcs[1], |x, y| x * y);
            }
            let (ma, mb) = (b.maxabs(srcs[0]), b.maxabs(srcs[1]));
            match &node.op {
                Op::Mul => {
                    check_exact(name, opn, ma * mb)?;
                    let y = b.int(&out_shape);
                    let post = post_resc(b, name, opn, &out_shape, sa + sb - so)?;
                    steps.push(Step::Lin {
                        out: y,
                        lin: Lin::Mul {
                            a: srcs[0],
                            b: srcs[1],
                        },
                        post,
                    });
                }
                Op::Add | Op::Sub => {
                    check_exact(name, opn, (ma << la) + (mb << lb))?;
                    let y = b.int(&out_shape);
                    let post = post_resc(b, name, opn, &out_shape, s - so)?;
                    steps.push(Step::Lin {
                        out: y,
                        lin: Lin::AddSub {
                            a: srcs[0],
                            b: srcs[1],
                            la,
                            lb,
                            sub: matches!(node.op, Op::Sub),
                        },
                        post,
                    });
                }
                _ => {
                    if la > 0 || lb > 0 || s != so {
                        return Err(unsupported(
                            name,
                            opn,
                            "a maximum or minimum across scales is not provable yet",
                        ));
                    }
                    let y = b.int(&out_shape);
                    let diffs = vec![b.num(&out_shape, 32, 0), b.num(&out_shape, 32, 0)];
                    steps.push(Step::Extreme {
                        out: y,
                        cands: vec![Cand::View(srcs[0], 0), Cand::View(srcs[1], 0)],
                        min: matches!(node.op, Op::Min),
                        diffs,
                    });
                }
            }
        }
        Op::Clamp { lo, hi } => {
            let k = sc0 - so;
            if k < 0 {
                return Err(unsupported(
                    name,
                    opn,
                    "a clamp that scales up is not provable yet",
                ));
            }
            let mut cur = srcs[0];
            if k > 0 {
                let y = b.int(&out_shape);
                let post = post_resc(b, name, opn, &out_shape, k)?;
                steps.push(Step::Lin {
                    out: y,
                    lin: Lin::Copy(cur),
                    post,
                });
                cur = Src::Num(y);
            }
            for (bound, min, active) in [(*hi, true, *hi < i32::MAX), (*lo, false, *lo > i32::MIN)]
            {
                if active {
                    let y = b.int(&out_shape);
                    let diffs = vec![b.num(&out_shape, 32, 0), b.num(&out_shape, 32, 0)];
                    steps.push(Step::Extreme {
                        out: y,
                        cands: vec![Cand::View(cur, 0), Cand::Const(bound as i64)],
                        min,
                        diffs,
                    });
                    cur = Src::Num(y);
                }
            }
            if steps.is_empty() {
                let y = b.int(&out_shape);
                steps.push(Step::Lin {
                    out: y,
                    lin: Lin::Copy(cur),
                    post: Post::Resc { k: 0, rem: None },
                });
            }
        }
        Op::MaxPool2d { window } => {
            let k = sc0 - so;
            let taps = pool_taps(&s0, window, &out_shape);
            let y = b.int(&out_shape);
            let diffs = (0..taps.len()).map(|_| b.num(&out_shape, 32, 0)).collect();
            steps.push(Step::Extreme {
                out: y,
                cands: taps.into_iter().map(|t| Cand::Tap(srcs[0], t)).collect(),
                min: false,
                diffs,
            });
            if k != 0 {
                let z = b.int(&out_shape);
                let post = post_resc(b, name, opn, &out_shape, k)?;
                steps.push(Step::Lin {
                    out: z,
                    lin: Lin::Copy(Src::Num(y)),
                    post,
                });
            }
        }
        Op::AvgPool2d {
            window,
            count_include_pad,
        } => {
            // the sum of real taps is divided with num = sum·2^e, e = so − sc0 (or den·2^−e)
            let e = so - sc0;
            let area = (window.kernel[0] * window.kernel[1]) as u64;
            let counts = if *count_include_pad {
                vec![area; out_shape.iter().product()]
            } else {
                pool_counts(&s0, window, &out_shape)
            };
            let (ep, dsh) = if e >= 0 {
                (e as u32, 0u32)
            } else {
                (0, (-e) as u32)
            };
            if ep > 30 || dsh > 30 {
                return Err(unsupported(name, opn, "the rescale is out of range"));
            }
            let den: Vec<u64> = counts.iter().map(|&c| c.max(1) << dsh).collect();
            check_exact(
                name,
                opn,
                ((area as u128 * b.maxabs(srcs[0])) << (ep + 1)) + ((area as u128) << (dsh + 1)),
            )?;
            // the other side: 2·den·y + rem with y an i32
            check_exact(name, opn, (area as u128) << (dsh + 34))?;
            let map = real_taps(&s0, window, &out_shape);
            let y = b.int(&out_shape);
            let den_b = Bound::Table(den.iter().map(|d| 2 * d).collect());
            let rem = b.bounded(&out_shape, den_b);
            steps.push(Step::Lin {
                out: y,
                lin: Lin::Wire {
                    parts: vec![srcs[0]],
                    map: vec![map],
                },
                post: Post::Div {
                    e: ep,
                    den: Bound::Table(den),
                    rem,
                },
            });
        }
        Op::Reduce {
            kind: kind @ (ReduceKind::Max | ReduceKind::Min),
            axes,
        } => {
            // an extreme over the reduced positions (one tap each), then the rescale
            let axes: Vec<usize> = axes.iter().map(|&a| a as usize).collect();
            let count: usize = axes.iter().map(|&a| s0[a]).product();
            if count > 64 {
                return Err(unsupported(
                    name,
                    opn,
                    "a max/min reduction over more than 64 elements is not provable yet",
                ));
            }
            let mut taps = vec![Vec::new(); count];
            let ost = verity_engine::exec::strides(&out_shape);
            let rshape: Vec<usize> = axes.iter().map(|&a| s0[a]).collect();
            let rst = verity_engine::exec::strides(&rshape);
            let to_out: Vec<usize> = (0..s0.len())
                .map(|i| if axes.contains(&i) { 0 } else { ost[i] })
                .collect();
            let to_tap: Vec<usize> = (0..s0.len())
                .map(|i| axes.iter().position(|&a| a == i).map_or(0, |p| rst[p]))
                .collect();
            verity_engine::exec::for_each_index(&s0, &[to_out, to_tap], |flat, o| {
                taps[o[1]].push((o[0] as u32, flat as u32));
            });
            let m = b.int(&out_shape);
            let diffs = (0..count).map(|_| b.num(&out_shape, 32, 0)).collect();
            steps.push(Step::Extreme {
                out: m,
                cands: taps.into_iter().map(|t| Cand::Tap(srcs[0], t)).collect(),
                min: matches!(kind, ReduceKind::Min),
                diffs,
            });
            if sc0 != so {
                let z = b.int(&out_shape);
                let post = post_resc(b, name, opn, &out_shape, sc0 - so)?;
                steps.push(Step::Lin {
                    out: z,
                    lin: Lin::Copy(Src::Num(m)),
                    post,
                });
            }
        }
        Op::Reduce { kind, axes } => {
            let axes: Vec<usize> = axes.iter().map(|&a| a as usize).collect();
            let count: u128 = axes.iter().map(|&a| s0[a] as u128).product();
            let y = b.int(&out_shape);
            let lin = Lin::Reduce { x: srcs[0], axes };
            let post = match kind {
                ReduceKind::Sum => {
                    check_exact(name, opn, count * b.maxabs(srcs[0]))?;
                    post_resc(b, name, opn, &out_shape, sc0 - so)?
                }
                ReduceKind::Mean => {
                    let e = so - sc0;
                    let (ep, dsh) = if e >= 0 {
                        (e as u32, 0u32)
                    } else {
                        (0, (-e) as u32)
                    };
                    if ep > 30 || dsh > 30 {
                        return Err(unsupported(name, opn, "the rescale is out of range"));
                    }
                    check_exact(name, opn, (count * b.maxabs(srcs[0])) << (ep + 1))?;
                    check_exact(name, opn, count << (dsh + 34))?;
                    let den = (count.max(1) as u64) << dsh;
                    let rem = b.bounded(&out_shape, Bound::Const(2 * den));
                    Post::Div {
                        e: ep,
                        den: Bound::Const(den),
                        rem,
                    }
                }
                _ => {
                    return Err(unsupported(
                        name,
                        opn,
                        "a max/min reduction is not provable yet",
                    ))
                }
            };
            steps.push(Step::Lin { out: y, lin, post });
        }
        Op::Reshape | Op::Rescale | Op::Transpose { .. } | Op::Slice { .. } | Op::Broadcast => {
            let map = shape_map(&node.op, &s0, &out_shape).unwrap_or_default();
            let y = b.int(&out_shape);
            let post = post_resc(b, name, opn, &out_shape, sc0 - so)?;
            if sc0 - so < 0 {
                check_exact(name, opn, b.maxabs(srcs[0]) << (so - sc0))?;
            }
            steps.push(Step::Lin {
                out: y,
                lin: Lin::Wire {
                    parts: vec![srcs[0]],
                    map: vec![map],
                },
                post,
            });
        }
        Op::Concat { axis } => {
            if ins.iter().any(|(_, s)| *s != so) {
                return Err(unsupported(
                    name,
                    opn,
                    "concatenating different scales is not provable yet",
                ));
            }
            let ax = *axis as usize;
            let outer: usize = out_shape[..ax].iter().product();
            let inner: usize = out_shape[ax + 1..].iter().product();
            let mut maps = vec![Vec::new(); ins.len()];
            let mut flat = 0u32;
            for o in 0..outer {
                for (p, (shape, _)) in ins.iter().enumerate() {
                    let len = shape[ax] * inner;
                    for i in 0..len {
                        maps[p].push((flat, (o * len + i) as u32));
                        flat += 1;
                    }
                }
            }
            let y = b.int(&out_shape);
            steps.push(Step::Lin {
                out: y,
                lin: Lin::Wire {
                    parts: srcs.clone(),
                    map: maps,
                },
                post: Post::Resc { k: 0, rem: None },
            });
        }
        Op::Gather { axis } => {
            if matches!(srcs[1], Src::Num(_)) {
                return Err(unsupported(name, opn, "indices computed inside the model are not provable yet (they must be a model input or a constant)"));
            }
            let y = b.int(&out_shape);
            let post = post_resc(b, name, opn, &out_shape, sc0 - so)?;
            if sc0 - so < 0 {
                check_exact(name, opn, b.maxabs(srcs[0]) << (so - sc0))?;
            }
            steps.push(Step::Lin {
                out: y,
                lin: Lin::Gather {
                    data: srcs[0],
                    indices: srcs[1],
                    axis: *axis as usize,
                },
                post,
            });
        }
        Op::LeakyRelu {
            alpha_q,
            alpha_scale,
        } => {
            let kp = sc0 - so;
            let kn = sc0 + *alpha_scale as i32 - so;
            for k in [kp, kn] {
                if !(-30..=30).contains(&k) {
                    return Err(unsupported(
                        name,
                        opn,
                        format!("a rescale by 2^{k} is out of range"),
                    ));
                }
            }
            let mx = b.maxabs(srcs[0]);
            check_exact(
                name,
                opn,
                (mx * alpha_q.unsigned_abs() as u128) << kn.min(0).unsigned_abs(),
            )?;
            check_exact(name, opn, mx << kp.min(0).unsigned_abs())?;
            let sh = out_shape.clone();
            let y = b.int(&sh);
            let sign = b.bounded(&sh, Bound::Const(2));
            let bx = b.int(&sh);
            let a = b.num(&sh, 32, 0);
            let p = b.int(&sh);
            let rem_p = (kp > 0).then(|| b.bounded(&sh, Bound::Const(1u64 << kp)));
            let n = b.int(&sh);
            let rem_n = (kn > 0).then(|| b.bounded(&sh, Bound::Const(1u64 << kn)));
            steps.push(Step::LeakyRelu {
                x: srcs[0],
                y,
                b: sign,
                bx,
                a,
                p,
                kp,
                rem_p,
                n,
                kn,
                rem_n,
                alpha: *alpha_q as i64,
            });
        }
        Op::Sqrt => {
            let e = 2 * so - sc0;
            if !(-30..=27).contains(&e) {
                return Err(unsupported(
                    name,
                    opn,
                    format!("a Sqrt with exponent {e} is not provable yet"),
                ));
            }
            let sh = out_shape.clone();
            // the operand is non-negative (a negative one has no canonical result)
            let nonneg = b.bounded_from(&sh, Bound::Const(1u64 << 31), 0);
            steps.push(Step::Narrow {
                out: nonneg,
                src: srcs[0],
            });
            let (n, shift) = if e < 0 {
                let t = b.int(&sh);
                let post = post_resc(b, name, opn, &sh, -e)?;
                steps.push(Step::Lin {
                    out: t,
                    lin: Lin::Copy(srcs[0]),
                    post,
                });
                (Src::Num(t), 0u32)
            } else {
                (srcs[0], e as u32)
            };
            let y = b.bounded(&sh, Bound::Const(1u64 << 30));
            let z = b.bounded(&sh, Bound::Const(2));
            let d1 = b.bounded(&sh, Bound::Const(1u64 << 60));
            let d2 = b.bounded(&sh, Bound::Const(1u64 << 60));
            let out = y.num;
            steps.push(Step::Sqrt {
                n,
                shift,
                y,
                z,
                d1,
                d2,
            });
            out_override = Some(out);
        }
        Op::Recip => {
            let e = so + sc0;
            let (ne, sd) = if e >= 0 {
                (e as u32, 0u32)
            } else {
                (0, (-e) as u32)
            };
            if ne > 58 || sd > 28 {
                return Err(unsupported(
                    name,
                    opn,
                    format!("a Recip with exponent {e} is not provable yet"),
                ));
            }
            // |y|·p < 2^rbits bounds D·|y| < 2^(sd + rbits + 1); every relation stays below 2^62
            let rbits = (ne + 1).max(32);
            check_exact(
                name,
                opn,
                (1u128 << (sd + rbits + 2)) + (1u128 << (ne + 1)) + (1u128 << (33 + sd)),
            )?;
            let sh = out_shape.clone();
            let y = b.int(&sh);
            let sign = b.bounded(&sh, Bound::Const(2));
            let bv = b.int(&sh);
            let av = b.num(&sh, 32, 0);
            let idx = b.num(&sh, 8, 0);
            let p = b.num(&sh, 32, 0);
            let dlo = b.num(&sh, 32, 0);
            let dhi = b.num(&sh, 32, 0);
            let ya = b.num(&sh, 32, 0);
            let by = b.num(&sh, 32, 0);
            let r = b.num(&sh, rbits, 0);
            let rem = b.num(&sh, 33 + sd, 0);
            let comp = b.num(&sh, 33 + sd, 0);
            steps.push(Step::Recip {
                v: srcs[0],
                y,
                ne,
                s: sd,
                b: sign,
                bv,
                av,
                idx,
                p,
                dlo,
                dhi,
                ya,
                by,
                r,
                rbits,
                rem,
                comp,
            });
            let mult = b.mult_slot(31);
            steps.push(Step::Table {
                idx,
                lo: 0,
                out: p,
                table: TableRef::Public((0..31).map(|i| 1i64 << i).collect()),
                mult,
            });
            out_override = Some(y);
        }
        Op::Rsqrt => {
            let e = 2 * so + sc0;
            if !(31..=54).contains(&e) {
                return Err(unsupported(
                    name,
                    opn,
                    format!("an Rsqrt with exponent {e} (outside 31..=54) is not provable yet"),
                ));
            }
            let e = e as u32;
            let ybits = e.div_ceil(2) + 2;
            let sh = out_shape.clone();
            let y = b.num(&sh, 32, 0);
            let idx = b.num(&sh, 8, 0);
            let p = b.num(&sh, 32, 0);
            let q = b.num(&sh, 16, 0);
            let dlo = b.num(&sh, 32, 0);
            let dhi = b.num(&sh, 32, 0);
            let r = b.num(&sh, 32, 0);
            let d1 = b.bounded(&sh, Bound::Const(1u64 << (e + 1)));
            let d2 = b.bounded(&sh, Bound::Const(1u64 << (e + 1)));
            steps.push(Step::Rsqrt {
                v: srcs[0],
                y,
                e,
                ybits,
                idx,
                p,
                q,
                dlo,
                dhi,
                r,
                d1,
                d2,
            });
            for (out, f) in [(p, 1u32), (q, 2)] {
                let mult = b.mult_slot(31);
                steps.push(Step::Table {
                    idx,
                    lo: 0,
                    out,
                    table: TableRef::Public((0..31).map(|i| 1i64 << (i / f)).collect()),
                    mult,
                });
            }
            // y·q < 2^ybits with q ≥ 1
            b.num_max[y] = 1u128 << ybits;
            out_override = Some(y);
        }
        Op::Lookup { shift, lo } => {
            let (table, len, _) = table_of(b, name, opn, srcs[1])?;
            let mut cur = srcs[0];
            if *shift != 0 {
                let t = b.int(&out_shape);
                let post = post_resc(b, name, opn, &out_shape, *shift)?;
                steps.push(Step::Lin {
                    out: t,
                    lin: Lin::Copy(cur),
                    post,
                });
                cur = Src::Num(t);
            }
            let idx = clamp_steps(
                b,
                &mut steps,
                &out_shape,
                cur,
                *lo as i64,
                *lo as i64 + len as i64 - 1,
            );
            let e = b.int(&out_shape);
            let mult = b.mult_slot(len);
            steps.push(Step::Table {
                idx,
                lo: *lo as i64,
                out: e,
                table: TableRef::Const(table),
                mult,
            });
        }
        Op::Softmax { axis, shift, lo } => {
            let (table, len, maxt) = table_of(b, name, opn, srcs[1])?;
            if m.consts[table].data.iter().any(|&v| v < 0) {
                return Err(unsupported(
                    name,
                    opn,
                    "a softmax table with negative entries",
                ));
            }
            let ax = *axis as usize;
            let n = s0[ax];
            let mut red = s0.clone();
            red[ax] = 1;
            let inner: usize = s0[ax + 1..].iter().product();
            let outer: usize = s0[..ax].iter().product();
            // 1. the maximum along the axis
            let taps: Vec<Vec<(u32, u32)>> = (0..n)
                .map(|j| {
                    let mut t = Vec::with_capacity(outer * inner);
                    for o in 0..outer {
                        for i in 0..inner {
                            t.push(((o * inner + i) as u32, ((o * n + j) * inner + i) as u32));
                        }
                    }
                    t
                })
                .collect();
            let mx = b.int(&red);
            let diffs = (0..n).map(|_| b.num(&red, 32, 0)).collect();
            steps.push(Step::Extreme {
                out: mx,
                cands: taps.into_iter().map(|t| Cand::Tap(srcs[0], t)).collect(),
                min: false,
                diffs,
            });
            // 2. x − max, shifted like a lookup index
            let t = b.int(&s0);
            let post = post_resc(b, name, opn, &s0, *shift)?;
            steps.push(Step::Lin {
                out: t,
                lin: Lin::AddSub {
                    a: srcs[0],
                    b: Src::Num(mx),
                    la: 0,
                    lb: 0,
                    sub: true,
                },
                post,
            });
            // 3. the table entry
            let idx = clamp_steps(
                b,
                &mut steps,
                &s0,
                Src::Num(t),
                *lo as i64,
                *lo as i64 + len as i64 - 1,
            );
            let e = b.int(&s0);
            let mult = b.mult_slot(len);
            steps.push(Step::Table {
                idx,
                lo: *lo as i64,
                out: e,
                table: TableRef::Const(table),
                mult,
            });
            // 4. the sum along the axis
            // the sum of n table entries (non-negative) can exceed i32: give it the bits it needs
            let smax = n as u128 * maxt;
            check_exact(name, opn, smax)?;
            let sum = b.num(&red, (128 - smax.leading_zeros()).max(1), 0);
            steps.push(Step::Lin {
                out: sum,
                lin: Lin::Reduce {
                    x: Src::Num(e),
                    axes: vec![ax],
                },
                post: Post::Resc { k: 0, rem: None },
            });
            // 5. e·2^so / sum, rounded; the output is at most 2^so (+1 by rounding)
            if !(0..=28).contains(&so) {
                return Err(unsupported(name, opn, "the output scale is out of range"));
            }
            check_exact(name, opn, (maxt << (so + 1)) + smax)?;
            check_exact(name, opn, (smax << (so + 3)) + 2 * smax)?;
            let out = b.bounded(&s0, Bound::Const(1u64 << (so + 2)));
            let rbits = 128 - (2 * smax).leading_zeros();
            let rem = b.num(&s0, rbits, 0);
            let comp = b.num(&s0, rbits, 0);
            steps.push(Step::DivBy {
                out,
                num: e,
                shift: so as u32,
                den: sum,
                rem,
                comp,
            });
        }
        other => {
            return Err(unsupported(
                name,
                other.name(),
                "this op is not provable yet",
            ))
        }
    }
    let out = out_override.or(steps.last().map(Step::out)).unwrap_or(0);
    Ok((steps, out))
}

/// A lookup table operand: a constant with one non-trivial axis. Returns (constant, length, max |entry|).
fn table_of(b: &Builder, name: &str, op: &str, s: Src) -> Result<(usize, usize, u128), ZkError> {
    let Src::Weight(c) = s else {
        return Err(unsupported(name, op, "the table is not a constant"));
    };
    let k = &b.model.consts[c];
    let len = k.data.len();
    if len == 0 || k.shape.iter().rev().skip(1).any(|&d| d != 1) {
        return Err(unsupported(name, op, "the table is not one-dimensional"));
    }
    Ok((c, len, b.maxabs[c]))
}

/// Steps clamping `cur` into `[lo, hi]` (both bounds active); returns the clamped tensor.
fn clamp_steps(
    b: &mut Builder,
    steps: &mut Vec<Step>,
    shape: &[usize],
    cur: Src,
    lo: i64,
    hi: i64,
) -> usize {
    let mut cur = cur;
    let mut last = 0;
    for (bound, min) in [(lo, false), (hi, true)] {
        let y = b.int(shape);
        let diffs = vec![b.num(shape, 32, 0), b.num(shape, 32, 0)];
        steps.push(Step::Extreme {
            out: y,
            cands: vec![Cand::View(cur, 0), Cand::Const(bound)],
            min,
            diffs,
        });
        cur = Src::Num(y);
        last = y;
    }
    last
}

/// (output, source) pairs of every real tap of a pooling window.
fn real_taps(xs: &[usize], w: &Window, out: &[usize]) -> Vec<(u32, u32)> {
    let (c_all, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out[2], out[3]);
    let mut m = Vec::new();
    for c in 0..c_all {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((c * oh + oy) * ow + ox) as u32;
                for ky in 0..w.kernel[0] as usize {
                    for kx in 0..w.kernel[1] as usize {
                        let iy = (oy * w.stride[0] as usize + ky * w.dilation[0] as usize) as i64
                            - w.pads[0] as i64;
                        let ix = (ox * w.stride[1] as usize + kx * w.dilation[1] as usize) as i64
                            - w.pads[1] as i64;
                        if iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < wd {
                            m.push((o, ((c * h + iy as usize) * wd + ix as usize) as u32));
                        }
                    }
                }
            }
        }
    }
    m
}
