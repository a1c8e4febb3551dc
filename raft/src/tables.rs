//! The state-machine tables inside a group's key range, and typed reads of them.
//!
//! | key                          | value                         | group        |
//! |------------------------------|-------------------------------|--------------|
//! | `a`                          | applied log id + membership   | every group  |
//! | `w/{id}`                     | [`WorkflowRecord`]            | data groups  |
//! | `h/{id}\0{revision u64 BE}`  | [`HistoryRow`]                | data groups  |
//! | `h/{id}\0{revision u64 BE}by`| who caused the row (String)   | data groups  |
//! | `r/{id}\0{request_id}`       | the first [`Outcome`]         | data groups  |
//! | `p/{name}\0{version u32 BE}` | pinned definition JSON        | data groups  |
//! | `t/{task id}`                | [`TaskRecord`]                | data groups  |
//! | `q/{type}\0{seq u64 BE}\0{task id}` | (ready queue, FIFO)    | data groups  |
//! | `e/{due ms u64 BE}{kind}{id}`| (deadline index)              | data groups  |
//! | `d/{name}\0{version u32 BE}` | [`DefinitionVersion`]         | meta group   |
//! | `l/{name}`                   | latest version (u32)          | meta group   |
//! | `n/{node id u64 BE}`         | [`NodeRecord`]                | meta group   |
//! | `g/{group u64 BE}`           | [`Placement`]                 | meta group   |
//! | `G/{group u64 BE}`           | [`GroupRecord`]               | meta group   |
//! | `s`                          | [`SlotTable`] (once one moved)| meta group   |
//! | `m`                          | the [`SlotMove`] under way    | meta group   |
//! | `x/{slot u32 BE}`            | [`SlotFence`]                 | data groups  |
//! | `k`                          | lease token base (u64)        | data groups  |
//! | `v`                          | last slot move taken part in  | data groups  |
//!
//! Ids and names never contain `\0` (their alphabets exclude it), so `\0` ends them safely.
//! The ready queue's `seq` is the log index that made the task ready, so workers get tasks
//! first-in first-out. A deadline's `kind` is `t` (a workflow's timer; id = workflow id) or
//! `k` (a task's lease expiry or retry backoff; id = task id).
//!
//! A workflow's rows are found from its id: `w/{id}`, `h/{id}\0…`, `r/{id}\0…`, its tasks
//! `t/{id}:{revision}` and the queue and deadline keys its records name. That is what a slot
//! move copies and deletes (the slot mover, `node/slots.rs`).

use serde::{Deserialize, Serialize};

use raftflow_storage::{codec, Store};
use raftflow_workflow::{HistoryRow, Task, Workflow};

use crate::command::DefinitionVersion;
use crate::signals::Signals;
use crate::Result;

pub const APPLIED: &[u8] = b"a";
pub const WORKFLOWS: &[u8] = b"w/";
const HISTORY: &[u8] = b"h/";
const DEDUP: &[u8] = b"r/";
const PINNED: &[u8] = b"p/";
pub const TASKS: &[u8] = b"t/";
const READY: &[u8] = b"q/";
pub const DEADLINES: &[u8] = b"e/";
pub const DEADLINE_TIMER: u8 = b't';
pub const DEADLINE_TASK: u8 = b'k';
pub const DEFINITIONS: &[u8] = b"d/";
pub const LATEST: &[u8] = b"l/";
pub const NODES: &[u8] = b"n/";
pub const PLACEMENTS: &[u8] = b"g/";
pub const GROUPS: &[u8] = b"G/";
pub const SLOT_TABLE: &[u8] = b"s";
pub const SLOT_MOVE: &[u8] = b"m";
pub const FENCES: &[u8] = b"x/";
pub const TOKEN_BASE: &[u8] = b"k";
pub const MOVE_MARK: &[u8] = b"v";

/// A node of the cluster as the meta group records it. Nodes that were members when the
/// cluster was created have no row until something changes them: they are active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub addr: crate::NodeAddr,
    pub state: NodeState,
    /// When the node entered `state` (ms since the Unix epoch, the leader's clock).
    pub since_ms: u64,
}

/// Where a node is in its life in the cluster. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered; catching up on the meta group; holds no voting replica yet.
    Joining,
    /// A full member: may hold voting replicas and lead groups.
    Active,
    /// Its replicas are being moved away before it leaves.
    Draining,
    /// Gone for good; its id is never used again.
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

/// Where a data group's voting replicas are, as the meta group records it, and the change of
/// them under way. Nodes that hold no replica of the group route its requests to these.
///
/// Replicas are named by replica ids: the node's id in the low 32 bits and an incarnation
/// above (see [`crate::replica_id`]), so that a group that comes back to a node it once left
/// starts a new replica there, which no message meant for the old one can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub group: u64,
    /// Replica ids of the voters.
    pub voters: Vec<u64>,
    /// The node that should lead the group (the balancer hands leadership to it).
    pub leader: Option<u64>,
    /// The replica move under way, if any.
    pub moving: Option<Move>,
    /// The last incarnation handed out for this group.
    pub epoch: u64,
}

/// A voter of a group being replaced by a new replica: first added as a learner and caught
/// up, then swapped in by one joint change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The replica that leaves (None: the group gains a voter).
    pub from: Option<u64>,
    /// The new replica.
    pub to: u64,
    pub step: MoveStep,
}

/// Where a [`Move`] is. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStep {
    /// `to` is being added as a learner and catching up (by snapshot when the log was purged).
    Learner,
    /// `to` has caught up; the joint change `voters - from + to` is being made.
    Joint,
}

/// A data group's life, as the meta group records it. Groups the cluster was created with
/// have no row until something changes them: they serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u64,
    pub state: GroupState,
    /// When the group entered `state` (ms since the Unix epoch, the leader's clock).
    pub since_ms: u64,
}

/// Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    /// Owns slots, or is about to receive its share of them.
    Serving,
    /// Its slots are moving to the serving groups; then it is retired.
    Retiring,
    /// Owns nothing and has no replicas; its id is never used again.
    Retired,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Serving => "serving",
            GroupState::Retiring => "retiring",
            GroupState::Retired => "retired",
        }
    }
}

/// A batch of slots moving from one data group to another, as the meta group records it (one
/// at a time). `Copying`: the old group has frozen the slots (or is about to) and their rows
/// are being copied; the move can still be undone. `Committed`: the slot table names the new
/// owner; the new group serves them once it has activated them, and the old one deletes its
/// copy and keeps a fence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMove {
    pub id: u64,
    pub from: u64,
    pub to: u64,
    pub slots: Vec<u32>,
    pub step: SlotMoveStep,
    /// When the move was recorded (ms since the Unix epoch, the leader's clock).
    pub since_ms: u64,
}

/// Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotMoveStep {
    Copying,
    Committed,
}

impl SlotMoveStep {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotMoveStep::Copying => "copying",
            SlotMoveStep::Committed => "committed",
        }
    }
}

/// Why a data group does not serve a slot it holds (or held) rows of. Every command and read
/// of a fenced slot's workflows is answered "moved"; the deadlines and ready tasks of its
/// workflows are left alone. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotFence {
    /// Frozen for move `move_id` to group `to`; once that move commits, also the tombstone
    /// of the slot's workflows here (their rows are deleted).
    Leaving { move_id: u64, to: u64 },
    /// Receiving rows from group `from` in move `move_id`; served once the move commits and
    /// the slot is activated here.
    Arriving { move_id: u64, from: u64 },
}

impl SlotFence {
    pub fn move_id(&self) -> u64 {
        match self {
            SlotFence::Leaving { move_id, .. } | SlotFence::Arriving { move_id, .. } => *move_id,
        }
    }
}

/// A workflow as stored: the workflow, the fingerprint of the request that created it, and
/// the engine step it waits on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub workflow: Workflow,
    pub fingerprint: String,
    pub step: Option<OpenStep>,
}

/// The engine step a running workflow waits on in its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpenStep {
    Task { task_id: String },
    Timer { due_ms: u64 },
}

/// A task as stored: the task and, while it is ready, its place in the ready queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub queued: Option<u64>,
}

fn join(table: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = table.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(table);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn workflow_key(id: &str) -> Vec<u8> {
    join(WORKFLOWS, &[id.as_bytes()])
}

pub fn history_key(id: &str, revision: u64) -> Vec<u8> {
    join(HISTORY, &[id.as_bytes(), &revision.to_be_bytes()])
}

/// The row naming the API caller whose command wrote history row `revision` (there is none
/// for rows the engine wrote on its own, or when the API is open). It sorts right after the
/// row, under the same prefix, so whatever carries or drops a workflow's history carries or
/// drops it too.
pub fn history_caller_key(id: &str, revision: u64) -> Vec<u8> {
    let mut k = history_key(id, revision);
    k.extend_from_slice(HISTORY_CALLER);
    k
}

const HISTORY_CALLER: &[u8] = b"by";

pub fn history_prefix(id: &str) -> Vec<u8> {
    let mut k = join(HISTORY, &[id.as_bytes()]);
    k.push(0);
    k
}

pub fn dedup_key(id: &str, request_id: &str) -> Vec<u8> {
    join(DEDUP, &[id.as_bytes(), request_id.as_bytes()])
}

pub fn task_key(task_id: &str) -> Vec<u8> {
    join(TASKS, &[task_id.as_bytes()])
}

/// Where ready tasks of `task_type` are queued.
pub fn ready_prefix(task_type: &str) -> Vec<u8> {
    let mut k = join(READY, &[task_type.as_bytes()]);
    k.push(0);
    k
}

pub fn ready_key(task_type: &str, seq: u64, task_id: &str) -> Vec<u8> {
    join(
        READY,
        &[task_type.as_bytes(), &seq.to_be_bytes(), task_id.as_bytes()],
    )
}

/// The task id at the end of a ready-queue key.
pub fn task_of_ready_key(key: &[u8], task_type: &str) -> String {
    let skip = READY.len() + task_type.len() + 1 + 8 + 1;
    String::from_utf8_lossy(&key[skip..]).into_owned()
}

pub fn deadline_key(due_ms: u64, kind: u8, id: &str) -> Vec<u8> {
    let mut k = DEADLINES.to_vec();
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `(due_ms, kind, id)` of a deadline key.
pub fn parse_deadline_key(key: &[u8]) -> (u64, u8, String) {
    let rest = &key[DEADLINES.len()..];
    let due = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes of due time"));
    (
        due,
        rest[8],
        String::from_utf8_lossy(&rest[9..]).into_owned(),
    )
}

/// Whether deadline key `key` is a timer or task of a workflow in one of the `fenced` slots.
pub fn deadline_fenced(key: &[u8], fenced: &std::collections::BTreeMap<u32, SlotFence>) -> bool {
    if fenced.is_empty() {
        return false;
    }
    let (_, kind, id) = parse_deadline_key(key);
    let workflow = match kind {
        DEADLINE_TIMER => Some(id.as_str()),
        _ => raftflow_workflow::task::workflow_of_task(&id),
    };
    workflow.is_some_and(|wf| fenced.contains_key(&crate::ring::slot_of(wf)))
}

pub fn pinned_key(name: &str, version: u32) -> Vec<u8> {
    join(PINNED, &[name.as_bytes(), &version.to_be_bytes()])
}

pub fn definition_key(name: &str, version: u32) -> Vec<u8> {
    join(DEFINITIONS, &[name.as_bytes(), &version.to_be_bytes()])
}

pub fn latest_key(name: &str) -> Vec<u8> {
    join(LATEST, &[name.as_bytes()])
}

pub fn node_key(id: u64) -> Vec<u8> {
    join(NODES, &[&id.to_be_bytes()])
}

pub fn placement_key(group: u64) -> Vec<u8> {
    join(PLACEMENTS, &[&group.to_be_bytes()])
}

pub fn group_key(group: u64) -> Vec<u8> {
    join(GROUPS, &[&group.to_be_bytes()])
}

pub fn fence_key(slot: u32) -> Vec<u8> {
    join(FENCES, &[&slot.to_be_bytes()])
}

/// The slot of a fence key.
pub fn slot_of_fence_key(key: &[u8]) -> u32 {
    u32::from_be_bytes(key[FENCES.len()..].try_into().expect("4 bytes of slot"))
}

/// Where a workflow's dedup records are.
pub fn dedup_prefix(id: &str) -> Vec<u8> {
    let mut k = join(DEDUP, &[id.as_bytes()]);
    k.push(0);
    k
}

/// Where the tasks of workflow `id` are (also those of workflows whose id extends `id` with
/// `:`: check with [`raftflow_workflow::task::workflow_of_task`]).
pub fn tasks_prefix(id: &str) -> Vec<u8> {
    let mut k = join(TASKS, &[id.as_bytes()]);
    k.push(b':');
    k
}

/// The workflow id a task, timer or workflow key of a data group belongs to, if `key` is one
/// that a slot move carries: `w/`, `h/`, `r/`, `t/`, `q/` or `e/`.
pub fn workflow_of_key(key: &[u8]) -> Option<String> {
    let id_until_nul = |rest: &[u8]| -> Option<String> {
        let end = rest.iter().position(|b| *b == 0)?;
        String::from_utf8(rest[..end].to_vec()).ok()
    };
    if let Some(rest) = key.strip_prefix(WORKFLOWS) {
        return String::from_utf8(rest.to_vec()).ok();
    }
    if let Some(rest) = key.strip_prefix(HISTORY) {
        return id_until_nul(rest);
    }
    if let Some(rest) = key.strip_prefix(DEDUP) {
        return id_until_nul(rest);
    }
    if let Some(rest) = key.strip_prefix(TASKS) {
        let task = std::str::from_utf8(rest).ok()?;
        return raftflow_workflow::task::workflow_of_task(task).map(str::to_string);
    }
    None
}

fn get<T: serde::de::DeserializeOwned>(store: &Store, group: u64, key: &[u8]) -> Result<Option<T>> {
    match store.get_state(group, key)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

pub fn read_workflow(store: &Store, group: u64, id: &str) -> Result<Option<WorkflowRecord>> {
    get(store, group, &workflow_key(id))
}

/// History rows, oldest first, each with the caller who caused it (when one is recorded).
pub type CalledRows = Vec<(HistoryRow, Option<String>)>;

/// Workflow `id`'s history, oldest first, up to `limit` rows, each with the caller who caused
/// it (when one is recorded).
pub fn read_history(store: &Store, group: u64, id: &str, limit: usize) -> Result<CalledRows> {
    // A row and its caller row: at most two keys a row.
    let keys = store.scan_state(group, &history_prefix(id), None, limit.saturating_mul(2))?;
    history_of_rows(id, keys, limit)
}

/// The first `limit` history rows of workflow `id` with their callers, from its `h/` rows in
/// key order.
pub(crate) fn history_of_rows(
    id: &str,
    keys: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    limit: usize,
) -> Result<CalledRows> {
    let row_key_len = history_prefix(id).len() + 8;
    let mut rows: CalledRows = Vec::new();
    for (key, value) in keys {
        if key.len() == row_key_len {
            if rows.len() == limit {
                break;
            }
            rows.push((codec::decode(&value)?, None));
        } else if let Some((row, by)) = rows.last_mut() {
            if key == history_caller_key(id, row.revision) {
                *by = Some(codec::decode(&value)?);
            }
        }
    }
    Ok(rows)
}

/// Up to `limit` workflows of `group` with ids after `after`, in id order.
pub fn scan_workflows(
    store: &Store,
    group: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<WorkflowRecord>> {
    let after_key = after.map(workflow_key);
    store
        .scan_state(group, WORKFLOWS, after_key.as_deref(), limit)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}

pub fn read_task(store: &Store, group: u64, task_id: &str) -> Result<Option<TaskRecord>> {
    get(store, group, &task_key(task_id))
}

/// Whether this replica of `group` has a ready task of any of `types` (after the queue's
/// floor: see [`Signals::ready_floor`]).
pub fn has_ready(store: &Store, signals: &Signals, group: u64, types: &[String]) -> Result<bool> {
    for t in types {
        let floor = signals.ready_floor(group, t);
        if !store
            .scan_state_from(group, &ready_prefix(t), floor.as_deref(), 1)?
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The earliest deadline (lease expiry, retry, timer) of `group` on this replica, with its
/// key, looking only from `from` on (when given: no live deadline sorts before it).
pub fn next_deadline(
    store: &Store,
    group: u64,
    from: Option<&[u8]>,
) -> Result<Option<(u64, Vec<u8>)>> {
    Ok(store
        .scan_state_from(group, DEADLINES, from, 1)?
        .into_iter()
        .next()
        .map(|(k, _)| (parse_deadline_key(&k).0, k)))
}

/// The definition a data group pinned for its workflows of `name` v`version`.
pub fn read_pinned(
    store: &Store,
    group: u64,
    name: &str,
    version: u32,
) -> Result<Option<raftflow_workflow::Definition>> {
    let json: Option<String> = get(store, group, &pinned_key(name, version))?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

pub fn read_latest_version(store: &Store, group: u64, name: &str) -> Result<Option<u32>> {
    get(store, group, &latest_key(name))
}

pub fn read_definition(
    store: &Store,
    group: u64,
    name: &str,
    version: u32,
) -> Result<Option<DefinitionVersion>> {
    get(store, group, &definition_key(name, version))
}

/// Every definition name with its latest version, in name order.
pub fn list_definitions(store: &Store, group: u64) -> Result<Vec<(String, u32)>> {
    store
        .scan_state(group, LATEST, None, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[LATEST.len()..]).into_owned();
            Ok((name, codec::decode(&v)?))
        })
        .collect()
}

/// Every node row of the meta group, in id order.
pub fn read_nodes(store: &Store) -> Result<Vec<NodeRecord>> {
    store
        .scan_state(crate::META_GROUP, NODES, None, usize::MAX)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}

/// The slot table the meta group records, if a slot ever moved.
pub fn read_slot_table(store: &Store) -> Result<Option<crate::ring::SlotTable>> {
    get(store, crate::META_GROUP, SLOT_TABLE)
}

/// The slot move under way, if any.
pub fn read_slot_move(store: &Store) -> Result<Option<SlotMove>> {
    get(store, crate::META_GROUP, SLOT_MOVE)
}

/// Every data group's record, in group order.
pub fn read_groups(store: &Store) -> Result<Vec<GroupRecord>> {
    store
        .scan_state(crate::META_GROUP, GROUPS, None, usize::MAX)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}

/// The fence of `slot` in data group `group`, if it has one.
pub fn read_fence(store: &Store, group: u64, slot: u32) -> Result<Option<SlotFence>> {
    get(store, group, &fence_key(slot))
}

/// Every fence of data group `group`, by slot.
pub fn read_fences(
    store: &Store,
    group: u64,
) -> Result<std::collections::BTreeMap<u32, SlotFence>> {
    store
        .scan_state(group, FENCES, None, usize::MAX)?
        .into_iter()
        .map(|(k, v)| Ok((slot_of_fence_key(&k), codec::decode(&v)?)))
        .collect()
}

/// Every data group's recorded placement, in group order.
pub fn read_placements(store: &Store) -> Result<Vec<Placement>> {
    store
        .scan_state(crate::META_GROUP, PLACEMENTS, None, usize::MAX)?
        .into_iter()
        .map(|(_, v)| Ok(codec::decode(&v)?))
        .collect()
}
