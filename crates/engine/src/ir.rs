//! The canonical integer IR: values (model inputs, constants, node outputs), each with a fixed shape and a
//! power-of-two scale, and the ops that compute node outputs. See `docs/spec/canonical.md`.

use crate::arith::MAX_SHIFT;
use crate::error::ModelError;

/// Identifies a value: `0..inputs.len()` are model inputs, then constants, then node outputs.
pub type ValueId = u32;

/// How a model input's numbers map to the canonical integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputKind {
    /// A real number, quantized as `round(x * 2^scale)`.
    Fixed,
    /// An integer (token ids, indices), used as is; scale is 0.
    Int,
}

/// A model input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Name, as in the ONNX graph.
    pub name: String,
    /// Fixed shape.
    pub shape: Vec<u32>,
    /// Fractional bits.
    pub scale: i8,
    /// Real or integer.
    pub kind: InputKind,
}

/// A constant tensor (weights, biases, lookup tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Const {
    /// Fixed shape.
    pub shape: Vec<u32>,
    /// Fractional bits.
    pub scale: i8,
    /// Row-major elements, held at their narrowest width (shared: models built from the same weights,
    /// e.g. a language model's decode step and its prefill chunk, hold one copy).
    pub data: crate::elements::Elements,
}

/// A model output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Name, as in the ONNX graph.
    pub name: String,
    /// The value it exposes.
    pub value: ValueId,
}

/// Reduction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    /// Sum.
    Sum = 0,
    /// Mean, rounded with the one rounding rule.
    Mean = 1,
    /// Maximum.
    Max = 2,
    /// Minimum.
    Min = 3,
}

/// Geometry of a 2-D window (convolution or pooling) over NCHW data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: [u32; 2],
    /// Strides.
    pub stride: [u32; 2],
    /// Dilations.
    pub dilation: [u32; 2],
    /// Zero padding: top, left, bottom, right.
    pub pads: [u32; 4],
}

impl Window {
    /// Output spatial size for input spatial size `(h, w)`, or `None` if the window does not fit.
    pub fn output_hw(&self, h: u32, w: u32) -> Option<(u32, u32)> {
        let dim = |size: u32, k: u32, s: u32, d: u32, p0: u32, p1: u32| -> Option<u32> {
            if k == 0 || s == 0 || d == 0 || k > MAX_WINDOW || s > MAX_WINDOW || d > MAX_WINDOW {
                return None;
            }
            if p0 > MAX_WINDOW || p1 > MAX_WINDOW {
                return None;
            }
            let padded = size as u64 + p0 as u64 + p1 as u64;
            let span = (k as u64 - 1) * d as u64 + 1;
            if padded < span {
                return None;
            }
            u32::try_from((padded - span) / s as u64 + 1).ok()
        };
        Some((
            dim(
                h,
                self.kernel[0],
                self.stride[0],
                self.dilation[0],
                self.pads[0],
                self.pads[2],
            )?,
            dim(
                w,
                self.kernel[1],
                self.stride[1],
                self.dilation[1],
                self.pads[1],
                self.pads[3],
            )?,
        ))
    }
}

/// A canonical op. Inputs are listed per op; every node has one output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Two-operand Einstein summation: inputs `[a, b]` or `[a, b, bias]`. Each axis of `a`, `b` and the
    /// output carries a label; labels absent from the output are summed. `bias` broadcasts to the output.
    EinSum {
        /// Labels of `a`'s axes.
        a: Vec<u8>,
        /// Labels of `b`'s axes.
        b: Vec<u8>,
        /// Labels of the output axes.
        out: Vec<u8>,
    },
    /// 2-D convolution, NCHW: inputs `[x, w]` or `[x, w, bias]`, `w` is `[O, C/groups, kh, kw]`.
    Conv2d {
        /// Window geometry.
        window: Window,
        /// Channel groups.
        groups: u32,
    },
    /// Element-wise `a + b` with broadcasting.
    Add,
    /// Element-wise `a - b` with broadcasting.
    Sub,
    /// Element-wise `a * b` with broadcasting.
    Mul,
    /// Element-wise `a / b` with broadcasting.
    Div,
    /// Element-wise maximum with broadcasting.
    Max,
    /// Element-wise minimum with broadcasting.
    Min,
    /// Rescale to the output scale, then clamp into `[lo, hi]` (output scale).
    Clamp {
        /// Lower bound.
        lo: i32,
        /// Upper bound.
        hi: i32,
    },
    /// `x >= 0 ? x : alpha * x`, `alpha = alpha_q * 2^-alpha_scale`.
    LeakyRelu {
        /// Quantized slope.
        alpha_q: i32,
        /// Its fractional bits.
        alpha_scale: i8,
    },
    /// Table lookup: inputs `[x, table]`; `table[clamp(rshift(x, shift) - lo, 0, len - 1)]`.
    Lookup {
        /// Right shift applied to `x` (rounded) before indexing.
        shift: i32,
        /// The shifted input value of table entry 0.
        lo: i32,
    },
    /// Change of scale only.
    Rescale,
    /// Square root, rounded to nearest (half up).
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    /// Reduction over `axes`, keeping them as size 1.
    Reduce {
        /// What to compute.
        kind: ReduceKind,
        /// Reduced axes, strictly increasing.
        axes: Vec<u32>,
    },
    /// Softmax along `axis`: inputs `[x, exp_table]`; the table maps `x - max` (shifted like
    /// [`Op::Lookup`]) to `exp` at the table's scale.
    Softmax {
        /// Axis.
        axis: u32,
        /// Right shift of `x - max` before indexing.
        shift: i32,
        /// Shifted value of table entry 0.
        lo: i32,
    },
    /// 2-D max pooling, NCHW; padding positions are ignored.
    MaxPool2d {
        /// Window geometry.
        window: Window,
    },
    /// 2-D average pooling, NCHW.
    AvgPool2d {
        /// Window geometry.
        window: Window,
        /// Divide by the full kernel area (true) or by the count of non-padding positions (false).
        count_include_pad: bool,
    },
    /// Reinterpret the row-major elements with the node's shape.
    Reshape,
    /// Permute axes: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<u32>,
    },
    /// Concatenate inputs along `axis`, each rescaled to the output scale.
    Concat {
        /// Axis.
        axis: u32,
    },
    /// Elements `start, start + step, …` (< end) along `axis`.
    Slice {
        /// Axis.
        axis: u32,
        /// First index.
        start: u32,
        /// Exclusive end.
        end: u32,
        /// Step, at least 1.
        step: u32,
    },
    /// Inputs `[data, indices]`: select along `axis` by integer indices (negative counts from the end).
    Gather {
        /// Axis of `data`.
        axis: u32,
    },
    /// Broadcast to the node's shape (numpy rules).
    Broadcast,
}

/// Every op's name, as [`Op::name`] gives it.
pub const OP_NAMES: [&str; 25] = [
    "EinSum",
    "Conv2d",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Clamp",
    "LeakyRelu",
    "Lookup",
    "Rescale",
    "Sqrt",
    "Rsqrt",
    "Recip",
    "Reduce",
    "Softmax",
    "MaxPool2d",
    "AvgPool2d",
    "Reshape",
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "Broadcast",
];

impl Op {
    /// The op's name, as written in the spec.
    pub fn name(&self) -> &'static str {
        match self {
            Op::EinSum { .. } => "EinSum",
            Op::Conv2d { .. } => "Conv2d",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Max => "Max",
            Op::Min => "Min",
            Op::Clamp { .. } => "Clamp",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Lookup { .. } => "Lookup",
            Op::Rescale => "Rescale",
            Op::Sqrt => "Sqrt",
            Op::Rsqrt => "Rsqrt",
            Op::Recip => "Recip",
            Op::Reduce { .. } => "Reduce",
            Op::Softmax { .. } => "Softmax",
            Op::MaxPool2d { .. } => "MaxPool2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::Reshape => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Slice { .. } => "Slice",
            Op::Gather { .. } => "Gather",
            Op::Broadcast => "Broadcast",
        }
    }
}

/// A node: an op applied to values, producing one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name (from the ONNX graph, for errors and reports).
    pub name: String,
    /// The op.
    pub op: Op,
    /// Input values.
    pub inputs: Vec<ValueId>,
    /// Output shape.
    pub shape: Vec<u32>,
    /// Output fractional bits.
    pub scale: i8,
}

/// A canonical model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Model inputs (value ids `0..inputs.len()`).
    pub inputs: Vec<Input>,
    /// Constants (the next value ids).
    pub consts: Vec<Const>,
    /// Nodes in execution order (the next value ids).
    pub nodes: Vec<Node>,
    /// Outputs.
    pub outputs: Vec<Output>,
}

/// Shape and scale of a value.
#[derive(Clone, Copy, Debug)]
pub struct ValueInfo<'a> {
    /// Shape.
    pub shape: &'a [u32],
    /// Fractional bits.
    pub scale: i8,
}

/// Largest kernel size, stride, dilation or padding of a window.
pub const MAX_WINDOW: u32 = 1 << 16;

/// Maximum elements in one tensor.
pub const MAX_ELEMENTS: u64 = 1 << 31;
/// Maximum rank.
pub const MAX_RANK: usize = 8;

/// Element count of a shape, saturating at `u64::MAX` (a hostile file's shape can overflow `u64`; the
/// count then exceeds every limit and size check instead of wrapping to a small number).
pub fn numel(shape: &[u32]) -> u64 {
    shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
}

/// numpy broadcast of two shapes.
pub fn broadcast_shapes(a: &[u32], b: &[u32]) -> Option<Vec<u32>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

impl Model {
    /// Total number of values.
    pub fn value_count(&self) -> usize {
        self.inputs.len() + self.consts.len() + self.nodes.len()
    }

    /// First node value id.
    pub fn first_node_value(&self) -> usize {
        self.inputs.len() + self.consts.len()
    }

    /// Shape and scale of value `v` (which must exist).
    pub fn value(&self, v: ValueId) -> Option<ValueInfo<'_>> {
        let v = v as usize;
        let ni = self.inputs.len();
        let nc = self.consts.len();
        if v < ni {
            let i = &self.inputs[v];
            Some(ValueInfo {
                shape: &i.shape,
                scale: i.scale,
            })
        } else if v < ni + nc {
            let c = &self.consts[v - ni];
            Some(ValueInfo {
                shape: &c.shape,
                scale: c.scale,
            })
        } else {
            let n = self.nodes.get(v - ni - nc)?;
            Some(ValueInfo {
                shape: &n.shape,
                scale: n.scale,
            })
        }
    }

    /// Position of value `v` in a trace (the inputs, then the node outputs); `None` for a constant.
    pub fn trace_leaf(&self, v: ValueId) -> Option<usize> {
        let (v, ni, nc) = (v as usize, self.inputs.len(), self.consts.len());
        if v < ni {
            Some(v)
        } else if v >= ni + nc && v < ni + nc + self.nodes.len() {
            Some(v - nc)
        } else {
            None
        }
    }

    /// The constant behind value `v`, if it is one.
    pub fn const_of(&self, v: ValueId) -> Option<&Const> {
        (v as usize)
            .checked_sub(self.inputs.len())
            .and_then(|i| self.consts.get(i))
    }

    /// A model of one node: `op` on `node_inputs` (value ids over `inputs` then `consts`), giving a
    /// tensor of `shape` at `scale`, which is the model's one output `y`. For tests and tools; call
    /// [`Model::validate`] before running it.
    pub fn one_node(
        inputs: Vec<Input>,
        consts: Vec<Const>,
        op: Op,
        node_inputs: Vec<ValueId>,
        shape: Vec<u32>,
        scale: i8,
    ) -> Model {
        let v = (inputs.len() + consts.len()) as ValueId;
        Model {
            inputs,
            consts,
            nodes: vec![Node {
                name: "n".into(),
                op,
                inputs: node_inputs,
                shape,
                scale,
            }],
            outputs: vec![Output {
                name: "y".into(),
                value: v,
            }],
        }
    }

    /// Per value: the index of the last node reading it, or `usize::MAX` for model outputs and values no
    /// node reads (they live to the end of a run).
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![usize::MAX; self.value_count()];
        for (k, node) in self.nodes.iter().enumerate() {
            for &v in &node.inputs {
                if let Some(l) = last.get_mut(v as usize) {
                    *l = k;
                }
            }
        }
        for o in &self.outputs {
            if let Some(l) = last.get_mut(o.value as usize) {
                *l = usize::MAX;
            }
        }
        last
    }

    /// Number of weight parameters (constant elements).
    pub fn parameter_count(&self) -> u64 {
        self.consts.iter().map(|c| c.data.len() as u64).sum()
    }

    /// Check every structural rule of the spec: references point backwards, shapes agree with the ops,
    /// shifts and table sizes are in range. A model that passes cannot make the executor panic.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |at: String, what: String| ModelError::Invalid { at, what };
        let check_shape = |at: &str, shape: &[u32]| -> Result<(), ModelError> {
            if shape.len() > MAX_RANK {
                return Err(bad(
                    at.into(),
                    format!("rank {} exceeds {MAX_RANK}", shape.len()),
                ));
            }
            if numel(shape) > MAX_ELEMENTS {
                return Err(bad(at.into(), "tensor too large".into()));
            }
            Ok(())
        };
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(bad(
                "model".into(),
                "needs at least one input and one output".into(),
            ));
        }
        for (i, inp) in self.inputs.iter().enumerate() {
            check_shape(&format!("input {i}"), &inp.shape)?;
            if inp.kind == InputKind::Int && inp.scale != 0 {
                return Err(bad(
                    format!("input {i}"),
                    "integer inputs have scale 0".into(),
                ));
            }
        }
        for (i, c) in self.consts.iter().enumerate() {
            check_shape(&format!("const {i}"), &c.shape)?;
            if numel(&c.shape) != c.data.len() as u64 {
                return Err(bad(
                    format!("const {i}"),
                    "element count does not match shape".into(),
                ));
            }
        }
        let first = self.first_node_value();
        for (k, node) in self.nodes.iter().enumerate() {
            let at = format!("node {k} '{}' ({})", node.name, node.op.name());
            check_shape(&at, &node.shape)?;
            let me = (first + k) as ValueId;
            let mut ins = Vec::with_capacity(node.inputs.len());
            for &v in &node.inputs {
                if v >= me {
                    return Err(bad(
                        at,
                        format!("input value {v} is not computed before this node"),
                    ));
                }
                ins.push(
                    self.value(v)
                        .ok_or_else(|| bad(at.clone(), "dangling input".into()))?,
                );
            }
            self.validate_node(node, &ins)
                .map_err(|what| bad(at.clone(), what))?;
        }
        for o in &self.outputs {
            if o.value as usize >= self.value_count() {
                return Err(bad(
                    format!("output '{}'", o.name),
                    "refers to no value".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_node(&self, node: &Node, ins: &[ValueInfo<'_>]) -> Result<(), String> {
        let arity = |lo: usize, hi: usize| -> Result<(), String> {
            if ins.len() < lo || ins.len() > hi {
                Err(format!("takes {lo}..={hi} inputs, has {}", ins.len()))
            } else {
                Ok(())
            }
        };
        let shift_ok = |k: i32| -> Result<(), String> {
            if k.abs() > MAX_SHIFT {
                Err(format!("scale shift {k} outside ±{MAX_SHIFT}"))
            } else {
                Ok(())
            }
        };
        let same_shape = |s: &[u32]| -> Result<(), String> {
            if s != node.shape.as_slice() {
                Err(format!("output shape {:?} should be {s:?}", node.shape))
            } else {
                Ok(())
            }
        };
        let s_out = node.scale as i32;
        match &node.op {
            Op::EinSum { a, b, out } => {
                arity(2, 3)?;
                if a.len() != ins[0].shape.len()
                    || b.len() != ins[1].shape.len()
                    || out.len() != node.shape.len()
                {
                    return Err("label count differs from rank".into());
                }
                let mut size = [0u32; 256];
                for (labels, shape) in
                    [(a, ins[0].shape), (b, ins[1].shape), (out, &node.shape[..])]
                {
                    for (i, (&l, &d)) in labels.iter().zip(shape).enumerate() {
                        if labels[..i].contains(&l) {
                            return Err(format!("label {l} repeated within one operand"));
                        }
                        let cur = &mut size[l as usize];
                        if *cur <= 1 {
                            *cur = (*cur).max(d);
                        } else if d != 1 && d != *cur {
                            return Err(format!("label {l} has sizes {cur} and {d}"));
                        }
                    }
                }
                for (&l, &d) in out.iter().zip(&node.shape) {
                    if d != size[l as usize] {
                        return Err(format!(
                            "output axis with label {l} must have size {}",
                            size[l as usize]
                        ));
                    }
                    if !a.contains(&l) && !b.contains(&l) && d != 1 {
                        return Err(format!(
                            "output label {l} is in neither operand and has size {d}"
                        ));
                    }
                }
                let acc = ins[0].scale as i32 + ins[1].scale as i32;
                shift_ok(acc - s_out)?;
                if let Some(bias) = ins.get(2) {
                    if broadcast_shapes(&node.shape, bias.shape).as_deref() != Some(&node.shape[..])
                    {
                        return Err("bias does not broadcast to the output".into());
                    }
                    if (bias.scale as i32) > acc {
                        return Err("bias scale exceeds the accumulator scale".into());
                    }
                    shift_ok(acc - bias.scale as i32)?;
                }
                Ok(())
            }
            Op::Conv2d { window, groups } => {
                arity(2, 3)?;
                let (x, w) = (ins[0].shape, ins[1].shape);
                if x.len() != 4 || w.len() != 4 {
                    return Err("Conv2d takes NCHW data and OIHW weights".into());
                }
                let g = *groups;
                if g == 0 || x[1] % g != 0 || w[0] % g != 0 || w[1] != x[1] / g {
                    return Err("channel counts do not match groups".into());
                }
                if [w[2], w[3]] != window.kernel {
                    return Err("weight kernel size differs from the window".into());
                }
                let (oh, ow) = window
                    .output_hw(x[2], x[3])
                    .ok_or("window does not fit the input")?;
                same_shape(&[x[0], w[0], oh, ow])?;
                let acc = ins[0].scale as i32 + ins[1].scale as i32;
                shift_ok(acc - s_out)?;
                if let Some(bias) = ins.get(2) {
                    if bias.shape != [w[0]] {
                        return Err("bias must have one element per output channel".into());
                    }
                    if (bias.scale as i32) > acc {
                        return Err("bias scale exceeds the accumulator scale".into());
                    }
                    shift_ok(acc - bias.scale as i32)?;
                }
                Ok(())
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => {
                arity(2, 2)?;
                let shape = broadcast_shapes(ins[0].shape, ins[1].shape)
                    .ok_or("operands do not broadcast")?;
                same_shape(&shape)?;
                let (sa, sb) = (ins[0].scale as i32, ins[1].scale as i32);
                match node.op {
                    Op::Mul => shift_ok(sa + sb - s_out),
                    Op::Div => shift_ok(s_out + sb - sa),
                    _ => {
                        shift_ok(sa - sb)?;
                        shift_ok(sa.max(sb) - s_out)
                    }
                }
            }
            Op::Clamp { lo, hi } => {
                arity(1, 1)?;
                same_shape(ins[0].shape)?;
                if lo > hi {
                    return Err("clamp bounds are reversed".into());
                }
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::LeakyRelu { alpha_scale, .. } => {
                arity(1, 1)?;
                same_shape(ins[0].shape)?;
                shift_ok(ins[0].scale as i32 - s_out)?;
                shift_ok(ins[0].scale as i32 + *alpha_scale as i32 - s_out)
            }
            Op::Lookup { shift, .. } => {
                arity(2, 2)?;
                same_shape(ins[0].shape)?;
                shift_ok(*shift)?;
                let t = self
                    .const_of(node.inputs[1])
                    .ok_or("the table must be a constant")?;
                if t.shape.len() != 1 || t.data.is_empty() {
                    return Err("the table must be a non-empty vector".into());
                }
                if t.scale != node.scale {
                    return Err("output scale must equal the table's scale".into());
                }
                Ok(())
            }
            Op::Rescale | Op::Sqrt | Op::Recip | Op::Rsqrt => {
                arity(1, 1)?;
                same_shape(ins[0].shape)?;
                let si = ins[0].scale as i32;
                match node.op {
                    Op::Rescale => shift_ok(si - s_out),
                    Op::Sqrt => shift_ok(2 * s_out - si),
                    Op::Recip => shift_ok(s_out + si),
                    // 2^(2 s_out + s_in) / x stays far inside i128 up to 2^96
                    _ if (2 * s_out + si).abs() > 96 => {
                        Err(format!("rsqrt shift {} outside ±96", 2 * s_out + si))
                    }
                    _ => Ok(()),
                }
            }
            Op::Reduce { axes, .. } => {
                arity(1, 1)?;
                let x = ins[0].shape;
                if axes.is_empty()
                    || axes.windows(2).any(|w| w[0] >= w[1])
                    || axes.iter().any(|&a| a as usize >= x.len())
                {
                    return Err(
                        "reduce axes must be strictly increasing and within the rank".into(),
                    );
                }
                let shape: Vec<u32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if axes.contains(&(i as u32)) { 1 } else { d })
                    .collect();
                same_shape(&shape)?;
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Softmax { axis, shift, .. } => {
                arity(2, 2)?;
                same_shape(ins[0].shape)?;
                if *axis as usize >= node.shape.len() {
                    return Err("axis out of range".into());
                }
                shift_ok(*shift)?;
                let t = self
                    .const_of(node.inputs[1])
                    .ok_or("the exp table must be a constant")?;
                if t.shape.len() != 1 || t.data.is_empty() {
                    return Err("the exp table must be a non-empty vector".into());
                }
                if t.data.iter().any(|&e| e < 0) {
                    return Err("exp table entries must be non-negative".into());
                }
                if !(0..=30).contains(&node.scale) {
                    return Err("softmax output scale must be in 0..=30".into());
                }
                Ok(())
            }
            Op::MaxPool2d { window } | Op::AvgPool2d { window, .. } => {
                arity(1, 1)?;
                let x = ins[0].shape;
                if x.len() != 4 {
                    return Err("pooling takes NCHW data".into());
                }
                let (oh, ow) = window
                    .output_hw(x[2], x[3])
                    .ok_or("window does not fit the input")?;
                same_shape(&[x[0], x[1], oh, ow])?;
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Reshape => {
                arity(1, 1)?;
                if numel(ins[0].shape) != numel(&node.shape) {
                    return Err("reshape changes the element count".into());
                }
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Transpose { perm } => {
                arity(1, 1)?;
                let x = ins[0].shape;
                let mut seen = vec![false; x.len()];
                if perm.len() != x.len() {
                    return Err("permutation length differs from rank".into());
                }
                for &p in perm {
                    let p = p as usize;
                    if p >= x.len() || seen[p] {
                        return Err("not a permutation".into());
                    }
                    seen[p] = true;
                }
                let shape: Vec<u32> = perm.iter().map(|&p| x[p as usize]).collect();
                same_shape(&shape)?;
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Concat { axis } => {
                arity(1, 64)?;
                let ax = *axis as usize;
                let r = ins[0].shape.len();
                if ax >= r {
                    return Err("axis out of range".into());
                }
                let mut shape = ins[0].shape.to_vec();
                shape[ax] = 0;
                for i in ins {
                    if i.shape.len() != r
                        || i.shape
                            .iter()
                            .enumerate()
                            .any(|(k, &d)| k != ax && d != ins[0].shape[k])
                    {
                        return Err("inputs differ outside the concatenation axis".into());
                    }
                    shape[ax] = shape[ax].checked_add(i.shape[ax]).ok_or("too large")?;
                    shift_ok(i.scale as i32 - s_out)?;
                }
                same_shape(&shape)
            }
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => {
                arity(1, 1)?;
                let ax = *axis as usize;
                let x = ins[0].shape;
                if ax >= x.len() || *step == 0 || start > end || *end > x[ax] {
                    return Err("slice bounds out of range".into());
                }
                let mut shape = x.to_vec();
                shape[ax] = (end - start).div_ceil(*step);
                same_shape(&shape)?;
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Gather { axis } => {
                arity(2, 2)?;
                let ax = *axis as usize;
                let (d, i) = (ins[0].shape, ins[1].shape);
                if ax >= d.len() {
                    return Err("axis out of range".into());
                }
                if ins[1].scale != 0 {
                    return Err("indices must have scale 0".into());
                }
                let shape: Vec<u32> = d[..ax]
                    .iter()
                    .chain(i.iter())
                    .chain(d[ax + 1..].iter())
                    .copied()
                    .collect();
                same_shape(&shape)?;
                shift_ok(ins[0].scale as i32 - s_out)
            }
            Op::Broadcast => {
                arity(1, 1)?;
                if broadcast_shapes(ins[0].shape, &node.shape).as_deref() != Some(&node.shape[..]) {
                    return Err("input does not broadcast to the output shape".into());
                }
                shift_ok(ins[0].scale as i32 - s_out)
            }
        }
    }
}
