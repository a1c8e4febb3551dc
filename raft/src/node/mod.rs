//! A node: the store, the meta group and the data groups, the peer listener and the tasks
//! that keep them going. The API layer talks to [`RaftNode`] only.
//!
//! One job a file: [`routing`] sends client work to a group's leader (here or over the peer
//! connection), [`clock`] is where time enters the state machine, [`raft_timers`] drives
//! heartbeats and elections, [`balancer`] spreads leadership, [`bootstrap`] creates a cluster
//! and checks a data directory, [`disk`] watches free space.

mod address_book;
mod balancer;
mod bootstrap;
mod clock;
mod disk;
mod membership;
mod raft_timers;
mod routing;
mod slots;

pub(crate) use address_book::AddressBook;
pub use bootstrap::DATA_FORMAT;
pub use membership::NodeView;
pub use slots::{SlotMoveView, COPY_CHUNK_BYTES, SLOTS_PER_MOVE};

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
use crate::signals::Signals;
use crate::transport::{serve_peers, PeerClients, Registry};
use crate::{Error, Result};
use disk::FreeDisk;

/// The metadata group: membership, definitions. Data groups are `1..=groups`.
pub const META_GROUP: u64 = 0;
/// Where a node records the id of its replica of a group that was added after the cluster
/// was created.
const REPLICA_KEY: &str = "replica";
/// A leader refuses client writes below this much free disk unless configured otherwise.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Address the peer listener binds.
    pub peer_listen: String,
    /// The nodes this one knows at start (itself included) with their addresses: the
    /// initial cluster, or the cluster a joining node asked to join.
    pub members: BTreeMap<u64, NodeAddr>,
    /// Whether this node joined a running cluster (`--join`) rather than being one of the
    /// members it was created with: it never initialises groups, and holds only the replicas
    /// it was given.
    pub joined: bool,
    /// Number of data groups.
    pub groups: u64,
    /// Voters of each data group when the cluster is created (odd, at most the members).
    /// Read only when the cluster is created; a group keeps its number of voters through
    /// every move.
    pub replication_factor: u64,
    pub timing: Timing,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Bind outgoing peer connections to this source address.
    pub bind_source_ip: Option<IpAddr>,
    /// A leader refuses client writes while its data disk has less free space.
    pub min_free_disk_bytes: u64,
    /// Mutual TLS on the peer port (both ends), when the cluster has certificates.
    pub peer_tls: Option<crate::transport::PeerTls>,
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
    /// Requests that met a "moved" answer and followed their slot.
    pub moved_answers: AtomicU64,
    /// Slot moves this node drove to their end, and the slots they moved.
    pub slot_moves: AtomicU64,
    pub slots_moved: AtomicU64,
    /// Rows and bytes the slot moves this node drove copied.
    pub slot_rows_copied: AtomicU64,
    pub slot_bytes_copied: AtomicU64,
}

pub struct RaftNode {
    id: u64,
    config: NodeConfig,
    store: Arc<Store>,
    registry: Arc<Registry>,
    clients: Arc<PeerClients>,
    /// The slot table and data groups, as last read from the meta replica.
    shape: std::sync::RwLock<Arc<slots::Shape>>,
    counters: RaftCounters,
    /// Where every known node can be reached.
    book: Arc<AddressBook>,
    /// The leader of each group this node holds no replica of, as last learnt from a hint.
    remote_leaders: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// The proposer of each group this node holds a replica of, by group id.
    proposers: std::sync::RwLock<BTreeMap<u64, Arc<Proposer>>>,
    signals: Arc<Signals>,
    free_disk: FreeDisk,
    /// Set once the cluster has recorded this node removed.
    removed: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
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
        let r = config.replication_factor;
        if !config.joined && (r == 0 || r > config.members.len() as u64) {
            return Err(Error::Config(format!(
                "a replication factor of {r} needs 1 to {} members in the initial cluster \
                 (each group's voters are on that many different nodes)",
                config.members.len()
            )));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Config(format!("create {}: {e}", config.data_dir.display())))?;
        let store = Store::open(&config.data_dir.join("db"))?;
        bootstrap::check_data_dir(&store, config.groups, config.joined)?;
        if !config.joined {
            bootstrap::check_replication_factor(&store, config.replication_factor)?;
        }
        let registry = Arc::new(Registry::default());
        let clients = PeerClients::new(config.bind_source_ip, config.peer_tls.clone());
        let signals = Arc::new(Signals::default());
        let counters = RaftCounters::default();
        let book = Arc::new(AddressBook::new(config.members.clone()));
        let listener = TcpListener::bind(&config.peer_listen)
            .await
            .map_err(|e| Error::Config(format!("bind peer address {}: {e}", config.peer_listen)))?;
        let node = Arc::new(RaftNode {
            id: config.id,
            shape: std::sync::RwLock::new(Arc::new(slots::Shape::initial(config.groups))),
            config,
            store,
            registry: registry.clone(),
            clients: clients.clone(),
            counters,
            book,
            remote_leaders: Default::default(),
            proposers: Default::default(),
            signals,
            free_disk: FreeDisk::default(),
            removed: tokio::sync::watch::Sender::new(false),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        for group in std::iter::once(META_GROUP).chain(node.data_groups()) {
            let replica = node.stored_replica(group)?;
            let raft = node.open_group(group, replica).await?;
            // A data group this node holds no replica of any more (or, having joined, was never
            // given) is closed again: only a brand-new cluster's first members create them.
            let created_here = !node.config.joined && node.placement(group).is_none();
            if group != META_GROUP && !created_here && !raft.is_initialized().await.unwrap_or(true)
            {
                node.close_group(group).await;
            }
        }
        registry.set_forwarder(Arc::new(routing::ServeForwarded(Arc::downgrade(&node))));
        let mut tasks = vec![tokio::spawn(serve_peers(
            listener,
            registry,
            node.config.peer_tls.clone(),
        ))];
        tasks.push(tokio::spawn(node.clone().bootstrap(clients)));
        tasks.push(tokio::spawn(node.clone().balance_leaders()));
        tasks.push(tokio::spawn(node.clone().run_clock()));
        tasks.push(tokio::spawn(node.clone().run_raft_timers()));
        tasks.push(tokio::spawn(node.clone().watch_membership()));
        tasks.push(tokio::spawn(node.clone().drive_membership()));
        tasks.push(tokio::spawn(node.clone().drive_slots()));
        node.tasks.lock().expect("lock").extend(tasks);
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Every node this one knows how to reach, with its addresses (removed nodes excluded).
    pub fn members(&self) -> BTreeMap<u64, NodeAddr> {
        self.book.all()
    }

    /// Whether this node holds a replica of `group`.
    pub fn hosts(&self, group: u64) -> bool {
        self.registry.get(group).is_some()
    }

    /// The id of this node's replica of `group` as its data directory records it: the node's
    /// own id unless the replica was added to the group after the cluster was created.
    fn stored_replica(&self, group: u64) -> Result<u64> {
        match self.store.get_raft_meta(group, REPLICA_KEY)? {
            Some(bytes) => Ok(raftflow_storage::codec::decode(&bytes)?),
            None => Ok(self.id),
        }
    }

    /// Opens this node's replica `replica` of `group` (empty if it has no state here) and
    /// starts serving it.
    async fn open_group(&self, group: u64, replica: u64) -> Result<GroupRaft> {
        // Nothing this node remembers of an earlier replica of the group may reach this one.
        self.forget_group(group);
        if replica != self.stored_replica(group)? {
            let mut batch = raftflow_storage::Batch::default();
            let bytes = raftflow_storage::codec::encode(&replica)?;
            self.store
                .put_raft_meta(&mut batch, group, REPLICA_KEY, &bytes);
            self.store.write_synced(batch)?;
        }
        let raft = GroupRaft::open(GroupParts {
            replica,
            group,
            store: self.store.clone(),
            signals: self.signals.clone(),
            clients: self.clients.clone(),
            timing: self.config.timing,
            snapshot_every: self.config.snapshot_every,
            log_kept_behind_snapshot: self.config.log_kept_behind_snapshot,
        })
        .await?;
        let proposer = Proposer::new(
            group,
            raft.clone(),
            self.signals.clone(),
            self.book.clone(),
            self.counters.proposal_entries.clone(),
        );
        self.proposers
            .write()
            .expect("proposers lock")
            .insert(group, proposer);
        self.registry.insert(group, raft.clone());
        Ok(raft)
    }

    /// Stops serving this node's replica of `group` (its rows stay).
    async fn close_group(&self, group: u64) {
        self.proposers
            .write()
            .expect("proposers lock")
            .remove(&group);
        if let Some(raft) = self.registry.remove(group) {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(group, error = %e, "group shutdown failed");
            }
        }
        self.forget_group(group);
    }

    /// Forgets what this node remembered of its replica of `group` (unless the
    /// `keep-replica-state` mutant runs).
    fn forget_group(&self, group: u64) {
        if crate::mutant::active() != crate::mutant::Mutant::KeepReplicaState {
            self.signals.forget_group(group);
        }
    }

    /// The proposer of this node's replica of `group`.
    fn proposer(&self, group: u64) -> Result<Arc<Proposer>> {
        self.proposers
            .read()
            .expect("proposers lock")
            .get(&group)
            .cloned()
            .ok_or(Error::NoSuchGroup(group))
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
        let mut h = crate::ring::StableHasher::default();
        let mut applied = None;
        self.store.visit_group_state(group, |k, v| {
            if k == crate::tables::APPLIED {
                // The applied row carries the leader id of the entry; only the index matters.
                applied = crate::consensus::applied_index(v)
                    .map_err(|e| raftflow_storage::StorageError::Corrupt(e.to_string()))?;
                return Ok(());
            }
            // Lengths first, so that row boundaries are part of what is hashed.
            h.write(&(k.len() as u64).to_be_bytes());
            h.write(k);
            h.write(&(v.len() as u64).to_be_bytes());
            h.write(v);
            Ok(())
        })?;
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
