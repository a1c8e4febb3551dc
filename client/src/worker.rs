//! A task worker for Rust programs: polls for tasks of some types, runs a handler for each
//! while heartbeating its lease, and reports the outcome. `raftflow worker` is this loop with
//! a handler that runs a command.
//!
//! ```no_run
//! # async fn demo() {
//! use raftflow_client::{run_worker as run, Client, TaskFailure, WorkerOptions};
//! let nodes = vec![Client::new("127.0.0.1:7001", std::time::Duration::from_secs(10))];
//! let opts = WorkerOptions::new(vec!["ship".into()], "shipper-1");
//! run(nodes, opts, |task| async move {
//!     let amount = task.context["amount"].as_u64().unwrap_or(0);
//!     if amount == 0 {
//!         return Err(TaskFailure { error: "nothing to ship".into(), retryable: false });
//!     }
//!     Ok(Some(serde_json::json!({"tracking": format!("T-{}", task.workflow_id)})))
//! }, tokio::signal::ctrl_c()).await;
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::client::{Client, ClientError};
use crate::types::{CompleteTask, FailTask, HeartbeatTask, PollTasks, TaskLease};

/// How many times a worker tries to deliver one outcome before giving up on it (the lease
/// then expires and the task runs again).
const REPORT_ATTEMPTS: u32 = 20;
/// Pause between delivery attempts and after a failed poll.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Heartbeats go out this many times per lease.
const HEARTBEATS_PER_LEASE: u32 = 3;
/// Never heartbeat more often than this.
const MIN_HEARTBEAT_EVERY: Duration = Duration::from_millis(100);

/// What a handler reports when a task did not succeed.
#[derive(Debug, Clone)]
pub struct TaskFailure {
    pub error: String,
    /// false: no retry, `task.failed` fires at once.
    pub retryable: bool,
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub types: Vec<String>,
    /// The worker's name, recorded with each lease.
    pub name: String,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Long-poll wait.
    pub wait_ms: u64,
    /// Lease length to ask for; each task's own `lease_ms` when `None`.
    pub lease_ms: Option<u64>,
}

impl WorkerOptions {
    pub fn new(types: Vec<String>, name: &str) -> Self {
        WorkerOptions {
            types,
            name: name.to_string(),
            concurrency: 4,
            wait_ms: 10_000,
            lease_ms: None,
        }
    }
}

/// What a worker did, for its log line at the end.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Tasks whose lease was lost (expired, withdrawn) before the outcome was accepted.
    pub lost: AtomicU64,
}

struct Shared {
    nodes: Vec<Client>,
    /// The node requests go to; moves on when a node does not answer.
    current: AtomicUsize,
    opts: WorkerOptions,
    stats: Arc<WorkerStats>,
}

impl Shared {
    fn node(&self) -> &Client {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()]
    }

    fn next_node(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls and runs tasks until `shutdown` resolves, then waits for the running tasks to
/// finish and report. Returns what it did.
pub async fn run<H, Fut>(
    nodes: Vec<Client>,
    opts: WorkerOptions,
    handler: H,
    shutdown: impl Future,
) -> Arc<WorkerStats>
where
    H: Fn(TaskLease) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Value>, TaskFailure>> + Send + 'static,
{
    assert!(!nodes.is_empty(), "a worker needs at least one node");
    let concurrency = opts.concurrency.max(1);
    let shared = Arc::new(Shared {
        nodes,
        current: AtomicUsize::new(0),
        opts,
        stats: Arc::default(),
    });
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
            _ = &mut shutdown => break,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let req = PollTasks {
            types: shared.opts.types.clone(),
            worker: shared.opts.name.clone(),
            max: Some(permits.len() as u32),
            wait_ms: Some(shared.opts.wait_ms),
            lease_ms: shared.opts.lease_ms,
        };
        let polled = tokio::select! {
            r = shared.node().poll_tasks(&req) => r,
            _ = &mut shutdown => break,
        };
        match polled {
            Ok(list) => {
                for task in list.tasks {
                    let permit = permits.pop().expect("no more tasks than asked for");
                    let (shared, handler) = (shared.clone(), handler.clone());
                    tokio::spawn(async move {
                        run_task(&shared, task, handler).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll failed");
                if e.is_transient() {
                    shared.next_node();
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    // Graceful stop: every running task finishes and reports before we return.
    let _all = slots
        .acquire_many(concurrency as u32)
        .await
        .expect("semaphore open");
    shared.stats.clone()
}

async fn run_task<H, Fut>(shared: &Shared, task: TaskLease, handler: H)
where
    H: Fn(TaskLease) -> Fut,
    Fut: Future<Output = Result<Option<Value>, TaskFailure>>,
{
    let (id, token) = (task.id.clone(), task.lease_token);
    tracing::info!(task = %id, attempt = task.attempt, token, "running task");
    let every = heartbeat_every(&task.lease_expires_at);
    let outcome = tokio::select! {
        r = handler(task) => r,
        lost = keep_lease(shared, &id, token, every) => {
            tracing::warn!(task = %id, reason = %lost, "lease lost; the task's run was abandoned");
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let stats = &shared.stats;
    let reported = match &outcome {
        Ok(output) => {
            let req = CompleteTask {
                lease_token: token,
                output: output.clone(),
            };
            deliver(shared, |c| {
                let req = req.clone();
                let id = id.clone();
                async move { c.complete_task(&id, &req).await.map(|_| ()) }
            })
            .await
        }
        Err(f) => {
            let req = FailTask {
                lease_token: token,
                error: f.error.clone(),
                retryable: Some(f.retryable),
            };
            deliver(shared, |c| {
                let req = req.clone();
                let id = id.clone();
                async move { c.fail_task(&id, &req).await.map(|_| ()) }
            })
            .await
        }
    };
    match (reported, &outcome) {
        (Ok(()), Ok(_)) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(task = %id, "completed");
        }
        (Ok(()), Err(f)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(task = %id, error = %f.error, "reported failure");
        }
        (Err(e), _) => {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task = %id, error = %e, "outcome not accepted");
        }
    }
}

/// Heartbeats until the lease is lost; returns why.
async fn keep_lease(shared: &Shared, id: &str, token: u64, every: Duration) -> ClientError {
    let req = HeartbeatTask {
        lease_token: token,
        lease_ms: shared.opts.lease_ms,
    };
    loop {
        tokio::time::sleep(every).await;
        match shared.node().heartbeat_task(id, &req).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => shared.next_node(),
            Err(e) => return e,
        }
    }
}

/// Sends one outcome until it is accepted or refused for good.
async fn deliver<F, Fut>(shared: &Shared, send: F) -> Result<(), ClientError>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    let mut last = None;
    for _ in 0..REPORT_ATTEMPTS {
        match send(shared.node().clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                shared.next_node();
                last = Some(e);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Transport("no attempt made".into())))
}

/// A third of the time left on a lease that expires at `expires_at` (RFC 3339).
fn heartbeat_every(expires_at: &str) -> Duration {
    let left = OffsetDateTime::parse(expires_at, &Rfc3339)
        .map(|t| t - OffsetDateTime::now_utc())
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(1));
    (left / HEARTBEATS_PER_LEASE).max(MIN_HEARTBEAT_EVERY)
}
