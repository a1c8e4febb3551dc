//! Where client work goes: to this node's replica when it leads the group, else over the peer
//! connection to the leader it knows; proposals, read indexes, and the serving of work other
//! nodes forward here.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{leader_hint, now_ms, RaftNode};
use crate::command::{Command, Outcome, Stamped};
use crate::consensus::{ConsensusError, GroupRaft, NodeAddr};
use crate::transport::{Forward, ForwardError, ForwardReply, Forwarder};
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
    /// The leader of `group` as this node knows it.
    pub fn leader_of(&self, group: u64) -> Option<(u64, NodeAddr)> {
        let leader = self.registry.get(group)?.leader()?;
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
                raft.write_unawaited(stamped).await.map_err(Error::Fatal)?;
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
                leader: leader_hint(&self.config.members, leader),
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
}
