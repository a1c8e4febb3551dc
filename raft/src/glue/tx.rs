//! The writes of one `apply` call: a RocksDB batch, and an ordered overlay so that later
//! entries of the same call read (and scan) what earlier ones wrote or deleted; and the
//! group's cache of rows that later calls read again.

use std::collections::BTreeMap;
use std::ops::Bound;

use raftflow_storage::{codec, Batch, Store};
use serde::Serialize;

use crate::tables;

/// The most bytes of rows one group's [`RowCache`] holds.
const ROW_CACHE_BYTES: usize = 2 << 20;
/// Rows larger than this are not cached (a workflow with a huge context).
const ROW_CACHE_MAX_ROW: usize = 64 << 10;

/// The workflow and task rows a group's state machine wrote last, by key: what the next
/// command on the same workflow or task reads first. Only the state machine writes its group's
/// rows, so a cached row stays current until the state machine writes that row again, which
/// updates it here too; an installed snapshot empties it. A hit saves a RocksDB point lookup,
/// whose memtable search is the dearest step of applying a transition.
pub(crate) struct RowCache {
    rows: lru::LruCache<Vec<u8>, Vec<u8>>,
    bytes: usize,
    limit: usize,
}

impl RowCache {
    pub(crate) fn new(limit: usize) -> Self {
        RowCache {
            rows: lru::LruCache::unbounded(),
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

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.rows.pop(key) {
            self.bytes -= key.len() + old.len();
        }
    }

    /// Records what a written transaction left in the rows it touched.
    fn absorb(&mut self, overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        for (key, value) in overlay {
            if !Self::cached(&key) {
                continue;
            }
            self.remove(&key);
            match value {
                Some(v) if v.len() <= ROW_CACHE_MAX_ROW => {
                    self.bytes += key.len() + v.len();
                    self.rows.put(key, v);
                }
                _ => {}
            }
        }
        while self.bytes > self.limit {
            let Some((k, v)) = self.rows.pop_lru() else {
                break;
            };
            self.bytes -= k.len() + v.len();
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
    store: &'a Store,
    cache: RowCache,
    pub(crate) batch: Batch,
    /// key -> new value, or `None` for a deleted row.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Some task became ready: wake the long polls once the batch is written.
    pub(crate) made_ready: bool,
    /// The deadline index changed: tell the leader's clock once the batch is written.
    pub(crate) deadlines_touched: bool,
    /// The smallest deadline-index key this transaction wrote.
    pub(crate) lowest_deadline: Option<Vec<u8>>,
}

impl<'a> Tx<'a> {
    /// A transaction that reads through `cache` and hands it back, updated, from
    /// [`Tx::commit`].
    pub(crate) fn new(group: u64, store: &'a Store, cache: RowCache) -> Self {
        Tx {
            group,
            store,
            cache,
            batch: Batch::default(),
            overlay: BTreeMap::new(),
            made_ready: false,
            deadlines_touched: false,
            lowest_deadline: None,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.overlay.get(key) {
            return v.clone();
        }
        if let Some(v) = self.cache.get(key) {
            return Some(v.clone());
        }
        self.store
            .get_state(self.group, key)
            .unwrap_or_else(|e| panic!("group {}: state read failed: {e}", self.group))
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
        self.store
            .put_state(&mut self.batch, self.group, &key, &bytes);
        self.overlay.insert(key, Some(bytes));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.store.delete_state(&mut self.batch, self.group, &key);
        self.overlay.insert(key, None);
    }

    /// Writes the batch (not synced: the log is) and returns the cache with the rows it wrote.
    pub(crate) fn commit(mut self) -> raftflow_storage::Result<RowCache> {
        self.store.write(self.batch)?;
        self.cache.absorb(self.overlay);
        Ok(self.cache)
    }

    /// The first `limit` keys starting with `prefix`, in key order, as this transaction sees
    /// them (stored rows, minus rows deleted here, plus rows written here). With `from`, stored
    /// rows are read only from that key on: the caller knows none before it is live.
    pub(crate) fn scan_keys(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        let in_overlay: Vec<(&Vec<u8>, bool)> = self
            .overlay
            .range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.is_some()))
            .collect();
        // Every overlay entry may hide one stored row, so read that many more.
        let stored = self
            .store
            .scan_state_from(self.group, prefix, from, limit + in_overlay.len())
            .unwrap_or_else(|e| panic!("group {}: state scan failed: {e}", self.group));
        let mut merged: BTreeMap<&[u8], bool> =
            stored.iter().map(|(k, _)| (k.as_slice(), true)).collect();
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

    #[test]
    fn scans_see_this_transactions_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        for k in ["q/a", "q/b", "q/c", "r/x"] {
            store.put_state(&mut batch, 1, k.as_bytes(), b"v");
        }
        store.write(batch).unwrap();
        let mut tx = Tx::new(1, &store, RowCache::default());
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
        // Stored keys only from `from` on; this transaction's own keys always.
        let after_c: Vec<Vec<u8>> = tx.scan_keys(b"q/", Some(b"q/c\0"), 10);
        assert_eq!(after_c, [b"q/bb".to_vec(), b"q/d".to_vec()]);
        let from_c: Vec<Vec<u8>> = tx.scan_keys(b"q/", Some(b"q/c"), 10);
        assert_eq!(from_c, [b"q/bb".to_vec(), b"q/c".to_vec(), b"q/d".to_vec()]);
        assert_eq!(tx.get(b"q/a"), None);
        assert!(tx.get(b"q/c").is_some());
        tx.commit().unwrap();
        let after: Vec<_> = store
            .scan_state(1, b"q/", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(after, ["q/bb", "q/c", "q/d"]);
    }

    #[test]
    fn the_row_cache_keeps_workflow_and_task_rows_within_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let write = |cache: RowCache, rows: &[(&str, Option<usize>)]| {
            let mut tx = Tx::new(1, &store, cache);
            for (k, v) in rows {
                match v {
                    Some(n) => tx.put_encoded(k.as_bytes().to_vec(), &vec![7u8; *n]),
                    None => tx.delete(k.as_bytes().to_vec()),
                }
            }
            tx.commit().unwrap()
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
