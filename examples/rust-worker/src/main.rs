//! Runs `ship` tasks until Ctrl-C, as the README's walk through does with `examples/ship.sh`:
//! `cargo run --manifest-path examples/rust-worker/Cargo.toml` with `make cluster` running.
//! `RAFTFLOW_NODES` (comma-separated `host:port`) picks the nodes; all three local ones by default.

use std::time::Duration;

use raftflow_client::{run_worker, Client, TaskFailure, WorkerOptions};

#[tokio::main]
async fn main() {
    let nodes = std::env::var("RAFTFLOW_NODES")
        .unwrap_or_else(|_| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let nodes: Vec<Client> = nodes
        .split(',')
        .map(|addr| Client::new(addr.trim(), Duration::from_secs(10)))
        .collect();
    let options = WorkerOptions::new(vec!["ship".into()], "rust-shipper-1");
    let stats = run_worker(
        nodes,
        options,
        |task| async move {
            if task.context["amount"].as_u64().unwrap_or(0) == 0 {
                return Err(TaskFailure {
                    error: "nothing to ship".into(),
                    retryable: false,
                });
            }
            Ok(Some(
                serde_json::json!({"tracking": format!("T-{}", task.workflow_id)}),
            ))
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    println!("{stats:?}");
}
