//! Slots between data groups: the slot table as this node knows it, the "moved" answers a
//! request may meet, and the slot mover that adds and retires data groups online.
//!
//! The meta group records the slot table (each slot's owner and the move that gave it), every
//! data group's state, and the one slot move under way. The meta group's leader drives a move
//! in recorded steps, so that a new leader resumes where an old one stopped:
//!
//! 1. The move is recorded (`Copying`): up to [`SLOTS_PER_MOVE`] slots from group A to B.
//! 2. A freezes the slots (a replicated command): from then on A answers every command and read
//!    of their workflows "moved", and its ticks and leases leave them alone.
//! 3. B fences them as arriving, and their rows are copied from A to B in bounded, idempotent
//!    chunks ([`COPY_CHUNK_BYTES`]), each a replicated command in B.
//! 4. The meta group commits the new owner: the one commit point. Before it the move can be
//!    undone by lifting A's fences; after it, it is only ever finished.
//! 5. B activates the slots and serves them; A deletes their rows in bounded steps and keeps
//!    the fence as a tombstone, so it never answers "not found" for a moved workflow.
//! 6. The move is forgotten, and the next one can start.
//!
//! A node that meets "moved" reads the meta group's table again (after a read index on it)
//! and asks the new owner, or waits while the move commits, within the request's time.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::membership::STEP_TIMEOUT;
use super::{RaftNode, META_GROUP};
use crate::command::{Command, Outcome, Refusal};
use crate::query::{Answer, Query};
use crate::ring::{slot_of, SlotTable};
use crate::tables::{self, GroupState, NodeState, Placement, SlotMove, SlotMoveStep};
use crate::{node_of, Error, Result};

/// Slots one move takes from one group to another. A move freezes its slots until their
/// rows are copied: fewer slots wait less, more slots move a group's share in fewer steps.
pub const SLOTS_PER_MOVE: usize = 128;
/// About how many bytes of rows one copy step carries (one replicated command in the new
/// group).
pub const COPY_CHUNK_BYTES: u32 = 1 << 20;
/// Workflows the old group looks at in one step of deleting a moved slot's rows.
const DROP_SCAN: u32 = 4096;
/// How often the meta group's leader looks for slot work.
const SLOTS_EVERY: Duration = Duration::from_millis(200);
/// A request that met "moved" asks again after this long, doubling up to the max.
const MOVED_RETRY_FIRST: Duration = Duration::from_millis(5);
const MOVED_RETRY_MAX: Duration = Duration::from_millis(100);

/// What a node caches of the meta group's rows: the slot table and the data groups.
#[derive(Debug)]
pub(super) struct Shape {
    /// The meta replica's [`crate::signals::Signals::meta_version`] this was read at.
    version: u64,
    table: Arc<SlotTable>,
    /// Every data group that is not retired, with its state, by id.
    groups: BTreeMap<u64, GroupState>,
}

impl Shape {
    pub(super) fn initial(groups: u64) -> Shape {
        Shape {
            version: 0,
            table: Arc::new(SlotTable::new(groups)),
            groups: (1..=groups).map(|g| (g, GroupState::Serving)).collect(),
        }
    }
}

/// A slot move as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotMoveView {
    pub id: u64,
    pub from: u64,
    pub to: u64,
    pub slots: usize,
    pub step: &'static str,
    pub since_ms: u64,
}

impl RaftNode {
    /// The slot table and data groups as this node's meta replica has them.
    pub(super) fn shape(&self) -> Arc<Shape> {
        let version = self.signals.meta_version();
        {
            let shape = self.shape.read().expect("shape lock");
            if shape.version == version {
                return shape.clone();
            }
        }
        let shape = Arc::new(self.read_shape(version));
        *self.shape.write().expect("shape lock") = shape.clone();
        shape
    }

    fn read_shape(&self, version: u64) -> Shape {
        let initial = Shape::initial(self.config.groups);
        let table = match tables::read_slot_table(&self.store) {
            Ok(Some(t)) => Arc::new(t),
            Ok(None) => initial.table,
            Err(e) => {
                tracing::warn!(error = %e, "reading the slot table failed; keeping the last one");
                self.shape.read().expect("shape lock").table.clone()
            }
        };
        let mut groups = initial.groups;
        for p in self.placements() {
            groups.insert(p.group, GroupState::Serving);
        }
        for r in tables::read_groups(&self.store).unwrap_or_default() {
            groups.insert(r.id, r.state);
        }
        groups.retain(|_, s| *s != GroupState::Retired);
        Shape {
            version,
            table,
            groups,
        }
    }

    /// The slot table as this node's meta replica has it.
    pub fn slots(&self) -> Arc<SlotTable> {
        self.shape().table.clone()
    }

    /// The data group that owns workflow `id`, as this node knows it.
    pub fn group_of(&self, id: &str) -> u64 {
        self.shape().table.group_of(id)
    }

    /// Every data group that is not retired, in id order.
    pub fn data_groups(&self) -> impl Iterator<Item = u64> {
        let shape = self.shape();
        let groups: Vec<u64> = shape.groups.keys().copied().collect();
        groups.into_iter()
    }

    /// Every data group that is not retired, with its state.
    pub fn group_states(&self) -> BTreeMap<u64, GroupState> {
        self.shape().groups.clone()
    }

    /// The slot move under way, as this node's meta replica has it.
    pub fn slot_move(&self) -> Option<SlotMoveView> {
        let m = tables::read_slot_move(&self.store).ok()??;
        Some(SlotMoveView {
            id: m.id,
            from: m.from,
            to: m.to,
            slots: m.slots.len(),
            step: m.step.as_str(),
            since_ms: m.since_ms,
        })
    }

    /// Commits a command on workflow `workflow` in the group that owns it, following the
    /// slot if it moves: returns the group that applied it and the outcome.
    pub async fn commit_for(
        &self,
        workflow: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<(u64, Outcome)> {
        let deadline = Instant::now() + timeout;
        let mut pause = MOVED_RETRY_FIRST;
        loop {
            let group = self.group_of(workflow);
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = self.commit(group, command.clone(), left).await?;
            match outcome {
                Outcome::Refused(Refusal::Moved { .. }) => {
                    self.follow_slot(workflow, group, deadline, &mut pause)
                        .await?
                }
                outcome => return Ok((group, outcome)),
            }
        }
    }

    /// Reads workflow `workflow`'s rows in the group that owns it, following the slot if it
    /// moves: returns the group read and the answer.
    pub async fn query_for(
        &self,
        workflow: &str,
        query: Query,
        linearizable: bool,
        timeout: Duration,
    ) -> Result<(u64, Answer)> {
        let deadline = Instant::now() + timeout;
        let mut pause = MOVED_RETRY_FIRST;
        loop {
            let group = self.group_of(workflow);
            let left = deadline.saturating_duration_since(Instant::now());
            match self.query(group, query.clone(), linearizable, left).await? {
                Answer::Moved { .. } => {
                    self.follow_slot(workflow, group, deadline, &mut pause)
                        .await?
                }
                answer => return Ok((group, answer)),
            }
        }
    }

    /// After group `group` answered "moved" for `workflow`: reads the slot table again once
    /// the meta group's latest commit has applied here; if the slot still belongs to `group`
    /// (the move has not committed yet, or the new owner has not activated it), waits a
    /// little. 503 once `deadline` is near.
    async fn follow_slot(
        &self,
        workflow: &str,
        group: u64,
        deadline: Instant,
        pause: &mut Duration,
    ) -> Result<()> {
        self.counters.moved_answers.fetch_add(1, Ordering::Relaxed);
        let left = deadline.saturating_duration_since(Instant::now());
        self.linearize(META_GROUP, left).await?;
        if self.group_of(workflow) != group {
            return Ok(());
        }
        if Instant::now() + *pause >= deadline {
            return Err(Error::Unavailable(format!(
                "slot {} of workflow {workflow:?} is moving between groups; try again shortly",
                slot_of(workflow)
            )));
        }
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(MOVED_RETRY_MAX);
        Ok(())
    }

    /// Adds a data group (`POST /v1/cluster/groups`): records it with `replication_factor`
    /// voters on the active nodes that hold the fewest replicas. Slots then move to it.
    pub async fn add_group(&self, timeout: Duration) -> Result<u64> {
        for _ in 0..3 {
            self.linearize(META_GROUP, timeout).await?;
            let placements = self.placements();
            let active: Vec<u64> = self
                .nodes()
                .into_iter()
                .filter(|n| n.state == NodeState::Active.as_str())
                .map(|n| n.id)
                .collect();
            let factor = self.replication_factor().max(1);
            if (active.len() as u64) < factor {
                return Err(Error::NotEnoughNodes(format!(
                    "a group needs {factor} voters and {} nodes are active",
                    active.len()
                )));
            }
            let taken = tables::read_groups(&self.store)?
                .into_iter()
                .map(|g| g.id)
                .chain(placements.iter().map(|p| p.group))
                .chain(1..=self.config.groups)
                .max()
                .unwrap_or(0);
            let group = taken + 1;
            let voters = least_loaded(&placements, &active, factor as usize);
            let placement = Placement {
                group,
                voters: voters.clone(),
                leader: voters.first().copied(),
                moving: None,
                epoch: 0,
            };
            match self
                .commit(META_GROUP, Command::AddGroup { placement }, timeout)
                .await?
            {
                Outcome::Refused(Refusal::GroupRefused { .. }) => continue,
                Outcome::Refused(r) => return Err(Error::Unavailable(r.to_string())),
                _ => {
                    tracing::info!(group, ?voters, "slots: a data group was added");
                    return Ok(group);
                }
            }
        }
        Err(Error::Unavailable(
            "another group was added at the same time; try again".into(),
        ))
    }

    /// Starts retiring data group `group` (`DELETE /v1/cluster/groups/{id}`): its slots move
    /// to the serving groups, then it is retired. `None` when there is no such group.
    pub async fn retire_group(&self, group: u64, timeout: Duration) -> Result<Option<GroupState>> {
        self.linearize(META_GROUP, timeout).await?;
        let states = self.group_states();
        let Some(state) = states.get(&group).copied() else {
            return Ok(None);
        };
        if state == GroupState::Retiring {
            return Ok(Some(state));
        }
        let serving = states
            .values()
            .filter(|s| **s == GroupState::Serving)
            .count();
        if serving <= 1 {
            return Err(Error::LastGroup(format!(
                "group {group} is the only serving data group; add another one first"
            )));
        }
        let set = Command::SetGroupState {
            group,
            state: GroupState::Retiring,
        };
        match self.commit(META_GROUP, set, timeout).await? {
            Outcome::Refused(r) => Err(Error::Unavailable(r.to_string())),
            _ => {
                tracing::info!(group, "slots: the data group is retiring");
                Ok(Some(GroupState::Retiring))
            }
        }
    }

    /// On the meta group's leader, takes the next step of any slot move.
    pub(super) async fn drive_slots(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SLOTS_EVERY);
        let mut failures = 0u32;
        // The meta replica's version at which the last step found nothing to do. What a step
        // looks at (the slot table, the move under way, the groups' states and placements)
        // are all meta rows, so until the version moves the next step would find nothing too,
        // and is skipped: it costs a pass of rendezvous hashing over every slot (16,384
        // slots times the groups). Only while this node stays the meta leader: a new leader
        // looks again after its first linearizable read.
        let mut idle_at = None;
        loop {
            tick.tick().await;
            if !self.is_leader(META_GROUP) {
                failures = 0;
                idle_at = None;
                continue;
            }
            if idle_at == Some(self.signals.meta_version()) {
                continue;
            }
            // One move after another while there is work, without waiting for the next tick.
            let mut result = Ok(true);
            let mut version = 0;
            while let Ok(true) = result {
                version = self.signals.meta_version();
                result = self.slot_step().await;
            }
            match result {
                Ok(_) => {
                    failures = 0;
                    idle_at = Some(version);
                }
                Err(e) => super::membership::report_step_failure("slots", &mut failures, &e),
            }
        }
    }

    /// Takes the next step of slot work; `true` when it did something (there may be more).
    async fn slot_step(&self) -> Result<bool> {
        if !self.is_leader(META_GROUP) {
            return Ok(false);
        }
        self.linearize(META_GROUP, STEP_TIMEOUT).await?;
        let Some(table) = tables::read_slot_table(&self.store)? else {
            // The table becomes a recorded row before anything moves.
            let table = SlotTable::new(self.config.groups);
            self.commit_step(META_GROUP, Command::InitSlotTable { table })
                .await?;
            return Ok(false);
        };
        if let Some(m) = tables::read_slot_move(&self.store)? {
            self.run_slot_move(m).await?;
            return Ok(true);
        }
        let states = self.group_states();
        let serving: Vec<u64> = states
            .iter()
            .filter(|(_, s)| **s == GroupState::Serving)
            .map(|(g, _)| *g)
            .collect();
        if let Some((from, to, slots)) = table.next_batch(&serving, SLOTS_PER_MOVE) {
            // A new group exists on its voters before anything moves to it.
            self.create_data_group(to).await?;
            let slot_move = SlotMove {
                id: table.moves + 1,
                from,
                to,
                slots,
                step: SlotMoveStep::Copying,
                since_ms: 0,
            };
            tracing::info!(
                move_id = slot_move.id,
                from,
                to,
                slots = slot_move.slots.len(),
                "slots: moving a batch of slots"
            );
            self.commit_step(META_GROUP, Command::StartSlotMove { slot_move })
                .await?;
            return Ok(true);
        }
        let owning = table.slots_per_group();
        for (group, _) in states
            .iter()
            .filter(|(g, s)| **s == GroupState::Retiring && !owning.contains_key(g))
        {
            tracing::info!(
                group,
                "slots: the group owns no slot any more; it is retired"
            );
            self.commit_step(
                META_GROUP,
                Command::SetGroupState {
                    group: *group,
                    state: GroupState::Retired,
                },
            )
            .await?;
        }
        Ok(false)
    }

    /// Initialises data group `group` on the voters of its first placement unless one of
    /// them holds it already.
    async fn create_data_group(&self, group: u64) -> Result<()> {
        let Some(p) = self.placement(group) else {
            return Err(Error::Unavailable(format!(
                "group {group} has no placement"
            )));
        };
        self.create_group(&self.clients, group, &p.voters).await
    }

    /// Takes slot move `m` from its recorded step to its end.
    async fn run_slot_move(&self, m: SlotMove) -> Result<()> {
        let move_id = m.id;
        if m.step == SlotMoveStep::Copying {
            let freeze = Command::FreezeSlots {
                move_id,
                to: m.to,
                slots: m.slots.clone(),
            };
            self.commit_step(m.from, freeze).await?;
            let receive = Command::ReceiveSlots {
                move_id,
                from: m.from,
                slots: m.slots.clone(),
            };
            self.commit_step(m.to, receive).await?;
            let (mut after, mut rows_copied, mut bytes_copied) = (None, 0u64, 0u64);
            loop {
                let part = Query::SlotRows {
                    move_id,
                    after: after.clone(),
                    max_bytes: COPY_CHUNK_BYTES,
                };
                let Answer::SlotRows {
                    rows,
                    next,
                    token_floor,
                } = self.query(m.from, part, true, STEP_TIMEOUT).await?
                else {
                    return Err(Error::Fatal("unexpected answer to a slot copy".into()));
                };
                if !rows.is_empty() {
                    rows_copied += rows.len() as u64;
                    bytes_copied += rows
                        .iter()
                        .map(|(k, v)| (k.len() + v.len()) as u64)
                        .sum::<u64>();
                    let import = Command::ImportRows {
                        move_id,
                        rows,
                        token_floor,
                    };
                    self.commit_step(m.to, import).await?;
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            self.counters
                .slot_rows_copied
                .fetch_add(rows_copied, Ordering::Relaxed);
            self.counters
                .slot_bytes_copied
                .fetch_add(bytes_copied, Ordering::Relaxed);
            self.commit_step(META_GROUP, Command::CommitSlotMove { move_id })
                .await?;
            tracing::info!(
                move_id,
                from = m.from,
                to = m.to,
                rows = rows_copied,
                bytes = bytes_copied,
                "slots: the move committed; the new group serves the slots"
            );
        }
        self.commit_step(m.to, Command::ActivateSlots { move_id })
            .await?;
        let mut after = None;
        loop {
            let drop = Command::DropSlotRows {
                move_id,
                after: after.clone(),
                limit: DROP_SCAN,
            };
            match self.commit_step(m.from, drop).await? {
                Outcome::Cursor { next: Some(n) } => after = Some(n),
                _ => break,
            }
        }
        self.commit_step(META_GROUP, Command::EndSlotMove { move_id })
            .await?;
        self.counters.slot_moves.fetch_add(1, Ordering::Relaxed);
        self.counters
            .slots_moved
            .fetch_add(m.slots.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The `count` active nodes holding the fewest voting replicas (ties: lowest id first).
fn least_loaded(placements: &[Placement], active: &[u64], count: usize) -> Vec<u64> {
    let mut load: BTreeMap<u64, usize> = active.iter().map(|n| (*n, 0)).collect();
    for p in placements {
        for r in &p.voters {
            if let Some(l) = load.get_mut(&node_of(*r)) {
                *l += 1;
            }
        }
    }
    let mut nodes: Vec<(usize, u64)> = load.into_iter().map(|(n, l)| (l, n)).collect();
    nodes.sort_unstable();
    nodes.into_iter().take(count).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_group_goes_to_the_nodes_with_the_fewest_replicas() {
        let p = |group, voters: &[u64]| Placement {
            group,
            voters: voters.to_vec(),
            leader: None,
            moving: None,
            epoch: 0,
        };
        let placements = vec![p(1, &[1, 2, 3]), p(2, &[2, 3, 4]), p(3, &[3, 4, 5])];
        assert_eq!(
            least_loaded(&placements, &[1, 2, 3, 4, 5], 3),
            vec![1, 5, 2]
        );
        assert_eq!(least_loaded(&[], &[1, 2, 3], 3), vec![1, 2, 3]);
    }
}
