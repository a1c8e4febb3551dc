//! Black-box tests against real `raftflow` processes: a harness that starts a cluster on
//! loopback ports, kills (-9), pauses and restarts nodes, and talks to them over HTTP only.

pub mod bench;
pub mod jepsen;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftflow_client::client::Client;
use raftflow_client::types::ClusterView;

/// Slots workflow ids hash to (the server's `raftflow_raft::ring::SLOTS`, which the API
/// reports in `placement.slots`).
pub const SLOTS: u32 = 16384;

/// The release binary under test: `RAFTFLOW_BIN`, else `raftflow` beside the test's `deps/`.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTFLOW_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    [dir.join("raftflow"), dir.join("../raftflow")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("../raftflow"))
}

/// A free port below Linux's ephemeral range (32768-60999), so that no outgoing connection of
/// a concurrently running node can take it between this check and the node's bind.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % 400) as u16 * 30,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in FIRST..LAST {
        let mut port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= LAST {
            NEXT.store(FIRST, Ordering::SeqCst);
            port = FIRST;
        }
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{LAST}")
}

pub struct NodeProc {
    pub id: u64,
    pub client: String,
    pub peer: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The client URL it joined through (`serve --join`), for a node added to a running
    /// cluster.
    join: Option<String>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of real node processes with data in a temporary directory.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub groups: u64,
    members: String,
    extra: Vec<String>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
    client_ip: Option<std::net::IpAddr>,
    own_ips: bool,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    _dir: tempfile::TempDir,
}

/// How to launch a cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: u64,
    pub groups: u64,
    pub extra: Vec<String>,
    /// Node `i` on 127.0.0.i:7001 (client) and :8001 (peer), instead of free ports on 127.0.0.1.
    pub own_ips: bool,
    /// The binary to run (default: [`binary`]).
    pub bin: Option<PathBuf>,
    /// Environment for every node.
    pub env: Vec<(String, String)>,
    /// Extra environment per node id.
    pub node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
    /// Address the test's HTTP clients send from.
    pub client_ip: Option<std::net::IpAddr>,
    /// The API token the harness's own clients send (a cluster with a token file).
    pub token: Option<String>,
    /// The CA file the harness's own clients trust: with it they speak HTTPS (a cluster whose
    /// nodes have a `--client-cert`).
    pub https_ca: Option<PathBuf>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            nodes: 3,
            groups: 2,
            extra: Vec::new(),
            own_ips: false,
            bin: None,
            env: Vec::new(),
            node_env: Default::default(),
            client_ip: None,
            token: None,
            https_ca: None,
        }
    }
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.1 with `groups` data groups and extra `serve` flags.
    pub fn start(n: u64, groups: u64, extra: &[&str]) -> Cluster {
        Cluster::launch(Spec {
            nodes: n,
            groups,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..Spec::default()
        })
    }

    /// Starts a cluster as `spec` says.
    pub fn launch(spec: Spec) -> Cluster {
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("RAFTFLOW_KEEP_DATA").is_some() {
            // For a post-mortem: the nodes' data directories and logs outlive the run.
            dir.disable_cleanup(true);
            eprintln!("keeping the cluster's data under {}", dir.path().display());
        }
        let nodes: Vec<NodeProc> = (1..=spec.nodes)
            .map(|id| {
                let (client, peer) = if spec.own_ips {
                    // 127.0.0.1, .2, .3 with fixed ports: links between nodes can be cut by IP.
                    (format!("127.0.0.{id}:7001"), format!("127.0.0.{id}:8001"))
                } else {
                    (
                        format!("127.0.0.1:{}", free_port("127.0.0.1")),
                        format!("127.0.0.1:{}", free_port("127.0.0.1")),
                    )
                };
                NodeProc {
                    id,
                    client,
                    peer,
                    data_dir: dir.path().join(format!("n{id}")),
                    log: dir.path().join(format!("n{id}.log")),
                    child: None,
                    join: None,
                }
            })
            .collect();
        let members = nodes
            .iter()
            .map(|nd| format!("{}={}/{}", nd.id, nd.client, nd.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            groups: spec.groups,
            members,
            extra: spec.extra.clone(),
            bin: spec.bin.clone().unwrap_or_else(binary),
            env: spec.env.clone(),
            node_env: spec.node_env.clone(),
            client_ip: spec.client_ip,
            own_ips: spec.own_ips,
            token: spec.token.clone(),
            ca_pem: spec
                .https_ca
                .as_ref()
                .map(|p| std::fs::read(p).expect("the CA file reads")),
            _dir: dir,
        };
        for id in 1..=spec.nodes {
            cluster.spawn(id);
        }
        cluster
    }

    /// Starts node `id` (new to the cluster) with `serve --join` through node `via`'s client
    /// URL.
    pub fn join(&mut self, id: u64, via: u64) {
        assert!(
            self.nodes.iter().all(|n| n.id != id),
            "node {id} is already part of this test cluster"
        );
        let (client, peer) = if self.own_ips {
            (format!("127.0.0.{id}:7001"), format!("127.0.0.{id}:8001"))
        } else {
            (
                format!("127.0.0.1:{}", free_port("127.0.0.1")),
                format!("127.0.0.1:{}", free_port("127.0.0.1")),
            )
        };
        let dir = self._dir.path();
        let join = self.url(via);
        self.nodes.push(NodeProc {
            id,
            client,
            peer,
            data_dir: dir.join(format!("n{id}")),
            log: dir.join(format!("n{id}.log")),
            child: None,
            join: Some(join),
        });
        self.spawn(id);
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).log.clone()
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    fn spawn(&mut self, id: u64) {
        let bin = self.bin.clone();
        let members = self.members.clone();
        let groups = self.groups.to_string();
        let extra = self.extra.clone();
        let mut env = self.env.clone();
        env.extend(self.node_env.get(&id).cloned().unwrap_or_default());
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let how: Vec<String> = match &node.join {
            None => vec![
                "--initial-cluster".into(),
                members,
                "--groups".into(),
                groups,
            ],
            Some(url) => vec![
                "--join".into(),
                url.clone(),
                "--client-listen".into(),
                node.client.clone(),
                "--peer-listen".into(),
                node.peer.clone(),
            ],
        };
        let child = Command::new(&bin)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(&how)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        node.child = Some(child);
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `id`'s process has ended by itself (it was not killed by the test).
    pub fn has_exited(&mut self, id: u64) -> bool {
        match self.node_mut(id).child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_some(),
            None => false,
        }
    }

    /// Starts a killed node again on the same data directory.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// SIGSTOP / SIGCONT a node.
    pub fn pause(&self, id: u64, paused: bool) {
        self.signal(id, if paused { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// Sends `sig` to node `id`'s process, if it runs.
    pub fn signal(&self, id: u64, sig: i32) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: signalling a child process we spawned and still own.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    pub fn client(&self, id: u64) -> Client {
        self.client_with_timeout(id, Duration::from_secs(10))
    }

    /// A client with a short timeout, for probing.
    pub fn probe(&self, id: u64) -> Client {
        self.client_with_timeout(id, Duration::from_millis(1500))
    }

    /// A client with the given timeout (and the cluster's token, if it has one).
    pub fn client_with_timeout(&self, id: u64, timeout: Duration) -> Client {
        let client = Client::with_source(&self.url(id), timeout, self.client_ip)
            .with_token(self.token.clone());
        match &self.ca_pem {
            Some(ca) => client.with_ca(ca).expect("the CA file parses"),
            None => client,
        }
    }

    /// Node `id`'s client URL: `https://` when the cluster serves HTTPS.
    pub fn url(&self, id: u64) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.node(id).client)
    }

    /// The API token the harness's clients send, if the cluster has a token file.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                all &= self.probe(n.id).ready().await;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node sees each data group led by its preferred node (member
    /// `(group - 1) mod N`), where the leader balancer leaves it: after that, a healthy
    /// cluster moves no leadership.
    pub async fn wait_balanced(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        let deadline = Instant::now() + timeout;
        loop {
            let mut balanced = true;
            for n in &self.nodes {
                let Ok(view) = self.probe(n.id).cluster().await else {
                    balanced = false;
                    break;
                };
                balanced &= view
                    .groups
                    .iter()
                    .filter(|g| g.kind == "data")
                    .all(|g| g.leader == Some(ids[((g.id - 1) % ids.len() as u64) as usize]));
            }
            if balanced {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("leadership not balanced after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster as the first answering running node sees it.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(v) = self.probe(n.id).cluster().await {
                return Ok(v);
            }
        }
        bail!("no running node answers /v1/cluster")
    }

    /// The leader of `group` as seen from node `via`.
    pub async fn leader_of(&self, via: u64, group: u64) -> Option<u64> {
        let v = self.probe(via).cluster().await.ok()?;
        v.groups.iter().find(|g| g.id == group)?.leader
    }

    /// Waits until `group` has a leader other than `not` that node `via` knows of.
    pub async fn wait_new_leader(
        &self,
        via: u64,
        group: u64,
        not: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader_of(via, group).await {
                if l != not {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                bail!("group {group} had no new leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        if std::thread::panicking() {
            for id in &ids {
                eprintln!("---- node {id} log (tail) ----\n{}", self.log_tail(*id, 30));
            }
        }
        for id in ids {
            self.pause(id, false);
            self.kill9(id);
        }
    }
}

/// The `order` definition of `docs/API.md`.
pub fn order_definition() -> serde_json::Value {
    serde_json::json!({
        "name": "order",
        "initial": "created",
        "states": {
            "created":   {"on": {"pay": "paid", "cancel": "cancelled"}},
            "paid":      {"task": {"type": "ship"}, "on": {"task.completed": "shipped", "task.failed": "cancelled"}},
            "shipped":   {"timer_ms": 60000, "on": {"timer.fired": "delivered"}},
            "delivered": {"terminal": "succeeded"},
            "cancelled": {"terminal": "cancelled"}
        }
    })
}

/// A definition whose workflows accept `tick` forever: good for counting transitions.
pub fn counter_definition() -> serde_json::Value {
    serde_json::json!({
        "name": "counter",
        "initial": "on",
        "states": {
            "on": {"on": {"tick": "on", "stop": "off"}},
            "off": {"terminal": "succeeded"}
        }
    })
}

/// Retries `f` until it succeeds or `timeout` passes; returns the last error otherwise.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("still failing after {timeout:?}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
