//! Group commit: one thread fsyncs the WAL once for every batch of waiting writers.
//!
//! Writers put their data into RocksDB without syncing, then hand the syncer a callback. The
//! syncer takes every request that is waiting (up to [`MAX_SYNC_BATCH`]), issues one WAL fsync,
//! which covers every write made before it, and then runs the callbacks in submission order.
//! Under load, one fsync acknowledges the appends of many groups and many clients.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rocksdb::DB;

/// Most requests one fsync acknowledges; bounds the latency of the last callback in a batch.
pub const MAX_SYNC_BATCH: usize = 4096;

/// Runs once the writes made before the request are durable (or failed to become so).
pub type SyncDone = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Request {
    entries: u64,
    done: SyncDone,
}

/// Counters for `/metrics`: entries per fsync is `entries / syncs`.
#[derive(Default, Debug)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    pub requests: AtomicU64,
    pub entries: AtomicU64,
}

pub struct Syncer {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<SyncStats>,
}

impl Syncer {
    pub(crate) fn start(db: Arc<DB>) -> Syncer {
        let (tx, rx) = mpsc::channel::<Request>();
        let stats = Arc::new(SyncStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || run(db, rx, thread_stats))
            .expect("spawn wal-sync thread");
        Syncer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
        }
    }

    /// Runs `done` once every write made before this call is on disk. `entries` counts the
    /// log entries this request covers (for the entries-per-fsync metric).
    pub fn sync(&self, entries: u64, done: SyncDone) {
        let tx = self.tx.lock().expect("syncer lock");
        match tx.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(req)) = tx.send(Request { entries, done }) {
                    (req.done)(Err(io::Error::other("wal-sync thread has stopped")));
                }
            }
            None => done(Err(io::Error::other("store is closing"))),
        }
    }

    /// Waits until every write made before this call is on disk.
    pub async fn sync_wait(&self, entries: u64) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("wal-sync thread dropped a request")))
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it has served every queued request.
        drop(self.tx.lock().map(|mut t| t.take()));
        if let Ok(mut t) = self.thread.lock() {
            if let Some(handle) = t.take() {
                let _ = handle.join();
            }
        }
    }
}

fn run(db: Arc<DB>, rx: mpsc::Receiver<Request>, stats: Arc<SyncStats>) {
    let mut batch = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_SYNC_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let result = db.flush_wal(true);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let entries: u64 = batch.iter().map(|r| r.entries).sum();
        stats.entries.fetch_add(entries, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL fsync failed");
        }
        for req in batch.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(format!("WAL fsync failed: {e}"))),
            };
            (req.done)(r);
        }
    }
}
