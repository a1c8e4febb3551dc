//! `raftflow-bench`: raftflow and etcd on the same machine, in the same run, under the same
//! closed-loop load; a table, a JSON file and a chart.
//!
//! Each system runs alone: a fresh three-node raftflow cluster does every workload at every
//! concurrency and is stopped, then a fresh three-member etcd cluster does the same, so neither
//! pays for the other's idle CPU.

pub mod etcd;
pub mod load;
pub mod procstat;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use raftflow_api::client::Client;
use serde::Serialize;

use crate::{Cluster, Spec};
use etcd::{EtcdClient, EtcdCluster};
use load::{Cell, Conn, Measured, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Raftflow,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Raftflow => "raftflow",
            System::Etcd => "etcd",
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
    #[serde(skip)]
    pub bin: Option<PathBuf>,
}

/// One cell of the run: a system, a workload, a number of clients.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    #[serde(flatten)]
    pub measured: Measured,
    /// raftflow: log entries made durable per WAL fsync, all nodes, during the cell.
    pub entries_per_fsync: Option<f64>,
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
        match system {
            System::Raftflow => {
                let cluster = Cluster::launch(Spec {
                    groups: config.groups,
                    bin: config.bin.clone(),
                    env: config
                        .node_threads
                        .map(|n| vec![("TOKIO_WORKER_THREADS".into(), n.to_string())])
                        .unwrap_or_default(),
                    ..Spec::default()
                });
                cluster
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .context("raftflow cluster")?;
                // The balancer moves leaders in the first seconds; measure the steady state.
                cluster.wait_balanced(Duration::from_secs(60)).await?;
                let admin = cluster.client(1);
                admin
                    .put_definition("bench-pingpong", &load::pingpong())
                    .await?;
                admin
                    .put_definition("bench-task", &load::single_task())
                    .await?;
                let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.client.clone()).collect();
                let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
                let connect = |c: usize| {
                    Conn::Raftflow(Client::new(&addrs[c % addrs.len()], REQUEST_TIMEOUT))
                };
                for &workload in &config.workloads {
                    for &clients in &config.concurrency {
                        let before = wal_counters(&addrs).await;
                        let measured =
                            cell(config, system, workload, clients, &connect, &pids, &run_id).await;
                        let after = wal_counters(&addrs).await;
                        let (syncs, entries) = (after.0 - before.0, after.1 - before.1);
                        let row = Row {
                            system,
                            workload,
                            clients,
                            measured,
                            entries_per_fsync: (syncs > 0.0).then(|| entries / syncs),
                        };
                        report::print_row(&row);
                        rows.push(row);
                    }
                }
            }
            System::Etcd => {
                let cluster = EtcdCluster::start(3)?;
                cluster
                    .wait_ready(Duration::from_secs(60))
                    .await
                    .context("etcd cluster")?;
                let pids = cluster.pids();
                let connect = |c: usize| {
                    Conn::Etcd(EtcdClient::new(
                        &cluster.clients[c % cluster.clients.len()],
                        REQUEST_TIMEOUT,
                    ))
                };
                for &workload in config.workloads.iter().filter(|w| w.on_etcd()) {
                    for &clients in &config.concurrency {
                        let measured =
                            cell(config, system, workload, clients, &connect, &pids, &run_id).await;
                        let row = Row {
                            system,
                            workload,
                            clients,
                            measured,
                            entries_per_fsync: None,
                        };
                        report::print_row(&row);
                        rows.push(row);
                    }
                }
            }
        }
    }
    Ok(rows)
}

async fn cell(
    config: &Config,
    system: System,
    workload: Workload,
    clients: usize,
    connect: &dyn Fn(usize) -> Conn,
    pids: &[u32],
    run_id: &str,
) -> Measured {
    load::run_cell(Cell {
        workload,
        clients,
        warmup: Duration::from_secs(config.warmup_s),
        duration: Duration::from_secs(config.duration_s),
        connect,
        pids: pids.to_vec(),
        prefix: format!("b{run_id}-{}-{}-{clients}", system.name(), workload.name()),
    })
    .await
}

/// (WAL fsyncs, entries they covered), summed over the nodes' `/metrics`.
async fn wal_counters(addrs: &[String]) -> (f64, f64) {
    let http = reqwest::Client::new();
    let mut total = (0.0, 0.0);
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
                "raftflow_wal_fsyncs_total" => total.0 += value,
                "raftflow_wal_synced_entries_total" => total.1 += value,
                _ => {}
            }
        }
    }
    total
}
