//! `raftflow worker`: runs a shell command for each task of some types.
//!
//! The command gets the workflow's context as JSON on stdin and the task's identity in
//! `RAFTFLOW_TASK_ID`, `RAFTFLOW_WORKFLOW_ID`, `RAFTFLOW_TASK_TYPE` and `RAFTFLOW_ATTEMPT`.
//! Exit status 0 completes the task with the JSON object the command printed (nothing
//! printed: no output). Any other exit fails the attempt with the status and the end of
//! stderr; the engine retries it after backoff while attempts remain.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use raftflow_client::client::Client;
use raftflow_client::types::TaskLease;
use raftflow_client::worker::{self, TaskFailure, WorkerOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of a command's stdout read as its output.
const MAX_STDOUT_BYTES: u64 = 1 << 20;
/// Most bytes of a command's stderr kept for the failure report (its end).
const MAX_STDERR_TAIL: usize = 2048;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Task type to run (repeat for several).
    #[arg(long = "type", required = true)]
    pub types: Vec<String>,
    /// Shell command run once per task (`sh -c`).
    #[arg(long)]
    pub exec: String,
    /// Client addresses of the nodes, comma-separated; any node serves every task.
    #[arg(
        long,
        env = "RAFTFLOW_NODES",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub nodes: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// This worker's name in leases; `{hostname}-{pid}` when absent.
    #[arg(long)]
    pub name: Option<String>,
    /// Lease length to ask for; each task's `lease_ms` (default 30000) when absent.
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Long-poll wait per poll.
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
}

pub async fn run(args: WorkerArgs, access: crate::cli::AccessArgs) -> anyhow::Result<()> {
    let nodes: Vec<Client> = args
        .nodes
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|a| access.apply(Client::new(a.trim(), Duration::from_secs(10))))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!nodes.is_empty(), "--nodes names no node");
    let name = args.name.clone().unwrap_or_else(default_name);
    let mut opts = WorkerOptions::new(args.types.clone(), &name);
    opts.concurrency = args.concurrency.max(1);
    opts.lease_ms = args.lease_ms;
    opts.wait_ms = args.wait_ms;
    tracing::info!(worker = %name, types = ?args.types, exec = %args.exec, "worker polling");
    let exec = args.exec.clone();
    let stats = worker::run(
        nodes,
        opts,
        move |task| run_command(exec.clone(), task),
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping: no new tasks; waiting for running ones to finish");
        },
    )
    .await;
    tracing::info!(
        completed = stats.completed.load(Ordering::Relaxed),
        failed = stats.failed.load(Ordering::Relaxed),
        lost = stats.lost.load(Ordering::Relaxed),
        "worker stopped"
    );
    Ok(())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(100)
        .collect();
    let host = if host.is_empty() {
        "worker".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

async fn run_command(cmd: String, task: TaskLease) -> Result<Option<Value>, TaskFailure> {
    let fail = |error: String| TaskFailure {
        error,
        retryable: true,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("RAFTFLOW_TASK_ID", &task.id)
        .env("RAFTFLOW_WORKFLOW_ID", &task.workflow_id)
        .env("RAFTFLOW_TASK_TYPE", &task.task_type)
        .env("RAFTFLOW_ATTEMPT", task.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A lost lease drops this future: the command must not run on unsupervised.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start `{cmd}`: {e}")))?;
    let input = task.context.to_string();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let write = async move {
        // A command that does not read its stdin closes it early; that is not a failure.
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
    };
    let read_out = async move {
        let mut out = Vec::new();
        let _ = (&mut stdout)
            .take(MAX_STDOUT_BYTES)
            .read_to_end(&mut out)
            .await;
        out
    };
    let read_err = async move {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        err
    };
    let ((), out, err, status) = tokio::join!(write, read_out, read_err, child.wait());
    let status = status.map_err(|e| fail(format!("waiting for `{cmd}`: {e}")))?;
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let tail: String = {
            let chars: Vec<char> = err.trim_end().chars().collect();
            chars[chars.len().saturating_sub(MAX_STDERR_TAIL)..]
                .iter()
                .collect()
        };
        return Err(fail(format!("{status}: {tail}")));
    }
    let text = String::from_utf8_lossy(&out);
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v @ Value::Object(_)) => Ok(Some(v)),
        _ => Err(fail(format!(
            "the command exited 0 but its stdout is not a JSON object: {:?}",
            text.chars().take(200).collect::<String>()
        ))),
    }
}
