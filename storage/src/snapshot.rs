//! A group's rows as a file: what a leader streams to a replica that needs a snapshot, and how
//! that replica installs it without holding the group in memory or leaving it half-written.
//!
//! The file is the rows in key order, each `key length (u32 LE) ‖ key ‖ value length (u32 LE)
//! ‖ value`, between a magic header and an end mark with the row count, so a truncated or
//! foreign file is refused rather than installed.
//!
//! Installing is crash-safe in bounded batches, the way TiKV applies a region snapshot: the file
//! is renamed to the group's install path and an `installing` mark is written (synced) first;
//! then the group's rows are deleted and the file's rows written batch by batch; the last batch
//! removes the mark and is synced. A node that crashes in between finds the mark when the
//! group opens and does the install again from the file ([`Store::resume_install`]).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::{group_upper_bound, Result, StorageError, Store, CF_STATE};

const MAGIC: &[u8; 8] = b"RFSNAP1\n";
/// A key length that marks the end of the rows; the row count follows.
const END: u32 = u32::MAX;
/// Rows written per batch while installing (bytes of keys and values).
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// The `raft` metadata name of a group's unfinished install.
pub(crate) const INSTALLING: &str = "installing";

/// A snapshot file this node wrote or received. It is removed when dropped: a snapshot is
/// built for one transfer or one install and never kept.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    len: u64,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A snapshot file being received in chunks.
#[derive(Debug)]
pub struct IncomingSnapshot {
    file: BufWriter<File>,
    done: SnapshotFile,
}

impl IncomingSnapshot {
    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.done.len
    }

    pub fn append(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_all(chunk).map_err(io_err)?;
        self.done.len += chunk.len() as u64;
        Ok(())
    }

    /// The whole file (written out; installing it syncs it).
    pub fn finish(self) -> Result<SnapshotFile> {
        let IncomingSnapshot { file, done } = self;
        file.into_inner().map_err(|e| io_err(e.into_error()))?;
        Ok(done)
    }
}

fn io_err(e: std::io::Error) -> StorageError {
    StorageError::Io(e.to_string())
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("snapshot file: {what}"))
}

/// A name no other file of this process has.
fn unique(prefix: &str, group: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-g{group}-{}-{}.snap",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads the rows of a snapshot file in order, checking its header and end mark.
struct SnapshotReader {
    r: BufReader<File>,
    rows: u64,
    ended: bool,
}

impl SnapshotReader {
    fn open(path: &Path) -> Result<SnapshotReader> {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| corrupt("shorter than its header"))?;
        if &magic != MAGIC {
            return Err(corrupt("not a raftflow snapshot"));
        }
        Ok(SnapshotReader {
            r,
            rows: 0,
            ended: false,
        })
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.r
            .read_exact(&mut b)
            .map_err(|_| corrupt("truncated"))?;
        Ok(u32::from_le_bytes(b))
    }

    fn bytes(&mut self, len: u32) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|_| corrupt("truncated"))?;
        Ok(v)
    }

    /// The next row, or `None` after the last one (once the end mark and count check out).
    fn next_row(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.ended {
            return Ok(None);
        }
        let klen = self.u32()?;
        if klen == END {
            let mut b = [0u8; 8];
            self.r
                .read_exact(&mut b)
                .map_err(|_| corrupt("truncated"))?;
            if u64::from_le_bytes(b) != self.rows {
                return Err(corrupt("row count does not match"));
            }
            if self.r.read(&mut [0u8; 1]).map_err(io_err)? != 0 {
                return Err(corrupt("bytes after the end mark"));
            }
            self.ended = true;
            return Ok(None);
        }
        let key = self.bytes(klen)?;
        let vlen = self.u32()?;
        let value = self.bytes(vlen)?;
        self.rows += 1;
        Ok(Some((key, value)))
    }
}

impl Store {
    /// Where snapshot files live: a directory inside the database's.
    pub(crate) fn snapshot_dir_of(db: &Path) -> PathBuf {
        db.join("raftflow-snapshots")
    }

    /// Creates the snapshot directory and removes files a crash left behind (all but the
    /// install files an unfinished install still needs).
    pub(crate) fn prepare_snapshot_dir(dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(io_err)?;
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("out-") || name.starts_with("in-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub(crate) fn install_path(&self, group: u64) -> PathBuf {
        self.snapshot_dir.join(format!("install-g{group}.snap"))
    }

    /// Calls `f` with every state row of `group` (keys without the group prefix), in key
    /// order, from one consistent point in time while writers go on.
    pub fn visit_group_state(
        &self,
        group: u64,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let snap = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_upper_bound(group_upper_bound(group));
        let it = self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            ro,
            IteratorMode::From(&group.to_be_bytes(), Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            f(&k[8..], &v)?;
        }
        Ok(())
    }

    /// Writes every state row of `group`, from one consistent view, to a new snapshot file.
    /// Returns the file and the value of the row `applied_key` (how far the rows have applied
    /// the log), read from the same view.
    pub fn export_group_file(
        &self,
        group: u64,
        applied_key: &[u8],
    ) -> Result<(SnapshotFile, Option<Vec<u8>>)> {
        let mut file = SnapshotFile {
            path: self.snapshot_dir.join(unique("out", group)),
            len: 0,
        };
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&file.path).map_err(io_err)?);
        w.write_all(MAGIC).map_err(io_err)?;
        let mut applied = None;
        let mut rows = 0u64;
        self.visit_group_state(group, |k, v| {
            if k == applied_key {
                applied = Some(v.to_vec());
            }
            let (kl, vl) = (u32::try_from(k.len()), u32::try_from(v.len()));
            let (Ok(kl), Ok(vl)) = (kl, vl) else {
                return Err(StorageError::Corrupt(format!("row of {} bytes", v.len())));
            };
            w.write_all(&kl.to_le_bytes()).map_err(io_err)?;
            w.write_all(k).map_err(io_err)?;
            w.write_all(&vl.to_le_bytes()).map_err(io_err)?;
            w.write_all(v).map_err(io_err)?;
            rows += 1;
            Ok(())
        })?;
        w.write_all(&END.to_le_bytes()).map_err(io_err)?;
        w.write_all(&rows.to_le_bytes()).map_err(io_err)?;
        let w = w.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.len = w.metadata().map_err(io_err)?.len();
        Ok((file, applied))
    }

    /// Starts receiving a snapshot file for `group`.
    pub fn receive_snapshot(&self, group: u64) -> Result<IncomingSnapshot> {
        let path = self.snapshot_dir.join(unique("in", group));
        let file = File::create(&path).map_err(io_err)?;
        Ok(IncomingSnapshot {
            file: BufWriter::with_capacity(1 << 20, file),
            done: SnapshotFile { path, len: 0 },
        })
    }

    /// Replaces every state row of `group` with the rows of `file`, crash-safely and in
    /// bounded batches (see the module's doc). The file is checked whole before any row of
    /// the group changes.
    pub fn install_group_file(&self, group: u64, file: SnapshotFile) -> Result<()> {
        let mut check = SnapshotReader::open(file.path())?;
        while check.next_row()?.is_some() {}
        // The file must outlive a crash before the mark says to finish from it.
        let synced = |p: &Path| File::open(p).and_then(|f| f.sync_all()).map_err(io_err);
        synced(file.path())?;
        let target = self.install_path(group);
        fs::rename(file.path(), &target).map_err(io_err)?;
        synced(&self.snapshot_dir)?;
        drop(file); // its path is gone; the install path is removed once installed
        let mut mark = WriteBatch::default();
        self.put_raft_meta(&mut mark, group, INSTALLING, b"1");
        self.write_synced(mark)?;
        self.install_from(group, &target)
    }

    /// Whether `group` has an install in progress: its rows are not a consistent state.
    pub fn is_installing(&self, group: u64) -> bool {
        self.installing.lock().contains(&group)
    }

    /// Finishes an install of `group` a crash interrupted; a no-op when there is none. Call it
    /// before reading the group's rows.
    pub fn resume_install(&self, group: u64) -> Result<bool> {
        if self.get_raft_meta(group, INSTALLING)?.is_none() {
            return Ok(false);
        }
        let path = self.install_path(group);
        if !path.exists() {
            return Err(StorageError::Corrupt(format!(
                "group {group}: an unfinished snapshot install, but its file {} is gone",
                path.display()
            )));
        }
        tracing::warn!(group, "finishing a snapshot install a crash interrupted");
        self.install_from(group, &path)?;
        Ok(true)
    }

    fn install_from(&self, group: u64, path: &Path) -> Result<()> {
        self.installing.lock().insert(group);
        let result = self.write_rows_from(group, path);
        self.installing.lock().remove(&group);
        result?;
        let _ = fs::remove_file(path);
        Ok(())
    }

    fn write_rows_from(&self, group: u64, path: &Path) -> Result<()> {
        let mut reader = SnapshotReader::open(path)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_STATE),
            group.to_be_bytes().to_vec(),
            group_upper_bound(group),
        );
        let mut bytes = 0;
        while let Some((k, v)) = reader.next_row()? {
            bytes += k.len() + v.len();
            self.put_state(&mut batch, group, &k, &v);
            if bytes >= INSTALL_BATCH_BYTES {
                // Not synced: the WAL keeps the batches in order and the last one is synced.
                self.write(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        batch.delete_cf(self.cf(crate::CF_RAFT), crate::meta_key(group, INSTALLING));
        self.write_synced(batch)
    }
}
