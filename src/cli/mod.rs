//! The `raftflow` commands that drive a cluster over its HTTP API: definitions, workflows,
//! tasks and the cluster. Every route of `docs/API.md` has one.
//!
//! People get aligned tables and relative times (colour on a terminal only); scripts pass
//! `-o json` and get the API's JSON body as it came. The exit code says what failed (see
//! [`ExitCode`]) and the error's stable code is printed.

mod commands;
mod output;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use raftflow_client::{Client, ClientError, ErrorCode};

pub use commands::run;

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Client addresses of the cluster's nodes, comma-separated; a node that cannot be reached
    /// is skipped for the next.
    #[arg(
        long,
        global = true,
        env = "RAFTFLOW_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub addr: Vec<String>,
    /// `text` for people, `json` for scripts (the API's JSON as it came).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How long one request may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// How a client command, a worker or a joining node gets into a secured cluster: the API
/// token it sends (a cluster started with `--token-file`) and the CA it trusts for
/// `https://` addresses (a cluster started with `--client-cert`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// The API token (`Authorization: Bearer`).
    #[arg(long, global = true, env = "RAFTFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file whose first line is the API token (instead of --token).
    #[arg(
        long,
        global = true,
        env = "RAFTFLOW_TOKEN_PATH",
        conflicts_with = "token"
    )]
    pub token_path: Option<std::path::PathBuf>,
    /// A CA certificate file (PEM) to trust for `https://` addresses, beside the system's.
    #[arg(long, global = true, env = "RAFTFLOW_CA")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl AccessArgs {
    /// `client` with the token and the CA given, if any.
    pub fn apply(&self, client: Client) -> anyhow::Result<Client> {
        let client = client.with_token(self.resolve()?);
        match self.ca_pem()? {
            Some(pem) => client.with_ca(&pem).map_err(anyhow::Error::msg),
            None => Ok(client),
        }
    }

    /// The CA file's text, if one was given.
    pub fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("reading the CA file {}: {e}", path.display()))
    }

    /// The token given, if any; a token path that cannot be read is an error.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
        }
        let Some(path) = &self.token_path else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the token from {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
        Ok(Some(token))
    }
}

impl Global {
    pub fn client(&self) -> anyhow::Result<Client> {
        self.access.apply(Client::with_addrs(
            &self.addr,
            Duration::from_millis(self.timeout_ms),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// What the exit status of a client command means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// Anything not below: an unexpected answer, a 5xx that is a bug.
    Failed = 1,
    /// Bad flags or arguments, or a request the API refused as invalid (400, 413, 422).
    Usage = 2,
    /// 404: no such workflow, definition, task or route.
    NotFound = 3,
    /// 409: the workflow exists, the revision moved, the lease was lost.
    Conflict = 4,
    /// No node answered, or the cluster could not serve it now (429, 503, 507): retry later.
    Unavailable = 5,
    /// `--wait`: the workflow ended `failed` or `cancelled`.
    EndedUnsuccessfully = 6,
    /// `--wait`: the workflow was still running when the wait ran out.
    WaitTimedOut = 7,
    /// 401 or 403: no token, an unknown one, or one whose role may not do this.
    Denied = 8,
}

impl ExitCode {
    fn of(err: &ClientError) -> ExitCode {
        match err {
            ClientError::Transport(_) => ExitCode::Unavailable,
            ClientError::Api { status, code, .. } => match (status, code) {
                (404, _) | (_, ErrorCode::NotFound) => ExitCode::NotFound,
                (409, _) => ExitCode::Conflict,
                (401 | 403, _) => ExitCode::Denied,
                (400 | 413 | 422, _) => ExitCode::Usage,
                (429 | 503 | 507, _) => ExitCode::Unavailable,
                _ => ExitCode::Failed,
            },
        }
    }
}

/// `raftflow definition ...`
#[derive(Subcommand, Debug)]
pub enum DefinitionCmd {
    /// Store a definition from a JSON or YAML file (a new version when it changed).
    #[command(after_help = "Example:\n  raftflow definition apply examples/order.json")]
    Apply {
        /// The definition: `.yaml`/`.yml` is read as YAML, anything else as JSON; `-` is stdin.
        file: String,
        /// The name to store it under; the file's `name` when absent.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a definition: its latest version, or the one given.
    #[command(after_help = "Example:\n  raftflow definition get order --version 1")]
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// List every definition with its latest version.
    #[command(after_help = "Example:\n  raftflow definition list")]
    List,
    /// List a definition's versions, newest last.
    #[command(after_help = "Example:\n  raftflow definition versions order")]
    Versions {
        name: String,
        /// Show at most this many of the newest versions.
        #[arg(long, default_value_t = 100)]
        last: u32,
    },
}

/// `raftflow workflow ...`
#[derive(Subcommand, Debug)]
pub enum WorkflowCmd {
    /// Start a workflow of a definition.
    #[command(
        after_help = "Example:\n  raftflow workflow start order --id order-17 --context '{\"amount\": 30}'"
    )]
    Start {
        /// The definition's name.
        definition: String,
        /// The workflow's id, `[A-Za-z0-9_.:-]{1,128}`; generated when absent. Starting the same
        /// id with the same request again is an idempotent retry.
        #[arg(long)]
        id: Option<String>,
        /// Pin a version of the definition; the latest when absent.
        #[arg(long)]
        version: Option<u32>,
        /// The initial context: a JSON object, or `@FILE`.
        #[arg(long)]
        context: Option<String>,
        /// Wait until the workflow ends, showing its progress.
        #[arg(long)]
        wait: bool,
        /// Longest wait with `--wait`, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_timeout_s: u64,
    },
    /// Show a workflow (linearizable unless `--local`).
    #[command(after_help = "Example:\n  raftflow workflow get order-17 --wait")]
    Get {
        id: String,
        /// Read this node's replica: fast, possibly stale.
        #[arg(long)]
        local: bool,
        /// Wait until the workflow ends, showing its progress.
        #[arg(long)]
        wait: bool,
        /// Longest wait with `--wait`, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_timeout_s: u64,
    },
    /// List workflows over every group, newest first, with the API's filters and paging.
    #[command(
        after_help = "Example:\n  raftflow workflow list --definition order --status running"
    )]
    List {
        #[arg(long)]
        definition: Option<String>,
        /// running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// Workflows per page (at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_page_token` of the page before.
        #[arg(long)]
        page_token: Option<String>,
        /// Follow every page to the end.
        #[arg(long)]
        all: bool,
    },
    /// Send an event: the workflow moves to the state the event leads to.
    #[command(
        after_help = "Example:\n  raftflow workflow send order-17 pay --payload '{\"paid_by\": \"card\"}' --expect-revision 1 --request-id pay-17"
    )]
    Send {
        id: String,
        event: String,
        /// A JSON object (or `@FILE`) merged into the context.
        #[arg(long)]
        payload: Option<String>,
        /// Compare-and-set: refused (exit 4) unless the workflow is at this revision.
        #[arg(long)]
        expect_revision: Option<u64>,
        /// Retrying with the same id returns the first outcome and changes nothing.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Cancel a running workflow.
    #[command(
        after_help = "Example:\n  raftflow workflow cancel order-17 --reason 'customer asked'"
    )]
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// A workflow's transitions, oldest first.
    #[command(after_help = "Example:\n  raftflow workflow history order-17")]
    History { id: String },
}

/// `raftflow task ...`
#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Lease ready tasks of some types (what a worker does; `raftflow worker` runs a command
    /// for each).
    #[command(
        after_help = "Example:\n  raftflow task poll --type ship --worker me --wait-ms 5000"
    )]
    Poll {
        /// A task type (repeat for several).
        #[arg(long = "type", required = true)]
        types: Vec<String>,
        /// This worker's name, recorded with the lease.
        #[arg(long, default_value = "cli")]
        worker: String,
        /// Most tasks to lease at once (1 to 100).
        #[arg(long)]
        max: Option<u32>,
        /// Wait up to this long for a task when none is ready.
        #[arg(long)]
        wait_ms: Option<u64>,
        /// The lease's length; the task's own when absent.
        #[arg(long)]
        lease_ms: Option<u64>,
    },
    /// Show a task.
    #[command(after_help = "Example:\n  raftflow task get order-17:2")]
    Get { id: String },
    /// Complete a leased task: its output is merged into the context, then `task.completed`
    /// fires.
    #[command(
        after_help = "Example:\n  raftflow task complete order-17:2 --lease-token 1 '{\"tracking\": \"T-1\"}'"
    )]
    Complete {
        id: String,
        /// The output: a JSON object, or `@FILE`.
        #[arg(value_name = "OUTPUT")]
        result: Option<String>,
        #[arg(long)]
        lease_token: u64,
    },
    /// Fail a leased task's attempt: retried after backoff while attempts remain.
    #[command(
        after_help = "Example:\n  raftflow task fail order-17:2 --lease-token 1 --error 'carrier down'"
    )]
    Fail {
        id: String,
        #[arg(long)]
        lease_token: u64,
        #[arg(long)]
        error: String,
        /// Fail for good now (`task.failed` fires) instead of retrying.
        #[arg(long)]
        no_retry: bool,
    },
    /// Extend a leased task's lease.
    #[command(after_help = "Example:\n  raftflow task heartbeat order-17:2 --lease-token 1")]
    Heartbeat {
        id: String,
        #[arg(long)]
        lease_token: u64,
        #[arg(long)]
        lease_ms: Option<u64>,
    },
}

/// `raftflow cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Nodes, groups and their leaders, and placement, as one node sees them.
    #[command(after_help = "Example:\n  raftflow cluster status")]
    Status,
    /// The cluster's nodes.
    #[command(after_help = "Example:\n  raftflow cluster nodes")]
    Nodes,
    /// Every group: leader, term, voters, indexes and slots.
    #[command(after_help = "Example:\n  raftflow cluster groups")]
    Groups,
    /// A replica's applied index and a digest of its rows: replicas at the same index agree.
    #[command(after_help = "Example:\n  raftflow cluster digest 1 --addr 127.0.0.1:7002")]
    Digest { group: u64 },
    /// Liveness (`/healthz`) and readiness (`/readyz`) of every address given.
    #[command(after_help = "Example:\n  raftflow cluster health")]
    Health,
    /// A node's counters and gauges in Prometheus' text format.
    #[command(after_help = "Example:\n  raftflow cluster metrics | grep raftflow_proposals_total")]
    Metrics,
    /// The API's OpenAPI 3 document.
    #[command(after_help = "Example:\n  raftflow cluster openapi | head")]
    Openapi,
    /// Register a node that will join (what `raftflow serve --join` does itself): it is
    /// `joining` until it has caught up, then `active`.
    #[command(
        name = "add-node",
        after_help = "Example:\n  raftflow cluster add-node 4 --client-addr 127.0.0.1:7004 --peer-addr 127.0.0.1:8004"
    )]
    AddNode {
        /// The new node's id (never used before in this cluster).
        id: u64,
        /// host:port of its HTTP API.
        #[arg(long)]
        client_addr: String,
        /// host:port of its peer listener.
        #[arg(long)]
        peer_addr: String,
    },
    /// Drain a node and remove it: its replicas move to the other nodes first, then it leaves
    /// every group and stops. Its id is never used again.
    #[command(
        name = "remove-node",
        after_help = "Examples:\n  raftflow cluster remove-node 1\n  raftflow cluster remove-node 3 --force   # node 3's machine is gone for good"
    )]
    RemoveNode {
        id: u64,
        /// The node is gone for good (a dead disk): replace its replicas from the others.
        #[arg(long)]
        force: bool,
    },
    /// Add a data group: slots move to it from the others (about 1/(G+1) of them), in fenced
    /// batches, while the cluster serves.
    #[command(
        name = "add-group",
        after_help = "Example:\n  raftflow cluster add-group"
    )]
    AddGroup,
    /// Retire a data group: its slots move to the others, then its replicas are deleted and
    /// its id is never used again.
    #[command(
        name = "retire-group",
        after_help = "Example:\n  raftflow cluster retire-group 9"
    )]
    RetireGroup { id: u64 },
}

/// A client command, as `main` hands it over.
#[derive(Debug)]
pub enum ClientCmd {
    Definition(DefinitionCmd),
    Workflow(WorkflowCmd),
    Task(TaskCmd),
    Cluster(ClusterCmd),
}
