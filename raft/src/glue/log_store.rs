//! openraft's `RaftLogStorage` for one group over the node's shared RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use raftflow_storage::Batch as WriteBatch;
use raftflow_storage::{codec, Store};

use super::{Entry, LogId, TypeConfig, Vote};

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "purged";

/// The log of one group. Cheap to clone: every clone shares the node's store.
#[derive(Clone)]
pub struct GroupLogStore {
    group: u64,
    store: Arc<Store>,
}

impl GroupLogStore {
    pub fn new(group: u64, store: Arc<Store>) -> Self {
        GroupLogStore { group, store }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.store.get_raft_meta(self.group, name)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn meta_batch<T: serde::Serialize>(&self, name: &str, value: &T) -> io::Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        self.store
            .put_raft_meta(&mut batch, self.group, name, &codec::encode(value)?);
        Ok(batch)
    }
}

fn index_range(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = index_range(&range);
        let rows = self.store.log_range(self.group, start, end)?;
        let mut out = Vec::with_capacity(rows.len());
        for (index, bytes) in rows {
            let entry: Entry = codec::decode(&bytes)?;
            if entry.index() != index {
                return Err(io::Error::other(format!(
                    "group {}: log key {index} holds entry {}",
                    self.group,
                    entry.index()
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(META_PURGED)?;
        let last = match self.store.last_log(self.group)? {
            Some((_, bytes)) => Some(codec::decode::<Entry>(&bytes)?.log_id()),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let batch = self.meta_batch(META_VOTE, vote)?;
        self.store.write(batch)?;
        // The vote must be on disk before a vote response leaves this node; the sync also
        // covers every append written before it.
        self.store.syncer().sync_wait(0).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: it only lets a restarted node apply sooner, and it is never ahead of
        // what the synced log holds.
        let batch = self.meta_batch(META_COMMITTED, &committed)?;
        self.store.write(batch)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut count = 0u64;
        for entry in entries {
            let bytes = codec::encode(&entry)?;
            self.store
                .put_log(&mut batch, self.group, entry.index(), &bytes);
            count += 1;
        }
        // Written now, so it can be read back at once; acknowledged once the syncer's next
        // fsync covers it.
        self.store.write(batch)?;
        self.store
            .syncer()
            .sync(count, Box::new(move |r| callback.io_completed(r)));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut batch = WriteBatch::default();
        self.store.delete_log_from(&mut batch, self.group, from);
        self.store.write(batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge marker and the deletion go in one batch: a reader never sees a gap that the
        // marker does not explain.
        let mut batch = self.meta_batch(META_PURGED, &log_id)?;
        self.store
            .delete_log_upto(&mut batch, self.group, log_id.index());
        self.store.write(batch)?;
        Ok(())
    }
}
