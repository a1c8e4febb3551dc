//! Consensus: everything that names openraft's types lives under this module, so an openraft
//! upgrade touches one place. It holds the type configuration, the log store, the state
//! machine's adapter (the apply logic itself is [`crate::apply`]), openraft's side of the
//! transport, and [`GroupRaft`], the handle through which the rest of the crate drives one
//! group's replica.

pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod state_machine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, Fatal, LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use raftflow_storage::Store;
use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Stamped};
use crate::signals::Signals;
use crate::transport::PeerClients;

pub use network::{RaftReply, RaftRequest};

/// Addresses of a node, as stored in Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The HTTP API address (host:port).
    pub client: String,
    /// The peer (Raft) address (host:port).
    pub peer: String,
}

openraft::declare_raft_types!(
    /// raftflow's Raft types.
    pub TypeConfig:
        D = Stamped,
        R = Outcome,
        NodeId = u64,
        Node = NodeAddr,
);

pub type Raft = openraft::Raft<TypeConfig, state_machine::GroupStateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub use state_machine::SnapshotData;

/// Timing of every group, chosen for many groups on few cores: a leader sends a heartbeat
/// every `heartbeat_ms`, a follower that hears nothing for a random time in
/// `[election_min_ms, election_max_ms)` starts an election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 150,
            election_min_ms: 750,
            election_max_ms: 1500,
        }
    }
}

/// Log entries after which a group builds a snapshot and purges the log behind it.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;
/// Entries kept in the log behind a snapshot, so briefly lagging followers catch up from the
/// log instead of a snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 5_000;

/// The log index in an encoded applied-state row.
pub(crate) fn applied_index(row: &[u8]) -> crate::Result<Option<u64>> {
    state_machine::applied_index(row)
}

pub(crate) fn raft_config(
    group: u64,
    timing: Timing,
    snapshot_every: u64,
    keep_behind: u64,
) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: format!("group-{group}"),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 512,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: keep_behind,
        enable_pre_vote: Some(true),
        // A leader sends entries to followers before its own fsync covers them, so after a
        // crash its log may lack a tail that a follower holds. Resuming leadership in the same
        // term would then write different entries under the same log ids, and that follower
        // would keep (and apply) the old ones. A restarted node always stands for a new term.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Arc::new(config.validate().expect("raft config is valid"))
}

/// A replica's part in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// Leadership and progress of one group as this node sees it; replicas are named by their
/// nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    /// Non-voting replicas (catching up before they become voters).
    pub learners: Vec<u64>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    /// Last log index covered by this node's latest snapshot.
    pub snapshot: Option<u64>,
    /// Last log index purged from this node's log.
    pub purged: Option<u64>,
    pub role: &'static str,
}

/// A group's members as one replica knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: std::collections::BTreeSet<u64>,
    pub learners: std::collections::BTreeSet<u64>,
    pub nodes: BTreeMap<u64, NodeAddr>,
}

/// Why a write or a read index was not served.
#[derive(Debug)]
pub(crate) enum ConsensusError {
    /// This replica does not lead; the leader it knows, if any. Nothing was appended.
    NotLeader(Option<u64>),
    /// No quorum, shutting down, or another failure; a write may still apply.
    Unavailable(String),
}

/// Where a group's replica keeps its rows and how it reaches its peers.
pub(crate) struct GroupParts {
    /// This replica's id (see [`crate::replica_id`]).
    pub replica: u64,
    pub group: u64,
    pub store: Arc<Store>,
    pub signals: Arc<Signals>,
    pub clients: Arc<PeerClients>,
    pub timing: Timing,
    pub snapshot_every: u64,
    pub log_kept_behind_snapshot: u64,
}

/// One group's replica on this node: the handle through which routing, proposals, the
/// timers and the transport drive openraft.
#[derive(Clone)]
pub struct GroupRaft {
    raft: Raft,
    replica: u64,
    group: u64,
    store: Arc<Store>,
    /// The snapshot this replica is receiving, if any.
    incoming: Arc<tokio::sync::Mutex<Option<network::Incoming>>>,
}

impl GroupRaft {
    /// Opens the replica's log and state machine from the store and starts its Raft. Its
    /// heartbeats and elections are driven by the node's timer task, not openraft's own tick.
    pub(crate) async fn open(parts: GroupParts) -> crate::Result<GroupRaft> {
        let GroupParts {
            replica,
            group,
            store,
            signals,
            clients,
            timing,
            snapshot_every,
            log_kept_behind_snapshot,
        } = parts;
        let sm = state_machine::GroupStateMachine::open(group, store.clone(), signals)?;
        let started = sm.started.clone();
        let log = log_store::GroupLogStore::new(group, store.clone());
        let network = network::GroupNetwork { group, clients };
        let config = raft_config(group, timing, snapshot_every, log_kept_behind_snapshot);
        let raft = Raft::new(replica, config, network, log, sm)
            .await
            .map_err(|e| crate::Error::Fatal(e.to_string()))?;
        raft.runtime_config().tick(false);
        started.store(true, std::sync::atomic::Ordering::Release);
        Ok(GroupRaft {
            raft,
            replica,
            group,
            store,
            incoming: Default::default(),
        })
    }

    /// This replica's id.
    pub fn replica_id(&self) -> u64 {
        self.replica
    }

    /// Whether this replica is a voter of the configuration it knows.
    pub fn is_voter(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let mut voters = m.membership_config.membership().voter_ids();
        voters.any(|v| v == self.replica)
    }

    fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The node of the leader this replica knows.
    pub fn leader(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .map(crate::node_of)
    }

    pub fn role(&self) -> Role {
        match self.raft.metrics().borrow_watched().state {
            openraft::ServerState::Leader => Role::Leader,
            openraft::ServerState::Follower => Role::Follower,
            openraft::ServerState::Candidate => Role::Candidate,
            openraft::ServerState::Learner => Role::Learner,
            openraft::ServerState::Shutdown => Role::Shutdown,
        }
    }

    pub fn status(&self, id: u64) -> GroupStatus {
        let m = self.metrics();
        let config = m.membership_config.membership();
        let voters = config.voter_ids().map(crate::node_of).collect();
        let learners = config.learner_ids().map(crate::node_of).collect();
        GroupStatus {
            id,
            leader: m.current_leader.map(crate::node_of),
            term: m.current_term,
            voters,
            learners,
            last_applied: m.last_applied.as_ref().map(|l| l.index),
            last_log_index: m.last_log_index,
            committed: m.local_committed.as_ref().map(|l| l.index),
            snapshot: m.snapshot.as_ref().map(|l| l.index),
            purged: m.purged.as_ref().map(|l| l.index),
            role: self.role().as_str(),
        }
    }

    /// How long this replica, as a leader of several voters, has not heard from a quorum;
    /// `None` when it does not lead, or leads alone (a lone voter is its own quorum and
    /// openraft never renews its quorum-ack time).
    pub fn quorum_silence(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let alone = m
            .membership_config
            .membership()
            .voter_ids()
            .nth(1)
            .is_none();
        if m.state != openraft::ServerState::Leader || alone {
            return None;
        }
        m.last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&(*t).into_inner()))
    }

    /// Replicates `stamped` to a majority, applies it and returns its outcome.
    pub(crate) async fn write(&self, stamped: Stamped) -> Result<Outcome, ConsensusError> {
        let led = self.role() == Role::Leader;
        match self.raft.client_write(stamped).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader(f.leader_id.map(crate::node_of)))
            }
            // A replica closed under the write (it left the group in a move) that led neither
            // when asked nor when it stopped appended nothing: another voter may take it.
            Err(RaftError::Fatal(Fatal::Stopped)) if !led && !self.led_when_stopped() => {
                Err(ConsensusError::NotLeader(None))
            }
            Err(e) => Err(ConsensusError::Unavailable(e.to_string())),
        }
    }

    /// Whether the last state this replica reported before it stopped was leader.
    fn led_when_stopped(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.replica)
    }

    /// Appends `stamped` without waiting for it to commit (only the `early-ack` mutant).
    pub(crate) async fn write_unawaited(&self, stamped: Stamped) -> Result<(), String> {
        self.raft
            .client_write_ff(stamped, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The log index a linearizable read must see applied, once this replica, as the
    /// leader, has confirmed its leadership with a quorum (Raft's read index).
    pub(crate) async fn read_index(&self) -> Result<u64, ConsensusError> {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader(f.leader_id.map(crate::node_of)))
            }
            // A replica closed under the read (it left the group in a move): a read changes
            // nothing, so another voter may always answer it.
            Err(RaftError::Fatal(Fatal::Stopped)) => Err(ConsensusError::NotLeader(None)),
            Err(e) => Err(ConsensusError::Unavailable(e.to_string())),
        }
    }

    /// The last log index this replica applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
    }

    /// Waits until this replica has applied `index`.
    pub(crate) async fn wait_applied(&self, index: u64) -> Result<(), String> {
        if self.applied_index() >= Some(index) {
            return Ok(());
        }
        self.raft
            .wait(None)
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// As a leader, sends a heartbeat to every follower now.
    pub(crate) async fn heartbeat(&self) {
        let _ = self.raft.trigger().heartbeat().await;
    }

    /// Starts an election (a Pre-Vote first).
    pub(crate) async fn elect(&self) {
        let _ = self.raft.trigger().elect(true).await;
    }

    /// As a leader, hands leadership to replica `to`.
    pub(crate) async fn transfer_leader(&self, to: u64) {
        let _ = self.raft.trigger().transfer_leader(to).await;
    }

    /// As a leader, whether replica `node`'s log has everything this leader's has.
    pub fn has_caught_up(&self, node: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != openraft::ServerState::Leader {
            return false;
        }
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&node).cloned().flatten())
            .map(|l| l.index);
        matched.is_some() && matched >= m.last_log_index
    }

    /// Of `candidates`, the one whose log this leader has replicated furthest (`None` when
    /// this replica does not lead or has replicated to none of them).
    pub fn furthest_of(&self, candidates: impl IntoIterator<Item = u64>) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let replication = m.replication.as_ref()?;
        candidates
            .into_iter()
            .filter_map(|c| Some((replication.get(&c)?.as_ref()?.index, c)))
            .max()
            .map(|(_, c)| c)
    }

    /// The group's voters and learners (replica ids) with their nodes' addresses, as this
    /// replica knows them.
    pub fn membership(&self) -> Membership {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let config = m.membership_config.membership();
        Membership {
            voters: config.voter_ids().collect(),
            learners: config.learner_ids().collect(),
            nodes: config.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
    }

    /// As the leader, adds replica `replica` (on the node at `addr`) as a learner, a
    /// non-voting replica the leader replicates to, and returns once the change is committed,
    /// without waiting for it to catch up. A replica already in the group is left as it is.
    pub(crate) async fn add_learner(
        &self,
        replica: u64,
        addr: NodeAddr,
    ) -> Result<(), ConsensusError> {
        if self.membership().nodes.contains_key(&replica) {
            return Ok(());
        }
        management(self.raft.add_learner(replica, addr, false).await)
    }

    /// As the leader, makes `voters` (replica ids, each already a voter or a learner) the
    /// group's voters, through a joint configuration (old and new voters must both agree while
    /// it stands) and then the new one alone; replicas no longer voters stay as learners when
    /// `keep_as_learners`, else leave the group. Returns once the new configuration is
    /// committed; does nothing if it already is.
    pub(crate) async fn change_voters(
        &self,
        voters: std::collections::BTreeSet<u64>,
        keep_as_learners: bool,
    ) -> Result<(), ConsensusError> {
        if self.membership().voters == voters {
            return Ok(());
        }
        management(self.raft.change_membership(voters, keep_as_learners).await)
    }

    /// As the leader, removes learners `replicas` from the group.
    pub(crate) async fn remove_learners(
        &self,
        replicas: std::collections::BTreeSet<u64>,
    ) -> Result<(), ConsensusError> {
        let present: std::collections::BTreeSet<u64> = replicas
            .intersection(&self.membership().learners)
            .copied()
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        management(
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(present), false)
                .await,
        )
    }

    /// Whether this replica has any Raft state (a vote or a log).
    pub(crate) async fn is_initialized(&self) -> Result<bool, String> {
        self.raft.is_initialized().await.map_err(|e| e.to_string())
    }

    /// Creates the group with `members` as its voters.
    pub(crate) async fn initialize(&self, members: BTreeMap<u64, NodeAddr>) -> Result<(), String> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| e.to_string())
    }

    pub(crate) async fn shutdown(&self) -> Result<(), String> {
        self.raft.shutdown().await.map_err(|e| e.to_string())
    }
}

/// The result of a membership change as [`ConsensusError`].
fn management<T>(
    r: Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
) -> Result<(), ConsensusError> {
    match r {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ConsensusError::NotLeader(f.leader_id.map(crate::node_of)))
        }
        Err(e) => Err(ConsensusError::Unavailable(e.to_string())),
    }
}

/// The encodings of openraft's types as raftflow stores and sends them, for
/// `crate::golden` (the one place outside this module that pins bytes).
#[cfg(test)]
pub(crate) fn golden_samples(s: &mut crate::golden::Samples) {
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
        VoteRequest, VoteResponse,
    };
    use openraft::{EntryPayload, Membership};

    use crate::transport::frames::{Frame, PeerReply, PeerRpc};

    let log_id = openraft::testing::log_id::<TypeConfig>;
    let vote = Vote::new(4, 2);
    let addr = |n: u64| NodeAddr {
        client: format!("127.0.0.{n}:8080"),
        peer: format!("127.0.0.{n}:9080"),
    };
    let nodes: BTreeMap<u64, NodeAddr> = (1..=3).map(|n| (n, addr(n))).collect();
    let membership =
        Membership::<u64, NodeAddr>::new(vec![nodes.keys().copied().collect()], nodes.clone())
            .expect("a membership");
    let normal = Entry {
        log_id: log_id(4, 2, 10),
        payload: EntryPayload::Normal(Stamped {
            at_ms: 1_700_000_000_000,
            command: crate::Command::Tick,
        }),
    };
    let entries = [
        (
            "blank",
            Entry {
                log_id: log_id(4, 2, 9),
                payload: EntryPayload::Blank,
            },
        ),
        ("normal", normal.clone()),
        (
            "membership",
            Entry {
                log_id: log_id(4, 2, 11),
                payload: EntryPayload::Membership(membership.clone()),
            },
        ),
    ];
    for (name, entry) in &entries {
        s.value(&format!("log/entry_{name}"), entry);
    }
    s.value("log/vote", &vote);
    s.value("log/vote_committed", &Vote::new_committed(4, 2));
    s.value("log/purged", &Some(log_id(3, 1, 7)));
    s.value(
        "row/applied",
        &state_machine::Applied {
            last_applied: Some(log_id(4, 2, 11)),
            membership: StoredMembership::new(Some(log_id(4, 2, 11)), membership),
        },
    );

    let request = |req| Frame::Request {
        id: 5,
        group: 2,
        rpc: PeerRpc::Raft(req),
    };
    let reply = |r| Frame::Response {
        id: 5,
        reply: Ok(PeerReply::Raft(r)),
    };
    s.frame(
        "frame/raft_append",
        request(RaftRequest::Append(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(4, 2, 9)),
            entries: vec![normal],
            leader_commit: Some(log_id(4, 2, 9)),
        })),
    );
    let vote_request = || VoteRequest::new(vote, Some(log_id(4, 2, 11)));
    s.frame(
        "frame/raft_vote",
        request(RaftRequest::Vote(vote_request())),
    );
    s.frame(
        "frame/raft_pre_vote",
        request(RaftRequest::PreVote(vote_request())),
    );
    s.frame(
        "frame/raft_snapshot",
        request(RaftRequest::Snapshot {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(4, 2, 11)),
                last_membership: StoredMembership::default(),
            },
            data: vec![1, 2, 3],
        }),
    );
    s.frame(
        "frame/raft_for_replica",
        Frame::Request {
            id: 5,
            group: 2,
            rpc: PeerRpc::RaftFor {
                replica: crate::replica_id(3, 1),
                request: RaftRequest::Vote(vote_request()),
            },
        },
    );
    s.frame(
        "frame/raft_transfer_leader",
        request(RaftRequest::TransferLeader(TransferLeaderRequest::new(
            vote,
            3,
            Some(log_id(4, 2, 11)),
        ))),
    );
    for (name, r) in [
        ("success", AppendEntriesResponse::Success),
        (
            "partial",
            AppendEntriesResponse::PartialSuccess(Some(log_id(4, 2, 10))),
        ),
        ("conflict", AppendEntriesResponse::Conflict),
        (
            "higher_vote",
            AppendEntriesResponse::HigherVote(Vote::new(5, 3)),
        ),
    ] {
        s.frame(
            &format!("frame/raft_reply_append_{name}"),
            reply(RaftReply::Append(r)),
        );
    }
    s.frame(
        "frame/raft_reply_vote",
        reply(RaftReply::Vote(VoteResponse::new(
            vote,
            Some(log_id(4, 2, 11)),
            true,
        ))),
    );
    s.frame(
        "frame/raft_reply_snapshot",
        reply(RaftReply::Snapshot(SnapshotResponse::new(vote))),
    );
    s.frame(
        "frame/raft_reply_transfer_leader",
        reply(RaftReply::TransferLeader(Ok(()))),
    );
    s.frame(
        "frame/raft_snapshot_chunk",
        request(RaftRequest::SnapshotChunk {
            transfer: 77,
            offset: 1 << 20,
            data: vec![4, 5, 6],
        }),
    );
    s.frame(
        "frame/raft_snapshot_end",
        request(RaftRequest::SnapshotEnd {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(4, 2, 11)),
                last_membership: StoredMembership::default(),
            },
            transfer: 77,
            len: 3 << 20,
        }),
    );
    s.frame(
        "frame/raft_reply_snapshot_chunk",
        reply(RaftReply::SnapshotChunk { received: 2 << 20 }),
    );
}

#[cfg(test)]
mod conformance {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;
    use raftflow_storage::Store;

    use super::log_store::GroupLogStore;
    use super::state_machine::GroupStateMachine;
    use super::TypeConfig;

    struct Builder;

    impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, GroupLogStore, GroupStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open store");
            // A neighbour group with its own rows proves ranges stay apart.
            let group = 7;
            let log = GroupLogStore::new(group, store.clone());
            let sm = GroupStateMachine::open(group, store, Default::default())
                .expect("open state machine");
            sm.started.store(true, std::sync::atomic::Ordering::Release);
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite against the multi-group RocksDB store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes() {
        Suite::test_all(Builder).await.expect("storage suite");
    }

    /// The snapshot openraft builds (only for its meta) has the current position but no rows,
    /// and installing it fails instead of wiping a replica; the one a follower gets has both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_is_meta_only_and_cannot_be_installed() {
        use openraft::entry::RaftEntry;
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        let log_id = openraft::testing::log_id::<TypeConfig>;

        let (_dir, _log, mut sm) = Builder.build().await.unwrap();
        let entry = super::Entry::new_blank(log_id(1, 1, 1));
        let stream = futures::stream::iter([Ok((entry, None))]);
        sm.apply(stream).await.unwrap();

        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 1)));
        assert!(built.snapshot.is_none());
        let full = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(full.meta, built.meta);
        assert!(full.snapshot.as_ref().is_some_and(|f| !f.is_empty()));

        let (_dir2, _log2, mut other) = Builder.build().await.unwrap();
        assert!(other
            .install_snapshot(&built.meta, built.snapshot)
            .await
            .is_err());
        other
            .install_snapshot(&full.meta, full.snapshot)
            .await
            .unwrap();
        assert_eq!(
            other.applied_state().await.unwrap().0,
            Some(log_id(1, 1, 1))
        );
    }
}
