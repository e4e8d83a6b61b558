//! The compile report: accuracy of the canonical model against the float model run by tract.

use std::collections::BTreeMap;

use tract_onnx::prelude::*;
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
    // the plan takes the model (no second copy of the weights)
    let plan = tract.into_runnable().map_err(terr)?;
    let mut outputs = Vec::with_capacity(samples.len());
    let mut import_diff = 0.0f64;
    for (sample, fl) in samples.iter().zip(flat) {
        let inputs: TVec<TValue> = sample
            .iter()
            .zip(&in_facts)
            .map(|(t, f)| to_tract_input(t, f))
            .collect::<TractResult<_>>()
            .map_err(terr)?;
        let reference = plan.run(inputs).map_err(terr)?;
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
