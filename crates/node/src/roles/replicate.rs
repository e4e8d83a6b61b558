//! Model replication between nodes. A node serves the chunk list of every model it stores
//! (`GET /v1/models/{id}/chunks`: size, chunk size, the keccak256 of each chunk, and the owners' signed
//! versions) and each chunk (`GET /v1/models/{id}/chunks/{i}`). Another node pulls a model by asking
//! its peers for the list, then fetching the chunks it lacks from several peers in parallel, checking
//! every chunk against the list before it is written; a peer that serves bytes that do not match is
//! refused for the rest of the pull, and a peer that fails is retried a few times and then dropped.
//! Chunks are content-addressed and an assembly record keeps them through restarts, so an interrupted
//! pull resumes with what it already has. The assembled file must decode to the requested model ID —
//! the only thing trusted — otherwise the list was a lie and its peers are refused too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use verity_chain::Chain;
use verity_core::Hash;
use verity_engine::vty;
use verity_store::{ModelRecord, StoreError, Version};

use crate::error::ApiError;
use crate::state::{record_for, Node};

/// Largest chunk a peer may announce.
const MAX_CHUNK: u64 = 64 << 20;
/// Transport failures after which a peer is dropped for the rest of a pull.
const PEER_FAILURES: u32 = 3;

/// What a peer says a model is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkList {
    /// Model ID.
    pub model_id: Hash,
    /// File size in bytes.
    pub size: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u64,
    /// keccak256 of each chunk.
    pub chunks: Vec<Hash>,
    /// The owners' signed `name@version` records for this model.
    #[serde(default)]
    pub versions: Vec<Version>,
}

impl ChunkList {
    fn check(&self, want: &Hash, max_bytes: u64) -> Result<(), String> {
        if self.model_id != *want {
            return Err(format!("it describes model {}", self.model_id));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(format!("bad chunk size {}", self.chunk_size));
        }
        if self.size > max_bytes {
            return Err(format!(
                "the model is {} bytes, over this node's limit of {max_bytes}",
                self.size
            ));
        }
        if self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size) {
            return Err(format!(
                "{} chunks cannot make {} bytes",
                self.chunks.len(),
                self.size
            ));
        }
        Ok(())
    }

    fn same_content(&self, o: &ChunkList) -> bool {
        self.size == o.size && self.chunk_size == o.chunk_size && self.chunks == o.chunks
    }
}

/// Resolve a model reference (`0x<id>`, `name@version`, `name`) to its record and version. A model
/// this node does not store is fetched from its peers first when it can be found: an ID directly,
/// a name through the on-chain ModelRegistry. Otherwise 404.
pub async fn resolve(
    node: &Arc<Node>,
    reference: &str,
) -> Result<(ModelRecord, Option<verity_store::Version>), ApiError> {
    let local = node.resolve_local(reference).await;
    let Err(e) = &local else { return local };
    if e.status != axum::http::StatusCode::NOT_FOUND {
        return local;
    }
    let id = match reference.parse::<Hash>() {
        Ok(id) => Some(id),
        Err(_) => match node.chain.get() {
            Some(c) => c.resolve_model(reference).await.ok(),
            None => None,
        },
    };
    let Some(id) = id else { return local };
    if node.chain.get().is_none() && node.config.hosting.peers.is_empty() {
        return local;
    }
    ensure(node, id).await.map_err(|e| {
        ApiError::new(
            e.status,
            e.code,
            format!(
                "no model '{reference}' on this node, and fetching it from peers failed: {}",
                e.message
            ),
        )
    })?;
    match node.resolve_local(reference).await {
        Ok(r) => Ok(r),
        // A name whose version was not carried over (e.g. held by another owner here): by ID.
        Err(_) => node.resolve_local(&id.to_string()).await,
    }
}

/// How a pull went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullReport {
    /// Model ID.
    pub model_id: Hash,
    /// Bytes of the model.
    pub bytes: u64,
    /// Chunks of the model.
    pub chunks: usize,
    /// Chunks fetched in this pull (the rest were already stored).
    pub fetched: usize,
    /// Chunks served per peer.
    pub from: BTreeMap<String, usize>,
    /// Peers refused, with the reason.
    pub refused: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Of which: fetching and checking chunks.
    pub fetch_seconds: f64,
    /// Of which: assembling, decoding and checking the model ID.
    pub decode_seconds: f64,
    /// True if the model was already stored.
    pub already_stored: bool,
}

/// `GET /v1/models/{model}/chunks`.
pub async fn get_chunk_list(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<ChunkList>, ApiError> {
    let (rec, _) = node.resolve_local(&model).await?;
    let store = node.store.clone();
    let id = rec.id;
    let versions = node
        .blocking(move || store.versions())
        .await??
        .into_iter()
        .filter(|v| v.manifest.manifest.model_id == id)
        .collect();
    Ok(Json(ChunkList {
        model_id: rec.id,
        size: rec.size,
        chunk_size: rec.chunk_size,
        chunks: rec.chunks,
        versions,
    }))
}

/// `GET /v1/models/{model}/chunks/{i}`.
pub async fn get_chunk(
    State(node): State<Arc<Node>>,
    Path((model, i)): Path<(String, usize)>,
) -> Result<Response, ApiError> {
    let (rec, _) = node.resolve_local(&model).await?;
    if i >= rec.chunks.len() {
        return Err(ApiError::not_found(
            "no_such_chunk",
            format!("model {} has {} chunks", rec.id, rec.chunks.len()),
        ));
    }
    if node.config.faults.stall_ms > 0 {
        tokio::time::sleep(Duration::from_millis(node.config.faults.stall_ms)).await;
    }
    let store = node.store.clone();
    // Not re-hashed here: the receiver checks every chunk against the list (and refuses this node if
    // its disk returned bad bytes).
    let mut data = node
        .blocking(move || store.read_chunk_unchecked(&rec, i))
        .await??;
    if node.config.faults.corrupt_chunks && !data.is_empty() {
        data[0] ^= 0x5a;
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// Body of `POST /v1/models/{id}/pull`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// Peers to fetch from (base URLs); default: the configured and on-chain ones.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// `POST /v1/models/{id}/pull`: fetch a model from peers now (answers how it went).
pub async fn post_pull(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<PullReport>, ApiError> {
    let id: Hash = model.parse().map_err(|_| {
        ApiError::bad_request("bad_model_id", "pull takes a model ID (0x + 64 hex digits)")
    })?;
    let b: PullBody = if body.is_empty() {
        PullBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_body", format!("bad pull request: {e}")))?
    };
    let peers = (!b.peers.is_empty()).then(|| {
        b.peers
            .iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect()
    });
    Ok(Json(ensure_from(&node, id, peers).await?))
}

/// Base URLs of the peers to pull `id` from: the configured peers, then the nodes announcing it in
/// the NodeRegistry, then every other registered node (a node may host it without announcing yet).
pub async fn peers_for(node: &Arc<Node>, id: &Hash) -> Vec<String> {
    let mut out: Vec<String> = node
        .config
        .hosting
        .peers
        .iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .collect();
    if let Some(chain) = node.chain.get() {
        let me = node.address();
        let hosts = chain.hosts_of(*id).await.unwrap_or_default();
        match chain.nodes().await {
            Ok(all) => {
                let mut ordered: Vec<&(verity_core::Address, verity_chain::NodeInfo)> = all
                    .iter()
                    .filter(|(a, i)| *a != me && i.active && hosts.contains(a))
                    .collect();
                ordered.extend(
                    all.iter()
                        .filter(|(a, i)| *a != me && i.active && !hosts.contains(a)),
                );
                for (_, info) in ordered {
                    let url = info.endpoint.trim_end_matches('/').to_string();
                    if !out.contains(&url) {
                        out.push(url);
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list nodes for replication: {e}"),
        }
    }
    out
}

/// Make sure model `id` is stored here, pulling it from peers if not.
pub async fn ensure(node: &Arc<Node>, id: Hash) -> Result<PullReport, ApiError> {
    ensure_from(node, id, None).await
}

/// [`ensure`] from the given peers (`None`: the configured and on-chain ones). One pull per model at a
/// time: a second caller waits and finds the model stored.
pub async fn ensure_from(
    node: &Arc<Node>,
    id: Hash,
    peers: Option<Vec<String>>,
) -> Result<PullReport, ApiError> {
    let lock = {
        let mut locks = node
            .replication
            .locks
            .lock()
            .map_err(|_| ApiError::internal("replication lock poisoned"))?;
        locks.entry(id).or_default().clone()
    };
    let _g = lock.lock().await;
    if stored(node, &id).await? {
        return Ok(PullReport {
            model_id: id,
            already_stored: true,
            ..PullReport::default()
        });
    }
    let peers = match peers {
        Some(p) => p,
        None => peers_for(node, &id).await,
    };
    if peers.is_empty() {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("no model '{id}' on this node, and no peers to fetch it from"),
        ));
    }
    let report = pull(node, id, &peers).await?;
    node.replication
        .announce_pending
        .store(true, Ordering::Relaxed);
    Ok(report)
}

async fn stored(node: &Arc<Node>, id: &Hash) -> Result<bool, ApiError> {
    let store = node.store.clone();
    let id = *id;
    Ok(node.blocking(move || store.model(&id)).await??.is_some())
}

async fn fetch_list(http: &reqwest::Client, peer: &str, id: &Hash) -> Result<ChunkList, String> {
    let url = format!("{peer}/v1/models/{id}/chunks");
    let r = http
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("unreachable ({e})"))?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    let b = body_limited(r, 64 << 20).await?;
    serde_json::from_slice(&b).map_err(|e| format!("bad chunk list ({e})"))
}

async fn body_limited(mut r: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(c) = r.chunk().await.map_err(|e| format!("read failed ({e})"))? {
        if out.len() as u64 + c.len() as u64 > limit {
            return Err(format!("sent more than {limit} bytes"));
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// Pull model `id` from `peers` (base URLs) and store it with its verified versions.
pub async fn pull(node: &Arc<Node>, id: Hash, peers: &[String]) -> Result<PullReport, ApiError> {
    let start = Instant::now();
    let http = node.replication.client()?;
    let mut report = PullReport {
        model_id: id,
        ..PullReport::default()
    };
    // Every peer's list; peers that agree form a group, tried largest group first.
    let lists =
        futures_util::future::join_all(peers.iter().map(|p| fetch_list(&http, p, &id))).await;
    let mut groups: Vec<(ChunkList, Vec<String>)> = Vec::new();
    for (p, l) in peers.iter().zip(lists) {
        match l.and_then(|l| l.check(&id, node.config.limits.max_model_bytes).map(|_| l)) {
            Ok(l) => match groups.iter_mut().find(|g| g.0.same_content(&l)) {
                Some(g) => {
                    g.0.versions.extend(l.versions);
                    g.1.push(p.clone());
                }
                None => groups.push((l, vec![p.clone()])),
            },
            Err(e) => tracing::debug!(peer = %p, "no chunk list for {id}: {e}"),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    if groups.is_empty() {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("none of {} peers serves model {id}", peers.len()),
        ));
    }
    let mut last_err = None;
    for (list, group) in groups {
        match pull_list(node, &http, &list, &group, &mut report).await {
            Ok(()) => {
                report.bytes = list.size;
                report.chunks = list.chunks.len();
                report.seconds = start.elapsed().as_secs_f64();
                tracing::info!(
                    model = %id,
                    bytes = list.size,
                    chunks = list.chunks.len(),
                    fetched = report.fetched,
                    peers = report.from.len(),
                    refused = report.refused.len(),
                    seconds = report.seconds,
                    "replicated"
                );
                return Ok(report);
            }
            Err(e) => {
                tracing::warn!(model = %id, "pull from {group:?} failed: {}", e.message);
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| ApiError::internal("pull failed")))
}

/// Shared state of one list's download.
struct Work {
    queue: VecDeque<usize>,
    attempts: Vec<u32>,
    refused: BTreeSet<usize>,
    failures: Vec<u32>,
    served: Vec<usize>,
    notes: Vec<String>,
    error: Option<String>,
}

async fn pull_list(
    node: &Arc<Node>,
    http: &reqwest::Client,
    list: &ChunkList,
    peers: &[String],
    report: &mut PullReport,
) -> Result<(), ApiError> {
    let missing = missing_chunks(node, list).await?;
    let t_fetch = Instant::now();
    fetch_missing(node, http, list, peers, missing, report).await?;
    report.fetch_seconds = t_fetch.elapsed().as_secs_f64();
    let t_decode = Instant::now();
    let model = assemble(node, list, peers, report).await?;
    report.decode_seconds = t_decode.elapsed().as_secs_f64();
    keep(node, list, &model).await
}

/// Open the pull of `list` in the store; the indices of the chunks still missing (a repeated chunk is
/// fetched once).
async fn missing_chunks(node: &Arc<Node>, list: &ChunkList) -> Result<Vec<usize>, ApiError> {
    let id = list.model_id;
    let store = node.store.clone();
    let chunks = list.chunks.clone();
    node.blocking(move || store.begin_pull(&id, &chunks))
        .await??;
    let store = node.store.clone();
    let chunks = list.chunks.clone();
    node.blocking(move || {
        let mut seen = BTreeSet::new();
        Ok::<_, ApiError>(
            chunks
                .iter()
                .enumerate()
                .filter(|(_, h)| seen.insert(**h))
                .filter(|(_, h)| !store.has_chunk(h))
                .map(|(i, _)| i)
                .collect(),
        )
    })
    .await?
}

/// Fetch the `missing` chunks from the peers with parallel workers; who served what, and what was
/// refused, goes into the report.
async fn fetch_missing(
    node: &Arc<Node>,
    http: &reqwest::Client,
    list: &ChunkList,
    peers: &[String],
    missing: Vec<usize>,
    report: &mut PullReport,
) -> Result<(), ApiError> {
    let workers = node
        .config
        .hosting
        .parallel_chunks
        .min(missing.len())
        .max(1);
    let work = Arc::new(Mutex::new(Work {
        queue: missing.into_iter().collect(),
        attempts: vec![0; list.chunks.len()],
        refused: BTreeSet::new(),
        failures: vec![0; peers.len()],
        served: vec![0; peers.len()],
        notes: Vec::new(),
        error: None,
    }));
    let shared_peers: Arc<Vec<String>> = Arc::new(peers.to_vec());
    let list = Arc::new(list.clone());
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (node, http, peers, list, work) = (
            node.clone(),
            http.clone(),
            shared_peers.clone(),
            list.clone(),
            work.clone(),
        );
        tasks.push(tokio::spawn(async move {
            fetch_worker(node, http, peers, list, work, w).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (error, served, notes) = {
        let w = work
            .lock()
            .map_err(|_| ApiError::internal("replication state poisoned"))?;
        (w.error.clone(), w.served.clone(), w.notes.clone())
    };
    for (p, n) in peers.iter().zip(&served) {
        if *n > 0 {
            *report.from.entry(p.clone()).or_default() += n;
        }
    }
    report.fetched += served.iter().sum::<usize>();
    report.refused.extend(notes);
    match error {
        Some(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "replication_failed",
            e,
        )),
        None => Ok(()),
    }
}

/// The record of a pulled model before its schema is known (what assembling its chunks needs).
fn bare_record(list: &ChunkList) -> ModelRecord {
    ModelRecord {
        id: list.model_id,
        size: list.size,
        chunk_size: list.chunk_size,
        chunks: list.chunks.clone(),
        inputs: vec![],
        outputs: vec![],
        nodes: 0,
        parameters: 0,
        stored_at: 0,
        cost: None,
    }
}

/// Assemble, decode and check the ID — the one thing not taken from the peers. A list that makes
/// another model, or none, ends the pull.
async fn assemble(
    node: &Arc<Node>,
    list: &ChunkList,
    peers: &[String],
    report: &mut PullReport,
) -> Result<verity_engine::Model, ApiError> {
    let id = list.model_id;
    let store = node.store.clone();
    let rec = bare_record(list);
    let decoded = node
        .blocking(move || -> Result<_, ApiError> {
            // Every chunk was checked against the list when written; the ID check covers the whole.
            let bytes = store.assemble_unchecked(&rec)?;
            Ok(vty::decode(&bytes).map_err(|e| e.to_string()))
        })
        .await??;
    let why = match decoded {
        Ok((model, got)) if got == id => return Ok(model),
        Ok((_, got)) => format!("{peers:?}: their chunk list assembles model {got}, not {id}"),
        Err(e) => format!("{peers:?}: their chunk list assembles no model ({e})"),
    };
    report.refused.push(why);
    let store = node.store.clone();
    node.blocking(move || store.end_pull(&id)).await??;
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "replication_failed",
        format!("the chunk list from {peers:?} does not make model {id}"),
    ))
}

/// Keep the pulled model with the versions its owner signed — unless it is over this node's limits
/// (then it is neither kept nor ever loaded) — and end the pull.
async fn keep(
    node: &Arc<Node>,
    list: &ChunkList,
    model: &verity_engine::Model,
) -> Result<(), ApiError> {
    let id = list.model_id;
    let cost = verity_engine::Cost::of(model);
    if let Err(e) = crate::state::check_cost(&cost, &node.config.limits) {
        let store = node.store.clone();
        node.blocking(move || store.end_pull(&id)).await??;
        return Err(e);
    }
    let full = record_for(model, id, &cost);
    let rec = ModelRecord {
        inputs: full.inputs,
        outputs: full.outputs,
        nodes: full.nodes,
        parameters: full.parameters,
        cost: full.cost,
        ..bare_record(list)
    };
    // Only versions signed by their owner for this model.
    let mut versions: Vec<Version> = Vec::new();
    for v in &list.versions {
        if v.manifest.manifest.model_id == id
            && v.manifest.verify().is_ok()
            && !versions.iter().any(|x| x.manifest == v.manifest)
        {
            versions.push(v.clone());
        }
    }
    let store = node.store.clone();
    let kept = node
        .blocking(move || -> Result<Vec<Version>, StoreError> {
            let kept = store.adopt(rec, &versions)?;
            store.end_pull(&id)?;
            Ok(kept)
        })
        .await??;
    for v in kept {
        tracing::debug!(model = %id, name = %v.manifest.manifest.name, version = %v.manifest.manifest.version, "version replicated");
    }
    Ok(())
}

/// Take chunk indices off the queue and fetch each from a peer still in good standing, starting at
/// peer `w` and moving on when one fails.
async fn fetch_worker(
    node: Arc<Node>,
    http: reqwest::Client,
    peers: Arc<Vec<String>>,
    list: Arc<ChunkList>,
    work: Arc<Mutex<Work>>,
    w: usize,
) {
    let n = peers.len();
    let mut p = w % n;
    loop {
        // Next chunk and a usable peer.
        let next = {
            let Ok(mut st) = work.lock() else { return };
            if st.error.is_some() {
                return;
            }
            let Some(i) = st.queue.pop_front() else {
                return;
            };
            let usable: Vec<usize> = (0..n)
                .map(|k| (p + k) % n)
                .filter(|k| !st.refused.contains(k))
                .collect();
            match usable.first() {
                None => {
                    st.error = Some(format!(
                        "no peer could serve chunk {i} of model {} ({})",
                        list.model_id,
                        st.notes.join("; ")
                    ));
                    return;
                }
                Some(&k) => {
                    st.attempts[i] += 1;
                    if st.attempts[i] > 3 * n as u32 + 3 {
                        st.error = Some(format!(
                            "chunk {i} of model {} failed {} times",
                            list.model_id, st.attempts[i]
                        ));
                        return;
                    }
                    p = k;
                    (i, k)
                }
            }
        };
        let (i, k) = next;
        let outcome = fetch_chunk(&node, &http, &peers[k], &list, i).await;
        let Ok(mut st) = work.lock() else { return };
        match outcome {
            Ok(()) => st.served[k] += 1,
            Err(Fetch::Bad(why)) => {
                if st.refused.insert(k) {
                    tracing::warn!(peer = %peers[k], chunk = i, "refusing peer: {why}");
                    st.notes.push(format!("{}: {why}", peers[k]));
                }
                st.queue.push_back(i);
                p = (k + 1) % n;
            }
            Err(Fetch::Failed(why)) => {
                st.failures[k] += 1;
                if st.failures[k] >= PEER_FAILURES && st.refused.insert(k) {
                    tracing::warn!(peer = %peers[k], "dropping peer after {PEER_FAILURES} failures: {why}");
                    st.notes.push(format!("{}: {why}", peers[k]));
                }
                st.queue.push_back(i);
                p = (k + 1) % n;
            }
            Err(Fetch::Local(why)) => {
                st.error = Some(why);
                return;
            }
        }
    }
}

enum Fetch {
    /// The peer served wrong bytes.
    Bad(String),
    /// The peer failed (unreachable, error status, cut off).
    Failed(String),
    /// This node failed (disk).
    Local(String),
}

async fn fetch_chunk(
    node: &Arc<Node>,
    http: &reqwest::Client,
    peer: &str,
    list: &ChunkList,
    i: usize,
) -> Result<(), Fetch> {
    let url = format!("{peer}/v1/models/{}/chunks/{i}", list.model_id);
    let r = http
        .get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| Fetch::Failed(format!("unreachable ({e})")))?;
    if !r.status().is_success() {
        return Err(Fetch::Failed(format!("chunk {i}: HTTP {}", r.status())));
    }
    let data = body_limited(r, list.chunk_size)
        .await
        .map_err(|e| Fetch::Bad(format!("chunk {i}: {e}")))?;
    let expected = list.chunks[i];
    let store = node.store.clone();
    let res = tokio::task::spawn_blocking(move || store.put_chunk(&expected, &data))
        .await
        .map_err(|e| Fetch::Local(e.to_string()))?;
    match res {
        Ok(()) => Ok(()),
        Err(StoreError::Mismatch(m)) => Err(Fetch::Bad(format!("chunk {i}: {m}"))),
        Err(e) => Err(Fetch::Local(format!("cannot store chunk {i}: {e}"))),
    }
}
