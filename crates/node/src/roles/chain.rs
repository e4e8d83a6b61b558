//! The node as a chain participant (`--chain <rpc> --contracts <file>`): registers and stakes, watches
//! the InferenceHub for requests it is assigned, fetches their inputs, runs the canonical engine, and
//! submits receipts. Jobs and the watcher's cursor are kept in the store, so a restarted node resumes
//! where it stopped; before every submission it asks the hub whether its receipt is already there, so it
//! never submits twice.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verity_chain::{
    Assignment, Chain, ChainError, Deployment, EvmChain, HubEventKind, Mode, RequestInfo, Status,
    WatchItem, Watcher, WatcherState, U256,
};
use verity_core::{Hash, SignedReceipt};

use crate::config::ChainConfig;
use crate::error::ApiError;
use crate::state::Retry;
use crate::state::{Loaded, Node};
use crate::tensors::{decode_native, NamedTensor};

/// A job: one hub request this node saw.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Hub request ID.
    pub id: u64,
    /// Block of the Requested event.
    pub block: u64,
    /// Model.
    pub model_id: Hash,
    /// Input hash (zero: named by receipts).
    pub input_hash: Hash,
    /// Input URI.
    pub input_uri: String,
    /// Deadline (unix seconds).
    pub deadline: u64,
    /// `pending`, `submitted`, `done` or `skipped`.
    pub state: String,
    /// Why it ended (for the log and `/v1/jobs`).
    pub note: String,
    /// When this node first saw it (unix milliseconds, local clock).
    #[serde(default)]
    pub seen_ms: u64,
}

const JOBS: &str = "chain.jobs";
/// IDs of the jobs still `pending` (kept with each job write, so a poll reads only these).
const PENDING: &str = "chain.pending";
const CURSOR: &str = "chain.cursor";
/// Models registered on-chain that this node's hosting policy wants (model ID → empty).
const WANTED: &str = "chain.wanted";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Request ID as a receipt's bytes32.
pub fn request_hash(id: u64) -> Hash {
    Hash(U256::from(id).to_be_bytes::<32>())
}

pub(crate) fn api(e: ChainError) -> ApiError {
    match e {
        ChainError::Rpc(m) => {
            ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "chain_unreachable", m)
        }
        ChainError::Reverted(m) | ChainError::Other(m) => ApiError::unprocessable("chain_error", m),
    }
}

/// Connect to the chain named in `cfg` (the node's key sends transactions).
pub async fn connect(cfg: &ChainConfig, key: &verity_core::SecretKey) -> Result<EvmChain, String> {
    let dep = Deployment::load(&cfg.contracts).map_err(|e| e.to_string())?;
    EvmChain::connect(&cfg.rpc, dep, Some(key))
        .await
        .map_err(|e| e.to_string())
}

/// Register (and stake) unless already registered.
pub async fn ensure_registered<C: Chain>(
    chain: &C,
    node: &Node,
    endpoint: &str,
    stake: &str,
) -> Result<(), String> {
    let me = node.address();
    match chain.node_info(me).await.map_err(|e| e.to_string())? {
        Some(info) => {
            tracing::info!(endpoint = %info.endpoint, stake = %info.stake, active = info.active, "node is registered");
            if info.endpoint != endpoint {
                let tx = chain
                    .set_endpoint(endpoint)
                    .await
                    .map_err(|e| format!("cannot update the endpoint of node {me}: {e}"))?;
                tracing::info!(%tx, old = %info.endpoint, new = endpoint, "endpoint updated in the NodeRegistry");
            }
            if !info.active {
                tracing::warn!(
                    "the node is registered but not active (stake below the minimum or unbonding)"
                );
            }
            Ok(())
        }
        None => {
            let stake: U256 = stake
                .parse()
                .map_err(|_| format!("bad stake '{stake}' (wei, decimal)"))?;
            let tx = chain
                .register_node(endpoint, stake)
                .await
                .map_err(|e| format!("cannot register node {me} on-chain: {e}"))?;
            tracing::info!(%tx, endpoint, %stake, "registered in the NodeRegistry");
            Ok(())
        }
    }
}

/// The InferenceHub jobs, with an index of the `pending` ones.
const TABLE: crate::jobs::JobTable = crate::jobs::JobTable {
    records: JOBS,
    open: PENDING,
};

fn load_jobs(node: &Node) -> Vec<Job> {
    TABLE.all(&node.store)
}

fn pending_jobs(node: &Node) -> Vec<Job> {
    TABLE
        .open::<Job>(&node.store)
        .into_iter()
        .filter(|j| j.state == "pending")
        .collect()
}

/// Write a job and its entry in the pending index in one transaction.
fn save_job(node: &Node, job: &Job) {
    TABLE.put(&node.store, job.id, job, job.state == "pending");
}

fn forget_job(node: &Node, id: u64) {
    TABLE.forget(&node.store, id);
}

/// Every job this node knows, newest first.
pub fn jobs(node: &Node) -> Vec<Job> {
    let mut j = load_jobs(node);
    j.reverse();
    j
}

/// The watch-and-serve loop; returns when `stop` fires.
pub async fn run_loop<C: Chain>(
    node: Arc<Node>,
    chain: Arc<C>,
    start_block: u64,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let saved: Option<WatcherState> = node
        .store
        .kv_get(CURSOR, b"hub")
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok());
    let mut watcher = Watcher::new(start_block, saved);
    node.replication
        .announce_pending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The pending index is derived data: rebuild it from the jobs once at start.
    for j in load_jobs(&node)
        .into_iter()
        .filter(|j| j.state == "pending")
    {
        save_job(&node, &j);
    }
    let mut was_down = false;
    loop {
        // A step can wait on the chain (a transaction being mined); stopping does not wait for it.
        // Whatever it had not persisted is redone after a restart (the hub is asked first).
        let r = tokio::select! {
            r = step(&node, chain.as_ref(), &mut watcher) => r,
            _ = stop.changed() => return,
        };
        match r {
            Ok(()) => {
                if was_down {
                    tracing::info!("chain connection restored; caught up");
                    was_down = false;
                }
            }
            Err(e) if e.is_transient() => {
                if !was_down {
                    tracing::warn!("chain unreachable, retrying: {e}");
                }
                was_down = true;
            }
            Err(e) => tracing::error!("chain step failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One round: read new events (handling reorgs), persist, then work on pending jobs.
pub async fn step<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    watcher: &mut Watcher,
) -> Result<(), ChainError> {
    let items = watcher.poll(chain).await?;
    for item in items {
        match item {
            WatchItem::Reorg { from } => {
                // Forget every job first seen in replaced blocks, finished or not: the new branch's
                // events follow, and a request ID can be reused there for another request. Nothing is
                // sent twice: before sending, the hub itself is asked for the request and this node's
                // receipt.
                for j in load_jobs(node) {
                    if j.block >= from {
                        forget_job(node, j.id);
                    }
                }
                tracing::warn!(from, "chain reorganisation; re-reading replaced blocks");
            }
            WatchItem::Events(events) => {
                for e in events {
                    match e.kind {
                        HubEventKind::Requested {
                            id,
                            model_id,
                            input_hash,
                            input_uri,
                            deadline,
                            ..
                        } => {
                            let job = Job {
                                id,
                                block: e.block,
                                model_id,
                                input_hash,
                                input_uri,
                                deadline,
                                state: "pending".into(),
                                note: String::new(),
                                seen_ms: now_ms(),
                            };
                            let same = load_job(node, id).is_some_and(|k| {
                                k.block == job.block
                                    && k.model_id == job.model_id
                                    && k.input_hash == job.input_hash
                                    && k.input_uri == job.input_uri
                            });
                            if !same {
                                save_job(node, &job);
                            }
                        }
                        HubEventKind::ModelRegistered {
                            model_id,
                            name,
                            version,
                        } if wants(node, chain, &model_id).await? => {
                            tracing::info!(model = %model_id, %name, %version, "registered on-chain; hosting it");
                            if let Err(e) = node.store.kv_put(WANTED, &model_id.0, &[]) {
                                tracing::error!("cannot record wanted model {model_id}: {e}");
                            }
                        }
                        HubEventKind::Finalized { id, .. } | HubEventKind::Refunded { id } => {
                            if let Some(mut j) = load_job(node, id) {
                                if j.state == "pending" {
                                    j.state = "done".into();
                                    j.note = "settled before this node answered".into();
                                }
                                save_job(node, &j);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if let Ok(v) = serde_json::to_vec(&watcher.state) {
        let _ = node.store.kv_put(CURSOR, b"hub", &v);
    }
    replicate_wanted(node);
    announce_hosting(node, chain).await?;
    for job in pending_jobs(node) {
        work(node, chain, job).await?;
    }
    Ok(())
}

/// Whether this node's hosting policy takes a model registered on-chain.
async fn wants<C: Chain>(node: &Arc<Node>, chain: &C, model: &Hash) -> Result<bool, ChainError> {
    let h = &node.config.hosting;
    Ok(match h.policy.as_str() {
        "all" => true,
        "list" => h.models.contains(model),
        "target" => {
            let nodes: Vec<(verity_core::Address, U256)> = chain
                .nodes()
                .await?
                .into_iter()
                .map(|(a, i)| {
                    let stake = if i.active {
                        i.stake.parse().unwrap_or(U256::ZERO)
                    } else {
                        U256::ZERO
                    };
                    (a, stake)
                })
                .collect();
            verity_chain::assign(*model, &nodes, h.target).contains(&node.address())
        }
        _ => false,
    })
}

/// Start a background pull for each wanted model that is neither stored nor being pulled. A failed
/// pull is retried after `hosting.retry_secs`, the wait doubling after each further failure; after
/// `hosting.retry_attempts` failures the node gives up on the model, says so once in its log, and lists
/// it in `GET /v1/node` (a `POST /v1/models/{id}/pull` can still fetch it).
fn replicate_wanted(node: &Arc<Node>) {
    let Ok(wanted) = node.store.kv_scan(WANTED) else {
        return;
    };
    let (base, attempts) = (
        Duration::from_secs(node.config.hosting.retry_secs),
        node.config.hosting.retry_attempts,
    );
    for (k, _) in wanted {
        let Ok(id) = <[u8; 32]>::try_from(k.as_slice()).map(Hash) else {
            continue;
        };
        if node.store.model(&id).ok().flatten().is_some() {
            let _ = node.store.kv_write(WANTED, &[(&id.0, None)]);
            if let Ok(mut inflight) = node.replication.inflight.lock() {
                inflight.remove(&id);
            }
            continue;
        }
        {
            let Ok(mut inflight) = node.replication.inflight.lock() else {
                return;
            };
            let now = std::time::Instant::now();
            let r = inflight.entry(id).or_insert_with(|| Retry {
                running: false,
                failures: 0,
                next: now,
                last_error: String::new(),
            });
            if r.running || now < r.next || r.given_up(attempts) {
                continue;
            }
            r.running = true;
        }
        let n = node.clone();
        tokio::spawn(async move {
            let result = crate::roles::replicate::ensure(&n, id).await;
            let Ok(mut inflight) = n.replication.inflight.lock() else {
                return;
            };
            match result {
                Ok(_) => {
                    inflight.remove(&id);
                }
                Err(e) => {
                    let Some(r) = inflight.get_mut(&id) else {
                        return;
                    };
                    r.running = false;
                    r.failures += 1;
                    r.last_error = e.message;
                    if r.given_up(attempts) {
                        tracing::warn!(
                            model = %id,
                            "giving up replicating the model after {} failed attempts: {} (ask again with POST /v1/models/{id}/pull)",
                            r.failures,
                            r.last_error
                        );
                    } else {
                        let wait = Retry::backoff(base, r.failures);
                        r.next = std::time::Instant::now() + wait;
                        tracing::warn!(
                            model = %id,
                            "replication failed (attempt {} of {attempts}, retrying in {} s): {}",
                            r.failures,
                            wait.as_secs(),
                            r.last_error
                        );
                    }
                }
            }
        });
    }
}

/// Announce in the NodeRegistry every stored model this node does not announce yet.
async fn announce_hosting<C: Chain>(node: &Arc<Node>, chain: &C) -> Result<(), ChainError> {
    use std::sync::atomic::Ordering;
    if !node
        .replication
        .announce_pending
        .swap(false, Ordering::Relaxed)
    {
        return Ok(());
    }
    let me = node.address();
    let models = node.store.models().unwrap_or_default();
    for m in models {
        let done = match chain.hosts_of(m.id).await {
            Ok(h) if h.contains(&me) => Ok(()),
            Ok(_) => chain.set_hosting(m.id, true).await.map(|tx| {
                tracing::info!(model = %m.id, %tx, "announced hosting");
            }),
            Err(e) => Err(e),
        };
        match done {
            Err(e) if e.is_transient() => {
                node.replication
                    .announce_pending
                    .store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => tracing::warn!(model = %m.id, "cannot announce hosting: {e}"),
            Ok(()) => {}
        }
    }
    Ok(())
}

fn load_job(node: &Node, id: u64) -> Option<Job> {
    TABLE.get(&node.store, id)
}

fn finish(node: &Node, mut job: Job, state: &str, note: String) {
    tracing::info!(request = job.id, state, "{note}");
    job.state = state.into();
    job.note = note;
    save_job(node, &job);
}

async fn work<C: Chain>(node: &Arc<Node>, chain: &C, job: Job) -> Result<(), ChainError> {
    let me = node.address();
    let Some(req) = chain.request(job.id).await? else {
        finish(
            node,
            job,
            "skipped",
            "the request is no longer on the chain".into(),
        );
        return Ok(());
    };
    if req.status != Status::Pending {
        finish(
            node,
            job,
            "done",
            format!("the request is already {:?}", req.status).to_lowercase(),
        );
        return Ok(());
    }
    if chain.head().await?.timestamp > req.deadline {
        finish(node, job, "skipped", "the deadline passed".into());
        return Ok(());
    }
    let assigned = match chain.assignment(job.id).await? {
        Assignment::NotReady => return Ok(()),
        Assignment::Expired => {
            finish(node, job, "skipped", "the seed block expired".into());
            return Ok(());
        }
        Assignment::Nodes(a) => a,
    };
    let Some(position) = assigned.iter().position(|a| *a == me) else {
        finish(node, job, "skipped", "not assigned to this node".into());
        return Ok(());
    };
    if req.mode == Mode::Quorum && position >= req.k as usize {
        let grace = node
            .config
            .chain
            .as_ref()
            .map_or(ChainConfig::default().spare_grace_ms, |c| c.spare_grace_ms);
        if now_ms() < job.seen_ms.saturating_add(grace) {
            tracing::debug!(
                request = job.id,
                position,
                "spare node for this quorum; waiting for the primary nodes first"
            );
            return Ok(());
        }
    }
    if chain.submitted(job.id, me).await?.is_some() {
        finish(
            node,
            job,
            "submitted",
            "the receipt is already on-chain".into(),
        );
        return Ok(());
    }
    tracing::debug!(
        request = job.id,
        position,
        "assigned; fetching the input and running"
    );
    let receipt = match execute(node, chain, &req).await {
        Ok(r) => r,
        Err(e) => {
            // Saying so on-chain costs nothing but gas; staying silent is slashed at the deadline.
            return decline(node, chain, job, e.code, &e.message).await;
        }
    };
    tracing::debug!(request = job.id, output = %receipt.receipt.output_hash, "submitting the receipt");
    match chain.submit(job.id, &receipt).await {
        Ok(tx) => {
            finish(
                node,
                job,
                "submitted",
                format!("receipt submitted in tx {tx}"),
            );
            Ok(())
        }
        Err(ChainError::Reverted(m)) if m.contains("does not cover the request's collateral") => {
            decline(node, chain, job, "collateral", &m).await
        }
        Err(ChainError::Reverted(m)) => {
            finish(node, job, "done", format!("receipt refused: {m}"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Decline request `job` on-chain (reason `code`), so this node is not slashed for a request it cannot
/// serve; `why` is kept in the job's note.
async fn decline<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    job: Job,
    code: &str,
    why: &str,
) -> Result<(), ChainError> {
    tracing::info!(
        request = job.id,
        reason = code,
        "declining an assigned request: {why}"
    );
    match chain.decline(job.id, code).await {
        Ok(tx) => {
            finish(
                node,
                job,
                "declined",
                format!("cannot serve it ({why}); declined in tx {tx}"),
            );
            Ok(())
        }
        Err(ChainError::Reverted(m)) => {
            finish(
                node,
                job,
                "skipped",
                format!("cannot serve it ({why}); decline refused: {m}"),
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Fetch the input of a request, run it, and sign the receipt (request ID = hub request ID).
async fn execute<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    req: &RequestInfo,
) -> Result<SignedReceipt, ApiError> {
    let inputs = fetch_input(node, chain, req).await?;
    let loaded = load_model(node, &req.model_id).await?;
    let n2 = node.clone();
    let l2 = loaded.clone();
    let rid = request_hash(req.id);
    // a hub-domain receipt, only ever for a request read on that hub, with the input it commits to
    let domain = verity_core::receipt::receipt_domain(chain.chain_id(), chain.hub());
    let inf = node
        .on_worker(false, move || {
            n2.infer_blocking_for(&l2, inputs, rid, domain)
        })
        .await??;
    if req.input_hash != Hash::ZERO && inf.receipt.receipt.input_hash != req.input_hash {
        return Err(ApiError::unprocessable(
            "input_mismatch",
            format!(
                "the input at {} hashes to {}, not the requested {}",
                req.input_uri, inf.receipt.receipt.input_hash, req.input_hash
            ),
        ));
    }
    node.flush_receipts().await?;
    Ok(inf.receipt)
}

pub(crate) async fn load_model(node: &Arc<Node>, id: &Hash) -> Result<Arc<Loaded>, ApiError> {
    let (rec, _) = crate::roles::replicate::resolve(node, &id.to_string()).await?;
    node.load(&rec).await
}

/// The input tensors behind a request's input URI: `http(s)://…` (a native inference body),
/// `data:application/json;base64,…`, or `opengradient:<id>` (the OpenGradient request in the
/// request's transaction).
pub async fn fetch_input<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    req: &RequestInfo,
) -> Result<Vec<NamedTensor>, ApiError> {
    Ok(fetch_input_and_mode(node, chain, req.id, &req.input_uri)
        .await?
        .0)
}

/// The input tensors behind input URI `uri` of request `id` (see [`fetch_input`]), with the OpenGradient
/// inference mode when the input came from an OpenGradient request.
pub async fn fetch_input_and_mode<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    id: u64,
    uri: &str,
) -> Result<(Vec<NamedTensor>, Option<u8>), ApiError> {
    let max = node.config.limits.max_tensor_elements;
    let body: Vec<u8> = if let Some(rest) = uri.strip_prefix("opengradient:") {
        let want: u64 = rest.parse().map_err(|_| {
            ApiError::unprocessable(
                "bad_input_uri",
                format!("bad OpenGradient inference ID in '{uri}'"),
            )
        })?;
        if want != id {
            return Err(ApiError::unprocessable(
                "bad_input_uri",
                format!("'{uri}' names another request"),
            ));
        }
        let og = chain
            .opengradient_request(id)
            .await
            .map_err(api)?
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "input_unavailable",
                    format!("no OpenGradient request {want} in its transaction"),
                )
            })?;
        return Ok((
            crate::api::opengradient::input_tensors(&og.input, max)?,
            Some(og.mode),
        ));
    } else if let Some(rest) = uri.strip_prefix("data:application/json;base64,") {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| {
                ApiError::unprocessable("bad_input_uri", format!("bad base64 in the data URI: {e}"))
            })?
    } else if uri.starts_with("http://") || uri.starts_with("https://") {
        fetch_http(uri, node.config.limits.max_body_bytes).await?
    } else {
        return Err(ApiError::unprocessable(
            "bad_input_uri",
            format!("unsupported input URI '{uri}' (http(s)://, data:application/json;base64, or opengradient:)"),
        ));
    };
    let r = decode_native(&body, max)
        .map_err(|e| ApiError::unprocessable("bad_input", e.to_string()))?;
    Ok((r.inputs, None))
}

async fn fetch_http(uri: &str, limit: u64) -> Result<Vec<u8>, ApiError> {
    let bad =
        |m: String| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "input_unavailable", m);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut resp = client
        .get(uri)
        .send()
        .await
        .map_err(|e| bad(format!("cannot fetch {uri}: {e}")))?;
    if !resp.status().is_success() {
        return Err(bad(format!("fetching {uri} gave HTTP {}", resp.status())));
    }
    let mut out = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| bad(format!("reading {uri}: {e}")))?
    {
        if out.len() as u64 + c.len() as u64 > limit {
            return Err(ApiError::unprocessable(
                "input_too_large",
                format!("the input at {uri} is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// A finalized request's output, re-executed here and checked against the hashes the chain finalized.
pub struct Verified {
    /// The request.
    pub request: RequestInfo,
    /// Output tensors (name, shape, scale, values).
    pub outputs: Vec<(String, Vec<u64>, i8, Vec<f64>)>,
    /// Output tensors as canonical integers.
    pub raw: Vec<Vec<i32>>,
    /// The OpenGradient inference mode, for a request placed through the OpenGradient front door.
    pub opengradient_mode: Option<u8>,
}

/// Wait (up to `wait`) for request `id` to finalize, then re-execute it and return the output only if
/// its input and output hashes equal the finalized ones.
pub async fn verified_result<C: Chain>(
    node: &Arc<Node>,
    chain: &C,
    id: u64,
    wait: Duration,
) -> Result<Verified, ApiError> {
    let start = tokio::time::Instant::now();
    let req = loop {
        let r = chain.request(id).await.map_err(api)?;
        let Some(r) = r else {
            return Err(ApiError::not_found(
                "unknown_request",
                format!("no request {id} on the hub"),
            ));
        };
        match r.status {
            Status::Finalized => break r,
            Status::Refunded => {
                return Err(ApiError::new(
                    axum::http::StatusCode::GONE,
                    "request_refunded",
                    format!("request {id} timed out and was refunded"),
                ))
            }
            _ if start.elapsed() >= wait => {
                return Err(ApiError::new(
                    axum::http::StatusCode::ACCEPTED,
                    "pending",
                    format!("request {id} is not finalized yet; ask again"),
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let (inputs, opengradient_mode) = fetch_input_and_mode(node, chain, id, &req.input_uri).await?;
    let loaded = load_model(node, &req.model_id).await?;
    let l2 = loaded.clone();
    let (input_hash, raw) = node
        .on_worker(false, move || -> Result<(Hash, Vec<Vec<i32>>), ApiError> {
            let model = l2.exec.model();
            let q = crate::state::bind_inputs(model, inputs)?;
            let ih = verity_engine::commit::tensors_hash(&q);
            let out = l2
                .exec
                .run(q)
                .map_err(|e| ApiError::unprocessable("execution_failed", e.to_string()))?;
            Ok((ih, out))
        })
        .await??;
    let output_hash = verity_engine::commit::tensors_hash(&raw);
    if input_hash != req.input_hash || output_hash != req.output_hash {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "result_mismatch",
            format!(
                "request {id} finalized input {} output {}, but re-execution here gives input {input_hash} output {output_hash}",
                req.input_hash, req.output_hash
            ),
        ));
    }
    let outputs = Node::describe_outputs(loaded.exec.model(), &raw);
    Ok(Verified {
        request: req,
        outputs,
        raw,
        opengradient_mode,
    })
}

/// Whether a request asks for quorum.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Signed => "signed",
        Mode::Quorum => "quorum",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A wanted model that no peer can serve (its only peer refuses connections) is pulled again after
    /// a wait that doubles, then given up on after the configured number of attempts: no further pull
    /// starts, and the failures stay visible.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unservable_model_is_retried_with_backoff_then_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::NodeConfig::default();
        config.hosting.peers = vec!["http://127.0.0.1:9".into()];
        config.hosting.retry_secs = 1;
        config.hosting.retry_attempts = 3;
        let store = verity_store::Store::open(dir.path()).unwrap();
        let node = Node::new(config, store, verity_core::SecretKey::random());
        let id = verity_core::keccak256(b"a model nobody serves");
        node.store.kv_put(WANTED, &id.0, &[]).unwrap();
        let state = |n: &Arc<Node>| {
            let g = n.replication.inflight.lock().unwrap();
            g.get(&id)
                .map(|r| (r.failures, r.running, r.last_error.clone(), r.next))
        };
        // tick like the chain loop until the model has `n` failures; when that was seen
        let until = |n: u32| {
            let node = node.clone();
            async move {
                let start = Instant::now();
                loop {
                    replicate_wanted(&node);
                    if state(&node).is_some_and(|s| s.0 >= n && !s.1) {
                        return Instant::now();
                    }
                    assert!(start.elapsed() < Duration::from_secs(30), "no failure {n}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // The waits are read from the retry record, not from when this loop happens to notice a
        // failure (a loaded machine notices late): failure k sets `next` to its own time plus the
        // wait, and attempt k + 1 cannot start (so cannot fail) before that `next`.
        let t0 = Instant::now();
        until(1).await;
        let (_, _, why, next1) = state(&node).unwrap();
        assert!(why.contains("none of 1 peers serves model"), "{why}");
        assert!(next1 - t0 >= Duration::from_secs(1), "{:?}", next1 - t0);
        // right after a failure, a tick starts nothing
        replicate_wanted(&node);
        assert_eq!(state(&node).unwrap().0, 1);
        assert!(!state(&node).unwrap().1);
        let seen2 = until(2).await;
        assert!(seen2 >= next1, "attempt 2 started before its wait was over");
        let next2 = state(&node).unwrap().3;
        // failure 2 came after next1, and next2 is that failure plus the second wait
        assert!(
            next2 - next1 >= Duration::from_secs(2),
            "the wait doubles: {:?}",
            next2 - next1
        );
        let seen3 = until(3).await;
        assert!(seen3 >= next2, "attempt 3 started before its wait was over");
        // given up: ticks for longer than the next wait would be start no pull
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(5) {
            replicate_wanted(&node);
            let (failures, running, _, _) = state(&node).unwrap();
            assert_eq!((failures, running), (3, false));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(node.replication.inflight.lock().unwrap()[&id].given_up(3));
        // still wanted (a pull asked for by hand can fetch it)
        assert!(node.store.kv_get(WANTED, &id.0).unwrap().is_some());
        // the waits: doubling from the base, at most an hour
        let b = Duration::from_secs(15);
        assert_eq!(Retry::backoff(b, 1), b);
        assert_eq!(Retry::backoff(b, 3), b * 4);
        assert_eq!(Retry::backoff(b, 40), Duration::from_secs(3600));
    }
}
