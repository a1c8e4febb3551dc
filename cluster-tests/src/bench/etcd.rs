//! etcd for the comparison: a three-member cluster of Debian's `etcd` (3.4) on loopback ports
//! of its own, driven through its HTTP/JSON gateway (`/v3/kv/txn`, `/v3/kv/range`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::free_port;

/// A running three-member etcd cluster; the members are killed when it is dropped.
pub struct EtcdCluster {
    pub clients: Vec<String>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members on 127.0.0.1 with data under a temporary directory.
    pub fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        let bin = which("etcd").context(
            "etcd is not installed: `apt-get install etcd-server` (scripts/deps.sh bench does it)",
        )?;
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (free_port("127.0.0.1"), free_port("127.0.0.1")))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
            let child = Command::new(&bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "raftflow-bench"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            children.push(child);
        }
        Ok(EtcdCluster {
            clients: ports
                .iter()
                .map(|(c, _)| format!("http://127.0.0.1:{c}"))
                .collect(),
            children,
            _dir: dir,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Waits until a linearizable range answers on every member.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for url in &self.clients {
            let client = EtcdClient::new(url, Duration::from_secs(1));
            while client.get("raftflow-bench-ready").await.is_err() {
                if Instant::now() > deadline {
                    bail!("etcd member {url} not ready after {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// What an etcd call answered, reduced to what the load generator needs.
#[derive(Debug)]
pub enum EtcdError {
    /// The compare of a transaction failed: the equivalent of raftflow's `revision_mismatch`.
    CompareFailed,
    /// An HTTP error status, with etcd's message.
    Status(u16),
    Transport(String),
}

impl EtcdError {
    pub fn code(&self) -> String {
        match self {
            EtcdError::CompareFailed => "compare_failed".into(),
            EtcdError::Status(s) => format!("http_{s}"),
            EtcdError::Transport(_) => "transport".into(),
        }
    }
}

/// A client of one etcd member's JSON gateway, for setup and checks (the measured requests
/// go through the generator's own connections, `load::Conn`).
#[derive(Clone)]
pub struct EtcdClient {
    base: String,
    http: reqwest::Client,
}

impl EtcdClient {
    pub fn new(base: &str, timeout: Duration) -> EtcdClient {
        EtcdClient {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .tcp_nodelay(true)
                .build()
                .expect("http client builds"),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| EtcdError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| EtcdError::Transport(e.to_string()))?;
        if status != 200 {
            return Err(EtcdError::Status(status));
        }
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::Transport(e.to_string()))
    }

    /// A linearizable read: the key's `mod_revision` (0 when absent) and value.
    pub async fn get(&self, key: &str) -> Result<(u64, String), EtcdError> {
        let resp = self
            .post("/v3/kv/range", &json!({"key": B64.encode(key)}))
            .await?;
        let Some(kv) = resp["kvs"].get(0) else {
            return Ok((0, String::new()));
        };
        let value = kv["value"]
            .as_str()
            .and_then(|v| B64.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        Ok((revision(&kv["mod_revision"])?, value))
    }
}

/// A txn that puts `value` at `key` if the key's `mod_revision` is `expected` (with 0: if the
/// key does not exist, by its `create_revision`).
pub fn txn_put_if(key: &str, expected: u64, value: &str) -> Value {
    let (target, field) = if expected == 0 {
        ("CREATE", "create_revision")
    } else {
        ("MOD", "mod_revision")
    };
    json!({
        "compare": [{"key": B64.encode(key), "target": target, field: expected.to_string(),
                     "result": "EQUAL"}],
        "success": [{"request_put": {"key": B64.encode(key), "value": B64.encode(value)}}],
    })
}

/// grpc-gateway writes int64 as a JSON string.
fn revision(v: &Value) -> Result<u64, EtcdError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .ok_or_else(|| EtcdError::Transport(format!("no revision in {v}")))
}
