//! The node's shared state: store, key, loaded-model cache, worker pool, receipt log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OnceCell, Semaphore};
use verity_core::eth::Address;
use verity_core::receipt::receipt_domain;
use verity_core::{keccak256, Hash, Keccak, Receipt, SecretKey, SignedReceipt};
use verity_engine::io::{dequantize, quantize_inputs, FloatTensor};
use verity_engine::ir::{InputKind, Model};
use verity_engine::vty;
use verity_engine::{Cancel, Cost, ExecError};
use verity_engine::{Executor, Mode};
use verity_store::{ModelRecord, Store, TensorInfo};

use crate::clock::unix_now;
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tensors::NamedTensor;

/// A model decoded, validated and ready to run (constants packed once).
pub struct Loaded {
    /// Model ID (recomputed from the bytes when loaded).
    pub id: Hash,
    /// The executor, owning the model.
    pub exec: Executor<Arc<Model>>,
    /// Moving average of the time one inference takes here (µs; 0 = not measured yet).
    pub cost_us: AtomicU64,
    /// The zk proving key, made once at the model's first zk request (or `Err`: why it cannot be proven).
    pub zk: std::sync::OnceLock<Result<Arc<verity_zk::ProvingKey>, String>>,
    /// What one inference costs.
    pub cost: Cost,
}

impl Loaded {
    /// The zk proving key (made and kept on first use).
    pub fn zk_key(&self) -> Result<Arc<verity_zk::ProvingKey>, String> {
        self.zk
            .get_or_init(|| {
                verity_zk::keygen(self.exec.model(), self.id)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// Inferences measured below this many microseconds run on the async worker that received them.
pub const INLINE_MAX_US: u64 = 1000;

impl Loaded {
    /// Expected microseconds of one inference: the measured average, or before any run a guess from the
    /// cost model at `ops_per_sec` operations per second.
    pub fn expected_us(&self, ops_per_sec: u64) -> u64 {
        match self.cost_us.load(Ordering::Relaxed) {
            0 => {
                let ops = self.cost.macs.saturating_add(self.cost.element_ops) as u128;
                (ops * 1_000_000 / ops_per_sec.max(1) as u128).min(u64::MAX as u128) as u64
            }
            c => c,
        }
    }

    /// Whether inferences of this model are cheap enough to run inline.
    pub fn run_inline(&self) -> bool {
        let c = self.cost_us.load(Ordering::Relaxed);
        c > 0 && c < INLINE_MAX_US
    }
}

type Slot = Arc<OnceCell<Arc<Loaded>>>;

/// Outputs of one inference with its receipt.
pub struct Inference {
    /// Raw integer outputs in model order.
    pub outputs: Vec<Vec<i32>>,
    /// The signed receipt.
    pub receipt: SignedReceipt,
    /// Engine time in microseconds.
    pub micros: u64,
}

/// Shared node state.
pub struct Node {
    /// Configuration in effect.
    pub config: NodeConfig,
    /// The model store.
    pub store: Arc<Store>,
    /// The node key.
    pub key: SecretKey,
    /// Metrics.
    pub metrics: Metrics,
    cache: Mutex<Vec<(Hash, Slot)>>,
    workers: Arc<Semaphore>,
    compile_slot: Arc<Semaphore>,
    upload_slots: Arc<Semaphore>,
    receipts: mpsc::UnboundedSender<LogMsg>,
    seq: AtomicU64,
    /// Cancelled when the node is stopping: every run on a worker stops.
    pub stopping: Cancel,
    /// Estimated microseconds of work queued or running on the workers.
    pending_us: AtomicU64,
    /// Uploads being received, per client IP.
    uploads_by_ip: Arc<PerIp>,
    nonce: [u8; 16],
    /// The chain connection, in chain mode.
    pub chain: std::sync::OnceLock<Arc<verity_chain::EvmChain>>,
    /// Replication between nodes.
    pub replication: Replication,
    /// Language models served through the OpenAI-compatible API, by name (set once at start).
    pub llms: std::sync::OnceLock<std::collections::BTreeMap<String, Arc<crate::llm::LlmModel>>>,
    /// The sentence-embedding models served through `POST /v1/embeddings`, by name.
    pub embeddings:
        std::sync::OnceLock<std::collections::BTreeMap<String, Arc<crate::embed::EmbedModel>>>,
}

/// The IO schema of a model (for the index and API metadata).
pub fn io_schema(m: &Model) -> (Vec<TensorInfo>, Vec<TensorInfo>) {
    let inputs = m
        .inputs
        .iter()
        .map(|i| TensorInfo {
            name: i.name.clone(),
            shape: i.shape.iter().map(|&d| d as u64).collect(),
            scale: i.scale,
            kind: match i.kind {
                InputKind::Int => "int".into(),
                _ => "fixed".into(),
            },
        })
        .collect();
    let outputs = m
        .outputs
        .iter()
        .map(|o| {
            let info = m.value(o.value);
            TensorInfo {
                name: o.name.clone(),
                shape: info
                    .map(|i| i.shape.iter().map(|&d| d as u64).collect())
                    .unwrap_or_default(),
                scale: info.map(|i| i.scale).unwrap_or(0),
                // a value at scale ≤ 0 holds integers (q · 2^-scale): labels, indices, counts
                kind: if info.is_some_and(|i| i.scale <= 0) {
                    "int".into()
                } else {
                    "fixed".into()
                },
            }
        })
        .collect();
    (inputs, outputs)
}

/// A store record for a decoded model with its cost (chunks are filled in by the store).
pub fn record_for(m: &Model, id: Hash, cost: &Cost) -> ModelRecord {
    let (inputs, outputs) = io_schema(m);
    ModelRecord {
        id,
        size: 0,
        chunk_size: 0,
        chunks: Vec::new(),
        inputs,
        outputs,
        nodes: m.nodes.len() as u64,
        parameters: m.consts.iter().map(|c| c.data.len() as u64).sum(),
        stored_at: 0,
        cost: serde_json::to_value(cost).ok(),
    }
}

/// Check a model's cost against the node's limits: 422 `over_limit` naming the first figure over its
/// limit.
pub fn check_cost(cost: &Cost, limits: &crate::config::Limits) -> Result<(), ApiError> {
    let memory = cost.const_bytes.saturating_add(cost.traced_peak_bytes);
    let checks = [
        (
            "multiply-accumulates per inference",
            cost.macs,
            limits.max_macs,
            "max_macs",
        ),
        (
            "element operations per inference",
            cost.element_ops,
            limits.max_element_ops,
            "max_element_ops",
        ),
        (
            "bytes of memory per inference",
            memory,
            limits.max_memory_bytes,
            "max_memory_bytes",
        ),
        (
            "bytes of trace per inference",
            cost.trace_bytes,
            limits.max_trace_bytes,
            "max_trace_bytes",
        ),
    ];
    for (what, got, limit, key) in checks {
        if got > limit {
            return Err(ApiError::unprocessable(
                "over_limit",
                format!(
                    "the model needs {got} {what}; this node's limit is {limit} (limits.{key})"
                ),
            ));
        }
    }
    Ok(())
}

impl Node {
    /// Open the store and start the receipt writer. Must be called inside a tokio runtime.
    pub fn new(config: NodeConfig, store: Store, key: SecretKey) -> Arc<Node> {
        let store = Arc::new(store);
        let (tx, mut rx) = mpsc::unbounded_channel::<LogMsg>();
        let writer_store = store.clone();
        tokio::spawn(async move {
            // Group commit: every receipt signed while one durable transaction is being written goes
            // into the next (at most 4096 per commit); an answer waits for the commit holding its receipt.
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::new();
                let mut flushes = Vec::new();
                let mut next = Some(first);
                while let Some(m) = next.take() {
                    match m {
                        LogMsg::Receipt(r) => batch.push(*r),
                        LogMsg::Flush(f) => flushes.push(f),
                    }
                    if batch.len() < 4096 {
                        next = rx.try_recv().ok();
                    }
                }
                let s = writer_store.clone();
                let res = tokio::task::spawn_blocking(move || s.put_receipts(&batch)).await;
                let res = match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = &res {
                    tracing::error!(error = %e, "cannot persist receipts");
                }
                for f in flushes {
                    let _ = f.send(res.clone());
                }
            }
        });
        let mut nonce = [0u8; 16];
        let _ = getrandom::getrandom(&mut nonce);
        Arc::new(Node {
            workers: Arc::new(Semaphore::new(config.workers)),
            compile_slot: Arc::new(Semaphore::new(1)),
            upload_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
            config,
            store,
            key,
            metrics: Metrics::default(),
            cache: Mutex::new(Vec::new()),
            receipts: tx,
            seq: AtomicU64::new(0),
            stopping: Cancel::new(),
            pending_us: AtomicU64::new(0),
            uploads_by_ip: Arc::default(),
            nonce,
            chain: std::sync::OnceLock::new(),
            replication: Default::default(),
            llms: Default::default(),
            embeddings: Default::default(),
        })
    }

    /// This node's address.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Run blocking work on the inference pool, refusing with 503 when the queue is full. `inline` runs
    /// it on the calling async worker instead of handing it to a blocking thread: for work known to take
    /// well under a millisecond, that saves two thread switches per request.
    pub async fn on_worker<T: Send + 'static>(
        &self,
        inline: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.on_worker_est(inline, 0, f).await
    }

    /// [`Node::on_worker`] for work estimated at `est_us` microseconds: refused at once (503) when the
    /// work already queued means it could not finish within the request timeout. The work runs under a
    /// cancellation token that is cancelled when the returned future is dropped (the request timed out or
    /// its client went away) and when the node stops, so an abandoned run frees its worker promptly.
    pub async fn on_worker_est<T: Send + 'static>(
        &self,
        inline: bool,
        est_us: u64,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the node is shutting down",
            ));
        }
        let waiting = self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = Decrement(&self.metrics.in_flight, 1);
        if waiting as usize >= self.config.limits.max_queue + self.config.workers {
            self.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the node's inference queue is full; retry later",
            ));
        }
        let budget_us = self.config.timeouts.request_secs.saturating_mul(1_000_000);
        let ahead = self.pending_us.fetch_add(est_us, Ordering::Relaxed);
        let _pending = Decrement(&self.pending_us, est_us);
        let wait_us = ahead / self.config.workers.max(1) as u64;
        if est_us > 0 && wait_us.saturating_add(est_us) > budget_us {
            self.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "the node cannot finish this within the {} s request timeout (about {} ms of work \
                     is queued ahead of it, and it takes about {} ms); retry later",
                    self.config.timeouts.request_secs,
                    wait_us / 1000,
                    est_us / 1000
                ),
            ));
        }
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("worker pool closed"))?;
        let token = Cancel::new();
        let stopping = self.stopping.clone();
        let run = {
            let token = token.clone();
            move || {
                verity_engine::cancel::scope(&stopping, || verity_engine::cancel::scope(&token, f))
            }
        };
        if inline {
            let r = run();
            drop(permit);
            return Ok(r);
        }
        let _cancel_on_drop = CancelOnDrop(token);
        let out = tokio::task::spawn_blocking(move || {
            let r = run();
            drop(permit);
            r
        })
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?;
        Ok(out)
    }

    /// Count an upload from `ip` (429 when that client already has its share in progress); the slot is
    /// released when the returned guard drops.
    pub fn upload_from(&self, ip: std::net::IpAddr) -> Result<IpGuard, ApiError> {
        let max = self.config.limits.max_uploads_per_ip;
        self.uploads_by_ip.admit(ip, max).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!(
                    "{max} upload(s) from {ip} are already in progress \
                     (limits.max_uploads_per_ip); retry when they finish"
                ),
            )
        })
    }

    /// Run blocking work that is not inference (store I/O), off the async threads.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("task failed: {e}")))
    }

    /// Compile slot: one ONNX compilation at a time.
    pub fn compile_slot(&self) -> Arc<Semaphore> {
        self.compile_slot.clone()
    }

    /// A slot for receiving one upload, or 503 if all are taken.
    pub fn upload_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.upload_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "the node is already receiving {} uploads; retry later",
                    self.config.limits.max_concurrent_uploads
                ),
            )
        })
    }

    /// Resolve a model reference among the models stored here, or 404.
    pub async fn resolve_local(
        &self,
        reference: &str,
    ) -> Result<(ModelRecord, Option<verity_store::Version>), ApiError> {
        let store = self.store.clone();
        let r = reference.to_string();
        self.blocking(move || store.resolve(&r))
            .await??
            .ok_or_else(|| {
                ApiError::not_found(
                    "model_not_found",
                    format!("no model '{reference}' on this node"),
                )
            })
    }

    /// The loaded model for a record (decoded and checked on first use; kept in an LRU cache).
    pub async fn load(self: &Arc<Self>, rec: &ModelRecord) -> Result<Arc<Loaded>, ApiError> {
        let slot = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| ApiError::internal("model cache poisoned"))?;
            let slot = match cache.iter().position(|(id, _)| *id == rec.id) {
                Some(i) => cache.remove(i).1,
                None => Arc::new(OnceCell::new()),
            };
            cache.push((rec.id, slot.clone()));
            let cap = self.config.model_cache;
            if cache.len() > cap {
                let extra = cache.len() - cap;
                cache.drain(..extra);
            }
            slot
        };
        let node = self.clone();
        let rec = rec.clone();
        slot.get_or_try_init(|| async move {
            let store = node.store.clone();
            let id = rec.id;
            let limits = node.config.limits.clone();
            let loaded = node
                .blocking(move || -> Result<Loaded, ApiError> {
                    let bytes = store.read_model(&rec)?;
                    let (model, got) = vty::decode(&bytes).map_err(|e| {
                        ApiError::internal(format!("stored model {id} does not decode: {e}"))
                    })?;
                    if got != id {
                        return Err(ApiError::internal(format!(
                            "stored model {id} decodes to a different ID {got}"
                        )));
                    }
                    // A model stored before the limits were lowered is not loaded either.
                    let cost = Cost::of(&model);
                    check_cost(&cost, &limits)?;
                    Ok(Loaded {
                        id,
                        exec: Executor::new(Arc::new(model), Mode::Fast { threads: 1 }),
                        cost_us: AtomicU64::new(0),
                        zk: std::sync::OnceLock::new(),
                        cost,
                    })
                })
                .await??;
            node.metrics.model_loads.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(loaded))
        })
        .await
        .cloned()
    }

    /// A fresh request ID: keccak256(node address ‖ process nonce ‖ counter ‖ time).
    pub fn new_request_id(&self) -> Hash {
        let mut k = Keccak::new();
        k.update(&self.address().0);
        k.update(&self.nonce);
        k.update(&self.seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        k.update(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_be_bytes(),
        );
        k.finalize()
    }

    /// Quantize, execute (the trace deferred), commit, and sign under this node's off-chain receipt domain (the
    /// ReceiptCourt's, in chain mode). Runs on a worker thread.
    pub fn infer_blocking(
        &self,
        loaded: &Loaded,
        inputs: Vec<NamedTensor>,
        request_id: Hash,
    ) -> Result<Inference, ApiError> {
        let domain = receipt_domain(self.config.chain_id, self.config.verifying_contract);
        self.infer_blocking_for(loaded, inputs, request_id, domain)
    }

    /// Test-only (`faults.corrupt_op`): the node and element whose lowest bit this node's executions
    /// flip — the middle element of the first node of that op kind, or of the node computing the first
    /// output for `output`. None for an honest node.
    pub fn tamper(&self, model: &verity_engine::Model) -> Option<(usize, usize)> {
        let op = self.config.faults.corrupt_op.as_deref()?;
        let k = if op == "output" {
            let v = model.outputs.first()?.value as usize;
            v.checked_sub(model.first_node_value())?
        } else {
            model.nodes.iter().position(|n| n.op.name() == op)?
        };
        let len = verity_engine::ir::numel(&model.nodes[k].shape) as usize;
        Some((k, len / 2))
    }

    /// [`Node::infer_blocking`], signing under `domain` (a hub's, for a request read on that hub).
    pub fn infer_blocking_for(
        &self,
        loaded: &Loaded,
        inputs: Vec<NamedTensor>,
        request_id: Hash,
        domain: verity_core::eip712::Domain,
    ) -> Result<Inference, ApiError> {
        let start = std::time::Instant::now();
        let model = loaded.exec.model();
        let q = bind_inputs(model, inputs)?;
        let input_hash = verity_engine::commit::tensors_hash(&q);
        // the trace is deferred (receipts.md §2): no intermediate is kept or hashed while serving
        let mut outputs = loaded
            .exec
            .run_tampered(q, self.tamper(model))
            .map_err(|e| {
                if e == ExecError::Cancelled {
                    // a run stopped after this long costs at least this much: later requests are judged
                    // against it (refused at once if they cannot finish in time)
                    let spent = start.elapsed().as_micros() as u64;
                    loaded.cost_us.fetch_max(spent.max(1), Ordering::Relaxed);
                }
                exec_error(e)
            })?;
        if self.config.faults.perturb_output {
            // Test-only: a node that lies about the output and signs the lie.
            if let Some(x) = outputs.first_mut().and_then(|o| o.first_mut()) {
                *x = x.wrapping_add(1);
            }
        }
        let receipt = Receipt {
            request_id,
            model_id: loaded.id,
            input_hash,
            output_hash: verity_engine::commit::tensors_hash(&outputs),
            trace_root: Hash::ZERO,
            node: self.address(),
            timestamp: unix_now(),
        }
        .sign(domain, &self.key);
        let _ = self
            .receipts
            .send(LogMsg::Receipt(Box::new(receipt.clone())));
        let micros = start.elapsed().as_micros() as u64;
        let old = loaded.cost_us.load(Ordering::Relaxed);
        let avg = if old == 0 {
            micros
        } else {
            (old * 7 + micros) / 8
        };
        loaded.cost_us.store(avg.max(1), Ordering::Relaxed);
        self.metrics.inference_seconds.observe(micros as f64 / 1e6);
        Ok(Inference {
            outputs,
            receipt,
            micros,
        })
    }

    /// Output tensors as (name, shape, scale, real values) in model order.
    pub fn describe_outputs(
        model: &Model,
        outputs: &[Vec<i32>],
    ) -> Vec<(String, Vec<u64>, i8, Vec<f64>)> {
        model
            .outputs
            .iter()
            .zip(outputs)
            .map(|(o, q)| {
                let info = model.value(o.value);
                let scale = info.map(|i| i.scale).unwrap_or(0);
                let shape = info
                    .map(|i| i.shape.iter().map(|&d| d as u64).collect())
                    .unwrap_or_default();
                (o.name.clone(), shape, scale, dequantize(q, scale))
            })
            .collect()
    }
}

enum LogMsg {
    Receipt(Box<SignedReceipt>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Node {
    /// Wait until every receipt signed so far is durable in the store (500 if it could not be written).
    pub async fn flush_receipts(&self) -> Result<(), ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.receipts
            .send(LogMsg::Flush(tx))
            .map_err(|_| ApiError::internal("the receipt log is closed"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::internal(format!(
                "cannot persist the receipt: {e}"
            ))),
            Err(_) => Err(ApiError::internal("the receipt log is closed")),
        }
    }
}

struct Decrement<'a>(&'a AtomicU64, u64);
impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Cancels its token when dropped.
struct CancelOnDrop(Cancel);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Things in progress per client IP address (connections, uploads), each counted until its guard drops.
#[derive(Default)]
pub struct PerIp(Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One thing in progress for an IP address (see [`PerIp::admit`]).
pub struct IpGuard(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    /// Count one more for `ip`, or `None` if it already has `max`.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<IpGuard> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard(self.clone(), ip))
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0 .0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

/// The API error for a failed canonical execution: 503 for a cancelled run (its request timed out, its
/// client left, or the node is stopping), 422 otherwise.
pub fn exec_error(e: ExecError) -> ApiError {
    match e {
        ExecError::Cancelled => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "cancelled",
            "the run was stopped (its request timed out, its client left, or the node is stopping)",
        ),
        e => ApiError::unprocessable(
            "execution_failed",
            format!("the canonical execution failed: {e}"),
        ),
    }
}

/// Match request tensors to the model's inputs by name, check shapes (422), and quantize (422 for values
/// that do not fit, NaN or infinity).
pub fn bind_inputs(model: &Model, inputs: Vec<NamedTensor>) -> Result<Vec<Vec<i32>>, ApiError> {
    for t in &inputs {
        if !model.inputs.iter().any(|i| i.name == t.name) {
            return Err(ApiError::unprocessable(
                "unknown_input",
                format!(
                    "the model has no input named '{}' (inputs: {})",
                    t.name,
                    model
                        .inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let mut by_name: Vec<Option<NamedTensor>> = inputs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(model.inputs.len());
    for spec in &model.inputs {
        let pos = by_name
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
            .ok_or_else(|| {
                ApiError::unprocessable("missing_input", format!("missing input '{}'", spec.name))
            })?;
        let t = by_name[pos]
            .take()
            .ok_or_else(|| ApiError::internal("input taken twice"))?;
        if by_name
            .iter()
            .any(|o| o.as_ref().is_some_and(|o| o.name == spec.name))
        {
            return Err(ApiError::bad_request(
                "duplicate_input",
                format!("input '{}' is given twice", spec.name),
            ));
        }
        let data = match &t.decimals {
            // exact decimals: their canonical integers, given as values that quantize back to exactly those
            Some(d) => d
                .iter()
                .enumerate()
                .map(|(i, &(v, e))| {
                    let int = spec.kind == verity_engine::ir::InputKind::Int;
                    let q = crate::api::opengradient::quantize_decimal(v, e, spec.scale, int)
                        .map_err(|m| {
                            ApiError::unprocessable(
                                "value_out_of_range",
                                format!("input '{}' element {i}: {m}", spec.name),
                            )
                        })?;
                    Ok(if int {
                        q as f64
                    } else {
                        q as f64 * 2f64.powi(-(spec.scale as i32))
                    })
                })
                .collect::<Result<Vec<f64>, ApiError>>()?,
            None => t.data,
        };
        out.push(FloatTensor {
            shape: t.shape,
            data,
        });
    }
    quantize_inputs(model, &out).map_err(|e| match e {
        ExecError::InputShape { .. } => ApiError::unprocessable("shape_mismatch", e.to_string()),
        ExecError::InputValue { .. } => {
            ApiError::unprocessable("value_out_of_range", e.to_string())
        }
        other => ApiError::unprocessable("bad_input", other.to_string()),
    })
}

/// keccak256 of arbitrary bytes (re-exported for handlers).
pub fn hash_bytes(b: &[u8]) -> Hash {
    keccak256(b)
}

/// The state of the background pulls of one wanted model.
#[derive(Clone, Debug)]
pub struct Retry {
    /// A pull is running.
    pub running: bool,
    /// Pulls that failed so far.
    pub failures: u32,
    /// No new pull before this.
    pub next: Instant,
    /// Why the last pull failed.
    pub last_error: String,
}

impl Retry {
    /// Whether the node stopped trying (after `attempts` failures).
    pub fn given_up(&self, attempts: u32) -> bool {
        self.failures >= attempts
    }

    /// The wait after the `failures`-th failure: `base` doubled per further failure, at most an hour.
    pub fn backoff(base: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        base.saturating_mul(1 << doublings)
            .min(Duration::from_secs(3600))
    }
}

/// Replication state shared by a node's tasks.
#[derive(Default)]
pub struct Replication {
    /// One pull per model at a time.
    pub(crate) locks: Mutex<BTreeMap<Hash, Arc<tokio::sync::Mutex<()>>>>,
    /// Stored models may not be announced on-chain yet.
    pub announce_pending: AtomicBool,
    /// Background pulls of wanted models started by the chain loop, and their failures.
    pub inflight: Mutex<BTreeMap<Hash, Retry>>,
    /// The last registry snapshot read for quorum coordination, and when.
    pub snapshot: Mutex<Option<(Instant, verity_chain::cert::RegistrySnapshot)>>,
    /// HTTP client for peers (connection pool shared by pulls and quorum requests).
    http: std::sync::OnceLock<reqwest::Client>,
}

impl Replication {
    /// The shared peer client (no overall timeout: callers set one per request).
    pub fn client(&self) -> Result<reqwest::Client, ApiError> {
        if let Some(c) = self.http.get() {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(32)
            // peers close connections idle for their header timeout (10 s by default): drop ours first
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::internal(format!("cannot build an HTTP client: {e}")))?;
        Ok(self.http.get_or_init(|| c).clone())
    }
}
