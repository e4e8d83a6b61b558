//! Quorum inference off-chain, with this node as coordinator: `POST /v1/models/{model}/quorum?k=3`.
//!
//! The coordinator reads the NodeRegistry at the current block, draws the candidates for the request with
//! the hub's stake-weighted rule (seed `keccak256(blockhash ‖ request ID)`, see `verity_chain::cert`), and
//! sends the same request (same request ID) to the first k. Every answer is checked: the receipt must be
//! signed by the node asked, for this request and model, under this chain's receipt domain, and the
//! outputs sent must hash to the receipt's output hash. A node that fails, stalls past the timeout or
//! answers badly is replaced by the next drawn (up to k + 2 candidates). When k receipts agree on (input
//! hash, output hash) the answer comes back with a quorum certificate anyone can check offline. When
//! receipts disagree the result is never returned as verified: with `widen` (the default) more candidates
//! are asked while they last; otherwise, or when they run out, the answer is HTTP 409 with the evidence —
//! every signed receipt grouped by what it claims.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use verity_chain::cert::{candidates, QuorumCertificate, RegistrySnapshot, CERT_VERSION, MAX_K};
use verity_chain::Chain;
use verity_core::receipt::receipt_domain;
use verity_core::{Address, Hash, SignedReceipt};

use crate::error::ApiError;
use crate::state::Node;
use crate::tensors::decode_native;

/// Query of the quorum endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumQuery {
    /// Receipts that must agree (1 to 7).
    pub k: u8,
    /// Ask further candidates when receipts disagree (default true).
    #[serde(default)]
    pub widen: Option<bool>,
    /// Per-node time limit in milliseconds (default 15000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Refused (422 `onchain_not_offered`): off-chain receipts never finalize on-chain requests.
    #[serde(default)]
    pub onchain: Option<u64>,
}

/// One node asked.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// Node.
    pub node: Address,
    /// Its endpoint.
    pub endpoint: String,
    /// Its position in the draw.
    pub position: usize,
    /// `agreed`, `dissented`, or what went wrong.
    pub outcome: String,
    /// Milliseconds until it answered or failed.
    pub millis: u64,
}

/// A checked answer.
struct Answer {
    receipt: SignedReceipt,
    outputs: Value,
}

/// A failed chain read while coordinating.
fn chain_down(e: verity_chain::ChainError) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "chain_unreachable", e.to_string())
}

/// An API error response with more top-level fields next to `error` (the attempts and the evidence).
fn error_with(e: ApiError, extra: Value) -> Response {
    let mut body = json!({"error": {"code": e.code, "message": e.message}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    (e.status, Json(body)).into_response()
}

/// `POST /v1/models/{model}/quorum?k=K[&widen=false][&timeout_ms=N]` with a native JSON inference body.
pub async fn post_quorum(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
    Query(q): Query<QuorumQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if q.k == 0 || q.k > MAX_K {
        return Err(ApiError::bad_request(
            "bad_quorum",
            format!("k must be between 1 and {MAX_K}"),
        ));
    }
    let Some(chain) = node.chain.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_chain",
            "quorum inference draws nodes from the on-chain registry: start this node with --chain and --contracts",
        ));
    };
    if body.len() as u64 > node.config.limits.max_body_bytes {
        return Err(ApiError::too_large(format!(
            "the body is larger than {} bytes",
            node.config.limits.max_body_bytes
        )));
    }
    // The body must be a valid native request; the same document (with one request ID) goes to every
    // node.
    decode_native(&body, node.config.limits.max_tensor_elements)?;
    let mut doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not JSON: {e}")))?;
    let (rec, _) = crate::roles::replicate::resolve(&node, &model).await?;
    let model_id = rec.id;
    if q.onchain.is_some() {
        // Receipts given over HTTP are signed for the ReceiptCourt's domain and cannot finalize a hub
        // request; each assigned node answers an on-chain request itself, with the input the request
        // commits to.
        return Err(ApiError::unprocessable(
            "onchain_not_offered",
            "receipts given over HTTP never finalize on-chain requests: the assigned nodes answer them on-chain themselves",
        ));
    }
    let request_id: Hash = match doc.get("request_id") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            ApiError::bad_request("bad_request_id", "request_id must be 32 bytes as 0x-hex")
        })?,
        None => node.new_request_id(),
    };
    let registry = registry(&node, &chain).await?;
    doc["request_id"] = json!(request_id);
    coordinate(
        &node,
        CoordinateArgs {
            target: Target::Native,
            model_id,
            request_id,
            doc,
            k: q.k,
            widen: q.widen.unwrap_or(true),
            timeout: Duration::from_millis(q.timeout_ms.unwrap_or(15_000).clamp(100, 600_000)),
            registry,
            domain: receipt_domain(node.config.chain_id, node.config.verifying_contract),
        },
    )
    .await
}

/// How long a registry snapshot is reused (the chain's newest block changes about once a block time;
/// a certificate names the block it drew from, so a snapshot a second old is as good as a new one).
const SNAPSHOT_TTL: Duration = Duration::from_millis(1000);

/// The registry at the newest block, read at most once per [`SNAPSHOT_TTL`].
pub(crate) async fn registry(
    node: &Arc<Node>,
    chain: &verity_chain::EvmChain,
) -> Result<RegistrySnapshot, ApiError> {
    if let Ok(c) = node.replication.snapshot.lock() {
        if let Some((t, s)) = c.as_ref() {
            if t.elapsed() < SNAPSHOT_TTL {
                return Ok(s.clone());
            }
        }
    }
    let head = chain.head().await.map_err(chain_down)?;
    let snap = chain.registry_at(head.number).await.map_err(chain_down)?;
    if let Ok(mut c) = node.replication.snapshot.lock() {
        *c = Some((Instant::now(), snap.clone()));
    }
    Ok(snap)
}

/// What the nodes are asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A native inference (`/v1/models/{id}/infer`): the outputs must hash to the receipt's.
    Native,
    /// An OpenAI completion at this path (`/v1/chat/completions`, `/v1/completions`): the answer is
    /// the whole response, whose output tokens must hash to the receipt's.
    Completion(&'static str),
}

/// Everything a coordination needs.
pub struct CoordinateArgs {
    /// What the nodes are asked.
    pub target: Target,
    /// Model.
    pub model_id: Hash,
    /// Request ID sent to every node.
    pub request_id: Hash,
    /// The native request document.
    pub doc: Value,
    /// Quorum.
    pub k: u8,
    /// Ask more candidates on disagreement.
    pub widen: bool,
    /// Per-node time limit.
    pub timeout: Duration,
    /// Registry snapshot the candidates are drawn from.
    pub registry: RegistrySnapshot,
    /// The receipt domain every receipt must use.
    pub domain: verity_core::eip712::Domain,
}

/// Run one quorum request; the response is the certified answer or a 409/503 with the evidence.
/// Errors that carry no evidence (too few active nodes, a bad registry, a local failure) are `Err`.
pub async fn coordinate(node: &Arc<Node>, a: CoordinateArgs) -> Result<Response, ApiError> {
    let start = Instant::now();
    let active = a.registry.nodes.len();
    if active < a.k as usize {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "quorum_unavailable",
            format!("only {active} active nodes for a quorum of {}", a.k),
        ));
    }
    let order = a
        .registry
        .draw(&a.request_id, candidates(a.k, active))
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "bad_registry", e.to_string()))?;
    let mut g = gather(node, &a, &order).await?;
    g.label_attempts();
    let elapsed = start.elapsed().as_millis() as u64;
    match g.winner {
        None => Ok(no_quorum(&a, &order, g, elapsed)),
        Some(w) => certified(&a, g, w, elapsed),
    }
}

/// What the asked nodes answered.
struct Gathered {
    /// Every node asked, in the order their answers came.
    attempts: Vec<Attempt>,
    /// Valid answers grouped by (input hash, output hash), each with its draw position.
    groups: BTreeMap<(Hash, Hash), Vec<(usize, Answer)>>,
    /// The group that reached k, if one did.
    winner: Option<(Hash, Hash)>,
}

impl Gathered {
    /// Label every valid answer by whether it joined the agreed result.
    fn label_attempts(&mut self) {
        for at in &mut self.attempts {
            if at.outcome == "answered" {
                let agreed = self.winner.is_some_and(|w| {
                    self.groups
                        .get(&w)
                        .is_some_and(|g| g.iter().any(|(p, _)| *p == at.position))
                });
                at.outcome = if agreed { "agreed" } else { "dissented" }.into();
            }
        }
    }

    /// Valid answers received.
    fn answered(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// The endpoint a registry lists for a node, without a trailing slash ("" when it lists none).
fn endpoint_of(registry: &RegistrySnapshot, addr: &Address) -> String {
    registry
        .nodes
        .iter()
        .find(|n| n.address == *addr)
        .map(|n| n.endpoint.trim_end_matches('/').to_string())
        .unwrap_or_default()
}

/// Ask the first k drawn nodes, and a replacement for each one that fails (or, when widening, while
/// answers disagree), until k valid answers agree or the candidates run out.
async fn gather(
    node: &Arc<Node>,
    a: &CoordinateArgs,
    order: &[Address],
) -> Result<Gathered, ApiError> {
    let http = node.replication.client()?;
    let body = Arc::new(serde_json::to_vec(&a.doc).unwrap_or_default());
    let mut g = Gathered {
        attempts: Vec::new(),
        groups: BTreeMap::new(),
        winner: None,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0usize;
    let launch = |pos: usize| {
        let base = endpoint_of(&a.registry, &order[pos]);
        let url = match a.target {
            Target::Native => format!("{base}/v1/models/{}/infer", a.model_id),
            Target::Completion(path) => format!("{base}{path}"),
        };
        let http = http.clone();
        let body = body.clone();
        let t0 = Instant::now();
        let timeout = a.timeout;
        async move {
            let r = ask(&http, &url, body.as_ref().clone(), timeout).await;
            (pos, r, t0.elapsed().as_millis() as u64)
        }
    };
    while next < a.k as usize {
        in_flight.push(launch(next));
        next += 1;
    }
    while let Some((pos, r, millis)) = in_flight.next().await {
        let addr = order[pos];
        let checked = r.and_then(|(receipt, outputs)| {
            check_answer(a, addr, receipt, outputs).map_err(|e| format!("bad answer: {e}"))
        });
        let outcome = match checked {
            Ok(ans) => {
                let key = (
                    ans.receipt.receipt.input_hash,
                    ans.receipt.receipt.output_hash,
                );
                let group = g.groups.entry(key).or_default();
                group.push((pos, ans));
                if group.len() >= a.k as usize {
                    g.winner = Some(key);
                }
                "answered".to_string()
            }
            Err(e) => e,
        };
        g.attempts.push(Attempt {
            node: addr,
            endpoint: endpoint_of(&a.registry, &addr),
            position: pos,
            outcome,
            millis,
        });
        if g.winner.is_some() {
            break;
        }
        let disagreement = g.groups.len() > 1;
        if disagreement && !a.widen {
            break;
        }
        let best = g.groups.values().map(Vec::len).max().unwrap_or(0);
        let needed = a.k as usize - best;
        while in_flight.len() < needed && next < order.len() {
            in_flight.push(launch(next));
            next += 1;
        }
        if in_flight.is_empty() {
            break;
        }
    }
    Ok(g)
}

/// One group of agreeing receipts in a failed quorum's evidence.
#[derive(Serialize)]
struct EvidenceGroup<'a> {
    input_hash: Hash,
    output_hash: Hash,
    nodes: Vec<Address>,
    receipts: Vec<&'a SignedReceipt>,
}

/// What a failed quorum shows: every signed receipt, grouped by what it claims.
#[derive(Serialize)]
struct Evidence<'a> {
    request_id: Hash,
    model_id: Hash,
    k: u8,
    registry: &'a RegistrySnapshot,
    groups: Vec<EvidenceGroup<'a>>,
}

/// The answer when no group reached k: 409 when valid answers disagree, 503 when too few came.
fn no_quorum(a: &CoordinateArgs, order: &[Address], g: Gathered, elapsed: u64) -> Response {
    let answered = g.answered();
    let (status, code, msg) = if g.groups.len() > 1 {
        (
            StatusCode::CONFLICT,
            "quorum_disagreement",
            format!(
                "the nodes disagree: {} different results among {answered} receipts, none reached k = {}; no result is returned as verified",
                g.groups.len(),
                a.k
            ),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "quorum_unavailable",
            format!(
                "only {answered} of the {} candidates answered validly, k = {} needed",
                order.len(),
                a.k
            ),
        )
    };
    tracing::warn!(request = %a.request_id, model = %a.model_id, "{msg}");
    let evidence = Evidence {
        request_id: a.request_id,
        model_id: a.model_id,
        k: a.k,
        registry: &a.registry,
        groups: g
            .groups
            .iter()
            .map(|((i, o), members)| EvidenceGroup {
                input_hash: *i,
                output_hash: *o,
                nodes: members.iter().map(|(p, _)| order[*p]).collect(),
                receipts: members.iter().map(|(_, x)| &x.receipt).collect(),
            })
            .collect(),
    };
    error_with(
        ApiError::new(status, code, msg),
        json!({"attempts": g.attempts, "evidence": evidence, "latency_ms": elapsed}),
    )
}

/// A native quorum answer: the outputs, with the certificate that k nodes signed them.
#[derive(Serialize)]
struct QuorumAnswer {
    verified: bool,
    model_id: Hash,
    request_id: Hash,
    input_hash: Hash,
    output_hash: Hash,
    outputs: Value,
    certificate: QuorumCertificate,
    attempts: Vec<Attempt>,
    latency_ms: u64,
}

/// The answer when k receipts agree on `w`: the first agreeing node's answer with the certificate.
fn certified(
    a: &CoordinateArgs,
    mut g: Gathered,
    w: (Hash, Hash),
    elapsed: u64,
) -> Result<Response, ApiError> {
    let mut agreed = g.groups.remove(&w).unwrap_or_default();
    agreed.sort_by_key(|(p, _)| *p);
    agreed.truncate(a.k as usize);
    let answer = agreed[0].1.outputs.clone();
    let cert = QuorumCertificate {
        version: CERT_VERSION,
        request_id: a.request_id,
        model_id: a.model_id,
        input_hash: w.0,
        output_hash: w.1,
        k: a.k,
        registry: a.registry.clone(),
        receipts: agreed.into_iter().map(|(_, x)| x.receipt).collect(),
        dissent: g
            .groups
            .into_values()
            .flatten()
            .map(|(_, x)| x.receipt)
            .collect(),
    };
    if let Err(e) = verity_chain::cert::verify_certificate(&cert) {
        // Every receipt was checked on arrival; this would be a coordinator bug.
        return Err(ApiError::internal(format!(
            "the assembled certificate does not verify: {e}"
        )));
    }
    tracing::info!(request = %a.request_id, model = %a.model_id, k = a.k, asked = g.attempts.len(), ms = elapsed, "quorum reached");
    if let Target::Completion(_) = a.target {
        // the first agreeing node's completion, with the certificate beside its receipt
        let mut doc = answer;
        doc["verified"] = json!(true);
        doc["certificate"] = json!(cert);
        doc["attempts"] = json!(g.attempts);
        doc["latency_ms"] = json!(elapsed);
        return Ok(Json(doc).into_response());
    }
    Ok(Json(QuorumAnswer {
        verified: true,
        model_id: a.model_id,
        request_id: a.request_id,
        input_hash: w.0,
        output_hash: w.1,
        outputs: answer,
        certificate: cert,
        attempts: g.attempts,
        latency_ms: elapsed,
    })
    .into_response())
}

/// Send the request to one node: its receipt and outputs, or why not.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(SignedReceipt, Value), String> {
    let r = http
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else {
                format!("unreachable ({e})")
            }
        })?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| format!("cut off ({e})"))?;
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err(format!(
            "HTTP {status}: {}",
            v["error"]["message"].as_str().unwrap_or("no message")
        ));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("bad JSON ({e})"))?;
    let receipt: SignedReceipt =
        serde_json::from_value(v["receipt"].clone()).map_err(|e| format!("no receipt ({e})"))?;
    Ok((receipt, v))
}

/// An answer counts only if its receipt is the asked node's, for this request, model and domain, and the
/// outputs it sent hash to the receipt's output hash.
fn check_answer(
    a: &CoordinateArgs,
    asked: Address,
    receipt: SignedReceipt,
    outputs: Value,
) -> Result<Answer, String> {
    let signer = receipt.verify().map_err(|e| e.to_string())?;
    if signer != asked {
        return Err(format!(
            "the receipt is signed by {signer}, not the node asked"
        ));
    }
    if receipt.domain != a.domain {
        return Err("the receipt is signed under another domain".into());
    }
    let r = &receipt.receipt;
    if r.request_id != a.request_id || r.model_id != a.model_id {
        return Err("the receipt is for another request or model".into());
    }
    let (got, outputs) = match a.target {
        Target::Native => {
            let outputs = outputs["outputs"].clone();
            (outputs_hash(&outputs)?, outputs)
        }
        Target::Completion(_) => {
            let fields: verity_llm::generate::CompletionFields =
                serde_json::from_value(outputs["verity"].clone())
                    .map_err(|e| format!("no completion fields: {e}"))?;
            let tokens = &fields.output_tokens;
            (verity_llm::generate::tokens_hash(tokens), outputs)
        }
    };
    if got != r.output_hash {
        return Err(format!(
            "the outputs sent hash to {got}, the receipt says {}",
            r.output_hash
        ));
    }
    Ok(Answer { receipt, outputs })
}

/// The canonical output hash of a native response's `outputs` (values `q · 2^-scale`, exact in f64).
pub fn outputs_hash(outputs: &Value) -> Result<Hash, String> {
    let arr = outputs.as_array().ok_or("no outputs")?;
    let mut tensors = Vec::with_capacity(arr.len());
    for o in arr {
        let scale = o["scale"].as_i64().ok_or("output without a scale")? as i32;
        let data = o["data"].as_array().ok_or("output without data")?;
        let f = (2f64).powi(scale);
        let mut q = Vec::with_capacity(data.len());
        for x in data {
            let v = x.as_f64().ok_or("a non-numeric output value")? * f;
            if v.fract() != 0.0 || v < i32::MIN as f64 || v > i32::MAX as f64 {
                return Err("an output value is not on the output's fixed-point grid".into());
            }
            q.push(v as i32);
        }
        tensors.push(q);
    }
    Ok(verity_engine::commit::tensors_hash(&tensors))
}
