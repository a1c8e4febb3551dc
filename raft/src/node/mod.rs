//! A node: the store, the meta group and the data groups, the peer listener and the tasks
//! that keep them going. The API layer talks to [`RaftNode`] only.
//!
//! One job a file: [`routing`] sends client work to a group's leader (here or over the peer
//! connection), [`clock`] is where time enters the state machine, [`raft_timers`] drives
//! heartbeats and elections, [`balancer`] spreads leadership, [`bootstrap`] creates a cluster
//! and checks a data directory, [`disk`] watches free space.

mod balancer;
mod bootstrap;
mod clock;
mod disk;
mod raft_timers;
mod routing;

pub use bootstrap::DATA_FORMAT;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use raftflow_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::consensus::{GroupParts, GroupRaft, GroupStatus, NodeAddr, Timing};
use crate::proposer::Proposer;
use crate::ring::SlotTable;
use crate::signals::Signals;
use crate::transport::{serve_peers, PeerClients, Registry};
use crate::{Error, Result};
use disk::FreeDisk;

/// The metadata group: membership, definitions. Data groups are `1..=groups`.
pub const META_GROUP: u64 = 0;
/// A leader refuses client writes below this much free disk unless configured otherwise.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Address the peer listener binds.
    pub peer_listen: String,
    /// Every node of the cluster (this one included) with its addresses.
    pub members: BTreeMap<u64, NodeAddr>,
    /// Number of data groups.
    pub groups: u64,
    pub timing: Timing,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Bind outgoing peer connections to this source address.
    pub bind_source_ip: Option<IpAddr>,
    /// A leader refuses client writes while its data disk has less free space.
    pub min_free_disk_bytes: u64,
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct RaftCounters {
    /// Client commands proposed by this node as a leader.
    pub proposals: AtomicU64,
    /// Entries those commands went into (several commands share one under load).
    pub proposal_entries: Arc<AtomicU64>,
    pub proposals_failed: AtomicU64,
    pub read_barriers: AtomicU64,
}

pub struct RaftNode {
    id: u64,
    config: NodeConfig,
    store: Arc<Store>,
    registry: Arc<Registry>,
    clients: Arc<PeerClients>,
    slots: SlotTable,
    counters: RaftCounters,
    /// Each group's proposer, by group id.
    proposers: Vec<Arc<Proposer>>,
    signals: Arc<Signals>,
    free_disk: FreeDisk,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The leader another node or openraft named, with its addresses, for a `NotLeader` answer.
pub(crate) fn leader_hint(
    members: &BTreeMap<u64, NodeAddr>,
    leader: Option<u64>,
) -> Option<(u64, NodeAddr)> {
    let id = leader?;
    Some((id, members.get(&id)?.clone()))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RaftNode {
    /// Opens the store, starts every group and the peer listener, and (on the lowest-id node
    /// of a brand-new cluster) initialises the cluster.
    pub async fn start(config: NodeConfig) -> Result<Arc<RaftNode>> {
        if !config.members.contains_key(&config.id) {
            return Err(Error::Config(format!(
                "node {} is not in the member list {:?}",
                config.id,
                config.members.keys().collect::<Vec<_>>()
            )));
        }
        if config.groups == 0 {
            return Err(Error::Config(
                "a cluster needs at least one data group".into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Config(format!("create {}: {e}", config.data_dir.display())))?;
        let store = Store::open(&config.data_dir.join("db"))?;
        bootstrap::check_data_dir(&store, config.groups)?;
        let registry = Arc::new(Registry::default());
        let clients = PeerClients::new(config.bind_source_ip);
        let signals = Arc::new(Signals::default());
        let counters = RaftCounters::default();
        let mut proposers = Vec::new();
        for group in std::iter::once(META_GROUP).chain(1..=config.groups) {
            let raft = GroupRaft::open(GroupParts {
                node: config.id,
                group,
                store: store.clone(),
                signals: signals.clone(),
                clients: clients.clone(),
                timing: config.timing,
                snapshot_every: config.snapshot_every,
                log_kept_behind_snapshot: config.log_kept_behind_snapshot,
            })
            .await?;
            proposers.push(Proposer::new(
                group,
                raft.clone(),
                signals.clone(),
                config.members.clone(),
                counters.proposal_entries.clone(),
            ));
            registry.insert(group, raft);
        }
        let listener = TcpListener::bind(&config.peer_listen)
            .await
            .map_err(|e| Error::Config(format!("bind peer address {}: {e}", config.peer_listen)))?;
        let node = Arc::new(RaftNode {
            id: config.id,
            slots: SlotTable::new(config.groups),
            config,
            store,
            registry: registry.clone(),
            clients: clients.clone(),
            counters,
            proposers,
            signals,
            free_disk: FreeDisk::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        registry.set_forwarder(Arc::new(routing::ServeForwarded(Arc::downgrade(&node))));
        let mut tasks = vec![tokio::spawn(serve_peers(listener, registry))];
        tasks.push(tokio::spawn(node.clone().bootstrap(clients)));
        tasks.push(tokio::spawn(node.clone().balance_leaders()));
        tasks.push(tokio::spawn(node.clone().run_clock()));
        tasks.push(tokio::spawn(node.clone().run_raft_timers()));
        node.tasks.lock().expect("lock").extend(tasks);
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn members(&self) -> &BTreeMap<u64, NodeAddr> {
        &self.config.members
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn counters(&self) -> &RaftCounters {
        &self.counters
    }

    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    pub fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// The data group that owns workflow `id`.
    pub fn group_of(&self, id: &str) -> u64 {
        self.slots.group_of(id)
    }

    pub fn data_groups(&self) -> impl Iterator<Item = u64> {
        1..=self.config.groups
    }

    fn raft(&self, group: u64) -> Result<GroupRaft> {
        self.registry.get(group).ok_or(Error::NoSuchGroup(group))
    }

    /// Every group's status as this node sees it: the meta group first.
    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.registry
            .all()
            .into_iter()
            .map(|(id, raft)| raft.status(id))
            .collect()
    }

    /// Whether every group on this node knows a leader.
    pub fn all_groups_have_leader(&self) -> bool {
        self.registry
            .all()
            .iter()
            .all(|(_, raft)| raft.leader().is_some())
    }

    /// This replica's applied index of `group` and a digest of all its rows at that index,
    /// read from one consistent view: replicas at the same index must have the same digest.
    pub fn group_digest(&self, group: u64) -> Result<(Option<u64>, u64)> {
        self.raft(group)?;
        let rows = self.store.export_group_state(group)?;
        let mut h = crate::ring::StableHasher::default();
        let mut applied = None;
        for (k, v) in &rows {
            if k.as_slice() == crate::tables::APPLIED {
                // The applied row carries the leader id of the entry; only the index matters.
                applied = crate::consensus::applied_index(v)?;
                continue;
            }
            // Lengths first, so that row boundaries are part of what is hashed.
            h.write(&(k.len() as u64).to_be_bytes());
            h.write(k);
            h.write(&(v.len() as u64).to_be_bytes());
            h.write(v);
        }
        Ok((applied, h.finish()))
    }

    /// Stops every group and background task. Durable state is already on disk.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
        for (group, raft) in self.registry.all() {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(group, error = %e, "group shutdown failed");
            }
        }
    }
}
