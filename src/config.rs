//! `raftflow serve` configuration: flags, environment variables (`RAFTFLOW_*`) or a TOML file,
//! in that order of precedence, then defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use raftflow_api::ApiConfig;
use raftflow_raft::{
    NodeAddr, NodeConfig, Timing, DEFAULT_MIN_FREE_DISK_BYTES, LOG_KEPT_BEHIND_SNAPSHOT,
    SNAPSHOT_EVERY_ENTRIES,
};

/// Flags of `raftflow serve`. Every flag also reads `RAFTFLOW_<NAME>` and the TOML key `<name>`
/// (with underscores).
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "RAFTFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (a member of --initial-cluster, or a new id with --join).
    #[arg(long, env = "RAFTFLOW_ID")]
    pub id: Option<u64>,
    /// Join a running cluster through any member's client URL (http://host:port) instead of
    /// creating one with --initial-cluster.
    #[arg(long, env = "RAFTFLOW_JOIN", conflicts_with = "initial_cluster")]
    pub join: Option<String>,
    /// The client address other nodes and clients reach this node at (default: the
    /// --client-listen address; needed when that is 0.0.0.0).
    #[arg(long, env = "RAFTFLOW_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// The peer address other nodes reach this node at (default: the --peer-listen address).
    #[arg(long, env = "RAFTFLOW_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Every member as ID=CLIENT_ADDR/PEER_ADDR, comma-separated,
    /// e.g. 1=127.0.0.1:7001/127.0.0.1:8001,2=...
    #[arg(long, env = "RAFTFLOW_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Where the HTTP API listens (default: this node's client address in --initial-cluster).
    #[arg(long, env = "RAFTFLOW_CLIENT_LISTEN")]
    pub client_listen: Option<String>,
    /// Where the peer listener binds (default: this node's peer address).
    #[arg(long, env = "RAFTFLOW_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Data directory (created if missing).
    #[arg(long, env = "RAFTFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of data groups; fixed when the cluster is created [default: 8].
    #[arg(long, env = "RAFTFLOW_GROUPS")]
    pub groups: Option<u64>,
    /// Voters of each data group, an odd number, read when the cluster is created [default:
    /// 3, or every member when fewer].
    #[arg(long, env = "RAFTFLOW_REPLICATION_FACTOR")]
    pub replication_factor: Option<u64>,
    /// Leader heartbeat interval [default: 150].
    #[arg(long, env = "RAFTFLOW_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Shortest election timeout [default: 750].
    #[arg(long, env = "RAFTFLOW_ELECTION_MIN_MS")]
    pub election_min_ms: Option<u64>,
    /// Longest election timeout [default: 1500].
    #[arg(long, env = "RAFTFLOW_ELECTION_MAX_MS")]
    pub election_max_ms: Option<u64>,
    /// Snapshot a group (and purge its log) every this many entries [default: 20000].
    #[arg(long, env = "RAFTFLOW_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot [default: 5000].
    #[arg(long, env = "RAFTFLOW_LOG_KEPT_BEHIND_SNAPSHOT")]
    pub log_kept_behind_snapshot: Option<u64>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "RAFTFLOW_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long a write may wait for its group before a 503 [default: 5000].
    #[arg(long, env = "RAFTFLOW_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "RAFTFLOW_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Requests served at once before shedding with 429 [default: 4096].
    #[arg(long, env = "RAFTFLOW_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,
    /// Client connections open at once; past it the node accepts no more until one closes
    /// [default: 10000].
    #[arg(long, env = "RAFTFLOW_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A request's headers must arrive within this, and a kept-alive connection's next request
    /// begin within it, or the connection closes [default: 10000].
    #[arg(long, env = "RAFTFLOW_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// A request's body must arrive within this, or it gets 408 [default: 10000].
    #[arg(long, env = "RAFTFLOW_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Refuse writes with 507 below this much free disk [default: 67108864].
    #[arg(long, env = "RAFTFLOW_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// API tokens, one `TOKEN,NAME,ROLE` a line (roles: admin, operator, worker, reader);
    /// every `/v1` request then needs `Authorization: Bearer`. SIGHUP reloads the file.
    #[arg(long, env = "RAFTFLOW_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the API without tokens on an address other machines can reach.
    #[arg(long, env = "RAFTFLOW_INSECURE")]
    pub insecure: bool,
    /// Log every API request (method, route, status, time, caller) at info level.
    #[arg(long, env = "RAFTFLOW_ACCESS_LOG")]
    pub access_log: bool,
    /// The cluster's CA certificate (PEM): with --peer-cert and --peer-key, peers talk mutual
    /// TLS and accept only peers whose certificate this CA signed (`raftflow certs` makes them).
    #[arg(long, env = "RAFTFLOW_PEER_CA", requires_all = ["peer_cert", "peer_key"])]
    pub peer_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by --peer-ca, naming its peer address's host.
    #[arg(long, env = "RAFTFLOW_PEER_CERT", requires = "peer_ca")]
    pub peer_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "RAFTFLOW_PEER_KEY", requires = "peer_ca")]
    pub peer_key: Option<PathBuf>,
    /// A certificate for the client port (PEM, naming the host of the client address; the
    /// node's peer certificate from `raftflow certs` does when both are on one host): the API
    /// is then served over HTTPS only.
    #[arg(long, env = "RAFTFLOW_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "RAFTFLOW_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    join: Option<String>,
    advertise_client: Option<String>,
    advertise_peer: Option<String>,
    initial_cluster: Option<String>,
    client_listen: Option<String>,
    peer_listen: Option<String>,
    data_dir: Option<PathBuf>,
    groups: Option<u64>,
    replication_factor: Option<u64>,
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    snapshot_every: Option<u64>,
    log_kept_behind_snapshot: Option<u64>,
    max_body_bytes: Option<usize>,
    write_timeout_ms: Option<u64>,
    log_format: Option<String>,
    max_inflight_requests: Option<usize>,
    max_connections: Option<usize>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    min_free_disk_bytes: Option<u64>,
    token_file: Option<PathBuf>,
    insecure: Option<bool>,
    access_log: Option<bool>,
    peer_ca: Option<PathBuf>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

pub struct Config {
    /// The client URL of a member to join through (`--join`); `node.members` then holds only
    /// this node until the cluster answers.
    pub join: Option<String>,
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub client_listen: String,
    /// The client port's bounds on connections and on slow headers.
    pub serve_limits: raftflow_api::serve::ServeLimits,
    pub log_format: String,
    /// The API's token file; `None`: the API is open.
    pub token_file: Option<PathBuf>,
    /// The token `--join` registers this node with (`--token`); else an admin token of
    /// `token_file`.
    pub join_token: Option<String>,
    /// TLS for the client port (`--client-cert`): HTTPS only.
    pub client_tls: Option<raftflow_api::serve::TlsAcceptor>,
    /// The CA `--join` trusts for an `https://` URL (`--ca-file`); else the peer CA.
    pub join_ca: Option<Vec<u8>>,
}

/// Parses `1=127.0.0.1:7001/127.0.0.1:8001,2=...`.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<BTreeMap<u64, NodeAddr>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part
            .split_once('=')
            .with_context(|| format!("{part:?}: expected ID=CLIENT_ADDR/PEER_ADDR"))?;
        let (client, peer) = addrs
            .split_once('/')
            .with_context(|| format!("{part:?}: expected ID=CLIENT_ADDR/PEER_ADDR"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("{part:?}: bad node id"))?;
        for a in [client, peer] {
            a.parse::<SocketAddr>()
                .with_context(|| format!("{part:?}: {a:?} is not an IP:PORT address"))?;
        }
        if out
            .insert(
                id,
                NodeAddr {
                    client: client.into(),
                    peer: peer.into(),
                },
            )
            .is_some()
        {
            bail!("node id {id} appears twice in the initial cluster");
        }
    }
    if out.is_empty() {
        bail!("the initial cluster is empty");
    }
    Ok(out)
}

pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let id = args.id.or(file.id).context("--id is required")?;
    let join = args.join.or(file.join);
    let client_listen = args.client_listen.or(file.client_listen);
    let peer_listen = args.peer_listen.or(file.peer_listen);
    let (members, me) = match &join {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--join {url:?} must be a member's client URL, like http://127.0.0.1:7001");
            }
            if id == 0 || id > u64::from(u32::MAX) {
                bail!("--id {id} must be 1 to {}", u32::MAX);
            }
            let advertise = |flag: &str, given: Option<String>, listen: &Option<String>| {
                let addr = given.or_else(|| listen.clone()).with_context(|| {
                    format!("--join needs --{flag}-listen (or --advertise-{flag})")
                })?;
                if addr
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_unspecified())
                {
                    bail!(
                        "{addr} is not an address other nodes can reach: give --advertise-{flag}"
                    );
                }
                Ok(addr)
            };
            let me = NodeAddr {
                client: advertise(
                    "client",
                    args.advertise_client.or(file.advertise_client),
                    &client_listen,
                )?,
                peer: advertise(
                    "peer",
                    args.advertise_peer.or(file.advertise_peer),
                    &peer_listen,
                )?,
            };
            ([(id, me.clone())].into(), me)
        }
        None => {
            let cluster = args
                .initial_cluster
                .or(file.initial_cluster)
                .context("--initial-cluster (or --join) is required")?;
            let members = parse_initial_cluster(&cluster)?;
            let me = members
                .get(&id)
                .with_context(|| format!("node {id} is not in --initial-cluster"))?
                .clone();
            (members, me)
        }
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .context("--data-dir is required")?;
    let timing = Timing {
        heartbeat_ms: args
            .heartbeat_ms
            .or(file.heartbeat_ms)
            .unwrap_or(Timing::default().heartbeat_ms),
        election_min_ms: args
            .election_min_ms
            .or(file.election_min_ms)
            .unwrap_or(Timing::default().election_min_ms),
        election_max_ms: args
            .election_max_ms
            .or(file.election_max_ms)
            .unwrap_or(Timing::default().election_max_ms),
    };
    if !(timing.heartbeat_ms < timing.election_min_ms
        && timing.election_min_ms < timing.election_max_ms)
    {
        bail!("need heartbeat_ms < election_min_ms < election_max_ms, got {timing:?}");
    }
    let replication_factor = match args.replication_factor.or(file.replication_factor) {
        Some(r) if r % 2 == 0 => bail!(
            "--replication-factor must be odd (1, 3, 5, ...), not {r}: {r} voters tolerate \
             no more failures than {}",
            r.saturating_sub(1)
        ),
        Some(r) => r,
        None => 3.min(members.len() as u64),
    };
    let peer_ip = me.peer.parse::<SocketAddr>().map(|a| a.ip()).ok();
    let peer_ca = args.peer_ca.or(file.peer_ca);
    // Trusted beside the system's CAs when this node calls another's client port over HTTPS.
    let peer_ca_pem = match &peer_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading the peer CA file {}", path.display()))?,
        ),
        None => None,
    };
    let client_tls = match (
        args.client_cert.or(file.client_cert),
        args.client_key.or(file.client_key),
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            Some(raftflow_raft::client_port_acceptor(&cert, &key).map_err(anyhow::Error::msg)?)
        }
        _ => bail!("client TLS needs both --client-cert and --client-key"),
    };
    let peer_tls = match (
        peer_ca,
        args.peer_cert.or(file.peer_cert),
        args.peer_key.or(file.peer_key),
    ) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => {
            Some(raftflow_raft::PeerTls::load(&ca, &cert, &key).map_err(anyhow::Error::msg)?)
        }
        _ => bail!("peer TLS needs all of --peer-ca, --peer-cert and --peer-key"),
    };
    let node = NodeConfig {
        id,
        data_dir,
        peer_listen: peer_listen.unwrap_or_else(|| me.peer.clone()),
        members,
        joined: join.is_some(),
        groups: args.groups.or(file.groups).unwrap_or(8),
        replication_factor,
        timing,
        snapshot_every: args
            .snapshot_every
            .or(file.snapshot_every)
            .unwrap_or(SNAPSHOT_EVERY_ENTRIES),
        log_kept_behind_snapshot: args
            .log_kept_behind_snapshot
            .or(file.log_kept_behind_snapshot)
            .unwrap_or(LOG_KEPT_BEHIND_SNAPSHOT),
        // Leave from our own address, so cutting 127.0.0.1 <-> 127.0.0.2 cuts exactly that link.
        bind_source_ip: peer_ip.filter(|ip| !ip.is_unspecified()),
        min_free_disk_bytes: args
            .min_free_disk_bytes
            .or(file.min_free_disk_bytes)
            .unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
        peer_tls,
    };
    let defaults = ApiConfig::default();
    let api = ApiConfig {
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(defaults.max_body_bytes),
        write_timeout: args
            .write_timeout_ms
            .or(file.write_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.write_timeout),
        max_inflight_requests: args
            .max_inflight_requests
            .or(file.max_inflight_requests)
            .unwrap_or(defaults.max_inflight_requests)
            .max(1),
        body_timeout: args
            .body_timeout_ms
            .or(file.body_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.body_timeout),
        source_ip: node.bind_source_ip,
        access_log: args.access_log || file.access_log.unwrap_or(false),
        client_tls: client_tls.is_some(),
        trusted_ca_pem: peer_ca_pem.clone(),
    };
    let limit_defaults = raftflow_api::serve::ServeLimits::default();
    let serve_limits = raftflow_api::serve::ServeLimits {
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(limit_defaults.max_connections)
            .max(1),
        header_timeout: args
            .header_timeout_ms
            .or(file.header_timeout_ms)
            .map(Duration::from_millis)
            .unwrap_or(limit_defaults.header_timeout),
    };
    let client_listen = client_listen.unwrap_or(me.client);
    let token_file = args.token_file.or(file.token_file);
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    if token_file.is_none() && !insecure && !is_loopback(&client_listen) {
        bail!(
            "the API would listen on {client_listen}, which other machines can reach, with no \
             token file: give --token-file FILE (see docs/API.md, Authentication), or \
             --insecure to serve it open anyway"
        );
    }
    Ok(Config {
        join,
        token_file,
        join_token: None,
        client_tls,
        join_ca: peer_ca_pem,
        client_listen,
        serve_limits,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into()),
        node,
        api,
    })
}

/// Whether `addr` (`IP:PORT` or `localhost:PORT`) listens on the loopback interface only.
fn is_loopback(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(host, _)| host == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster(
            "1=127.0.0.1:7001/127.0.0.1:8001, 2=127.0.0.2:7001/127.0.0.2:8001",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2].peer, "127.0.0.2:8001");
        assert!(parse_initial_cluster("1=localhost/x").is_err());
        assert!(
            parse_initial_cluster("1=127.0.0.1:1/127.0.0.1:2,1=127.0.0.1:3/127.0.0.1:4").is_err()
        );
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "id = 2\ninitial_cluster = \"1=127.0.0.1:7001/127.0.0.1:8001,2=127.0.0.1:7002/127.0.0.1:8002\"\ndata_dir = \"/tmp/x\"\ngroups = 4\n",
        )
        .unwrap();
        let cfg = resolve(ServeArgs {
            config: Some(path),
            groups: Some(6),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.node.id, 2);
        assert_eq!(cfg.node.groups, 6);
        assert_eq!(cfg.client_listen, "127.0.0.1:7002");
        assert_eq!(cfg.node.peer_listen, "127.0.0.1:8002");
        assert_eq!(cfg.node.timing.heartbeat_ms, Timing::default().heartbeat_ms);
    }

    #[test]
    fn join_needs_a_url_and_addresses_others_can_reach() {
        let join = |url: &str, client: &str, advertise: Option<&str>| {
            resolve(ServeArgs {
                id: Some(4),
                join: Some(url.into()),
                client_listen: Some(client.into()),
                peer_listen: Some("127.0.0.4:8001".into()),
                advertise_client: advertise.map(String::from),
                data_dir: Some("/tmp/x".into()),
                insecure: true,
                ..Default::default()
            })
        };
        let cfg = join("http://127.0.0.1:7001", "127.0.0.4:7001", None).unwrap();
        assert!(cfg.node.joined);
        assert_eq!(cfg.join.as_deref(), Some("http://127.0.0.1:7001"));
        assert_eq!(cfg.node.members.len(), 1);
        assert_eq!(cfg.node.members[&4].client, "127.0.0.4:7001");
        let err = join("127.0.0.1:7001", "127.0.0.4:7001", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("client URL"), "{err}");
        let err = join("http://127.0.0.1:7001", "0.0.0.0:7001", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--advertise-client"), "{err}");
        let cfg = join(
            "http://127.0.0.1:7001",
            "0.0.0.0:7001",
            Some("10.0.0.4:7001"),
        )
        .unwrap();
        assert_eq!(cfg.node.members[&4].client, "10.0.0.4:7001");
        assert_eq!(cfg.client_listen, "0.0.0.0:7001");
    }

    #[test]
    fn an_open_api_on_a_reachable_address_needs_insecure() {
        let serve = |client: &str, token_file: Option<&str>, insecure: bool| {
            resolve(ServeArgs {
                id: Some(1),
                initial_cluster: Some(format!("1={client}/127.0.0.1:8001")),
                data_dir: Some("/tmp/x".into()),
                token_file: token_file.map(PathBuf::from),
                insecure,
                ..Default::default()
            })
        };
        for loopback in ["127.0.0.1:7001", "127.0.0.5:7001", "[::1]:7001"] {
            assert!(serve(loopback, None, false).is_ok(), "{loopback}");
        }
        for reachable in ["0.0.0.0:7001", "10.0.0.1:7001", "[::]:7001"] {
            let err = serve(reachable, None, false).err().unwrap().to_string();
            assert!(
                err.contains("--token-file") && err.contains("--insecure"),
                "{err}"
            );
            assert!(serve(reachable, None, true).is_ok(), "{reachable}");
            let cfg = serve(reachable, Some("/etc/raftflow/tokens"), false).unwrap();
            assert_eq!(cfg.token_file, Some(PathBuf::from("/etc/raftflow/tokens")));
        }
        assert!(is_loopback("localhost:7001") && !is_loopback("example.com:7001"));
    }
}
