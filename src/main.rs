//! The `raftflow` binary: `serve` runs a node, `status` shows a cluster, `worker` runs tasks.
//! The benchmark is its own binary, `raftflow-bench` (cluster-tests).

mod config;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc: a request allocates and frees many small buffers; glibc's malloc was ~8% of a
/// node's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "raftflow",
    version,
    about = "A durable workflow engine on Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve(Box<config::ServeArgs>),
    /// Show a node's view of the cluster: nodes, groups and their leaders.
    Status {
        /// Client address of any node.
        #[arg(long, default_value = "127.0.0.1:7001")]
        node: String,
    },
    /// Run a command for each task of the given types: context on stdin, output on stdout.
    Worker(worker::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => {
            let cfg = config::resolve(*args)?;
            init_logging(&cfg.log_format);
            raftflow_storage::disable_perf_counters_on_this_thread();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("raftflow")
                .on_thread_start(raftflow_storage::disable_perf_counters_on_this_thread)
                .build()?;
            rt.block_on(serve(cfg))
        }
        Cmd::Status { node } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(status(&node))
        }
        Cmd::Worker(args) => {
            init_logging("text");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(worker::run(args))
        }
    }
}

fn init_logging(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let node = raftflow_raft::RaftNode::start(cfg.node.clone())
        .await
        .context("starting the node")?;
    let state = raftflow_api::AppState::new(node.clone(), cfg.api.clone());
    let app = raftflow_api::router(state);
    let listener = tokio::net::TcpListener::bind(&cfg.client_listen)
        .await
        .with_context(|| format!("binding the client address {}", cfg.client_listen))?;
    tracing::info!(
        node = cfg.node.id,
        client = %cfg.client_listen,
        peer = %cfg.node.peer_listen,
        groups = cfg.node.groups,
        data_dir = %cfg.node.data_dir.display(),
        "raftflow node serving"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down");
    node.shutdown().await;
    drop(Arc::try_unwrap(node).ok());
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn status(node: &str) -> anyhow::Result<()> {
    let client = raftflow_client::client::Client::new(node, std::time::Duration::from_secs(3));
    let c = client
        .cluster()
        .await
        .with_context(|| format!("asking {node}"))?;
    println!("as seen by node {}:", c.node_id);
    for n in &c.nodes {
        let r = if n.reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        };
        println!(
            "  node {}  client {}  peer {}  {r}",
            n.id, n.client_addr, n.peer_addr
        );
    }
    println!(
        "  {:<6} {:<5} {:>7} {:>5} {:>12} {:>10}",
        "group", "kind", "leader", "term", "last_applied", "voters"
    );
    for g in &c.groups {
        let leader = g
            .leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into());
        let applied = g
            .last_applied
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into());
        let voters = format!("{:?}", g.voters);
        println!(
            "  {:<6} {:<5} {:>7} {:>5} {:>12} {:>10}",
            g.id, g.kind, leader, g.term, applied, voters
        );
    }
    let mut led = std::collections::BTreeMap::<u64, usize>::new();
    for g in c.groups.iter().filter(|g| g.kind == "data") {
        if let Some(l) = g.leader {
            *led.entry(l).or_default() += 1;
        }
    }
    println!("  data groups led per node: {led:?}");
    Ok(())
}
