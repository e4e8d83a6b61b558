//! The OpenAI-compatible API for the language models a node serves from GGUF files
//! (`POST /v1/chat/completions`, `POST /v1/completions`, and the models in `GET /v1/models`'s
//! `data`): canonical generations (`docs/spec/llm.md`), each answered with a receipt signed by the
//! node that binds the model, the prompt's tokens, the sampling parameters and seed, the output's tokens
//! and every step's logits (spec: `docs/spec/llm.md` §7).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use verity_core::hash::{keccak256, Hash};
use verity_core::receipt::{receipt_domain, Receipt, SignedReceipt};
use verity_llm::generate::{
    input_hash, tokens_hash, CompletionFields, Finish, Format, Outcome, Rules,
};
use verity_llm::sample::{Params, Sampler};

use crate::llm::scheduler::Job;
use crate::llm::LlmModel;
use crate::state::Node;

/// An error in OpenAI's shape.
pub struct OaiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) param: Option<String>,
    pub(crate) message: String,
}

impl OaiError {
    pub(crate) fn bad(
        code: &'static str,
        param: Option<&str>,
        message: impl Into<String>,
    ) -> OaiError {
        OaiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            param: param.map(str::to_string),
            message: message.into(),
        }
    }

    /// The body OpenAI's clients read: `{"error": {message, type, param, code}}`.
    fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

/// A completion (`chat.completion`, `text_completion`) or one of its stream's chunks.
#[derive(Serialize)]
struct Document<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'a str,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    /// Choice 0's fields (a whole completion), or a chunk's stream proof or last fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    verity: Option<Extra>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<SignedReceipt>,
    /// Where the OpenGradient SDK looks for an answer's signature and time.
    #[serde(skip_serializing_if = "Option::is_none")]
    tee_signature: Option<verity_core::eth::Signature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tee_timestamp: Option<u64>,
}

/// One choice of a completion or a chunk.
#[derive(Serialize)]
struct Choice {
    index: usize,
    #[serde(flatten)]
    body: ChoiceBody,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    /// With several choices, each carries its own fields and receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    verity: Option<CompletionFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<SignedReceipt>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChoiceBody {
    Message { message: Message },
    Delta { delta: Delta },
    Text { text: String },
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

impl Choice {
    /// A choice: `body` with no finish reason yet, or the one given.
    fn new(index: usize, body: ChoiceBody, finish: Option<Finish>) -> Choice {
        Choice {
            index,
            body,
            logprobs: None,
            finish_reason: finish.map(Finish::as_str),
            verity: None,
            receipt: None,
        }
    }

    /// A streamed piece of choice `i`'s text (empty with its finish reason at the end).
    fn piece(kind: Kind, i: usize, text: &str, finish: Option<Finish>) -> Choice {
        let body = match (kind, finish) {
            (Kind::Chat, None) => ChoiceBody::Delta {
                delta: Delta {
                    role: None,
                    content: Some(text.into()),
                },
            },
            (Kind::Chat, Some(_)) => ChoiceBody::Delta {
                delta: Delta {
                    role: None,
                    content: None,
                },
            },
            (Kind::Text, _) => ChoiceBody::Text { text: text.into() },
        };
        Choice::new(i, body, finish)
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

/// A document's `verity` object.
#[derive(Serialize)]
#[serde(untagged)]
enum Extra {
    Fields(CompletionFields),
    Proof(StreamProof),
}

/// What each streamed piece carries: its tokens and the running hash of the stream so far, signed.
#[derive(Serialize)]
struct StreamProof {
    request_id: Hash,
    index: usize,
    tokens: Vec<u32>,
    stream_hash: Hash,
    signature: verity_core::eth::Signature,
}

/// An entry of OpenAI's model list (`GET /v1/models`' `data`), with what Verity serves it as.
#[derive(Serialize)]
pub struct ModelEntry {
    /// The name requests give as `model`.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix time the model was loaded.
    pub created: u64,
    /// `verity`.
    pub owned_by: &'static str,
    /// What a client needs to check the model's receipts.
    pub verity: ModelDetails,
}

/// A served model's details in its [`ModelEntry`].
#[derive(Serialize)]
#[serde(untagged)]
pub enum ModelDetails {
    /// A language model (chat and text completions).
    Language {
        /// The canonical step model's ID (what receipts name).
        model_id: Hash,
        /// keccak256 of the GGUF it was imported from.
        source_hash: Hash,
        /// Positions (prompt and output) a generation holds.
        context: usize,
    },
    /// A sentence-embedding model.
    Embedding(crate::api::embeddings::EmbeddingInfo),
}

/// The language models in `GET /v1/models`' OpenAI `data` list.
pub fn model_list(node: &Node) -> Vec<ModelEntry> {
    node.llms
        .get()
        .map(|m| {
            m.values()
                .map(|l| ModelEntry {
                    id: l.name.clone(),
                    object: "model",
                    created: l.created,
                    owned_by: "verity",
                    verity: ModelDetails::Language {
                        model_id: l.model_id,
                        source_hash: l.source_hash,
                        context: l.context,
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// Choices one request may ask for (`n`), generated one after another.
pub const MAX_CHOICES: u64 = 16;

/// A parsed request.
struct Request {
    model: Arc<LlmModel>,
    prompt: Vec<u32>,
    params: Params,
    /// The sampler of choice 0; choice `i` draws with seed `seed + i`.
    sampler: Sampler,
    rules: Rules,
    n: usize,
    stream: bool,
    include_usage: bool,
}

impl Request {
    /// The sampler of choice `i`.
    fn sampler(&self, i: usize) -> Sampler {
        Sampler {
            seed: self.sampler.seed.wrapping_add(i as u64),
            ..self.sampler
        }
    }
}

const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "response_format",
    "stream",
    "stream_options",
    "user",
    "frequency_penalty",
    "presence_penalty",
];

fn number(v: &Value, key: &str) -> Result<Option<f64>, OaiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_f64().map(Some).ok_or_else(|| {
            OaiError::bad(
                "invalid_type",
                Some(key),
                format!("'{key}' must be a number"),
            )
        }),
    }
}

fn count(v: &Value, key: &str) -> Result<Option<u64>, OaiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or_else(|| {
            OaiError::bad(
                "invalid_type",
                Some(key),
                format!("'{key}' must be a non-negative integer"),
            )
        }),
    }
}

/// The text of a message's `content` (a string, or text parts).
fn content_text(c: &Value) -> Result<String, OaiError> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    (t, _) => Err(OaiError::bad(
                        "unsupported_content",
                        Some("messages"),
                        format!(
                            "message content parts of type {} are not supported (text only)",
                            t.unwrap_or("?")
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
        _ => Err(OaiError::bad(
            "invalid_type",
            Some("messages"),
            "a message's content must be a string or text parts",
        )),
    }
}

fn parse(node: &Node, body: &[u8], kind: Kind) -> Result<Request, OaiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| OaiError::bad("invalid_json", None, format!("the body is not JSON: {e}")))?;
    check_parameters(&v, kind)?;
    let n = count(&v, "n")?.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(OaiError::bad(
            "unsupported_value",
            Some("n"),
            format!("'n' must be 1 … {MAX_CHOICES}"),
        ));
    }
    let format = response_format(&v)?;
    let model = find_model(node, &v)?;
    let text = prompt_text(&model, &v, kind)?;
    let prompt = model
        .tokenizer
        .prompt(&text)
        .map_err(|e| OaiError::bad("invalid_value", Some("prompt"), e.to_string()))?;
    let context = model.context;
    if prompt.is_empty() || prompt.len() >= context {
        return Err(OaiError::bad(
            "context_length_exceeded",
            Some("messages"),
            format!(
                "the prompt is {} tokens; this model holds {context} positions (prompt and output)",
                prompt.len()
            ),
        ));
    }
    let max_tokens = match (
        count(&v, "max_completion_tokens")?,
        count(&v, "max_tokens")?,
    ) {
        (Some(n), _) | (None, Some(n)) => n as usize,
        (None, None) => context - prompt.len(),
    };
    let stop = stop_texts(&v)?;
    let params = sampling(&v)?;
    let sampler =
        Sampler::new(&params).map_err(|e| OaiError::bad("invalid_value", None, e.to_string()))?;
    Ok(Request {
        model,
        prompt,
        params,
        sampler,
        rules: Rules {
            max_tokens,
            stop,
            format,
        },
        n: n as usize,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The body is a JSON object whose keys are all in one of `known`'s lists.
pub(crate) fn only_parameters(v: &Value, known: &[&[&str]]) -> Result<(), OaiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| OaiError::bad("invalid_json", None, "the body must be a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !known.iter().any(|list| list.contains(&k.as_str())))
    {
        return Err(OaiError::bad(
            "unsupported_parameter",
            Some(k),
            format!("the parameter '{k}' is not supported by this server"),
        ));
    }
    Ok(())
}

/// The body is an object with only parameters this server honours (never one silently dropped).
fn check_parameters(v: &Value, kind: Kind) -> Result<(), OaiError> {
    let own: &[&str] = match kind {
        Kind::Chat => &["messages", "max_completion_tokens"],
        Kind::Text => &["prompt"],
    };
    only_parameters(v, &[COMMON, own])?;
    for k in ["frequency_penalty", "presence_penalty"] {
        if number(v, k)?.is_some_and(|x| x != 0.0) {
            return Err(OaiError::bad(
                "unsupported_value",
                Some(k),
                format!("'{k}' other than 0 is not supported (use repetition_penalty)"),
            ));
        }
    }
    Ok(())
}

/// `response_format`: text (the default) or `json_object`.
fn response_format(v: &Value) -> Result<Format, OaiError> {
    let f = match v.get("response_format") {
        None | Some(Value::Null) => return Ok(Format::Text),
        Some(f) => f,
    };
    match f.get("type").and_then(Value::as_str) {
        Some(t) => Format::from_name(t).ok_or_else(|| {
            OaiError::bad(
                "unsupported_value",
                Some("response_format"),
                format!("response_format of type '{t}' is not supported (text, json_object)"),
            )
        }),
        None => Err(OaiError::bad(
            "invalid_value",
            Some("response_format"),
            "'response_format' must be an object with a 'type'",
        )),
    }
}

/// The model named by `model`: by name, or by model ID (what a quorum coordinator sends, names being
/// each node's own).
fn find_model(node: &Node, v: &Value) -> Result<Arc<LlmModel>, OaiError> {
    let name = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| OaiError::bad("missing_parameter", Some("model"), "'model' is required"))?;
    node.llms
        .get()
        .and_then(|m| {
            m.get(name).or_else(|| {
                name.parse::<Hash>()
                    .ok()
                    .and_then(|id| m.values().find(|l| l.model_id == id))
            })
        })
        .cloned()
        .ok_or_else(|| OaiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            param: Some("model".into()),
            message: format!("the model '{name}' does not exist on this node"),
        })
}

/// The prompt's text: the chat messages through the model's template, or the completion's `prompt`.
fn prompt_text(model: &LlmModel, v: &Value, kind: Kind) -> Result<String, OaiError> {
    match kind {
        Kind::Chat => {
            let messages = chat_messages(v)?;
            model
                .tokenizer
                .render_chat(&messages, true)
                .map_err(|e| OaiError::bad("chat_template", Some("messages"), e.to_string()))
        }
        Kind::Text => match v.get("prompt") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Ok(a[0].as_str().unwrap_or_default().to_string())
            }
            _ => Err(OaiError::bad(
                "invalid_value",
                Some("prompt"),
                "'prompt' must be a string (or a list of one)",
            )),
        },
    }
}

/// `messages` as (role, text) pairs; `developer` reads as `system`.
fn chat_messages(v: &Value) -> Result<Vec<(String, String)>, OaiError> {
    let msgs = v.get("messages").and_then(Value::as_array).ok_or_else(|| {
        OaiError::bad(
            "missing_parameter",
            Some("messages"),
            "'messages' must be an array",
        )
    })?;
    if msgs.is_empty() {
        return Err(OaiError::bad(
            "invalid_value",
            Some("messages"),
            "'messages' is empty",
        ));
    }
    let mut out = Vec::new();
    for m in msgs {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !["system", "user", "assistant", "developer"].contains(&role) {
            return Err(OaiError::bad(
                "unsupported_value",
                Some("messages"),
                format!("messages of role '{role}' are not supported (system, user, assistant)"),
            ));
        }
        let role = if role == "developer" { "system" } else { role };
        out.push((
            role.to_string(),
            content_text(m.get("content").unwrap_or(&Value::Null))?,
        ));
    }
    Ok(out)
}

/// `stop`: none, one text, or at most 4 non-empty texts.
fn stop_texts(v: &Value) -> Result<Vec<String>, OaiError> {
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a))
            if a.len() <= 4 && a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        }
        _ => {
            return Err(OaiError::bad(
                "invalid_value",
                Some("stop"),
                "'stop' must be a non-empty string or a list of at most 4",
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(OaiError::bad(
            "invalid_value",
            Some("stop"),
            "a stop text is empty",
        ));
    }
    Ok(stop)
}

/// The sampling parameters (OpenAI's defaults: temperature 1, top_p 1; seed 0 when none is given).
fn sampling(v: &Value) -> Result<Params, OaiError> {
    Ok(Params {
        temperature: number(v, "temperature")?.unwrap_or(1.0),
        top_k: count(v, "top_k")?.unwrap_or(0) as usize,
        top_p: number(v, "top_p")?.unwrap_or(1.0),
        repetition_penalty: number(v, "repetition_penalty")?.unwrap_or(1.0),
        seed: match v.get("seed") {
            None | Some(Value::Null) => 0,
            Some(s) => s
                .as_u64()
                .or_else(|| s.as_i64().map(|x| x as u64))
                .ok_or_else(|| {
                    OaiError::bad("invalid_type", Some("seed"), "'seed' must be an integer")
                })?,
        },
    })
}

fn receipt(node: &Node, r: &Request, i: usize, request_id: Hash, out: &Outcome) -> SignedReceipt {
    Receipt {
        request_id,
        model_id: r.model.model_id,
        input_hash: input_hash(&r.prompt, &r.sampler(i), &r.rules),
        output_hash: tokens_hash(&out.tokens),
        trace_root: out.steps_root,
        node: node.key.address(),
        timestamp: crate::clock::unix_now(),
    }
    .sign(
        receipt_domain(node.config.chain_id, node.config.verifying_contract),
        &node.key,
    )
}

/// What the response carries besides OpenAI's fields, for choice `i`.
fn verity_fields(r: &Request, i: usize, out: &Outcome) -> CompletionFields {
    CompletionFields::new(
        r.model.model_id,
        r.model.context,
        &r.prompt,
        &r.params,
        &r.sampler(i),
        &r.rules,
        out,
    )
}

fn usage(r: &Request, completion_tokens: usize) -> Usage {
    Usage {
        prompt_tokens: r.prompt.len(),
        completion_tokens,
        total_tokens: r.prompt.len() + completion_tokens,
    }
}

/// Runs choice `i`'s generation on the model's scheduler, `on_text` receiving its text as it becomes
/// final with the tokens chosen since; `alive` false stops it.
async fn generate(
    r: &Arc<Request>,
    i: usize,
    on_text: impl FnMut(&str, &[u32]) -> bool + Send + 'static,
    alive: impl Fn() -> bool + Send + 'static,
) -> Result<Outcome, OaiError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job = Job {
        prompt: r.prompt.clone(),
        sampler: r.sampler(i),
        rules: r.rules.clone(),
        on_text: Box::new(on_text),
        alive: Box::new(alive),
        done,
    };
    if r.model.scheduler.submit(job).is_err() {
        return Err(OaiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: "overloaded",
            param: None,
            message: format!(
                "the model '{}' has too many requests waiting; retry later",
                r.model.name
            ),
        });
    }
    let failed = |message: String| OaiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        code: "generation_failed",
        param: None,
        message,
    };
    let out = result
        .await
        .map_err(|_| failed("the generation was dropped".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if out.finish == Finish::Cancelled {
        tracing::info!(
            model = %r.model.name,
            tokens = out.tokens.len(),
            "generation stopped: the client went away"
        );
    }
    Ok(out)
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `POST /v1/chat/completions[?quorum=K]`.
pub async fn chat_completions(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match quorum_of(query.as_deref(), &headers) {
        Ok(q) => complete(node, body, Kind::Chat, q).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/completions[?quorum=K]`.
pub async fn completions(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match quorum_of(query.as_deref(), &headers) {
        Ok(q) => complete(node, body, Kind::Text, q).await,
        Err(e) => e.into_response(),
    }
}

/// A quorum asked for: `k` nodes that must agree, and the time each may take.
#[derive(Clone, Copy, Debug)]
struct QuorumAsk {
    k: u8,
    timeout: std::time::Duration,
}

/// The quorum a request asks for, from `?quorum=K[&timeout_ms=N]` or the `X-Verity-Quorum: K` header.
fn quorum_of(query: Option<&str>, headers: &HeaderMap) -> Result<Option<QuorumAsk>, OaiError> {
    let mut k: Option<String> = headers
        .get("x-verity-quorum")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut timeout_ms = 60_000u64;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "quorum" => k = Some(value.to_string()),
            "timeout_ms" => {
                timeout_ms = value.parse().map_err(|_| {
                    OaiError::bad(
                        "invalid_value",
                        Some("timeout_ms"),
                        "timeout_ms must be milliseconds",
                    )
                })?
            }
            _ => {
                return Err(OaiError::bad(
                    "unsupported_parameter",
                    Some(key),
                    format!("the query parameter '{key}' is not supported (quorum, timeout_ms)"),
                ))
            }
        }
    }
    let Some(k) = k else {
        return Ok(None);
    };
    let k: u8 = k
        .trim()
        .parse()
        .ok()
        .filter(|k| (1..=verity_chain::cert::MAX_K).contains(k))
        .ok_or_else(|| {
            OaiError::bad(
                "invalid_value",
                Some("quorum"),
                format!("quorum must be 1 … {} nodes", verity_chain::cert::MAX_K),
            )
        })?;
    Ok(Some(QuorumAsk {
        k,
        timeout: std::time::Duration::from_millis(timeout_ms.clamp(100, 600_000)),
    }))
}

/// A completion answered by a quorum: the same request (the model named by its ID) sent to `k` nodes
/// drawn from the on-chain registry, returned with a quorum certificate when `k` receipts agree on the
/// input and output hashes (spec: `docs/spec/llm.md` §7.3).
async fn quorum_complete(
    node: Arc<Node>,
    r: &Request,
    body: &[u8],
    kind: Kind,
    q: QuorumAsk,
) -> Response {
    if r.stream || r.n > 1 {
        return OaiError::bad(
            "unsupported_value",
            Some(if r.stream { "stream" } else { "n" }),
            "a quorum answer is one choice, not streamed (its certificate covers the whole output)",
        )
        .into_response();
    }
    let Some(chain) = node.chain.get().cloned() else {
        return OaiError {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            code: "no_chain",
            param: Some("quorum".into()),
            message:
                "a quorum draws nodes from the on-chain registry: this node runs without --chain"
                    .into(),
        }
        .into_response();
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
        return OaiError::bad("invalid_json", None, "the body is not JSON").into_response();
    };
    doc["model"] = json!(r.model.model_id);
    let request_id = keccak256(&serde_json::to_vec(&doc).unwrap_or_default());
    let registry = match crate::roles::quorum::registry(&node, &chain).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let args = crate::roles::quorum::CoordinateArgs {
        target: crate::roles::quorum::Target::Completion(match kind {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
        }),
        model_id: r.model.model_id,
        request_id,
        doc,
        k: q.k,
        widen: true,
        timeout: q.timeout,
        registry,
        domain: receipt_domain(node.config.chain_id, node.config.verifying_contract),
    };
    match crate::roles::quorum::coordinate(&node, args).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// The start of choice `index`'s stream chain: keccak256("verity.stream.v1" ‖ request ID ‖ index as
/// 4 bytes big-endian) (spec: `docs/spec/llm.md` §7.2).
pub fn stream_start(request_id: &Hash, index: u32) -> Hash {
    let mut b = b"verity.stream.v1".to_vec();
    b.extend_from_slice(&request_id.0);
    b.extend_from_slice(&index.to_be_bytes());
    keccak256(&b)
}

/// The chain after a chunk: keccak256(previous ‖ token count as 4 bytes ‖ each token as 4 bytes ‖ the
/// chunk's text as UTF-8), all big-endian.
pub fn stream_next(prev: &Hash, tokens: &[u32], text: &str) -> Hash {
    let mut b = prev.0.to_vec();
    b.extend_from_slice(&(tokens.len() as u32).to_be_bytes());
    for t in tokens {
        b.extend_from_slice(&t.to_be_bytes());
    }
    b.extend_from_slice(text.as_bytes());
    keccak256(&b)
}

/// The digest a chunk's signature signs: the chain value as an EIP-191 personal message
/// (keccak256("\x19Ethereum Signed Message:\n32" ‖ chain)).
pub fn stream_digest(chain: &Hash) -> Hash {
    let mut b = b"\x19Ethereum Signed Message:\n32".to_vec();
    b.extend_from_slice(&chain.0);
    keccak256(&b)
}

/// A choice in the response (`message` for chat, `text` for completions).
fn choice(kind: Kind, i: usize, out: &Outcome) -> Choice {
    let body = match kind {
        Kind::Chat => ChoiceBody::Message {
            message: Message {
                role: "assistant",
                content: out.text.clone(),
            },
        },
        Kind::Text => ChoiceBody::Text {
            text: out.text.clone(),
        },
    };
    Choice::new(i, body, Some(out.finish))
}

async fn complete(node: Arc<Node>, body: Bytes, kind: Kind, quorum: Option<QuorumAsk>) -> Response {
    let r = match parse(&node, &body, kind) {
        Ok(r) => Arc::new(r),
        Err(e) => return e.into_response(),
    };
    if let Some(q) = quorum {
        return quorum_complete(node, &r, &body, kind, q).await;
    }
    let request_id = keccak256(&body);
    let id = format!(
        "{}-{}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        &request_id.to_string()[2..26]
    );
    let head = Head {
        id,
        created: crate::clock::unix_now(),
        model: r.model.name.clone(),
        fingerprint: format!("verity-{}", &r.model.model_id.to_string()[2..18]),
    };
    if r.stream {
        complete_streamed(node, r, kind, request_id, head)
    } else {
        complete_whole(&node, &r, kind, request_id, &head).await
    }
}

/// The fields every document of one completion shares.
#[derive(Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
}

impl Head {
    fn document(&self, object: &'static str, choices: Vec<Choice>) -> Document<'_> {
        Document {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.fingerprint,
            choices,
            usage: None,
            verity: None,
            receipt: None,
            tee_signature: None,
            tee_timestamp: None,
        }
    }
}

/// A completion answered whole: its choices side by side on the model's scheduler, a receipt each.
async fn complete_whole(
    node: &Node,
    r: &Arc<Request>,
    kind: Kind,
    request_id: Hash,
    head: &Head,
) -> Response {
    // a client that goes away drops this future: the flag stops the generation at its next token
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _on_drop = SetOnDrop(gone.clone());
    let runs = (0..r.n).map(|i| {
        let (gone, gone2) = (gone.clone(), gone.clone());
        generate(
            r,
            i,
            move |_, _| !gone.load(std::sync::atomic::Ordering::Relaxed),
            move || !gone2.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let outs = match futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<Vec<Outcome>, OaiError>>()
    {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    // one receipt per choice; each choice carries its own when there are several, the top level
    // has choice 0's
    let receipts: Vec<SignedReceipt> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| receipt(node, r, i, request_id, out))
        .collect();
    let choices: Vec<Choice> = outs
        .iter()
        .zip(&receipts)
        .enumerate()
        .map(|(i, (out, signed))| {
            let mut c = choice(kind, i, out);
            if r.n > 1 {
                c.verity = Some(verity_fields(r, i, out));
                c.receipt = Some(signed.clone());
            }
            c
        })
        .collect();
    let signed = &receipts[0];
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Text => "text_completion",
    };
    let mut doc = head.document(object, choices);
    doc.usage = Some(usage(r, outs.iter().map(|o| o.tokens.len()).sum()));
    doc.verity = Some(Extra::Fields(verity_fields(r, 0, &outs[0])));
    doc.receipt = Some(signed.clone());
    doc.tee_signature = Some(signed.signature);
    doc.tee_timestamp = Some(signed.receipt.timestamp);
    axum::Json(doc).into_response()
}

/// A streamed completion: per choice, one SSE event per piece of text, each with its tokens and a
/// signed running hash; then the choice's last chunk (finish reason, receipt); after every choice the
/// usage chunk when asked, and `[DONE]`. A client that goes away stops the generation.
fn complete_streamed(
    node: Arc<Node>,
    r: Arc<Request>,
    kind: Kind,
    request_id: Hash,
    head: Head,
) -> Response {
    // unbounded: a client that reads slowly must not hold up the model's other generations (a stream
    // holds at most its tokens' chunks)
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Text => "text_completion",
    };
    let event = |doc: &Document| {
        format!(
            "data: {}\n\n",
            serde_json::to_string(doc).unwrap_or_default()
        )
    };
    tokio::spawn(async move {
        let mut completion_tokens = 0;
        for i in 0..r.n {
            if kind == Kind::Chat {
                let role = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                let first = Choice::new(i, ChoiceBody::Delta { delta: role }, None);
                if tx.send(event(&head.document(object, vec![first]))).is_err() {
                    return;
                }
            }
            let (tx_text, tx_alive) = (tx.clone(), tx.clone());
            let (key_node, text_head) = (node.clone(), head.clone());
            let mut chain = stream_start(&request_id, i as u32);
            let res = generate(
                &r,
                i,
                move |text, tokens| {
                    chain = stream_next(&chain, tokens, text);
                    let proof = StreamProof {
                        request_id,
                        index: i,
                        tokens: tokens.to_vec(),
                        stream_hash: chain,
                        signature: key_node.key.sign(&stream_digest(&chain)),
                    };
                    let mut doc =
                        text_head.document(object, vec![Choice::piece(kind, i, text, None)]);
                    doc.verity = Some(Extra::Proof(proof));
                    tx_text.send(event(&doc)).is_ok()
                },
                move || !tx_alive.is_closed(),
            )
            .await;
            match res {
                Ok(out) if out.finish != Finish::Cancelled => {
                    completion_tokens += out.tokens.len();
                    let last = Choice::piece(kind, i, "", Some(out.finish));
                    let signed = receipt(&node, &r, i, request_id, &out);
                    let mut doc = head.document(object, vec![last]);
                    doc.verity = Some(Extra::Fields(verity_fields(&r, i, &out)));
                    doc.tee_signature = Some(signed.signature);
                    doc.tee_timestamp = Some(signed.receipt.timestamp);
                    doc.receipt = Some(signed);
                    if tx.send(event(&doc)).is_err() {
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    let body = serde_json::to_string(&e.body()).unwrap_or_default();
                    let _ = tx.send(format!("data: {body}\n\n"));
                    return;
                }
            }
        }
        if r.include_usage {
            let mut doc = head.document(object, Vec::new());
            doc.usage = Some(usage(&r, completion_tokens));
            let _ = tx.send(event(&doc));
        }
        let _ = tx.send("data: [DONE]\n\n".to_string());
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, std::convert::Infallible>(Bytes::from(s)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
