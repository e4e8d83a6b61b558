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
use serde::Serialize;
use serde_json::Value;
use verity_core::hash::Hash;

use crate::api::openai::{only_parameters, ModelDetails, ModelEntry, OaiError};
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

/// The embedding models in `GET /v1/models`' OpenAI `data` list.
pub fn model_list(node: &Node) -> Vec<ModelEntry> {
    node.embeddings
        .get()
        .map(|m| {
            m.values()
                .map(|e| ModelEntry {
                    id: e.name.clone(),
                    object: "model",
                    created: e.created,
                    owned_by: "verity",
                    verity: ModelDetails::Embedding(info(e)),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a client needs to check an embedding's receipt and rebuild its inputs.
#[derive(Serialize)]
pub struct EmbeddingInfo {
    /// `embedding`.
    pub kind: &'static str,
    /// The longest variant's model ID.
    pub model_id: Hash,
    /// Width of an embedding.
    pub dimensions: usize,
    /// The longest input served, in tokens.
    pub sequence: usize,
    /// Fractional bits of the longest variant's embedding elements.
    pub scale: i8,
    /// Token ID that pads an input to its variant's length.
    pub pad_id: u32,
    /// The compiled model's inputs, in order.
    pub inputs: Vec<String>,
    /// keccak256 of the tokenizer file.
    pub tokenizer_hash: Hash,
    /// Pooling mode, when the model pools.
    pub pooling: Option<&'static str>,
    /// Whether embeddings are L2-normalized.
    pub normalize: Option<bool>,
    /// Each compiled sequence length.
    pub variants: Vec<VariantInfo>,
}

/// One compiled sequence length of an embedding model.
#[derive(Serialize)]
pub struct VariantInfo {
    /// Tokens it takes.
    pub sequence: usize,
    /// Its model ID (what its receipts name).
    pub model_id: Hash,
    /// Fractional bits of its embedding elements.
    pub scale: i8,
    /// Its inputs, in order.
    pub inputs: Vec<String>,
}

fn info(e: &EmbedModel) -> EmbeddingInfo {
    let top = e.largest();
    EmbeddingInfo {
        kind: "embedding",
        model_id: top.loaded.id,
        dimensions: e.dimensions,
        sequence: top.dir.sequence,
        scale: top.scale,
        pad_id: top.dir.pad_id,
        inputs: top.dir.inputs.clone(),
        tokenizer_hash: top.dir.tokenizer_hash,
        pooling: top.dir.pooling.as_ref().map(|p| p.mode.name()),
        normalize: top.dir.pooling.as_ref().map(|p| p.normalize),
        variants: e
            .variants
            .iter()
            .map(|v| VariantInfo {
                sequence: v.dir.sequence,
                model_id: v.loaded.id,
                scale: v.scale,
                inputs: v.dir.inputs.clone(),
            })
            .collect(),
    }
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
    only_parameters(&v, &[PARAMS])?;
    let model = find_model(node, &v)?;
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
    let tokens = items(input)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| item_tokens(&model, i, item, truncate))
        .collect::<Result<_, _>>()?;
    Ok(Request {
        model,
        tokens,
        base64,
    })
}

/// The embedding model named by `model`: by name, or by the model ID of one of its variants.
fn find_model(node: &Node, v: &Value) -> Result<Arc<EmbedModel>, OaiError> {
    let name = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing_parameter", "model", "'model' is required"))?;
    node.embeddings
        .get()
        .and_then(|m| {
            m.get(name).or_else(|| {
                name.parse::<Hash>().ok().and_then(|id| {
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
        })
}

/// Input `i`'s tokens (special tokens included), within the model's largest sequence length — cut to
/// it when `truncate`, refused otherwise.
fn item_tokens(
    model: &EmbedModel,
    i: usize,
    item: Item,
    truncate: bool,
) -> Result<Vec<u32>, OaiError> {
    let top = model.largest();
    let seq = top.dir.sequence;
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
    Ok(t)
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

/// An embedding's values: floats, or base64 of little-endian f32s.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f64>),
    Base64(String),
}

/// What binds one embedding: its tokens, the variant that ran, and the receipt.
#[derive(Serialize)]
struct EmbeddingEvidence {
    tokens: Vec<u32>,
    sequence: usize,
    model_id: Hash,
    scale: i8,
    receipt: verity_core::SignedReceipt,
    result_hash: Hash,
}

/// One input's embedding.
#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
    verity: EmbeddingEvidence,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings`' answer.
#[derive(Serialize)]
struct EmbeddingList {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: EmbeddingUsage,
    verity: EmbeddingInfo,
}

async fn run(node: Arc<Node>, body: Bytes) -> Result<EmbeddingList, OaiError> {
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
    let data = done
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
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(values.collect())
            };
            Embedding {
                object: "embedding",
                index: i,
                embedding,
                verity: EmbeddingEvidence {
                    tokens: tokens.clone(),
                    sequence: v.dir.sequence,
                    model_id: v.loaded.id,
                    scale: v.scale,
                    result_hash: e.receipt.receipt.result_hash(),
                    receipt: e.receipt.clone(),
                },
            }
        })
        .collect();
    let used: usize = r.tokens.iter().map(Vec::len).sum();
    Ok(EmbeddingList {
        object: "list",
        data,
        model: m.name.clone(),
        usage: EmbeddingUsage {
            prompt_tokens: used,
            total_tokens: used,
        },
        verity: info(&m),
    })
}
