//! Import: ONNX → tract (load, type, declutter) → [`FGraph`]. Every tract op that reaches this point is
//! either lowered to Verity ops or rejected with an error naming the op and the node.

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};
use tract_onnx::tract_hir::infer::Factoid;
use verity_engine::ir::{broadcast_shapes, InputKind, Op, ReduceKind, Window};

use crate::fgraph::{FConst, FData, FGraph, FInput, FNode, FOp, Func, IntRule, SharedF32, Step};
use crate::CompileError;

mod families;
pub use families::{MASK_FILL, MASK_MAGNITUDE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    In(usize),
    C(usize),
    N(usize),
}

struct Builder<'a> {
    model: &'a TypedModel,
    inputs: Vec<FInput>,
    consts: Vec<FConst>,
    nodes: Vec<(FNode, Vec<Ref>)>,
    map: HashMap<OutletId, Ref>,
    /// Constants that held mask fills (clamped at import, see [`MASK_MAGNITUDE`]).
    mask_fills: Vec<Ref>,
}

fn unsupported(node: &TypedNode, why: impl std::fmt::Display) -> CompileError {
    CompileError::Unsupported {
        op: node.op.name().to_string(),
        node: node.name.clone(),
        why: why.to_string(),
    }
}

fn concrete(fact: &TypedFact, node: &TypedNode) -> Result<Vec<u32>, CompileError> {
    let s = fact
        .shape
        .as_concrete()
        .ok_or_else(|| CompileError::DynamicShape {
            node: node.name.clone(),
            shape: format!("{:?}", fact.shape),
        })?;
    s.iter()
        .map(|&d| u32::try_from(d).map_err(|_| unsupported(node, "dimension too large")))
        .collect()
}

fn tensor_f64(t: &Tensor) -> TractResult<Vec<f64>> {
    let c = t.cast_to::<f64>()?;
    Ok(c.to_plain_array_view::<f64>()?.iter().copied().collect())
}

impl<'a> Builder<'a> {
    fn konst(&mut self, shape: Vec<u32>, data: impl Into<FData>, int: bool) -> Ref {
        let data = data.into();
        self.consts.push(FConst { shape, data, int });
        Ref::C(self.consts.len() - 1)
    }

    fn push(
        &mut self,
        name: String,
        origin: &str,
        op: FOp,
        inputs: Vec<Ref>,
        shape: Vec<u32>,
    ) -> Ref {
        let node = FNode {
            name,
            origin: origin.to_string(),
            op,
            inputs: vec![],
            shape,
        };
        self.nodes.push((node, inputs));
        Ref::N(self.nodes.len() - 1)
    }

    fn shape_of(&self, r: Ref) -> Vec<u32> {
        match r {
            Ref::In(i) => self.inputs[i].shape.clone(),
            Ref::C(i) => self.consts[i].shape.clone(),
            Ref::N(i) => self.nodes[i].0.shape.clone(),
        }
    }

    fn const_data(&self, r: Ref) -> Option<&FConst> {
        match r {
            Ref::C(i) => self.consts.get(i),
            _ => None,
        }
    }

    /// Whether `r` holds integers (see [`FGraph::is_int`]).
    fn is_int_ref(&self, r: Ref) -> bool {
        match r {
            Ref::In(i) => self.inputs[i].kind == InputKind::Int,
            Ref::C(i) => self.consts[i].int,
            Ref::N(i) => {
                let (n, ins) = &self.nodes[i];
                match n.op.int_rule() {
                    IntRule::Always => true,
                    IntRule::AllInputs => ins.iter().all(|&r| self.is_int_ref(r)),
                    IntRule::FirstInput => self.is_int_ref(ins[0]),
                    IntRule::Never => false,
                }
            }
        }
    }

    /// The constant value of `r`: a constant, or a node computed from constants alone (tract leaves some
    /// such chains unfolded, e.g. a reshaped bias), evaluated here with the float evaluator.
    fn fold(&self, r: Ref) -> Option<FConst> {
        match r {
            Ref::C(i) => self.consts.get(i).cloned(),
            Ref::In(_) => None,
            Ref::N(i) => {
                let (node, ins) = self.nodes.get(i)?;
                let consts: Vec<FConst> =
                    ins.iter().map(|&r| self.fold(r)).collect::<Option<_>>()?;
                let int = consts.iter().all(|c| c.int);
                let mut n = node.clone();
                n.inputs = (0..consts.len() as u32).collect();
                let y = consts.len() as u32;
                let g = FGraph {
                    inputs: vec![],
                    consts,
                    nodes: vec![n],
                    outputs: vec![(String::new(), y)],
                };
                let data = g.eval_visit(&[], |_, _| {}).pop()?;
                Some(FConst {
                    shape: node.shape.clone(),
                    data: data.into(),
                    int,
                })
            }
        }
    }

    /// The value for a tract outlet, materializing constants on first use.
    fn get(&mut self, outlet: OutletId, user: &TypedNode) -> Result<Ref, CompileError> {
        if let Some(r) = self.map.get(&outlet) {
            return Ok(*r);
        }
        let fact = self
            .model
            .outlet_fact(outlet)
            .map_err(|e| CompileError::Tract(e.to_string()))?;
        let Some(k) = fact.konst.clone() else {
            return Err(unsupported(
                user,
                format!("input {outlet:?} was never computed"),
            ));
        };
        let shape: Vec<u32> = k.shape().iter().map(|&d| d as u32).collect();
        let int = k.datum_type().is_integer() || k.datum_type() == DatumType::Bool;
        // an f32 tensor is shared with tract (the model's weights are held once) unless it holds
        // attention-mask fills to clamp
        if let Some(shared) = SharedF32::new(k.clone()) {
            let fill = |v: &f32| !v.is_nan() && v.abs() as f64 >= families::MASK_MAGNITUDE;
            if !shared.slice().iter().any(fill) {
                let r = self.konst(shape, FData::F32(shared), false);
                self.map.insert(outlet, r);
                return Ok(r);
            }
        }
        let mut data = tensor_f64(&k).map_err(|e| {
            unsupported(user, format!("constant of type {:?}: {e}", k.datum_type()))
        })?;
        let fills = !int && families::clamp_mask_fills(&mut data);
        let r = self.konst(shape, data, int);
        if fills {
            self.mask_fills.push(r);
        }
        self.map.insert(outlet, r);
        Ok(r)
    }

    fn lower_node(&mut self, id: usize) -> Result<(), CompileError> {
        let model = self.model;
        let node = model.node(id);
        let facts = model
            .node_output_facts(id)
            .map_err(|e| CompileError::Tract(e.to_string()))?;
        if node.op_is::<ops::source::TypedSource>() || node.op_is::<ops::konst::Const>() {
            return Ok(());
        }
        // Constant-folded outputs are materialized on use.
        if facts.iter().all(|f| f.konst.is_some()) {
            return Ok(());
        }
        if let Some(t) = node.op.downcast_ref::<ops::array::Topk>() {
            let x = self.get(node.inputs[0], node)?;
            let k = self.get(node.inputs[1], node)?;
            let (v, i) = self.top_k(node, t.axis, t.largest, x, k)?;
            self.map.insert(OutletId::new(id, 0), v);
            self.map.insert(OutletId::new(id, 1), i);
            return Ok(());
        }
        if facts.len() != 1 {
            return Err(unsupported(
                node,
                "ops with several outputs are not supported",
            ));
        }
        let out_shape = concrete(facts[0], node)?;
        let origin = node.op.name().to_string();
        let name = node.name.clone();
        let mut ins = Vec::with_capacity(node.inputs.len());
        for &i in &node.inputs {
            ins.push(self.get(i, node)?);
        }
        let op = &node.op;
        let canon = |op: Op| FOp::Canon(op);
        let result: Ref = if let Some(e) = op.downcast_ref::<ops::einsum::EinSum>() {
            if e.q_params.is_some() || ins.len() != 2 {
                return Err(unsupported(
                    node,
                    "only float two-operand EinSum is supported",
                ));
            }
            let (ins_s, outs_s) = e.axes.to_strs();
            // relabel characters to small integers in order of appearance (deterministic)
            let mut table: Vec<char> = Vec::new();
            let mut lab = |s: &str| -> Vec<u8> {
                s.chars()
                    .map(|c| {
                        let p = table.iter().position(|&x| x == c).unwrap_or_else(|| {
                            table.push(c);
                            table.len() - 1
                        });
                        p as u8
                    })
                    .collect()
            };
            let (a, b, out) = (lab(&ins_s[0]), lab(&ins_s[1]), lab(&outs_s[0]));
            self.push(
                name,
                &origin,
                canon(Op::EinSum { a, b, out }),
                ins,
                out_shape,
            )
        } else if let Some(c) = op.downcast_ref::<Conv>() {
            if c.q_params.is_some() {
                return Err(unsupported(node, "quantized convolution"));
            }
            if c.kernel_fmt != KernelFormat::OIHW {
                return Err(unsupported(
                    node,
                    format!("kernel format {:?}", c.kernel_fmt),
                ));
            }
            let o = c.pool_spec.output_channels as u32;
            let mut extra = vec![];
            // a bias that varies over positions too (tract moves the bias of a convolution into the next
            // one through its padding) is added after the convolution
            let mut added = None;
            if let Some(&b) = ins.get(2) {
                match self.fold(b) {
                    Some(c) if c.data.iter().all(|v| v == 0.0) => {}
                    Some(c) if c.data.len() == 1 => {
                        extra.push(self.konst(vec![o], vec![c.data.get(0); o as usize], false))
                    }
                    Some(c)
                        if c.data.len() == o as usize
                            && c.shape.iter().filter(|&&d| d != 1).count() <= 1 =>
                    {
                        extra.push(self.konst(vec![o], c.data, false))
                    }
                    Some(c)
                        if broadcast_shapes(&out_shape, &c.shape).as_deref()
                            == Some(&out_shape[..]) =>
                    {
                        added = Some(self.konst(c.shape, c.data, false))
                    }
                    _ => {
                        return Err(unsupported(
                            node,
                            "convolution bias must be a constant that broadcasts to the output",
                        ))
                    }
                }
            }
            let groups = c.group as u32;
            let conv = self.windowed(
                node,
                &c.pool_spec,
                ins[0],
                Some(ins[1]),
                extra,
                out_shape.clone(),
                false,
                move |window| Op::Conv2d { window, groups },
            )?;
            match added {
                Some(bias) => self.push(
                    format!("{}/bias", node.name),
                    &origin,
                    canon(Op::Add),
                    vec![conv, bias],
                    out_shape,
                ),
                None => conv,
            }
        } else if let Some(p) = op.downcast_ref::<MaxPool>() {
            if p.with_index_outputs.is_some() {
                return Err(unsupported(node, "MaxPool with index outputs"));
            }
            self.windowed(
                node,
                &p.pool_spec,
                ins[0],
                None,
                vec![],
                out_shape,
                false,
                |window| Op::MaxPool2d { window },
            )?
        } else if let Some(p) = op.downcast_ref::<SumPool>() {
            if !p.normalize {
                return Err(unsupported(node, "un-normalized sum pooling"));
            }
            let cip = p.count_include_pad;
            self.windowed(
                node,
                &p.pool_spec,
                ins[0],
                None,
                vec![],
                out_shape,
                cip,
                move |window| Op::AvgPool2d {
                    window,
                    count_include_pad: cip,
                },
            )?
        } else if let Some(b) = op.downcast_ref::<ops::binary::TypedBinOp>() {
            self.lower_binary(node, b.0.name(), ins, out_shape)?
        } else if let Some(e) = op.downcast_ref::<ops::element_wise::ElementWiseOp>() {
            let x = ins[0];
            let mini = e.0.name();
            match mini.as_ref() {
                "Sigmoid" => self.push(name, &origin, FOp::Func(Func::Sigmoid), vec![x], out_shape),
                "Tanh" => self.push(name, &origin, FOp::Func(Func::Tanh), vec![x], out_shape),
                "Erf" => self.push(name, &origin, FOp::Func(Func::Erf), vec![x], out_shape),
                "Exp" => self.push(name, &origin, FOp::Func(Func::Exp), vec![x], out_shape),
                "GeluExact" => self.gated(name, &origin, x, Func::NormCdf, "cdf", out_shape),
                "Silu" => self.gated(name, &origin, x, Func::Sigmoid, "sigmoid", out_shape),
                "LeakyRelu" => {
                    let l =
                        e.0.downcast_ref::<ops::nn::LeakyRelu>()
                            .ok_or_else(|| unsupported(node, "unexpected LeakyRelu form"))?;
                    self.push(
                        name,
                        &origin,
                        FOp::LeakyRelu {
                            alpha: l.alpha as f64,
                        },
                        vec![x],
                        out_shape,
                    )
                }
                "Recip" => self.push(name, &origin, canon(Op::Recip), vec![x], out_shape),
                "Rsqrt" => self.push(name, &origin, canon(Op::Rsqrt), vec![x], out_shape),
                "Sqrt" => self.push(name, &origin, canon(Op::Sqrt), vec![x], out_shape),
                "Square" => self.push(name, &origin, canon(Op::Mul), vec![x, x], out_shape),
                "Neg" => {
                    let m1 = self.konst(vec![], vec![-1.0], false);
                    self.push(name, &origin, canon(Op::Mul), vec![x, m1], out_shape)
                }
                "Abs" => {
                    let m1 = self.konst(vec![], vec![-1.0], false);
                    let neg = self.push(
                        format!("{name}.neg"),
                        &origin,
                        canon(Op::Mul),
                        vec![x, m1],
                        out_shape.clone(),
                    );
                    self.push(name, &origin, canon(Op::Max), vec![x, neg], out_shape)
                }
                "HardSwish" => {
                    // x · clamp(x + 3, 0, 6) / 6
                    let three = self.konst(vec![], vec![3.0], false);
                    let t = self.push(
                        format!("{name}.shift"),
                        &origin,
                        canon(Op::Add),
                        vec![x, three],
                        out_shape.clone(),
                    );
                    let c = self.push(
                        format!("{name}.relu6"),
                        &origin,
                        FOp::Clamp { lo: 0.0, hi: 6.0 },
                        vec![t],
                        out_shape.clone(),
                    );
                    let m = self.push(
                        format!("{name}.gate"),
                        &origin,
                        canon(Op::Mul),
                        vec![x, c],
                        out_shape.clone(),
                    );
                    let sixth = self.konst(vec![], vec![1.0 / 6.0], false);
                    self.push(name, &origin, canon(Op::Mul), vec![m, sixth], out_shape)
                }
                "GeluApproximate" => {
                    let g =
                        e.0.downcast_ref::<ops::nn::GeluApproximate>()
                            .ok_or_else(|| unsupported(node, "unexpected GeluApproximate form"))?;
                    let f = if g.fast_impl {
                        Func::TanhCdfFast
                    } else {
                        Func::TanhCdf
                    };
                    self.gated(name, &origin, x, f, "cdf", out_shape)
                }
                "PowConst" => {
                    let p =
                        e.0.downcast_ref::<ops::math::PowConst>()
                            .ok_or_else(|| unsupported(node, "unexpected PowConst form"))?;
                    self.lower_pow(node, x, p.exponent as f64, out_shape)?
                }
                "Ln" => self.ln(node, x, out_shape),
                "Sin" => self.push(name, &origin, FOp::Func(Func::Sin), vec![x], out_shape),
                "Cos" => self.push(name, &origin, FOp::Func(Func::Cos), vec![x], out_shape),
                "Floor" => self.push(name, &origin, FOp::Func(Func::Floor), vec![x], out_shape),
                "Ceil" => self.push(name, &origin, FOp::Func(Func::Ceil), vec![x], out_shape),
                "RoundHalfToEven" => self.push(
                    name,
                    &origin,
                    FOp::Func(Func::RoundEven),
                    vec![x],
                    out_shape,
                ),
                "Sign" => self.push(name, &origin, FOp::Step(Step::Sign), vec![x], out_shape),
                "Not" => self.not(node, x, out_shape),
                // quantized values are finite
                "IsNan" | "IsInf" => self.zeros(node, out_shape),
                other => return Err(unsupported(node, format!("element-wise function {other}"))),
            }
        } else if let Some(s) = op.downcast_ref::<Softmax>() {
            if s.kind != SoftmaxKind::Softmax || s.axes.len() != 1 || s.quant_output_dt.is_some() {
                return Err(unsupported(node, "only float softmax over one axis"));
            }
            self.push(
                name,
                &origin,
                FOp::Softmax {
                    axis: s.axes[0] as u32,
                },
                ins,
                out_shape,
            )
        } else if let Some(r) = op.downcast_ref::<Reduce>() {
            let mut axes: Vec<u32> = r.axes.iter().map(|&a| a as u32).collect();
            axes.sort_unstable();
            axes.dedup();
            if axes.is_empty() {
                // reducing over no axis is the identity
                let r = self.push(name, &origin, canon(Op::Rescale), ins, out_shape);
                self.map.insert(OutletId::new(id, 0), r);
                return Ok(());
            }
            let kind = match r.reducer {
                Reducer::Sum => ReduceKind::Sum,
                Reducer::Max => ReduceKind::Max,
                Reducer::Min => ReduceKind::Min,
                Reducer::MeanOfSquares => {
                    let in_shape = self.shape_of(ins[0]);
                    let sq = self.push(
                        format!("{name}.square"),
                        &origin,
                        canon(Op::Mul),
                        vec![ins[0], ins[0]],
                        in_shape,
                    );
                    let r = self.push(
                        name,
                        &origin,
                        canon(Op::Reduce {
                            kind: ReduceKind::Mean,
                            axes,
                        }),
                        vec![sq],
                        out_shape,
                    );
                    self.map.insert(OutletId::new(id, 0), r);
                    return Ok(());
                }
                Reducer::ArgMax(last) | Reducer::ArgMin(last) => {
                    let max = matches!(r.reducer, Reducer::ArgMax(_));
                    let r = self.arg_extreme(node, ins[0], &axes, max, last, out_shape)?;
                    self.map.insert(OutletId::new(id, 0), r);
                    return Ok(());
                }
                other => return Err(unsupported(node, format!("reducer {other:?}"))),
            };
            self.push(
                name,
                &origin,
                canon(Op::Reduce { kind, axes }),
                ins,
                out_shape,
            )
        } else if let Some(r) = op.downcast_ref::<RmsNorm>() {
            // y = x / sqrt(mean(x^2 over axis) + eps)
            let x = ins[0];
            let in_shape = self.shape_of(x);
            let mut red = in_shape.clone();
            red[r.axis] = 1;
            let eps = tensor_f64(&r.eps).map_err(|e| unsupported(node, e))?;
            let sq = self.push(
                format!("{name}.square"),
                &origin,
                canon(Op::Mul),
                vec![x, x],
                in_shape.clone(),
            );
            let ms = self.push(
                format!("{name}.mean_sq"),
                &origin,
                canon(Op::Reduce {
                    kind: ReduceKind::Mean,
                    axes: vec![r.axis as u32],
                }),
                vec![sq],
                red.clone(),
            );
            let e = self.konst(vec![], vec![eps.first().copied().unwrap_or(0.0)], false);
            let me = self.push(
                format!("{name}.var_eps"),
                &origin,
                canon(Op::Add),
                vec![ms, e],
                red.clone(),
            );
            let rs = self.push(
                format!("{name}.rsqrt"),
                &origin,
                canon(Op::Rsqrt),
                vec![me],
                red,
            );
            self.push(name, &origin, canon(Op::Mul), vec![x, rs], out_shape)
        } else if let Some(a) = op.downcast_ref::<AxisOp>() {
            match a {
                AxisOp::Move(from, to) => {
                    let rank = out_shape.len();
                    let mut perm: Vec<u32> = (0..rank as u32).collect();
                    let moved = perm.remove(*from);
                    perm.insert(*to, moved);
                    self.push(name, &origin, canon(Op::Transpose { perm }), ins, out_shape)
                }
                _ => self.push(name, &origin, canon(Op::Reshape), ins, out_shape),
            }
        } else if let Some(c) = op.downcast_ref::<ops::array::TypedConcat>() {
            self.push(
                name,
                &origin,
                canon(Op::Concat {
                    axis: c.axis as u32,
                }),
                ins,
                out_shape,
            )
        } else if let Some(s) = op.downcast_ref::<ops::array::Slice>() {
            let (start, end) = (s.start.to_i64(), s.end.to_i64());
            let (Ok(start), Ok(end)) = (start, end) else {
                return Err(unsupported(node, "symbolic slice bounds"));
            };
            let op = Op::Slice {
                axis: s.axis as u32,
                start: start as u32,
                end: end as u32,
                step: 1,
            };
            self.push(name, &origin, canon(op), ins, out_shape)
        } else if let Some(d) = op.downcast_ref::<ops::downsample::Downsample>() {
            if d.stride <= 0 {
                return Err(unsupported(node, "negative-stride slicing"));
            }
            let dim = self.shape_of(ins[0])[d.axis];
            let op = Op::Slice {
                axis: d.axis as u32,
                start: d.modulo as u32,
                end: dim,
                step: d.stride as u32,
            };
            self.push(name, &origin, canon(op), ins, out_shape)
        } else if let Some(g) = op.downcast_ref::<ops::array::Gather>() {
            if !self.is_int_ref(ins[1]) {
                return Err(unsupported(node, "gather indices must be integers"));
            }
            if let Some(r) = self.one_hot_gather(node, ins[0], ins[1], g.axis, &out_shape) {
                self.map.insert(OutletId::new(id, 0), r);
                return Ok(());
            }
            self.push(
                name,
                &origin,
                canon(Op::Gather {
                    axis: g.axis as u32,
                }),
                ins,
                out_shape,
            )
        } else if op.downcast_ref::<ops::array::MultiBroadcastTo>().is_some() {
            self.push(name, &origin, canon(Op::Broadcast), ins, out_shape)
        } else if let Some(c) = op.downcast_ref::<ops::cast::Cast>() {
            if c.to == DatumType::Bool {
                let r = self.push(name, &origin, FOp::Step(Step::NonZero), ins, out_shape);
                self.map.insert(OutletId::new(id, 0), r);
                return Ok(());
            }
            // tract types some integer tensors as symbolic dimensions (TDim): integers all the same
            let int_to = c.to.is_integer() || c.to == DatumType::TDim;
            if !(c.to.is_float() || int_to) {
                return Err(unsupported(node, format!("cast to {:?}", c.to)));
            }
            let from = model
                .outlet_fact(node.inputs[0])
                .map_err(|e| CompileError::Tract(e.to_string()))?
                .datum_type;
            if from.is_float() && int_to {
                return Err(unsupported(node, "casting real values to integers"));
            }
            self.push(name, &origin, canon(Op::Rescale), ins, out_shape)
        } else if op.downcast_ref::<ops::identity::Identity>().is_some() {
            ins[0]
        } else if op.downcast_ref::<ops::logic::Iff>().is_some() {
            self.select(node, &ins, out_shape)?
        } else if let Some(p) = op.downcast_ref::<ops::array::Pad>() {
            self.pad(node, p, ins[0], out_shape)?
        } else if let Some(t) = op.downcast_ref::<ops::array::Tile>() {
            self.tile(node, t, ins[0], out_shape)?
        } else if let Some(c) = op.downcast_ref::<ops::array::CumSum>() {
            self.cumsum(node, c, ins[0], out_shape)?
        } else if let Some(g) = op.downcast_ref::<ops::array::GatherElements>() {
            self.gather_elements(node, g, ins[0], ins[1], out_shape)?
        } else if let Some(t) = op.downcast_ref::<ops::array::Trilu>() {
            self.trilu(node, t, &ins, out_shape)?
        } else if let Some(u) = op.downcast_ref::<ops::nn::NearestUpsample>() {
            self.nearest_upsample(node, u, ins[0], out_shape)?
        } else if let Some(r) = op.downcast_ref::<ops::nn::Resize>() {
            self.resize(node, r, &ins, out_shape)?
        } else if let Some(d) = op.downcast_ref::<ops::cnn::Deconv>() {
            self.deconv(node, d, &ins, out_shape)?
        } else if let Some(l) = op.downcast_ref::<tract_onnx_opl::lrn::Lrn>() {
            let (a, b, k) = (l.alpha as f64, l.beta as f64, l.bias as f64);
            self.lrn(node, a, b, k, l.size, ins[0], out_shape)?
        } else {
            return Err(unsupported(node, "no canonical lowering for this op"));
        };
        self.map.insert(OutletId::new(id, 0), result);
        Ok(())
    }

    fn lower_binary(
        &mut self,
        node: &TypedNode,
        mini: &str,
        ins: Vec<Ref>,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let name = node.name.clone();
        let origin = node.op.name().to_string();
        let scalar = |b: &Builder<'_>, r: Ref| -> Option<f64> {
            let c = b.const_data(r)?;
            let first = c.data.first()?;
            c.data.iter().all(|v| v == first).then_some(first)
        };
        let (x, y) = (ins[0], ins[1]);
        Ok(match mini {
            "Add" => {
                if let Some(fused) = self.fuse_bias(node, x, y, &out_shape)? {
                    return Ok(fused);
                }
                self.push(name, &origin, FOp::Canon(Op::Add), ins, out_shape)
            }
            "Sub" => {
                if let Some(alpha) = self.celu_alpha(node, x) {
                    return Err(unsupported(
                        node,
                        format!(
                            "Celu with alpha {alpha}: the ONNX front end's expansion drops the \
                             factor alpha of the negative part (only alpha = 1 is exact)"
                        ),
                    ));
                }
                self.push(name, &origin, FOp::Canon(Op::Sub), ins, out_shape)
            }
            "Mul" => self.push(name, &origin, FOp::Canon(Op::Mul), ins, out_shape),
            // tract's flipped subtraction: y - x
            "SubF" => self.push(name, &origin, FOp::Canon(Op::Sub), vec![y, x], out_shape),
            "Pow" => match scalar(self, y) {
                Some(e) if self.shape_of(x) == out_shape => {
                    self.lower_pow(node, x, e, out_shape)?
                }
                _ => return Err(unsupported(node, "Pow needs a constant, uniform exponent")),
            },
            "Div" => match self
                .const_data(y)
                .map(|c| (c.shape.clone(), c.data.to_f64().into_owned()))
            {
                // division by a constant is multiplication by its reciprocal
                Some((s, d)) if d.iter().all(|&v| v != 0.0) => {
                    let r = self.konst(s, d.iter().map(|v| 1.0 / v).collect::<Vec<_>>(), false);
                    self.push(name, &origin, FOp::Canon(Op::Mul), vec![x, r], out_shape)
                }
                _ => self.push(name, &origin, FOp::Canon(Op::Div), ins, out_shape),
            },
            "Max" | "Min" => {
                // max/min against a uniform constant is a clamp (Relu, Clip)
                let (v, c, k) = match (scalar(self, y), scalar(self, x)) {
                    (Some(c), _) if self.shape_of(x) == out_shape => (x, Some(c), y),
                    (_, Some(c)) if self.shape_of(y) == out_shape => (y, Some(c), x),
                    _ => (x, None, y),
                };
                // a clip at a mask fill (finfo.min / max, clamped at import) bounds nothing
                let c = match c {
                    Some(c) if self.mask_fills.contains(&k) => Some(f64::INFINITY.copysign(c)),
                    c => c,
                };
                match (c, mini) {
                    (Some(c), "Max") => self.push(
                        name,
                        &origin,
                        FOp::Clamp {
                            lo: c,
                            hi: f64::INFINITY,
                        },
                        vec![v],
                        out_shape,
                    ),
                    (Some(c), _) => self.push(
                        name,
                        &origin,
                        FOp::Clamp {
                            lo: f64::NEG_INFINITY,
                            hi: c,
                        },
                        vec![v],
                        out_shape,
                    ),
                    (None, "Max") => self.push(name, &origin, FOp::Canon(Op::Max), ins, out_shape),
                    (None, _) => self.push(name, &origin, FOp::Canon(Op::Min), ins, out_shape),
                }
            }
            "LT" => self.test_of_difference(node, Step::Positive, y, x, out_shape),
            "GT" => self.test_of_difference(node, Step::Positive, x, y, out_shape),
            "LTE" => self.test_of_difference(node, Step::NonNegative, y, x, out_shape),
            "GTE" => self.test_of_difference(node, Step::NonNegative, x, y, out_shape),
            "Eq" => self.test_of_difference(node, Step::Zero, x, y, out_shape),
            "NE" | "Xor" => self.test_of_difference(node, Step::NonZero, x, y, out_shape),
            // booleans are 0/1
            "And" => self.push(name, &origin, FOp::Canon(Op::Mul), ins, out_shape),
            "Or" => self.push(name, &origin, FOp::Canon(Op::Max), ins, out_shape),
            other => return Err(unsupported(node, format!("binary operator {other}"))),
        })
    }

    /// `x · f(x)` (GELU, SiLU): a table for `f`, then a product.
    fn gated(
        &mut self,
        name: String,
        origin: &str,
        x: Ref,
        f: Func,
        gate: &str,
        out_shape: Vec<u32>,
    ) -> Ref {
        let gate = self.push(
            format!("{name}.{gate}"),
            origin,
            FOp::Func(f),
            vec![x],
            out_shape.clone(),
        );
        self.push(name, origin, FOp::Canon(Op::Mul), vec![x, gate], out_shape)
    }

    /// `x^e` for the exponents with an exact canonical form.
    fn lower_pow(
        &mut self,
        node: &TypedNode,
        x: Ref,
        e: f64,
        out_shape: Vec<u32>,
    ) -> Result<Ref, CompileError> {
        let name = node.name.clone();
        let origin = node.op.name().to_string();
        let c = |op: Op| FOp::Canon(op);
        Ok(if e == 1.0 {
            self.push(name, &origin, c(Op::Rescale), vec![x], out_shape)
        } else if e == 2.0 {
            self.push(name, &origin, c(Op::Mul), vec![x, x], out_shape)
        } else if e == 3.0 {
            let sq = self.push(
                format!("{name}.square"),
                &origin,
                c(Op::Mul),
                vec![x, x],
                out_shape.clone(),
            );
            self.push(name, &origin, c(Op::Mul), vec![sq, x], out_shape)
        } else if e == 0.5 {
            self.push(name, &origin, c(Op::Sqrt), vec![x], out_shape)
        } else if e == -0.5 {
            self.push(name, &origin, c(Op::Rsqrt), vec![x], out_shape)
        } else if e == -1.0 {
            self.push(name, &origin, c(Op::Recip), vec![x], out_shape)
        } else {
            return Err(unsupported(
                node,
                format!("power with exponent {e} (supported: -1, -0.5, 0.5, 1, 2, 3)"),
            ));
        })
    }

    /// `EinSum(a, b) + const` (or `Conv2d + const`) where the product has no other consumer becomes the
    /// product with a bias input: the bias is then added in the exact accumulator.
    fn fuse_bias(
        &mut self,
        node: &TypedNode,
        x: Ref,
        y: Ref,
        out_shape: &[u32],
    ) -> Result<Option<Ref>, CompileError> {
        let model = self.model;
        for (prod, bias) in [(x, y), (y, x)] {
            let (Ref::N(pi), Some(bc)) = (prod, self.const_data(bias).cloned()) else {
                continue;
            };
            let (pnode, pins) = &self.nodes[pi];
            if pins.len() != 2 || pnode.shape != out_shape {
                continue;
            }
            // the product must be computed by the tract node feeding this Add, and feed nothing else
            let Some(&outlet) = node.inputs.iter().find(|o| self.map.get(o) == Some(&prod)) else {
                continue;
            };
            let succ = model.outlet_successors(outlet);
            let is_output = model
                .output_outlets()
                .map_err(|e| CompileError::Tract(e.to_string()))?
                .contains(&outlet);
            let direct = model.node(outlet.node).outputs.len() == 1
                && !model.node(outlet.node).op_is::<ops::identity::Identity>()
                && matches!(&pnode.op, FOp::Canon(Op::EinSum { .. } | Op::Conv2d { .. }));
            if succ.len() != 1 || succ[0].node != node.id || is_output || !direct {
                continue;
            }
            let bias_ref = match &pnode.op {
                FOp::Canon(Op::EinSum { .. }) => {
                    let ok = verity_engine::ir::broadcast_shapes(out_shape, &bc.shape).as_deref()
                        == Some(out_shape);
                    if !ok {
                        continue;
                    }
                    bias
                }
                FOp::Canon(Op::Conv2d { .. }) => {
                    // a per-channel constant shaped like [1, O, 1, 1] or [O, 1, 1]
                    let o = out_shape[1];
                    let r = bc.shape.len();
                    let per_channel = r >= 3
                        && bc.shape[r - 3] == o
                        && bc.shape[r - 2] == 1
                        && bc.shape[r - 1] == 1
                        && bc.shape[..r - 3].iter().all(|&d| d == 1);
                    if !per_channel {
                        continue;
                    }
                    self.konst(vec![o], bc.data.clone(), false)
                }
                _ => continue,
            };
            let (pnode, pins) = &mut self.nodes[pi];
            pins.push(bias_ref);
            pnode.name = node.name.clone();
            return Ok(Some(prod));
        }
        Ok(None)
    }

    /// Lower a convolution or pooling over 1 or 2 spatial axes (NCHW / NCL) to the 2-D canonical op:
    /// 1-D data is reshaped to height 1 and back. Ceil-mode outputs get extra bottom/right padding
    /// (ignored taps), except for average pooling that counts padding, whose divisor would differ.
    #[allow(clippy::too_many_arguments)]
    fn windowed(
        &mut self,
        node: &TypedNode,
        spec: &PoolSpec,
        x: Ref,
        weights: Option<Ref>,
        extra: Vec<Ref>,
        out_shape: Vec<u32>,
        counts_padding: bool,
        make: impl Fn(Window) -> Op,
    ) -> Result<Ref, CompileError> {
        let name = node.name.clone();
        let origin = node.op.name().to_string();
        let in_shape = self.shape_of(x);
        let rank = spec.kernel_shape.len();
        if spec.data_format == DataFormat::CHW {
            // tract drops a batch axis of 1: give it back around the window op
            let mut nchw = spec.clone();
            nchw.data_format = DataFormat::NCHW;
            let x4 = self.push(
                format!("{name}.batched"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![x],
                std::iter::once(1).chain(in_shape.iter().copied()).collect(),
            );
            let out4: Vec<u32> = std::iter::once(1)
                .chain(out_shape.iter().copied())
                .collect();
            let y4 = self.windowed(node, &nchw, x4, weights, extra, out4, counts_padding, make)?;
            return Ok(self.push(
                format!("{name}.unbatched"),
                &origin,
                FOp::Canon(Op::Reshape),
                vec![y4],
                out_shape,
            ));
        }
        if spec.data_format == DataFormat::NCHW
            && rank == 3
            && in_shape.len() == 5
            && out_shape.len() == 5
        {
            let op = make(Window {
                kernel: [1, 1],
                stride: [1, 1],
                dilation: [1, 1],
                pads: [0; 4],
            });
            return self.windowed_3d(node, spec, x, weights, extra, out_shape, op);
        }
        if spec.data_format != DataFormat::NCHW
            || !(rank == 1 || rank == 2)
            || in_shape.len() != rank + 2
            || out_shape.len() != rank + 2
        {
            return Err(unsupported(
                node,
                "only 1-D, 2-D and 3-D windows over channels-first data",
            ));
        }
        let mut k: Vec<usize> = spec.kernel_shape.to_vec();
        let mut d: Vec<usize> = spec
            .dilations
            .as_ref()
            .map_or(vec![1; rank], |d| d.to_vec());
        let st: Vec<usize> = spec.strides.as_ref().map_or(vec![1; rank], |s| s.to_vec());
        let spatial: Vec<usize> = in_shape[2..].iter().map(|&v| v as usize).collect();
        let pads = spec.padding.compute(&spatial, &k, &d, &st);
        let mut before: Vec<u32> = pads.iter().map(|p| p.pad_before as u32).collect();
        let mut after: Vec<u32> = pads.iter().map(|p| p.pad_after as u32).collect();
        // ceil mode: extend the padding after so the last (partial) window exists
        for ax in 0..rank {
            let span = (k[ax] - 1) * d[ax] + 1;
            let want = out_shape[2 + ax] as usize;
            let padded = spatial[ax] + before[ax] as usize + after[ax] as usize;
            let have = if padded >= span {
                (padded - span) / st[ax] + 1
            } else {
                0
            };
            if want > have {
                if counts_padding {
                    return Err(unsupported(
                        node,
                        "ceil-mode average pooling that counts padding",
                    ));
                }
                after[ax] += ((want - 1) * st[ax] + span - padded) as u32;
            }
        }
        let weights = weights.map(|w| {
            self.live_taps(
                w,
                (&spatial, &out_shape[2..]),
                (&mut k, &st, &mut d),
                (&mut before, &mut after),
            )
        });
        if rank == 1 {
            before.insert(0, 0);
            after.insert(0, 0);
        }
        let two = |v: &[usize]| -> [u32; 2] {
            if v.len() == 1 {
                [1, v[0] as u32]
            } else {
                [v[0] as u32, v[1] as u32]
            }
        };
        let window = Window {
            kernel: two(&k),
            stride: two(&st),
            dilation: two(&d),
            pads: [before[0], before[1], after[0], after[1]],
        };
        let op = FOp::Canon(make(window));
        if rank == 2 {
            let mut ins = vec![x];
            ins.extend(weights);
            ins.extend(extra);
            return Ok(self.push(name, &origin, op, ins, out_shape));
        }
        // 1-D: [N, C, L] -> [N, C, 1, L]
        let x4 = self.push(
            format!("{name}.as_2d"),
            &origin,
            FOp::Canon(Op::Reshape),
            vec![x],
            vec![in_shape[0], in_shape[1], 1, in_shape[2]],
        );
        let mut ins = vec![x4];
        if let Some(w) = weights {
            let ws = self.shape_of(w);
            let w4_shape = vec![ws[0], ws[1], 1, ws[2]];
            let w4 = match self.const_data(w).cloned() {
                Some(c) => self.konst(w4_shape, c.data, c.int),
                None => self.push(
                    format!("{name}.kernel_2d"),
                    &origin,
                    FOp::Canon(Op::Reshape),
                    vec![w],
                    w4_shape,
                ),
            };
            ins.push(w4);
        }
        ins.extend(extra);
        let y4 = self.push(
            format!("{name}.2d"),
            &origin,
            op,
            ins,
            vec![out_shape[0], out_shape[1], 1, out_shape[2]],
        );
        Ok(self.push(name, &origin, FOp::Canon(Op::Reshape), vec![y4], out_shape))
    }

    /// A convolution's constant kernel `w` (`[O, C/g, k…]`) without the taps at either end of a spatial
    /// axis that read only padding for every output (a dilated convolution over a map narrower than its
    /// dilation, as in atrous spatial pyramid pooling): the kernel is sliced to the taps that read the
    /// input somewhere, the padding before and after shrinks by the dilation times the taps dropped on
    /// each side (so the output positions and every product that reads the input stay the same), and an
    /// axis left with one tap gets dilation 1. The dropped taps multiplied zeros only: the convolution's
    /// values are unchanged, its work and its weights smaller, and its weights are quantized over the
    /// taps that matter. `w` as it is when nothing can be dropped or it is not constant.
    fn live_taps(
        &mut self,
        w: Ref,
        (spatial, outs): (&[usize], &[u32]),
        (k, st, d): (&mut [usize], &[usize], &mut [usize]),
        (before, after): (&mut [u32], &mut [u32]),
    ) -> Ref {
        let Some(c) = self.const_data(w) else {
            return w;
        };
        let rank = k.len();
        if c.shape.len() != rank + 2
            || c.shape[2..]
                .iter()
                .zip(k.iter())
                .any(|(&a, &b)| a as usize != b)
        {
            return w;
        }
        // per axis, the first and one past the last tap some output reads the input through
        let mut keep = Vec::with_capacity(rank);
        for ax in 0..rank {
            let reads = |t: usize| {
                (0..outs[ax] as usize).any(|o| {
                    let at = (o * st[ax] + t * d[ax]) as i64 - before[ax] as i64;
                    (0..spatial[ax] as i64).contains(&at)
                })
            };
            let Some(t0) = (0..k[ax]).find(|&t| reads(t)) else {
                return w;
            };
            let t1 = (0..k[ax]).rev().find(|&t| reads(t)).unwrap_or(t0) + 1;
            let b = (before[ax] as usize).checked_sub(t0 * d[ax]);
            let a = (after[ax] as usize).checked_sub((k[ax] - t1) * d[ax]);
            match (b, a) {
                (Some(b), Some(a)) => keep.push((t0, t1, b as u32, a as u32)),
                _ => return w,
            }
        }
        if keep
            .iter()
            .zip(k.iter())
            .all(|(&(t0, t1, ..), &n)| t0 == 0 && t1 == n)
        {
            return w;
        }
        let shape: Vec<u32> = c.shape[..2]
            .iter()
            .copied()
            .chain(keep.iter().map(|&(t0, t1, ..)| (t1 - t0) as u32))
            .collect();
        // every kept element in the new kernel's order, read through the old one's strides from its
        // first kept tap
        let st =
            verity_engine::exec::strides(&c.shape.iter().map(|&v| v as usize).collect::<Vec<_>>());
        let base: usize = keep
            .iter()
            .zip(&st[2..])
            .map(|(&(t0, ..), &s)| t0 * s)
            .sum();
        let dims: Vec<usize> = shape.iter().map(|&v| v as usize).collect();
        let mut data = Vec::with_capacity(dims.iter().product());
        verity_engine::exec::for_each_index(&dims, &[st], |_, o| {
            data.push(c.data.get(base + o[0]))
        });
        let int = c.int;
        for (ax, &(t0, t1, b, a)) in keep.iter().enumerate() {
            k[ax] = t1 - t0;
            before[ax] = b;
            after[ax] = a;
            if k[ax] == 1 {
                d[ax] = 1;
            }
        }
        self.konst(shape, data, int)
    }

    /// The float graph of what the outputs need: nodes and constants no output depends on (left by
    /// lowerings that read past a node, e.g. a softplus or log-softmax pattern) are dropped.
    fn finish(self, outputs: Vec<(String, Ref)>) -> FGraph {
        let mut live_n = vec![false; self.nodes.len()];
        let mut live_c = vec![false; self.consts.len()];
        let mut mark = |r: Ref, live_n: &mut Vec<bool>| match r {
            Ref::N(i) => live_n[i] = true,
            Ref::C(i) => live_c[i] = true,
            Ref::In(_) => {}
        };
        for (_, r) in &outputs {
            mark(*r, &mut live_n);
        }
        for i in (0..self.nodes.len()).rev() {
            if live_n[i] {
                for &r in &self.nodes[i].1 {
                    mark(r, &mut live_n);
                }
            }
        }
        let renumber = |live: &[bool]| -> Vec<usize> {
            let mut next = 0;
            live.iter()
                .map(|&l| {
                    let k = next;
                    next += l as usize;
                    k
                })
                .collect()
        };
        let (new_c, new_n) = (renumber(&live_c), renumber(&live_n));
        let ni = self.inputs.len();
        let nc = live_c.iter().filter(|&&l| l).count();
        let id = |r: Ref| -> u32 {
            (match r {
                Ref::In(i) => i,
                Ref::C(i) => ni + new_c[i],
                Ref::N(i) => ni + nc + new_n[i],
            }) as u32
        };
        let consts = self
            .consts
            .into_iter()
            .zip(&live_c)
            .filter_map(|(c, &l)| l.then_some(c))
            .collect();
        let nodes = self
            .nodes
            .into_iter()
            .zip(&live_n)
            .filter(|(_, &l)| l)
            .map(|((mut n, ins), _)| {
                n.inputs = ins.into_iter().map(id).collect();
                n
            })
            .collect();
        FGraph {
            inputs: self.inputs,
            consts,
            nodes,
            outputs: outputs.into_iter().map(|(n, r)| (n, id(r))).collect(),
        }
    }
}

/// Options for loading the ONNX file.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Shapes for inputs with dynamic dimensions, by input name; unspecified symbolic dimensions become 1.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// When not empty, the model's outputs: these tensors (graph outputs or any intermediate tensor, by
    /// name), and only what they need is compiled.
    pub outputs: Vec<String>,
    /// Pool the token states of a sentence encoder into its embedding, in the graph
    /// ([`crate::pooling`]).
    pub pooling: Option<crate::pooling::Pooling>,
}

/// The imported model: the decluttered tract model (the float reference) and its lowered float graph.
pub struct Imported {
    /// tract's typed, decluttered model.
    pub tract: TypedModel,
    /// The lowered graph.
    pub graph: FGraph,
}

/// Load an ONNX model from bytes and lower it.
pub fn import_onnx(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, CompileError> {
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| CompileError::Onnx(format!("{e:#}")))?;
    import_model(parse(&onnx, proto, None, opts)?, opts)
}

/// Lower an ONNX protobuf built in memory (the compiler's own tests write graphs this way).
#[cfg(test)]
pub(crate) fn import_proto(
    proto: tract_onnx::pb::ModelProto,
    opts: &ImportOptions,
) -> Result<Imported, CompileError> {
    import_model(parse(&tract_onnx::onnx(), proto, None, opts)?, opts)
}

/// The ONNX protobuf, its scikit-learn operators rewritten ([`crate::onnx_ml`]) and any pooling
/// appended ([`crate::pooling`]), as tract's model; `dir` is where tensors stored as external data are
/// found.
fn parse(
    onnx: &tract_onnx::Onnx,
    mut proto: tract_onnx::pb::ModelProto,
    dir: Option<&str>,
    opts: &ImportOptions,
) -> Result<InferenceModel, CompileError> {
    crate::onnx_ml::rewrite(&mut proto)?;
    if let Some(p) = &opts.pooling {
        crate::pooling::append(&mut proto, p)?;
    }
    let parsed = onnx
        .parse(&proto, dir)
        .map_err(|e| CompileError::Onnx(format!("{e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(CompileError::Onnx(format!(
            "inputs that nothing defines: {:?}",
            parsed.unresolved_inputs
        )));
    }
    Ok(parsed.model)
}

/// tract's declutter passes but the one that splits a contraction over a concatenation into one
/// contraction per part and a sum of their results. Verity quantizes the concatenation once and runs
/// one contraction over it: split, each part's narrow product is a separate kernel call with its own
/// packing, `i64` sums and requantization, and each of its sums a separate addition — an inception
/// block's 1×1 convolutions over their block's input became twelve products of 32–96 channels each,
/// twice the time of the three they were.
pub fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut passes = tract_onnx::tract_core::optim::Optimizer::declutter();
    passes
        .passes
        .retain(|p| !format!("{p:?}").starts_with("ConcatThenEinsum"));
    passes.optimize(model)
}

/// The names of an ONNX file's graph inputs (those no initializer defines), in order, and of its
/// graph outputs.
pub fn onnx_io_names(path: &std::path::Path) -> Result<(Vec<String>, Vec<String>), CompileError> {
    let g = file_graph(path)?;
    let inputs = graph_inputs(&g).map(|i| i.name.clone()).collect();
    Ok((inputs, g.output.iter().map(|o| o.name.clone()).collect()))
}

/// The graph of the ONNX file at `path`, its weights left in the file.
fn file_graph(path: &std::path::Path) -> Result<tract_onnx::pb::GraphProto, CompileError> {
    let (proto, _) = crate::onnx_file::proto_for_path(path)?;
    proto
        .graph
        .ok_or_else(|| CompileError::Onnx("the model has no graph".into()))
}

/// A graph's inputs that no initializer defines, in order.
fn graph_inputs(
    g: &tract_onnx::pb::GraphProto,
) -> impl Iterator<Item = &tract_onnx::pb::ValueInfoProto> {
    let inits: std::collections::BTreeSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .iter()
        .filter(move |i| !inits.contains(i.name.as_str()))
}

/// The shapes of an ONNX file's graph inputs as [`import_onnx_path`] sets them (a shape given in
/// `opts`, else the file's dimensions with symbolic ones as 1), read from the file's graph alone: no
/// weights are loaded.
pub fn onnx_input_shapes(
    path: &std::path::Path,
    opts: &ImportOptions,
) -> Result<Vec<(String, Vec<usize>)>, CompileError> {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value as Dim, type_proto::Value};
    let g = file_graph(path)?;
    graph_inputs(&g)
        .map(|i| {
            if let Some(s) = user_shape(opts, &i.name) {
                return Ok((i.name.clone(), s.to_vec()));
            }
            let shape = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(Value::TensorType(t)) => t.shape.as_ref(),
                _ => None,
            };
            let shape = shape.ok_or_else(|| CompileError::DynamicShape {
                node: i.name.clone(),
                shape: "unknown rank".into(),
            })?;
            let dims = shape.dim.iter().map(|d| match d.value {
                Some(Dim::DimValue(v)) => file_dim(Some(v)),
                _ => file_dim(None),
            });
            Ok((i.name.clone(), dims.collect()))
        })
        .collect()
}

/// The shape `opts` gives input `name`, if any: it replaces the file's.
fn user_shape<'a>(opts: &'a ImportOptions, name: &str) -> Option<&'a [usize]> {
    opts.input_shapes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_slice())
}

/// An input dimension as the import fixes it: the file's size (at least 1), 1 where it is symbolic.
fn file_dim(d: Option<i64>) -> usize {
    d.map_or(1, |v| v.max(1) as usize)
}

/// Load an ONNX model from a file (tensors stored as external data next to it are found) and lower it.
/// Its large weights are read from the file one tensor at a time ([`crate::onnx_file`]), never held
/// twice.
pub fn import_onnx_path(
    path: &std::path::Path,
    opts: &ImportOptions,
) -> Result<Imported, CompileError> {
    let mut onnx = tract_onnx::onnx();
    onnx.provider = std::sync::Arc::new(crate::onnx_file::FileData);
    let (proto, dir) = crate::onnx_file::proto_for_path(path)?;
    import_model(parse(&onnx, proto, dir.as_deref(), opts)?, opts)
}

fn import_model(mut model: InferenceModel, opts: &ImportOptions) -> Result<Imported, CompileError> {
    let terr = |e: TractError| CompileError::Onnx(format!("{e:#}"));
    let n_inputs = model.inputs.len();
    for i in 0..n_inputs {
        let fact = model.input_fact(i).map_err(terr)?.clone();
        let name = model.node(model.inputs[i].node).name.clone();
        if fact.shape.is_open() {
            return Err(CompileError::DynamicShape {
                node: name,
                shape: "unknown rank".into(),
            });
        }
        let dt = fact
            .datum_type
            .concretize()
            .ok_or_else(|| CompileError::DynamicShape {
                node: name.clone(),
                shape: "unknown element type".into(),
            })?;
        let dims: Vec<usize> = match user_shape(opts, &name) {
            Some(s) => s.to_vec(),
            None => fact
                .shape
                .dims()
                .map(|d| file_dim(d.concretize().and_then(|t| t.as_i64())))
                .collect(),
        };
        model
            .set_input_fact(i, InferenceFact::dt_shape(dt, dims))
            .map_err(terr)?;
    }
    if !opts.outputs.is_empty() {
        let known: std::collections::HashSet<&str> = model
            .nodes()
            .iter()
            .flat_map(|n| n.outputs.iter().enumerate().map(move |(i, _)| (n, i)))
            .filter_map(|(n, i)| model.outlet_label(OutletId::new(n.id, i)))
            .collect();
        if let Some(bad) = opts.outputs.iter().find(|o| !known.contains(o.as_str())) {
            return Err(CompileError::Onnx(format!(
                "the model has no tensor named '{bad}' to keep as an output"
            )));
        }
        model.select_outputs_by_name(&opts.outputs).map_err(terr)?;
    }
    let mut typed = model.into_typed().map_err(terr)?;
    declutter(&mut typed).map_err(terr)?;
    let mut b = Builder {
        model: &typed,
        inputs: vec![],
        consts: vec![],
        nodes: vec![],
        map: HashMap::new(),
        mask_fills: vec![],
    };
    for (i, outlet) in typed.input_outlets().map_err(terr)?.iter().enumerate() {
        let node = typed.node(outlet.node);
        let fact = typed.outlet_fact(*outlet).map_err(terr)?;
        let shape = concrete(fact, node)?;
        let kind = if fact.datum_type.is_integer() || fact.datum_type == DatumType::Bool {
            InputKind::Int
        } else if fact.datum_type.is_float() {
            InputKind::Fixed
        } else {
            return Err(unsupported(
                node,
                format!("input of type {:?}", fact.datum_type),
            ));
        };
        b.inputs.push(FInput {
            name: node.name.clone(),
            shape,
            kind,
        });
        b.map.insert(*outlet, Ref::In(i));
    }
    for id in typed.eval_order().map_err(terr)? {
        b.lower_node(id)?;
    }
    let mut outputs = Vec::new();
    for outlet in typed.output_outlets().map_err(terr)? {
        let node = typed.node(outlet.node);
        let name = typed
            .outlet_label(*outlet)
            .unwrap_or(&node.name)
            .to_string();
        let r = b.get(*outlet, node)?;
        outputs.push((name, r));
    }
    let graph = b.finish(outputs);
    Ok(Imported {
        tract: typed,
        graph,
    })
}
