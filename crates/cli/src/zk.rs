//! `verity prove` and the proof branch of `verity verify`: zero-knowledge-mode proofs of canonical
//! inference, checked offline against the model's circuit and its constants commitment.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use verity_core::Hash;
use verity_engine::commit::tensors_hash;
use verity_engine::io::{dequantize, quantize_inputs};
use verity_engine::ir::Model;
use verity_zk::{ProofFile, VerifyingKey, ZkError};

use crate::verify::Verdict;
use crate::{load_inputs, load_model, tensor_json};

#[derive(Args, Debug)]
pub struct ProveArgs {
    /// The `.vty` model.
    model: PathBuf,
    /// Input, as for `verity run` (JSON or `.npy`; `name=file.npy` per input).
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Where to write the proof file.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Outputs as JSON (dequantized, by name).
pub fn outputs_json(m: &Model, outs: &[Vec<i32>]) -> Value {
    let mut o = serde_json::Map::new();
    for (out, data) in m.outputs.iter().zip(outs) {
        if let Some(info) = m.value(out.value) {
            o.insert(
                out.name.clone(),
                tensor_json(info.shape, &dequantize(data, info.scale)),
            );
        }
    }
    Value::Object(o)
}

pub fn cmd_prove(a: ProveArgs) -> Result<()> {
    let (m, id) = load_model(&a.model)?;
    let inputs = load_inputs(&m, &a.input)?;
    let q = quantize_inputs(&m, &inputs)?;
    let t = Instant::now();
    let pk = verity_zk::keygen(&m, id).map_err(|e| anyhow!("{e}"))?;
    let keygen_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let (outs, proof) = verity_zk::prove(&pk, &q).map_err(|e| anyhow!("{e}"))?;
    let prove_ms = t.elapsed().as_secs_f64() * 1e3;
    let file = ProofFile {
        model_id: id,
        w_root: pk.w.root,
        inputs: q.clone(),
        outputs: outs.clone(),
        proof,
    };
    let bytes = file.to_bytes();
    std::fs::write(&a.output, &bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let doc = json!({
        "model_id": id,
        "weights_root": pk.w.root,
        "input_hash": tensors_hash(&q),
        "output_hash": tensors_hash(&outs),
        "outputs": outputs_json(&m, &outs),
        "proof": a.output.display().to_string(),
        "proof_bytes": file.proof.len(),
        "file_bytes": bytes.len(),
        "proving_key_bytes": pk.w.bytes(),
        "keygen_ms": keygen_ms,
        "prove_ms": prove_ms,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// Check a proof file against a model; `w_root` (if given) is trusted as the model's constants
/// commitment instead of recomputing it.
pub fn check_proof(bytes: &[u8], model: Option<&PathBuf>, w_root: Option<Hash>) -> Result<Verdict> {
    let file = match ProofFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => return Ok(Verdict::Invalid(e.to_string())),
    };
    let path =
        model.ok_or_else(|| anyhow!("a proof is checked against its model: give --model"))?;
    let (m, id) = load_model(path)?;
    if id != file.model_id {
        return Ok(Verdict::Invalid(format!(
            "the proof is for model {}, the file given is model {id}",
            file.model_id
        )));
    }
    let t = Instant::now();
    let root = match w_root {
        Some(r) => r,
        None => match verity_zk::keygen(&m, id) {
            Ok(pk) => pk.w.root,
            Err(e) => return Ok(Verdict::Invalid(e.to_string())),
        },
    };
    let keys_ms = t.elapsed().as_secs_f64() * 1e3;
    if root != file.w_root {
        return Ok(Verdict::Invalid(format!(
            "the proof commits to constants root {}, the model's is {root}",
            file.w_root
        )));
    }
    let vk = VerifyingKey {
        model_id: id,
        w_root: root,
    };
    let t = Instant::now();
    match verity_zk::verify(&m, &vk, &file.inputs, &file.outputs, &file.proof) {
        Ok(()) => {
            let verify_ms = t.elapsed().as_secs_f64() * 1e3;
            let doc = json!({
                "valid": true,
                "kind": "zk proof",
                "model_id": id,
                "weights_root": root,
                "input_hash": tensors_hash(&file.inputs),
                "output_hash": tensors_hash(&file.outputs),
                "outputs": outputs_json(&m, &file.outputs),
                "proof_bytes": file.proof.len(),
                "weights_root_ms": keys_ms,
                "verify_ms": verify_ms,
            });
            Ok(Verdict::Valid(serde_json::to_string_pretty(&doc)?))
        }
        Err(ZkError::Unsupported(e)) => bail!("this model cannot be checked in zk mode: {e}"),
        Err(e) => Ok(Verdict::Invalid(e.to_string())),
    }
}
