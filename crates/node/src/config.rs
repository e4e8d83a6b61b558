//! Node configuration: defaults in one place ([`NodeConfig::default`]), overridden by a TOML file, then by
//! command-line flags (applied by the caller).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use verity_core::Address;

/// Size limits. Anything beyond them is refused with HTTP 413.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body other than a model upload (bytes).
    pub max_body_bytes: u64,
    /// Largest model upload (bytes, the whole multipart body).
    pub max_model_bytes: u64,
    /// Most elements in one input tensor.
    pub max_tensor_elements: u64,
    /// Most requests waiting for an inference worker before new ones get 503.
    pub max_queue: usize,
    /// Model uploads received at the same time (each streamed to a file in the data directory); more
    /// get 503.
    pub max_concurrent_uploads: usize,
    /// Model uploads received at the same time from one IP address; more get 429.
    pub max_uploads_per_ip: usize,
    /// Open connections from one IP address; further ones are closed as soon as they are accepted.
    pub max_connections_per_ip: usize,
    /// Slowest accepted upload, in bytes per second averaged from the first byte, enforced once the
    /// upload has run for `timeouts.header_secs`: a client trickling slower gets 408 and frees its slot.
    pub min_upload_bytes_per_sec: u64,
    /// Most multiply-accumulates (`EinSum`, `Conv2d`) in one inference of a model this node accepts.
    pub max_macs: u64,
    /// Most element operations (every other op) in one inference.
    pub max_element_ops: u64,
    /// Most memory one inference may hold: the model's constants plus the peak of its live tensors with
    /// the full trace kept (a receipt commits to every intermediate), plus kernel buffers (bytes).
    pub max_memory_bytes: u64,
    /// Largest trace of one inference (every input and intermediate, bytes).
    pub max_trace_bytes: u64,
    /// Largest tensor in an ONNX graph this node compiles (elements), checked before any of it is
    /// evaluated.
    pub max_compile_elements: u64,
    /// Address space of the process that compiles an uploaded ONNX file (bytes); a compilation that
    /// needs more is stopped and the upload refused.
    pub max_compile_bytes: u64,
    /// Operations per second assumed for a model not yet run here, to tell at once (503) whether a
    /// request can finish within `timeouts.request_secs`; after its first run a model's measured time
    /// is used instead.
    pub assumed_ops_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_model_bytes: 1 << 30,
            max_tensor_elements: 1 << 24,
            max_queue: 1024,
            max_concurrent_uploads: 2,
            max_uploads_per_ip: 1,
            max_connections_per_ip: 64,
            min_upload_bytes_per_sec: 16 << 10,
            max_macs: 1 << 36,
            max_element_ops: 1 << 34,
            max_memory_bytes: 4 << 30,
            max_trace_bytes: 2 << 30,
            max_compile_elements: 1 << 26,
            max_compile_bytes: 6 << 30,
            assumed_ops_per_sec: 1_000_000_000,
        }
    }
}

/// Timeouts, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed to send request headers.
    pub header_secs: u64,
    /// Whole-request time for everything except uploads (including reading the body).
    pub request_secs: u64,
    /// Whole-request time for model uploads (including compiling an ONNX file).
    pub upload_secs: u64,
    /// Longest ONNX compilation; a longer one is stopped and the upload refused.
    pub compile_secs: u64,
    /// Time from SIGTERM/SIGINT to exit: running work is cancelled, receipts are flushed, the store is
    /// closed, and the process exits within this bound.
    pub shutdown_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_secs: 10,
            request_secs: 60,
            upload_secs: 900,
            compile_secs: 600,
            shutdown_secs: 10,
        }
    }
}

/// Which models a node hosts (fetching them from peers when they are registered on-chain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hosting {
    /// `all` (every registered model), `list` (the IDs in `models`), `target` (a model is hosted by the
    /// `target` nodes the public stake-weighted rule draws with the model ID as seed), or `none` (only
    /// what is published here or asked for).
    pub policy: String,
    /// Model IDs for `list`.
    pub models: Vec<verity_core::Hash>,
    /// Replication target for `target`.
    pub target: usize,
    /// Peers to fetch from besides those found in the NodeRegistry (base URLs).
    pub peers: Vec<String>,
    /// Chunks fetched at once while replicating.
    pub parallel_chunks: usize,
    /// Seconds before a failed background pull of a wanted model is retried; the wait doubles after
    /// each further failure (at most an hour).
    pub retry_secs: u64,
    /// Failed background pulls of one model before the node gives up on it (until it restarts, or a
    /// pull is asked for by `POST /v1/models/{id}/pull`).
    pub retry_attempts: u32,
}

impl Default for Hosting {
    fn default() -> Self {
        Hosting {
            policy: "all".into(),
            models: vec![],
            target: 3,
            peers: vec![],
            parallel_chunks: 8,
            retry_secs: 15,
            retry_attempts: 8,
        }
    }
}

/// Misbehaviour for fault tests only (never set in production): each makes the node a faulty peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Serve model chunks with one byte flipped.
    pub corrupt_chunks: bool,
    /// Add 1 to the first element of every output before hashing and signing it.
    pub perturb_output: bool,
    /// Wait this many milliseconds before answering each inference or model chunk.
    pub stall_ms: u64,
    /// Execute with the middle element of the first node of this op kind (e.g. `EinSum`), or with
    /// `output` of the node computing the model's first output, off by its lowest bit: every receipt the
    /// node signs, and every optimistic claim or challenge it makes, comes from that self-consistent but
    /// wrong trace (with `output`, a wrong answer; an inner node's lie may vanish before the output).
    pub corrupt_op: Option<String>,
}

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Listen address.
    pub listen: String,
    /// Data directory (key, index, chunks).
    pub data_dir: PathBuf,
    /// Node key file; default `<data_dir>/node.key`, created (mode 0600) on first start.
    pub key_file: Option<PathBuf>,
    /// EIP-712 `chainId` of receipts.
    pub chain_id: u64,
    /// EIP-712 `verifyingContract` of receipts (the settlement contract; zero before one exists).
    pub verifying_contract: Address,
    /// Inference worker threads (default: all cores).
    pub workers: usize,
    /// Models kept loaded in memory.
    pub model_cache: usize,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Size limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Chain participation (absent: an off-chain node).
    pub chain: Option<ChainConfig>,
    /// Model hosting and replication.
    pub hosting: Hosting,
    /// Test-only faults.
    pub faults: Faults,
    /// Language models served through the OpenAI-compatible API (`[[llm]]` tables).
    pub llm: Vec<LlmConfig>,
    /// Sentence-embedding models served through `POST /v1/embeddings` (`[[embedding]]` tables).
    pub embedding: Vec<EmbeddingConfig>,
}

/// A sentence-embedding model the node serves from an encoder directory (sentence-transformers
/// layout: `model.onnx` or `onnx/model.onnx`, `tokenizer.json` or `vocab.txt`, `modules.json` with its
/// pooling module).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The directory.
    pub path: PathBuf,
    /// The name requests use (`model`); default: the directory's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Compiled sequence length: longer texts are refused, or truncated when a request asks
    /// (default: the model's `max_seq_length`, else the smaller of its positions and 256).
    #[serde(default)]
    pub sequence: Option<usize>,
    /// The lengths compiled (each input runs at the shortest that holds it; the sequence is always
    /// one): default 32, 128 and 512 below the sequence.
    #[serde(default)]
    pub lengths: Option<Vec<usize>>,
    /// Width of contractions (`i32` by default; e.g. `w8a8d` for speed).
    #[serde(default)]
    pub precision: Option<String>,
    /// Pooling when the directory does not define one: `cls`, `mean`, `max` or `mean_sqrt_len`.
    #[serde(default)]
    pub pooling: Option<String>,
    /// Normalize the pooled vector to unit length (default: as the directory's modules say).
    #[serde(default)]
    pub normalize: Option<bool>,
}

impl EmbeddingConfig {
    /// The model an `--embedding [NAME=]DIR` argument names, with the default settings.
    pub fn from_arg(arg: &str) -> EmbeddingConfig {
        let (name, path) = name_and_path(arg);
        EmbeddingConfig {
            path,
            name,
            sequence: None,
            lengths: None,
            precision: None,
            pooling: None,
            normalize: None,
        }
    }

    /// The name requests use.
    pub fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("embedding")
                .to_string()
        })
    }

    /// The compile options these settings give.
    pub fn options(&self) -> Result<crate::embed::EmbedOptions, String> {
        let name = self.model_name();
        Ok(crate::embed::EmbedOptions {
            sequence: self.sequence,
            precision: self
                .precision
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("embedding model '{name}': precision: {e}"))?,
            pooling: self
                .pooling
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("embedding model '{name}': {e}"))?,
            normalize: self.normalize,
        })
    }
}

/// A language model the node serves from a GGUF file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The GGUF file.
    pub path: PathBuf,
    /// The name requests use (`model`); default: the file name without `.gguf`.
    #[serde(default)]
    pub name: Option<String>,
    /// Positions a generation can hold (prompt and output).
    #[serde(default = "default_llm_context")]
    pub context: usize,
    /// Generations run at once (a unit of each in turn); more requests wait.
    #[serde(default = "default_llm_sequences")]
    pub sequences: usize,
    /// MiB of key/value caches, of running generations and kept for prompt-prefix reuse.
    #[serde(default = "default_llm_kv_mb")]
    pub kv_mb: usize,
}

/// Positions a served generation holds unless configured otherwise.
pub fn default_llm_context() -> usize {
    2048
}

/// Generations a served model runs at once unless configured otherwise.
pub fn default_llm_sequences() -> usize {
    16
}

/// MiB of key/value caches a served model holds unless configured otherwise.
pub fn default_llm_kv_mb() -> usize {
    1024
}

/// A `[NAME=]PATH` argument: a `NAME` holds no `/`, so a path with `=` in it stays a path.
fn name_and_path(arg: &str) -> (Option<String>, PathBuf) {
    match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => {
            (Some(n.to_string()), PathBuf::from(p))
        }
        _ => (None, PathBuf::from(arg)),
    }
}

impl LlmConfig {
    /// The model a `--llm [NAME=]FILE` argument names, with the default settings (a `NAME` holds no
    /// `/`, so a path with `=` in it stays a path).
    pub fn from_arg(arg: &str) -> LlmConfig {
        let (name, path) = name_and_path(arg);
        LlmConfig {
            path,
            name,
            context: default_llm_context(),
            sequences: default_llm_sequences(),
            kv_mb: default_llm_kv_mb(),
        }
    }

    /// The name requests use.
    pub fn model_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.strip_suffix(".gguf").unwrap_or(n).to_string())
                .unwrap_or_else(|| "llm".into())
        })
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("verity-data"),
            key_file: None,
            chain_id: 31337,
            verifying_contract: Address::ZERO,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            model_cache: 16,
            log_format: "text".into(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            chain: None,
            hosting: Hosting::default(),
            faults: Faults::default(),
            llm: Vec::new(),
            embedding: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// Parse a TOML document over the defaults (unknown keys are an error).
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Read a TOML file over the defaults.
    pub fn load(path: &Path) -> Result<NodeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// The key file path in effect.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("node.key"))
    }

    /// Check values that would make the node misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.limits.max_concurrent_uploads == 0 {
            return Err("limits.max_concurrent_uploads must be at least 1".into());
        }
        if self.limits.max_uploads_per_ip == 0 || self.limits.max_connections_per_ip == 0 {
            return Err(
                "limits.max_uploads_per_ip and limits.max_connections_per_ip must be at least 1"
                    .into(),
            );
        }
        if self.model_cache == 0 {
            return Err("model_cache must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("log_format must be \"text\" or \"json\"".into());
        }
        let t = &self.timeouts;
        if t.request_secs == 0 || t.header_secs == 0 || t.compile_secs == 0 || t.shutdown_secs == 0
        {
            return Err("timeouts must be at least 1 second".into());
        }
        if !matches!(
            self.hosting.policy.as_str(),
            "all" | "list" | "target" | "none"
        ) {
            return Err("hosting.policy must be \"all\", \"list\", \"target\" or \"none\"".into());
        }
        if self.hosting.parallel_chunks == 0 {
            return Err("hosting.parallel_chunks must be at least 1".into());
        }
        if let Some(op) = &self.faults.corrupt_op {
            if op != "output" && !verity_engine::ir::OP_NAMES.contains(&op.as_str()) {
                return Err(format!(
                    "faults.corrupt_op '{op}' is not `output` or an op (one of {})",
                    verity_engine::ir::OP_NAMES.join(", ")
                ));
            }
        }
        if let Some(c) = &self.chain {
            let r = c.optimistic.watch_rate;
            if !(0.0..=1.0).contains(&r) {
                return Err(format!(
                    "chain.optimistic.watch_rate must be between 0 and 1, got {r}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c =
            NodeConfig::from_toml("listen = \"127.0.0.1:9\"\n[limits]\nmax_queue = 3\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.limits.max_queue, 3);
        assert_eq!(c.limits.max_body_bytes, Limits::default().max_body_bytes);
        assert!(NodeConfig::from_toml("lisen = 1").is_err());
        assert!(NodeConfig::from_toml("[limits]\nmax_queue = \"x\"").is_err());
    }

    #[test]
    fn language_models_come_from_llm_tables() {
        let c = NodeConfig::from_toml(
            "[[llm]]\npath = \"m/a.gguf\"\n[[llm]]\npath = \"b.gguf\"\nname = \"bee\"\ncontext = 64\n",
        )
        .unwrap();
        assert_eq!(c.llm.len(), 2);
        assert_eq!(
            (c.llm[0].model_name(), c.llm[0].context),
            ("a".to_string(), 2048)
        );
        assert_eq!(
            (c.llm[1].model_name(), c.llm[1].context),
            ("bee".to_string(), 64)
        );
        assert!(NodeConfig::from_toml("[[llm]]\npath = \"a.gguf\"\nctx = 3\n").is_err());
    }
}

/// Chain settings of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC URL.
    pub rpc: String,
    /// Deployment file (contract addresses) written by `verity devnet` / `verity chain deploy`.
    pub contracts: std::path::PathBuf,
    /// Public URL registered in the NodeRegistry (default `http://<listen>`).
    pub endpoint: Option<String>,
    /// Stake put up at registration, in wei (decimal).
    pub stake: String,
    /// Poll interval in milliseconds.
    pub poll_ms: u64,
    /// A spare node of a quorum (assigned beyond the first k) waits this long (milliseconds) after
    /// first seeing a request before it answers, so it only spends gas when a primary node is slow or
    /// down.
    pub spare_grace_ms: u64,
    /// Only watch optimistic results (what `verity watch` runs): no registration in the NodeRegistry,
    /// no InferenceHub work, no hosting announcements.
    pub watch_only: bool,
    /// Optimistic mode (OptimisticHub).
    pub optimistic: OptimisticConfig,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            rpc: String::new(),
            contracts: "contracts.json".into(),
            endpoint: None,
            stake: "1000000000000000000".into(),
            poll_ms: 500,
            spare_grace_ms: 5000,
            watch_only: false,
            optimistic: Default::default(),
        }
    }
}

/// Optimistic-mode settings of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimisticConfig {
    /// Commit answers to the optimistic requests this node is assigned. (A staked node defends every
    /// game against its claims and receipts whatever this says.)
    pub serve: bool,
    /// Fraction of other nodes' claims and hub receipts to re-execute and challenge (or dispute at the
    /// ReceiptCourt) if wrong (0: none, 1: all). Which are checked is drawn with a secret seed kept in
    /// the store, so a node cannot tell which of its answers will be checked.
    pub watch_rate: f64,
    /// Finalize this node's own claims once their challenge window has passed (collecting the fee and
    /// the bond).
    pub finalize: bool,
}

impl Default for OptimisticConfig {
    fn default() -> Self {
        OptimisticConfig {
            serve: true,
            watch_rate: 0.0,
            finalize: true,
        }
    }
}
