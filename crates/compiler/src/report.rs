//! The compile report: accuracy of the canonical model against the float model run by tract.

use std::collections::BTreeMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use verity_engine::io::{dequantize, quantize_inputs, FloatTensor};
use verity_engine::ir::Model;
use verity_engine::{Executor, Mode};

use crate::{CompileError, CompileOptions};

/// Accuracy of one output over the evaluation samples.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OutputAccuracy {
    /// Output name.
    pub name: String,
    /// Largest |canonical − tract| over all elements and samples.
    pub max_abs_error: f64,
    /// Largest |tract| over all elements and samples.
    pub max_abs_reference: f64,
    /// `max_abs_error / max_abs_reference`.
    pub max_relative_error: f64,
    /// Mean |canonical − tract|.
    pub mean_abs_error: f64,
    /// Fraction of rows (last axis) whose arg-max agrees, when the last axis has ≥ 2 elements.
    pub top1_agreement: Option<f64>,
}

/// What `verity model compile` reports.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CompileReport {
    /// Fractional bits requested.
    pub scale_bits: i8,
    /// Width of contractions (`i32` or `int8`).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Number of evaluation samples.
    pub samples: usize,
    /// Largest difference between the lowered float graph and tract (import self-check).
    pub import_check_max_abs_diff: f64,
    /// Per-output accuracy.
    pub outputs: Vec<OutputAccuracy>,
    /// Canonical op counts.
    pub ops: BTreeMap<String, usize>,
    /// Weight and table elements.
    pub parameters: u64,
    /// What `auto` chose (absent at other precisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed: Option<crate::mixed::MixedPrecision>,
}

fn default_precision() -> String {
    "i32".into()
}

fn to_tract_input(t: &FloatTensor, fact: &TypedFact) -> TractResult<TValue> {
    let arr = tract_ndarray::ArrayD::from_shape_vec(
        fact.shape
            .as_concrete()
            .map(|s| s.to_vec())
            .unwrap_or_default(),
        t.data.clone(),
    )?;
    let tensor: Tensor = arr.into();
    Ok(tensor
        .cast_to_dt(fact.datum_type)?
        .into_owned()
        .into_tvalue())
}

/// tract's outputs on every evaluation sample, checked against the lowered float graph's.
pub struct References {
    /// Per sample, per model output: tract's values.
    outputs: Vec<Vec<Vec<f64>>>,
    /// The largest difference between the lowered graph and tract.
    import_diff: f64,
}

/// Run tract and the lowered float graph on every sample: tract's outputs become the references the
/// canonical model is measured against, and the lowered graph must agree with them (the import check).
/// tract's model is consumed, so its weights are freed before the graph is quantized.
pub fn references(
    tract: TypedModel,
    graph: &crate::fgraph::FGraph,
    samples: &[Vec<FloatTensor>],
    flat: &[Vec<Vec<f64>>],
    names: &[String],
) -> Result<References, CompileError> {
    let terr = |e: TractError| CompileError::Tract(format!("{e:#}"));
    let in_facts: Vec<TypedFact> = tract
        .input_outlets()
        .map_err(terr)?
        .iter()
        .map(|o| tract.outlet_fact(*o).cloned())
        .collect::<TractResult<_>>()
        .map_err(terr)?;
    let inputs: Vec<TVec<TValue>> = samples
        .iter()
        .map(|sample| {
            sample
                .iter()
                .zip(&in_facts)
                .map(|(t, f)| to_tract_input(t, f))
                .collect::<TractResult<_>>()
        })
        .collect::<TractResult<_>>()
        .map_err(terr)?;
    // node by node over groups of samples (the group's activations live at once); a model that path
    // cannot run goes through tract's own plan
    let by_nodes: TractResult<Vec<TVec<TValue>>> =
        inputs
            .chunks(REFERENCE_GROUP)
            .try_fold(Vec::new(), |mut all, group| {
                all.extend(node_by_node(&tract, group, SPLIT)?);
                Ok(all)
            });
    let runs = match by_nodes {
        Ok(runs) => runs,
        Err(_) => {
            // the plan takes the model (no second copy of the weights)
            let plan = tract.into_runnable().map_err(terr)?;
            inputs
                .into_iter()
                .map(|i| plan.run(i))
                .collect::<TractResult<_>>()
                .map_err(terr)?
        }
    };
    let mut outputs = Vec::with_capacity(samples.len());
    let mut import_diff = 0.0f64;
    for (reference, fl) in runs.into_iter().zip(flat) {
        let fvals = graph.eval_visit(fl, |_, _| {});
        let mut per = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let r = reference[k].cast_to::<f64>().map_err(terr)?;
            let r: Vec<f64> = r
                .to_plain_array_view::<f64>()
                .map_err(terr)?
                .iter()
                .copied()
                .collect();
            let lowered = &fvals[k];
            let ref_max = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let d_import = lowered
                .iter()
                .zip(&r)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            let tol = 1e-3 * ref_max.max(1.0);
            if d_import > tol || lowered.len() != r.len() {
                return Err(CompileError::ImportMismatch {
                    output: name.clone(),
                    diff: d_import,
                    tol,
                });
            }
            import_diff = import_diff.max(d_import);
            per.push(r);
        }
        outputs.push(per);
    }
    Ok(References {
        outputs,
        import_diff,
    })
}

/// tract's outputs for every sample (per sample, the model's outputs), computed a node at a time over all
/// samples: each node becomes a model of its own, whose constant inputs stay constants, optimized by
/// tract when it reads a constant (a matrix's weights are packed once for all samples, not per sample
/// as tract's unoptimized operators do, and freed before the next node), and run on every sample. A
/// tensor is freed after its last reader. An error (a node tract cannot run alone) sends the caller to
/// tract's whole-model plan.
fn node_by_node(
    model: &TypedModel,
    samples: &[TVec<TValue>],
    split: (usize, usize),
) -> TractResult<Vec<TVec<TValue>>> {
    let order = model.eval_order()?;
    let sources = model.input_outlets()?;
    let outputs = model.output_outlets()?;
    // the position in `order` of each outlet's last reader (outputs are never freed)
    let mut last: BTreeMap<OutletId, usize> = BTreeMap::new();
    for (pos, &id) in order.iter().enumerate() {
        for i in &model.node(id).inputs {
            last.insert(*i, pos);
        }
    }
    for o in outputs {
        last.insert(*o, usize::MAX);
    }
    let mut values: Values = BTreeMap::new();
    for (k, o) in sources.iter().enumerate() {
        let per: Vec<TValue> = samples
            .iter()
            .map(|s| {
                s.get(k)
                    .cloned()
                    .ok_or_else(|| TractError::msg("a sample lacks an input"))
            })
            .collect::<TractResult<_>>()?;
        values.insert(*o, per);
    }
    for (pos, &id) in order.iter().enumerate() {
        let node = model.node(id);
        if sources.iter().any(|o| o.node == id) || node.op_as::<Const>().is_some() {
            continue;
        }
        let results = match split_product(model, node, split)? {
            Some(split) => run_split(model, node, &values, samples.len(), split)?,
            None => run_alone(model, node, &values, samples.len(), None)?,
        };
        for slot in 0..node.outputs.len() {
            let o = OutletId::new(id, slot);
            // an output nothing reads is dropped at once
            if last.contains_key(&o) {
                values.insert(o, results.iter().map(|r| r[slot].clone()).collect());
            }
        }
        // inputs whose last reader this was
        for i in &node.inputs {
            if last.get(i) == Some(&pos) {
                values.remove(i);
            }
        }
    }
    (0..samples.len())
        .map(|s| {
            outputs
                .iter()
                .map(|o| match values.get(o) {
                    Some(v) => Ok(v[s].clone()),
                    // an output that is a constant
                    None => match model.node(o.node).op_as::<Const>() {
                        Some(c) => Ok(c.val().clone().into_tvalue()),
                        None => Err(TractError::msg(format!("output {o:?} was not computed"))),
                    },
                })
                .collect()
        })
        .collect()
}

/// Evaluation samples run node by node together: their tensors at one node are held at once.
const REFERENCE_GROUP: usize = 8;

/// Values computed so far: per outlet, one tensor per sample.
type Values = BTreeMap<OutletId, Vec<TValue>>;

/// Constant weights of at least `.0` bytes are cut into parts of about `.1` bytes for their node's
/// reference run, so tract's packed copies of them (one per kernel it may pick) stay small.
const SPLIT: (usize, usize) = (64 << 20, 32 << 20);

/// Node `node` of `model` as a model of its own, run on every sample: its constant inputs stay constants
/// (`swap` replaces input `.0`'s by `.1`), its other inputs are read from `values`. tract optimizes it
/// when it reads a constant and a computed tensor (a matrix's weights packed once for all samples).
fn run_alone(
    model: &TypedModel,
    node: &TypedNode,
    values: &Values,
    samples: usize,
    swap: Option<(usize, Const)>,
) -> TractResult<Vec<TVec<TValue>>> {
    let mut adhoc = TypedModel::default();
    let mut wires = tvec!();
    let mut fed = vec![];
    for (ix, i) in node.inputs.iter().enumerate() {
        let from = model.node(i.node);
        let konst = match &swap {
            Some((k, c)) if *k == ix => Some(c),
            _ => from.op_as::<Const>().filter(|_| from.outputs.len() == 1),
        };
        match konst {
            Some(c) => wires.push(adhoc.wire_node(format!("const.{ix}"), c.clone(), &[])?[0]),
            None => {
                let v = values
                    .get(i)
                    .ok_or_else(|| TractError::msg("an input computed before its reader"))?;
                let first = v.first().ok_or_else(|| TractError::msg("no sample"))?;
                wires.push(
                    adhoc.add_source(format!("input.{ix}"), TypedFact::shape_and_dt_of(first))?,
                );
                fed.push(*i);
            }
        }
    }
    let outs = adhoc.wire_node(&node.name, node.op.clone(), &wires)?;
    adhoc.select_output_outlets(&outs)?;
    let plan = if !fed.is_empty() && fed.len() < node.inputs.len() {
        adhoc.into_optimized()?.into_runnable()?
    } else {
        adhoc.into_runnable()?
    };
    (0..samples)
        .map(|s| plan.run(fed.iter().map(|o| values[o][s].clone()).collect()))
        .collect()
}

/// How a float `EinSum` with one large constant operand is cut: that operand's input index, its tensor,
/// the axis of it to cut (one it shares with the output alone), that axis in the output, and the parts.
struct Split {
    input: usize,
    tensor: Arc<Tensor>,
    axis: usize,
    out_axis: usize,
    parts: usize,
}

fn split_product(
    model: &TypedModel,
    node: &TypedNode,
    (at_least, part): (usize, usize),
) -> TractResult<Option<Split>> {
    use tract_onnx::tract_core::ops::einsum::EinSum;
    let Some(op) = node.op_as::<EinSum>().filter(|op| op.q_params.is_none()) else {
        return Ok(None);
    };
    let konst = node.inputs.iter().enumerate().find_map(|(ix, i)| {
        let from = model.node(i.node);
        from.op_as::<Const>()
            .filter(|c| c.exotic_fact().is_none() && c.val().is_plain())
            .filter(|c| c.val().len() * c.val().datum_type().size_of() >= at_least)
            .map(|c| (ix, c.val().clone()))
    });
    let Some((input, tensor)) = konst else {
        return Ok(None);
    };
    // an axis of the constant alone among the inputs, kept by the output: its parts' outputs are
    // the output's parts along it
    let best = op
        .axes
        .iter_all_axes()
        .filter(|a| {
            a.inputs
                .iter()
                .enumerate()
                .all(|(j, at)| at.len() == (j == input) as usize)
                && a.outputs.len() == 1
                && a.outputs[0].len() == 1
        })
        .map(|a| (a.inputs[input][0], a.outputs[0][0]))
        .max_by_key(|&(axis, _)| tensor.shape()[axis]);
    let Some((axis, out_axis)) = best else {
        return Ok(None);
    };
    let bytes = tensor.len() * tensor.datum_type().size_of();
    let parts = bytes.div_ceil(part.max(1)).min(tensor.shape()[axis]);
    Ok((parts > 1).then_some(Split {
        input,
        tensor,
        axis,
        out_axis,
        parts,
    }))
}

/// [`run_alone`] on each part of a [`Split`] operand, the parts' outputs joined along the output's axis.
fn run_split(
    model: &TypedModel,
    node: &TypedNode,
    values: &Values,
    samples: usize,
    split: Split,
) -> TractResult<Vec<TVec<TValue>>> {
    let n = split.tensor.shape()[split.axis];
    let step = n.div_ceil(split.parts);
    let mut pieces: Vec<Vec<TValue>> = vec![Vec::new(); samples];
    for start in (0..n).step_by(step) {
        let part = split
            .tensor
            .slice(split.axis, start, (start + step).min(n))?;
        let c = Const::new(Arc::new(part))?;
        let outs = run_alone(model, node, values, samples, Some((split.input, c)))?;
        for (p, mut o) in pieces.iter_mut().zip(outs) {
            p.push(o.remove(0));
        }
    }
    pieces
        .into_iter()
        .map(|p| {
            let joined = Tensor::stack_tensors(
                split.out_axis,
                &p.iter().map(|v| &**v).collect::<Vec<&Tensor>>(),
            )?;
            Ok(tvec!(joined.into_tvalue()))
        })
        .collect()
}

/// Run the canonical model on every sample and compare with tract's [`references`].
pub fn evaluate(
    refs: &References,
    model: &Model,
    samples: &[Vec<FloatTensor>],
    opts: &CompileOptions,
) -> Result<CompileReport, CompileError> {
    let outputs = accuracy(model, samples, &refs.outputs, 1)?;
    let mut ops = BTreeMap::new();
    for n in &model.nodes {
        *ops.entry(n.op.name().to_string()).or_insert(0) += 1;
    }
    Ok(CompileReport {
        scale_bits: opts.scale_bits,
        precision: opts.precision.to_string(),
        samples: samples.len(),
        import_check_max_abs_diff: refs.import_diff,
        outputs,
        ops,
        parameters: model.parameter_count(),
        mixed: None,
    })
}

/// The canonical model's accuracy on every sample against `references` (per sample, per output: the
/// float values), run by the fast executor on `threads` threads (the same bits at any count).
pub(crate) fn accuracy(
    model: &Model,
    samples: &[Vec<FloatTensor>],
    references: &[Vec<Vec<f64>>],
    threads: usize,
) -> Result<Vec<OutputAccuracy>, CompileError> {
    let exec = Executor::new(model, Mode::Fast { threads });
    let nout = model.outputs.len();
    let mut acc: Vec<(f64, f64, f64, usize, usize, usize)> = vec![(0.0, 0.0, 0.0, 0, 0, 0); nout];
    for (si, (sample, reference)) in samples.iter().zip(references).enumerate() {
        let q = quantize_inputs(model, sample)
            .map_err(|error| CompileError::Execution { sample: si, error })?;
        let outs = exec
            .run(q)
            .map_err(|error| CompileError::Execution { sample: si, error })?;
        for (k, o) in model.outputs.iter().enumerate() {
            let r = &reference[k][..];
            let scale = model.value(o.value).map_or(0, |v| v.scale);
            let got = dequantize(&outs[k], scale);
            let a = &mut acc[k];
            for (g, t) in got.iter().zip(r) {
                let e = (g - t).abs();
                a.0 = a.0.max(e);
                a.1 = a.1.max(t.abs());
                a.2 += e;
                a.3 += 1;
            }
            let row = model
                .value(o.value)
                .and_then(|v| v.shape.last().copied())
                .unwrap_or(1) as usize;
            if row >= 2 {
                for (gr, tr) in got.chunks(row).zip(r.chunks(row)) {
                    let am = |x: &[f64]| {
                        x.iter()
                            .enumerate()
                            .fold((0usize, f64::NEG_INFINITY), |b, (i, &v)| {
                                if v > b.1 {
                                    (i, v)
                                } else {
                                    b
                                }
                            })
                            .0
                    };
                    a.4 += (am(gr) == am(tr)) as usize;
                    a.5 += 1;
                }
            }
        }
    }
    Ok(model
        .outputs
        .iter()
        .zip(acc)
        .map(|(o, a)| OutputAccuracy {
            name: o.name.clone(),
            max_abs_error: a.0,
            max_abs_reference: a.1,
            max_relative_error: if a.1 > 0.0 { a.0 / a.1 } else { a.0 },
            mean_abs_error: if a.3 > 0 { a.2 / a.3 as f64 } else { 0.0 },
            top1_agreement: (a.5 > 0).then(|| a.4 as f64 / a.5 as f64),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::einsum::EinSum;

    fn wave(n: usize, f: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * f).sin()).collect()
    }

    /// x [2, 64] → a product with [48, 64] weights → sigmoid (also an output) → a product with
    /// [10, 48] weights.
    fn two_layers() -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 64]))?;
        let w1 = m.add_const("w1", Tensor::from_shape(&[48, 64], &wave(48 * 64, 0.37))?)?;
        let prod = || EinSum::new("mk,nk->mn".parse().unwrap(), f32::datum_type());
        let h = m.wire_node("fc1", prod(), &[x, w1])?[0];
        let s = m.wire_node("act", tract_onnx::tract_core::ops::nn::sigmoid(), &[h])?[0];
        let w2 = m.add_const("w2", Tensor::from_shape(&[10, 48], &wave(10 * 48, 0.11))?)?;
        let y = m.wire_node("fc2", prod(), &[s, w2])?[0];
        m.select_output_outlets(&[y, s])?;
        Ok(m)
    }

    /// Node by node over all samples, whole or with its weights cut into parts (joined along the
    /// output's axis), gives tract's own plan's outputs on every sample, including an output that a
    /// later node reads too.
    #[test]
    fn node_by_node_references_agree_with_tracts_plan() -> TractResult<()> {
        let m = two_layers()?;
        let samples: Vec<TVec<TValue>> = (0..3)
            .map(|k| {
                let x = Tensor::from_shape(&[2, 64], &wave(128, 0.05 + k as f32 * 0.3)).unwrap();
                tvec!(x.into_tvalue())
            })
            .collect();
        let plan = m.clone().into_runnable()?;
        let node = |name: &str| m.node_by_name(name).map(|n| m.node(n.id));
        // small limits: fc1's 12 KB of weights in 12 parts of 4 rows, fc2's 1,920 bytes whole
        let small = (4096, 1024);
        let cut = split_product(&m, node("fc1")?, small)?.map(|s| (s.axis, s.out_axis, s.parts));
        assert_eq!(cut, Some((0, 1, 12)));
        assert!(split_product(&m, node("fc2")?, small)?.is_none());
        assert!(split_product(&m, node("fc1")?, SPLIT)?.is_none());
        for limits in [SPLIT, small] {
            let got = node_by_node(&m, &samples, limits)?;
            assert_eq!(got.len(), samples.len());
            for (g, s) in got.iter().zip(&samples) {
                let want = plan.run(s.clone())?;
                assert_eq!(g.len(), want.len());
                for (a, b) in g.iter().zip(&want) {
                    assert_eq!(a.shape(), b.shape());
                    let (a, b) = (
                        a.to_plain_array_view::<f32>()?,
                        b.to_plain_array_view::<f32>()?,
                    );
                    let d = a
                        .iter()
                        .zip(&b)
                        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(d <= 1e-5, "{limits:?}: differs by {d}");
                }
            }
        }
        Ok(())
    }
}
