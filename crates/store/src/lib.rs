//! Verity's model store: model files kept as content-addressed chunks (named by their keccak256) under a
//! data directory, and a redb index mapping model IDs to their chunk lists, `name@version` to model IDs
//! with the owner's signed manifest, and request IDs to the receipts this node signed.
//!
//! Crash safety: chunks are written to a temporary file, synced and renamed into place before the index
//! transaction that makes a model visible commits (redb commits are durable). A crash before the commit
//! leaves only unreferenced chunks, which [`Store::open`] removes; a crash after it leaves a complete model.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::cmp::Ordering;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtOrd};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use verity_core::eth::Address;
use verity_core::{keccak256, Hash, SignedManifest, SignedReceipt};

/// Bytes per chunk for newly stored models.
pub const CHUNK_SIZE: usize = 1 << 20;

const MODELS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("models");
const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");
const RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("receipts");
/// Small records of other parts of the node (chain cursor, jobs, input documents), keyed by
/// namespace ‖ 0x00 ‖ key.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Filesystem failure.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Index database failure.
    #[error("store index error: {0}")]
    Db(String),
    /// A stored record or chunk does not match what was written (disk corruption or tampering).
    #[error("store corrupted: {0}")]
    Corrupt(String),
    /// `name@version` already names a different model.
    #[error("{name}@{version} is already published as model {existing}")]
    VersionTaken {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// The model it names.
        existing: Hash,
    },
    /// The name belongs to another owner.
    #[error("the name '{name}' belongs to {owner}")]
    NameOwned {
        /// Name.
        name: String,
        /// Its owner.
        owner: Address,
    },
    /// The data given does not hash to the model ID claimed.
    #[error("model bytes do not match: {0}")]
    Mismatch(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One tensor of a model's IO schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Fixed-point scale (`value = q · 2^-scale`).
    pub scale: i8,
    /// `fixed` (real-valued) or `int` (integer, e.g. token IDs).
    pub kind: String,
}

/// A stored model: its content and IO schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model ID (keccak Merkle commitment of the canonical encoding).
    pub id: Hash,
    /// Size of the `.vty` file in bytes.
    pub size: u64,
    /// Chunk size used.
    pub chunk_size: u64,
    /// keccak256 of each chunk, in order.
    pub chunks: Vec<Hash>,
    /// Inputs.
    pub inputs: Vec<TensorInfo>,
    /// Outputs.
    pub outputs: Vec<TensorInfo>,
    /// Number of graph nodes.
    pub nodes: u64,
    /// Number of constant elements (weights and tables).
    pub parameters: u64,
    /// Unix seconds when first stored.
    pub stored_at: u64,
    /// What one inference costs (the engine's cost model, as JSON), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<serde_json::Value>,
}

/// A published `name@version`: the model it names and the owner's signed manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The signed manifest (its `model_id`, `name`, `version` are the key and target).
    pub manifest: SignedManifest,
    /// The compile report, as given by the owner (hash signed in the manifest) or computed by this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// Who produced `report`: `owner` (bound by the manifest's `report_hash`) or `node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_by: Option<String>,
    /// Unix seconds when published here.
    pub published_at: u64,
}

/// What [`Store::publish`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// A new `name@version`.
    Created,
    /// Exactly this `name@version` → model was already published (idempotent retry).
    Existing,
}

/// Compare versions: dot/dash/plus-separated parts, numerically where both parts are numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split =
        |s: &str| -> Vec<String> { s.split(['.', '-', '+', '_']).map(str::to_string).collect() };
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(i), Ok(j)) => i.cmp(&j),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

fn name_key(name: &str, version: &str) -> String {
    format!("{name}\u{0}{version}")
}

/// The model store rooted at a data directory.
pub struct Store {
    root: PathBuf,
    db: Database,
    tmp_seq: AtomicU64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    fs::File::open(p)?.sync_all()
}

impl Store {
    /// Open (or create) the store under `root`; removes temporary files and chunks no model references.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(root.join("chunks"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let db = Database::create(root.join("index.redb"))?;
        {
            let w = db.begin_write()?;
            w.open_table(MODELS)?;
            w.open_table(NAMES)?;
            w.open_table(RECEIPTS)?;
            w.open_table(KV)?;
            w.commit()?;
        }
        let store = Store {
            root,
            db,
            tmp_seq: AtomicU64::new(0),
        };
        store.collect_garbage()?;
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join("chunks").join(&hex[2..4]).join(&hex[2..])
    }

    /// A fresh path under the store's temporary directory (removed on the next open).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, AtOrd::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Remove chunk files that no stored model references. Returns how many were removed.
    pub fn collect_garbage(&self) -> Result<usize, StoreError> {
        let mut live = std::collections::BTreeSet::new();
        for r in self.models()? {
            live.extend(r.chunks);
        }
        // Chunks of interrupted replications stay, so the pull resumes where it stopped.
        for (_, v) in self.kv_scan(PULLS)? {
            if let Ok(chunks) = serde_json::from_slice::<Vec<Hash>>(&v) {
                live.extend(chunks);
            }
        }
        let mut removed = 0;
        for dir in fs::read_dir(self.root.join("chunks"))? {
            let dir = dir?.path();
            if !dir.is_dir() {
                continue;
            }
            for f in fs::read_dir(&dir)? {
                let p = f?.path();
                let keep = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<Hash>().ok())
                    .is_some_and(|h| live.contains(&h));
                if !keep {
                    fs::remove_file(&p)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn write_chunk(&self, data: &[u8]) -> Result<Hash, StoreError> {
        let h = keccak256(data);
        let path = self.chunk_path(&h);
        if path.exists() {
            if fs::metadata(&path)?.len() == data.len() as u64 {
                return Ok(h);
            }
            fs::remove_file(&path)?;
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let tmp = self.temp_path("chunk");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&dir)?;
        Ok(h)
    }

    /// Whether chunk `h` is stored intact (its bytes hash to `h`).
    pub fn has_chunk(&self, h: &Hash) -> bool {
        fs::read(self.chunk_path(h)).is_ok_and(|d| keccak256(&d) == *h)
    }

    /// Store one chunk received from elsewhere; refused unless its bytes hash to `expected`.
    pub fn put_chunk(&self, expected: &Hash, data: &[u8]) -> Result<(), StoreError> {
        let got = keccak256(data);
        if got != *expected {
            return Err(StoreError::Mismatch(format!(
                "chunk bytes hash to {got}, not {expected}"
            )));
        }
        self.write_chunk(data).map(|_| ())
    }

    /// Record that model `id` is being assembled from `chunks` (they survive garbage collection until
    /// [`Store::end_pull`]).
    pub fn begin_pull(&self, id: &Hash, chunks: &[Hash]) -> Result<(), StoreError> {
        let v = serde_json::to_vec(chunks).map_err(|e| StoreError::Db(e.to_string()))?;
        self.kv_put(PULLS, &id.0, &v)
    }

    /// Forget an assembly record (after the model is stored or given up).
    pub fn end_pull(&self, id: &Hash) -> Result<(), StoreError> {
        self.kv_write(PULLS, &[(&id.0, None)])
    }

    /// Add a model whose chunks are all stored (e.g. replicated from peers, ID verified by the caller)
    /// with the owners' signed versions, in one index transaction. A version whose name another owner
    /// holds here, or whose version number names another model here, is skipped; returns the versions
    /// added or already present.
    pub fn adopt(
        &self,
        mut record: ModelRecord,
        versions: &[Version],
    ) -> Result<Vec<Version>, StoreError> {
        for (i, h) in record.chunks.iter().enumerate() {
            if !self.chunk_path(h).exists() {
                return Err(StoreError::Corrupt(format!(
                    "chunk {i} of model {} is not stored",
                    record.id
                )));
            }
        }
        if record.stored_at == 0 {
            record.stored_at = now();
        }
        let mut kept = Vec::new();
        let w = self.db.begin_write()?;
        {
            let mut models = w.open_table(MODELS)?;
            if models.get(record.id.0.as_slice())?.is_none() {
                let v = serde_json::to_vec(&record).map_err(|e| StoreError::Db(e.to_string()))?;
                models.insert(record.id.0.as_slice(), v.as_slice())?;
            }
            let mut names = w.open_table(NAMES)?;
            for version in versions {
                let m = &version.manifest.manifest;
                if m.model_id != record.id {
                    continue;
                }
                match self.check_name(m, &names) {
                    Ok(Some(_)) => kept.push(version.clone()),
                    Ok(None) => {
                        let v = serde_json::to_vec(version)
                            .map_err(|e| StoreError::Db(e.to_string()))?;
                        names.insert(name_key(&m.name, &m.version).as_str(), v.as_slice())?;
                        kept.push(version.clone());
                    }
                    Err(_) => {}
                }
            }
        }
        w.commit()?;
        Ok(kept)
    }

    /// Store a model's bytes (whose ID the caller has verified) and publish `name@version` for it, in one
    /// index transaction. Chunks are durable before the transaction commits.
    pub fn publish(
        &self,
        bytes: &[u8],
        mut record: ModelRecord,
        version: Version,
    ) -> Result<Published, StoreError> {
        let m = &version.manifest.manifest;
        if m.model_id != record.id {
            return Err(StoreError::Mismatch(format!(
                "manifest names model {}, the record is {}",
                m.model_id, record.id
            )));
        }
        // Fail fast on naming conflicts before writing any chunk.
        if let Some(p) = self.check_name(m, &self.db.begin_read()?.open_table(NAMES)?)? {
            return Ok(p);
        }
        let exists = self.model(&record.id)?.is_some();
        if !exists {
            record.chunk_size = CHUNK_SIZE as u64;
            record.size = bytes.len() as u64;
            record.chunks = bytes
                .chunks(CHUNK_SIZE)
                .map(|c| self.write_chunk(c))
                .collect::<Result<_, _>>()?;
            record.stored_at = now();
        }
        let w = self.db.begin_write()?;
        {
            let mut names = w.open_table(NAMES)?;
            if let Some(p) = self.check_name(m, &names)? {
                return Ok(p);
            }
            let mut models = w.open_table(MODELS)?;
            if models.get(record.id.0.as_slice())?.is_none() {
                if exists {
                    return Err(StoreError::Corrupt("model vanished during publish".into()));
                }
                let v = serde_json::to_vec(&record).map_err(|e| StoreError::Db(e.to_string()))?;
                models.insert(record.id.0.as_slice(), v.as_slice())?;
            }
            let v = serde_json::to_vec(&version).map_err(|e| StoreError::Db(e.to_string()))?;
            names.insert(name_key(&m.name, &m.version).as_str(), v.as_slice())?;
        }
        w.commit()?;
        Ok(Published::Created)
    }

    /// `Some(Existing)` for an identical re-publish, an error for a conflict, `None` if free.
    fn check_name(
        &self,
        m: &verity_core::Manifest,
        names: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<Published>, StoreError> {
        let prefix = format!("{}\u{0}", m.name);
        for e in names.range(prefix.as_str()..)? {
            let (k, v) = e?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let v: Version = decode(v.value())?;
            let other = &v.manifest.manifest;
            if other.owner != m.owner {
                return Err(StoreError::NameOwned {
                    name: m.name.clone(),
                    owner: other.owner,
                });
            }
            if other.version == m.version {
                if other.model_id == m.model_id {
                    return Ok(Some(Published::Existing));
                }
                return Err(StoreError::VersionTaken {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    existing: other.model_id,
                });
            }
        }
        Ok(None)
    }

    /// The record of a stored model.
    pub fn model(&self, id: &Hash) -> Result<Option<ModelRecord>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(MODELS)?;
        let v = t.get(id.0.as_slice())?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Every stored model.
    pub fn models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(MODELS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            out.push(decode(e?.1.value())?);
        }
        Ok(out)
    }

    /// Every published version, ordered by name then version (ascending).
    pub fn versions(&self) -> Result<Vec<Version>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(NAMES)?;
        let mut out: Vec<Version> = Vec::new();
        for e in t.iter()? {
            out.push(decode(e?.1.value())?);
        }
        out.sort_by(|a, b| {
            let (a, b) = (&a.manifest.manifest, &b.manifest.manifest);
            a.name
                .cmp(&b.name)
                .then_with(|| compare_versions(&a.version, &b.version))
        });
        Ok(out)
    }

    /// One published version.
    pub fn version(&self, name: &str, version: &str) -> Result<Option<Version>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(NAMES)?;
        let v = t.get(name_key(name, version).as_str())?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// The highest version (by [`compare_versions`]) published under `name`.
    pub fn latest(&self, name: &str) -> Result<Option<Version>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(NAMES)?;
        let prefix = format!("{name}\u{0}");
        let mut best: Option<Version> = None;
        for e in t.range(prefix.as_str()..)? {
            let (k, v) = e?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let v: Version = decode(v.value())?;
            if best.as_ref().is_none_or(|b| {
                compare_versions(&v.manifest.manifest.version, &b.manifest.manifest.version)
                    == Ordering::Greater
            }) {
                best = Some(v);
            }
        }
        Ok(best)
    }

    /// Resolve `0x<id>`, `name@version` or `name` (latest) to a stored model and, for names, its version.
    pub fn resolve(
        &self,
        reference: &str,
    ) -> Result<Option<(ModelRecord, Option<Version>)>, StoreError> {
        let version = if reference.starts_with("0x") && reference.len() == 66 {
            let Ok(id) = reference.parse::<Hash>() else {
                return Ok(None);
            };
            return Ok(self.model(&id)?.map(|r| (r, None)));
        } else if let Some((n, v)) = reference.split_once('@') {
            self.version(n, v)?
        } else {
            self.latest(reference)?
        };
        let Some(v) = version else { return Ok(None) };
        let rec = self.model(&v.manifest.manifest.model_id)?.ok_or_else(|| {
            StoreError::Corrupt(format!("{reference} names a model that is not stored"))
        })?;
        Ok(Some((rec, Some(v))))
    }

    /// Read `len` bytes of a stored model starting at `offset`, checking every chunk it touches.
    pub fn read_range(
        &self,
        rec: &ModelRecord,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let end = offset.saturating_add(len).min(rec.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let cs = rec.chunk_size.max(1);
        let mut pos = offset;
        while pos < end {
            let ci = (pos / cs) as usize;
            let chunk = self.read_chunk(rec, ci)?;
            let within = (pos - ci as u64 * cs) as usize;
            let take = ((end - pos) as usize).min(chunk.len().saturating_sub(within));
            if take == 0 {
                return Err(StoreError::Corrupt(format!("chunk {ci} is short")));
            }
            out.extend_from_slice(&chunk[within..within + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    /// Read and check chunk `i` of a stored model.
    pub fn read_chunk(&self, rec: &ModelRecord, i: usize) -> Result<Vec<u8>, StoreError> {
        let h = rec
            .chunks
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no chunk {i}")))?;
        let mut data = Vec::new();
        fs::File::open(self.chunk_path(h))?.read_to_end(&mut data)?;
        if keccak256(&data) != *h {
            return Err(StoreError::Corrupt(format!(
                "chunk {i} of model {} does not match its hash",
                rec.id
            )));
        }
        Ok(data)
    }

    /// Chunk `i` of a stored model as it is on disk, not re-hashed — for serving to a peer, which checks
    /// every chunk against the list itself.
    pub fn read_chunk_unchecked(&self, rec: &ModelRecord, i: usize) -> Result<Vec<u8>, StoreError> {
        let h = rec
            .chunks
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no chunk {i}")))?;
        Ok(fs::read(self.chunk_path(h))?)
    }

    /// A model's file assembled from its chunk files without re-hashing each chunk — for a caller that
    /// checks the whole content itself (a pull decodes it and compares the model ID).
    pub fn assemble_unchecked(&self, rec: &ModelRecord) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(rec.size as usize);
        for (i, h) in rec.chunks.iter().enumerate() {
            let mut f = fs::File::open(self.chunk_path(h))
                .map_err(|e| StoreError::Corrupt(format!("chunk {i} of model {}: {e}", rec.id)))?;
            f.read_to_end(&mut out)?;
        }
        if out.len() as u64 != rec.size {
            return Err(StoreError::Corrupt(format!(
                "model {} assembles to {} bytes, not {}",
                rec.id,
                out.len(),
                rec.size
            )));
        }
        Ok(out)
    }

    /// The whole `.vty` file of a stored model.
    pub fn read_model(&self, rec: &ModelRecord) -> Result<Vec<u8>, StoreError> {
        self.read_range(rec, 0, rec.size)
    }

    /// Append receipts (one durable transaction for the batch).
    pub fn put_receipts(&self, receipts: &[SignedReceipt]) -> Result<(), StoreError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(RECEIPTS)?;
            for r in receipts {
                let v = serde_json::to_vec(r).map_err(|e| StoreError::Db(e.to_string()))?;
                t.insert(r.receipt.request_id.0.as_slice(), v.as_slice())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// The receipt this node signed for a request ID.
    pub fn receipt(&self, request_id: &Hash) -> Result<Option<SignedReceipt>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(RECEIPTS)?;
        let v = t.get(request_id.0.as_slice())?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Number of receipts kept.
    pub fn receipt_count(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(RECEIPTS)?.len()?)
    }
}

/// A (key, value) record of a KV namespace.
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// One write of a KV batch: (namespace, key, value or `None` to delete).
pub type KvOp<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// KV namespace of models being assembled from peers: model ID → chunk hashes (JSON).
const PULLS: &str = "store.pulls";

fn kv_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + key.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

impl Store {
    /// Durably set several records of namespace `ns` in one transaction (`None` deletes).
    pub fn kv_write(&self, ns: &str, entries: &[(&[u8], Option<&[u8]>)]) -> Result<(), StoreError> {
        let batch: Vec<KvOp> = entries.iter().map(|(k, v)| (ns, *k, *v)).collect();
        self.kv_batch(&batch)
    }

    /// Durably apply records of several namespaces in one transaction: all or none.
    pub fn kv_batch(&self, ops: &[KvOp]) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(KV)?;
            for (ns, k, v) in ops {
                let key = kv_key(ns, k);
                match v {
                    Some(v) => {
                        t.insert(key.as_slice(), *v)?;
                    }
                    None => {
                        t.remove(key.as_slice())?;
                    }
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Durably set one record.
    pub fn kv_put(&self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.kv_write(ns, &[(key, Some(value))])
    }

    /// One record.
    pub fn kv_get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(KV)?;
        Ok(t.get(kv_key(ns, key).as_slice())?
            .map(|v| v.value().to_vec()))
    }

    /// Every record of a namespace, in key order, as (key, value).
    pub fn kv_scan(&self, ns: &str) -> Result<Vec<KvEntry>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(KV)?;
        let lo = kv_key(ns, &[]);
        let mut hi = ns.as_bytes().to_vec();
        hi.push(1);
        let mut out = Vec::new();
        for e in t.range(lo.as_slice()..hi.as_slice())? {
            let (k, v) = e?;
            out.push((k.value()[lo.len()..].to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("bad index record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_core::{Manifest, SecretKey};

    #[test]
    fn kv_namespaces_are_separate_ordered_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.kv_put("jobs", &2u64.to_be_bytes(), b"two").unwrap();
            s.kv_put("jobs", &1u64.to_be_bytes(), b"one").unwrap();
            s.kv_put("job", b"x", b"other namespace").unwrap();
            s.kv_put("jobsx", b"y", b"prefix-sharing namespace")
                .unwrap();
            s.kv_write(
                "jobs",
                &[
                    (&3u64.to_be_bytes(), Some(b"three")),
                    (&2u64.to_be_bytes(), None),
                ],
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.kv_scan("jobs").unwrap();
        assert_eq!(
            all,
            vec![
                (1u64.to_be_bytes().to_vec(), b"one".to_vec()),
                (3u64.to_be_bytes().to_vec(), b"three".to_vec())
            ]
        );
        assert_eq!(
            s.kv_get("job", b"x").unwrap().as_deref(),
            Some(&b"other namespace"[..])
        );
        assert_eq!(s.kv_get("jobs", b"x").unwrap(), None);
        // One batch over two namespaces.
        s.kv_batch(&[
            ("jobs", &1u64.to_be_bytes(), None),
            ("pending", &1u64.to_be_bytes(), Some(b"")),
        ])
        .unwrap();
        assert_eq!(s.kv_scan("jobs").unwrap().len(), 1);
        assert_eq!(s.kv_scan("pending").unwrap().len(), 1);
    }

    fn version(key: &SecretKey, id: Hash, name: &str, v: &str) -> Version {
        let m = Manifest {
            model_id: id,
            name: name.into(),
            version: v.into(),
            description: String::new(),
            task: String::new(),
            license: String::new(),
            tags: vec![],
            owner: key.address(),
            source_hash: Hash::ZERO,
            report_hash: Hash::ZERO,
        };
        Version {
            manifest: m.sign(key),
            report: None,
            report_by: None,
            published_at: 1,
        }
    }

    fn record(id: Hash) -> ModelRecord {
        ModelRecord {
            id,
            size: 0,
            chunk_size: 0,
            chunks: vec![],
            inputs: vec![],
            outputs: vec![],
            nodes: 0,
            parameters: 0,
            stored_at: 0,
            cost: None,
        }
    }

    #[test]
    fn replicated_chunks_are_checked_survive_restarts_mid_pull_and_adopt() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        let other = SecretKey::from_bytes(&[8u8; 32]).unwrap();
        let id = Hash([9u8; 32]);
        let a = vec![1u8; 1000];
        let b = vec![2u8; 500];
        let (ha, hb) = (keccak256(&a), keccak256(&b));
        {
            let s = Store::open(dir.path()).unwrap();
            assert!(matches!(s.put_chunk(&ha, &b), Err(StoreError::Mismatch(_))));
            assert!(!s.has_chunk(&ha));
            s.begin_pull(&id, &[ha, hb]).unwrap();
            s.put_chunk(&ha, &a).unwrap();
            assert!(s.has_chunk(&ha));
            let mut rec = record(id);
            rec.chunks = vec![ha, hb];
            assert!(s.adopt(rec, &[]).is_err(), "a missing chunk is refused");
        }
        // Reopening (garbage collection) keeps the half-pulled model's chunk.
        let s = Store::open(dir.path()).unwrap();
        assert!(s.has_chunk(&ha));
        s.put_chunk(&hb, &b).unwrap();
        let mut rec = record(id);
        rec.size = 1500;
        rec.chunk_size = 1000;
        rec.chunks = vec![ha, hb];
        // Someone else holds "m" here already: that version is skipped, the others are kept.
        let taken = version(&other, Hash([5u8; 32]), "m", "1");
        let mut r5 = record(Hash([5u8; 32]));
        r5.chunks = vec![];
        s.adopt(r5, std::slice::from_ref(&taken)).unwrap();
        let kept = s
            .adopt(
                rec.clone(),
                &[version(&key, id, "m", "2"), version(&key, id, "n", "1")],
            )
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].manifest.manifest.name, "n");
        s.end_pull(&id).unwrap();
        assert_eq!(
            s.read_model(&s.model(&id).unwrap().unwrap()).unwrap().len(),
            1500
        );
        assert_eq!(
            s.resolve("n@1").unwrap().unwrap().0.id,
            id,
            "the adopted version resolves"
        );
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.has_chunk(&hb), "an adopted model's chunks are live");
    }

    #[test]
    fn publish_resolve_conflicts_ranges_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::random();
        let bytes: Vec<u8> = (0..(CHUNK_SIZE * 2 + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let id = keccak256(&bytes);
        {
            let s = Store::open(dir.path()).unwrap();
            let p = s
                .publish(&bytes, record(id), version(&key, id, "m", "1.2"))
                .unwrap();
            assert_eq!(p, Published::Created);
            let p = s
                .publish(&bytes, record(id), version(&key, id, "m", "1.2"))
                .unwrap();
            assert_eq!(p, Published::Existing);
            s.publish(&bytes, record(id), version(&key, id, "m", "1.10"))
                .unwrap();
            // latest is by version order, not by text
            let (r, v) = s.resolve("m").unwrap().unwrap();
            assert_eq!(v.unwrap().manifest.manifest.version, "1.10");
            assert_eq!(r.chunks.len(), 3);
            assert_eq!(s.read_model(&r).unwrap(), bytes);
            let mid = s.read_range(&r, CHUNK_SIZE as u64 - 5, 10).unwrap();
            assert_eq!(mid, bytes[CHUNK_SIZE - 5..CHUNK_SIZE + 5]);
            assert!(s.resolve(&id.to_hex()).unwrap().is_some());
            assert!(s.resolve("m@9").unwrap().is_none());
            // another model under a taken version; another owner under a taken name
            let other = keccak256(b"other");
            assert!(matches!(
                s.publish(b"other", record(other), version(&key, other, "m", "1.2")),
                Err(StoreError::VersionTaken { .. })
            ));
            assert!(matches!(
                s.publish(
                    b"other",
                    record(other),
                    version(&SecretKey::random(), other, "m", "7")
                ),
                Err(StoreError::NameOwned { .. })
            ));
            // a corrupted chunk is detected on read
            let p = s.chunk_path(&r.chunks[1]);
            let mut data = fs::read(&p).unwrap();
            data[0] ^= 1;
            fs::write(&p, &data).unwrap();
            assert!(matches!(s.read_chunk(&r, 1), Err(StoreError::Corrupt(_))));
            data[0] ^= 1;
            fs::write(&p, &data).unwrap();
        }
        // A stray chunk (as a crash before the index commit leaves) is removed on open.
        let stray = dir.path().join("chunks").join("ab").join("ab".repeat(32));
        fs::create_dir_all(stray.parent().unwrap()).unwrap();
        fs::write(&stray, b"x").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(!stray.exists());
        let (r, _) = s.resolve("m@1.2").unwrap().unwrap();
        assert_eq!(s.read_model(&r).unwrap(), bytes);
    }

    #[test]
    fn version_order() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("2", "10"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
        assert_eq!(compare_versions("a", "b"), Ordering::Less);
    }
}
