//! One RocksDB per node, shared by every Raft group on it.
//!
//! This crate knows keys, bytes and durability, not workflows or Raft: the `raft` crate encodes
//! its entries and state-machine rows with [`codec`] and stores them here. Three column families
//! hold the data, each keyed by group first so that a group's rows form one contiguous range:
//!
//! - `log`:   `group (u64 BE) ‖ index (u64 BE)` -> encoded log entry
//! - `raft`:  `group (u64 BE) ‖ name`           -> vote, last purged
//! - `state`: `group (u64 BE) ‖ table ‖ key`    -> state-machine rows
//!
//! Durability comes from one WAL fsync per batch of writers (group commit, see [`Syncer`]):
//! appends and votes are written to RocksDB at once (so they can be read back immediately, as
//! openraft requires) and acknowledged only after a later `fsync` of the WAL has covered them.
//! State-machine rows are never synced on their own: the log they were applied from is.
//!
//! A memtable insert starts where the last key of its group's log, of its row, or of its
//! workflow's history went (`insert_hint.cc`), not at the top of the skip list: a workflow's
//! transitions rewrite its row and extend its history, each next to the last.

pub mod codec;
mod error;
mod snapshot;
mod syncer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, DB,
};

pub use error::StorageError;
pub use rocksdb::WriteBatch as Batch;
pub use snapshot::{IncomingSnapshot, SnapshotFile};
pub use syncer::{Covers, SyncStats, Syncer};

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_STATE: &str = "state";

pub type Result<T> = std::result::Result<T, StorageError>;

extern "C" {
    /// Adds raftflow's memtable insert-hint transforms to RocksDB's object registry
    /// (`src/insert_hint.cc`).
    fn raftflow_register_insert_hints();
}

fn register_insert_hints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the C++ function only adds two factories to RocksDB's registry; `Once` keeps it
    // from running twice.
    ONCE.call_once(|| unsafe { raftflow_register_insert_hints() });
}

/// The node's RocksDB with its group-commit syncer.
pub struct Store {
    db: Arc<DB>,
    syncer: Syncer,
    /// Where snapshot files are written and received.
    snapshot_dir: PathBuf,
    /// Groups whose rows a snapshot install is rewriting right now.
    installing: parking_lot::Mutex<HashSet<u64>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Writes since the last sync are only in the WAL's buffer: a clean stop keeps them.
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the WAL at close failed");
        }
    }
}

impl Store {
    /// Opens (or creates) the database under `path`.
    pub fn open(path: &Path) -> Result<Arc<Store>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        // Bound open files and memtable memory for a node with many groups.
        opts.set_max_open_files(512);
        opts.set_write_buffer_size(32 << 20);
        // Writes only fill the WAL's buffer; the syncer writes and fsyncs it once per batch
        // (`FlushWAL(sync)`), so a write costs no system call. A crash loses a suffix of the
        // unsynced writes, never a write acknowledged after a sync. A `kill -9` thus loses
        // what a power cut would, which the failure tests' kills exercise.
        opts.set_manual_wal_flush(true);
        // A writer that finds another writing waits on a condition variable instead of
        // spinning and yielding first: on a node sharing few cores with its peers the
        // spinning only takes time from the writer it waits for.
        opts.set_enable_write_thread_adaptive_yield(false);
        // Start each memtable insert where the last key of its row, history or group went
        // (see `insert_hint.cc`); RocksDB uses the hints only with one memtable writer at a time.
        opts.set_allow_concurrent_memtable_write(false);
        register_insert_hints();
        let with_hint = |name: &str| -> Result<Options> {
            // `get_options_from_string` needs `&mut`, though it only reads: use a copy.
            Ok(opts.clone().get_options_from_string(format!(
                "memtable_insert_with_hint_prefix_extractor={name}"
            ))?)
        };
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, with_hint("raftflow.LogGroupHint")?),
            ColumnFamilyDescriptor::new(CF_RAFT, opts.clone()),
            ColumnFamilyDescriptor::new(CF_STATE, with_hint("raftflow.StateRowHint")?),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let db = Arc::new(db);
        let syncer = Syncer::start(db.clone());
        let snapshot_dir = Store::snapshot_dir_of(path);
        Store::prepare_snapshot_dir(&snapshot_dir)?;
        Ok(Arc::new(Store {
            db,
            syncer,
            snapshot_dir,
            installing: Default::default(),
        }))
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was created at open"))
    }

    /// The group-commit syncer: hand it a callback to run once everything written so far is
    /// on disk.
    pub fn syncer(&self) -> &Syncer {
        &self.syncer
    }

    /// Writes `batch` without waiting for the disk; durability comes from the syncer.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Writes `batch` and fsyncs the WAL before returning (rare, large operations only).
    pub fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        self.write(batch)?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    // ---- log ----------------------------------------------------------------------------

    pub fn put_log(&self, batch: &mut WriteBatch, group: u64, index: u64, value: &[u8]) {
        batch.put_cf(self.cf(CF_LOG), log_key(group, index), value);
    }

    /// Entries of `group` with `start <= index < end`, in index order.
    pub fn log_range(&self, group: u64, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(group, end).to_vec());
        let it = self.db.iterator_cf_opt(
            self.cf(CF_LOG),
            ro,
            IteratorMode::From(&log_key(group, start), Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            out.push((key_index(&k)?, v.into_vec()));
        }
        Ok(out)
    }

    /// The last entry of `group`'s log, if any.
    pub fn last_log(&self, group: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(group, 0).to_vec());
        ro.set_iterate_upper_bound(group_upper_bound(group));
        let mut it = self
            .db
            .iterator_cf_opt(self.cf(CF_LOG), ro, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_index(&k)?, v.into_vec())))
            }
            None => Ok(None),
        }
    }

    /// Deletes entries of `group` with `index >= from`.
    pub fn delete_log_from(&self, batch: &mut WriteBatch, group: u64, from: u64) {
        batch.delete_range_cf(
            self.cf(CF_LOG),
            log_key(group, from).to_vec(),
            group_upper_bound(group),
        );
    }

    /// Deletes entries of `group` with `index <= upto`.
    pub fn delete_log_upto(&self, batch: &mut WriteBatch, group: u64, upto: u64) {
        batch.delete_range_cf(
            self.cf(CF_LOG),
            log_key(group, 0),
            log_key(group, upto.saturating_add(1)),
        );
    }

    // ---- raft metadata ------------------------------------------------------------------

    pub fn put_raft_meta(&self, batch: &mut WriteBatch, group: u64, name: &str, value: &[u8]) {
        batch.put_cf(self.cf(CF_RAFT), meta_key(group, name), value);
    }

    pub fn get_raft_meta(&self, group: u64, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_RAFT), meta_key(group, name))?)
    }

    // ---- state-machine rows -------------------------------------------------------------

    pub fn put_state(&self, batch: &mut WriteBatch, group: u64, key: &[u8], value: &[u8]) {
        batch.put_cf(self.cf(CF_STATE), state_key(group, key), value);
    }

    pub fn delete_state(&self, batch: &mut WriteBatch, group: u64, key: &[u8]) {
        batch.delete_cf(self.cf(CF_STATE), state_key(group, key));
    }

    pub fn get_state(&self, group: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_STATE), state_key(group, key))?)
    }

    /// Rows of `group` whose key starts with `prefix` and sorts after `after` (when given), at
    /// most `limit`. Keys are returned without the group prefix.
    pub fn scan_state(
        &self,
        group: u64,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let from = after.map(key_after);
        self.scan_state_from(group, prefix, from.as_deref(), limit)
    }

    /// Rows of `group` whose key starts with `prefix` and sorts at or after `from` (when
    /// given), at most `limit`. Keys are returned without the group prefix.
    pub fn scan_state_from(
        &self,
        group: u64,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let full_prefix = state_key(group, prefix);
        let mut ro = ReadOptions::default();
        if let Some(upper) = prefix_upper_bound(&full_prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let start = match from {
            Some(f) => state_key(group, f).max(full_prefix.clone()),
            None => full_prefix.clone(),
        };
        let it = self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            ro,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            out.push((k[8..].to_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Deletes everything of `group` (its log, its Raft metadata and its rows), atomically and
    /// durably: what a node does with a replica that left the group.
    pub fn delete_group(&self, group: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        for cf in [CF_LOG, CF_RAFT, CF_STATE] {
            batch.delete_range_cf(
                self.cf(cf),
                group.to_be_bytes().to_vec(),
                group_upper_bound(group),
            );
        }
        self.write_synced(batch)?;
        let _ = std::fs::remove_file(self.install_path(group));
        Ok(())
    }
}

/// Turns off RocksDB's per-thread perf counters on the calling thread. RocksDB counts by default
/// (`kEnableCount`): every key comparison of a memtable insert, every block read, bumps a
/// thread-local counter nobody here reads. Call it on every thread that writes or reads the
/// store (the server's runtime threads, the WAL syncer).
pub fn disable_perf_counters_on_this_thread() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// The smallest key that sorts strictly after `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

fn log_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn key_index(k: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = k
        .get(8..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("log key of {} bytes", k.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn meta_key(group: u64, name: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn state_key(group: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The first key after every key of `group`.
pub(crate) fn group_upper_bound(group: u64) -> Vec<u8> {
    match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    }
}

/// The smallest key greater than every key starting with `prefix`, if one exists.
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut up = prefix.to_vec();
    while let Some(last) = up.pop() {
        if last < 0xff {
            up.push(last + 1);
            return Some(up);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// Key comparisons RocksDB's perf context counts on this thread while it writes 100 rows.
    fn comparisons_counted_writing(s: &Store) -> u64 {
        let keys: Vec<Vec<u8>> = (0..100u64).map(|i| i.to_be_bytes().to_vec()).collect();
        comparisons_writing_state(s, &keys)
    }

    #[test]
    fn perf_counters_stop_counting_on_a_thread_that_turned_them_off() {
        let (_d, s) = open();
        let s2 = s.clone();
        // Each on a thread of its own: the setting is per thread.
        let counted = std::thread::spawn(move || comparisons_counted_writing(&s2))
            .join()
            .unwrap();
        assert!(counted > 0, "RocksDB counts by default");
        let quiet = std::thread::spawn(move || {
            disable_perf_counters_on_this_thread();
            comparisons_counted_writing(&s)
        })
        .join()
        .unwrap();
        assert_eq!(quiet, 0);
    }

    /// Key comparisons RocksDB counts on this thread while it writes `keys` to group 1's state,
    /// one write each.
    fn comparisons_writing_state(s: &Store, keys: &[Vec<u8>]) -> u64 {
        use rocksdb::perf::{PerfContext, PerfMetric};
        let mut ctx = PerfContext::default();
        ctx.reset();
        for key in keys {
            let mut b = WriteBatch::default();
            s.put_state(&mut b, 1, key, b"value");
            s.write(b).unwrap();
        }
        ctx.metric(PerfMetric::UserKeyComparisonCount)
    }

    fn history_key(id: &str, revision: u64) -> Vec<u8> {
        let mut k = format!("h/{id}\0").into_bytes();
        k.extend_from_slice(&revision.to_be_bytes());
        k
    }

    #[test]
    fn rewriting_a_row_or_extending_a_history_starts_where_its_last_write_went() {
        let (_d, s) = open();
        std::thread::spawn(move || {
            // A memtable of 50,000 rows, as a busy node's is.
            let scattered = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let filler: Vec<Vec<u8>> = (0..50_000u64)
                .map(|i| format!("w/filler-{:016x}", scattered(i)).into_bytes())
                .collect();
            comparisons_writing_state(&s, &filler);
            let hot: Vec<String> = (0..64u64)
                .map(|i| format!("hot-{:016x}", scattered(i + 1_000_000)))
                .collect();
            // Each hot workflow's row and first history row, then 10 transitions of each, in turn.
            let first: Vec<Vec<u8>> = hot
                .iter()
                .flat_map(|id| [format!("w/{id}").into_bytes(), history_key(id, 1)])
                .collect();
            let new_rows = comparisons_writing_state(&s, &first);
            let again: Vec<Vec<u8>> = (2..12)
                .flat_map(|rev| {
                    hot.iter()
                        .flat_map(move |id| [format!("w/{id}").into_bytes(), history_key(id, rev)])
                })
                .collect();
            let rewrites = comparisons_writing_state(&s, &again);
            let (per_new, per_rewrite) = (
                new_rows as f64 / first.len() as f64,
                rewrites as f64 / again.len() as f64,
            );
            // Without the hints a rewrite climbs and searches the skip list like a new row (23.4
            // comparisons per rewrite against 21.6 per new row when measured); with them 8.6
            // against 14.7.
            assert!(
                per_rewrite < per_new * 0.75,
                "{per_rewrite:.1} comparisons per rewrite, {per_new:.1} per new row"
            );
            // Odd keys are stored and read back like any other.
            let odd: Vec<Vec<u8>> = vec![
                b"h/".to_vec(),
                b"h/\0".to_vec(),
                history_key("", 7),
                b"h/x\0\0\0\0\0\0\0\0".to_vec(),
                b"a".to_vec(),
                Vec::new(),
            ];
            comparisons_writing_state(&s, &odd);
            for key in odd.iter().chain(&again) {
                assert_eq!(
                    s.get_state(1, key).unwrap().as_deref(),
                    Some(&b"value"[..]),
                    "{key:?}"
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_log_and_state_families_use_raftflows_insert_hints() {
        let (d, _s) = open();
        let options = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .expect("RocksDB writes its options file");
        let text = std::fs::read_to_string(options).unwrap();
        for (cf, hint) in [
            ("log", "raftflow.LogGroupHint"),
            ("state", "raftflow.StateRowHint"),
        ] {
            let section = text
                .split("[CFOptions \"")
                .find(|s| s.starts_with(&format!("{cf}\"")))
                .unwrap_or_else(|| panic!("no options for {cf}"));
            assert!(
                section.contains(&format!(
                    "memtable_insert_with_hint_prefix_extractor={hint}"
                )),
                "{cf}"
            );
        }
    }

    #[test]
    fn log_ranges_stay_within_their_group() {
        let (_d, s) = open();
        let mut b = WriteBatch::default();
        for g in [1u64, 2, 3] {
            for i in 1..=5u64 {
                s.put_log(&mut b, g, i, format!("{g}-{i}").as_bytes());
            }
        }
        s.write(b).unwrap();
        let got = s.log_range(2, 0, 100).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], (1, b"2-1".to_vec()));
        assert_eq!(s.last_log(2).unwrap(), Some((5, b"2-5".to_vec())));
        assert_eq!(s.last_log(9).unwrap(), None);

        let mut b = WriteBatch::default();
        s.delete_log_from(&mut b, 2, 4);
        s.delete_log_upto(&mut b, 2, 1);
        s.write(b).unwrap();
        let idx: Vec<u64> = s
            .log_range(2, 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(idx, vec![2, 3]);
        assert_eq!(s.log_range(1, 0, 100).unwrap().len(), 5);
        assert_eq!(s.log_range(3, 0, 100).unwrap().len(), 5);
    }

    #[test]
    fn state_scan_pages_by_prefix() {
        let (_d, s) = open();
        let mut b = WriteBatch::default();
        for k in ["w/a", "w/b", "w/c", "x/a"] {
            s.put_state(&mut b, 7, k.as_bytes(), b"v");
        }
        s.put_state(&mut b, 8, b"w/z", b"v");
        s.write(b).unwrap();
        let page = s.scan_state(7, b"w/", None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].0, b"w/b".to_vec());
        let rest = s.scan_state(7, b"w/", Some(b"w/b"), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, b"w/c".to_vec());
    }

    fn rows_of(s: &Store, group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        s.visit_group_state(group, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_snapshot_file_installs_the_rows_and_leaves_other_groups() {
        let (_d, from) = open();
        let mut b = WriteBatch::default();
        for i in 0..2_000u32 {
            from.put_state(&mut b, 1, format!("w/{i:05}").as_bytes(), &[7u8; 3000]);
        }
        from.put_state(&mut b, 1, b"a", b"applied");
        from.put_state(&mut b, 2, b"x", b"other group");
        from.write(b).unwrap();
        let (file, applied) = from.export_group_file(1, b"a").unwrap();
        assert_eq!(applied, Some(b"applied".to_vec()));
        assert!(file.len() > 6_000_000, "{}", file.len());

        let (_d2, to) = open();
        let mut b = WriteBatch::default();
        to.put_state(&mut b, 1, b"stale", b"row");
        to.put_state(&mut b, 3, b"y", b"kept");
        to.write(b).unwrap();
        // Receive it in chunks, as a follower does.
        let mut incoming = to.receive_snapshot(1).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        for chunk in bytes.chunks(100_000) {
            incoming.append(chunk).unwrap();
        }
        assert_eq!(incoming.received(), file.len());
        to.install_group_file(1, incoming.finish().unwrap())
            .unwrap();
        assert_eq!(rows_of(&to, 1), rows_of(&from, 1));
        assert_eq!(to.get_state(3, b"y").unwrap(), Some(b"kept".to_vec()));
        assert!(!to.resume_install(1).unwrap(), "nothing left to finish");
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists(), "a sent snapshot file is removed");
        assert_eq!(std::fs::read_dir(&to.snapshot_dir).unwrap().count(), 0);
    }

    #[test]
    fn a_truncated_snapshot_file_is_refused_before_any_row_changes() {
        let (_d, s) = open();
        let mut b = WriteBatch::default();
        s.put_state(&mut b, 1, b"k", b"v");
        s.write(b).unwrap();
        let (file, _) = s.export_group_file(1, b"a").unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        for cut in [0, 4, bytes.len() - 1] {
            let mut incoming = s.receive_snapshot(1).unwrap();
            incoming.append(&bytes[..cut]).unwrap();
            let err = s.install_group_file(1, incoming.finish().unwrap());
            assert!(matches!(err, Err(StorageError::Corrupt(_))), "cut at {cut}");
            assert_eq!(rows_of(&s, 1), vec![(b"k".to_vec(), b"v".to_vec())]);
        }
    }

    #[test]
    fn an_install_a_crash_interrupted_is_finished_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let want = {
            let s = Store::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            for i in 0..100u32 {
                s.put_state(&mut b, 4, format!("w/{i}").as_bytes(), b"new");
            }
            s.write(b).unwrap();
            let (file, _) = s.export_group_file(4, b"a").unwrap();
            let want = rows_of(&s, 4);
            // What a crash leaves: the file at its install path, the mark, and some rows of the
            // install written over the old state.
            std::fs::copy(file.path(), s.install_path(4)).unwrap();
            let mut b = WriteBatch::default();
            s.delete_state(&mut b, 4, b"w/7");
            s.put_state(&mut b, 4, b"w/old", b"old");
            s.put_raft_meta(&mut b, 4, snapshot::INSTALLING, b"1");
            s.write_synced(b).unwrap();
            want
        };
        let s = Store::open(dir.path()).unwrap();
        assert!(s.resume_install(4).unwrap());
        assert_eq!(rows_of(&s, 4), want);
        assert!(!s.install_path(4).exists());
        assert!(!s.resume_install(4).unwrap());
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            s.put_log(&mut b, 1, 1, b"e");
            s.put_raft_meta(&mut b, 1, "vote", b"v");
            s.write(b).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            s.syncer().sync(
                crate::Covers::NOTHING,
                Box::new(move |r| tx.send(r.is_ok()).unwrap()),
            );
            assert!(rx.recv().unwrap());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_log(1).unwrap(), Some((1, b"e".to_vec())));
        assert_eq!(s.get_raft_meta(1, "vote").unwrap(), Some(b"v".to_vec()));
    }
}
