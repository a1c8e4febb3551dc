//! A node: the store, the meta group and the data groups, the peer listener, bootstrap and
//! leader balancing. The API layer talks to this type only; openraft stays behind `glue`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use raftflow_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::command::{Command, Outcome, Stamped};
use crate::glue::log_store::GroupLogStore;
use crate::glue::network::{
    serve_peers, Forward, ForwardError, ForwardReply, Forwarder, GroupNetwork, PeerClients,
    Registry,
};
use crate::glue::state_machine::GroupStateMachine;
use crate::glue::{raft_config, NodeAddr, Raft, ServerState, Timing};
use crate::proposer::Proposer;
use crate::ring::SlotTable;
use crate::signals::Signals;
use crate::{Error, Result};

/// The metadata group: membership, definitions. Data groups are `1..=groups`.
pub const META_GROUP: u64 = 0;
/// A leader refuses client writes below this much free disk unless configured otherwise.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 64 << 20;
/// How often the balancer looks at leadership.
const BALANCE_EVERY: Duration = Duration::from_secs(1);
/// How often bootstrap asks peers whether the cluster already exists.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(300);
/// How often the clock looks at leadership and deadlines when nothing wakes it sooner; a
/// group whose leadership this node just won is ticked within this time.
const CLOCK_IDLE_CHECK: Duration = Duration::from_millis(100);
/// How often the Raft timer task looks at every group: a third of a heartbeat interval.
const RAFT_TIMER_STEPS_PER_HEARTBEAT: u32 = 3;
/// How soon the clock retries a tick that failed (lost leadership, no quorum).
const TICK_RETRY: Duration = Duration::from_millis(50);
/// A request that met a leadership change looks for the new leader again after this long,
/// doubling up to `LEADER_RETRY_MAX` (a transfer takes a few ms; an election up to 1.5 s).
const LEADER_RETRY_FIRST: Duration = Duration::from_millis(5);
const LEADER_RETRY_MAX: Duration = Duration::from_millis(100);

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

/// Leadership and progress of one group as this node sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot: Option<u64>,
    /// Last log index purged from this node's log.
    pub purged: Option<u64>,
    pub role: &'static str,
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

/// Serves forwarded work for the node while it exists.
struct ServeForwarded(std::sync::Weak<RaftNode>);

impl Forwarder for ServeForwarded {
    fn serve(
        &self,
        group: u64,
        work: Forward,
    ) -> BoxFuture<'static, std::result::Result<ForwardReply, ForwardError>> {
        let node = self.0.upgrade();
        Box::pin(async move {
            let Some(node) = node else {
                return Err(ForwardError::Unavailable("node is shutting down".into()));
            };
            node.serve_forwarded(group, work)
                .await
                .map_err(|e| match e {
                    Error::NotLeader { leader } => {
                        ForwardError::NotLeader(leader.map(|(id, _)| id))
                    }
                    Error::Unavailable(m) => ForwardError::Unavailable(m),
                    Error::StorageFull(m) => ForwardError::StorageFull(m),
                    Error::Storage(s) if s.is_no_space() => {
                        ForwardError::StorageFull(s.to_string())
                    }
                    other => ForwardError::Failed(other.to_string()),
                })
        })
    }
}

/// Where a node records the number of data groups its cluster was created with.
const GROUPS_KEY: &str = "data-groups";

/// The number of data groups is fixed when a cluster is created: workflows hash to groups by
/// it, so a node started with another number would look for them in the wrong groups (and
/// groups it never had would wait for a leader forever). The first start records the number;
/// later starts must match it.
fn check_group_count(store: &Store, groups: u64) -> Result<()> {
    match store.get_raft_meta(META_GROUP, GROUPS_KEY)? {
        Some(bytes) => {
            let created: u64 = raftflow_storage::codec::decode(&bytes)?;
            if created != groups {
                return Err(Error::Config(format!(
                    "this data directory belongs to a cluster created with {created} data groups, \
                     not {groups}: the number of groups is fixed when a cluster is created"
                )));
            }
            Ok(())
        }
        None => {
            let mut batch = raftflow_storage::Batch::default();
            store.put_raft_meta(
                &mut batch,
                META_GROUP,
                GROUPS_KEY,
                &raftflow_storage::codec::encode(&groups)?,
            );
            Ok(store.write_synced(batch)?)
        }
    }
}

/// How long a reading of the data disk's free bytes serves writes before it is taken again.
const FREE_DISK_TTL: Duration = Duration::from_millis(100);

/// The data disk's free bytes, read at most every [`FREE_DISK_TTL`] (a `statvfs` per write
/// was a tenth of a leader's system calls); the limit is a margin, so 100 ms is fresh enough.
#[derive(Default)]
struct FreeDisk(std::sync::Mutex<Option<(Instant, Option<u64>)>>);

impl FreeDisk {
    fn bytes(&self, path: &std::path::Path) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some((at, free)) if at.elapsed() < FREE_DISK_TTL => free,
            _ => {
                let free = available_disk_bytes(path);
                *last = Some((Instant::now(), free));
                free
            }
        }
    }
}

/// Free bytes on the filesystem holding `path`, if the OS tells.
fn available_disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail * st.f_frsize)
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
        check_group_count(&store, config.groups)?;
        let registry = Arc::new(Registry::default());
        let clients = PeerClients::new(config.bind_source_ip);
        let signals = Arc::new(Signals::default());
        let counters = RaftCounters::default();
        let mut proposers = Vec::new();
        for group in std::iter::once(META_GROUP).chain(1..=config.groups) {
            let sm = GroupStateMachine::open(group, store.clone(), signals.clone())?;
            let log = GroupLogStore::new(group, store.clone());
            let network = GroupNetwork {
                group,
                clients: clients.clone(),
            };
            let raft_cfg = raft_config(
                group,
                config.timing,
                config.snapshot_every,
                config.log_kept_behind_snapshot,
            );
            let raft = Raft::new(config.id, raft_cfg, network, log, sm)
                .await
                .map_err(|e| Error::Fatal(e.to_string()))?;
            // The node's one timer task drives heartbeats and elections (see `run_raft_timers`).
            raft.runtime_config().tick(false);
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
        registry.set_forwarder(Arc::new(ServeForwarded(Arc::downgrade(&node))));
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

    fn raft(&self, group: u64) -> Result<Raft> {
        self.registry.get(group).ok_or(Error::NoSuchGroup(group))
    }

    /// The leader of `group` as this node knows it.
    pub fn leader_of(&self, group: u64) -> Option<(u64, NodeAddr)> {
        let raft = self.registry.get(group)?;
        let leader = raft.metrics().borrow_watched().current_leader?;
        let addr = self.config.members.get(&leader)?.clone();
        Some((leader, addr))
    }

    pub fn is_leader(&self, group: u64) -> bool {
        self.leader_of(group).map(|(id, _)| id) == Some(self.id)
    }

    /// Stamps `command` with this (leader's) clock, replicates it to a majority, applies it,
    /// and returns its outcome.
    pub async fn propose(&self, group: u64, command: Command) -> Result<Outcome> {
        let raft = self.raft(group)?;
        self.check_quorum_contact(&raft, group)?;
        self.counters.proposals.fetch_add(1, Ordering::Relaxed);
        let mut command = command;
        if crate::mutant::active() == crate::mutant::Mutant::EarlyAck {
            let stamped = Stamped {
                at_ms: self.signals.stamp(group, now_ms()),
                command,
            };
            if let Some(predicted) = self.predict(group, &stamped) {
                raft.client_write_ff(stamped, None)
                    .await
                    .map_err(|e| Error::Fatal(e.to_string()))?;
                return Ok(predicted);
            }
            command = stamped.command;
        }
        let proposer = self
            .proposers
            .get(group as usize)
            .ok_or(Error::NoSuchGroup(group))?;
        let outcome = proposer.propose(command).await;
        if outcome.is_err() {
            self.counters
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// The `early-ack` mutant's guess of an event's outcome from this replica, before commit.
    fn predict(&self, group: u64, stamped: &Stamped) -> Option<Outcome> {
        let Command::Event {
            id,
            event,
            payload_json,
            expected_revision,
            ..
        } = &stamped.command
        else {
            return None;
        };
        let rec = crate::tables::read_workflow(&self.store, group, id).ok()??;
        let def = crate::tables::read_pinned(
            &self.store,
            group,
            &rec.workflow.definition,
            rec.workflow.version,
        )
        .ok()??;
        let payload = payload_json
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok());
        let outcome = match raftflow_workflow::fire_event(
            &def,
            &rec.workflow,
            event,
            payload,
            *expected_revision,
            raftflow_workflow::EventOrigin::Client,
            stamped.at_ms,
        ) {
            Ok((workflow, _)) => Outcome::Workflow {
                workflow,
                created: false,
            },
            Err(r) => Outcome::Refused(r.into()),
        };
        Some(outcome)
    }

    /// A leader that has not heard from a quorum for longer than an election timeout is
    /// almost surely cut off: answer 503 at once rather than after the write timeout. (Only
    /// availability depends on this; a request that went ahead would still need a quorum.)
    fn check_quorum_contact(&self, raft: &Raft, group: u64) -> Result<()> {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        // A lone voter is its own quorum; openraft never renews its quorum-ack time.
        if m.state != ServerState::Leader
            || m.membership_config
                .membership()
                .voter_ids()
                .nth(1)
                .is_none()
        {
            return Ok(());
        }
        let silent_ms = m
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&(*t).into_inner()).as_millis() as u64);
        match silent_ms {
            Some(ms) if ms > self.config.timing.election_max_ms => Err(Error::Unavailable(
                format!("group {group}: this leader has not heard from a quorum for {ms} ms"),
            )),
            _ => Ok(()),
        }
    }

    /// The log index a linearizable read of `group` must see applied, from this node as the
    /// group's leader once it has confirmed its leadership with a quorum (Raft's read index).
    async fn read_index(&self, group: u64) -> Result<u64> {
        let raft = self.raft(group)?;
        self.check_quorum_contact(&raft, group)?;
        self.counters.read_barriers.fetch_add(1, Ordering::Relaxed);
        match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: leader_hint(&self.config.members, f.leader_id),
                })
            }
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    /// Waits until this node's replica of `group` has applied `index`.
    async fn await_applied(&self, group: u64, index: u64) -> Result<()> {
        let raft = self.raft(group)?;
        let applied = raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index);
        if applied >= Some(index) {
            return Ok(());
        }
        raft.wait(None)
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("group {group}: {e}")))
    }

    /// Makes a following read of this node's replica of `group` linearizable: takes the read
    /// index from the group's leader (this node, or over the peer connection, as etcd serves
    /// reads on followers) and waits until this replica has applied it.
    pub async fn linearize(&self, group: u64, timeout: Duration) -> Result<()> {
        let work = || Forward::ReadIndex {
            timeout_ms: timeout.as_millis() as u64,
        };
        let here = || -> BoxFuture<'_, Result<ForwardReply>> {
            Box::pin(async move { Ok(ForwardReply::ReadIndex(self.read_index(group).await?)) })
        };
        match self.route(group, timeout, work, here).await? {
            ForwardReply::ReadIndex(index) => self.await_applied(group, index).await,
            other => Err(Error::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Commits a client's `command` on the leader of `group`, wherever it is: here, or over
    /// the peer connection to the leader this node knows.
    pub async fn commit(&self, group: u64, command: Command, timeout: Duration) -> Result<Outcome> {
        let work = || Forward::Propose {
            command: command.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let here = || -> BoxFuture<'_, Result<ForwardReply>> {
            let command = command.clone();
            Box::pin(async move {
                Ok(ForwardReply::Outcome(Box::new(
                    self.commit_here(group, command).await?,
                )))
            })
        };
        match self.route(group, timeout, work, here).await? {
            ForwardReply::Outcome(o) => Ok(*o),
            other => Err(Error::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs client work on the leader of `group`: `here()` when that is this node, else
    /// `work()` over the peer connection to the leader this node knows.
    ///
    /// A leadership change (an election, or the balancer handing a group back to a node that
    /// restarted) answers `NotLeader` for a few milliseconds up to an election timeout. Rather
    /// than pass that on as a 503, this follows the hint of the node asked, and otherwise waits
    /// for this node to learn of a leader, for up to half of `timeout`. `NotLeader` means the
    /// work was not started (openraft refuses it before appending anything), so running it
    /// again cannot apply it twice.
    ///
    /// A leader this node has not heard from for an election timeout is not asked: this node
    /// is cut off from it (a partition) or it is gone and an election is under way. Within two
    /// election timeouts an election with a quorum has usually ended, so the request waits as
    /// above; after that the node is cut off and answers 503 at once, rather than after the
    /// whole timeout of a forward that cannot arrive.
    async fn route<'a>(
        &'a self,
        group: u64,
        timeout: Duration,
        work: impl Fn() -> Forward,
        here: impl Fn() -> BoxFuture<'a, Result<ForwardReply>>,
    ) -> Result<ForwardReply> {
        let settle_until = Instant::now() + timeout / 2;
        let mut pause = LEADER_RETRY_FIRST;
        let mut leader = self.leader_of(group);
        let mut followed_hint = false;
        let lost_after = Duration::from_millis(self.config.timing.election_max_ms);
        let cut_off_error = |id: u64, quiet: Duration| {
            Error::Unavailable(format!(
                "group {group}: node {} has not heard from its leader (node {id}) for {} ms",
                self.id,
                quiet.as_millis()
            ))
        };
        loop {
            let tried = leader.as_ref().map(|(id, _)| *id);
            // The silent leader this round did not ask, and how long it has been silent.
            let mut cut_off = None;
            let result = match leader.take() {
                None => Err(Error::NotLeader { leader: None }),
                Some((id, _)) if id == self.id => here().await,
                Some((id, addr)) => match self.registry.silence(group) {
                    Some(quiet) if quiet > lost_after * 2 => return Err(cut_off_error(id, quiet)),
                    Some(quiet) if quiet > lost_after => {
                        cut_off = Some((id, quiet));
                        Err(Error::NotLeader { leader: None })
                    }
                    _ => self
                        .clients
                        .forward(id, &addr.peer, group, work(), timeout)
                        .await
                        .map_err(|e| self.forward_error(e)),
                },
            };
            let hint = match result {
                Err(Error::NotLeader { leader: hint }) => hint,
                r => return r,
            };
            // The node asked names another leader: ask it at once, once in a row.
            if let Some(next) = hint.as_ref().filter(|(next, _)| Some(*next) != tried) {
                if !followed_hint {
                    followed_hint = true;
                    leader = Some(next.clone());
                    continue;
                }
            }
            if Instant::now() + pause > settle_until {
                return Err(match cut_off {
                    Some((id, quiet)) => cut_off_error(id, quiet),
                    None => Error::NotLeader { leader: hint },
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LEADER_RETRY_MAX);
            followed_hint = false;
            leader = self.leader_of(group).or(hint);
        }
    }

    fn forward_error(&self, e: ForwardError) -> Error {
        match e {
            ForwardError::NotLeader(leader) => Error::NotLeader {
                leader: leader_hint(&self.config.members, leader),
            },
            ForwardError::Unavailable(m) => Error::Unavailable(m),
            ForwardError::StorageFull(m) => Error::StorageFull(m),
            ForwardError::Failed(m) => Error::Fatal(m),
        }
    }

    /// A client write on this node as the group's leader: refused while the data disk is
    /// nearly full, else proposed.
    async fn commit_here(&self, group: u64, command: Command) -> Result<Outcome> {
        if let Some(free) = self.free_disk.bytes(&self.config.data_dir) {
            if free < self.config.min_free_disk_bytes {
                return Err(Error::StorageFull(format!(
                    "the data disk of node {} has {free} bytes free, below the {} bytes writes need",
                    self.id, self.config.min_free_disk_bytes
                )));
            }
        }
        self.propose(group, command).await
    }

    /// Serves work another node forwarded, as the leader of `group`.
    async fn serve_forwarded(&self, group: u64, work: Forward) -> Result<ForwardReply> {
        let timeout_ms = match &work {
            Forward::Propose { timeout_ms, .. } | Forward::ReadIndex { timeout_ms } => *timeout_ms,
        };
        // A node that no longer leads answers NotLeader with its hint from openraft itself.
        let served = async {
            Ok(match work {
                Forward::Propose { command, .. } => {
                    ForwardReply::Outcome(Box::new(self.commit_here(group, command).await?))
                }
                Forward::ReadIndex { .. } => ForwardReply::ReadIndex(self.read_index(group).await?),
            })
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), served)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "group {group} did not answer within {timeout_ms} ms; a write may still apply"
                )))
            })
    }

    /// Every group's status as this node sees it: the meta group first.
    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.registry
            .all()
            .into_iter()
            .map(|(id, raft)| {
                let m = raft.metrics().borrow_watched().clone();
                GroupStatus {
                    id,
                    leader: m.current_leader,
                    term: m.current_term,
                    voters: m.membership_config.membership().voter_ids().collect(),
                    last_applied: m.last_applied.as_ref().map(|l| l.index),
                    last_log_index: m.last_log_index,
                    committed: m.local_committed.as_ref().map(|l| l.index),
                    snapshot: m.snapshot.as_ref().map(|l| l.index),
                    purged: m.purged.as_ref().map(|l| l.index),
                    role: match m.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Candidate => "candidate",
                        ServerState::Learner => "learner",
                        ServerState::Shutdown => "shutdown",
                    },
                }
            })
            .collect()
    }

    /// Whether every group on this node knows a leader.
    pub fn all_groups_have_leader(&self) -> bool {
        self.registry
            .all()
            .iter()
            .all(|(_, raft)| raft.metrics().borrow_watched().current_leader.is_some())
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
                applied = crate::glue::applied_index(v)?;
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

    /// On the lowest-id member of a cluster that does not exist yet, initialise every group
    /// with all members as voters. A node never initialises while any peer reports Raft state,
    /// so a node whose data directory was wiped rejoins instead of forking the cluster.
    async fn bootstrap(self: Arc<Self>, clients: Arc<PeerClients>) {
        let lowest = *self
            .config
            .members
            .keys()
            .next()
            .expect("members not empty");
        if self.id != lowest {
            return;
        }
        let Ok(meta) = self.raft(META_GROUP) else {
            return;
        };
        if meta.is_initialized().await.unwrap_or(true) {
            return;
        }
        loop {
            let mut all_fresh = true;
            let mut all_answered = true;
            for (id, addr) in &self.config.members {
                if *id == self.id {
                    continue;
                }
                match clients.is_initialized(*id, &addr.peer, META_GROUP).await {
                    Ok(true) => all_fresh = false,
                    Ok(false) => {}
                    Err(_) => all_answered = false,
                }
            }
            if !all_fresh {
                tracing::info!(
                    "a peer already has cluster state; joining it instead of initialising"
                );
                return;
            }
            if all_answered {
                break;
            }
            tokio::time::sleep(BOOTSTRAP_RETRY).await;
        }
        for (group, raft) in self.registry.all() {
            match raft.initialize(self.config.members.clone()).await {
                Ok(()) => tracing::info!(group, "initialised group"),
                Err(e) => tracing::warn!(group, error = %e, "initialise failed"),
            }
        }
    }

    /// The leaders' clock: for every data group this node leads, proposes a `Tick` once the
    /// group's earliest deadline (lease expiry, retry backoff, timer) has passed on this
    /// node's clock. Time thus enters the state machine only through log entries, and a new
    /// leader picks up the deadlines its replica already holds.
    async fn run_clock(self: Arc<Self>) {
        let mut in_flight: BTreeMap<u64, JoinHandle<()>> = BTreeMap::new();
        // Per group, the group time before which a failed or slow tick is not proposed again.
        let mut retry_at: BTreeMap<u64, u64> = BTreeMap::new();
        loop {
            in_flight.retain(|_, h| !h.is_finished());
            let now = now_ms();
            let mut wake = now + CLOCK_IDLE_CHECK.as_millis() as u64;
            for (group, due) in self.signals.deadlines() {
                if group == META_GROUP || !self.is_leader(group) {
                    continue;
                }
                let due = due.max(retry_at.get(&group).copied().unwrap_or(0));
                // The group's time as a tick would be stamped now (see `Signals::stamp`).
                let group_now = self.signals.stamp(group, now);
                if due > group_now {
                    wake = wake.min(now + (due - group_now));
                    continue;
                }
                if in_flight.contains_key(&group) {
                    wake = wake.min(now + TICK_RETRY.as_millis() as u64);
                    continue;
                }
                // In group time, like `due`: this node's wall clock may be far from it.
                retry_at.insert(group, group_now + TICK_RETRY.as_millis() as u64);
                let node = self.clone();
                in_flight.insert(
                    group,
                    tokio::spawn(async move {
                        if let Err(e) = node.propose(group, Command::Tick).await {
                            tracing::debug!(group, error = %e, "tick failed");
                        }
                    }),
                );
            }
            let sleep = Duration::from_millis(wake.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.signals.deadlines_changed() => {}
            }
        }
    }

    /// Raft's timers for every group from one task, in place of openraft's per-group tick
    /// (which wakes each group about five times per heartbeat interval, most of an idle
    /// node's CPU with many groups). A group this node leads heartbeats every
    /// `heartbeat_ms`; all of them at the same moment, so the frames for one peer leave in one
    /// write. A group that has heard from no leader or candidate for its election timeout
    /// (drawn anew from `[election_min_ms, election_max_ms)` after each attempt) starts a
    /// Pre-Vote, as openraft's own timer would.
    async fn run_raft_timers(self: Arc<Self>) {
        use rand::Rng;
        let timing = self.config.timing;
        let heartbeat = Duration::from_millis(timing.heartbeat_ms);
        let draw = || {
            Duration::from_millis(
                rand::thread_rng().gen_range(timing.election_min_ms..timing.election_max_ms),
            )
        };
        let mut step = tokio::time::interval(heartbeat / RAFT_TIMER_STEPS_PER_HEARTBEAT);
        step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = tokio::time::Instant::now();
        // Per group: the election timeout in force and when this node last campaigned.
        let mut timeouts: BTreeMap<u64, (Duration, Option<tokio::time::Instant>)> = BTreeMap::new();
        loop {
            step.tick().await;
            let now = tokio::time::Instant::now();
            let beat = now >= next_heartbeat;
            if beat {
                next_heartbeat = now + heartbeat;
            }
            for (group, raft, contact) in self.registry.all_with_contact() {
                let state = raft.metrics().borrow_watched().state;
                match state {
                    ServerState::Leader => {
                        // A leader hears from itself: when it steps down, its silence starts
                        // now, not when it last followed someone.
                        contact.touch();
                        if beat {
                            let _ = raft.trigger().heartbeat().await;
                        }
                    }
                    ServerState::Follower | ServerState::Candidate => {
                        let (timeout, campaigned) = timeouts.entry(group).or_insert((draw(), None));
                        let quiet = contact.silence() >= *timeout
                            && campaigned.is_none_or(|t| now.duration_since(t) >= *timeout);
                        if quiet {
                            tracing::debug!(group, "no leader heard within the election timeout");
                            *campaigned = Some(now);
                            *timeout = draw();
                            let _ = raft.trigger().elect(true).await;
                        }
                    }
                    ServerState::Learner | ServerState::Shutdown => {}
                }
            }
        }
    }

    /// Moves leadership of each data group to its preferred node, so that every node leads
    /// about G/N groups. A group's preferred node is member `(group - 1) mod N` in id order;
    /// leadership moves only to a preferred node whose log has caught up.
    async fn balance_leaders(self: Arc<Self>) {
        let ids: Vec<u64> = self.config.members.keys().copied().collect();
        let mut tick = tokio::time::interval(BALANCE_EVERY);
        loop {
            tick.tick().await;
            for group in self.data_groups() {
                let Some(raft) = self.registry.get(group) else {
                    continue;
                };
                let preferred = ids[((group - 1) % ids.len() as u64) as usize];
                if preferred == self.id {
                    continue;
                }
                let caught_up = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow_watched();
                    if m.state != ServerState::Leader {
                        continue;
                    }
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&preferred).cloned().flatten())
                        .map(|l| l.index);
                    matched.is_some() && matched >= m.last_log_index
                };
                if caught_up {
                    tracing::info!(
                        group,
                        to = preferred,
                        "transferring leadership to the preferred node"
                    );
                    let _ = raft.trigger().transfer_leader(preferred).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_the_group_count_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            check_group_count(&store, 4).unwrap();
            check_group_count(&store, 4).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        check_group_count(&store, 4).expect("the same number after a reopen");
        let err = check_group_count(&store, 8).unwrap_err().to_string();
        assert!(err.contains("created with 4 data groups, not 8"), "{err}");
        assert!(check_group_count(&store, 2).is_err());
    }
}
