//! The `raftflow` binary: `serve` runs a node; `definition`, `workflow`, `task` and `cluster`
//! drive a cluster over its API; `worker` runs tasks; `completions` prints shell completions.
//! The benchmark is its own binary, `raftflow-bench` (cluster-tests).

mod certs;
mod cli;
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
    about = "A durable workflow engine on Raft",
    after_help = "Examples:\n  raftflow definition apply examples/order.json\n  raftflow workflow start order --id order-17\n  raftflow workflow send order-17 pay\n  raftflow cluster status\n\nExit codes: 0 ok, 1 other failure, 2 usage or invalid request, 3 not found, 4 conflict,\n5 unavailable (retry), 6 --wait: ended failed or cancelled, 7 --wait: still running,\n8 denied (no token, an unknown one, or a role that may not)."
)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    #[command(
        after_help = "Example:\n  raftflow serve --id 1 --initial-cluster 1=127.0.0.1:7001/127.0.0.1:8001 --data-dir /var/lib/raftflow"
    )]
    Serve(Box<config::ServeArgs>),
    /// Definitions: apply, get, list, versions.
    #[command(subcommand, visible_alias = "def")]
    Definition(cli::DefinitionCmd),
    /// Workflows: start, get, list, send an event, cancel, history.
    #[command(subcommand, visible_alias = "wf")]
    Workflow(cli::WorkflowCmd),
    /// Tasks: poll, get, complete, fail, heartbeat.
    #[command(subcommand)]
    Task(cli::TaskCmd),
    /// The cluster: status, nodes, groups, digest, health, metrics, openapi.
    #[command(subcommand)]
    Cluster(cli::ClusterCmd),
    /// Same as `cluster status`.
    #[command(after_help = "Example:\n  raftflow status --addr 127.0.0.1:7002")]
    Status,
    /// Run a command for each task of the given types: context on stdin, output on stdout.
    #[command(after_help = "Example:\n  raftflow worker --type ship --exec examples/ship.sh")]
    Worker(worker::WorkerArgs),
    /// Make a local CA and node certificates for mutual TLS between peers.
    #[command(
        after_help = "Example:\n  raftflow certs --dir certs --node 1=127.0.0.1 --node 2=127.0.0.1 --node 3=127.0.0.1\n  raftflow serve ... --peer-ca certs/ca.pem --peer-cert certs/node-1.pem --peer-key certs/node-1-key.pem"
    )]
    Certs(certs::CertsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  source <(raftflow completions bash)")]
    Completions { shell: clap_complete::Shell },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Serve(_) | Cmd::Worker(_)) {
        // A command whose output goes to `head` ends when the reader goes, as Unix tools do,
        // not with a panic on the broken pipe. Rust ignores SIGPIPE; the node and the worker
        // keep that, so a peer that goes away is an error to handle, not the end.
        // SAFETY: sets a signal's disposition to its default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let client_cmd = match cli.command {
        Cmd::Serve(args) => {
            let mut cfg = config::resolve(*args)?;
            cfg.join_token = cli.global.access.resolve()?;
            if let Some(ca) = cli.global.access.ca_pem()? {
                cfg.join_ca = Some(ca);
            }
            init_logging(&cfg.log_format);
            raftflow_storage::disable_perf_counters_on_this_thread();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("raftflow")
                .on_thread_start(raftflow_storage::disable_perf_counters_on_this_thread)
                .build()?;
            return rt.block_on(serve(cfg));
        }
        Cmd::Worker(args) => {
            init_logging("text");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(worker::run(args, cli.global.access.clone()));
        }
        Cmd::Certs(args) => return certs::run(args),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "raftflow", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Definition(c) => cli::ClientCmd::Definition(c),
        Cmd::Workflow(c) => cli::ClientCmd::Workflow(c),
        Cmd::Task(c) => cli::ClientCmd::Task(c),
        Cmd::Cluster(c) => cli::ClientCmd::Cluster(c),
        Cmd::Status => cli::ClientCmd::Cluster(cli::ClusterCmd::Status),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(cli::run(&cli.global, client_cmd));
    std::process::exit(code);
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

/// How long `serve --join` keeps trying to reach the cluster before it gives up.
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// `serve --join URL`: learns the cluster's members and number of groups from the member at
/// `url` and registers this node (`POST /v1/cluster/nodes`; a restart registers again and gets
/// 200). Retries while the member is unreachable or the cluster unavailable, for up to
/// `JOIN_PATIENCE`; a refusal (a taken id) ends the process with the cluster's message.
async fn join_cluster(url: &str, cfg: &mut config::Config) -> anyhow::Result<()> {
    use raftflow_client::client::Method;
    // The token given, else an admin token of the node's own token file (a cluster's nodes
    // usually share one).
    let token = cfg.join_token.clone().or_else(|| {
        cfg.token_file
            .as_deref()
            .and_then(raftflow_api::auth::admin_token)
    });
    let mut client =
        raftflow_client::Client::new(url, std::time::Duration::from_secs(10)).with_token(token);
    if let Some(ca) = &cfg.join_ca {
        client = client.with_ca(ca).map_err(anyhow::Error::msg)?;
    }
    let me = cfg.node.members[&cfg.node.id].clone();
    let body = serde_json::json!({
        "id": cfg.node.id, "client_addr": me.client, "peer_addr": me.peer,
    });
    let give_up = std::time::Instant::now() + JOIN_PATIENCE;
    loop {
        let attempt = async {
            let cluster = client.cluster().await?;
            let (status, node) = client
                .request(Method::POST, "/v1/cluster/nodes", Some(&body))
                .await?;
            Ok::<_, raftflow_client::ClientError>((cluster, status, node))
        };
        match attempt.await {
            Ok((cluster, status, node)) => {
                for n in cluster.nodes.iter().filter(|n| n.state != "removed") {
                    cfg.node
                        .members
                        .entry(n.id)
                        .or_insert(raftflow_raft::NodeAddr {
                            client: n.client_addr.clone(),
                            peer: n.peer_addr.clone(),
                        });
                }
                cfg.node.groups = cluster.groups.iter().filter(|g| g.kind == "data").count() as u64;
                tracing::info!(
                    node = cfg.node.id,
                    through = url,
                    state = node.get("state").and_then(|s| s.as_str()).unwrap_or("?"),
                    new = status == 201,
                    groups = cfg.node.groups,
                    "registered with the cluster"
                );
                return Ok(());
            }
            Err(e) if e.is_transient() && std::time::Instant::now() < give_up => {
                tracing::warn!(through = url, error = %e, "cannot join yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("joining the cluster through {url}: {e}"),
        }
    }
}

async fn serve(mut cfg: config::Config) -> anyhow::Result<()> {
    if let Some(url) = cfg.join.clone() {
        join_cluster(&url, &mut cfg).await?;
    }
    let node = raftflow_raft::RaftNode::start(cfg.node.clone())
        .await
        .context("starting the node")?;
    let auth = match &cfg.token_file {
        Some(path) => raftflow_api::auth::Auth::from_file(path).map_err(anyhow::Error::msg)?,
        None => raftflow_api::auth::Auth::open(),
    };
    let state = raftflow_api::AppState::with_auth(node.clone(), cfg.api.clone(), auth);
    tokio::spawn(reload_tokens_on_sighup(state.clone()));
    let app = raftflow_api::router(state);
    raftflow_api::serve::raise_open_files_limit(&cfg.serve_limits);
    let listener = raftflow_api::serve::bind(&cfg.client_listen)
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
    let removed = {
        let node = node.clone();
        async move {
            node.wait_removed().await;
            tracing::warn!(
                node = node.id(),
                "this node was removed from the cluster: it holds no replica any more and stops serving"
            );
        }
    };
    let tls = cfg.client_tls.clone();
    raftflow_api::serve::serve(listener, app, cfg.serve_limits.clone(), tls, async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = removed => {}
        }
    })
    .await;
    tracing::info!("shutting down");
    node.shutdown().await;
    drop(Arc::try_unwrap(node).ok());
    Ok(())
}

/// Reads the token file again on every SIGHUP; a file that does not parse leaves the tokens
/// in use as they were.
async fn reload_tokens_on_sighup(state: raftflow_api::AppState) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match state.auth.reload() {
            Ok(n) => tracing::info!(tokens = n, "SIGHUP: the token file is reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the token file was not reloaded; the tokens in use stay")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser;

    use super::Cli;

    /// Every route of the API and the command that calls it.
    const ROUTES: &[(&str, &str, &str)] = &[
        (
            "PUT",
            "/v1/definitions/{name}",
            "definition apply order.yaml",
        ),
        ("GET", "/v1/definitions/{name}", "definition get order"),
        (
            "GET",
            "/v1/definitions/{name}/versions/{version}",
            "definition get order --version 1",
        ),
        ("GET", "/v1/definitions", "definition list"),
        ("POST", "/v1/workflows", "workflow start order --id o-1"),
        ("GET", "/v1/workflows/{id}", "workflow get o-1"),
        ("POST", "/v1/workflows/{id}/events", "workflow send o-1 pay"),
        ("POST", "/v1/workflows/{id}/cancel", "workflow cancel o-1"),
        ("GET", "/v1/workflows/{id}/history", "workflow history o-1"),
        ("GET", "/v1/workflows", "workflow list --status running"),
        ("POST", "/v1/tasks/poll", "task poll --type ship"),
        ("GET", "/v1/tasks/{id}", "task get o-1:2"),
        (
            "POST",
            "/v1/tasks/{id}/complete",
            "task complete o-1:2 --lease-token 1",
        ),
        (
            "POST",
            "/v1/tasks/{id}/fail",
            "task fail o-1:2 --lease-token 1 --error x",
        ),
        (
            "POST",
            "/v1/tasks/{id}/heartbeat",
            "task heartbeat o-1:2 --lease-token 1",
        ),
        ("GET", "/v1/cluster", "cluster status"),
        (
            "POST",
            "/v1/cluster/nodes",
            "cluster add-node 4 --client-addr 127.0.0.1:7004 --peer-addr 127.0.0.1:8004",
        ),
        ("DELETE", "/v1/cluster/nodes/{id}", "cluster remove-node 4"),
        ("POST", "/v1/cluster/groups", "cluster add-group"),
        (
            "DELETE",
            "/v1/cluster/groups/{id}",
            "cluster retire-group 9",
        ),
        ("GET", "/v1/cluster/groups/{id}/digest", "cluster digest 1"),
        ("GET", "/healthz", "cluster health"),
        ("GET", "/readyz", "cluster health"),
        ("GET", "/metrics", "cluster metrics"),
        ("GET", "/openapi.json", "cluster openapi"),
    ];

    #[test]
    fn every_route_of_the_api_has_a_cli_command() {
        // The console is a page for browsers, not an API call.
        let served: BTreeSet<(String, String)> = raftflow_api::openapi_routes()
            .into_iter()
            .filter(|(_, path)| path != "/ui/")
            .collect();
        let covered: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(served, covered, "routes and CLI commands differ");
        for (_, _, command) in ROUTES {
            let args = std::iter::once("raftflow").chain(command.split(' '));
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("`raftflow {command}` does not parse: {e}");
            }
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name()).trim().to_string();
            let subs: Vec<&clap::Command> = cmd
                .get_subcommands()
                .filter(|c| c.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Example") {
                    missing.push(name.clone());
                }
            }
            for s in subs {
                walk(s, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<Cli as clap::CommandFactory>::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }
}
