//! Imports ONNX models through tract-onnx and compiles them into Verity's canonical integer form:
//! lowering ([`import`]), calibration and quantization ([`quantize`]), and the accuracy report.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod fgraph;
pub mod import;
pub mod mixed;
pub mod narrow;
pub(crate) mod onnx_edit;
pub mod onnx_file;
pub mod onnx_ml;
pub mod pooling;
pub mod quantize;
pub mod report;

pub use import::ImportOptions;
pub use quantize::Precision;
pub use report::{CompileReport, OutputAccuracy};

use verity_engine::io::FloatTensor;
use verity_engine::ir::{InputKind, Model, Op};

/// Why a model could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The file is not a loadable ONNX model.
    #[error("cannot load the ONNX model: {0}")]
    Onnx(String),
    /// tract failed while analysing the model.
    #[error("model analysis failed: {0}")]
    Tract(String),
    /// An op with no canonical lowering.
    #[error("unsupported op {op} at node '{node}': {why}")]
    Unsupported {
        /// tract op name.
        op: String,
        /// Node name.
        node: String,
        /// Detail.
        why: String,
    },
    /// A shape that stays symbolic after fixing the inputs.
    #[error(
        "node '{node}' has a dynamic shape ({shape}); give fixed input shapes with --input-shape"
    )]
    DynamicShape {
        /// Node name.
        node: String,
        /// The shape as tract sees it.
        shape: String,
    },
    /// The graph is larger than the compile was allowed to handle.
    #[error("over the compile limit: {0}")]
    Limit(String),
    /// The compilation was cancelled (see `verity_engine::cancel`).
    #[error("the compilation was cancelled")]
    Cancelled,
    /// Calibration inputs do not fit the model, or calibration found values it cannot represent.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The lowered graph disagrees with tract: an importer bug, reported instead of a wrong model.
    #[error(
        "import check failed: output '{output}' differs from tract by {diff:e} (tolerance {tol:e})"
    )]
    ImportMismatch {
        /// Output name.
        output: String,
        /// Largest absolute difference.
        diff: f64,
        /// Allowed difference.
        tol: f64,
    },
    /// The canonical model failed on a calibration input (overflow, division by zero…).
    #[error("canonical execution failed on calibration sample {sample}: {error}")]
    Execution {
        /// Sample index.
        sample: usize,
        /// The error.
        error: verity_engine::ExecError,
    },
}

/// Compile options.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Most fractional bits of any scale (activations and weights); narrower where ranges demand.
    pub scale_bits: i8,
    /// Calibration samples (each one tensor per model input). `None`: random inputs.
    pub calibration: Option<Vec<Vec<FloatTensor>>>,
    /// Held-out samples for the accuracy report. `None`: the calibration samples.
    pub eval: Option<Vec<Vec<FloatTensor>>>,
    /// Number of random calibration samples when none are given.
    pub random_samples: usize,
    /// Value ranges for random real inputs, by name; others use `default_range`.
    pub input_ranges: Vec<(String, f64, f64)>,
    /// Range for random real inputs without their own.
    pub default_range: (f64, f64),
    /// Seed for random calibration inputs.
    pub seed: u64,
    /// ONNX loading options.
    pub import: ImportOptions,
    /// Width of weights and contraction operands.
    pub precision: Precision,
    /// Refuse a graph with a tensor of more elements than this, before evaluating any of it (a node that
    /// compiles uploads from strangers sets it; `None`: no bound).
    pub max_elements: Option<u64>,
    /// Correct each narrowed contraction's bias for the rounding of its weights, from the
    /// activation's calibrated means (spec §5). On by default; off only to measure what it removes.
    pub bias_correction: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            scale_bits: 16,
            calibration: None,
            eval: None,
            random_samples: 16,
            input_ranges: Vec::new(),
            default_range: (-1.0, 1.0),
            seed: 0,
            import: ImportOptions::default(),
            precision: Precision::default(),
            max_elements: None,
            bias_correction: true,
        }
    }
}

impl CompileOptions {
    /// Keep only these outputs (`name,name,…` lists allowed; empty keeps the model's own).
    pub fn keep_outputs(&mut self, names: &[String]) {
        self.import.outputs = names
            .iter()
            .flat_map(|n| n.split(','))
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
    }

    /// Apply textual input specs: ranges `lo:hi` (the default range) or `name=lo:hi`, and shapes
    /// `name=d1,d2,…` (fixing dynamic dimensions). Shared by the CLI and the node.
    pub fn apply_input_specs(
        &mut self,
        ranges: &[String],
        shapes: &[String],
    ) -> Result<(), String> {
        for s in shapes {
            let (n, dims) = s
                .split_once('=')
                .ok_or_else(|| format!("input shape '{s}' must be name=d1,d2,..."))?;
            let dims = dims
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("input shape '{s}': dimensions must be positive integers"))?;
            self.import.input_shapes.push((n.to_string(), dims));
        }
        for r in ranges {
            match r.split_once('=') {
                Some((n, range)) => {
                    let (lo, hi) = parse_range(range)?;
                    self.input_ranges.push((n.to_string(), lo, hi));
                }
                None => self.default_range = parse_range(r)?,
            }
        }
        Ok(())
    }
}

/// Parse `lo:hi` with finite `lo < hi`.
pub fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("range '{s}' must be lo:hi"))?;
    let bad = || format!("range '{s}' must have finite numbers lo < hi");
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    if !(a.is_finite() && b.is_finite() && a < b) {
        return Err(bad());
    }
    Ok((a, b))
}

pub use verity_engine::calib::SplitMix64;

fn random_samples(g: &fgraph::FGraph, opts: &CompileOptions) -> Vec<Vec<FloatTensor>> {
    let mut rng = SplitMix64(opts.seed);
    (0..opts.random_samples.max(1))
        .map(|_| {
            g.inputs
                .iter()
                .enumerate()
                .map(|(i, inp)| {
                    let shape: Vec<usize> = inp.shape.iter().map(|&d| d as usize).collect();
                    let n: usize = shape.iter().product();
                    let data = match inp.kind {
                        InputKind::Int => {
                            // indices into a gathered axis take its range; other integers 0..2
                            let bound = g
                                .nodes
                                .iter()
                                .find_map(|node| match node.op {
                                    fgraph::FOp::Canon(Op::Gather { axis })
                                        if node.inputs.get(1) == Some(&(i as u32)) =>
                                    {
                                        Some(g.shape(node.inputs[0])[axis as usize] as f64)
                                    }
                                    _ => None,
                                })
                                .unwrap_or(2.0);
                            (0..n).map(|_| rng.uniform(0.0, bound).floor()).collect()
                        }
                        InputKind::Fixed => {
                            let (lo, hi) = opts
                                .input_ranges
                                .iter()
                                .find(|(name, _, _)| *name == inp.name)
                                .map_or(opts.default_range, |(_, lo, hi)| (*lo, *hi));
                            (0..n).map(|_| rng.uniform(lo, hi)).collect()
                        }
                    };
                    FloatTensor { shape, data }
                })
                .collect()
        })
        .collect()
}

/// Check each sample against the graph's inputs and flatten it.
fn flatten_samples(
    g: &fgraph::FGraph,
    samples: &[Vec<FloatTensor>],
    what: &str,
) -> Result<Vec<Vec<Vec<f64>>>, CompileError> {
    samples
        .iter()
        .enumerate()
        .map(|(si, s)| {
            if s.len() != g.inputs.len() {
                return Err(CompileError::Calibration(format!(
                    "{what} sample {si} has {} tensors, the model has {} inputs",
                    s.len(),
                    g.inputs.len()
                )));
            }
            s.iter()
                .zip(&g.inputs)
                .map(|(t, inp)| {
                    let n: u64 = inp.shape.iter().map(|&d| d as u64).product();
                    if t.data.len() as u64 != n {
                        return Err(CompileError::Calibration(format!(
                            "{what} sample {si}: input '{}' needs {n} values (shape {:?}), got {}",
                            inp.name,
                            inp.shape,
                            t.data.len()
                        )));
                    }
                    if let Some(bad) = t.data.iter().find(|x| !x.is_finite()) {
                        return Err(CompileError::Calibration(format!(
                            "{what} sample {si}: input '{}' holds {bad}",
                            inp.name
                        )));
                    }
                    Ok(t.data.clone())
                })
                .collect()
        })
        .collect()
}

/// Compile ONNX bytes into a canonical model and its accuracy report.
pub fn compile(onnx: &[u8], opts: &CompileOptions) -> Result<(Model, CompileReport), CompileError> {
    check_options(opts)?;
    guarded(|| compile_imported(import::import_onnx(onnx, &opts.import)?, opts))
}

/// Run a compilation step, turning a panic inside the ONNX front-end (a hostile or broken file can trip
/// one deep in tract) into an error instead of unwinding into the caller.
fn guarded<T>(f: impl FnOnce() -> Result<T, CompileError>) -> Result<T, CompileError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            Err(CompileError::Tract(format!(
                "the ONNX front-end failed: {what}"
            )))
        }
    }
}

/// Compile an ONNX file (external tensor data next to it is supported).
pub fn compile_path(
    path: &std::path::Path,
    opts: &CompileOptions,
) -> Result<(Model, CompileReport), CompileError> {
    check_options(opts)?;
    guarded(|| compile_imported(import::import_onnx_path(path, &opts.import)?, opts))
}

fn check_options(opts: &CompileOptions) -> Result<(), CompileError> {
    if !(1..=30).contains(&opts.scale_bits) {
        return Err(CompileError::Calibration(format!(
            "scale bits must be in 1..=30, got {}",
            opts.scale_bits
        )));
    }
    Ok(())
}

fn compile_imported(
    imported: import::Imported,
    opts: &CompileOptions,
) -> Result<(Model, CompileReport), CompileError> {
    let import::Imported { tract, graph } = imported;
    let g = &graph;
    if let Some(limit) = opts.max_elements {
        check_size(g, limit)?;
    }
    let cancelled = || {
        if verity_engine::cancel::requested() {
            Err(CompileError::Cancelled)
        } else {
            Ok(())
        }
    };
    cancelled()?;
    let calib = match &opts.calibration {
        Some(c) if !c.is_empty() => c.clone(),
        _ => random_samples(g, opts),
    };
    let calib_flat = flatten_samples(g, &calib, "calibration")?;
    // `auto` measures its candidates against the float outputs of the calibration samples
    let auto = match opts.precision {
        Precision::Auto { target_ppm } => Some(target_ppm as f64 / 1e6),
        _ => None,
    };
    let (mut stats, floats) = quantize::calibrate_keeping(g, &calib_flat, auto.is_some())?;
    if !opts.bias_correction {
        // without the activations' means, no contraction's bias is corrected
        stats.iter_mut().for_each(|s| s.sums.clear());
    }
    cancelled()?;
    let (eval, eval_flat) = match &opts.eval {
        Some(e) if !e.is_empty() => (e.clone(), flatten_samples(g, e, "evaluation")?),
        _ => (calib.clone(), calib_flat),
    };
    // tract's references first: its model (a copy of the weights) is freed before quantization
    let names: Vec<String> = g.outputs.iter().map(|o| o.0.clone()).collect();
    let refs = report::references(tract, g, &eval, &eval_flat, &names)?;
    drop(eval_flat);
    cancelled()?;
    let (model, mixed) = match auto {
        Some(target) => {
            let (base, float_of) = quantize::lower(g, &stats, opts.scale_bits, opts.precision)?;
            let (m, mixed) = mixed::choose(g, &stats, (&base, &float_of), &calib, &floats, target)?;
            (m, Some(mixed))
        }
        None => (
            quantize::quantize(g, &stats, opts.scale_bits, opts.precision)?,
            None,
        ),
    };
    drop(floats);
    // the float graph (its f64 weights) is not needed by the report
    drop(graph);
    cancelled()?;
    let mut report = report::evaluate(&refs, &model, &eval, opts)?;
    report.mixed = mixed;
    cancelled()?;
    Ok((model, report))
}

/// Refuse a graph with a tensor larger than `limit` elements (checked on shapes alone).
fn check_size(g: &fgraph::FGraph, limit: u64) -> Result<(), CompileError> {
    let n = g.inputs.len() + g.consts.len() + g.nodes.len();
    for v in 0..n as u32 {
        let size = g
            .shape(v)
            .iter()
            .fold(1u64, |p, &d| p.saturating_mul(d as u64));
        if size > limit {
            let what = match (v as usize).checked_sub(g.inputs.len() + g.consts.len()) {
                Some(k) => format!("node '{}' ({})", g.nodes[k].name, g.nodes[k].origin),
                None => format!("value {v}"),
            };
            return Err(CompileError::Limit(format!(
                "{what} has {size} elements, more than the {limit} allowed"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn a_panic_in_the_front_end_becomes_an_error() {
        let r: Result<(), CompileError> = guarded(|| panic!("deep inside"));
        match r {
            Err(CompileError::Tract(m)) => assert!(m.contains("deep inside"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
        assert_eq!(guarded(|| Ok::<_, CompileError>(3)).ok(), Some(3));
    }
}

#[cfg(test)]
mod tap_tests {
    use super::*;
    use tract_onnx::pb;
    use verity_engine::ir::{Op, Window};

    fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 7,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(Dim::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One convolution of `x` (`[1, c, spatial…]`) by seeded weights `[o, c, kernel…]` and a bias.
    fn conv(x: &[i64], o: i64, kernel: &[i64], attrs: (&[i64], &[i64], &[i64])) -> pb::ModelProto {
        conv_of(x, o, kernel, attrs, 1.0)
    }

    /// [`conv`] with its weights and bias multiplied by `gain`.
    fn conv_of(
        x: &[i64],
        o: i64,
        kernel: &[i64],
        (dilations, pads, strides): (&[i64], &[i64], &[i64]),
        gain: f32,
    ) -> pb::ModelProto {
        let mut state = 0x9e37_79b9u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            ((state % 2001) as f32 / 1000.0 - 1.0) * gain
        };
        let wdims: Vec<i64> = [o, x[1]].iter().chain(kernel).copied().collect();
        let tensor = |name: &str, dims: Vec<i64>, next: &mut dyn FnMut() -> f32| pb::TensorProto {
            name: name.into(),
            data_type: 1,
            float_data: (0..dims.iter().product::<i64>()).map(|_| next()).collect(),
            dims,
            ..Default::default()
        };
        let w = tensor("w", wdims, &mut next);
        let b = tensor("b", vec![o], &mut next);
        let node = pb::NodeProto {
            input: vec!["x".into(), "w".into(), "b".into()],
            output: vec!["y".into()],
            name: "conv".into(),
            op_type: "Conv".into(),
            attribute: vec![
                ints("kernel_shape", kernel),
                ints("dilations", dilations),
                ints("pads", pads),
                ints("strides", strides),
            ],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(pb::GraphProto {
                node: vec![node],
                initializer: vec![w, b],
                input: vec![value("x", x)],
                output: vec![pb::ValueInfoProto {
                    name: "y".into(),
                    ..value("y", &[])
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A convolution whose weights, bias and outputs are all near 10⁻⁴ keeps the accuracy of one near
    /// 1 (its tensors keep `B` bits below their leading one instead of `B` fractional bits, which
    /// would leave its outputs a few dozen units).
    #[test]
    fn small_tensors_keep_their_relative_precision() {
        let attrs: (&[i64], &[i64], &[i64]) = (&[1, 1], &[1, 1, 1, 1], &[1, 1]);
        for gain in [1.0, 1e-4] {
            let opts = CompileOptions {
                precision: Precision::I32,
                ..Default::default()
            };
            let m = conv_of(&[1, 4, 6, 6], 5, &[3, 3], attrs, gain);
            let imported = import::import_proto(m, &opts.import).unwrap();
            let (_, report) = compile_imported(imported, &opts).unwrap();
            let out = &report.outputs[0];
            assert!(
                out.max_abs_reference < 30.0 * gain as f64,
                "gain {gain}: {out:?}"
            );
            assert!(out.max_relative_error < 2e-4, "gain {gain}: {out:?}");
        }
    }

    /// Taps that read only padding for every output are dropped from a convolution's kernel, its
    /// padding shrunk to match, and the outputs stay those of the convolution as written (tract runs
    /// the ONNX node itself as the reference): a rows' dilation past the map's height leaves the
    /// centre row of taps (dilation 1), a one-sided drop keeps the dilation, a 1-D kernel loses both
    /// ends, and a convolution whose taps all read the map is left alone.
    #[test]
    fn taps_that_read_only_padding_are_dropped() {
        // (input, output channels, kernel, (dilations, pads, strides), kept kernel, its window)
        type Case<'a> = (
            &'a [i64],
            i64,
            &'a [i64],
            (&'a [i64], &'a [i64], &'a [i64]),
            [u32; 2],
            ([u32; 2], [u32; 4]),
        );
        let cases: [Case; 5] = [
            (
                &[1, 4, 6, 7],
                5,
                &[3, 3],
                (&[8, 3], &[8, 3, 8, 3], &[1, 1]),
                [1, 3],
                ([1, 3], [0, 3, 0, 3]),
            ),
            (
                &[1, 3, 5, 5],
                4,
                &[3, 3],
                (&[4, 1], &[8, 1, 0, 1], &[1, 1]),
                [2, 3],
                ([4, 1], [4, 1, 0, 1]),
            ),
            (
                &[1, 3, 9, 9],
                2,
                &[3, 3],
                (&[6, 6], &[6, 6, 6, 6], &[2, 2]),
                [3, 3],
                ([6, 6], [6, 6, 6, 6]),
            ),
            (
                &[1, 3, 10],
                4,
                &[5],
                (&[6], &[12, 12], &[1]),
                [1, 3],
                ([1, 6], [0, 6, 0, 6]),
            ),
            (
                &[1, 3, 8, 8],
                4,
                &[3, 3],
                (&[1, 1], &[1, 1, 1, 1], &[1, 1]),
                [3, 3],
                ([1, 1], [1, 1, 1, 1]),
            ),
        ];
        for (x, o, kernel, attrs, kept, (dilation, pads)) in cases {
            for precision in [Precision::I32, Precision::INT8] {
                let opts = CompileOptions {
                    precision,
                    ..Default::default()
                };
                let imported =
                    import::import_proto(conv(x, o, kernel, attrs), &opts.import).unwrap();
                let (model, report) = compile_imported(imported, &opts).unwrap();
                let what = format!("{x:?} kernel {kernel:?} {attrs:?} at {precision}");
                let convs: Vec<_> = model
                    .nodes
                    .iter()
                    .filter_map(|n| match &n.op {
                        Op::Conv2d { window, .. } => Some((window, n.inputs[1])),
                        _ => None,
                    })
                    .collect();
                assert_eq!(convs.len(), 1, "{what}");
                let (window, w): (&Window, _) = convs[0];
                let wc = &model.consts[w as usize - model.inputs.len()];
                assert_eq!(wc.shape[2..], kept, "{what}");
                assert_eq!(window.kernel, kept, "{what}");
                assert_eq!((window.dilation, window.pads), (dilation, pads), "{what}");
                assert!(
                    report.import_check_max_abs_diff < 1e-4,
                    "{what}: {report:?}"
                );
                let err = report.outputs[0].max_relative_error;
                let allowed = if precision == Precision::I32 {
                    1e-3
                } else {
                    0.03
                };
                assert!(err < allowed, "{what}: error {err}");
            }
        }
    }
    /// A 1×1 convolution over a concatenation (an inception block's, a fire module's) stays one
    /// contraction over the concatenated tensor: no product per part, no sum of their results.
    #[test]
    fn a_contraction_over_a_concatenation_stays_one() {
        let mut m = conv(&[1, 8, 6, 6], 4, &[1, 1], (&[1, 1], &[0; 4], &[1, 1]));
        let g = m.graph.as_mut().expect("a graph");
        g.input = vec![value("xa", &[1, 3, 6, 6]), value("xb", &[1, 5, 6, 6])];
        g.node.insert(
            0,
            pb::NodeProto {
                input: vec!["xa".into(), "xb".into()],
                output: vec!["x".into()],
                name: "concat".into(),
                op_type: "Concat".into(),
                attribute: vec![pb::AttributeProto {
                    name: "axis".into(),
                    r#type: 2,
                    i: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        for precision in [Precision::I32, Precision::INT8] {
            let opts = CompileOptions {
                precision,
                ..Default::default()
            };
            let imported = import::import_proto(m.clone(), &opts.import).unwrap();
            let (model, report) = compile_imported(imported, &opts).unwrap();
            let ops: Vec<&str> = model.nodes.iter().map(|n| n.op.name()).collect();
            let products = ops
                .iter()
                .filter(|o| ["EinSum", "Conv2d"].contains(o))
                .count();
            assert_eq!(products, 1, "{precision}: {ops:?}");
            assert!(!ops.contains(&"Add"), "{precision}: {ops:?}");
            assert!(ops.contains(&"Concat"), "{precision}: {ops:?}");
            let err = report.outputs[0].max_relative_error;
            assert!(err < 0.03, "{precision}: error {err}");
        }
    }
}
