//! Membership: which nodes are in the cluster, in what state, and where each data group's
//! replicas are. The meta group records it all (`n/` and `g/` rows). Every node keeps its
//! address book and its own replicas in line with its copy of those rows; the meta group's
//! leader drives every change a step at a time, each step a recorded state, so that a new
//! leader resumes where an old one stopped.
//!
//! - A node joins by registering (`joining`); the driver adds it to the meta group as a
//!   learner, and once it has caught up records it `active`.
//! - The meta group has an odd number of voters, at most five, on active nodes; every other
//!   node holds a learner's copy.
//! - Each data group has `replication_factor` voters on active nodes, so that replicas per
//!   node differ by at most one. A replica moves in recorded steps: the placement names the
//!   move (`Learner`), the new replica is added as a learner and catches up, the step becomes
//!   `Joint`, one joint change swaps it for the old voter, and the placement records the new
//!   voters. The old replica's node then deletes its copy.
//! - A node leaves by draining: every replica moves off it, it leaves the meta group's
//!   voters, it is recorded `removed` (it sees that and stops), and it leaves the meta group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{RaftNode, META_GROUP};
use crate::command::{Command, Outcome, Refusal};
use crate::consensus::NodeAddr;
use crate::tables::{self, Move, MoveStep, NodeRecord, NodeState, Placement};
use crate::transport::{ForwardReply, MembershipChange};
use crate::{node_of, replica_id, Error, Result};

/// How often every node brings its address book and replicas in line with the meta group.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How often the meta group's leader looks for membership work.
const DRIVE_EVERY: Duration = Duration::from_millis(300);
/// How long a closed replica's last apply gets to finish before its rows are deleted.
const CLOSE_SETTLE: Duration = Duration::from_millis(100);
/// How long one of the drivers' steps may take.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Replicas a node receives at once. A move copies one group's rows to its new node, so one
/// at a time per node keeps a join (every move goes to the new node) to one group's catch-up
/// at a time, while a drain moves replicas to several nodes at once, one each.
pub const MOVES_PER_NODE: usize = 1;
/// The most voters the meta group has; further nodes hold learners' copies.
pub const META_VOTERS_MAX: usize = 5;

/// A node as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub addr: NodeAddr,
    pub state: &'static str,
}

impl RaftNode {
    /// Every node of the cluster with its state, in id order: the recorded ones, and the
    /// members the cluster was created with (active) that have no record yet.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut out: BTreeMap<u64, NodeView> = self
            .book
            .all()
            .into_iter()
            .map(|(id, addr)| {
                let state = NodeState::Active.as_str();
                (id, NodeView { id, addr, state })
            })
            .collect();
        for row in tables::read_nodes(&self.store).unwrap_or_default() {
            out.insert(
                row.id,
                NodeView {
                    id: row.id,
                    addr: row.addr,
                    state: row.state.as_str(),
                },
            );
        }
        out.into_values().collect()
    }

    fn node_rows(&self) -> Result<BTreeMap<u64, NodeRecord>> {
        Ok(tables::read_nodes(&self.store)?
            .into_iter()
            .map(|n| (n.id, n))
            .collect())
    }

    /// The recorded placement of data group `group`, from this node's copy of the meta group.
    pub fn placement(&self, group: u64) -> Option<Placement> {
        self.store
            .get_state(META_GROUP, &tables::placement_key(group))
            .ok()
            .flatten()
            .and_then(|b| raftflow_storage::codec::decode(&b).ok())
    }

    /// Every recorded placement, in group order.
    pub fn placements(&self) -> Vec<Placement> {
        tables::read_placements(&self.store).unwrap_or_default()
    }

    /// The nodes of data group `group`'s voters as the meta group recorded them; for a
    /// cluster that has not recorded them yet, the meta group's voters (every group was
    /// created on them).
    pub fn placement_voters(&self, group: u64) -> Vec<u64> {
        match self.placement(group) {
            Some(p) => p.voters.into_iter().map(node_of).collect(),
            None => self
                .registry
                .get(META_GROUP)
                .map(|m| m.membership().voters.into_iter().map(node_of).collect())
                .unwrap_or_default(),
        }
    }

    /// Voters of each data group (every group has as many).
    pub fn replication_factor(&self) -> u64 {
        self.data_groups()
            .map(|g| self.placement_voters(g).len() as u64)
            .max()
            .unwrap_or(0)
    }

    /// Records node `id` as joining (`POST /v1/cluster/nodes`). A member the cluster was
    /// created with has no record but is known: its id is refused like any other taken id.
    pub async fn register_node(
        &self,
        id: u64,
        addr: NodeAddr,
        timeout: Duration,
    ) -> Result<Outcome> {
        if !self.node_rows()?.contains_key(&id) {
            if let Some(known) = self.book.get(id) {
                return Ok(Outcome::Refused(Refusal::NodeExists {
                    id,
                    reason: format!(
                        "is already a member with client address {} and peer address {}",
                        known.client, known.peer
                    ),
                }));
            }
        }
        self.commit(META_GROUP, Command::RegisterNode { id, addr }, timeout)
            .await
    }

    /// Starts draining node `id` (`DELETE /v1/cluster/nodes/{id}`): its replicas move to
    /// other nodes, then it leaves every group and is recorded `removed`. `None` when no such
    /// node is known; `Err(NotEnoughNodes)` when the other active nodes could not hold every
    /// group's replicas.
    pub async fn remove_node(&self, id: u64, timeout: Duration) -> Result<Option<Outcome>> {
        self.linearize(META_GROUP, timeout).await?;
        let rows = self.node_rows()?;
        let Some(node) = rows.get(&id).cloned() else {
            return Ok(None);
        };
        if matches!(node.state, NodeState::Draining | NodeState::Removed) {
            return Ok(Some(Outcome::Node {
                node,
                created: false,
            }));
        }
        let others = rows
            .values()
            .filter(|n| n.id != id && n.state == NodeState::Active)
            .count() as u64;
        let needed = self.replication_factor();
        if others < needed {
            return Err(Error::NotEnoughNodes(format!(
                "removing node {id} would leave {others} active nodes for {needed} replicas of every group"
            )));
        }
        let set = Command::SetNode {
            id,
            addr: node.addr,
            state: NodeState::Draining,
        };
        self.commit(META_GROUP, set, timeout).await.map(Some)
    }

    /// Keeps the address book and this node's replicas in line with the meta group.
    pub(super) async fn watch_membership(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tick.tick().await;
            let mut nodes: Vec<(u64, NodeAddr)> = match self.registry.get(META_GROUP) {
                Some(meta) => meta.membership().nodes.into_iter().collect(),
                None => Vec::new(),
            };
            let mut removed = Vec::new();
            for row in tables::read_nodes(&self.store).unwrap_or_default() {
                if row.state == NodeState::Removed {
                    removed.push(row.id);
                    if row.id == self.id {
                        self.removed.send_replace(true);
                    }
                } else {
                    nodes.push((row.id, row.addr));
                }
            }
            self.book.update(nodes, &removed);
            if let Err(e) = self.reconcile_replicas().await {
                tracing::warn!(error = %e, "bringing this node's replicas in line with the placement failed; retrying");
            }
        }
    }

    /// Waits until the cluster has recorded this node `removed`.
    pub async fn wait_removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|removed| *removed).await;
    }

    /// Opens the replicas the placement gives this node and deletes those it took away, and
    /// those of retired groups.
    async fn reconcile_replicas(&self) -> Result<()> {
        let retired: Vec<u64> = tables::read_groups(&self.store)?
            .into_iter()
            .filter(|g| g.state == tables::GroupState::Retired && self.hosts(g.id))
            .map(|g| g.id)
            .collect();
        for group in retired {
            self.close_group(group).await;
            tokio::time::sleep(CLOSE_SETTLE).await;
            self.store.delete_group(group)?;
            tracing::info!(
                group,
                "membership: the group is retired; its replica is deleted"
            );
        }
        for placement in self.placements() {
            let group = placement.group;
            let wanted = placement
                .voters
                .iter()
                .chain(placement.moving.as_ref().map(|m| &m.to))
                .copied()
                .find(|r| node_of(*r) == self.id);
            let local = self.registry.get(group).map(|r| r.replica_id());
            match (wanted, local) {
                (Some(w), Some(l)) if w == l => {}
                (Some(w), local) => {
                    if local.is_some() {
                        self.close_group(group).await;
                        // Let an apply the old replica had under way finish before its rows go.
                        tokio::time::sleep(CLOSE_SETTLE).await;
                    }
                    if local.is_some() || self.stored_replica(group)? != w {
                        self.store.delete_group(group)?;
                    }
                    self.open_group(group, w).await?;
                    tracing::info!(
                        group,
                        replica = format!("{w:#x}"),
                        "membership: opened a new replica of the group here"
                    );
                }
                (None, Some(l)) => {
                    self.close_group(group).await;
                    tokio::time::sleep(CLOSE_SETTLE).await;
                    self.store.delete_group(group)?;
                    tracing::info!(
                        group,
                        replica = format!("{l:#x}"),
                        "membership: this node left the group; its replica is deleted"
                    );
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// On the meta group's leader, takes the next step of any membership change.
    pub(super) async fn drive_membership(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DRIVE_EVERY);
        let mut failures = 0u32;
        loop {
            tick.tick().await;
            if !self.is_leader(META_GROUP) {
                failures = 0;
                continue;
            }
            match self.membership_step().await {
                Ok(()) => failures = 0,
                Err(e) => report_step_failure("membership", &mut failures, &e),
            }
        }
    }

    async fn record(&self, command: Command) -> Result<Outcome> {
        self.commit_step(META_GROUP, command).await
    }

    /// Commits one step of a driver (membership, slot moves) in `group`: a refusal means the
    /// recorded state moved on, and the step is tried again from what is recorded.
    pub(super) async fn commit_step(&self, group: u64, command: Command) -> Result<Outcome> {
        match self.commit(group, command, STEP_TIMEOUT).await? {
            Outcome::Refused(r) => Err(Error::Unavailable(format!(
                "group {group}: not recorded: {r}"
            ))),
            other => Ok(other),
        }
    }

    async fn record_state(&self, node: &NodeRecord, state: NodeState) -> Result<()> {
        let set = Command::SetNode {
            id: node.id,
            addr: node.addr.clone(),
            state,
        };
        self.record(set).await.map(|_| ())
    }

    async fn record_placement(
        &self,
        placement: Placement,
        expected: Option<Placement>,
    ) -> Result<()> {
        self.record(Command::SetPlacement {
            placement,
            expected,
        })
        .await
        .map(|_| ())
    }

    async fn membership_step(&self) -> Result<()> {
        // Decide on everything committed so far, not on what this replica happens to have
        // applied.
        self.linearize(META_GROUP, STEP_TIMEOUT).await?;
        let meta = self.raft(META_GROUP)?;
        let membership = meta.membership();
        let rows = self.node_rows()?;

        // The members the cluster was created with get their records.
        for id in &membership.voters {
            if let (None, Some(addr)) = (rows.get(id), membership.nodes.get(id)) {
                self.record(Command::SetNode {
                    id: *id,
                    addr: addr.clone(),
                    state: NodeState::Active,
                })
                .await?;
            }
        }

        // So do the data groups' voters (a cluster created before placements were recorded).
        for group in self.data_groups() {
            if self.placement(group).is_some() {
                continue;
            }
            let Some(raft) = self.registry.get(group) else {
                continue;
            };
            let voters: Vec<u64> = raft.membership().voters.into_iter().collect();
            if !voters.is_empty() {
                let placement = Placement {
                    group,
                    voters,
                    leader: None,
                    moving: None,
                    epoch: 0,
                };
                self.record_placement(placement, None).await?;
            }
        }

        // A joining node gets a copy of the meta group, then becomes active once it has caught
        // up.
        for node in rows.values().filter(|n| n.state == NodeState::Joining) {
            if !membership.nodes.contains_key(&node.id) {
                tracing::info!(
                    node = node.id,
                    "membership: adding the joining node to the meta group as a learner"
                );
                meta.add_learner(node.id, node.addr.clone())
                    .await
                    .map_err(|e| Error::Unavailable(format!("{e:?}")))?;
            } else if meta.has_caught_up(node.id) {
                tracing::info!(
                    node = node.id,
                    "membership: the joining node has caught up; it is active"
                );
                self.record_state(node, NodeState::Active).await?;
            }
        }

        self.shape_meta_voters(&rows).await?;

        let placements = self.placements();
        let mut moving = 0;
        for p in placements.iter().filter(|p| p.moving.is_some()) {
            moving += 1;
            self.advance_move(p).await?;
        }
        let active: Vec<u64> = rows
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| n.id)
            .collect();
        if let Some(next) = plan_move(&placements, &active) {
            let before = placements.iter().find(|p| p.group == next.group).cloned();
            let m = next.moving.as_ref().expect("a planned move");
            tracing::info!(
                group = next.group,
                from = m.from.map(node_of),
                to = node_of(m.to),
                under_way = moving,
                "membership: moving a replica"
            );
            self.record_placement(next, before).await?;
            return Ok(());
        }
        if moving == 0 {
            for (before, after) in prefer_leaders(&placements, &active) {
                self.record_placement(after, Some(before)).await?;
            }
        }

        self.finish_removals(&rows, &placements).await
    }

    /// Keeps the meta group's voters an odd number, at most [`META_VOTERS_MAX`], of active
    /// nodes: draining nodes leave, caught-up learners of active nodes join.
    async fn shape_meta_voters(&self, rows: &BTreeMap<u64, NodeRecord>) -> Result<()> {
        let meta = self.raft(META_GROUP)?;
        let membership = meta.membership();
        let active = |id: &u64| rows.get(id).is_some_and(|n| n.state == NodeState::Active);
        let active_members: Vec<u64> = membership.nodes.keys().copied().filter(active).collect();
        let mut want = active_members.len().min(META_VOTERS_MAX);
        if want.is_multiple_of(2) {
            want = want.saturating_sub(1);
        }
        let want = want.max(1);
        let mut voters: Vec<u64> = membership.voters.iter().copied().filter(active).collect();
        voters.truncate(want);
        for id in &active_members {
            if voters.len() >= want {
                break;
            }
            if !voters.contains(id) && meta.has_caught_up(*id) {
                voters.push(*id);
            }
        }
        // Only an odd number: an even one has no more fault tolerance than the odd one below.
        if voters.len().is_multiple_of(2) {
            voters.pop();
        }
        let voters: BTreeSet<u64> = voters.into_iter().collect();
        if voters.is_empty() || voters == membership.voters {
            return Ok(());
        }
        tracing::info!(from = ?membership.voters, to = ?voters, "membership: changing the meta group's voters");
        // Nodes that stop voting keep their copy as learners: every node needs one, and a
        // draining node must still see itself recorded removed.
        meta.change_voters(voters, true)
            .await
            .map_err(|e| Error::Unavailable(format!("{e:?}")))
    }

    /// Takes the next step of the replica move `p` records.
    async fn advance_move(&self, p: &Placement) -> Result<()> {
        let m = p.moving.as_ref().expect("a move");
        let addr = self
            .book
            .get(node_of(m.to))
            .ok_or_else(|| Error::Unavailable(format!("no address for node {}", node_of(m.to))))?;
        match m.step {
            MoveStep::Learner => {
                let change = MembershipChange::AddLearner {
                    replica: m.to,
                    addr,
                };
                let reply = self.change_members(p.group, change, STEP_TIMEOUT).await?;
                if matches!(
                    reply,
                    ForwardReply::Members {
                        caught_up: true,
                        ..
                    }
                ) {
                    let mut next = p.clone();
                    next.moving = Some(Move {
                        step: MoveStep::Joint,
                        ..m.clone()
                    });
                    tracing::info!(
                        group = p.group,
                        to = node_of(m.to),
                        "membership: the new replica caught up; swapping it in"
                    );
                    self.record_placement(next, Some(p.clone())).await?;
                }
            }
            MoveStep::Joint => {
                let mut voters: Vec<u64> = p
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| Some(*v) != m.from)
                    .collect();
                voters.push(m.to);
                voters.sort_unstable();
                let change = MembershipChange::SetVoters {
                    voters: voters.clone(),
                };
                self.change_members(p.group, change, STEP_TIMEOUT).await?;
                let mut next = p.clone();
                next.voters = voters;
                next.moving = None;
                if next.leader.is_some_and(|l| Some(l) == m.from.map(node_of)) {
                    next.leader = None;
                }
                tracing::info!(
                    group = p.group,
                    from = m.from.map(node_of),
                    to = node_of(m.to),
                    "membership: replica moved"
                );
                self.record_placement(next, Some(p.clone())).await?;
            }
        }
        Ok(())
    }

    /// A draining node that holds no data replica and no meta vote is recorded `removed`
    /// (it sees that and stops), then leaves the meta group.
    async fn finish_removals(
        &self,
        rows: &BTreeMap<u64, NodeRecord>,
        placements: &[Placement],
    ) -> Result<()> {
        let meta = self.raft(META_GROUP)?;
        let membership = meta.membership();
        for node in rows.values() {
            let holds = placements.iter().any(|p| {
                p.voters
                    .iter()
                    .chain(p.moving.as_ref().map(|m| &m.to))
                    .any(|r| node_of(*r) == node.id)
            });
            match node.state {
                NodeState::Draining if !holds && !membership.voters.contains(&node.id) => {
                    tracing::info!(
                        node = node.id,
                        "membership: the node holds no replica any more; it is removed"
                    );
                    self.record_state(node, NodeState::Removed).await?;
                }
                NodeState::Removed if membership.learners.contains(&node.id) => {
                    meta.remove_learners([node.id].into())
                        .await
                        .map_err(|e| Error::Unavailable(format!("{e:?}")))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Logs a failed step of a driver (`what`): leadership changes fail a step or two, so only a
/// change that is stuck says so at warning level.
pub(super) fn report_step_failure(what: &str, failures: &mut u32, e: &Error) {
    *failures += 1;
    if failures.is_power_of_two() && *failures >= 4 {
        tracing::warn!(error = %e, failures, "{what}: a step keeps failing; retrying");
    } else {
        tracing::debug!(error = %e, "{what}: a step did not complete; retrying");
    }
}

/// The next replica move, if the placement needs one: a voter on a node that is not active
/// (draining, removed, or not recorded) moves to the active node with the fewest replicas;
/// otherwise, while one node holds two replicas more than another, one moves between them.
fn plan_move(placements: &[Placement], active: &[u64]) -> Option<Placement> {
    // Load counts the moves under way as done; a node already receiving MOVES_PER_NODE
    // replicas gets no further one for now.
    let mut load: BTreeMap<u64, usize> = active.iter().map(|n| (*n, 0)).collect();
    let mut receiving: BTreeMap<u64, usize> = BTreeMap::new();
    for p in placements {
        let mut nodes: Vec<u64> = p.voters.iter().map(|r| node_of(*r)).collect();
        if let Some(m) = &p.moving {
            nodes.retain(|n| Some(*n) != m.from.map(node_of));
            nodes.push(node_of(m.to));
            *receiving.entry(node_of(m.to)).or_default() += 1;
        }
        for n in nodes {
            if let Some(l) = load.get_mut(&n) {
                *l += 1;
            }
        }
    }
    let free = |n: u64| receiving.get(&n).copied().unwrap_or(0) < MOVES_PER_NODE;
    let placements: Vec<&Placement> = placements.iter().filter(|p| p.moving.is_none()).collect();
    let moved = |p: &Placement, from: u64, to: u64| {
        let mut next = p.clone();
        next.epoch += 1;
        next.moving = Some(Move {
            from: Some(from),
            to: replica_id(to, next.epoch),
            step: MoveStep::Learner,
        });
        next
    };
    let lightest_outside = |p: &Placement| {
        load.iter()
            .filter(|(n, _)| free(**n) && p.voters.iter().all(|r| node_of(*r) != **n))
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| *n)
    };
    for p in &placements {
        if let Some(gone) = p.voters.iter().find(|r| !load.contains_key(&node_of(**r))) {
            if let Some(to) = lightest_outside(p) {
                return Some(moved(p, *gone, to));
            }
        }
    }
    let (&heavy, &most) = load.iter().max_by_key(|(n, l)| (**l, **n))?;
    let (&light, &least) = load
        .iter()
        .filter(|(n, _)| free(**n))
        .min_by_key(|(n, l)| (**l, **n))?;
    if most <= least + 1 {
        return None;
    }
    placements.iter().find_map(|p| {
        let from = p.voters.iter().find(|r| node_of(**r) == heavy)?;
        let outside = p.voters.iter().all(|r| node_of(*r) != light);
        outside.then(|| moved(p, *from, light))
    })
}

/// The preferred leader of each group, spread so that nodes lead about equally many groups:
/// each group in turn goes to the voter that leads the fewest so far, ties going round the
/// voters from voter `(group - 1) mod R` (so a group on every node of a new cluster keeps the
/// leader it was given at creation). Returns the placements whose preference changes, before
/// and after.
fn prefer_leaders(placements: &[Placement], active: &[u64]) -> Vec<(Placement, Placement)> {
    let mut leads: BTreeMap<u64, usize> = active.iter().map(|n| (*n, 0)).collect();
    let mut out = Vec::new();
    for p in placements {
        let mut voters: Vec<u64> = p.voters.iter().map(|r| node_of(*r)).collect();
        voters.sort_unstable();
        let len = voters.len().max(1);
        let first = (p.group.saturating_sub(1) as usize) % len;
        let choice = voters
            .iter()
            .enumerate()
            .filter(|(_, n)| leads.contains_key(n))
            .min_by_key(|(i, n)| (leads[n], (i + len - first) % len))
            .map(|(_, n)| *n);
        let Some(choice) = choice else { continue };
        *leads.get_mut(&choice).expect("an active node") += 1;
        if p.leader != Some(choice) {
            let mut next = p.clone();
            next.leader = Some(choice);
            out.push((p.clone(), next));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(group: u64, voters: &[u64]) -> Placement {
        Placement {
            group,
            voters: voters.to_vec(),
            leader: None,
            moving: None,
            epoch: 0,
        }
    }

    /// Applies planned moves (as if each completed) until none is planned.
    fn settle(mut ps: Vec<Placement>, active: &[u64]) -> (Vec<Placement>, usize) {
        let mut moves = 0;
        while let Some(next) = plan_move(&ps, active) {
            moves += 1;
            assert!(moves < 100, "the plan does not converge");
            let m = next.moving.clone().unwrap();
            let p = ps.iter_mut().find(|p| p.group == next.group).unwrap();
            p.voters.retain(|v| Some(*v) != m.from);
            p.voters.push(m.to);
            p.epoch = next.epoch;
        }
        (ps, moves)
    }

    fn load(ps: &[Placement]) -> BTreeMap<u64, usize> {
        let mut load = BTreeMap::new();
        for p in ps {
            for r in &p.voters {
                *load.entry(node_of(*r)).or_default() += 1;
            }
        }
        load
    }

    #[test]
    fn a_fourth_node_takes_its_share_and_every_group_keeps_three_voters_on_three_nodes() {
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        let (ps, moves) = settle(ps, &[1, 2, 3, 4]);
        let load = load(&ps);
        assert_eq!(load.len(), 4);
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "{load:?}");
        assert_eq!(moves, 6, "24 replicas over 4 nodes: 6 move to node 4");
        for p in &ps {
            let nodes: BTreeSet<u64> = p.voters.iter().map(|r| node_of(*r)).collect();
            assert_eq!(nodes.len(), 3, "{p:?}");
        }
        // Every replica added has an incarnation of its own.
        assert!(ps
            .iter()
            .flat_map(|p| &p.voters)
            .filter(|r| node_of(**r) == 4)
            .all(|r| *r >> 32 >= 1));
    }

    #[test]
    fn a_draining_node_is_emptied_onto_the_others() {
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        let (ps, _) = settle(ps, &[1, 2, 3, 4]);
        // Node 1 drains: it is no longer active.
        let (ps, _) = settle(ps, &[2, 3, 4]);
        let load = load(&ps);
        assert!(!load.contains_key(&1), "{load:?}");
        assert_eq!(load.values().sum::<usize>(), 24);
    }

    #[test]
    fn a_drain_moves_to_several_nodes_at_once_but_each_receives_one_at_a_time() {
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        let (mut ps, _) = settle(ps, &[1, 2, 3, 4, 5]);
        // Node 1 drains: plan without finishing any move.
        let mut targets = Vec::new();
        while let Some(next) = plan_move(&ps, &[2, 3, 4, 5]) {
            targets.push(node_of(next.moving.as_ref().unwrap().to));
            let p = ps.iter_mut().find(|p| p.group == next.group).unwrap();
            *p = next;
            assert!(targets.len() <= 4, "{targets:?}");
        }
        let distinct: BTreeSet<u64> = targets.iter().copied().collect();
        assert!(targets.len() >= 2, "several moves at once: {targets:?}");
        assert_eq!(distinct.len(), targets.len(), "one per node: {targets:?}");
        // A join: every move goes to the new node, so one at a time.
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        let first = plan_move(&ps, &[1, 2, 3, 4]).unwrap();
        let mut ps = ps;
        let g = first.group;
        *ps.iter_mut().find(|p| p.group == g).unwrap() = first;
        assert!(plan_move(&ps, &[1, 2, 3, 4]).is_none());
    }

    #[test]
    fn nothing_moves_when_nowhere_is_free_or_all_is_even() {
        let ps: Vec<Placement> = (1..=4).map(|g| placement(g, &[1, 2, 3])).collect();
        assert!(plan_move(&ps, &[1, 2, 3]).is_none());
        // Node 3 gone with no fourth node: its replicas have nowhere to go.
        assert!(plan_move(&ps, &[1, 2]).is_none());
    }

    #[test]
    fn a_new_clusters_preferred_leaders_are_the_ones_it_was_created_with() {
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        for (_, after) in prefer_leaders(&ps, &[1, 2, 3]) {
            assert_eq!(after.leader, Some((after.group - 1) % 3 + 1), "{after:?}");
        }
    }

    #[test]
    fn preferred_leaders_spread_over_the_voters() {
        let ps: Vec<Placement> = (1..=8).map(|g| placement(g, &[1, 2, 3])).collect();
        let (ps, _) = settle(ps, &[1, 2, 3, 4]);
        let changes = prefer_leaders(&ps, &[1, 2, 3, 4]);
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, after) in &changes {
            let l = after.leader.unwrap();
            assert!(after.voters.iter().any(|r| node_of(*r) == l));
            *leads.entry(l).or_default() += 1;
        }
        assert_eq!(leads.values().sum::<usize>(), 8);
        let (min, max) = (leads.values().min().unwrap(), leads.values().max().unwrap());
        assert!(max - min <= 1, "{leads:?}");
    }
}
