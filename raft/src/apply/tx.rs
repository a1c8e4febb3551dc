//! The writes of one `apply` call: an ordered overlay over the group's stored rows, so that
//! later entries of the same call read (and scan) what earlier ones wrote or deleted; and the
//! group's cache of rows that later calls read again.
//!
//! The stored rows are read through [`StateRows`]: RocksDB in a node, a `BTreeMap` in the
//! apply logic's unit tests. What a transaction wrote comes back from [`Tx::finish`] as
//! [`Writes`], for the caller to persist in one batch.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use raftflow_storage::codec;
use serde::Serialize;

use crate::tables::{self, WorkflowRecord};

/// A group's stored state rows, as apply reads them. Reads cannot fail: a replica that cannot
/// read its own rows cannot apply the log, and panics with context instead of going on wrong.
pub(crate) trait StateRows: Sync {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;

    /// The first `limit` keys starting with `prefix`, in key order; with `from`, only keys from
    /// that one on.
    fn scan_keys(&self, prefix: &[u8], from: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>>;
}

/// In-memory rows, for tests of the apply logic without RocksDB.
#[cfg(test)]
impl StateRows for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }

    fn scan_keys(&self, prefix: &[u8], from: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        let start = from.filter(|f| *f > prefix).unwrap_or(prefix).to_vec();
        self.range(start..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// What a transaction wrote: key -> new value, or `None` for a deleted row, in key order.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The most bytes of rows one group's [`RowCache`] holds.
const ROW_CACHE_BYTES: usize = 2 << 20;
/// Rows larger than this are not cached (a workflow with a huge context).
const ROW_CACHE_MAX_ROW: usize = 64 << 10;

/// The workflow and task rows a group's state machine wrote last, by key: what the next
/// command on the same workflow or task reads first. Only the state machine writes its group's
/// rows, so a cached row stays current until the state machine writes that row again, which
/// updates it here too; an installed snapshot empties it. A hit saves a RocksDB point lookup,
/// whose memtable search is the dearest step of applying a transition.
///
/// A workflow row written through [`Tx::put_workflow`] is also kept decoded, so that the next
/// event on the workflow does not decode (and check) its record and context again: that was
/// half of applying an event with a 1 KiB context. The decoded record is dropped whenever its
/// row changes or leaves the cache, and is handed out once ([`Tx::take_workflow`]); the bytes
/// stay the truth.
pub(crate) struct RowCache {
    rows: lru::LruCache<Vec<u8>, Vec<u8>>,
    /// Decoded forms of some cached `w/` rows; each equals its row's bytes decoded.
    records: HashMap<Vec<u8>, WorkflowRecord>,
    /// Records a finished transaction wrote, for [`RowCache::absorb`] to keep beside its writes.
    staged: HashMap<Vec<u8>, WorkflowRecord>,
    bytes: usize,
    limit: usize,
}

impl RowCache {
    pub(crate) fn new(limit: usize) -> Self {
        RowCache {
            rows: lru::LruCache::unbounded(),
            records: HashMap::new(),
            staged: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    fn cached(key: &[u8]) -> bool {
        key.starts_with(tables::WORKFLOWS) || key.starts_with(tables::TASKS)
    }

    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.rows.peek(key)
    }

    /// What a cached row costs against the limit: its key and bytes, twice the bytes while it
    /// is also kept decoded (a decoded record holds about as much, in a few allocations).
    fn cost(key: &[u8], value: &[u8], decoded: bool) -> usize {
        key.len() + value.len() * if decoded { 2 } else { 1 }
    }

    /// Hands out `key`'s decoded record, if kept; its row stays cached as bytes.
    fn take_record(&mut self, key: &[u8]) -> Option<WorkflowRecord> {
        let record = self.records.remove(key)?;
        let row = self
            .rows
            .peek(key)
            .expect("a decoded record's row is cached");
        self.bytes -= row.len();
        Some(record)
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.rows.pop(key) {
            let decoded = self.records.remove(key).is_some();
            self.bytes -= Self::cost(key, &old, decoded);
        }
    }

    /// Records what a written transaction left in the rows it touched.
    pub(crate) fn absorb(&mut self, overlay: Writes) {
        let mut staged = std::mem::take(&mut self.staged);
        for (key, value) in overlay {
            if !Self::cached(&key) {
                continue;
            }
            self.remove(&key);
            match value {
                Some(v) if v.len() <= ROW_CACHE_MAX_ROW => {
                    let record = staged.remove(&key);
                    self.bytes += Self::cost(&key, &v, record.is_some());
                    if let Some(record) = record {
                        self.records.insert(key.clone(), record);
                    }
                    self.rows.put(key, v);
                }
                _ => {}
            }
        }
        while self.bytes > self.limit {
            let Some((k, v)) = self.rows.pop_lru() else {
                break;
            };
            let decoded = self.records.remove(&k).is_some();
            self.bytes -= Self::cost(&k, &v, decoded);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

impl Default for RowCache {
    fn default() -> Self {
        RowCache::new(ROW_CACHE_BYTES)
    }
}

pub(crate) struct Tx<'a> {
    group: u64,
    rows: &'a dyn StateRows,
    cache: RowCache,
    /// key -> new value, or `None` for a deleted row.
    overlay: Writes,
    /// Some task became ready: wake the long polls once the batch is written.
    pub(crate) made_ready: bool,
    /// The deadline index changed: tell the leader's clock once the batch is written.
    pub(crate) deadlines_touched: bool,
    /// The smallest deadline-index key this transaction wrote.
    pub(crate) lowest_deadline: Option<Vec<u8>>,
    /// The decoded form of each workflow row this transaction wrote by
    /// [`Tx::put_workflow`] and has not overwritten since.
    written_records: HashMap<Vec<u8>, WorkflowRecord>,
}

impl<'a> Tx<'a> {
    /// A transaction that reads `rows` through `cache`; [`Tx::finish`] hands both the
    /// writes and the cache back.
    pub(crate) fn new(group: u64, rows: &'a dyn StateRows, cache: RowCache) -> Self {
        Tx {
            group,
            rows,
            cache,
            overlay: BTreeMap::new(),
            made_ready: false,
            deadlines_touched: false,
            lowest_deadline: None,
            written_records: HashMap::new(),
        }
    }

    /// Workflow `key`'s record, as [`Tx::get_decoded`] reads it, but without decoding a record
    /// that this transaction or an earlier one wrote and the cache still holds decoded. The
    /// cache hands its decoded form out once: callers write the record back when it changes.
    pub(crate) fn take_workflow(&mut self, key: &[u8]) -> Option<WorkflowRecord> {
        if self.overlay.contains_key(key) {
            if let Some(rec) = self.written_records.get(key) {
                return Some(rec.clone());
            }
        } else if let Some(rec) = self.cache.take_record(key) {
            return Some(rec);
        }
        self.get_decoded(key)
    }

    /// Writes workflow `key`'s record, and keeps it decoded for the next command on it.
    pub(crate) fn put_workflow(&mut self, key: Vec<u8>, rec: &WorkflowRecord) {
        self.put_encoded(key.clone(), rec);
        self.written_records.insert(key, rec.clone());
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.overlay.get(key) {
            return v.clone();
        }
        if let Some(v) = self.cache.get(key) {
            return Some(v.clone());
        }
        self.rows.get(key)
    }

    pub(crate) fn get_decoded<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        self.get(key).map(|bytes| self.decode(key, &bytes))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, key: &[u8], bytes: &[u8]) -> T {
        codec::decode(bytes).unwrap_or_else(|e| {
            panic!(
                "group {}: corrupt row {:?}: {e}",
                self.group,
                String::from_utf8_lossy(key)
            )
        })
    }

    pub(crate) fn put_encoded<T: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &T) {
        if key.starts_with(tables::DEADLINES)
            && self.lowest_deadline.as_ref().is_none_or(|low| key < *low)
        {
            self.lowest_deadline = Some(key.clone());
        }
        let bytes = codec::encode(value).expect("state rows encode");
        self.forget_record(&key);
        self.overlay.insert(key, Some(bytes));
    }

    /// `key`'s row is about to change other than by [`Tx::put_workflow`]: its decoded form
    /// from before is no longer its value.
    fn forget_record(&mut self, key: &[u8]) {
        if key.starts_with(tables::WORKFLOWS) {
            self.written_records.remove(key);
            self.cache.take_record(key);
        }
    }

    /// Writes a row whose value is already encoded (rows a slot move copies).
    pub(crate) fn put_bytes(&mut self, key: Vec<u8>, bytes: Vec<u8>) {
        if key.starts_with(tables::DEADLINES)
            && self.lowest_deadline.as_ref().is_none_or(|low| key < *low)
        {
            self.lowest_deadline = Some(key.clone());
        }
        self.forget_record(&key);
        self.overlay.insert(key, Some(bytes));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.forget_record(&key);
        self.overlay.insert(key, None);
    }

    /// What this transaction wrote, and the cache it read through. The caller persists the
    /// writes and then gives them to [`RowCache::absorb`].
    pub(crate) fn finish(mut self) -> (Writes, RowCache) {
        self.cache.staged = self.written_records;
        (self.overlay, self.cache)
    }

    /// The first `limit` keys starting with `prefix` and at or after `from`, in key order, as
    /// this transaction sees them (stored rows, minus rows deleted here, plus rows written here).
    pub(crate) fn scan_keys(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        self.merged_scan(prefix, from, from, limit)
    }

    /// Like [`Tx::scan_keys`] from `hint`, except that this transaction's own keys count from
    /// the start of `prefix`: the caller keeps `hint` as "no stored key before it is live", a
    /// promise about the rows as they were before this transaction wrote.
    pub(crate) fn scan_keys_hinted(
        &self,
        prefix: &[u8],
        hint: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        self.merged_scan(prefix, hint, None, limit)
    }

    fn merged_scan(
        &self,
        prefix: &[u8],
        stored_from: Option<&[u8]>,
        own_from: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        let start = match own_from {
            Some(f) if f > prefix => f.to_vec(),
            _ => prefix.to_vec(),
        };
        let in_overlay: Vec<(&Vec<u8>, bool)> = self
            .overlay
            .range::<Vec<u8>, _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.is_some()))
            .collect();
        // Every overlay entry may hide one stored row, so read that many more.
        let stored = self
            .rows
            .scan_keys(prefix, stored_from, limit + in_overlay.len());
        let mut merged: BTreeMap<&[u8], bool> =
            stored.iter().map(|k| (k.as_slice(), true)).collect();
        for (k, live) in in_overlay {
            merged.insert(k.as_slice(), live);
        }
        merged
            .into_iter()
            .filter(|(_, live)| *live)
            .take(limit)
            .map(|(k, _)| k.to_vec())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Persists a transaction's writes into `rows`, as the state machine does into RocksDB.
    fn persist(rows: &mut Rows, writes: &Writes) {
        for (k, v) in writes {
            match v {
                Some(v) => rows.insert(k.clone(), v.clone()),
                None => rows.remove(k),
            };
        }
    }

    #[test]
    fn scans_see_this_transactions_writes_and_deletes() {
        let mut rows: Rows = ["q/a", "q/b", "q/c", "r/x"]
            .iter()
            .map(|k| (k.as_bytes().to_vec(), b"v".to_vec()))
            .collect();
        let mut tx = Tx::new(1, &rows, RowCache::default());
        tx.delete(b"q/a".to_vec());
        tx.delete(b"q/b".to_vec());
        tx.put_encoded(b"q/bb".to_vec(), &1u8);
        tx.put_encoded(b"q/d".to_vec(), &1u8);
        let keys = |tx: &Tx, n| -> Vec<String> {
            tx.scan_keys(b"q/", None, n)
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(&tx, 10), ["q/bb", "q/c", "q/d"]);
        assert_eq!(keys(&tx, 2), ["q/bb", "q/c"]);
        // From a key on, whoever wrote it.
        let after_c: Vec<Vec<u8>> = tx.scan_keys(b"q/", Some(b"q/c\0"), 10);
        assert_eq!(after_c, [b"q/d".to_vec()]);
        let from_c: Vec<Vec<u8>> = tx.scan_keys(b"q/", Some(b"q/c"), 10);
        assert_eq!(from_c, [b"q/c".to_vec(), b"q/d".to_vec()]);
        // From a hint: stored keys only from it on; this transaction's own keys always.
        let hinted: Vec<Vec<u8>> = tx.scan_keys_hinted(b"q/", Some(b"q/c\0"), 10);
        assert_eq!(hinted, [b"q/bb".to_vec(), b"q/d".to_vec()]);
        assert_eq!(tx.get(b"q/a"), None);
        assert!(tx.get(b"q/c").is_some());
        let (writes, _) = tx.finish();
        persist(&mut rows, &writes);
        let after: Vec<_> = rows
            .scan_keys(b"q/", None, 10)
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(after, ["q/bb", "q/c", "q/d"]);
    }

    fn record(id: &str, revision: u64) -> WorkflowRecord {
        let def: raftflow_workflow::Definition = serde_json::from_str(
            r#"{"name": "pp", "initial": "ping", "states": {"ping": {"on": {"flip": "ping"}}}}"#,
        )
        .unwrap();
        let context = serde_json::json!({"order": id, "items": [1, 2, 3]});
        let (mut workflow, _) =
            raftflow_workflow::create(&def, 1, id, context.as_object().unwrap().clone(), 1_000);
        workflow.revision = revision;
        WorkflowRecord {
            workflow,
            fingerprint: format!("fp-{id}"),
            step: None,
        }
    }

    /// The cache's byte count, recomputed from what it holds.
    fn held(cache: &RowCache) -> usize {
        cache
            .rows
            .iter()
            .map(|(k, v)| RowCache::cost(k, v, cache.records.contains_key(k)))
            .sum()
    }

    #[test]
    fn a_decoded_workflow_record_is_its_rows_value_and_is_handed_out_once() {
        let mut rows = Rows::new();
        let (a, b) = (tables::workflow_key("a"), tables::workflow_key("b"));
        let mut tx = Tx::new(1, &rows, RowCache::default());
        tx.put_workflow(a.clone(), &record("a", 1));
        tx.put_workflow(b.clone(), &record("b", 1));
        // Rewritten in the same transaction by a plain put: the decoded form is dropped.
        tx.put_encoded(b.clone(), &record("b", 2));
        assert_eq!(tx.take_workflow(&b), Some(record("b", 2)));
        let (writes, mut cache) = tx.finish();
        persist(&mut rows, &writes);
        cache.absorb(writes);
        assert!(cache.records.contains_key(&a) && !cache.records.contains_key(&b));
        assert_eq!(cache.bytes, held(&cache));

        let mut tx = Tx::new(1, &rows, cache);
        assert_eq!(tx.take_workflow(&a), Some(record("a", 1)), "from the cache");
        assert!(!tx.cache.records.contains_key(&a), "handed out once");
        assert_eq!(tx.cache.bytes, held(&tx.cache));
        assert_eq!(
            tx.take_workflow(&a),
            Some(record("a", 1)),
            "then from its bytes"
        );
        tx.put_workflow(a.clone(), &record("a", 2));
        assert_eq!(
            tx.take_workflow(&a),
            Some(record("a", 2)),
            "as this transaction wrote it"
        );
        tx.delete(a.clone());
        assert_eq!(tx.take_workflow(&a), None);
        tx.put_bytes(
            a.clone(),
            codec::encode(&record("a", 3)).expect("a record encodes"),
        );
        assert_eq!(tx.take_workflow(&a), Some(record("a", 3)));
        let (writes, mut cache) = tx.finish();
        persist(&mut rows, &writes);
        cache.absorb(writes);
        assert!(
            !cache.records.contains_key(&a),
            "a copied row is kept as bytes only"
        );

        // What the cache hands out decoded is what the stored row decodes to.
        let mut tx = Tx::new(1, &rows, cache);
        tx.put_workflow(b.clone(), &record("b", 3));
        let (writes, mut cache) = tx.finish();
        persist(&mut rows, &writes);
        cache.absorb(writes);
        let mut tx = Tx::new(1, &rows, cache);
        let stored: WorkflowRecord = codec::decode(&rows[&b]).unwrap();
        assert_eq!(tx.take_workflow(&b), Some(stored));
        let (_, cache) = tx.finish();
        assert_eq!(cache.bytes, held(&cache));
    }

    #[test]
    fn the_row_cache_keeps_workflow_and_task_rows_within_its_bytes() {
        let mut rows = Rows::new();
        let mut write = |cache: RowCache, changes: &[(&str, Option<usize>)]| {
            let mut tx = Tx::new(1, &rows, cache);
            for (k, v) in changes {
                match v {
                    Some(n) => tx.put_encoded(k.as_bytes().to_vec(), &vec![7u8; *n]),
                    None => tx.delete(k.as_bytes().to_vec()),
                }
            }
            let (writes, mut cache) = tx.finish();
            persist(&mut rows, &writes);
            cache.absorb(writes);
            cache
        };
        let cache = write(
            RowCache::new(1000),
            &[
                ("w/a", Some(100)),
                ("t/x", Some(100)),
                ("h/a\0\0", Some(100)),
            ],
        );
        assert_eq!(cache.len(), 2, "history rows are not read back: not cached");
        assert!(cache.get(b"w/a").is_some() && cache.get(b"t/x").is_some());

        let mut cache = write(
            cache,
            &[("t/x", None), ("w/big", Some(ROW_CACHE_MAX_ROW + 1))],
        );
        assert_eq!(cache.len(), 1, "deleted and oversized rows are not cached");

        // Rows past the byte limit push out the least recently written.
        for i in 0..20 {
            let key = format!("w/{i}");
            cache = write(cache, &[(key.as_str(), Some(100))]);
        }
        assert!(cache.bytes <= 1000);
        assert!(cache.get(b"w/19").is_some());
        assert!(cache.get(b"w/a").is_none());
        let held: usize = cache.rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(cache.bytes, held, "the byte count is the rows' sizes");
    }
}
