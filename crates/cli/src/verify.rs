//! `verity verify`: check a signed receipt offline — signature and signer, and, given the data, the input
//! hash, the output hash and (with the model) a re-execution that must reproduce the trace root.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::Value;
use verity_core::{Address, Hash, SignedReceipt};
use verity_engine::commit::{tensors_hash, trace_root};
use verity_engine::io::{inputs_from_json, quantize_inputs};
use verity_engine::ir::Model;
use verity_engine::{Executor, Mode};

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The receipt (as saved by `verity infer --save-receipt`, or a full `/v1/.../infer` response), or a
    /// zk proof file.
    receipt: PathBuf,
    /// The input it claims (JSON or `.npy`, as for `verity run`); needs --model for the input scales.
    #[arg(long)]
    input: Vec<String>,
    /// The output it claims: an infer response, or `verity run` output (with --model).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The model (`.vty`): its ID must match, and with --input the result is re-executed.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Require this signer address (receipts only).
    #[arg(long)]
    signer: Option<Address>,
    /// For a quorum certificate: compare its registry snapshot with the chain at the same block
    /// (JSON-RPC URL; needs --contracts).
    #[arg(long, requires = "contracts")]
    chain: Option<String>,
    /// The deployment file for --chain.
    #[arg(long, requires = "chain")]
    contracts: Option<PathBuf>,
    /// For a quorum certificate: compare its registry snapshot with this snapshot file, trusted only
    /// as far as it is bound to the block hash given with --block-hash.
    #[arg(long, requires = "block_hash")]
    registry: Option<PathBuf>,
    /// The hash of the block the --registry snapshot was read at, as you know it from a source you
    /// trust (your own node, a block explorer): the snapshot must name exactly this block.
    #[arg(long, requires = "registry")]
    block_hash: Option<verity_core::Hash>,
    /// Accept a quorum certificate checked against no chain and no trusted snapshot (only its
    /// signatures and internal consistency): anyone can make one with fresh keys, so this says nothing
    /// about who signed it. Without this flag such a certificate is reported as not verified (exit 3).
    #[arg(long)]
    unauthenticated: bool,
    /// For a zk proof: trust this constants root for the model (as registered) instead of recomputing it.
    #[arg(long)]
    weights_root: Option<verity_core::Hash>,
}

/// The outcome of `verity verify`.
pub enum Verdict {
    /// Every check held (exit 0).
    Valid(String),
    /// Something failed (exit 1).
    Invalid(String),
    /// Nothing failed, but what would make it evidence was not checked (exit 3): named in the text.
    Unauthenticated(String),
}

fn read_json(p: &PathBuf) -> Result<Value> {
    let b = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("{} is not JSON", p.display()))
}

/// Quantized outputs from a claimed output file, in model order.
fn claimed_outputs(doc: &Value, model: Option<&Model>) -> Result<Vec<Vec<i32>>, String> {
    let outs = doc.get("outputs").unwrap_or(doc);
    // name -> (scale, data)
    let mut named: Vec<(String, Option<i8>, Vec<f64>)> = Vec::new();
    let nums = |v: &Value| -> Result<Vec<f64>, String> {
        let mut out = Vec::new();
        fn walk(v: &Value, out: &mut Vec<f64>) -> Result<(), String> {
            match v {
                Value::Array(a) => a.iter().try_for_each(|x| walk(x, out)),
                Value::Number(n) => {
                    out.push(n.as_f64().ok_or("number out of range")?);
                    Ok(())
                }
                _ => Err("output data must be numbers".into()),
            }
        }
        walk(v, &mut out)?;
        Ok(out)
    };
    match outs {
        Value::Array(list) => {
            for o in list {
                let name = o["name"]
                    .as_str()
                    .ok_or("an output has no name")?
                    .to_string();
                let scale = o
                    .get("scale")
                    .or_else(|| o.get("parameters").and_then(|p| p.get("scale")))
                    .and_then(Value::as_i64)
                    .map(|s| s as i8);
                let data = nums(o.get("data").ok_or("an output has no data")?)?;
                named.push((name, scale, data));
            }
        }
        Value::Object(map) => {
            for (name, t) in map {
                let data = nums(t.get("data").unwrap_or(t))?;
                let scale = t.get("scale").and_then(Value::as_i64).map(|s| s as i8);
                named.push((name.clone(), scale, data));
            }
        }
        _ => return Err("no outputs in the output file".into()),
    }
    let order: Vec<(String, Option<i8>)> = match model {
        Some(m) => m
            .outputs
            .iter()
            .map(|o| (o.name.clone(), m.value(o.value).map(|i| i.scale)))
            .collect(),
        None => {
            if !outs.is_array() {
                return Err("this output file lists outputs by name only; give --model for their order and scales".into());
            }
            named.iter().map(|(n, _, _)| (n.clone(), None)).collect()
        }
    };
    order
        .iter()
        .map(|(name, model_scale)| {
            let (_, file_scale, data) = named
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| format!("the output file has no output '{name}'"))?;
            let scale = model_scale
                .or(*file_scale)
                .ok_or_else(|| format!("output '{name}' has no scale; give --model"))?;
            data.iter()
                .map(|&x| {
                    let q = x * 2f64.powi(scale as i32);
                    if q.fract() != 0.0 || q.abs() > i32::MAX as f64 + 1.0 {
                        Err(format!(
                            "output '{name}' holds {x}, which is not a value at scale 2^-{scale}"
                        ))
                    } else {
                        Ok(q as i32)
                    }
                })
                .collect()
        })
        .collect()
}

pub fn check(a: &VerifyArgs) -> Result<Verdict> {
    let raw = std::fs::read(&a.receipt)
        .with_context(|| format!("cannot read {}", a.receipt.display()))?;
    if verity_zk::file::is_proof_file(&raw) {
        return crate::zk::check_proof(&raw, a.model.as_ref(), a.weights_root);
    }
    let doc = read_json(&a.receipt)?;
    if let Some(items) = doc["data"].as_array().filter(|_| doc["object"] == "list") {
        if items.iter().any(|i| i["object"] == "embedding") {
            return check_embeddings(a, &doc, items);
        }
    }
    let receipt_v = if doc
        .get("receipt")
        .is_some_and(|r| r.get("receipt").is_some())
    {
        doc["receipt"].clone()
    } else {
        doc.clone()
    };
    let cert_v = doc.get("certificate").cloned().or_else(|| {
        (doc.get("registry").is_some() && doc.get("receipts").is_some()).then(|| doc.clone())
    });
    if let Some(cv) = cert_v {
        return check_certificate(a, &doc, cv);
    }
    let signed: SignedReceipt = serde_json::from_value(receipt_v)
        .with_context(|| format!("{} is not a signed receipt", a.receipt.display()))?;
    if doc
        .get("verity")
        .is_some_and(|v| v.get("prompt_tokens").is_some())
    {
        return check_completions(a, &doc, &signed);
    }
    // A full response carries its outputs: they must be the ones the receipt signs.
    if a.output.is_none() && doc.get("receipt").is_some() {
        if let Some(outs) = doc.get("outputs") {
            match verity_node::roles::quorum::outputs_hash(outs) {
                Ok(h) if h == signed.receipt.output_hash => {}
                Ok(h) => {
                    return Ok(Verdict::Invalid(format!(
                        "the response's outputs hash to {h}, its receipt signs {}",
                        signed.receipt.output_hash
                    )))
                }
                Err(e) => return Ok(Verdict::Invalid(format!("the response's outputs: {e}"))),
            }
            return Ok(match check_receipt(a, &signed)? {
                Verdict::Valid(v) => Verdict::Valid(format!("{v}, the response's outputs")),
                other => other,
            });
        }
    }
    check_receipt(a, &signed)
}

/// A completion from the OpenAI-compatible API (its full response): the top-level receipt, and each
/// choice's own when there are several (`n` > 1), checked by [`check_completion`].
fn check_completions(a: &VerifyArgs, doc: &Value, signed: &SignedReceipt) -> Result<Verdict> {
    let mut verdict = check_completion(a, &doc["verity"], signed)?;
    let choices = doc["choices"].as_array().cloned().unwrap_or_default();
    let with_receipts: Vec<&Value> = choices
        .iter()
        .filter(|c| c.get("receipt").is_some())
        .collect();
    for (i, c) in with_receipts.iter().enumerate() {
        let signed: SignedReceipt = serde_json::from_value(c["receipt"].clone())
            .with_context(|| format!("choice {i}'s receipt is not a signed receipt"))?;
        match check_completion(a, &c["verity"], &signed)? {
            Verdict::Valid(_) => {}
            Verdict::Invalid(why) => return Ok(Verdict::Invalid(format!("choice {i}: {why}"))),
            other => return Ok(other),
        }
    }
    if let (Verdict::Valid(v), n @ 2..) = (&verdict, with_receipts.len()) {
        verdict = Verdict::Valid(format!("{v}; and each of the {n} choices likewise"));
    }
    Ok(verdict)
}

/// A completion's prompt and output tokens, sampler and rules, from its `verity` fields.
fn completion_parts(
    v: &Value,
) -> Result<(
    Vec<u32>,
    Vec<u32>,
    verity_llm::sample::Sampler,
    verity_llm::generate::Rules,
)> {
    let f: verity_llm::generate::CompletionFields = serde_json::from_value(v.clone())
        .map_err(|e| anyhow::anyhow!("the response's verity fields are not a completion's: {e}"))?;
    let (sampler, rules) = f
        .sampler_and_rules()
        .map_err(|e| anyhow::anyhow!("the response's verity fields: {e}"))?;
    Ok((f.prompt_tokens, f.output_tokens, sampler, rules))
}

/// One completion's `verity` fields and receipt: the signature, the prompt and parameters against the
/// receipt's input hash, the output tokens against its output hash, and with `--model FILE.gguf` the
/// generation re-executed (spec: `docs/spec/llm.md` §7).
fn check_completion(a: &VerifyArgs, v: &Value, signed: &SignedReceipt) -> Result<Verdict> {
    use verity_llm::generate::{complete, input_hash, tokens_hash};
    let signer = match checked_signer(a, signed) {
        Ok(s) => s,
        Err(e) => return Ok(Verdict::Invalid(format!("the receipt: {e}"))),
    };
    let (prompt, output, sampler, rules) = completion_parts(v)?;
    let r = &signed.receipt;
    let input = input_hash(&prompt, &sampler, &rules);
    if input != r.input_hash {
        return Ok(Verdict::Invalid(format!(
            "the prompt and parameters hash to {input}, the receipt signs {}",
            r.input_hash
        )));
    }
    if tokens_hash(&output) != r.output_hash {
        return Ok(Verdict::Invalid(format!(
            "the output tokens hash to {}, the receipt signs {}",
            tokens_hash(&output),
            r.output_hash
        )));
    }
    let Some(path) = &a.model else {
        return Ok(Verdict::Valid(format!(
            "signed by {signer}; the prompt, parameters and {} output tokens are the ones it signs \
             (not re-executed: give --model FILE.gguf)",
            output.len()
        )));
    };
    let g = verity_llm::gguf::Gguf::open(path)
        .with_context(|| format!("{} is not a GGUF file", path.display()))?;
    let context = v["context"]
        .as_u64()
        .context("the response's verity.context is not an integer")? as usize;
    let step = verity_llm::compile(&g, context)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    let id = verity_engine::vty::model_id(&step.model);
    if id != r.model_id {
        return Ok(Verdict::Invalid(format!(
            "{} at context {context} is the model {id}, the receipt names {}",
            path.display(),
            r.model_id
        )));
    }
    let tk = verity_llm::Tokenizer::from_gguf(&g)?;
    let out = complete(&step, &tk, 1, &sampler, &prompt, &rules, |_, _| true)?;
    if out.tokens != output {
        return Ok(Verdict::Invalid(format!(
            "re-execution gives other tokens ({} of them, hash {}) than the receipt signs",
            out.tokens.len(),
            tokens_hash(&out.tokens)
        )));
    }
    if out.steps_root != r.trace_root {
        return Ok(Verdict::Invalid(format!(
            "re-execution's step commitments {} differ from the receipt's trace root {}",
            out.steps_root, r.trace_root
        )));
    }
    Ok(Verdict::Valid(format!(
        "signed by {signer}; re-execution gives the same {} tokens and step commitments",
        out.tokens.len()
    )))
}

/// A quorum certificate: the certificate itself, its snapshot against the chain or a file when given, the
/// outputs of a full response, then the receipt checks (model, input, output, re-execution) on its first
/// receipt, which all k share.
fn check_certificate(a: &VerifyArgs, doc: &Value, cv: Value) -> Result<Verdict> {
    use verity_chain::cert::{
        check_snapshot, verify_certificate, QuorumCertificate, RegistrySnapshot,
    };
    let cert: QuorumCertificate = serde_json::from_value(cv)
        .with_context(|| format!("{} is not a quorum certificate", a.receipt.display()))?;
    let summary = match verify_certificate(&cert) {
        Ok(s) => s,
        Err(e) => return Ok(Verdict::Invalid(format!("certificate: {e}"))),
    };
    let mut checked = vec![format!(
        "{} signatures from distinct drawn nodes (positions {:?})",
        cert.k, summary.positions
    )];
    if let Some(p) = &a.registry {
        let b = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let trusted: RegistrySnapshot = serde_json::from_slice(&b)
            .with_context(|| format!("{} is not a registry snapshot", p.display()))?;
        if Some(trusted.block_hash) != a.block_hash {
            return Ok(Verdict::Invalid(format!(
                "the snapshot {} is of block hash {}, not the block hash you gave",
                p.display(),
                trusted.block_hash
            )));
        }
        if let Err(e) = check_snapshot(&cert.registry, &trusted) {
            return Ok(Verdict::Invalid(e.to_string()));
        }
        checked.push(format!("registry snapshot = {}", p.display()));
    }
    if let (Some(rpc), Some(file)) = (&a.chain, &a.contracts) {
        let dep = verity_chain::Deployment::load(file).map_err(|e| anyhow!("{e}"))?;
        let court = dep.court.ok_or_else(|| {
            anyhow!(
                "{} names no ReceiptCourt: certificates are signed for it",
                file.display()
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let trusted = rt
            .block_on(async {
                let c = verity_chain::EvmChain::connect(rpc, dep, None).await?;
                c.registry_at(cert.registry.block).await
            })
            .map_err(|e| anyhow!("{e}"))?;
        if let Err(e) = check_snapshot(&cert.registry, &trusted) {
            return Ok(Verdict::Invalid(e.to_string()));
        }
        if cert.receipts[0].domain.verifying_contract != Some(court) {
            return Ok(Verdict::Invalid(format!(
                "the receipts are signed for contract {:?}, this deployment's receipt court is {court}",
                cert.receipts[0].domain.verifying_contract
            )));
        }
        checked.push(format!(
            "registry at block {} on the chain",
            cert.registry.block
        ));
    }
    if let Some(outs) = doc
        .get("outputs")
        .filter(|_| doc.get("certificate").is_some())
    {
        match verity_node::roles::quorum::outputs_hash(outs) {
            Ok(h) if h == cert.output_hash => checked.push("the response's outputs".into()),
            Ok(h) => {
                return Ok(Verdict::Invalid(format!(
                    "the response's outputs hash to {h}, the certificate says {}",
                    cert.output_hash
                )))
            }
            Err(e) => return Ok(Verdict::Invalid(format!("the response's outputs: {e}"))),
        }
    }
    if doc.get("certificate").is_some() && doc["verity"].get("output_tokens").is_some() {
        // a completion: its tokens and parameters are the ones the nodes agreed on
        let (prompt, output, sampler, rules) = completion_parts(&doc["verity"])?;
        let input = verity_llm::generate::input_hash(&prompt, &sampler, &rules);
        let out = verity_llm::generate::tokens_hash(&output);
        if input != cert.input_hash || out != cert.output_hash {
            return Ok(Verdict::Invalid(format!(
                "the response's prompt and parameters hash to {input} and its output tokens to {out}; the certificate says {} and {}",
                cert.input_hash, cert.output_hash
            )));
        }
        checked.push("the completion's tokens and parameters".into());
    }
    let authenticated = a.registry.is_some() || a.chain.is_some();
    // The receipt checks only (the snapshot checks are done above).
    let first = VerifyArgs {
        signer: None,
        chain: None,
        contracts: None,
        registry: None,
        ..a.clone()
    };
    match check_receipt(&first, &cert.receipts[0])? {
        Verdict::Invalid(e) => Ok(Verdict::Invalid(e)),
        Verdict::Unauthenticated(e) => Ok(Verdict::Unauthenticated(e)),
        Verdict::Valid(v) => {
            let extra = v.split("; checked ").nth(1).unwrap_or("signature");
            if !authenticated && !a.unauthenticated {
                return Ok(Verdict::Unauthenticated(format!(
                    "the certificate's {} signatures and draw are consistent ({}, {extra}), but its signers were checked against no chain (--chain and --contracts) and no trusted registry snapshot (--registry with --block-hash): anyone can make such a certificate with fresh keys. Give one of them, or --unauthenticated to accept it as unauthenticated",
                    cert.k,
                    checked.join(", ")
                )));
            }
            let label = if authenticated {
                "valid quorum certificate"
            } else {
                "UNAUTHENTICATED quorum certificate (signers not checked against any registry)"
            };
            Ok(Verdict::Valid(format!(
                "{label}: {} nodes ({}) agree on output {} for model {} input {} request {}; checked {}, {}",
                cert.k,
                summary
                    .signers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                cert.output_hash,
                cert.model_id,
                cert.input_hash,
                cert.request_id,
                checked.join(", "),
                extra
            )))
        }
    }
}

/// Who signed `signed`, or why it is not accepted: a bad signature, or a signer other than the one
/// --signer requires.
fn checked_signer(a: &VerifyArgs, signed: &SignedReceipt) -> Result<Address, String> {
    let signer = signed.verify().map_err(|e| format!("signature: {e}"))?;
    match a.signer {
        Some(want) if want != signer => {
            Err(format!("signed by {signer}, not by the required {want}"))
        }
        _ => Ok(signer),
    }
}

/// Run `m` on the quantized inputs `q`: None if it reproduces the receipt's output hash and trace root
/// (the output hash alone for a deferred trace root), else what differs.
fn reexecute(m: &Model, q: Vec<Vec<i32>>, r: &verity_core::Receipt) -> Result<Option<String>> {
    let exec = Executor::new(m, Mode::Fast { threads: 1 });
    let (outs, trace) = if r.trace_root == Hash::ZERO {
        (exec.run(q)?, None)
    } else {
        let (outs, trace) = exec.run_trace(q)?;
        (outs, Some(trace))
    };
    let oh = tensors_hash(&outs);
    if oh != r.output_hash {
        return Ok(Some(format!(
            "re-execution gives output hash {oh}, the receipt claims {}",
            r.output_hash
        )));
    }
    let Some(trace) = trace else {
        return Ok(None);
    };
    let tr = trace_root(&trace);
    if tr != r.trace_root {
        return Ok(Some(format!(
            "re-execution gives trace root {tr}, the receipt claims {}",
            r.trace_root
        )));
    }
    Ok(None)
}

/// What [`reexecute`] compared for receipt `r`.
fn reexecuted(r: &verity_core::Receipt) -> &'static str {
    if r.trace_root == Hash::ZERO {
        "re-execution (output hash; trace root deferred)"
    } else {
        "re-execution (output hash, trace root)"
    }
}

/// An embeddings response from `POST /v1/embeddings`: every item's receipt — signature (and signer),
/// its input hash against the item's tokens made into the model's inputs, its output hash against the
/// item's embedding, and with --model (the compiled `.vty`, or the encoder directory, compiled here at
/// each item's sequence length) the model ID and a re-execution.
fn check_embeddings(a: &VerifyArgs, doc: &Value, items: &[Value]) -> Result<Verdict> {
    use std::collections::BTreeMap;
    use verity_node::embed::EncoderDir;
    let info = &doc["verity"];
    let dir: Option<EncoderDir> = match &a.model {
        Some(p) if p.is_dir() => {
            let opts = verity_node::embed::EmbedOptions {
                sequence: info["sequence"].as_u64().map(|s| s as usize),
                ..Default::default()
            };
            Some(verity_node::embed::read_dir(p, &opts).map_err(|e| anyhow!(e))?)
        }
        _ => None,
    };
    let file_model = match &a.model {
        Some(p) if !p.is_dir() => Some(crate::load_model(p)?.0),
        _ => None,
    };
    // compiled from the directory, once per sequence length
    let mut compiled: BTreeMap<usize, Model> = BTreeMap::new();
    let pad = dir
        .as_ref()
        .map(|d| d.pad_id)
        .or_else(|| info["pad_id"].as_u64().map(|p| p as u32))
        .ok_or_else(|| anyhow!("the response names no pad token (verity.pad_id)"))?;
    let mut signers = std::collections::BTreeSet::new();
    let mut reexecution = String::new();
    for (i, item) in items.iter().enumerate() {
        let v = &item["verity"];
        let signed: SignedReceipt = serde_json::from_value(v["receipt"].clone())
            .with_context(|| format!("item {i} has no signed receipt"))?;
        let r = &signed.receipt;
        let signer = match checked_signer(a, &signed) {
            Ok(s) => s,
            Err(e) => return Ok(Verdict::Invalid(format!("item {i}: {e}"))),
        };
        signers.insert(signer);
        let seq_claimed = v["sequence"]
            .as_u64()
            .or_else(|| info["sequence"].as_u64())
            .unwrap_or(0) as usize;
        let model: Option<&Model> = match (&dir, &file_model) {
            (Some(d), _) => {
                if let std::collections::btree_map::Entry::Vacant(e) = compiled.entry(seq_claimed) {
                    e.insert(d.at(seq_claimed).compile().map_err(|e| anyhow!(e))?.0);
                }
                compiled.get(&seq_claimed)
            }
            (None, Some(m)) => Some(m),
            (None, None) => None,
        };
        // the inputs in order, the sequence length and the output scale: from the model when given,
        // else as the response says
        let (names, seq, scale) = match model {
            Some(m) => {
                let id = verity_engine::vty::model_id(m);
                if id != r.model_id {
                    return Ok(Verdict::Invalid(format!(
                        "item {i}: the model's ID is {id}, the receipt is for {}",
                        r.model_id
                    )));
                }
                let out = m.outputs.first().and_then(|o| m.value(o.value));
                (
                    m.inputs.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
                    m.inputs
                        .first()
                        .map_or(0, |x| x.shape.last().copied().unwrap_or(0) as usize),
                    out.map_or(0, |o| o.scale),
                )
            }
            None => {
                let variant = info["variants"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|x| x["model_id"] == v["model_id"]))
                    .unwrap_or(info);
                (
                    serde_json::from_value(variant["inputs"].clone())
                        .map_err(|_| anyhow!("the response names no inputs (verity.inputs)"))?,
                    seq_claimed,
                    v["scale"]
                        .as_i64()
                        .or_else(|| info["scale"].as_i64())
                        .unwrap_or(0) as i8,
                )
            }
        };
        let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone())
            .with_context(|| format!("item {i} has no tokens"))?;
        if tokens.len() > seq {
            return Ok(Verdict::Invalid(format!(
                "item {i} has {} tokens, more than the sequence of {seq}",
                tokens.len()
            )));
        }
        let q = verity_node::embed::input_ints(&names, seq, pad, &tokens);
        let h = tensors_hash(&q);
        if h != r.input_hash {
            return Ok(Verdict::Invalid(format!(
                "item {i}: its tokens make inputs hashing to {h}, the receipt signs {}",
                r.input_hash
            )));
        }
        let floats = match verity_node::embed::embedding_floats(&item["embedding"]) {
            Ok(f) => f,
            Err(e) => return Ok(Verdict::Invalid(format!("item {i}: {e}"))),
        };
        let Some(ints) = verity_node::embed::embedding_ints(&floats, scale) else {
            return Ok(Verdict::Invalid(format!(
                "item {i}: the embedding is not made of multiples of 2^-{scale}"
            )));
        };
        let h = tensors_hash(&[ints]);
        if h != r.output_hash {
            return Ok(Verdict::Invalid(format!(
                "item {i}: the embedding hashes to {h}, the receipt signs {}",
                r.output_hash
            )));
        }
        if let Some(m) = model {
            if let Some(bad) = reexecute(m, q, r)? {
                return Ok(Verdict::Invalid(format!("item {i}: {bad}")));
            }
            reexecution = format!(", model ID, {}", reexecuted(r));
        }
    }
    let signers: Vec<String> = signers.iter().map(|s| s.to_string()).collect();
    Ok(Verdict::Valid(format!(
        "valid: {} embeddings signed by {}; checked signatures, input hashes (tokens), output hashes \
         (embeddings){reexecution}",
        items.len(),
        signers.join(", "),
    )))
}

fn check_receipt(a: &VerifyArgs, signed: &SignedReceipt) -> Result<Verdict> {
    let r = &signed.receipt;
    let mut checked = vec!["signature"];
    let signer = match checked_signer(a, signed) {
        Ok(s) => s,
        Err(e) => return Ok(Verdict::Invalid(e)),
    };
    if a.signer.is_some() {
        checked.push("signer");
    }
    let model = match &a.model {
        Some(p) => {
            let (m, id) = crate::load_model(p)?;
            if id != r.model_id {
                return Ok(Verdict::Invalid(format!(
                    "the model file's ID is {id}, the receipt is for {}",
                    r.model_id
                )));
            }
            checked.push("model ID");
            Some(m)
        }
        None => None,
    };
    let mut q_inputs = None;
    if !a.input.is_empty() {
        let m = model.as_ref().ok_or_else(|| {
            anyhow!("--input needs --model (the input scales come from the model)")
        })?;
        let inputs = if a.input.len() == 1 && a.input[0].ends_with(".json") {
            let text = std::fs::read_to_string(&a.input[0])
                .with_context(|| format!("cannot read {}", a.input[0]))?;
            inputs_from_json(m, &text)?
        } else {
            crate::load_inputs(m, &a.input)?
        };
        let q = quantize_inputs(m, &inputs)?;
        let h = tensors_hash(&q);
        if h != r.input_hash {
            return Ok(Verdict::Invalid(format!(
                "input hash {h} of the given input differs from the receipt's {}",
                r.input_hash
            )));
        }
        checked.push("input hash");
        q_inputs = Some(q);
    }
    if let Some(p) = &a.output {
        let out_doc = read_json(p)?;
        let q = match claimed_outputs(&out_doc, model.as_ref()) {
            Ok(q) => q,
            Err(e) => return Ok(Verdict::Invalid(format!("output file: {e}"))),
        };
        let h = tensors_hash(&q);
        if h != r.output_hash {
            return Ok(Verdict::Invalid(format!(
                "output hash {h} of the given output differs from the receipt's {}",
                r.output_hash
            )));
        }
        checked.push("output hash");
    }
    if let (Some(m), Some(q)) = (&model, q_inputs) {
        if let Some(bad) = reexecute(m, q, r)? {
            return Ok(Verdict::Invalid(bad));
        }
        checked.push(reexecuted(r));
    }
    Ok(Verdict::Valid(format!(
        "valid: model {} request {} signed by {} at {}; checked {}",
        r.model_id,
        r.request_id,
        signer,
        r.timestamp,
        checked.join(", ")
    )))
}
