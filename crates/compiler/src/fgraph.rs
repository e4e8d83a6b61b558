//! The float graph: the imported model in Verity's op vocabulary with real-valued constants, before
//! quantization. Its evaluator (exact `f64` loops, transcendental functions from the pure-Rust `libm`)
//! drives calibration and is checked against tract to catch import mistakes.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;
use tract_onnx::prelude::Tensor;
use verity_engine::exec::{
    broadcast_strides, for_each_index, for_each_run, label_strides, strides, EinSpec,
};
use verity_engine::ir::{numel, InputKind, Op, ReduceKind, Window};
use verity_engine::simd::axpy_f64;

/// `√(2/π)` as the nearest `f64`.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// A scalar function implemented canonically by a lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `erf(x)`.
    Erf,
    /// `e^x`.
    Exp,
    /// The standard normal CDF `Φ(x) = (1 + erf(x / √2)) / 2` (GELU is `x · Φ(x)`).
    NormCdf,
    /// The tanh approximation of `Φ`: `(1 + tanh(√(2/π)(x + 0.044715 x³))) / 2`.
    TanhCdf,
    /// The same with `x²` in place of `x³` (tract's fast GELU variant).
    TanhCdfFast,
    /// `e^x` on `x ≤ 0` (a value minus its row's maximum); the table spans `[−24, 0]`, below which
    /// `e^x < 4·10⁻¹¹`.
    ExpShifted,
    /// The natural logarithm (its table starts at the smallest positive input the input's scale holds).
    Ln,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `sin(x)`.
    Sin,
    /// `cos(x)`.
    Cos,
    /// `⌊x⌋`.
    Floor,
    /// `⌈x⌉`.
    Ceil,
    /// `x` rounded to the nearest integer, ties to even.
    RoundEven,
    /// `x^e` for `x > 0`, the exponent's `f64` bits.
    Pow(u64),
}

impl Func {
    /// Evaluate in `f64` with `libm` (bit-identical on every platform).
    pub fn eval(self, x: f64) -> f64 {
        match self {
            Func::Sigmoid => 1.0 / (1.0 + libm::exp(-x)),
            Func::Tanh => libm::tanh(x),
            Func::Erf => libm::erf(x),
            Func::Exp => libm::exp(x),
            Func::NormCdf => 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            Func::TanhCdf => 0.5 * (1.0 + libm::tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))),
            Func::TanhCdfFast => 0.5 * (1.0 + libm::tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x))),
            Func::ExpShifted => libm::exp(x.min(0.0)),
            Func::Ln => libm::log(x),
            // ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|), which never overflows
            Func::Softplus => x.max(0.0) + libm::log1p(libm::exp(-x.abs())),
            Func::Sin => libm::sin(x),
            Func::Cos => libm::cos(x),
            Func::Floor => libm::floor(x),
            Func::Ceil => libm::ceil(x),
            Func::RoundEven => libm::rint(x),
            Func::Pow(bits) => libm::pow(x, f64::from_bits(bits)),
        }
    }

    /// Whether the function is defined only for `x > 0` (its table then starts at the input scale's
    /// smallest positive value, and smaller inputs read that entry).
    pub fn positive_domain(self) -> bool {
        matches!(self, Func::Ln | Func::Pow(_))
    }

    /// The input interval outside which the function is constant to well below any table resolution
    /// (`None` for functions that do not saturate on both sides).
    pub fn saturation(self) -> Option<(f64, f64)> {
        match self {
            Func::Sigmoid => Some((-17.0, 17.0)),
            Func::Tanh => Some((-10.0, 10.0)),
            Func::Erf => Some((-6.0, 6.0)),
            Func::NormCdf | Func::TanhCdf => Some((-9.0, 9.0)),
            Func::ExpShifted => Some((-24.0, 0.0)),
            Func::Softplus => None,
            Func::TanhCdfFast
            | Func::Exp
            | Func::Ln
            | Func::Sin
            | Func::Cos
            | Func::Floor
            | Func::Ceil
            | Func::RoundEven
            | Func::Pow(_) => None,
        }
    }
}

/// A test on a value's quantized integer `q`, exact at every scale: canonically a [`Op::Lookup`] at
/// shift 0 into a table of two or three small integers (scale 0), so comparisons, boolean masks and
/// `Sign` need no op of their own. On reals it reads `x` for `q`: `Positive` is `x > 0` up to the
/// input's resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `q > 0` → 1, else 0.
    Positive,
    /// `q ≥ 0` → 1, else 0.
    NonNegative,
    /// `q = 0` → 1, else 0.
    Zero,
    /// `q ≠ 0` → 1, else 0.
    NonZero,
    /// −1, 0 or 1.
    Sign,
}

impl Step {
    /// The value on a real input.
    pub fn eval(self, x: f64) -> f64 {
        let b = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            Step::Positive => b(x > 0.0),
            Step::NonNegative => b(x >= 0.0),
            Step::Zero => b(x == 0.0),
            Step::NonZero => b(x != 0.0),
            Step::Sign => b(x > 0.0) - b(x < 0.0),
        }
    }

    /// The canonical table: the integer of entry 0 and the entries (`table[clamp(q − lo, 0, len − 1)]`).
    pub fn table(self) -> (i32, Vec<i32>) {
        match self {
            Step::Positive => (0, vec![0, 1]),
            Step::NonNegative => (-1, vec![0, 1]),
            Step::Zero => (-1, vec![0, 1, 0]),
            Step::NonZero => (-1, vec![1, 0, 1]),
            Step::Sign => (-1, vec![-1, 0, 1]),
        }
    }
}

/// A float op.
#[derive(Clone, Debug, PartialEq)]
pub enum FOp {
    /// An exact test of the quantized input (see [`Step`]); the output is an integer.
    Step(Step),
    /// An op whose canonical form needs no parameters beyond scales: EinSum, Conv2d, binary arithmetic,
    /// Sqrt/Rsqrt/Recip, Reduce, pooling and shape ops, and `Rescale` (a cast; identity on reals).
    Canon(Op),
    /// `min(max(x, lo), hi)`.
    Clamp {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// `x >= 0 ? x : alpha x`.
    LeakyRelu {
        /// Slope.
        alpha: f64,
    },
    /// A table function.
    Func(Func),
    /// Softmax along an axis.
    Softmax {
        /// Axis.
        axis: u32,
    },
}

/// How an op's output holding integers follows from its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntRule {
    /// Always integers (tests).
    Always,
    /// Integers when every input is: shape ops, casts, and integer arithmetic on integers (boolean
    /// logic on tests: `And` is a product, `Or` a maximum).
    AllInputs,
    /// Integers when the first input is (gathered data).
    FirstInput,
    /// Reals.
    Never,
}

impl FOp {
    /// How the output's integer-ness follows from the inputs'.
    pub fn int_rule(&self) -> IntRule {
        match self {
            FOp::Step(_) => IntRule::Always,
            FOp::Canon(
                Op::Reshape
                | Op::Transpose { .. }
                | Op::Slice { .. }
                | Op::Broadcast
                | Op::Concat { .. }
                | Op::Rescale
                | Op::Add
                | Op::Sub
                | Op::Mul
                | Op::Max
                | Op::Min
                | Op::EinSum { .. }
                | Op::Reduce {
                    kind: ReduceKind::Sum | ReduceKind::Max | ReduceKind::Min,
                    ..
                },
            ) => IntRule::AllInputs,
            FOp::Canon(Op::Gather { .. }) => IntRule::FirstInput,
            _ => IntRule::Never,
        }
    }
}

/// A float node.
#[derive(Clone, Debug)]
pub struct FNode {
    /// Name.
    pub name: String,
    /// The tract op it came from (for reports and errors).
    pub origin: String,
    /// Op.
    pub op: FOp,
    /// Inputs (value ids, same numbering as the canonical model).
    pub inputs: Vec<u32>,
    /// Output shape.
    pub shape: Vec<u32>,
}

/// A float input.
#[derive(Clone, Debug)]
pub struct FInput {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u32>,
    /// Real or integer.
    pub kind: InputKind,
}

/// A float constant.
#[derive(Clone, Debug)]
pub struct FConst {
    /// Shape.
    pub shape: Vec<u32>,
    /// Values.
    pub data: FData,
    /// Holds integers that must stay exact (indices).
    pub int: bool,
}

/// The `f32` elements of a tensor shared with the ONNX front end (held once, not copied).
#[derive(Clone)]
pub struct SharedF32(Arc<Tensor>);

impl SharedF32 {
    /// `t`'s elements, if they are `f32`.
    pub fn new(t: Arc<Tensor>) -> Option<SharedF32> {
        let plain = t
            .as_plain_ram()
            .is_some_and(|v| v.as_slice::<f32>().is_ok());
        plain.then_some(SharedF32(t))
    }

    /// The elements.
    pub fn slice(&self) -> &[f32] {
        self.0
            .as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().ok())
            .unwrap_or(&[])
    }
}

/// A constant's values: computed here (`f64`), or a weight tensor as the model file gives it (`f32`
/// elements, each read exactly as the `f64` it equals, so every computation is the same as on an
/// `f64` copy: a model's weights are held once, at their size in the file).
#[derive(Clone)]
pub enum FData {
    /// Values computed by the importer (or converted from another element type).
    F64(Vec<f64>),
    /// The file's `f32` weights, shared with the front end.
    F32(SharedF32),
}

impl std::fmt::Debug for FData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FData::F64(v) => write!(f, "F64({} values)", v.len()),
            FData::F32(v) => write!(f, "F32({} values)", v.slice().len()),
        }
    }
}

impl From<Vec<f64>> for FData {
    fn from(v: Vec<f64>) -> FData {
        FData::F64(v)
    }
}

impl FData {
    /// The values as a borrowed view.
    pub fn view(&self) -> Data<'_> {
        match self {
            FData::F64(v) => Data::F64(v),
            FData::F32(v) => Data::F32(v.slice()),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> f64 {
        self.view().get(i)
    }

    /// The first value.
    pub fn first(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.get(0))
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.view().iter()
    }

    /// The values as `f64` (borrowed when they are).
    pub fn to_f64(&self) -> Cow<'_, [f64]> {
        self.view().to_f64()
    }

    /// The values as an owned `f64` vector.
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            FData::F64(v) => v,
            FData::F32(v) => v.slice().iter().map(|&x| x as f64).collect(),
        }
    }
}

/// Values borrowed from a constant (either element type) or a computed tensor.
#[derive(Clone, Copy)]
pub enum Data<'a> {
    /// `f64` values.
    F64(&'a [f64]),
    /// `f32` values (each read as the `f64` it equals).
    F32(&'a [f32]),
}

impl<'a> Data<'a> {
    /// Number of values.
    pub fn len(self) -> usize {
        match self {
            Data::F64(v) => v.len(),
            Data::F32(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Value `i`.
    pub fn get(self, i: usize) -> f64 {
        match self {
            Data::F64(v) => v[i],
            Data::F32(v) => v[i] as f64,
        }
    }

    /// The values in order.
    pub fn iter(self) -> impl Iterator<Item = f64> + 'a {
        self.range(0..self.len())
    }

    /// Values `r` in order.
    pub fn range(self, r: std::ops::Range<usize>) -> impl Iterator<Item = f64> + 'a {
        let (a, b) = match self {
            Data::F64(v) => (&v[r], &[][..]),
            Data::F32(v) => (&[][..], &v[r]),
        };
        a.iter().copied().chain(b.iter().map(|&x| x as f64))
    }

    /// The values as `f64` (borrowed when they are).
    pub fn to_f64(self) -> Cow<'a, [f64]> {
        match self {
            Data::F64(v) => Cow::Borrowed(v),
            Data::F32(v) => Cow::Owned(v.iter().map(|&x| x as f64).collect()),
        }
    }
}

/// `$body` with `$s` bound to the slice behind a [`Data`] (`&[f64]` or `&[f32]`), for code generic
/// over the element type.
macro_rules! on_slice {
    ($data:expr, |$s:ident| $body:expr) => {
        match $data {
            $crate::fgraph::Data::F64($s) => $body,
            $crate::fgraph::Data::F32($s) => $body,
        }
    };
}
pub(crate) use on_slice;

/// The values of one evaluation: inputs and node outputs owned (`None` once dropped), constants read
/// from the graph.
struct Vals<'a> {
    g: &'a FGraph,
    own: Vec<Option<Vec<f64>>>,
}

impl Vals<'_> {
    /// Value `v` (a constant's as it is held).
    fn data(&self, v: u32) -> Data<'_> {
        let (v, ni) = (v as usize, self.g.inputs.len());
        match v.checked_sub(ni).and_then(|c| self.g.consts.get(c)) {
            Some(c) => c.data.view(),
            None => Data::F64(self.own.get(v).and_then(Option::as_deref).unwrap_or(&[])),
        }
    }

    /// Value `v` as `f64` (a copy only for a constant held as `f32`).
    fn f64(&self, v: u32) -> Cow<'_, [f64]> {
        self.data(v).to_f64()
    }
}

/// The imported graph.
#[derive(Clone, Debug, Default)]
pub struct FGraph {
    /// Inputs.
    pub inputs: Vec<FInput>,
    /// Constants.
    pub consts: Vec<FConst>,
    /// Nodes, in execution order.
    pub nodes: Vec<FNode>,
    /// Outputs: name and value.
    pub outputs: Vec<(String, u32)>,
}

impl FGraph {
    /// Shape of value `v`.
    pub fn shape(&self, v: u32) -> &[u32] {
        let v = v as usize;
        let (ni, nc) = (self.inputs.len(), self.consts.len());
        if v < ni {
            &self.inputs[v].shape
        } else if v < ni + nc {
            &self.consts[v - ni].shape
        } else {
            &self.nodes[v - ni - nc].shape
        }
    }

    /// The constant behind value `v`.
    pub fn const_of(&self, v: u32) -> Option<&FConst> {
        (v as usize)
            .checked_sub(self.inputs.len())
            .and_then(|i| self.consts.get(i))
    }

    /// Whether value `v` holds integers (an `Int` input, an int constant, or computed from them by
    /// shape-only ops).
    pub fn is_int(&self, v: u32) -> bool {
        let vi = v as usize;
        let (ni, nc) = (self.inputs.len(), self.consts.len());
        if vi < ni {
            return self.inputs[vi].kind == InputKind::Int;
        }
        if vi < ni + nc {
            return self.consts[vi - ni].int;
        }
        let n = &self.nodes[vi - ni - nc];
        match n.op.int_rule() {
            IntRule::Always => true,
            IntRule::AllInputs => n.inputs.iter().all(|&i| self.is_int(i)),
            IntRule::FirstInput => self.is_int(n.inputs[0]),
            IntRule::Never => false,
        }
    }

    /// Evaluate on real inputs, calling `visit(value, data)` for every input and then every node output
    /// as it is produced (constants are not visited: they do not depend on the inputs). Each
    /// intermediate is dropped after its last reader, so memory follows the widest point of the graph,
    /// not its total. Returns the graph's outputs, in order.
    pub fn eval_visit(
        &self,
        inputs: &[Vec<f64>],
        mut visit: impl FnMut(usize, &[f64]),
    ) -> Vec<Vec<f64>> {
        let (ni, nc) = (self.inputs.len(), self.consts.len());
        let total = ni + nc + self.nodes.len();
        let mut last = vec![usize::MAX; total];
        for (k, n) in self.nodes.iter().enumerate() {
            for &i in &n.inputs {
                if let Some(l) = last.get_mut(i as usize) {
                    *l = k;
                }
            }
        }
        for (_, o) in &self.outputs {
            if let Some(l) = last.get_mut(*o as usize) {
                *l = usize::MAX;
            }
        }
        let mut vals = Vals {
            g: self,
            own: (0..total).map(|_| None).collect(),
        };
        for (i, x) in inputs.iter().enumerate().take(ni) {
            visit(i, x);
            vals.own[i] = Some(x.clone());
        }
        for (k, n) in self.nodes.iter().enumerate() {
            // a cancelled compilation stops here; its caller reports the cancellation
            if verity_engine::cancel::requested() {
                break;
            }
            let out = self.eval_node(n, &vals);
            visit(ni + nc + k, &out);
            vals.own[ni + nc + k] = Some(out);
            for &i in &n.inputs {
                if last.get(i as usize) == Some(&k) {
                    vals.own[i as usize] = None;
                }
            }
        }
        self.outputs
            .iter()
            .map(|(_, o)| vals.f64(*o).into_owned())
            .collect()
    }

    fn eval_node(&self, n: &FNode, vals: &Vals<'_>) -> Vec<f64> {
        let sh = |v: u32| -> Vec<usize> { self.shape(v).iter().map(|&d| d as usize).collect() };
        // the first operand as f64; a contraction or a gather reads it as it is held instead (a
        // constant one may be large)
        let x = match &n.op {
            FOp::Canon(Op::EinSum { .. } | Op::Conv2d { .. } | Op::Gather { .. }) => {
                Cow::Borrowed(&[][..])
            }
            _ => vals.f64(n.inputs[0]),
        };
        let out_shape: Vec<usize> = n.shape.iter().map(|&d| d as usize).collect();
        let count = numel(&n.shape) as usize;
        match &n.op {
            FOp::Clamp { lo, hi } => x.iter().map(|v| v.max(*lo).min(*hi)).collect(),
            FOp::LeakyRelu { alpha } => x
                .iter()
                .map(|&v| if v >= 0.0 { v } else { alpha * v })
                .collect(),
            FOp::Func(f) => x.iter().map(|&v| f.eval(v)).collect(),
            FOp::Step(t) => x.iter().map(|&v| t.eval(v)).collect(),
            FOp::Softmax { axis } => {
                let s = sh(n.inputs[0]);
                let ax = *axis as usize;
                let (len, inner) = (s[ax], s[ax + 1..].iter().product::<usize>());
                let outer: usize = s[..ax].iter().product();
                let mut out = vec![0.0; x.len()];
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |j: usize| (o * len + j) * inner + i;
                        let m = (0..len).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = (0..len).map(|j| libm::exp(x[at(j)] - m)).collect();
                        let sum: f64 = e.iter().sum();
                        for (j, ej) in e.iter().enumerate() {
                            out[at(j)] = ej / sum;
                        }
                    }
                }
                out
            }
            FOp::Canon(op) => match op {
                Op::EinSum { a, b, out } => {
                    let (sa, sb) = (sh(n.inputs[0]), sh(n.inputs[1]));
                    let spec = EinSpec {
                        a,
                        b,
                        out,
                        a_shape: &sa,
                        b_shape: &sb,
                        out_shape: &out_shape,
                    };
                    let sizes = spec.label_sizes();
                    let summed = spec.summed();
                    let sum_shape: Vec<usize> = summed.iter().map(|&l| sizes[l as usize]).collect();
                    let (av, bv) = (vals.data(n.inputs[0]), vals.data(n.inputs[1]));
                    let a_sum = label_strides(a, &sa, &summed);
                    let b_sum = label_strides(b, &sb, &summed);
                    let sum_st = [a_sum, b_sum];
                    let mut res = vec![0.0; count];
                    let bias = n
                        .inputs
                        .get(2)
                        .map(|&v| (vals.f64(v), broadcast_strides(&out_shape, &sh(v))));
                    let mut ins = vec![label_strides(a, &sa, out), label_strides(b, &sb, out)];
                    if let Some((_, bst)) = &bias {
                        ins.push(bst.clone());
                    }
                    // every output element sums its products in the order of the summed labels, then
                    // adds the bias; rows along the output's last axis run together (k outer, j inner),
                    // which changes no element's order of additions
                    let mut koffs = Vec::new();
                    for_each_index(&sum_shape, &sum_st, |_, k| koffs.push((k[0], k[1])));
                    let len = out_shape.last().copied().unwrap_or(1);
                    let last = |st: &Vec<usize>| {
                        if out_shape.is_empty() {
                            0
                        } else {
                            st[st.len() - 1]
                        }
                    };
                    let (ja, jb) = (last(&ins[0]), last(&ins[1]));
                    let jbias = bias.as_ref().map_or(0, |(_, st)| last(st));
                    let outer: Vec<usize> = out_shape[..out_shape.len().saturating_sub(1)].to_vec();
                    let outer_ins: Vec<Vec<usize>> = ins
                        .iter()
                        .map(|st| st[..st.len().saturating_sub(1)].to_vec())
                        .collect();
                    // the rows' operand (and bias) offsets; rows run in groups over blocks of
                    // columns, so a block of the contiguous operand is read once for the group
                    let mut rows: Vec<[usize; 3]> = Vec::new();
                    for_each_index(&outer, &outer_ins, |_, o| {
                        rows.push([o[0], o[1], o.get(2).copied().unwrap_or(0)])
                    });
                    // groups of rows write disjoint blocks: they run in parallel, each element
                    // still computed by one group in one order
                    let ein_group = |(block, group): (&mut [f64], &[[usize; 3]])| {
                        for j0 in (0..len).step_by(EIN_COLS) {
                            let nj = EIN_COLS.min(len - j0);
                            for &(ka, kb) in &koffs {
                                for (r, o) in group.iter().enumerate() {
                                    let row = &mut block[r * len + j0..r * len + j0 + nj];
                                    let (pa, pb) = (o[0] + ka + j0 * ja, o[1] + kb + j0 * jb);
                                    match (ja, jb, av, bv) {
                                        (0, 1, _, Data::F64(b)) => {
                                            axpy_f64(row, &b[pb..pb + nj], av.get(pa))
                                        }
                                        (0, 1, _, Data::F32(b)) => {
                                            axpy_f32(row, &b[pb..pb + nj], av.get(pa))
                                        }
                                        (1, 0, Data::F64(a), _) => {
                                            axpy_f64(row, &a[pa..pa + nj], bv.get(pb))
                                        }
                                        (1, 0, Data::F32(a), _) => {
                                            axpy_f32(row, &a[pa..pa + nj], bv.get(pb))
                                        }
                                        _ => {
                                            for (j, r) in row.iter_mut().enumerate() {
                                                *r += av.get(pa + j * ja) * bv.get(pb + j * jb);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        if let Some((bd, _)) = &bias {
                            for (r, o) in group.iter().enumerate() {
                                let row = &mut block[r * len..(r + 1) * len];
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v += bd[o[2] + j * jbias];
                                }
                            }
                        }
                    };
                    if len > 0 {
                        res.par_chunks_mut(EIN_ROWS * len)
                            .zip(rows.par_chunks(EIN_ROWS))
                            .for_each(ein_group);
                    }
                    res
                }
                Op::Conv2d { window, groups } => {
                    let (xs, ws) = (sh(n.inputs[0]), sh(n.inputs[1]));
                    let x = vals.f64(n.inputs[0]);
                    let bias = n.inputs.get(2).map(|&v| vals.f64(v));
                    let bias = bias.as_deref();
                    let (win, g) = (window, *groups as usize);
                    on_slice!(vals.data(n.inputs[1]), |w| {
                        conv_f64(&x, &xs, w, &ws, bias, win, g, &out_shape)
                    })
                }
                Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => {
                    let y = vals.f64(n.inputs[1]);
                    let st = [
                        broadcast_strides(&out_shape, &sh(n.inputs[0])),
                        broadcast_strides(&out_shape, &sh(n.inputs[1])),
                    ];
                    let f: fn(f64, f64) -> f64 = match op {
                        Op::Add => |p, q| p + q,
                        Op::Sub => |p, q| p - q,
                        Op::Mul => |p, q| p * q,
                        Op::Div => |p, q| p / q,
                        Op::Max => f64::max,
                        _ => f64::min,
                    };
                    let mut res = vec![0.0; count];
                    // over merged runs of the broadcast (a per-channel operand is one value per run)
                    for_each_run(&out_shape, &st, |start, offs, len, inner| {
                        let dst = &mut res[start..start + len];
                        let (oa, ob) = (offs[0], offs[1]);
                        match (inner[0], inner[1]) {
                            (1, 1) => {
                                for ((d, &p), &q) in
                                    dst.iter_mut().zip(&x[oa..oa + len]).zip(&y[ob..ob + len])
                                {
                                    *d = f(p, q);
                                }
                            }
                            (1, 0) => {
                                let q = y[ob];
                                for (d, &p) in dst.iter_mut().zip(&x[oa..oa + len]) {
                                    *d = f(p, q);
                                }
                            }
                            (sa, sb) => {
                                for (j, d) in dst.iter_mut().enumerate() {
                                    *d = f(x[oa + j * sa], y[ob + j * sb]);
                                }
                            }
                        }
                    });
                    res
                }
                Op::Sqrt => x.iter().map(|&v| libm::sqrt(v)).collect(),
                Op::Rsqrt => x.iter().map(|&v| 1.0 / libm::sqrt(v)).collect(),
                Op::Recip => x.iter().map(|&v| 1.0 / v).collect(),
                Op::Rescale | Op::Reshape => x.into_owned(),
                Op::Reduce { kind, axes } => {
                    let s = sh(n.inputs[0]);
                    let ost = strides(&out_shape);
                    let to_out: Vec<usize> = (0..s.len())
                        .map(|i| if out_shape[i] == 1 { 0 } else { ost[i] })
                        .collect();
                    let init = match kind {
                        ReduceKind::Max => f64::NEG_INFINITY,
                        ReduceKind::Min => f64::INFINITY,
                        _ => 0.0,
                    };
                    let mut acc = vec![init; count];
                    for_each_index(&s, &[to_out], |flat, o| {
                        let a = &mut acc[o[0]];
                        *a = match kind {
                            ReduceKind::Max => a.max(x[flat]),
                            ReduceKind::Min => a.min(x[flat]),
                            _ => *a + x[flat],
                        };
                    });
                    if *kind == ReduceKind::Mean {
                        let c: usize = axes.iter().map(|&a| s[a as usize]).product();
                        acc.iter_mut().for_each(|a| *a /= c as f64);
                    }
                    acc
                }
                Op::MaxPool2d { window } => {
                    pool_f64(&x, &sh(n.inputs[0]), window, &out_shape, None)
                }
                Op::AvgPool2d {
                    window,
                    count_include_pad,
                } => pool_f64(
                    &x,
                    &sh(n.inputs[0]),
                    window,
                    &out_shape,
                    Some(*count_include_pad),
                ),
                Op::Transpose { perm } => {
                    let st = strides(&sh(n.inputs[0]));
                    let ps: Vec<usize> = perm.iter().map(|&p| st[p as usize]).collect();
                    let mut res = vec![0.0; count];
                    for_each_index(&out_shape, &[ps], |flat, o| res[flat] = x[o[0]]);
                    res
                }
                Op::Concat { axis } => {
                    let ax = *axis as usize;
                    let outer: usize = out_shape[..ax].iter().product();
                    let inner: usize = out_shape[ax + 1..].iter().product();
                    let mut res = Vec::with_capacity(count);
                    for o in 0..outer {
                        for &v in &n.inputs {
                            let len = self.shape(v)[ax] as usize * inner;
                            res.extend(vals.data(v).range(o * len..(o + 1) * len));
                        }
                    }
                    res
                }
                Op::Slice {
                    axis, start, step, ..
                } => {
                    let ax = *axis as usize;
                    let mut st = strides(&sh(n.inputs[0]));
                    let base = *start as usize * st[ax];
                    st[ax] *= *step as usize;
                    let mut res = vec![0.0; count];
                    for_each_index(&out_shape, &[st], |flat, o| res[flat] = x[base + o[0]]);
                    res
                }
                Op::Gather { axis } => {
                    let s = sh(n.inputs[0]);
                    let ax = *axis as usize;
                    let outer: usize = s[..ax].iter().product();
                    let inner: usize = s[ax + 1..].iter().product();
                    let idx = vals.f64(n.inputs[1]);
                    let x = vals.data(n.inputs[0]);
                    let mut res = Vec::with_capacity(count);
                    for o in 0..outer {
                        for &i in idx.iter() {
                            let j = if i < 0.0 { i + s[ax] as f64 } else { i };
                            let j = (j.max(0.0) as usize).min(s[ax].saturating_sub(1));
                            let at = (o * s[ax] + j) * inner;
                            res.extend(x.range(at..at + inner));
                        }
                    }
                    res
                }
                Op::Broadcast => {
                    let st = broadcast_strides(&out_shape, &sh(n.inputs[0]));
                    let mut res = vec![0.0; count];
                    for_each_index(&out_shape, &[st], |flat, o| res[flat] = x[o[0]]);
                    res
                }
                Op::Clamp { .. }
                | Op::LeakyRelu { .. }
                | Op::Lookup { .. }
                | Op::Softmax { .. } => {
                    unreachable!("parameterised ops are never wrapped in FOp::Canon")
                }
            },
        }
    }
}

/// Output rows computed together by the `f64` `EinSum`, and columns per block of them.
const EIN_ROWS: usize = 8;
const EIN_COLS: usize = 512;

/// Output pixels per block of the `f64` convolution's patch matrix.
const CONV_COLS: usize = 256;
/// Output channels and pixels of one register tile of [`conv_tile`].
const TILE_O: usize = 4;
const TILE_P: usize = 16;
/// Output channels of one parallel task of the `f64` convolution: its tiles read each strip of patches
/// while it is in the cache.
const TASK_O: usize = 4 * TILE_O;

#[allow(clippy::too_many_arguments)]
fn conv_f64<W: Weight>(
    x: &[f64],
    xs: &[usize],
    w: &[W],
    ws: &[usize],
    bias: Option<&[f64]>,
    win: &Window,
    groups: usize,
    out: &[usize],
) -> Vec<f64> {
    let (n, c) = (xs[0], xs[1]);
    let (oc, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let og = oc / groups;
    let p = out[2] * out[3];
    let k = cg * kh * kw;
    let mut res = vec![0.0; n * oc * p];
    // each output element starts from its bias and adds its products in (ci, ky, kx) order (a tap
    // reading padding adds 0·w, which leaves every non-zero sum as it is); pixels are taken in blocks
    // of patches, and register tiles of output channels × pixels run the reduction, so no element's
    // order changes
    let mut cols = vec![0.0; k * CONV_COLS.min(p).next_multiple_of(TILE_P)];
    for b in 0..n {
        for g in 0..groups {
            let xg = &x[(b * c + g * cg) * xs[2] * xs[3]..(b * c + (g + 1) * cg) * xs[2] * xs[3]];
            for p0 in (0..p).step_by(CONV_COLS) {
                let pc = CONV_COLS.min(p - p0);
                let cols = &mut cols[..k * pc.next_multiple_of(TILE_P)];
                patches_f64(xg, xs, (kh, kw), win, out[3], p0, pc, cols);
                // tasks of output channels write disjoint planes: they run in parallel, each
                // element still computed by one tile in one order
                let cols = &*cols;
                let group = &mut res[(b * oc + g * og) * p..(b * oc + (g + 1) * og) * p];
                group
                    .par_chunks_mut(TASK_O * p)
                    .enumerate()
                    .for_each(|(t, planes)| {
                        let o0 = g * og + t * TASK_O;
                        let mo = planes.len() / p;
                        let mut bv = [0.0; TASK_O];
                        for (i, v) in bv.iter_mut().enumerate().take(mo) {
                            *v = bias.map_or(0.0, |bd| bd[o0 + i]);
                        }
                        W::tile(cols, pc, &w[o0 * k..(o0 + mo) * k], k, bv, planes, (p, p0));
                    });
            }
        }
    }
    res
}

/// The patches of output pixels `p0..p0 + pc` of one group's input `xg` as strips of [`TILE_P`] pixels
/// (the last one padded with zeros), each a `[cg·kh·kw × TILE_P]` matrix: in strip `s`, row `(ci, ky,
/// kx)`, column `j` the input value that tap reads for pixel `p0 + s·TILE_P + j`, 0 where it reads
/// padding.
#[allow(clippy::too_many_arguments)]
fn patches_f64(
    xg: &[f64],
    xs: &[usize],
    (kh, kw): (usize, usize),
    win: &Window,
    ow: usize,
    p0: usize,
    pc: usize,
    cols: &mut [f64],
) {
    let (h, wd) = (xs[2] as i64, xs[3] as i64);
    let (sy, sx) = (win.stride[0] as i64, win.stride[1] as i64);
    let (dy, dx) = (win.dilation[0] as i64, win.dilation[1] as i64);
    let (py, px) = (win.pads[0] as i64, win.pads[1] as i64);
    let k = cols.len() / pc.next_multiple_of(TILE_P);
    for (st, strip) in cols.chunks_mut(k * TILE_P).enumerate() {
        for (r, row) in strip.chunks_mut(TILE_P).enumerate() {
            let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let plane = &xg[ci * xs[2] * xs[3]..(ci + 1) * xs[2] * xs[3]];
            for (jj, v) in row.iter_mut().enumerate() {
                let j = st * TILE_P + jj;
                if j >= pc {
                    *v = 0.0;
                    continue;
                }
                let (oy, ox) = (((p0 + j) / ow) as i64, ((p0 + j) % ow) as i64);
                let (iy, ix) = (oy * sy + ky as i64 * dy - py, ox * sx + kx as i64 * dx - px);
                *v = if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                    plane[(iy * wd + ix) as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

verity_engine::multiversion! {
    fn conv_tile(cols: &[f64], pc: usize, w: &[f64], k: usize, bias: [f64; TASK_O], planes: &mut [f64], at: (usize, usize)) -> () = conv_tile_body
}

verity_engine::multiversion! {
    fn conv_tile_f32(cols: &[f64], pc: usize, w: &[f32], k: usize, bias: [f64; TASK_O], planes: &mut [f64], at: (usize, usize)) -> () = conv_tile_body
}

/// A weight element type of the float convolution: `f64`, or the file's `f32` (each read as the `f64`
/// it equals, so both give the same sums).
trait Weight: Copy + Into<f64> + Send + Sync {
    /// [`conv_tile`] on weights of this type.
    fn tile(
        cols: &[f64],
        pc: usize,
        w: &[Self],
        k: usize,
        bias: [f64; TASK_O],
        planes: &mut [f64],
        at: (usize, usize),
    );
}

impl Weight for f64 {
    fn tile(
        cols: &[f64],
        pc: usize,
        w: &[f64],
        k: usize,
        bias: [f64; TASK_O],
        planes: &mut [f64],
        at: (usize, usize),
    ) {
        conv_tile(cols, pc, w, k, bias, planes, at)
    }
}

impl Weight for f32 {
    fn tile(
        cols: &[f64],
        pc: usize,
        w: &[f32],
        k: usize,
        bias: [f64; TASK_O],
        planes: &mut [f64],
        at: (usize, usize),
    ) {
        conv_tile_f32(cols, pc, w, k, bias, planes, at)
    }
}

/// `dst[j] += src[j] · s` on `f32` elements read as `f64` (the same two roundings as
/// [`axpy_f64`] on the equal `f64` values).
#[inline(always)]
fn axpy_f32_body(dst: &mut [f64], src: &[f32], s: f64) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += v as f64 * s;
    }
}

verity_engine::multiversion! {
    fn axpy_f32(dst: &mut [f64], src: &[f32], s: f64) -> () = axpy_f32_body
}

/// Output channels `0..w.len() / k` (at most [`TASK_O`]; their weight rows `w`, biases `bias`) at
/// pixels `p0..p0 + pc` (`planes`: those channels' output planes of `p` pixels, `at = (p, p0)`; `strips`:
/// the patches as [`patches_f64`] lays them out): each element is its bias plus its products in row
/// order of the patches, one `f64` multiply and one add each (no fused multiply-add: the same roundings
/// on every machine). A strip of pixels is taken by every tile of [`TILE_O`] channels in turn.
#[inline(always)]
fn conv_tile_body<W: Copy + Into<f64>>(
    strips: &[f64],
    pc: usize,
    w: &[W],
    k: usize,
    bias: [f64; TASK_O],
    planes: &mut [f64],
    (p, p0): (usize, usize),
) {
    let mo = w.len() / k;
    for (st, strip) in strips.chunks_exact(k * TILE_P).enumerate() {
        let j0 = st * TILE_P;
        if j0 >= pc {
            break;
        }
        let nj = TILE_P.min(pc - j0);
        for o0 in (0..mo).step_by(TILE_O) {
            let mt = TILE_O.min(mo - o0);
            let mut acc = [[0.0f64; TILE_P]; TILE_O];
            for (i, a) in acc.iter_mut().enumerate() {
                *a = [bias[(o0 + i).min(TASK_O - 1)]; TILE_P];
            }
            let wt = &w[o0 * k..(o0 + mt) * k];
            if mt == TILE_O {
                acc = full_tile(strip, wt, k, acc);
            } else {
                for (kk, xr) in strip.chunks_exact(TILE_P).enumerate() {
                    for (i, a) in acc.iter_mut().enumerate().take(mt) {
                        let wv: f64 = wt[i * k + kk].into();
                        for (d, &v) in a.iter_mut().zip(xr) {
                            *d += v * wv;
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(mt) {
                let at = (o0 + i) * p + p0 + j0;
                planes[at..at + nj].copy_from_slice(&a[..nj]);
            }
        }
    }
}

/// [`TILE_O`] channels (weight rows of `k` in `w`) over one strip, from `acc`: per element and row, one
/// `f64` multiply and one add, in row order (under AVX-512 the same operations on eight lanes at once,
/// with the accumulators held in registers).
#[inline(always)]
fn full_tile<W: Copy + Into<f64>>(
    strip: &[f64],
    w: &[W],
    k: usize,
    mut acc: [[f64; TILE_P]; TILE_O],
) -> [[f64; TILE_P]; TILE_O] {
    let (w0, rest) = w.split_at(k);
    let (w1, rest) = rest.split_at(k);
    let (w2, w3) = rest.split_at(k);
    let ws = [w0, w1, w2, &w3[..k]];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && strip.len() >= k * TILE_P {
        // SAFETY: the CPU has AVX-512 F (checked above); the strip holds k rows of TILE_P elements
        // (checked above) and each weight row k elements (split above).
        unsafe { full_tile_avx512(strip, ws, k, &mut acc) };
        return acc;
    }
    for (kk, xr) in strip.chunks_exact(TILE_P).take(k).enumerate() {
        for (a, wr) in acc.iter_mut().zip(&ws) {
            let wv: f64 = wr[kk].into();
            for (s, &v) in a.iter_mut().zip(xr) {
                *s += v * wv;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn full_tile_avx512<W: Copy + Into<f64>>(
    strip: &[f64],
    ws: [&[W]; TILE_O],
    k: usize,
    acc: &mut [[f64; TILE_P]; TILE_O],
) {
    use std::arch::x86_64::*;
    let p = strip.as_ptr();
    // each channel's 16 sums as two vectors of 8 (constant indices: registers, not memory)
    let mut r = [[_mm512_setzero_pd(); 2]; TILE_O];
    for (r, a) in r.iter_mut().zip(acc.iter()) {
        *r = [
            _mm512_loadu_pd(a.as_ptr()),
            _mm512_loadu_pd(a[8..].as_ptr()),
        ];
    }
    let rows = ws[0].iter().zip(ws[1]).zip(ws[2]).zip(ws[3]).take(k);
    for (kk, (((&wa, &wb), &wc), &wd)) in rows.enumerate() {
        let x = [
            _mm512_loadu_pd(p.add(kk * TILE_P)),
            _mm512_loadu_pd(p.add(kk * TILE_P + 8)),
        ];
        for (r, w) in r.iter_mut().zip([wa, wb, wc, wd]) {
            let w = _mm512_set1_pd(w.into());
            r[0] = _mm512_add_pd(r[0], _mm512_mul_pd(x[0], w));
            r[1] = _mm512_add_pd(r[1], _mm512_mul_pd(x[1], w));
        }
    }
    for (row, r) in acc.iter_mut().zip(r) {
        _mm512_storeu_pd(row.as_mut_ptr(), r[0]);
        _mm512_storeu_pd(row[8..].as_mut_ptr(), r[1]);
    }
}

fn pool_f64(x: &[f64], xs: &[usize], win: &Window, out: &[usize], avg: Option<bool>) -> Vec<f64> {
    let (h, wd) = (xs[2] as i64, xs[3] as i64);
    let area = (win.kernel[0] * win.kernel[1]) as f64;
    let mut res = Vec::with_capacity(out.iter().product());
    for c in 0..xs[0] * xs[1] {
        let plane = &x[c * xs[2] * xs[3]..(c + 1) * xs[2] * xs[3]];
        for oy in 0..out[2] {
            for ox in 0..out[3] {
                let (mut mx, mut sum, mut valid) = (f64::NEG_INFINITY, 0.0, 0.0);
                for ky in 0..win.kernel[0] as usize {
                    let iy = (oy * win.stride[0] as usize + ky * win.dilation[0] as usize) as i64
                        - win.pads[0] as i64;
                    for kx in 0..win.kernel[1] as usize {
                        let ix = (ox * win.stride[1] as usize + kx * win.dilation[1] as usize)
                            as i64
                            - win.pads[1] as i64;
                        if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                            continue;
                        }
                        let v = plane[(iy * wd + ix) as usize];
                        mx = mx.max(v);
                        sum += v;
                        valid += 1.0;
                    }
                }
                res.push(match avg {
                    None if valid == 0.0 => 0.0,
                    None => mx,
                    Some(true) => sum / area,
                    Some(false) if valid == 0.0 => 0.0,
                    Some(false) => sum / valid,
                });
            }
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: each output element is its bias, then `x · w` for every tap in (ci, ky, kx)
    /// order (a tap on padding adds `0 · w`).
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[f64],
        xs: &[usize],
        w: &[f64],
        ws: &[usize],
        bias: &[f64],
        win: &Window,
        groups: usize,
        out: &[usize],
    ) -> Vec<f64> {
        let (n, c, h, wd) = (xs[0], xs[1], xs[2] as i64, xs[3] as i64);
        let (oc, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let og = oc / groups;
        let mut res = Vec::new();
        for b in 0..n {
            for o in 0..oc {
                for oy in 0..out[2] as i64 {
                    for ox in 0..out[3] as i64 {
                        let mut acc = bias[o];
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = oy * win.stride[0] as i64
                                        + ky as i64 * win.dilation[0] as i64
                                        - win.pads[0] as i64;
                                    let ix = ox * win.stride[1] as i64
                                        + kx as i64 * win.dilation[1] as i64
                                        - win.pads[1] as i64;
                                    let cin = (o / og) * cg + ci;
                                    let v = if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                                        x[((b * c + cin) as i64 * h + iy) as usize * wd as usize
                                            + ix as usize]
                                    } else {
                                        0.0
                                    };
                                    acc += v * w[((o * cg + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        res.push(acc);
                    }
                }
            }
        }
        res
    }

    #[test]
    fn the_blocked_parallel_convolution_keeps_every_elements_order() {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 3.0
        };
        // (n, groups, cg, og, h, w, kernel, stride, dilation, pads): tiles of channels and pixels
        // with remainders, padding, strides, dilation, groups, more pixels than one block
        let cases = [
            (1, 1, 3, 5, 7, 9, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 2, 2, 3, 6, 5, [3, 2], [2, 1], [1, 2], [0, 2, 1, 0]),
            (1, 3, 1, 1, 5, 5, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            (1, 1, 4, 9, 20, 17, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),
            // two tasks of channels (16 and 5), a short last strip of pixels
            (1, 1, 3, 21, 9, 7, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        ];
        for (n, groups, cg, og, h, wd, kernel, stride, dilation, pads) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads,
            };
            let (oh, ow) = win.output_hw(h, wd).expect("fits");
            let (c, oc) = (groups * cg, groups * og);
            let xs = [n, c as usize, h as usize, wd as usize];
            let ws = [
                oc as usize,
                cg as usize,
                kernel[0] as usize,
                kernel[1] as usize,
            ];
            let out = [n, oc as usize, oh as usize, ow as usize];
            let x: Vec<f64> = (0..xs.iter().product::<usize>()).map(|_| next()).collect();
            let w: Vec<f64> = (0..ws.iter().product::<usize>()).map(|_| next()).collect();
            let bias: Vec<f64> = (0..oc).map(|_| next()).collect();
            let got = conv_f64(&x, &xs, &w, &ws, Some(&bias), &win, groups as usize, &out);
            let want = naive_conv(&x, &xs, &w, &ws, &bias, &win, groups as usize, &out);
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }

    /// Weights held as the file's `f32` (shared with the front end) give the same `f64` results, bit for
    /// bit, as the same values held as `f64`: in a convolution, in both orientations of a matrix
    /// product, in a gather from a table and in a concatenation.
    #[test]
    fn f32_weights_evaluate_as_their_f64_values() {
        let mut state = 11u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        let mut vals = |n: usize| (0..n).map(|_| next()).collect::<Vec<f32>>();
        let win = Window {
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let node = |name: &str, op: Op, inputs: Vec<u32>, shape: Vec<u32>| FNode {
            name: name.into(),
            origin: String::new(),
            op: FOp::Canon(op),
            inputs,
            shape,
        };
        // values: 0 x, 1 conv weights, 2 matrix, 3 table, 4 indices, then the nodes
        let weights: [(Vec<u32>, Vec<f32>); 3] = [
            (vec![3, 2, 3, 3], vals(54)),
            (vec![3, 4], vals(12)),
            (vec![6, 5], vals(30)),
        ];
        let graph = |shared: bool| {
            let mut consts: Vec<FConst> = weights
                .iter()
                .map(|(shape, v)| FConst {
                    shape: shape.clone(),
                    data: if shared {
                        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                        let t = Tensor::from_shape(&dims, v).expect("shape fits");
                        FData::F32(SharedF32::new(Arc::new(t)).expect("f32"))
                    } else {
                        FData::F64(v.iter().map(|&x| x as f64).collect())
                    },
                    int: false,
                })
                .collect();
            consts.push(FConst {
                shape: vec![4],
                data: FData::F64(vec![5.0, 0.0, 2.0, 5.0]),
                int: true,
            });
            let ein = |a: &[u8], b: &[u8], out: &[u8]| Op::EinSum {
                a: a.to_vec(),
                b: b.to_vec(),
                out: out.to_vec(),
            };
            FGraph {
                inputs: vec![FInput {
                    name: "x".into(),
                    shape: vec![1, 2, 5, 5],
                    kind: InputKind::Fixed,
                }],
                consts,
                nodes: vec![
                    // 5: conv [1, 3, 5, 5]
                    node(
                        "conv",
                        Op::Conv2d {
                            window: win,
                            groups: 1,
                        },
                        vec![0, 1],
                        vec![1, 3, 5, 5],
                    ),
                    // 6: the matrix as the row operand (the output's last axis from the activations)
                    node(
                        "ab",
                        ein(&[0, 1, 2, 3], &[1, 4], &[0, 4, 2, 3]),
                        vec![5, 2],
                        vec![1, 4, 5, 5],
                    ),
                    // 7: the matrix as the column operand (the output's last axis from the weights)
                    node(
                        "ba",
                        ein(&[0, 1, 2, 3], &[1, 4], &[0, 2, 3, 4]),
                        vec![5, 2],
                        vec![1, 5, 5, 4],
                    ),
                    // 8: rows of the table
                    node("gather", Op::Gather { axis: 0 }, vec![3, 4], vec![4, 5]),
                    // 9: the table after the gathered rows
                    node("concat", Op::Concat { axis: 0 }, vec![8, 3], vec![10, 5]),
                ],
                outputs: vec![("ab".into(), 6), ("ba".into(), 7), ("concat".into(), 9)],
            }
        };
        let x: Vec<f64> = vals(50).into_iter().map(|v| v as f64).collect();
        let (a, b) = (graph(true), graph(false));
        assert!(matches!(a.consts[1].data, FData::F32(_)));
        let (ya, yb) = (
            a.eval_visit(std::slice::from_ref(&x), |_, _| {}),
            b.eval_visit(&[x], |_, _| {}),
        );
        assert_eq!(ya.len(), 3);
        for (p, q) in ya.iter().zip(&yb) {
            assert!(!p.is_empty() && p.iter().any(|&v| v != 0.0));
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(p), bits(q));
        }
    }
}
