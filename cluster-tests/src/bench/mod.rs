//! `raftflow-bench`: raftflow and etcd on the same machine, in the same run, under the same
//! closed-loop load; a table, a JSON file and a chart.
//!
//! Each system runs alone: a fresh three-node raftflow cluster does every workload at every
//! concurrency and is stopped, then a fresh three-member etcd cluster does the same, so neither
//! pays for the other's idle CPU.

pub mod baseline;
pub mod etcd;
pub mod load;
pub mod procstat;
pub mod report;
pub mod wire;
pub mod wrk;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use raftflow_client::client::Client;
use serde::Serialize;

use crate::{Cluster, Spec};
use etcd::EtcdCluster;
use load::{Cell, Conn, Measured, Workload};
use wire::Wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Raftflow,
    Etcd,
    /// raftflow with mutual TLS between its nodes and an API token on every request.
    #[serde(rename = "raftflow-secure")]
    RaftflowSecure,
    /// The simple service (`baseline.rs`), Redis fsyncing every write.
    #[serde(rename = "flask-redis-always")]
    FlaskRedisAlways,
    /// The simple service, Redis fsyncing once a second.
    #[serde(rename = "flask-redis-everysec")]
    FlaskRedisEverysec,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Raftflow => "raftflow",
            System::Etcd => "etcd",
            System::RaftflowSecure => "raftflow-secure",
            System::FlaskRedisAlways => "flask-redis-always",
            System::FlaskRedisEverysec => "flask-redis-everysec",
        }
    }

    /// Whether it runs `workload` (etcd has no tasks; the baseline only has tasks).
    pub fn runs(self, workload: Workload) -> bool {
        match self {
            System::Raftflow | System::RaftflowSecure => true,
            System::Etcd => workload.on_etcd(),
            System::FlaskRedisAlways | System::FlaskRedisEverysec => workload == Workload::Tasks,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
    pub concurrency: Vec<usize>,
    pub warmup_s: u64,
    pub duration_s: u64,
    /// raftflow's Raft groups.
    pub groups: u64,
    /// Tokio worker threads per raftflow node (default: one per core).
    pub node_threads: Option<usize>,
    /// Orders the realistic workloads pick from (made once per system, before its cells).
    pub population: usize,
    #[serde(skip)]
    pub bin: Option<PathBuf>,
}

/// One cell of the run: a system, a workload, a number of clients.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Row {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    #[serde(flatten)]
    pub measured: Measured,
    /// raftflow: log entries made durable per WAL fsync, all nodes, during the cell.
    pub entries_per_fsync: Option<f64>,
    /// raftflow: client commands in those entries per WAL fsync (an entry carries several
    /// under load).
    #[serde(default)]
    pub commands_per_fsync: Option<f64>,
    /// raftflow: the mean time of one of those fsyncs, µs.
    #[serde(default)]
    pub fsync_us: Option<f64>,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every cell of `config`, printing each result as it comes.
pub async fn run(config: &Config) -> anyhow::Result<Vec<Row>> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut rows = Vec::new();
    for &system in &config.systems {
        if !config.workloads.iter().any(|w| system.runs(*w)) {
            continue;
        }
        match system {
            System::Raftflow | System::RaftflowSecure => {
                let env = config
                    .node_threads
                    .map(|n| vec![("TOKIO_WORKER_THREADS".into(), n.to_string())])
                    .unwrap_or_default();
                let mut spec = Spec {
                    groups: config.groups,
                    bin: config.bin.clone(),
                    env,
                    ..Spec::default()
                };
                let secrets = tempfile::tempdir()?;
                if system == System::RaftflowSecure {
                    secure(&mut spec, secrets.path())?;
                }
                let cluster = settled_cluster(spec).await?;
                let admin = cluster.client(1);
                admin
                    .put_definition("bench-pingpong", &load::pingpong())
                    .await?;
                admin
                    .put_definition("bench-task", &load::single_task())
                    .await?;
                admin.put_definition("bench-order", &load::order()).await?;
                let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.client.clone()).collect();
                let connect = |c: usize| {
                    let addr = &addrs[c % addrs.len()];
                    Conn::Raftflow {
                        wire: Wire::new(addr, REQUEST_TIMEOUT).with_token(cluster.token()),
                        client: Client::new(addr, REQUEST_TIMEOUT)
                            .with_token(cluster.token().map(String::from)),
                    }
                };
                let deployment = Deployment {
                    system,
                    connect: &connect,
                    pids: cluster.nodes.iter().filter_map(|n| n.pid()).collect(),
                    population: populate(config, system, &connect, &run_id).await?,
                    wrk: Some(WrkTarget {
                        addr: addrs[0].clone(),
                        token: cluster.token().map(String::from),
                        requests: wrk::raftflow_requests,
                    }),
                    wal: addrs.clone(),
                };
                run_cells(config, &deployment, &run_id, &mut rows).await;
            }
            System::Etcd => {
                let cluster = EtcdCluster::start(3)?;
                cluster
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .context("etcd cluster")?;
                let connect = |c: usize| Conn::Etcd {
                    wire: Wire::new(&cluster.clients[c % cluster.clients.len()], REQUEST_TIMEOUT),
                };
                let deployment = Deployment {
                    system,
                    connect: &connect,
                    pids: cluster.pids(),
                    population: populate(config, system, &connect, &run_id).await?,
                    wrk: Some(WrkTarget {
                        addr: cluster.clients[0].clone(),
                        token: None,
                        requests: wrk::etcd_requests,
                    }),
                    wal: Vec::new(),
                };
                run_cells(config, &deployment, &run_id, &mut rows).await;
            }
            System::FlaskRedisAlways | System::FlaskRedisEverysec => {
                let fsync = if system == System::FlaskRedisAlways {
                    "always"
                } else {
                    "everysec"
                };
                let service = baseline::Baseline::start(fsync)?;
                service
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .context("the Flask + Redis baseline")?;
                let connect = |_: usize| Conn::Baseline {
                    wire: Wire::new(&service.addr, REQUEST_TIMEOUT),
                };
                let deployment = Deployment {
                    system,
                    connect: &connect,
                    pids: service.pids(),
                    population: (String::new(), 0),
                    wrk: None,
                    wal: Vec::new(),
                };
                run_cells(config, &deployment, &run_id, &mut rows).await;
            }
        }
    }
    Ok(rows)
}

/// One system under test, as its cells reach it.
struct Deployment<'a> {
    system: System,
    /// A connection for client `c`.
    connect: &'a dyn Fn(usize) -> Conn,
    /// The processes whose CPU and memory each cell reports.
    pids: Vec<u32>,
    /// The orders of the realistic workloads: their prefix and number.
    population: (String, usize),
    /// Where its `wrk` cell goes, if it has one.
    wrk: Option<WrkTarget>,
    /// raftflow: the nodes whose WAL counters each cell reports.
    wal: Vec<String>,
}

/// Runs every cell of `config` that `d`'s system runs, printing each row.
async fn run_cells(config: &Config, d: &Deployment<'_>, run_id: &str, rows: &mut Vec<Row>) {
    for &workload in config.workloads.iter().filter(|w| d.system.runs(**w)) {
        for &clients in &config.concurrency {
            let before = match d.wal.is_empty() {
                true => None,
                false => Some(wal_counters(&d.wal).await),
            };
            let measured = cell(config, d, workload, clients, run_id).await;
            let mut row = Row {
                system: d.system,
                workload,
                clients,
                measured,
                entries_per_fsync: None,
                commands_per_fsync: None,
                fsync_us: None,
            };
            if let Some(before) = before {
                let after = wal_counters(&d.wal).await;
                let syncs = after.syncs - before.syncs;
                let per_fsync = |n: f64| (syncs > 0.0).then(|| n / syncs);
                row.entries_per_fsync = per_fsync(after.entries - before.entries);
                row.commands_per_fsync = per_fsync(after.commands - before.commands);
                row.fsync_us = per_fsync(after.sync_s - before.sync_s).map(|s| s * 1e6);
            }
            report::print_row(&row);
            rows.push(row);
        }
    }
}

/// A fresh three-node raftflow cluster, ready and with leadership where the balancer leaves
/// it (it moves leaders in the first seconds): what every measurement starts from.
async fn settled_cluster(spec: Spec) -> anyhow::Result<Cluster> {
    let cluster = Cluster::launch(spec);
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .context("raftflow cluster")?;
    cluster.wait_balanced(Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// The token every request of a secure cell carries.
const BENCH_TOKEN: &str = "bench-0123456789abcdef0123456789abcdef";

/// Makes `spec` a secure cluster: certificates from `raftflow certs` in `dir` for mutual TLS
/// between the nodes, and a token file whose one admin token the clients send.
fn secure(spec: &mut Spec, dir: &std::path::Path) -> anyhow::Result<()> {
    let bin = spec.bin.clone().unwrap_or_else(crate::binary);
    let mut certs = std::process::Command::new(&bin);
    certs.args(["certs", "--dir"]).arg(dir);
    for id in 1..=spec.nodes {
        certs.args(["--node", &format!("{id}=127.0.0.1")]);
    }
    let out = certs.output().context("raftflow certs")?;
    anyhow::ensure!(out.status.success(), "raftflow certs: {out:?}");
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{BENCH_TOKEN},bench,admin\n"))?;
    let file = |f: String| dir.join(f).to_string_lossy().into_owned();
    spec.env
        .push(("RAFTFLOW_PEER_CA".into(), file("ca.pem".into())));
    spec.env
        .push(("RAFTFLOW_TOKEN_FILE".into(), file("tokens.csv".into())));
    for id in 1..=spec.nodes {
        spec.node_env.insert(
            id,
            vec![
                ("RAFTFLOW_PEER_CERT".into(), file(format!("node-{id}.pem"))),
                (
                    "RAFTFLOW_PEER_KEY".into(),
                    file(format!("node-{id}-key.pem")),
                ),
            ],
        );
    }
    spec.token = Some(BENCH_TOKEN.into());
    Ok(())
}

/// Where a system's `wrk` cell sends its requests, and which.
struct WrkTarget {
    addr: String,
    token: Option<String>,
    requests: fn(&str, usize) -> Vec<(String, String)>,
}

/// The orders of the realistic workloads, made once per system when a cell needs them: their
/// prefix and number.
async fn populate(
    config: &Config,
    system: System,
    connect: &dyn Fn(usize) -> Conn,
    run_id: &str,
) -> anyhow::Result<(String, usize)> {
    let prefix = format!("b{run_id}-{}-orders", system.name());
    if config.workloads.iter().any(|w| w.on_population()) {
        let t0 = std::time::Instant::now();
        load::populate(connect, &prefix, config.population)
            .await
            .map_err(|f| anyhow::anyhow!("making the orders: {f:?}"))?;
        eprintln!(
            "  {}: {} orders with 1 KiB contexts made in {:.1} s",
            system.name(),
            config.population,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok((prefix, config.population))
}

async fn cell(
    config: &Config,
    d: &Deployment<'_>,
    workload: Workload,
    clients: usize,
    run_id: &str,
) -> Measured {
    let memory_ns = tokio::task::spawn_blocking(report::memory_latency_ns)
        .await
        .unwrap_or(0.0);
    let warmup = Duration::from_secs(config.warmup_s);
    let duration = Duration::from_secs(config.duration_s);
    let mut measured = match (workload, &d.wrk) {
        (Workload::EventsWrk, Some(wrk)) => {
            let requests = (wrk.requests)(&d.population.0, d.population.1);
            let token = wrk.token.as_deref();
            wrk::cell(
                &wrk.addr, token, &requests, clients, warmup, duration, &d.pids,
            )
            .await
            .unwrap_or_else(|e| Measured::failed("wrk", format!("{e:#}")))
        }
        _ => {
            load::run_cell(Cell {
                workload,
                clients,
                warmup,
                duration,
                connect: d.connect,
                pids: d.pids.clone(),
                prefix: format!(
                    "b{run_id}-{}-{}-{clients}",
                    d.system.name(),
                    workload.name()
                ),
                until: None,
                population: d.population.clone(),
            })
            .await
        }
    };
    measured.host_memory_ns = memory_ns;
    measured
}

/// WAL fsyncs and what they made durable, summed over the nodes' `/metrics`.
#[derive(Default)]
pub struct WalCounters {
    pub syncs: f64,
    pub entries: f64,
    pub commands: f64,
    pub sync_s: f64,
}

pub async fn wal_counters(addrs: &[String]) -> WalCounters {
    let http = reqwest::Client::new();
    let mut total = WalCounters::default();
    for addr in addrs {
        let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else {
            continue;
        };
        let text = resp.text().await.unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            match name {
                "raftflow_wal_fsyncs_total" => total.syncs += value,
                "raftflow_wal_synced_entries_total" => total.entries += value,
                "raftflow_wal_synced_commands_total" => total.commands += value,
                "raftflow_wal_fsync_seconds_total" => total.sync_s += value,
                _ => {}
            }
        }
    }
    total
}

/// What idle groups cost: each node's CPU while nothing but heartbeats runs.
#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    pub groups: u64,
    pub seconds: f64,
    /// Per node, percent of one core.
    pub cpu_percent: Vec<f64>,
    pub rss_mib: Vec<f64>,
}

/// Starts a cluster with `groups` data groups, lets leadership settle, then measures each
/// node's CPU over `seconds` with no client load.
pub async fn idle(groups: u64, seconds: u64, bin: Option<PathBuf>) -> anyhow::Result<IdleResult> {
    let cluster = settled_cluster(Spec {
        groups,
        bin,
        ..Spec::default()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let before = procstat::Usage::sample_all(&pids);
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let peaks: Vec<u64> = pids.iter().map(|&p| procstat::rss_bytes(p)).collect();
    let usage = procstat::Usage::since(&before, &peaks);
    Ok(IdleResult {
        groups,
        seconds: elapsed,
        cpu_percent: usage.iter().map(|u| u.cpu_s / elapsed * 100.0).collect(),
        rss_mib: usage.iter().map(|u| u.peak_rss_mib).collect(),
    })
}

/// How a node holding many workflows comes back after `kill -9`.
#[derive(Clone, Debug, Serialize)]
pub struct RestartResult {
    pub workflows: u64,
    pub load_seconds: f64,
    /// From the restart to `/readyz` answering 200.
    pub ready_seconds: f64,
    /// From the restart to a linearizable read of a workflow through the node.
    pub serving_seconds: f64,
    /// The node's resident size when it became ready, and the highest seen until then.
    pub rss_at_ready_mib: f64,
    pub peak_rss_mib: f64,
    pub data_dir_mib: f64,
}

/// Loads `workflows` workflows with 256 clients, kills node 3 with SIGKILL, restarts it
/// and times how long it takes to be ready and to serve.
pub async fn restart(
    workflows: u64,
    groups: u64,
    bin: Option<PathBuf>,
) -> anyhow::Result<RestartResult> {
    let mut cluster = settled_cluster(Spec {
        groups,
        bin,
        ..Spec::default()
    })
    .await?;
    cluster
        .client(1)
        .put_definition("bench-pingpong", &load::pingpong())
        .await?;
    let load_seconds = load_workflows(&cluster, workflows, "restart").await?;
    // Let node 3 catch up and apply everything before it is killed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let data_dir_mib = dir_size(&cluster.data_dir(3)) as f64 / (1024.0 * 1024.0);
    cluster.kill9(3);
    let restarted = std::time::Instant::now();
    cluster.restart(3);
    let pid = cluster.node(3).pid().unwrap_or(0);
    let probe = cluster.probe(3);
    let mut peak = 0u64;
    let ready_seconds = loop {
        peak = peak.max(procstat::rss_bytes(pid));
        if probe.ready().await {
            break restarted.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(300),
            "node 3 never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss_at_ready = procstat::rss_bytes(pid);
    let serving_seconds = loop {
        if probe
            .get_workflow(&format!("restart-{}", workflows / 2), false)
            .await
            .is_ok()
        {
            break restarted.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(300),
            "node 3 never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(RestartResult {
        workflows,
        load_seconds,
        ready_seconds,
        serving_seconds,
        rss_at_ready_mib: rss_at_ready as f64 / (1024.0 * 1024.0),
        peak_rss_mib: peak.max(rss_at_ready) as f64 / (1024.0 * 1024.0),
        data_dir_mib,
    })
}

/// Creates `workflows` workflows `{prefix}-0`, `{prefix}-1`, ... of `bench-pingpong` with 256
/// clients spread over the nodes; returns the seconds it took.
async fn load_workflows(cluster: &Cluster, workflows: u64, prefix: &str) -> anyhow::Result<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    cluster
        .client(1)
        .put_definition("bench-pingpong", &load::pingpong())
        .await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for c in 0..256usize {
        let client = Client::new(
            &cluster.nodes[c % cluster.nodes.len()].client,
            REQUEST_TIMEOUT,
        );
        let next = next.clone();
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= workflows {
                    return Ok::<(), anyhow::Error>(());
                }
                let req = raftflow_client::types::CreateWorkflow {
                    id: Some(format!("{prefix}-{n}")),
                    definition: "bench-pingpong".into(),
                    version: None,
                    context: None,
                };
                let mut tries = 0;
                while let Err(e) = client.create_workflow(&req).await {
                    tries += 1;
                    anyhow::ensure!(e.is_transient() && tries < 20, "create {prefix}-{n}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprint!(
                    "\r    loaded {:>9} of {workflows} ",
                    next.load(Ordering::Relaxed).min(workflows)
                );
            }
        })
    };
    for h in handles {
        h.await??;
    }
    progress.abort();
    eprintln!();
    let load_seconds = started.elapsed().as_secs_f64();
    Ok(load_seconds)
}

/// The transition load of `clients` clients spread over the nodes at `addrs`, measured for
/// `duration` after 1 s of warm-up, or until `until` is set.
async fn measure_transitions(
    addrs: &[String],
    pids: &[u32],
    clients: usize,
    prefix: String,
    duration: Duration,
    until: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Measured {
    let connect = |c: usize| {
        let addr = &addrs[c % addrs.len()];
        Conn::Raftflow {
            wire: Wire::new(addr, REQUEST_TIMEOUT),
            client: Client::new(addr, REQUEST_TIMEOUT),
        }
    };
    load::run_cell(Cell {
        workload: Workload::Transitions,
        clients,
        warmup: Duration::from_secs(1),
        duration,
        connect: &connect,
        pids: pids.to_vec(),
        prefix,
        until,
        population: (String::new(), 0),
    })
    .await
}

/// A fourth node joining a cluster that holds many workflows, under a transition load.
#[derive(Clone, Debug, Serialize)]
pub struct JoinResult {
    pub workflows: u64,
    pub groups: u64,
    pub load_seconds: f64,
    /// Node 1's data directory before the join.
    pub node_data_mib: f64,
    /// The transition load on three nodes, before the join.
    pub before: Measured,
    /// The same load from the join until node 4 holds its share.
    pub during: Measured,
    /// From starting node 4 to its record `active`.
    pub active_seconds: f64,
    /// From starting node 4 until it holds its share of voting replicas with no move left.
    pub share_seconds: f64,
    /// Voting replicas node 4 holds then.
    pub replicas: usize,
    /// Node 4's data directory then, and that divided by `share_seconds`.
    pub caught_up_mib: f64,
    pub catch_up_mib_per_s: f64,
}

/// Loads `workflows` workflows into a three-node cluster, measures the transition load from
/// `clients` clients for `seconds`, then starts node 4 with `--join` under the same load and
/// measures it until node 4 holds its share of the groups' replicas.
pub async fn join(
    workflows: u64,
    groups: u64,
    clients: usize,
    seconds: u64,
    bin: Option<PathBuf>,
) -> anyhow::Result<JoinResult> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut cluster = settled_cluster(Spec {
        groups,
        bin,
        ..Spec::default()
    })
    .await?;
    let load_seconds = load_workflows(&cluster, workflows, "join").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node_data_mib = dir_size(&cluster.data_dir(1)) as f64 / (1024.0 * 1024.0);
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.client.clone()).collect();
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let measure = |prefix: &str, duration: Duration, until: Option<Arc<AtomicBool>>| {
        measure_transitions(&addrs, &pids, clients, prefix.to_string(), duration, until)
    };
    eprintln!("    transitions on three nodes, {seconds} s");
    let before = measure("join-before", Duration::from_secs(seconds), None).await;

    // The same load again; one second in (after its warm-up), node 4 joins.
    let done = Arc::new(AtomicBool::new(false));
    let share = (groups as usize * 3) / 4;
    let admin = cluster.client(1);
    let during = measure("join-during", Duration::from_secs(900), Some(done.clone()));
    let change = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        cluster.join(4, 1);
        let mut active_seconds = None;
        let result = loop {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "node 4 did not take its share within 900 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(view) = admin.cluster().await else {
                continue;
            };
            if active_seconds.is_none()
                && view.nodes.iter().any(|n| n.id == 4 && n.state == "active")
            {
                active_seconds = Some(started.elapsed().as_secs_f64());
                eprintln!(
                    "    node 4 active after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            let held = view
                .groups
                .iter()
                .filter(|g| g.kind == "data" && g.voters.contains(&4))
                .count();
            if held >= share && view.placement.replica_moves.is_empty() {
                break (started.elapsed().as_secs_f64(), held);
            }
        };
        done.store(true, Ordering::Relaxed);
        Ok::<_, anyhow::Error>((active_seconds.unwrap_or(result.0), result))
    };
    let (during, change) = tokio::join!(during, change);
    let (active_seconds, (share_seconds, replicas)) = change?;
    let caught_up_mib = dir_size(&cluster.data_dir(4)) as f64 / (1024.0 * 1024.0);
    Ok(JoinResult {
        workflows,
        groups,
        load_seconds,
        node_data_mib,
        before,
        during,
        active_seconds,
        share_seconds,
        replicas,
        caught_up_mib,
        catch_up_mib_per_s: caught_up_mib / share_seconds,
    })
}

/// A data group added to a cluster that holds many workflows, under a transition load.
#[derive(Clone, Debug, Serialize)]
pub struct GroupAddResult {
    pub workflows: u64,
    /// Data groups before the new one.
    pub groups: u64,
    pub load_seconds: f64,
    /// The transition load before the change.
    pub before: Measured,
    /// The same load from the request until the new group holds its share of the slots.
    pub during: Measured,
    /// From `POST /v1/cluster/groups` until no slot moves and the new group holds its share.
    pub move_seconds: f64,
    /// Slots the new group then owns, and the workflows that moved with them (their share of
    /// the loaded ones).
    pub slots_moved: u64,
    pub workflows_moved: u64,
}

/// Loads `workflows` workflows into a three-node cluster of `groups` data groups, measures the
/// transition load from `clients` clients for `seconds`, then adds a data group under the same
/// load and measures it until the new group holds its share of the slots (about 1/(G+1)).
pub async fn add_group(
    workflows: u64,
    groups: u64,
    clients: usize,
    seconds: u64,
    bin: Option<PathBuf>,
) -> anyhow::Result<GroupAddResult> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cluster = settled_cluster(Spec {
        groups,
        bin,
        ..Spec::default()
    })
    .await?;
    let load_seconds = load_workflows(&cluster, workflows, "slots").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.client.clone()).collect();
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let measure = |prefix: &str, duration: Duration, until: Option<Arc<AtomicBool>>| {
        measure_transitions(&addrs, &pids, clients, prefix.to_string(), duration, until)
    };
    eprintln!("    transitions with {groups} groups, {seconds} s");
    let before = measure("slots-before", Duration::from_secs(seconds), None).await;

    // The same load again; one second in (after its warm-up), a group is added.
    let done = Arc::new(AtomicBool::new(false));
    let admin = cluster.client(1);
    let during = measure("slots-during", Duration::from_secs(900), Some(done.clone()));
    let change = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let (_, added) = admin
            .request(
                reqwest::Method::POST,
                "/v1/cluster/groups",
                Some(&serde_json::json!({})),
            )
            .await?;
        let id = added["id"].as_u64().unwrap_or(0).to_string();
        let share = u64::from(crate::SLOTS) / (groups + 1);
        let mut settled_polls = 0;
        let result = loop {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "the new group did not take its share within 900 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(view) = admin.cluster().await else {
                continue;
            };
            let owned = view.placement.slots_per_group[&id].as_u64().unwrap_or(0);
            // Between two batches no move is recorded for a moment: settled is twice in a row.
            if view.placement.moves.is_empty() && owned * 10 >= share * 9 {
                settled_polls += 1;
                if settled_polls == 2 {
                    break (started.elapsed().as_secs_f64() - 0.1, owned);
                }
            } else {
                settled_polls = 0;
            }
        };
        done.store(true, Ordering::Relaxed);
        eprintln!(
            "    the new group holds {} slots after {:.1} s",
            result.1, result.0
        );
        Ok::<_, anyhow::Error>(result)
    };
    let (during, change) = tokio::join!(during, change);
    let (move_seconds, slots_moved) = change?;
    Ok(GroupAddResult {
        workflows,
        groups,
        load_seconds,
        before,
        during,
        move_seconds,
        slots_moved,
        workflows_moved: workflows * slots_moved / u64::from(crate::SLOTS),
    })
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
