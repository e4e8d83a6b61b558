//! The `verity` command-line tool: compile ONNX models to canonical `.vty` files, inspect and run them,
//! run a node, publish models to a node, request inferences, and verify receipts offline.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use verity_compiler::{compile_path, CompileOptions, ImportOptions};
use verity_engine::commit::{tensors_hash, trace_roots};
use verity_engine::io::{
    dequantize, inputs_from_json, quantize_inputs, tensor_from_json, tensor_from_npy, FloatTensor,
};
use verity_engine::ir::Model;
use verity_engine::vty::{self, list_root};
use verity_engine::{Executor, Mode};

mod devnet;
mod llm;
mod net;
mod registry;
mod request;
mod verify;
mod zk;

/// Verity: verifiable AI inference.
#[derive(Parser, Debug)]
#[command(name = "verity", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Compile, inspect and manage models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Run a canonical model on an input.
    Run(RunArgs),
    /// Run a node: host models, serve inference (native and KServe v2 APIs), sign receipts.
    Node(net::NodeArgs),
    /// Create or show a signing key.
    #[command(subcommand)]
    Key(net::KeyCmd),
    /// Request an inference from a node and get its signed receipt.
    Infer(net::InferArgs),
    /// Request an inference on-chain (InferenceHub), wait for it to finalize, and print the result
    /// re-executed and checked by a node against the finalized hashes.
    Request(request::RequestArgs),
    /// Watch optimistic results: re-execute every claim on the OptimisticHub (or a secret sample),
    /// challenge any that is wrong with a bond, and play the dispute game to the end.
    Watch(net::WatchArgs),
    /// Have a chain-connected node (a watcher) re-execute an off-chain receipt — from a node's HTTP API or
    /// a quorum certificate — on its input, and dispute it at the ReceiptCourt if it is wrong: the node
    /// posts its bond and plays the game; a node that cannot defend its receipt loses its whole stake.
    Dispute(net::DisputeArgs),
    /// Run a local Verity network: anvil, the contracts, N nodes, the demo models (`--demo`: the story).
    Devnet(devnet::DevnetArgs),
    /// Check a receipt or a quorum certificate offline: signatures, signers (for a certificate: k distinct
    /// nodes drawn from its registry snapshot, optionally checked against the chain), input/output
    /// hashes, and re-execution with the model.
    /// A zk proof file (from `verity prove` or a node's `zk` mode) is checked against --model instead.
    /// Exit code 0 only if everything holds, 1 if a check fails, 2 if the files cannot be read.
    Verify(verify::VerifyArgs),
    /// Prove a canonical inference in zero knowledge: writes a proof file that `verity verify` checks
    /// offline with the model (statement: model ID, input hash, output hash).
    Prove(zk::ProveArgs),
    /// Generate text with a language model (a GGUF file) under the canonical semantics: greedy tokens,
    /// streamed, then the model ID and the hashes of the prompt's and the output's token IDs.
    Generate(llm::GenerateArgs),
}

#[derive(Subcommand, Debug)]
enum ModelCmd {
    /// Compile an ONNX model into a canonical `.vty` model and print the accuracy report; a GGUF
    /// language model into the `.vty` of its decode step.
    Compile(CompileArgs),
    /// Show a `.vty` model's ID, inputs, outputs, ops, scales and sizes.
    Inspect(InspectArgs),
    /// Publish an ONNX or `.vty` model to a node with a manifest signed by your key.
    Publish(net::PublishArgs),
    /// Register a published model on-chain (ModelRegistry) with its price per inference, so that other
    /// nodes replicate it and on-chain requests (`verity request`, the OpenGradient SDK) can use it.
    Register(registry::RegisterArgs),
    /// List the models a node hosts (`--chain`: the models registered on-chain).
    Ls(net::LsArgs),
    /// Show a hosted model: ID, IO schema, manifest, report (`--chain`: its on-chain registration).
    Show(net::ShowArgs),
    /// Download a hosted model (its ID is verified).
    Pull(net::PullArgs),
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Where to write the `.vty` model.
    #[arg(short, long)]
    output: PathBuf,
    /// Calibration inputs: `.npy` (leading axis = samples) or JSON; `name=file` for one input of several.
    #[arg(long)]
    calibration: Vec<String>,
    /// Held-out inputs for the accuracy report (same formats as --calibration).
    #[arg(long)]
    eval: Vec<String>,
    #[command(flatten)]
    flags: CompileFlags,
    /// Also write the report as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Refuse a graph with a tensor of more than this many elements, before evaluating any of it.
    #[arg(long)]
    max_elements: Option<u64>,
    /// For a GGUF language model: the positions a generation can hold.
    #[arg(long, default_value_t = llm::DEFAULT_CONTEXT)]
    context: usize,
    /// For a sentence-encoder directory: the compiled sequence length (default: the model's
    /// `max_seq_length`, else the smaller of its positions and 256).
    #[arg(long)]
    sequence: Option<usize>,
}

/// Compile options given as flags (shared by `model compile` and `model publish`).
#[derive(Args, Debug, Clone)]
pub(crate) struct CompileFlags {
    /// Most fractional bits of any scale.
    #[arg(long, default_value_t = 16)]
    scale_bits: i8,
    /// Random calibration samples when no --calibration is given.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Seed for random calibration inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Range of random real inputs: `lo:hi` for all, or `name=lo:hi` (`--input-range -3:3` works: the
    /// value may start with a minus sign).
    #[arg(long, allow_hyphen_values = true)]
    input_range: Vec<String>,
    /// Fixed shape for an input with dynamic dimensions: `name=1,3,224,224`.
    #[arg(long)]
    input_shape: Vec<String>,
    /// Width of contractions: `i32` (32-bit weights and activations), `int8` (8-bit per-channel weights
    /// and 8-bit activations into every contraction with constant weights), or `wXaY[d]` for X-bit
    /// weights (16 or 8 per output channel; 4 per block of 32 along a matrix product's reduced axis,
    /// others 8) and Y-bit activations (8 or 16), with `d` quantizing a matrix product's activations
    /// per row at run time instead of at a calibrated scale (`w8a16`, `w16a16`, `w4a8`, `w8a8d`;
    /// `w8a8` is `int8`, `int4` is `w4a8`), or `auto[:<percent>]`: `int8`, with 12-bit weights or
    /// activations where the calibration samples show they are needed for an error of at most the
    /// target (1% without one) on new inputs (0.9 of it on the samples) — the cheapest such plan the
    /// search finds, ranking the operands by their noise per multiply-accumulate, then from the
    /// output back.
    /// Default: `int8`; `i32` for a sentence-encoder directory.
    #[arg(long)]
    precision: Option<verity_compiler::Precision>,
    /// Keep only these outputs, graph outputs or intermediate tensors by name (`--outputs a,b`), and
    /// compile only what they need.
    #[arg(long, value_delimiter = ',')]
    outputs: Vec<String>,
}

impl CompileFlags {
    /// The compile options these flags give (no calibration data).
    pub(crate) fn options(&self) -> Result<CompileOptions> {
        let mut opts = CompileOptions {
            scale_bits: self.scale_bits,
            random_samples: self.samples,
            seed: self.seed,
            precision: self.precision.unwrap_or_default(),
            ..Default::default()
        };
        opts.apply_input_specs(&self.input_range, &self.input_shape)
            .map_err(|e| anyhow!(e))?;
        opts.keep_outputs(&self.outputs);
        Ok(opts)
    }

    /// The same options as the JSON `options` part of a publish request.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "scale_bits": self.scale_bits, "samples": self.samples, "seed": self.seed,
            "input_ranges": self.input_range, "input_shapes": self.input_shape,
            "precision": self.precision.unwrap_or_default().to_string(), "outputs": self.outputs,
        })
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The `.vty` model.
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The `.vty` model.
    model: PathBuf,
    /// Input: JSON (`{"name": {"shape": [...], "data": [...]}}` or a nested array) or `.npy`;
    /// `name=file.npy` per input for models with several.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Write every intermediate tensor with its Merkle root and the trace root to this JSON file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Also write the result JSON to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Worker threads for the fast executor.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Use the plain reference executor instead of the fast one.
    #[arg(long)]
    reference: bool,
    /// Also time this many runs (after one warm-up) and report latency in microseconds.
    #[arg(long, default_value_t = 0)]
    bench: usize,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Load and validate a `.vty` file.
pub fn load_model(path: &Path) -> Result<(Model, verity_core::Hash)> {
    let bytes = read(path)?;
    vty::decode(&bytes).with_context(|| format!("{} is not a valid model", path.display()))
}

/// Split a tensor into samples for an input of shape `shape`: one sample if the sizes match, else the
/// leading axis indexes samples.
fn split_samples(t: FloatTensor, shape: &[usize], what: &str) -> Result<Vec<FloatTensor>> {
    let n: usize = shape.iter().product();
    if t.data.len() == n {
        return Ok(vec![FloatTensor {
            shape: shape.to_vec(),
            data: t.data,
        }]);
    }
    let rows = t.shape.first().copied().unwrap_or(0);
    if n == 0 || rows == 0 || rows * n != t.data.len() {
        bail!("{what}: a tensor of shape {:?} is neither one sample nor a stack of samples for an input of shape {shape:?}", t.shape);
    }
    Ok(t.data
        .chunks(n)
        .map(|c| FloatTensor {
            shape: shape.to_vec(),
            data: c.to_vec(),
        })
        .collect())
}

fn load_samples(
    specs: &[String],
    inputs: &[(String, Vec<usize>)],
    what: &str,
) -> Result<Vec<Vec<FloatTensor>>> {
    if specs.is_empty() {
        return Ok(vec![]);
    }
    // JSON: a list of sample objects, or one object; npy: stacked samples (per input with name=).
    let mut per_input: Vec<Option<Vec<FloatTensor>>> = vec![None; inputs.len()];
    let mut whole: Vec<Vec<FloatTensor>> = Vec::new();
    for spec in specs {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) if inputs.iter().any(|(i, _)| i == n) => {
                (Some(n.to_string()), f.to_string())
            }
            _ => (None, spec.clone()),
        };
        let bytes = read(Path::new(&file))?;
        if file.ends_with(".npy") {
            let idx = match &name {
                Some(n) => inputs.iter().position(|(i, _)| i == n).unwrap_or(0),
                None if inputs.len() == 1 => 0,
                None => {
                    bail!("{what}: the model has several inputs; give .npy files as name=file.npy")
                }
            };
            let t = tensor_from_npy(&bytes).with_context(|| format!("{what}: {file}"))?;
            per_input[idx] = Some(split_samples(t, &inputs[idx].1, what)?);
        } else {
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{what}: {file} is not JSON"))?;
            let docs: Vec<Value> = match v {
                Value::Array(items) if items.first().is_some_and(|x| x.is_object()) => items,
                other => vec![other],
            };
            for d in docs {
                let sample: Vec<FloatTensor> = if inputs.len() == 1 && d.get(&inputs[0].0).is_none()
                {
                    vec![tensor_from_json(&d)?]
                } else {
                    inputs
                        .iter()
                        .map(|(n, _)| {
                            d.get(n)
                                .ok_or_else(|| anyhow!("{what}: sample lacks input '{n}'"))
                                .and_then(|t| Ok(tensor_from_json(t)?))
                        })
                        .collect::<Result<_>>()?
                };
                let sample = sample
                    .into_iter()
                    .zip(inputs)
                    .map(|(t, (_, s))| split_samples(t, s, what).map(|mut v| v.remove(0)))
                    .collect::<Result<_>>()?;
                whole.push(sample);
            }
        }
    }
    if per_input.iter().any(Option::is_some) {
        let counts: Vec<usize> = per_input
            .iter()
            .map(|p| p.as_ref().map_or(0, Vec::len))
            .collect();
        if counts.iter().any(|&c| c != counts[0]) {
            bail!("{what}: every input needs the same number of samples (got {counts:?})");
        }
        let mut cols: Vec<std::vec::IntoIter<FloatTensor>> = per_input
            .into_iter()
            .map(|p| p.unwrap_or_default().into_iter())
            .collect();
        for _ in 0..counts[0] {
            whole.push(cols.iter_mut().filter_map(Iterator::next).collect());
        }
    }
    Ok(whole)
}

/// The model's input shapes, from its graph alone (its weights are not loaded).
fn model_input_shapes(onnx: &Path, import: &ImportOptions) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(verity_compiler::import::onnx_input_shapes(onnx, import)?)
}

fn cmd_compile(a: CompileArgs) -> Result<()> {
    if a.model.is_dir() {
        return cmd_compile_encoder(&a);
    }
    if !a.model.is_file() {
        bail!("cannot read {}: no such file", a.model.display());
    }
    if llm::is_gguf(&a.model) {
        return llm::cmd_compile_gguf(&a.model, &a.output, a.context);
    }
    let mut opts = a.flags.options()?;
    opts.max_elements = a.max_elements;
    if !a.calibration.is_empty() || !a.eval.is_empty() {
        let shapes = model_input_shapes(&a.model, &opts.import)?;
        opts.calibration = Some(load_samples(&a.calibration, &shapes, "calibration")?);
        opts.eval = Some(load_samples(&a.eval, &shapes, "evaluation")?);
    }
    let (model, report) = compile_path(&a.model, &opts)
        .with_context(|| format!("cannot compile {}", a.model.display()))?;
    write_compiled(&a, &model, &report)
}

/// `model compile DIR`: a sentence encoder with its tokenizer and pooling, as a node serving it for
/// `/v1/embeddings` compiles it (the same model ID).
fn cmd_compile_encoder(a: &CompileArgs) -> Result<()> {
    let opts = verity_node::embed::EmbedOptions {
        sequence: a.sequence,
        precision: a.flags.precision,
        ..Default::default()
    };
    let dir = verity_node::embed::read_dir(&a.model, &opts).map_err(|e| anyhow!(e))?;
    let (model, report) = dir.compile().map_err(|e| anyhow!(e))?;
    println!(
        "encoder      {} (sequence {}, pooling {})",
        dir.onnx.display(),
        dir.sequence,
        dir.pooling
            .as_ref()
            .map_or("in the graph".to_string(), |p| format!(
                "{}{}",
                p.mode.name(),
                if p.normalize { ", normalized" } else { "" }
            ))
    );
    write_compiled(a, &model, &report)
}

fn write_compiled(
    a: &CompileArgs,
    model: &verity_engine::Model,
    report: &verity_compiler::report::CompileReport,
) -> Result<()> {
    let (bytes, id) = vty::encode_with_id(model);
    std::fs::write(&a.output, &bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("model id     {id}");
    println!(
        "written      {} ({} bytes)",
        a.output.display(),
        bytes.len()
    );
    println!(
        "nodes        {} ({} parameters incl. tables)",
        model.nodes.len(),
        report.parameters
    );
    println!(
        "scale bits   {} (max), precision {}, {} evaluation samples",
        report.scale_bits, report.precision, report.samples
    );
    println!(
        "import check max |lowered - tract| = {:.3e}",
        report.import_check_max_abs_diff
    );
    for o in &report.outputs {
        let top1 = o
            .top1_agreement
            .map_or("n/a".to_string(), |t| format!("{:.2}%", t * 100.0));
        println!(
            "output {:<12} max abs err {:.3e}  max rel err {:.3e}  mean abs err {:.3e}  top-1 agreement {}",
            o.name, o.max_abs_error, o.max_relative_error, o.mean_abs_error, top1
        );
    }
    if let Some(m) = &report.mixed {
        println!(
            "auto         {} of {} contractions with a 12-bit operand; calibration error {:.3e} \
             (int8 {:.3e}, target {:.3e}, aimed at {:.3e}{}), {} models measured",
            m.wide.len(),
            m.contractions,
            m.calibration_error,
            m.int8_error,
            m.target,
            m.aim,
            if m.met {
                ""
            } else {
                ", not met: the most accurate kept"
            },
            m.rounds
        );
        for w in &m.wide {
            println!("  {:<40} w{}a{}", w.name, w.weight_bits, w.activation_bits);
        }
    }
    if let Some(p) = &a.report {
        let doc = json!({ "model_id": id, "report": report });
        std::fs::write(p, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let (m, id) = load_model(&a.model)?;
    let size = std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0);
    let io = |name: &str, v: u32| -> Value {
        let info = m.value(v);
        json!({"name": name, "shape": info.map(|i| i.shape.to_vec()), "scale": info.map(|i| i.scale)})
    };
    let cost = verity_engine::Cost::of(&m);
    let doc = json!({
        "model_id": id,
        "size_bytes": size,
        "parameters": m.parameter_count(),
        "cost": cost,
        "inputs": m.inputs.iter().map(|i| json!({"name": i.name, "shape": i.shape, "scale": i.scale, "kind": i.kind})).collect::<Vec<_>>(),
        "outputs": m.outputs.iter().map(|o| io(&o.name, o.value)).collect::<Vec<_>>(),
        "nodes": m.nodes.iter().map(|n| json!({
            "name": n.name, "op": n.op.name(), "inputs": n.inputs, "shape": n.shape, "scale": n.scale
        })).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("model id    {id}");
    println!(
        "size        {size} bytes, {} constant elements in {} tensors",
        m.parameter_count(),
        m.consts.len()
    );
    for i in &m.inputs {
        println!(
            "input       {} {:?} scale 2^-{} ({:?})",
            i.name, i.shape, i.scale, i.kind
        );
    }
    for o in &m.outputs {
        let v = m.value(o.value);
        println!(
            "output      {} {:?} scale 2^-{}",
            o.name,
            v.map(|v| v.shape.to_vec()).unwrap_or_default(),
            v.map_or(0, |v| v.scale)
        );
    }
    let h = |n: u64| -> String {
        let units = [
            (1u64 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        match units.iter().find(|(u, _)| n >= *u) {
            Some((u, name)) => format!("{n} ({:.2} {name})", n as f64 / *u as f64),
            None => n.to_string(),
        }
    };
    println!(
        "cost        {} multiply-accumulates, {} element ops per inference",
        h(cost.macs),
        h(cost.element_ops)
    );
    println!(
        "memory      constants {} B; live peak {} B, with the full trace {} B; trace {} B",
        h(cost.const_bytes),
        h(cost.peak_bytes),
        h(cost.traced_peak_bytes),
        h(cost.trace_bytes)
    );
    println!("nodes       {}", m.nodes.len());
    for (k, n) in m.nodes.iter().enumerate() {
        println!(
            "  {k:>4} {:<10} {:<32} -> {:?} scale 2^-{} inputs {:?}",
            n.op.name(),
            n.name,
            n.shape,
            n.scale,
            n.inputs
        );
    }
    Ok(())
}

pub(crate) fn load_inputs(m: &Model, specs: &[String]) -> Result<Vec<FloatTensor>> {
    if specs.len() == 1 && !specs[0].ends_with(".npy") && !specs[0].contains('=') {
        let text = std::fs::read_to_string(&specs[0])
            .with_context(|| format!("cannot read {}", specs[0]))?;
        return Ok(inputs_from_json(m, &text)?);
    }
    let mut out: Vec<Option<FloatTensor>> = vec![None; m.inputs.len()];
    for spec in specs {
        let (idx, file) = match spec.split_once('=') {
            Some((n, f)) => {
                let i = m
                    .inputs
                    .iter()
                    .position(|i| i.name == n)
                    .ok_or_else(|| anyhow!("the model has no input named '{n}'"))?;
                (i, f)
            }
            None if m.inputs.len() == 1 => (0, spec.as_str()),
            None => bail!(
                "the model has {} inputs; give each as name=file.npy",
                m.inputs.len()
            ),
        };
        let bytes = read(Path::new(file))?;
        out[idx] = Some(if file.ends_with(".npy") {
            tensor_from_npy(&bytes).with_context(|| file.to_string())?
        } else {
            let v: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{file} is not JSON"))?;
            tensor_from_json(&v)?
        });
    }
    out.into_iter()
        .zip(&m.inputs)
        .map(|(t, i)| t.ok_or_else(|| anyhow!("missing input '{}'", i.name)))
        .collect()
}

pub(crate) fn tensor_json(shape: &[u32], data: &[f64]) -> Value {
    json!({"shape": shape, "data": data})
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let (m, id) = load_model(&a.model)?;
    let inputs = load_inputs(&m, &a.input)?;
    let q = quantize_inputs(&m, &inputs)?;
    let input_hash = tensors_hash(&q);
    let mode = if a.reference {
        Mode::Reference
    } else {
        Mode::Fast {
            threads: a.threads.max(1),
        }
    };
    let exec = Executor::new(&m, mode);
    let timing = if a.bench > 0 {
        let mut us: Vec<f64> = Vec::with_capacity(a.bench);
        exec.run(q.clone())?;
        for _ in 0..a.bench {
            let t = std::time::Instant::now();
            std::hint::black_box(exec.run(q.clone())?);
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        let mean = us.iter().sum::<f64>() / us.len() as f64;
        // The same runs with the trace and its commitments, as a receipt needs.
        let mut ts: Vec<f64> = Vec::with_capacity(a.bench);
        for _ in 0..a.bench {
            let t = std::time::Instant::now();
            let (o, tr) = exec.run_trace(q.clone())?;
            std::hint::black_box((tensors_hash(&o), list_root(&trace_roots(&tr))));
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ts.sort_by(f64::total_cmp);
        Some(
            json!({"runs": us.len(), "min_us": us[0], "median_us": us[us.len() / 2], "mean_us": mean,
                    "with_trace_commit_median_us": ts[ts.len() / 2]}),
        )
    } else {
        None
    };
    let (outs, trace) = if a.trace.is_some() {
        let (o, t) = exec.run_trace(q)?;
        (o, Some(t))
    } else {
        (exec.run(q)?, None)
    };
    let mut outputs = serde_json::Map::new();
    for (o, data) in m.outputs.iter().zip(&outs) {
        let info = m
            .value(o.value)
            .ok_or_else(|| anyhow!("output refers to no value"))?;
        outputs.insert(
            o.name.clone(),
            tensor_json(info.shape, &dequantize(data, info.scale)),
        );
    }
    let mut doc = json!({
        "model_id": id,
        "input_hash": input_hash,
        "output_hash": tensors_hash(&outs),
        "outputs": outputs,
    });
    if let Some(t) = timing {
        doc["latency"] = t;
    }
    if let (Some(path), Some(t)) = (&a.trace, trace) {
        let roots = trace_roots(&t);
        let root = list_root(&roots);
        let ni = m.inputs.len();
        let entries: Vec<Value> = t
            .tensors
            .iter()
            .zip(&roots)
            .enumerate()
            .map(|(i, (data, r))| {
                let (name, v) = if i < ni {
                    (m.inputs[i].name.clone(), i as u32)
                } else {
                    let k = i - ni;
                    (m.nodes[k].name.clone(), (m.first_node_value() + k) as u32)
                };
                let info = m.value(v);
                json!({"value": v, "name": name, "shape": info.map(|x| x.shape.to_vec()), "scale": info.map(|x| x.scale),
                       "root": r, "data": data})
            })
            .collect();
        doc["trace_root"] = json!(root);
        let tdoc = json!({"model_id": id, "trace_root": root, "tensors": entries});
        std::fs::write(path, serde_json::to_vec(&tdoc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc)?;
    if let Some(p) = &a.output {
        std::fs::write(p, &text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{text}");
    Ok(())
}

impl Cli {
    /// A one-shot job whose peak memory is what matters (compiling or publishing a model): freed memory
    /// should go back to the kernel at once rather than be kept for reuse.
    pub fn returns_freed_memory(&self) -> bool {
        matches!(
            self.cmd,
            Cmd::Model(ModelCmd::Compile(_)) | Cmd::Model(ModelCmd::Publish(_))
        )
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Model(ModelCmd::Compile(a)) => cmd_compile(a),
        Cmd::Model(ModelCmd::Inspect(a)) => cmd_inspect(a),
        Cmd::Model(ModelCmd::Publish(a)) => net::cmd_publish(a),
        Cmd::Model(ModelCmd::Register(a)) => registry::cmd_register(a),
        Cmd::Model(ModelCmd::Ls(a)) => net::cmd_ls(a),
        Cmd::Model(ModelCmd::Show(a)) => net::cmd_show(a),
        Cmd::Model(ModelCmd::Pull(a)) => net::cmd_pull(a),
        Cmd::Run(a) => cmd_run(a),
        Cmd::Node(a) => net::cmd_node(a),
        Cmd::Key(c) => net::cmd_key(c),
        Cmd::Infer(a) => net::cmd_infer(a),
        Cmd::Devnet(a) => devnet::cmd_devnet(a),
        Cmd::Watch(a) => net::cmd_watch(a),
        Cmd::Dispute(a) => net::cmd_dispute(a),
        Cmd::Request(a) => request::cmd_request(a),
        Cmd::Prove(a) => zk::cmd_prove(a),
        Cmd::Generate(a) => llm::cmd_generate(a),
        Cmd::Verify(a) => match verify::check(&a) {
            Ok(verify::Verdict::Valid(s)) => {
                println!("{s}");
                Ok(())
            }
            Ok(verify::Verdict::Invalid(s)) => {
                println!("invalid: {s}");
                std::process::exit(1);
            }
            Ok(verify::Verdict::Unauthenticated(s)) => {
                println!("not verified: {s}");
                std::process::exit(3);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        },
    }
}
