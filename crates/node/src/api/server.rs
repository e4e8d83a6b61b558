//! HTTP routes (native `/v1`, KServe v2 `/v2`, `/metrics`) and the connection loop with header timeouts
//! and graceful shutdown.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{
    DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use verity_core::{Hash, SignedManifest};
use verity_engine::vty;
use verity_store::{ModelRecord, Published, Version};

use crate::error::ApiError;
use crate::state::{record_for, Inference, Node};
use crate::tensors::{decode_kserve, decode_native, split_binary, InferRequest};

/// Header of the KServe binary tensor extension.
pub const BINARY_HEADER: &str = "inference-header-content-length";

/// The router for a node.
pub fn router(node: Arc<Node>) -> Router {
    let limits = &node.config.limits;
    let upload_limit = (limits.max_model_bytes + (16 << 20)) as usize;
    let body_limit = limits.max_body_bytes as usize;
    Router::new()
        .route("/v1/node", get(node_info))
        .route(
            "/v1/models",
            get(list_models)
                .post(publish)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/v1/chat/completions",
            post(crate::api::openai::chat_completions),
        )
        .route("/v1/completions", post(crate::api::openai::completions))
        .route("/v1/embeddings", post(crate::api::embeddings::embeddings))
        .route("/v1/models/{model}", get(model_info))
        .route("/v1/models/{model}/manifest", get(model_manifest))
        .route("/v1/models/{model}/download", get(download))
        .route(
            "/v1/models/{model}/chunks",
            get(crate::roles::replicate::get_chunk_list),
        )
        .route(
            "/v1/models/{model}/chunks/{i}",
            get(crate::roles::replicate::get_chunk),
        )
        .route(
            "/v1/models/{model}/pull",
            post(crate::roles::replicate::post_pull),
        )
        .route(
            "/v1/models/{model}/quorum",
            post(crate::roles::quorum::post_quorum),
        )
        .route("/v1/models/{model}/infer", post(infer_native))
        .route("/v1/models/{model}/zk", get(zk_key))
        .route("/v1/receipts/{request_id}", get(get_receipt))
        .route("/metrics", get(metrics))
        .route("/v1/inputs", post(crate::api::chain::post_input))
        .route("/v1/inputs/{hash}", get(crate::api::chain::get_input))
        .route("/v1/requests/{id}", get(crate::api::chain::get_request))
        .route("/v1/jobs", get(crate::api::chain::get_jobs))
        .route("/v1/optimistic", get(crate::api::chain::get_optimistic))
        .route("/v1/disputes", post(crate::api::chain::post_dispute))
        .route(
            "/artela-network/artela-rollkit/inference/tx/{id}",
            get(crate::api::chain::opengradient_result),
        )
        .merge(crate::api::kserve::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(node.clone(), track))
        .with_state(node)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("no_route", format!("no route for {method} {}", uri.path()))
}

/// Per-request timeout, metrics and logging.
async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let upload = method == Method::POST && route == "/v1/models";
    let t = &node.config.timeouts;
    let secs = if upload {
        t.upload_secs
    } else {
        t.request_secs
    };
    let start = std::time::Instant::now();
    // A body announced larger than the route accepts is refused before any of it is read.
    let limits = &node.config.limits;
    let cap = if upload {
        limits.max_model_bytes.saturating_add(16 << 20)
    } else {
        limits.max_body_bytes
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // a request with a body whose answer is an error may not have had its body read to the end; the
    // connection then cannot carry another request, and the answer says so (`Connection: close`), so
    // that a client keeping connections open does not send its next request into a closed one
    let has_body =
        announced.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING);
    if let Some(n) = announced.filter(|&n| n > cap) {
        node.metrics.http(&route, 413);
        let mut r = ApiError::too_large(format!(
            "the body is announced as {n} bytes; this node accepts at most {cap} bytes here"
        ))
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let resp = match tokio::time::timeout(Duration::from_secs(secs), next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request did not complete within {secs} s"),
        )
        .into_response(),
    };
    let status = resp.status().as_u16();
    let mut resp = if status >= 400 && route.starts_with("/v2") {
        crate::api::kserve::kserve_error(resp).await
    } else {
        resp
    };
    if status >= 400 && has_body {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    node.metrics.http(&route, status);
    let micros = start.elapsed().as_micros() as u64;
    if status >= 400 {
        tracing::info!(%method, route, status, micros, "request failed");
    } else {
        tracing::debug!(%method, route, status, micros, "request");
    }
    resp
}

/// Read a request body up to `limit` bytes. Beyond it, keep reading and discarding (up to a bound) so
/// that the client, still sending, receives the 413 instead of a reset connection.
async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    let drain_cap = limit.saturating_mul(4).max(limit.saturating_add(64 << 20));
    while let Some(chunk) = stream.next().await {
        let c = chunk
            .map_err(|e| ApiError::bad_request("bad_body", format!("cannot read the body: {e}")))?;
        total = total.saturating_add(c.len() as u64);
        if total > limit {
            if total > drain_cap {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&c);
    }
    if total > limit {
        return Err(ApiError::too_large(format!(
            "request body is larger than the limit of {limit} bytes"
        )));
    }
    Ok(Bytes::from(buf))
}

/// A wanted model whose background pulls failed.
#[derive(Serialize)]
struct PullFailure {
    model: Hash,
    failures: u32,
    error: String,
}

/// Wanted models whose pulls failed: still retried, or given up on.
#[derive(Serialize)]
struct Replication {
    retrying: Vec<PullFailure>,
    given_up: Vec<PullFailure>,
}

/// `GET /v1/node`.
#[derive(Serialize)]
struct NodeInfo {
    address: verity_core::Address,
    version: &'static str,
    chain_id: u64,
    verifying_contract: verity_core::Address,
    receipt_domain: verity_core::eip712::Domain,
    workers: usize,
    models: usize,
    versions: usize,
    receipts: u64,
    limits: crate::config::Limits,
    replication: Replication,
}

async fn node_info(State(node): State<Arc<Node>>) -> Result<Json<NodeInfo>, ApiError> {
    let store = node.store.clone();
    let (models, versions, receipts) = node
        .blocking(move || -> Result<_, verity_store::StoreError> {
            Ok((
                store.models()?.len(),
                store.versions()?.len(),
                store.receipt_count()?,
            ))
        })
        .await??;
    let c = &node.config;
    // wanted models whose background pulls failed: still retried, or given up on
    let (mut retrying, mut given_up) = (Vec::new(), Vec::new());
    if let Ok(inflight) = node.replication.inflight.lock() {
        for (id, r) in inflight.iter().filter(|(_, r)| r.failures > 0) {
            let entry = PullFailure {
                model: *id,
                failures: r.failures,
                error: r.last_error.clone(),
            };
            if r.given_up(c.hosting.retry_attempts) {
                given_up.push(entry);
            } else {
                retrying.push(entry);
            }
        }
    }
    Ok(Json(NodeInfo {
        address: node.address(),
        version: env!("CARGO_PKG_VERSION"),
        chain_id: c.chain_id,
        verifying_contract: c.verifying_contract,
        receipt_domain: verity_core::receipt::receipt_domain(c.chain_id, c.verifying_contract),
        workers: c.workers,
        models,
        versions,
        receipts,
        limits: c.limits.clone(),
        replication: Replication { retrying, given_up },
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    tag: Option<String>,
}

/// A published version in `GET /v1/models`.
#[derive(Serialize)]
struct VersionSummary<'a> {
    name: &'a str,
    version: &'a str,
    model_id: Hash,
    owner: verity_core::Address,
    task: &'a str,
    tags: &'a [String],
    license: &'a str,
    description: &'a str,
    published_at: u64,
    latest: bool,
}

fn version_summary(v: &Version, latest: bool) -> VersionSummary<'_> {
    let m = &v.manifest.manifest;
    VersionSummary {
        name: &m.name,
        version: &m.version,
        model_id: m.model_id,
        owner: m.owner,
        task: &m.task,
        tags: &m.tags,
        license: &m.license,
        description: &m.description,
        published_at: v.published_at,
        latest,
    }
}

/// `GET /v1/models`: the published versions, and OpenAI's list shape beside them (the models the
/// OpenAI-compatible API serves).
#[derive(Serialize)]
struct ModelList<'a> {
    models: Vec<VersionSummary<'a>>,
    object: &'static str,
    data: Vec<crate::api::openai::ModelEntry>,
}

async fn list_models(
    State(node): State<Arc<Node>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let store = node.store.clone();
    let versions = node.blocking(move || store.versions()).await??;
    let needle = q.q.map(|s| s.to_lowercase());
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let m = &v.manifest.manifest;
        let latest = versions
            .get(i + 1)
            .is_none_or(|n| n.manifest.manifest.name != m.name);
        if let Some(n) = &needle {
            if !m.name.to_lowercase().contains(n.as_str())
                && !m.description.to_lowercase().contains(n.as_str())
            {
                continue;
            }
        }
        if let Some(t) = &q.tag {
            if !m.tags.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                continue;
            }
        }
        out.push(version_summary(v, latest));
    }
    let doc = ModelList {
        models: out,
        object: "list",
        data: crate::api::openai::model_list(&node)
            .into_iter()
            .chain(crate::api::embeddings::model_list(&node))
            .collect(),
    };
    // serialized here, while the versions it borrows are in scope
    Ok(Json(doc).into_response())
}

/// `GET /v1/models/{model}`: the stored model, the names it is published under, and the manifest and
/// compile report of the version asked for (or the newest).
#[derive(Serialize)]
struct ModelInfo {
    model_id: Hash,
    size: u64,
    chunk_size: u64,
    chunks: Vec<Hash>,
    inputs: Vec<verity_store::TensorInfo>,
    outputs: Vec<verity_store::TensorInfo>,
    nodes: u64,
    parameters: u64,
    stored_at: u64,
    cost: Option<Value>,
    names: Vec<String>,
    #[serde(flatten)]
    version: Option<VersionInfo>,
}

/// A version's manifest and report in [`ModelInfo`].
#[derive(Serialize)]
struct VersionInfo {
    manifest: SignedManifest,
    report: Option<Value>,
    report_by: Option<String>,
    published_at: u64,
}

/// The versions naming a model (for ID lookups).
async fn names_of(node: &Arc<Node>, id: Hash) -> Result<Vec<Version>, ApiError> {
    let store = node.store.clone();
    let all = node.blocking(move || store.versions()).await??;
    Ok(all
        .into_iter()
        .filter(|v| v.manifest.manifest.model_id == id)
        .collect())
}

async fn model_info(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    let (rec, version) = crate::roles::replicate::resolve(&node, &model).await?;
    let names = names_of(&node, rec.id).await?;
    let version = version.or_else(|| names.last().cloned());
    Ok(Json(ModelInfo {
        model_id: rec.id,
        size: rec.size,
        chunk_size: rec.chunk_size,
        chunks: rec.chunks,
        inputs: rec.inputs,
        outputs: rec.outputs,
        nodes: rec.nodes,
        parameters: rec.parameters,
        stored_at: rec.stored_at,
        cost: rec.cost,
        names: names
            .iter()
            .map(|v| {
                format!(
                    "{}@{}",
                    v.manifest.manifest.name, v.manifest.manifest.version
                )
            })
            .collect(),
        version: version.map(|v| VersionInfo {
            manifest: v.manifest,
            report: v.report,
            report_by: v.report_by,
            published_at: v.published_at,
        }),
    }))
}

async fn model_manifest(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<SignedManifest>, ApiError> {
    let (rec, version) = crate::roles::replicate::resolve(&node, &model).await?;
    let version = match version {
        Some(v) => v,
        None => names_of(&node, rec.id)
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found("manifest_not_found", "no manifest"))?,
    };
    Ok(Json(version.manifest))
}

/// Parse a single `bytes=` range against a length: `Ok(None)` = whole file.
fn parse_range(h: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = h else { return Ok(None) };
    let s = h.to_str().map_err(|_| ())?.trim();
    let spec = s.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(len)
        };
        (start, end)
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn download(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (rec, _) = crate::roles::replicate::resolve(&node, &model).await?;
    let len = rec.size;
    let range = match parse_range(headers.get(header::RANGE), len) {
        Ok(r) => r,
        Err(()) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                format!("Range must be one 'bytes=a-b' within 0..{len}"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let (start, end) = range.unwrap_or((0, len));
    let cs = rec.chunk_size.max(1);
    let store = node.store.clone();
    let rec2 = rec.clone();
    let stream = futures_util::stream::unfold(start, move |pos| {
        let store = store.clone();
        let rec = rec2.clone();
        async move {
            if pos >= end {
                return None;
            }
            let ci = (pos / cs) as usize;
            let res = tokio::task::spawn_blocking(move || store.read_chunk(&rec, ci)).await;
            let chunk = match res {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Some((Err(std::io::Error::other(e.to_string())), end)),
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), end)),
            };
            let within = (pos - ci as u64 * cs) as usize;
            let take = ((end - pos) as usize).min(chunk.len().saturating_sub(within));
            if take == 0 {
                return Some((Err(std::io::Error::other("short chunk")), end));
            }
            let piece = Bytes::copy_from_slice(&chunk[within..within + take]);
            Some((Ok(piece), pos + take as u64))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", rec.id)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&(end - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

async fn get_receipt(
    State(node): State<Arc<Node>>,
    Path(request_id): Path<String>,
) -> Result<Json<verity_core::SignedReceipt>, ApiError> {
    let id: Hash = request_id.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_request_id",
            "request ID must be 32 bytes as 0x-prefixed hex",
        )
    })?;
    node.flush_receipts().await?;
    let store = node.store.clone();
    let r = node.blocking(move || store.receipt(&id)).await??;
    let r = r.ok_or_else(|| {
        ApiError::not_found("receipt_not_found", format!("no receipt for request {id}"))
    })?;
    Ok(Json(r))
}

/// Read an inference body (within the body limit) and decode it in any of the accepted forms.
pub(crate) async fn read_request(
    node: &Node,
    headers: &HeaderMap,
    body: Body,
    native: bool,
) -> Result<InferRequest, ApiError> {
    let body = read_limited(body, node.config.limits.max_body_bytes).await?;
    decode_body(
        headers,
        &body,
        node.config.limits.max_tensor_elements,
        native,
    )
}

/// Decode an inference body in any of the accepted forms.
fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    max_elements: u64,
    native: bool,
) -> Result<InferRequest, ApiError> {
    if let Some(h) = headers.get(BINARY_HEADER) {
        let h = h.to_str().map_err(|_| {
            ApiError::bad_request("malformed_request", "bad Inference-Header-Content-Length")
        })?;
        let (json, bin) = split_binary(body, h)?;
        let mut r = decode_kserve(json, Some(bin), max_elements)?;
        if native {
            if let Ok(v) = serde_json::from_slice::<Value>(json) {
                if let Some(s) = v.get("request_id").and_then(Value::as_str) {
                    r.request_id = Some(s.parse().map_err(|_| {
                        ApiError::bad_request(
                            "malformed_request",
                            "request_id must be 32 bytes as 0x-prefixed hex",
                        )
                    })?);
                }
                r.zk = crate::tensors::parse_mode(v.get("mode"))?;
            }
        }
        return Ok(r);
    }
    Ok(if native {
        decode_native(body, max_elements)?
    } else {
        decode_kserve(body, None, max_elements)?
    })
}

/// Resolve, load, run on a worker, sign.
pub(crate) async fn run_inference(
    node: &Arc<Node>,
    model: &str,
    req: InferRequest,
) -> Result<
    (
        ModelRecord,
        Option<Version>,
        Arc<crate::state::Loaded>,
        Inference,
    ),
    ApiError,
> {
    let (rec, version) = crate::roles::replicate::resolve(node, model).await?;
    let loaded = node.load(&rec).await?;
    if node.config.faults.stall_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(
            node.config.faults.stall_ms,
        ))
        .await;
    }
    let request_id = req.request_id.unwrap_or_else(|| node.new_request_id());
    let n2 = node.clone();
    let l2 = loaded.clone();
    let inputs = req.inputs;
    let res = node
        .on_worker_est(
            loaded.run_inline(),
            loaded.expected_us(node.config.limits.assumed_ops_per_sec),
            move || n2.infer_blocking(&l2, inputs, request_id),
        )
        .await
        .and_then(|r| r);
    // The answer (and with it the receipt) goes out only once the receipt is durable.
    let res = match res {
        Ok(inf) => node.flush_receipts().await.map(|()| inf),
        Err(e) => Err(e),
    };
    match res {
        Ok(inf) => {
            node.metrics
                .inferences
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((rec, version, loaded, inf))
        }
        Err(e) => {
            node.metrics
                .inference_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(e)
        }
    }
}

/// One output of a native inference: values `q · 2^-scale` (exact in f64).
#[derive(Serialize)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Fractional bits.
    pub scale: i8,
    /// Values, row-major.
    pub data: Vec<f64>,
}

impl From<(String, Vec<u64>, i8, Vec<f64>)> for OutputTensor {
    fn from((name, shape, scale, data): (String, Vec<u64>, i8, Vec<f64>)) -> Self {
        OutputTensor {
            name,
            shape,
            scale,
            data,
        }
    }
}

/// A native inference's answer: outputs, the signed receipt, and the proof when `zk` was asked.
#[derive(Serialize)]
struct InferResponse {
    model_id: Hash,
    request_id: Hash,
    outputs: Vec<OutputTensor>,
    receipt: verity_core::SignedReceipt,
    result_hash: Hash,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    zk: Option<ZkProof>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// A zk proof of one inference: the proof file (base64) and the statement it proves.
#[derive(Serialize)]
struct ZkProof {
    proof: String,
    proof_bytes: usize,
    weights_root: Hash,
    input_hash: Hash,
    output_hash: Hash,
    prove_ms: f64,
}

/// `GET /v1/models/{model}/zk`: what a proof of this model is verified against.
#[derive(Serialize)]
struct ZkKey {
    model_id: Hash,
    weights_root: Hash,
}

async fn infer_native(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<InferResponse>, ApiError> {
    let req = read_request(&node, &headers, body, true).await?;
    let zk_inputs = req.zk.then(|| req.inputs.clone());
    let (_, version, loaded, inf) = run_inference(&node, &model, req).await?;
    let zk = match zk_inputs {
        Some(inputs) => {
            let l2 = loaded.clone();
            Some(
                node.on_worker(false, move || prove_inference(&l2, inputs))
                    .await??,
            )
        }
        None => None,
    };
    let outs = Node::describe_outputs(loaded.exec.model(), &inf.outputs);
    let (name, version) = match version {
        Some(v) => (
            Some(v.manifest.manifest.name),
            Some(v.manifest.manifest.version),
        ),
        None => (None, None),
    };
    Ok(Json(InferResponse {
        model_id: loaded.id,
        request_id: inf.receipt.receipt.request_id,
        outputs: outs.into_iter().map(OutputTensor::from).collect(),
        result_hash: inf.receipt.receipt.result_hash(),
        receipt: inf.receipt,
        latency_us: inf.micros,
        zk,
        name,
        version,
    }))
}

/// `zk` mode: prove the canonical execution on these inputs; the proof file (base64) with its statement.
fn prove_inference(
    loaded: &crate::state::Loaded,
    inputs: Vec<crate::tensors::NamedTensor>,
) -> Result<ZkProof, ApiError> {
    use base64::Engine as _;
    let model = loaded.exec.model();
    let q = crate::state::bind_inputs(model, inputs)?;
    let pk = loaded
        .zk_key()
        .map_err(|e| ApiError::unprocessable("zk_unsupported", e))?;
    let t = std::time::Instant::now();
    let (outputs, proof) = verity_zk::prove(&pk, &q)
        .map_err(|e| ApiError::unprocessable("zk_failed", e.to_string()))?;
    let prove_ms = t.elapsed().as_secs_f64() * 1e3;
    let file = verity_zk::ProofFile {
        model_id: loaded.id,
        w_root: pk.w.root,
        inputs: q.clone(),
        outputs: outputs.clone(),
        proof,
    };
    Ok(ZkProof {
        proof: base64::engine::general_purpose::STANDARD.encode(file.to_bytes()),
        proof_bytes: file.proof.len(),
        weights_root: pk.w.root,
        input_hash: verity_engine::commit::tensors_hash(&q),
        output_hash: verity_engine::commit::tensors_hash(&outputs),
        prove_ms,
    })
}

/// The model's zk verifying key (model ID and constants root), or why it cannot be proven.
async fn zk_key(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<ZkKey>, ApiError> {
    let (rec, _) = crate::roles::replicate::resolve(&node, &model).await?;
    let loaded = node.load(&rec).await?;
    let l2 = loaded.clone();
    let pk = node
        .on_worker(false, move || l2.zk_key())
        .await?
        .map_err(|e| ApiError::unprocessable("zk_unsupported", e))?;
    Ok(Json(ZkKey {
        model_id: loaded.id,
        weights_root: pk.w.root,
    }))
}

/// Part of a multipart body, read with a size cap.
async fn read_field(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: u64,
    what: &str,
    slow: &AtomicBool,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(c)) => {
                if out.len() as u64 + c.len() as u64 > limit {
                    return Err(ApiError::too_large(format!(
                        "{what} is larger than the limit of {limit} bytes"
                    )));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(upload_error(e, what, slow)),
        }
    }
}

/// The error for a failed read of an upload: 408 when the client sent too slowly, 413 when too much.
fn upload_error(
    e: axum::extract::multipart::MultipartError,
    what: &str,
    slow: &AtomicBool,
) -> ApiError {
    if slow.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_too_slow",
            format!("{what}: the upload arrived slower than this node accepts (limits.min_upload_bytes_per_sec)"),
        );
    }
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("{what}: {}", e.body_text()))
    } else {
        ApiError::new(status, "bad_upload", format!("{what}: {}", e.body_text()))
    }
}

/// A body whose bytes must keep arriving at `min_rate` bytes per second on average, measured from its
/// start once `grace` has passed; a client that falls behind (or goes silent) ends the body with an
/// error and sets `slow`.
fn paced(body: Body, min_rate: u64, grace: Duration, slow: Arc<AtomicBool>) -> Body {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut s, seen, done)| {
            let slow = slow.clone();
            async move {
                if done {
                    return None;
                }
                let next = if min_rate == 0 {
                    s.next().await
                } else {
                    let due =
                        grace.max(Duration::from_secs_f64((seen + 1) as f64 / min_rate as f64));
                    match tokio::time::timeout_at(start + due, s.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            slow.store(true, Ordering::Relaxed);
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "upload too slow",
                            );
                            return Some((Err(e), (s, seen, true)));
                        }
                    }
                };
                match next {
                    None => None,
                    Some(Ok(b)) => {
                        let n = seen + b.len() as u64;
                        Some((Ok(b), (s, n, false)))
                    }
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (s, seen, true))),
                }
            }
        },
    );
    Body::from_stream(stream)
}

/// What is read (and dropped) of a refused upload, so that a client that sends its whole body before
/// reading sees the answer rather than a reset connection: at most this many bytes…
const DRAIN_BYTES: u64 = 16 << 20;
/// …for at most this long.
const DRAIN_SECS: u64 = 2;

/// Read and drop up to [`DRAIN_BYTES`] of a refused upload's body, for up to [`DRAIN_SECS`].
async fn drain(body: Body) {
    use futures_util::StreamExt;
    let mut s = body.into_data_stream();
    let mut seen = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(DRAIN_SECS);
    while let Ok(Some(Ok(c))) = tokio::time::timeout_at(deadline, s.next()).await {
        seen += c.len() as u64;
        if seen > DRAIN_BYTES {
            break;
        }
    }
}

async fn publish(State(node): State<Arc<Node>>, req: Request) -> Result<Response, ApiError> {
    let res = publish_inner(&node, req).await;
    let counter = if res.is_ok() {
        &node.metrics.publishes
    } else {
        &node.metrics.publish_errors
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    res
}

/// The model part of an upload, streamed to a file in the data directory.
struct Upload {
    path: std::path::PathBuf,
    _remove: crate::compile::Remove,
    size: u64,
    keccak: Hash,
    vty: bool,
}

/// Stream the model part to a new file under `<data_dir>/uploads`, within `limit` bytes.
async fn receive_model(
    node: &Node,
    field: &mut axum::extract::multipart::Field<'_>,
    limit: u64,
    slow: &AtomicBool,
) -> Result<Upload, ApiError> {
    use tokio::io::AsyncWriteExt;
    let dir = node.config.data_dir.join("uploads");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
    let mut name = [0u8; 12];
    let _ = getrandom::getrandom(&mut name);
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{hex}.part"));
    let remove = crate::compile::Remove(vec![path.clone()]);
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", path.display())))?;
    let mut k = verity_core::Keccak::new();
    let (mut size, mut head) = (0u64, Vec::new());
    loop {
        match field.chunk().await {
            Ok(Some(c)) => {
                size += c.len() as u64;
                if size > limit {
                    return Err(ApiError::too_large(format!(
                        "model is larger than the limit of {limit} bytes"
                    )));
                }
                if head.len() < 3 {
                    head.extend_from_slice(&c[..c.len().min(3 - head.len())]);
                }
                k.update(&c);
                file.write_all(&c)
                    .await
                    .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
            }
            Ok(None) => break,
            Err(e) => return Err(upload_error(e, "model", slow)),
        }
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("cannot write the upload: {e}")))?;
    Ok(Upload {
        path,
        _remove: remove,
        size,
        keccak: k.finalize(),
        vty: head == b"VTY",
    })
}

/// Parse and verify the manifest part: 400 for malformed JSON, 401 unsigned or a bad signature, 403 a
/// signer other than the owner, 422 a field breaking its rule.
fn verify_manifest(bytes: &[u8]) -> Result<SignedManifest, ApiError> {
    let mv: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("bad_manifest", format!("manifest is not valid JSON: {e}"))
    })?;
    if mv.get("signature").is_none_or(Value::is_null) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "the manifest is not signed: send {\"manifest\": {...}, \"signature\": \"0x...\"} signed by the owner (EIP-712)",
        ));
    }
    let signed: SignedManifest = serde_json::from_value(mv)
        .map_err(|e| ApiError::bad_request("bad_manifest", format!("manifest: {e}")))?;
    signed.verify().map_err(|e| match e {
        verity_core::manifest::ManifestError::Field { .. } => {
            ApiError::unprocessable("bad_manifest", e.to_string())
        }
        verity_core::manifest::ManifestError::Signature(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string())
        }
        _ => ApiError::new(StatusCode::FORBIDDEN, "wrong_signer", e.to_string()),
    })?;
    Ok(signed)
}

/// The parts of an upload: the verified manifest, the model (on disk), the report and the options.
type Parts = (
    SignedManifest,
    Upload,
    Option<Vec<u8>>,
    Option<crate::compile::PublishOptions>,
);

/// Read the parts of an upload, verifying the manifest as soon as it arrives.
async fn read_parts(node: &Node, mp: &mut Multipart, slow: &AtomicBool) -> Result<Parts, ApiError> {
    let max_model = node.config.limits.max_model_bytes;
    let (mut signed, mut upload, mut report, mut options) = (None, None, None, None);
    loop {
        let field = mp
            .next_field()
            .await
            .map_err(|e| upload_error(e, "upload", slow))?;
        let Some(mut field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        let twice = match name.as_str() {
            "manifest" => signed.is_some(),
            "model" => upload.is_some(),
            "report" => report.is_some(),
            "options" => options.is_some(),
            _ => false,
        };
        if twice {
            return Err(ApiError::bad_request(
                "bad_upload",
                format!("part '{name}' is given twice"),
            ));
        }
        match name.as_str() {
            // verified as soon as it arrives: nothing else is accepted from an unauthenticated upload
            "manifest" => {
                let bytes = read_field(&mut field, 1 << 20, "manifest", slow).await?;
                signed = Some(verify_manifest(&bytes)?);
            }
            "report" => report = Some(read_field(&mut field, 16 << 20, "report", slow).await?),
            "options" => {
                let bytes = read_field(&mut field, 1 << 16, "options", slow).await?;
                options = Some(crate::compile::PublishOptions::parse(Some(&bytes))?);
            }
            "model" if signed.is_none() => return Err(ApiError::bad_request(
                "manifest_first",
                "send the 'manifest' part before the 'model' part: the manifest's signature is \
                     checked before any model bytes are accepted",
            )),
            "model" => match receive_model(node, &mut field, max_model, slow).await {
                Ok(u) => upload = Some(u),
                Err(e) => return Err(e),
            },
            other => {
                return Err(ApiError::bad_request(
                    "bad_upload",
                    format!(
                        "unexpected part '{other}' (expected manifest, model, report, options)"
                    ),
                ))
            }
        }
    }
    let signed =
        signed.ok_or_else(|| ApiError::bad_request("bad_upload", "missing part 'manifest'"))?;
    let upload =
        upload.ok_or_else(|| ApiError::bad_request("bad_upload", "missing part 'model'"))?;
    Ok((signed, upload, report, options))
}

/// `POST /v1/models`: what was published, and whether it was new here.
#[derive(Serialize)]
struct PublishResponse {
    model_id: Hash,
    name: String,
    version: String,
    size: usize,
    status: &'static str,
}

async fn publish_inner(node: &Arc<Node>, req: Request) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<PeerIp>().map(|p| p.0);
    let slots = node.upload_slot().and_then(|g| match peer {
        Some(ip) => node.upload_from(ip).map(|i| (g, Some(i))),
        None => Ok((g, None)),
    });
    let _slots = match slots {
        Ok(s) => s,
        Err(e) => {
            drain(req.into_body()).await;
            return Err(e);
        }
    };
    let limits = &node.config.limits;
    let slow = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let grace = Duration::from_secs(node.config.timeouts.header_secs);
    let body = paced(body, limits.min_upload_bytes_per_sec, grace, slow.clone());
    let mut mp = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| {
            ApiError::bad_request(
                "bad_upload",
                format!(
                    "publish takes multipart/form-data with parts 'manifest' and 'model': {}",
                    e.body_text()
                ),
            )
        })?;
    let (signed, upload, report, options) = match read_parts(node, &mut mp, &slow).await {
        Ok(p) => p,
        Err(e) => {
            drain_refused(node, &mut mp, &e).await;
            return Err(e);
        }
    };
    let m = signed.manifest.clone();
    let report_value = checked_report(&m, report.as_deref())?;
    let (model, bytes, node_report) = uploaded_model(node, &m, &upload, options).await?;
    let cost = verity_engine::Cost::of(&model);
    crate::state::check_cost(&cost, limits)?;
    let record = record_for(&model, m.model_id, &cost);
    drop(model);
    let (report, report_by) = match (report_value, node_report) {
        (Some(r), _) => (Some(r), Some("owner".to_string())),
        (None, Some(r)) => (Some(r), Some("node".to_string())),
        (None, None) => (None, None),
    };
    let version = Version {
        manifest: signed,
        report,
        report_by,
        published_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let store = node.store.clone();
    let size = bytes.len();
    let outcome = node
        .blocking(move || store.publish(&bytes, record, version))
        .await??;
    let status = match outcome {
        Published::Created => StatusCode::CREATED,
        Published::Existing => StatusCode::OK,
    };
    tracing::info!(name = %m.name, version = %m.version, model_id = %m.model_id, size, upload = upload.size, ?outcome, "published");
    node.replication
        .announce_pending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok((
        status,
        Json(PublishResponse {
            model_id: m.model_id,
            name: m.name.clone(),
            version: m.version.clone(),
            size,
            status: if outcome == Published::Created {
                "created"
            } else {
                "exists"
            },
        }),
    )
        .into_response())
}

/// Let a client still sending a refused upload see the answer instead of a reset: the rest of an
/// oversize upload is read and dropped (it is bounded by the body limit and the minimum rate), the rest of
/// any other refused one as in `drain`.
async fn drain_refused(node: &Node, mp: &mut Multipart, e: &ApiError) {
    let (cap, secs) = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
        (u64::MAX, node.config.timeouts.upload_secs)
    } else {
        (DRAIN_BYTES, DRAIN_SECS)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = 0u64;
    'drain: while let Ok(Ok(Some(mut f))) = tokio::time::timeout_at(deadline, mp.next_field()).await
    {
        while let Ok(Ok(Some(c))) = tokio::time::timeout_at(deadline, f.chunk()).await {
            seen += c.len() as u64;
            if seen > cap {
                break 'drain;
            }
        }
    }
}

/// The published report, bound by the manifest's report hash (none if the manifest signs none).
fn checked_report(
    m: &verity_core::Manifest,
    report: Option<&[u8]>,
) -> Result<Option<Value>, ApiError> {
    let report_hash = report.map(verity_core::keccak256);
    match report {
        Some(r) => {
            if report_hash != Some(m.report_hash) {
                return Err(ApiError::unprocessable(
                    "report_mismatch",
                    "keccak256 of the report part does not equal the manifest's report_hash",
                ));
            }
            Ok(Some(serde_json::from_slice::<Value>(r).map_err(|e| {
                ApiError::bad_request("bad_report", format!("report is not valid JSON: {e}"))
            })?))
        }
        None if m.report_hash != Hash::ZERO => Err(ApiError::unprocessable(
            "report_missing",
            "the manifest signs a report_hash but no 'report' part was sent",
        )),
        None => Ok(None),
    }
}

/// The uploaded model: a .vty (ID checked) or an ONNX file (compiled here under a budget, ID checked);
/// with its encoding and the node's compile report for an ONNX upload.
async fn uploaded_model(
    node: &Arc<Node>,
    m: &verity_core::Manifest,
    upload: &Upload,
    options: Option<crate::compile::PublishOptions>,
) -> Result<(verity_engine::Model, Vec<u8>, Option<Value>), ApiError> {
    if upload.vty {
        let bytes = tokio::fs::read(&upload.path)
            .await
            .map_err(|e| ApiError::internal(format!("cannot read the upload: {e}")))?;
        let (model_bytes, decoded) = node
            .on_worker(false, move || {
                let d = vty::decode(&bytes);
                (bytes, d)
            })
            .await?;
        let (mm, id) = decoded.map_err(|e| {
            ApiError::unprocessable("bad_model", format!("not a valid .vty model: {e}"))
        })?;
        if id != m.model_id {
            return Err(ApiError::unprocessable(
                "model_id_mismatch",
                format!(
                    "the uploaded model's ID is {id}, the manifest says {}",
                    m.model_id
                ),
            ));
        }
        Ok((mm, model_bytes, None))
    } else {
        // The manifest names the very file it signs, so nothing is compiled for a manifest made for
        // another model.
        if m.source_hash != upload.keccak {
            return Err(ApiError::unprocessable(
                "source_mismatch",
                if m.source_hash == Hash::ZERO {
                    "an ONNX upload needs the manifest's source_hash (keccak256 of the ONNX file); it is zero".to_string()
                } else {
                    format!(
                        "keccak256 of the uploaded ONNX file is {}, the manifest's source_hash is {}",
                        upload.keccak, m.source_hash
                    )
                },
            ));
        }
        let opts = options.unwrap_or_default();
        let _slot = node
            .compile_slot()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("compile slot closed"))?;
        let (mm, rep) = crate::compile::compile_onnx(node, &upload.path, &opts).await?;
        let (bytes, id) = vty::encode_with_id(&mm);
        if id != m.model_id {
            return Err(ApiError::unprocessable(
                "model_id_mismatch",
                format!(
                    "the ONNX file compiles (with the given options) to model {id}, the manifest says {}",
                    m.model_id
                ),
            ));
        }
        Ok((mm, bytes, rep))
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let store = node.store.clone();
    let (records, versions) = node
        .blocking(move || -> Result<_, verity_store::StoreError> {
            Ok((store.models()?, store.versions()?.len()))
        })
        .await??;
    let costs: Vec<(Hash, verity_engine::Cost)> = records
        .iter()
        .filter_map(|r| {
            let c = serde_json::from_value(r.cost.clone()?).ok()?;
            Some((r.id, c))
        })
        .collect();
    let mut text = node.metrics.render(
        &[
            ("verity_models_stored", records.len() as f64),
            ("verity_versions_published", versions as f64),
            ("verity_workers", node.config.workers as f64),
        ],
        &costs,
    );
    if let Some(llms) = node.llms.get() {
        text.push_str(&crate::llm::render_metrics(llms));
    }
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// The client's IP address, attached to every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerIp(pub IpAddr);

/// When a connection last moved bytes, and how many of its requests are being handled.
struct Activity {
    born: std::time::Instant,
    /// Milliseconds after `born` of the last byte read or written.
    last_ms: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            born: std::time::Instant::now(),
            last_ms: Default::default(),
            busy: Default::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has moved no bytes for `idle` while no request of it was being
    /// handled: a client that connects and sends nothing, or keeps an idle connection, or stops reading
    /// a response.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.born.elapsed().saturating_sub(last);
            if since >= idle && self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = if since >= idle { idle } else { idle - since };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

/// A request being handled on a connection (counted until dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records its activity.
struct Watched {
    inner: tokio::net::TcpStream,
    act: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.act.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.act.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then let open connections finish (bounded by
/// the configured shutdown timeout).
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let app = router(node.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(node.config.timeouts.header_secs))
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let conns = Arc::new(crate::state::PerIp::default());
    let idle = Duration::from_secs(node.config.timeouts.header_secs);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, addr) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ip = addr.ip();
                let Some(guard) = conns.admit(ip, node.config.limits.max_connections_per_ip) else {
                    node.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%ip, "connection refused: too many from this address");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let act = Arc::new(Activity::default());
                let (app, a2) = (app.clone(), act.clone());
                let svc = tower::service_fn(move |mut r: hyper::Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(PeerIp(ip));
                    let busy = Busy::new(a2.clone());
                    let fut = tower::ServiceExt::oneshot(app.clone(), r);
                    async move {
                        let resp = fut.await;
                        drop(busy);
                        resp
                    }
                });
                let svc = TowerToHyperService::new(svc);
                let io = TokioIo::new(Watched { inner: stream, act: act.clone() });
                let conn = builder.serve_connection_with_upgrades(io, svc);
                let fut = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = fut => {}
                        _ = act.idle(idle) => tracing::debug!(%ip, "closing an idle connection"),
                    }
                    drop(guard);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    // Running requests get half the shutdown time to finish; then every run still going is cancelled
    // (its client gets 503) and the connections get a quarter more; the rest is for the receipts.
    let budget = Duration::from_secs(node.config.timeouts.shutdown_secs);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(budget / 2, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!("requests still running at half the shutdown time; cancelling them");
        node.stopping.cancel();
        if tokio::time::timeout(budget / 4, &mut drained)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown timeout; closing them");
        }
    }
    node.stopping.cancel();
    if let Err(e) = node.flush_receipts().await {
        tracing::error!(error = %e.message, "receipts not flushed on shutdown");
    }
    Ok(())
}
