//! Where client work goes: to this node's replica when it leads the group, else over the peer
//! connection to the leader it knows; proposals, read indexes, and the serving of work other
//! nodes forward here.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{now_ms, RaftNode};
use crate::command::{Command, Outcome, Stamped};
use crate::consensus::{ConsensusError, GroupRaft, NodeAddr};
use crate::query::{Answer, Query};
use crate::transport::{Forward, ForwardError, ForwardReply, Forwarder, MembershipChange};
use crate::{Error, Result};

/// A request that met a leadership change looks for the new leader again after this long,
/// doubling up to `LEADER_RETRY_MAX` (a transfer takes a few ms; an election up to 1.5 s).
const LEADER_RETRY_FIRST: Duration = Duration::from_millis(5);
const LEADER_RETRY_MAX: Duration = Duration::from_millis(100);

/// Serves forwarded work for the node while it exists.
pub(super) struct ServeForwarded(pub(super) std::sync::Weak<RaftNode>);

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
                    // This node holds no replica (any more): the sender asks another.
                    Error::NoSuchGroup(_) => ForwardError::NotLeader(None),
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

impl RaftNode {
    /// The leader of `group` as this node knows it: its replica's leader, or for a group it
    /// holds no replica of, the leader it last learnt or else one of the group's voters.
    pub fn leader_of(&self, group: u64) -> Option<(u64, NodeAddr)> {
        match self.registry.get(group) {
            Some(raft) if raft.leader().is_some() || self.serves(group) => {
                self.book.hint(raft.leader())
            }
            _ => self.remote_leader(group, 0),
        }
    }

    /// Whether this node serves `group` from a replica of its own: it holds one that votes.
    /// A learner still catching up (or not yet added) does not: requests go to the leader.
    pub fn serves(&self, group: u64) -> bool {
        self.registry.get(group).is_some_and(|raft| raft.is_voter())
    }

    /// A guess at the leader of a group this node holds no replica of: first the leader it
    /// last learnt, then (on later attempts) each of the group's recorded voters in turn.
    fn remote_leader(&self, group: u64, attempt: usize) -> Option<(u64, NodeAddr)> {
        if attempt == 0 {
            let known = self
                .remote_leaders
                .lock()
                .expect("remote leaders lock")
                .get(&group)
                .copied();
            if let Some(hint) = self.book.hint(known) {
                return Some(hint);
            }
        }
        let voters: Vec<u64> = self
            .placement_voters(group)
            .into_iter()
            .filter(|v| *v != self.id)
            .collect();
        let id = *voters.get(attempt % voters.len().max(1))?;
        self.book.hint(Some(id))
    }

    fn learn_remote_leader(&self, group: u64, leader: u64) {
        self.remote_leaders
            .lock()
            .expect("remote leaders lock")
            .insert(group, leader);
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
                raft.write_unawaited(stamped).await.map_err(Error::Fatal)?;
                return Ok(predicted);
            }
            command = stamped.command;
        }
        let proposer = self.proposer(group)?;
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
        } = stamped.command.inner()
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
            .and_then(|p| raftflow_workflow::Context::from_canonical(p.to_string()).ok());
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
    fn check_quorum_contact(&self, raft: &GroupRaft, group: u64) -> Result<()> {
        match raft.quorum_silence() {
            Some(silent) if silent.as_millis() as u64 > self.config.timing.election_max_ms => {
                Err(Error::Unavailable(format!(
                    "group {group}: this leader has not heard from a quorum for {} ms",
                    silent.as_millis()
                )))
            }
            _ => Ok(()),
        }
    }

    /// The log index a linearizable read of `group` must see applied, from this node as the
    /// group's leader once it has confirmed its leadership with a quorum (Raft's read index).
    async fn read_index(&self, group: u64) -> Result<u64> {
        let raft = self.raft(group)?;
        self.check_quorum_contact(&raft, group)?;
        self.counters.read_barriers.fetch_add(1, Ordering::Relaxed);
        raft.read_index().await.map_err(|e| match e {
            ConsensusError::NotLeader(leader) => Error::NotLeader {
                leader: self.book.hint(leader),
            },
            ConsensusError::Unavailable(m) => Error::Unavailable(m),
        })
    }

    /// Waits until this node's replica of `group` has applied `index`.
    async fn await_applied(&self, group: u64, index: u64) -> Result<()> {
        self.raft(group)?
            .wait_applied(index)
            .await
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
        let hosted = self.serves(group);
        // Which of a remote group's voters to try next (see `remote_leader`).
        let mut attempt = 0;
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
                Some((id, addr)) => match self.registry.silence(group).filter(|_| hosted) {
                    Some(quiet) if quiet > lost_after * 2 => return Err(cut_off_error(id, quiet)),
                    Some(quiet) if quiet > lost_after => {
                        cut_off = Some((id, quiet));
                        Err(Error::NotLeader { leader: None })
                    }
                    _ => match self
                        .clients
                        .forward(id, &addr.peer, group, work(), timeout)
                        .await
                    {
                        Ok(reply) => {
                            if !hosted {
                                self.learn_remote_leader(group, id);
                            }
                            Ok(reply)
                        }
                        // A remote group's voter that cannot be reached: ask another.
                        Err(ForwardError::NotSent(_)) if !hosted => {
                            Err(Error::NotLeader { leader: None })
                        }
                        Err(e) => Err(self.forward_error(e)),
                    },
                },
            };
            let hint = match result {
                Err(Error::NotLeader { leader: hint }) => hint,
                r => return r,
            };
            // The node asked names another leader: ask it at once, once in a row.
            if let Some(next) = hint.as_ref().filter(|(next, _)| Some(*next) != tried) {
                if !hosted {
                    self.learn_remote_leader(group, next.0);
                }
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
            leader = if hosted {
                self.leader_of(group).or(hint)
            } else {
                attempt += 1;
                hint.or_else(|| self.remote_leader(group, attempt))
            };
        }
    }

    fn forward_error(&self, e: ForwardError) -> Error {
        match e {
            ForwardError::NotLeader(leader) => Error::NotLeader {
                leader: self.book.hint(leader),
            },
            ForwardError::NotSent(m) => Error::Unavailable(m),
            ForwardError::Unavailable(m) => Error::Unavailable(m),
            ForwardError::StorageFull(m) => Error::StorageFull(m),
            ForwardError::Failed(m) => Error::Fatal(m),
        }
    }

    /// A write on this node as the group's leader: a client's is refused while the data disk
    /// is nearly full; then it is proposed.
    async fn commit_here(&self, group: u64, command: Command) -> Result<Outcome> {
        let guarded = !command.shapes_cluster();
        if let Some(free) = guarded
            .then(|| self.free_disk.bytes(&self.config.data_dir))
            .flatten()
        {
            if free < self.config.min_free_disk_bytes {
                return Err(Error::StorageFull(format!(
                    "the data disk of node {} has {free} bytes free, below the {} bytes writes need",
                    self.id, self.config.min_free_disk_bytes
                )));
            }
        }
        self.propose(group, command).await
    }

    /// Makes `change` to `group`'s members on its leader, wherever it is.
    pub(crate) async fn change_members(
        &self,
        group: u64,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<ForwardReply> {
        let work = || Forward::Membership {
            change: change.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let here = || -> BoxFuture<'_, Result<ForwardReply>> {
            let change = change.clone();
            Box::pin(async move { self.change_members_here(group, change).await })
        };
        self.route(group, timeout, work, here).await
    }

    /// Makes `change` to `group`'s members as its leader.
    async fn change_members_here(
        &self,
        group: u64,
        change: MembershipChange,
    ) -> Result<ForwardReply> {
        let raft = self.raft(group)?;
        if raft.role() != crate::consensus::Role::Leader {
            return Err(Error::NotLeader {
                leader: self.book.hint(raft.leader()),
            });
        }
        let not_leader = |e| match e {
            ConsensusError::NotLeader(leader) => Error::NotLeader {
                leader: self.book.hint(leader),
            },
            ConsensusError::Unavailable(m) => Error::Unavailable(m),
        };
        let mut added = None;
        match change {
            MembershipChange::AddLearner { replica, addr } => {
                raft.add_learner(replica, addr).await.map_err(not_leader)?;
                added = Some(replica);
            }
            MembershipChange::SetVoters { voters } => {
                // A leader that voted itself out would be closed with writes under way, their
                // clients answered 503: it hands the group to a voter that stays, and the
                // change follows to that voter (TiKV moves a leader off a peer it removes).
                let me = raft.replica_id();
                let stays = raft.membership().voters;
                let heir = raft.furthest_of(
                    voters
                        .iter()
                        .copied()
                        .filter(|v| *v != me && stays.contains(v)),
                );
                if let (false, Some(heir)) = (voters.contains(&me), heir) {
                    tracing::info!(
                        group,
                        to = crate::node_of(heir),
                        "membership: handing the group to a staying voter before leaving it"
                    );
                    raft.transfer_leader(heir).await;
                    return Err(Error::NotLeader {
                        leader: self.book.hint(Some(crate::node_of(heir))),
                    });
                }
                raft.change_voters(voters.into_iter().collect(), false)
                    .await
                    .map_err(not_leader)?;
            }
            MembershipChange::RemoveLearners { replicas } => {
                raft.remove_learners(replicas.into_iter().collect())
                    .await
                    .map_err(not_leader)?;
            }
        }
        let members = raft.membership();
        Ok(ForwardReply::Members {
            voters: members.voters.into_iter().collect(),
            learners: members.learners.into_iter().collect(),
            caught_up: added.is_some_and(|r| raft.has_caught_up(r)),
        })
    }

    /// Reads `group`'s rows on this node's replica (after a read index when `linearizable`),
    /// or on the group's leader when this node holds no replica of it or is installing one.
    pub async fn query(
        &self,
        group: u64,
        query: Query,
        linearizable: bool,
        timeout: Duration,
    ) -> Result<Answer> {
        // While a snapshot install rewrites the replica's rows they are no state at all: the
        // leader answers instead.
        if self.serves(group) && !self.store.is_installing(group) {
            if linearizable {
                self.linearize(group, timeout).await?;
            }
            return query.run(&self.store, &self.signals, group);
        }
        let work = || Forward::Query {
            query: query.clone(),
            linearizable,
            timeout_ms: timeout.as_millis() as u64,
        };
        let here = || -> BoxFuture<'_, Result<ForwardReply>> {
            Box::pin(async move { Err(Error::NoSuchGroup(group)) })
        };
        match self.route(group, timeout, work, here).await? {
            ForwardReply::Answer(answer) => Ok(answer),
            other => Err(Error::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Serves work another node forwarded, as the leader of `group`.
    async fn serve_forwarded(&self, group: u64, work: Forward) -> Result<ForwardReply> {
        let timeout_ms = match &work {
            Forward::Propose { timeout_ms, .. }
            | Forward::ReadIndex { timeout_ms }
            | Forward::Query { timeout_ms, .. }
            | Forward::Membership { timeout_ms, .. } => *timeout_ms,
        };
        // A node that no longer leads answers NotLeader with its hint from openraft itself.
        let served = async {
            Ok(match work {
                Forward::Propose { command, .. } => {
                    ForwardReply::Outcome(Box::new(self.commit_here(group, command).await?))
                }
                Forward::ReadIndex { .. } => ForwardReply::ReadIndex(self.read_index(group).await?),
                Forward::Query {
                    query,
                    linearizable,
                    ..
                } => {
                    if linearizable {
                        let index = self.read_index(group).await?;
                        self.await_applied(group, index).await?;
                    }
                    ForwardReply::Answer(query.run(&self.store, &self.signals, group)?)
                }
                Forward::Membership { change, .. } => {
                    self.change_members_here(group, change).await?
                }
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
}
