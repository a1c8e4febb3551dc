//! openraft's `RaftLogStorage` for one group over the node's shared RocksDB.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use raftflow_storage::Batch as WriteBatch;
use raftflow_storage::{codec, Covers, Store};

use super::{Entry, LogId, TypeConfig, Vote};

const META_VOTE: &str = "vote";
const META_PURGED: &str = "purged";

/// The most entries, and encoded bytes of entries, one group keeps in [`Recent`].
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 1 << 20;

/// The entries this group appended last: a contiguous run of the log's tail, so that a
/// leader's replication reads what it has just written without a RocksDB iterator and a
/// decode. Every append, truncation and purge changes it under the same lock as it writes the
/// store, so it always equals the stored entries of its indices.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn push(&mut self, entry: Entry, size: usize) {
        if let Some((last, _)) = self.entries.back() {
            if entry.index() != last.index() + 1 {
                self.entries.clear();
                self.bytes = 0;
            }
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Entries `start..end`, if all of them are here.
    fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.0.index();
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let (from, to) = ((start - first) as usize, (end - first) as usize);
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    /// Drops the entries with `index >= from`.
    fn truncate(&mut self, from: u64) {
        while let Some((e, size)) = self.entries.back() {
            if e.index() < from {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Drops the entries with `index <= upto`.
    fn purge(&mut self, upto: u64) {
        while let Some((e, size)) = self.entries.front() {
            if e.index() > upto {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }
}

/// The log of one group. Cheap to clone: every clone shares the node's store and the group's
/// recent entries.
#[derive(Clone)]
pub struct GroupLogStore {
    group: u64,
    store: Arc<Store>,
    recent: Arc<Mutex<Recent>>,
}

impl GroupLogStore {
    pub fn new(group: u64, store: Arc<Store>) -> Self {
        GroupLogStore {
            group,
            store,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some(entries) = self.recent().range(start, end) {
            return Ok(entries);
        }
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
        self.store.syncer().sync_wait(Covers::NOTHING).await
    }

    // `save_committed` and `read_committed` keep openraft's defaults (nothing is saved): the
    // state machine persists `last_applied` with every applied batch and restarts from it, and
    // a restarted node applies the rest once it hears a commit index from a leader. A saved
    // commit index only let a restarted node apply a little sooner, and it cost a RocksDB write
    // (about 10,000 instructions) for every applied batch of every group.

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
        let mut written = Vec::new();
        // An entry may carry a batch of client commands.
        let mut covers = Covers::NOTHING;
        for entry in entries {
            let bytes = codec::encode(&entry)?;
            self.store
                .put_log(&mut batch, self.group, entry.index(), &bytes);
            covers += Covers {
                entries: 1,
                commands: match &entry.payload {
                    EntryPayload::Normal(stamped) => stamped.command.count() as u64,
                    _ => 0,
                },
            };
            written.push((entry, bytes.len()));
        }
        // Written now, so it can be read back at once; acknowledged once the syncer's next
        // fsync covers it.
        let mut recent = self.recent();
        self.store.write(batch)?;
        for (entry, size) in written {
            recent.push(entry, size);
        }
        drop(recent);
        self.store
            .syncer()
            .sync(covers, Box::new(move |r| callback.io_completed(r)));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut batch = WriteBatch::default();
        self.store.delete_log_from(&mut batch, self.group, from);
        let mut recent = self.recent();
        recent.truncate(from);
        self.store.write(batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge marker and the deletion go in one batch: a reader never sees a gap that the
        // marker does not explain.
        let mut batch = self.meta_batch(META_PURGED, &log_id)?;
        self.store
            .delete_log_upto(&mut batch, self.group, log_id.index());
        let mut recent = self.recent();
        recent.purge(log_id.index());
        self.store.write(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(index: u64) -> Entry {
        Entry::new_blank(openraft::testing::log_id::<TypeConfig>(1, 1, index))
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.index()).collect())
    }

    #[test]
    fn recent_entries_are_a_contiguous_tail_within_their_bounds() {
        let mut r = Recent::default();
        for i in 5..=9 {
            r.push(blank(i), 10);
        }
        assert_eq!(indexes(r.range(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(r.range(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        // Anything not wholly here is read from the store.
        assert_eq!(indexes(r.range(4, 7)), None);
        assert_eq!(indexes(r.range(8, 11)), None);
        assert_eq!(indexes(r.range(7, u64::MAX)), None);

        r.truncate(8);
        assert_eq!(indexes(r.range(5, 8)), Some(vec![5, 6, 7]));
        assert_eq!(indexes(r.range(5, 9)), None);
        r.purge(5);
        assert_eq!(indexes(r.range(6, 8)), Some(vec![6, 7]));
        assert_eq!(r.bytes, 20);

        // An entry that does not follow the tail starts a new run.
        r.push(blank(3), 10);
        assert_eq!(indexes(r.range(3, 4)), Some(vec![3]));
        assert_eq!(indexes(r.range(6, 7)), None);
        assert_eq!(r.bytes, 10);

        // Bounded in bytes: the oldest entries go first.
        for i in 4..4 + 300 {
            r.push(blank(i), RECENT_BYTES / 200);
        }
        assert!(r.bytes <= RECENT_BYTES);
        assert_eq!(r.first_index(), Some(4 + 300 - 200));
    }

    /// Through the store's own calls: a read after a purge does not get purged entries, one
    /// after a truncation not truncated ones, and one after a re-append under a new term the
    /// new entries.
    #[tokio::test]
    async fn reads_follow_truncation_re_append_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = GroupLogStore::new(1, Store::open(dir.path()).unwrap());
        let at = |term, index| openraft::testing::log_id::<TypeConfig>(term, 1, index);
        let entries = |term, range: std::ops::RangeInclusive<u64>| -> Vec<Entry> {
            range.map(|i| Entry::new_blank(at(term, i))).collect()
        };
        let ids = |es: Vec<Entry>| -> Vec<(u64, u64)> {
            es.iter()
                .map(|e| (e.log_id().leader_id.term, e.index()))
                .collect()
        };
        log.append(entries(1, 1..=5), IOFlushed::noop())
            .await
            .unwrap();
        assert_eq!(
            ids(log.try_get_log_entries(2..5).await.unwrap()),
            [(1, 2), (1, 3), (1, 4)]
        );

        log.purge(at(1, 2)).await.unwrap();
        assert_eq!(ids(log.try_get_log_entries(1..4).await.unwrap()), [(1, 3)]);

        log.truncate_after(Some(at(1, 3))).await.unwrap();
        assert_eq!(ids(log.try_get_log_entries(3..6).await.unwrap()), [(1, 3)]);
        log.append(entries(2, 4..=6), IOFlushed::noop())
            .await
            .unwrap();
        assert_eq!(
            ids(log.try_get_log_entries(3..7).await.unwrap()),
            [(1, 3), (2, 4), (2, 5), (2, 6)]
        );
    }
}
