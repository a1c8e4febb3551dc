//! The writes of one `apply` call: a RocksDB batch, and an ordered overlay so that later
//! entries of the same call read (and scan) what earlier ones wrote or deleted.

use std::collections::BTreeMap;
use std::ops::Bound;

use raftflow_storage::{codec, Batch, Store};
use serde::Serialize;

pub(crate) struct Tx<'a> {
    group: u64,
    store: &'a Store,
    pub(crate) batch: Batch,
    /// key -> new value, or `None` for a deleted row.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Some task became ready: wake the long polls once the batch is written.
    pub(crate) made_ready: bool,
    /// The deadline index changed: tell the leader's clock once the batch is written.
    pub(crate) deadlines_touched: bool,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(group: u64, store: &'a Store) -> Self {
        Tx {
            group,
            store,
            batch: Batch::default(),
            overlay: BTreeMap::new(),
            made_ready: false,
            deadlines_touched: false,
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.overlay.get(key) {
            return v.clone();
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
        let bytes = codec::encode(value).expect("state rows encode");
        self.store
            .put_state(&mut self.batch, self.group, &key, &bytes);
        self.overlay.insert(key, Some(bytes));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.store.delete_state(&mut self.batch, self.group, &key);
        self.overlay.insert(key, None);
    }

    /// The first `limit` keys starting with `prefix`, in key order, as this transaction sees
    /// them (stored rows, minus rows deleted here, plus rows written here).
    pub(crate) fn scan_keys(&self, prefix: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let in_overlay: Vec<(&Vec<u8>, bool)> = self
            .overlay
            .range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.is_some()))
            .collect();
        // Every overlay entry may hide one stored row, so read that many more.
        let stored = self
            .store
            .scan_state(self.group, prefix, None, limit + in_overlay.len())
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
        let mut tx = Tx::new(1, &store);
        tx.delete(b"q/a".to_vec());
        tx.delete(b"q/b".to_vec());
        tx.put_encoded(b"q/bb".to_vec(), &1u8);
        tx.put_encoded(b"q/d".to_vec(), &1u8);
        let keys = |tx: &Tx, n| -> Vec<String> {
            tx.scan_keys(b"q/", n)
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(&tx, 10), ["q/bb", "q/c", "q/d"]);
        assert_eq!(keys(&tx, 2), ["q/bb", "q/c"]);
        assert_eq!(tx.get(b"q/a"), None);
        assert!(tx.get(b"q/c").is_some());
        store.write(std::mem::take(&mut tx.batch)).unwrap();
        let after: Vec<_> = store
            .scan_state(1, b"q/", None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(after, ["q/bb", "q/c", "q/d"]);
    }
}
