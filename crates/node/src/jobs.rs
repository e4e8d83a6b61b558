//! Durable job records keyed by a `u64` ID, with an index of the unfinished ones written in the same store
//! transaction as the record, so a poll reads only those. The InferenceHub jobs (`chain.rs`) and the
//! optimistic jobs (`optimistic.rs`) are kept this way.

use serde::de::DeserializeOwned;
use serde::Serialize;
use verity_store::Store;

/// Where one kind of job lives: its records' namespace and its open index's namespace.
pub struct JobTable {
    /// Namespace of the records (ID → JSON).
    pub records: &'static str,
    /// Namespace of the index of unfinished jobs (ID → empty).
    pub open: &'static str,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

impl JobTable {
    /// Job `id`, if recorded.
    pub fn get<T: DeserializeOwned>(&self, store: &Store, id: u64) -> Option<T> {
        store
            .kv_get(self.records, &key(id))
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Every job, by ID (oldest first).
    pub fn all<T: DeserializeOwned>(&self, store: &Store) -> Vec<T> {
        store
            .kv_scan(self.records)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// The jobs in the open index, by ID.
    pub fn open<T: DeserializeOwned>(&self, store: &Store) -> Vec<T> {
        store
            .kv_scan(self.open)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
            .filter_map(|k| self.get(store, u64::from_be_bytes(k)))
            .collect()
    }

    /// Write job `id` and its entry in the open index (present iff `open`) in one transaction.
    pub fn put<T: Serialize>(&self, store: &Store, id: u64, job: &T, open: bool) {
        let Ok(v) = serde_json::to_vec(job) else {
            return;
        };
        let k = key(id);
        let index: Option<&[u8]> = open.then_some(&[]);
        if let Err(e) = store.kv_batch(&[(self.records, &k, Some(&v)), (self.open, &k, index)]) {
            tracing::error!("cannot persist job {id} ({}): {e}", self.records);
        }
    }

    /// Remove job `id` and its index entry.
    pub fn forget(&self, store: &Store, id: u64) {
        let k = key(id);
        if let Err(e) = store.kv_batch(&[(self.records, &k, None), (self.open, &k, None)]) {
            tracing::error!("cannot forget job {id} ({}): {e}", self.records);
        }
    }
}
