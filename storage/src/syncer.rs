//! Group commit: one thread fsyncs the WAL once for every batch of waiting writers.
//!
//! Writers put their data into RocksDB without syncing, then hand the syncer a callback. The
//! syncer takes every request that is waiting (up to [`MAX_SYNC_BATCH`]), issues one WAL fsync,
//! which covers every write made before it, and then runs the callbacks in submission order.
//! Under load, one fsync acknowledges the appends of many groups and many clients.
//!
//! While writers keep coming (the last batch had more than one request), a batch covering fewer
//! than [`GATHER_COMMANDS`] client commands waits up to [`GATHER_WAIT`] for more before it
//! syncs: on a
//! CPU-bound node an fsync and its wake-ups cost more than the wait. A lone writer never waits.
//! Writers wake the thread only when that ends its wait (the queue was empty, or the gathered
//! batch is full), not for every request it gathers.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::DB;

/// Most requests one fsync acknowledges; bounds the latency of the last callback in a batch.
pub const MAX_SYNC_BATCH: usize = 4096;

/// Under load, a batch covering fewer client commands waits for more (up to [`GATHER_WAIT`]).
pub const GATHER_COMMANDS: u64 = 16;
/// The longest a batch waits for company; bounds the latency group commit adds.
pub const GATHER_WAIT: Duration = Duration::from_micros(1500);

/// Runs once the writes made before the request are durable (or failed to become so).
pub type SyncDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// What a sync request makes durable: log entries, and the client commands they carry (an
/// entry may carry a batch of commands; see `raftflow_raft::command::Command::Batch`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Covers {
    pub entries: u64,
    pub commands: u64,
}

impl Covers {
    /// A request that makes nothing new durable (a vote), or that no one counts.
    pub const NOTHING: Covers = Covers {
        entries: 0,
        commands: 0,
    };
}

impl std::ops::AddAssign for Covers {
    fn add_assign(&mut self, other: Covers) {
        self.entries += other.entries;
        self.commands += other.commands;
    }
}

struct Request {
    covers: Covers,
    done: SyncDone,
}

/// Counters for `/metrics`: entries per fsync is `entries / syncs`, client commands per fsync
/// `commands / syncs`.
#[derive(Default, Debug)]
pub struct SyncStats {
    pub syncs: AtomicU64,
    pub requests: AtomicU64,
    pub entries: AtomicU64,
    pub commands: AtomicU64,
    /// Time spent in the fsyncs (writing the WAL's buffer and waiting for the disk), in µs:
    /// divided by `syncs`, what one group commit costs on this disk.
    pub sync_micros: AtomicU64,
}

/// The requests waiting for the next fsync. parking_lot's timed wait sleeps for a relative
/// time; std's sleeps until an absolute monotonic deadline, which the failure suite's clock
/// fault (libfaketime) moves far away.
#[derive(Default)]
struct Queue {
    state: parking_lot::Mutex<Pending>,
    wake: parking_lot::Condvar,
}

#[derive(Default)]
struct Pending {
    requests: VecDeque<Request>,
    /// Client commands the waiting requests cover.
    commands: u64,
    closed: bool,
    /// What the syncer thread is waiting for, so that a writer wakes it only when the wait is
    /// over: a wake-up that finds the batch still short costs two context switches for nothing.
    waiting: Waiting,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Syncing, or about to look at the queue: no wake-up needed.
    #[default]
    No,
    /// The queue was empty: any request ends the wait.
    ForRequests,
    /// Gathering a batch: only a full one ends the wait early.
    ForBatch,
}

impl Pending {
    fn batch_full(&self) -> bool {
        self.commands >= GATHER_COMMANDS || self.requests.len() >= MAX_SYNC_BATCH
    }

    fn wants_wake(&self) -> bool {
        match self.waiting {
            Waiting::No => false,
            Waiting::ForRequests => true,
            Waiting::ForBatch => self.batch_full(),
        }
    }
}

pub struct Syncer {
    queue: Arc<Queue>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<SyncStats>,
}

impl Syncer {
    pub(crate) fn start(db: Arc<DB>) -> Syncer {
        let queue = Arc::new(Queue::default());
        let stats = Arc::new(SyncStats::default());
        let (thread_queue, thread_stats) = (queue.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                crate::disable_perf_counters_on_this_thread();
                run(db, thread_queue, thread_stats)
            })
            .expect("spawn wal-sync thread");
        Syncer {
            queue,
            thread: Mutex::new(Some(thread)),
            stats,
        }
    }

    /// Runs `done` once every write made before this call is on disk. `covers` is what this
    /// request makes durable, for the metrics and for gathering a batch.
    pub fn sync(&self, covers: Covers, done: SyncDone) {
        let mut pending = self.queue.state.lock();
        if pending.closed {
            drop(pending);
            return done(Err(io::Error::other("store is closing")));
        }
        pending.requests.push_back(Request { covers, done });
        pending.commands += covers.commands;
        let wake = pending.wants_wake();
        drop(pending);
        if wake {
            self.queue.wake.notify_one();
        }
    }

    /// Waits until every write made before this call is on disk.
    pub async fn sync_wait(&self, covers: Covers) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync(
            covers,
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
        // The thread serves every queued request, then ends.
        self.queue.state.lock().closed = true;
        self.queue.wake.notify_one();
        if let Ok(mut t) = self.thread.lock() {
            if let Some(handle) = t.take() {
                let _ = handle.join();
            }
        }
    }
}

fn run(db: Arc<DB>, queue: Arc<Queue>, stats: Arc<SyncStats>) {
    let mut batch: Vec<Request> = Vec::with_capacity(64);
    let mut busy = false;
    loop {
        let covers = {
            let mut pending = queue.state.lock();
            while pending.requests.is_empty() {
                if pending.closed {
                    return;
                }
                pending.waiting = Waiting::ForRequests;
                queue.wake.wait(&mut pending);
                pending.waiting = Waiting::No;
            }
            if busy && !pending.closed {
                let gather_until = Instant::now() + GATHER_WAIT;
                while !pending.batch_full() && !pending.closed {
                    pending.waiting = Waiting::ForBatch;
                    let timed_out = queue
                        .wake
                        .wait_until(&mut pending, gather_until)
                        .timed_out();
                    pending.waiting = Waiting::No;
                    if timed_out {
                        break;
                    }
                }
            }
            let n = pending.requests.len().min(MAX_SYNC_BATCH);
            batch.extend(pending.requests.drain(..n));
            let mut covers = Covers::NOTHING;
            for r in &batch {
                covers += r.covers;
            }
            pending.commands -= covers.commands;
            covers
        };
        busy = batch.len() > 1;
        let started = Instant::now();
        let result = db.flush_wal(true);
        stats
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.entries.fetch_add(covers.entries, Ordering::Relaxed);
        stats.commands.fetch_add(covers.commands, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn open() -> (tempfile::TempDir, Arc<DB>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(DB::open_default(dir.path()).unwrap());
        (dir, db)
    }

    const ONE: Covers = Covers {
        entries: 1,
        commands: 1,
    };

    #[test]
    fn every_request_of_a_burst_and_a_lone_one_after_it_are_answered_in_order() {
        let (_d, db) = open();
        db.put(b"k", b"v").unwrap();
        let syncer = Syncer::start(db);
        let (tx, rx) = mpsc::channel();
        for i in 0..100u64 {
            let tx = tx.clone();
            // Every tenth request covers one entry carrying a batch of 8 commands.
            let covers = if i % 10 == 0 {
                Covers {
                    entries: 1,
                    commands: 8,
                }
            } else {
                ONE
            };
            syncer.sync(covers, Box::new(move |r| tx.send((i, r.is_ok())).unwrap()));
        }
        let got: Vec<(u64, bool)> = (0..100).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got, (0..100).map(|i| (i, true)).collect::<Vec<_>>());
        // After a burst the syncer gathers; a request with no company is still served.
        syncer.sync(ONE, Box::new(move |r| tx.send((100, r.is_ok())).unwrap()));
        assert_eq!(rx.recv().unwrap(), (100, true));
        let stats = syncer.stats();
        assert_eq!(stats.requests.load(Ordering::Relaxed), 101);
        assert_eq!(stats.entries.load(Ordering::Relaxed), 101);
        assert_eq!(stats.commands.load(Ordering::Relaxed), 101 + 10 * 7);
        assert!(stats.syncs.load(Ordering::Relaxed) <= 101);
        assert!(stats.sync_micros.load(Ordering::Relaxed) > 0);
    }
}
