//! `POST /v1/embeddings`, OpenAI-compatible, for the sentence-embedding models a node serves
//! ([`crate::embed`]): each input is tokenized, run through the canonical encoder (pooling and
//! normalization included), and answered with its embedding and a receipt signed by the node — the same
//! receipt as any inference (`docs/spec/embeddings.md`), so it can be re-executed offline and disputed
//! at the ReceiptCourt.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::api::openai::OaiError;
use crate::embed::EmbedModel;
use crate::error::ApiError;
use crate::state::Node;
use crate::tensors::NamedTensor;

/// Inputs one request may embed (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

const PARAMS: &[&str] = &[
    "model",
    "input",
    "encoding_format",
    "dimensions",
    "user",
    "truncate",
];

/// The models in `GET /v1/models`'s OpenAI `data` list.
pub fn model_list(node: &Node) -> Vec<Value> {
    node.embeddings
        .get()
        .map(|m| {
            m.values()
                .map(|e| {
                    json!({
                        "id": e.name, "object": "model", "created": e.created, "owned_by": "verity",
                        "verity": info(e),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a client needs to check an embedding's receipt and rebuild its inputs.
fn info(e: &EmbedModel) -> Value {
    let top = e.largest();
    json!({
        "kind": "embedding", "model_id": top.loaded.id, "dimensions": e.dimensions,
        "sequence": top.dir.sequence, "scale": top.scale, "pad_id": top.dir.pad_id,
        "inputs": top.dir.inputs, "tokenizer_hash": top.dir.tokenizer_hash,
        "pooling": top.dir.pooling.as_ref().map(|p| p.mode.name()),
        "normalize": top.dir.pooling.as_ref().map(|p| p.normalize),
        "variants": e.variants.iter().map(|v| json!({
            "sequence": v.dir.sequence, "model_id": v.loaded.id, "scale": v.scale,
            "inputs": v.dir.inputs,
        })).collect::<Vec<_>>(),
    })
}

fn bad(code: &'static str, param: &str, message: impl Into<String>) -> OaiError {
    OaiError::bad(code, Some(param), message)
}

/// One input as given: a text, or token IDs.
enum Item {
    Text(String),
    Tokens(Vec<u32>),
}

fn token_list(a: &[Value]) -> Option<Vec<u32>> {
    a.iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

fn items(v: &Value) -> Result<Vec<Item>, OaiError> {
    let malformed = || {
        bad(
            "invalid_value",
            "input",
            "'input' must be a string, a list of strings, a list of token IDs, or a list of lists of \
             token IDs",
        )
    };
    let out = match v {
        Value::String(s) => vec![Item::Text(s.clone())],
        Value::Array(a) if a.is_empty() => {
            return Err(bad("invalid_value", "input", "'input' is an empty list"))
        }
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| Item::Text(s.as_str().unwrap_or_default().to_string()))
            .collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            vec![Item::Tokens(token_list(a).ok_or_else(malformed)?)]
        }
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| {
                token_list(x.as_array().map_or(&[][..], Vec::as_slice))
                    .filter(|t| !t.is_empty())
                    .map(Item::Tokens)
                    .ok_or_else(malformed)
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(malformed()),
    };
    if out.len() > MAX_INPUTS {
        return Err(bad(
            "invalid_value",
            "input",
            format!("{} inputs in one request; at most {MAX_INPUTS}", out.len()),
        ));
    }
    Ok(out)
}

/// A parsed request.
struct Request {
    model: Arc<EmbedModel>,
    /// Each input's tokens (with the special tokens, at most the sequence length).
    tokens: Vec<Vec<u32>>,
    base64: bool,
}

fn parse(node: &Node, body: &[u8]) -> Result<Request, OaiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| OaiError::bad("invalid_json", None, format!("the body is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| OaiError::bad("invalid_json", None, "the body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(bad(
            "unsupported_parameter",
            k,
            format!("the parameter '{k}' is not supported by this server"),
        ));
    }
    let name = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing_parameter", "model", "'model' is required"))?;
    let model = node
        .embeddings
        .get()
        .and_then(|m| {
            m.get(name).or_else(|| {
                name.parse::<verity_core::hash::Hash>().ok().and_then(|id| {
                    m.values()
                        .find(|e| e.variants.iter().any(|v| v.loaded.id == id))
                })
            })
        })
        .cloned()
        .ok_or_else(|| {
            let llm = node.llms.get().is_some_and(|m| m.contains_key(name));
            OaiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: "model_not_found",
                param: Some("model".into()),
                message: if llm {
                    format!("the model '{name}' is a language model, not an embedding model")
                } else {
                    format!("the embedding model '{name}' does not exist on this node")
                },
            }
        })?;
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(bad(
                "unsupported_value",
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'",
            ))
        }
    };
    match v.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64() == Some(model.dimensions as u64) => {}
        Some(d) => {
            return Err(bad(
                "unsupported_value",
                "dimensions",
                format!(
                    "'dimensions' {d} is not supported: the model '{}' gives {} dimensions",
                    model.name, model.dimensions
                ),
            ))
        }
    }
    let truncate = match v.get("truncate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "invalid_type",
                "truncate",
                "'truncate' must be a boolean",
            ))
        }
    };
    let input = v
        .get("input")
        .ok_or_else(|| bad("missing_parameter", "input", "'input' is required"))?;
    let top = model.largest();
    let seq = top.dir.sequence;
    let mut tokens = Vec::new();
    for (i, item) in items(input)?.into_iter().enumerate() {
        let t = match item {
            Item::Text(s) => top
                .dir
                .tokens(&s, truncate.then_some(seq))
                .map_err(|e| bad("invalid_value", "input", format!("input {i}: {e}")))?,
            Item::Tokens(mut t) => {
                if let Some(x) = t.iter().find(|&&x| x as usize >= top.dir.vocab) {
                    return Err(bad(
                        "invalid_value",
                        "input",
                        format!(
                            "input {i}: token {x} is not in the model's vocabulary of {}",
                            top.dir.vocab
                        ),
                    ));
                }
                if truncate {
                    t.truncate(seq);
                }
                t
            }
        };
        if t.len() > seq {
            return Err(bad(
                "context_length_exceeded",
                "input",
                format!(
                    "input {i} is {} tokens; the model '{}' takes at most {seq} (send \"truncate\": \
                     true to embed the first {seq})",
                    t.len(),
                    model.name
                ),
            ));
        }
        tokens.push(t);
    }
    Ok(Request {
        model,
        tokens,
        base64,
    })
}

fn api_error(e: ApiError) -> OaiError {
    OaiError {
        status: e.status,
        kind: if e.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        },
        code: e.code,
        param: None,
        message: e.message,
    }
}

/// One input embedded: its receipt, its elements as integers at the variant's output scale, and the
/// variant (sequence length) it ran at.
struct Embedded {
    ints: Vec<i32>,
    receipt: verity_core::receipt::SignedReceipt,
    variant: usize,
}

async fn embed_one(
    node: &Arc<Node>,
    m: &Arc<EmbedModel>,
    tokens: &[u32],
) -> Result<Embedded, OaiError> {
    let variant = m.fitting(tokens.len());
    let v = &m.variants[variant];
    let inputs: Vec<NamedTensor> = v
        .dir
        .input_tensors(tokens)
        .into_iter()
        .map(|(name, t)| NamedTensor {
            name,
            shape: t.shape,
            data: t.data,
            decimals: None,
        })
        .collect();
    let request_id = node.new_request_id();
    let (n2, l2) = (node.clone(), v.loaded.clone());
    let inf = node
        .on_worker_est(
            v.loaded.run_inline(),
            v.loaded.expected_us(node.config.limits.assumed_ops_per_sec),
            move || n2.infer_blocking(&l2, inputs, request_id),
        )
        .await
        .and_then(|r| r)
        .map_err(api_error)?;
    let ints = inf.outputs.into_iter().next().unwrap_or_default();
    Ok(Embedded {
        ints,
        receipt: inf.receipt,
        variant,
    })
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match run(node, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run(node: Arc<Node>, body: Bytes) -> Result<Value, OaiError> {
    // tokenizing up to a whole body of text is work for a blocking thread, not the async runtime
    let n2 = node.clone();
    let r = node
        .blocking(move || parse(&n2, &body))
        .await
        .map_err(api_error)??;
    let m = r.model.clone();
    let workers = node.config.workers.max(1);
    let results: Vec<Result<Embedded, OaiError>> = futures_util::stream::iter(r.tokens.clone())
        .map(|t| {
            let (node, m) = (node.clone(), m.clone());
            async move { embed_one(&node, &m, &t).await }
        })
        .buffered(workers)
        .collect()
        .await;
    let metrics = &node.metrics;
    let failed = results.iter().filter(|r| r.is_err()).count() as u64;
    metrics
        .inference_errors
        .fetch_add(failed, Ordering::Relaxed);
    let done: Vec<Embedded> = results.into_iter().collect::<Result<_, _>>()?;
    // The answer (and with it the receipts) goes out only once the receipts are durable.
    if let Err(e) = node.flush_receipts().await {
        metrics
            .inference_errors
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        return Err(api_error(e));
    }
    metrics
        .inferences
        .fetch_add(done.len() as u64, Ordering::Relaxed);
    let data: Vec<Value> = done
        .iter()
        .zip(&r.tokens)
        .enumerate()
        .map(|(i, (e, tokens))| {
            let v = &m.variants[e.variant];
            let unit = (-(v.scale as f64)).exp2();
            // x · 2^-scale is exact in an f64, and in an f32 while |x| < 2^24
            let values = e.ints.iter().map(|&x| x as f64 * unit);
            let embedding = if r.base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = values.flat_map(|f| (f as f32).to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(values.collect::<Vec<f64>>())
            };
            json!({
                "object": "embedding", "index": i, "embedding": embedding,
                "verity": {"tokens": tokens, "sequence": v.dir.sequence, "model_id": v.loaded.id,
                           "scale": v.scale, "receipt": e.receipt,
                           "result_hash": e.receipt.receipt.result_hash()},
            })
        })
        .collect();
    let used: usize = r.tokens.iter().map(Vec::len).sum();
    Ok(json!({
        "object": "list", "data": data, "model": m.name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
        "verity": info(&m),
    }))
}
