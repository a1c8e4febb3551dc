//! The commands replicated through the Raft log and their outcomes.
//!
//! Commands carry everything apply needs, including the leader's timestamp and, for a create,
//! the pinned definition: apply reads nothing but its own group's rows, so every replica
//! computes the same result.

use serde::{Deserialize, Serialize};

use raftflow_workflow::{Rejection, Status, Task, Workflow};

use crate::consensus::NodeAddr;
use crate::ring::SlotTable;
use crate::tables::{GroupState, NodeRecord, NodeState, Placement, SlotMove};

/// A command and the time the leader proposed it (ms since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Meta group: store a definition as a new version unless it equals the latest one.
    PutDefinition { name: String, json: String },
    /// Data group: start a workflow.
    CreateWorkflow {
        id: String,
        definition: String,
        version: u32,
        /// The pinned definition's JSON text.
        definition_json: String,
        /// The context as JSON object text.
        context_json: String,
        /// Identifies the request, so that a retry is told apart from a conflicting create.
        fingerprint: String,
    },
    /// Data group: fire a client event.
    Event {
        id: String,
        event: String,
        payload_json: Option<String>,
        expected_revision: Option<u64>,
        request_id: Option<String>,
    },
    /// Data group: cancel a running workflow.
    Cancel {
        id: String,
        reason: Option<String>,
        request_id: Option<String>,
    },
    /// Data group: lease up to `max` ready tasks of `types` to `worker`, oldest first.
    LeaseTasks {
        types: Vec<String>,
        worker: String,
        max: u32,
        /// Overrides each task's own lease length.
        lease_ms: Option<u64>,
    },
    /// Data group: the lease holder reports success; `task.completed` fires.
    CompleteTask {
        task_id: String,
        token: u64,
        output_json: Option<String>,
    },
    /// Data group: the lease holder reports failure; retried after backoff or `task.failed`.
    FailTask {
        task_id: String,
        token: u64,
        error: String,
        retryable: bool,
    },
    /// Data group: the lease holder extends its lease.
    HeartbeatTask {
        task_id: String,
        token: u64,
        lease_ms: Option<u64>,
    },
    /// Data group: time has advanced to the entry's stamp. Expired leases and finished
    /// backoffs make their tasks ready again; due timers fire.
    Tick,
    /// Data group: several client commands that reached the leader together, applied in
    /// order as if each had its own entry (see [`Command::batchable`]). One entry for many
    /// commands is what lets a busy group pay Raft's per-entry costs (appending, replicating,
    /// applying, answering) once for all of them.
    Batch(Vec<Command>),
    /// Meta group: a node asks to join. Records it as `joining` unless its id is known: the
    /// same id with the same addresses is a retry; anything else is refused for good.
    RegisterNode { id: u64, addr: NodeAddr },
    /// Meta group: records a node's addresses and state (the membership driver's steps).
    /// A removed node stays removed.
    SetNode {
        id: u64,
        addr: NodeAddr,
        state: NodeState,
    },
    /// Meta group: records a data group's placement, if the recorded one is still `expected`
    /// (a compare-and-set: a driver that decided on an old placement changes nothing).
    SetPlacement {
        placement: Placement,
        expected: Option<Placement>,
    },
    /// Meta group: records a new data group, serving, with its first placement. Refused if
    /// the group id was ever used.
    AddGroup { placement: Placement },
    /// Meta group: records a data group's state. `Retired` also drops its placement (its
    /// replicas are deleted); only a group that owns no slot may retire.
    SetGroupState { group: u64, state: GroupState },
    /// Meta group: records the slot table of a cluster whose slots never moved, unless one is
    /// recorded (the table every node computes from the groups the cluster was created with).
    InitSlotTable { table: SlotTable },
    /// Meta group: records slot move `slot_move` (step `Copying`), if no move is under way
    /// and its id is the table's next.
    StartSlotMove { slot_move: SlotMove },
    /// Meta group: the commit point of slot move `move_id`: the slot table gives its slots to
    /// the new group and the move is recorded `Committed`.
    CommitSlotMove { move_id: u64 },
    /// Meta group: forgets slot move `move_id` once both groups are done with it.
    EndSlotMove { move_id: u64 },
    /// Data group: freezes `slots` for move `move_id` to group `to`: commands and reads of
    /// their workflows applied after this are answered "moved".
    FreezeSlots {
        move_id: u64,
        to: u64,
        slots: Vec<u32>,
    },
    /// Data group: fences `slots` to receive their rows from group `from` in move `move_id`.
    ReceiveSlots {
        move_id: u64,
        from: u64,
        slots: Vec<u32>,
    },
    /// Data group: rows of the slots it receives in move `move_id` (idempotent: the same rows
    /// again write the same values). Lease tokens issued here from now on are above
    /// `token_floor`, which is above every token the old group issued.
    ImportRows {
        move_id: u64,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        token_floor: u64,
    },
    /// Data group: serves the slots it received in move `move_id` (which has committed).
    ActivateSlots { move_id: u64 },
    /// Data group: deletes the rows of workflows after `after` (up to `limit` looked at) in
    /// the slots it gave away in move `move_id` (which has committed); their fences stay.
    DropSlotRows {
        move_id: u64,
        after: Option<String>,
        limit: u32,
    },
    /// `command`, sent by the API caller named `caller` (the NAME of its token): the history
    /// rows it writes record who caused them. Batches, kinds and sizes are `command`'s.
    By {
        caller: String,
        command: Box<Command>,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutDefinition { .. } => "put_definition",
            Command::CreateWorkflow { .. } => "create_workflow",
            Command::Event { .. } => "event",
            Command::Cancel { .. } => "cancel",
            Command::LeaseTasks { .. } => "lease_tasks",
            Command::CompleteTask { .. } => "complete_task",
            Command::FailTask { .. } => "fail_task",
            Command::HeartbeatTask { .. } => "heartbeat_task",
            Command::Tick => "tick",
            Command::Batch(_) => "batch",
            Command::RegisterNode { .. } => "register_node",
            Command::SetNode { .. } => "set_node",
            Command::SetPlacement { .. } => "set_placement",
            Command::AddGroup { .. } => "add_group",
            Command::SetGroupState { .. } => "set_group_state",
            Command::InitSlotTable { .. } => "init_slot_table",
            Command::StartSlotMove { .. } => "start_slot_move",
            Command::CommitSlotMove { .. } => "commit_slot_move",
            Command::EndSlotMove { .. } => "end_slot_move",
            Command::FreezeSlots { .. } => "freeze_slots",
            Command::ReceiveSlots { .. } => "receive_slots",
            Command::ImportRows { .. } => "import_rows",
            Command::ActivateSlots { .. } => "activate_slots",
            Command::DropSlotRows { .. } => "drop_slot_rows",
            Command::By { command, .. } => command.kind(),
        }
    }

    /// Whether this records the cluster's own shape (nodes, placements, groups, slots) or
    /// frees space: a few bytes that creating a cluster, draining a node whose disk fills and
    /// moving slots off it cannot do without, so they pass the free-disk guard that client
    /// writes meet. Imported rows do not: they are data.
    pub fn shapes_cluster(&self) -> bool {
        matches!(
            self.inner(),
            Command::RegisterNode { .. }
                | Command::SetNode { .. }
                | Command::SetPlacement { .. }
                | Command::AddGroup { .. }
                | Command::SetGroupState { .. }
                | Command::InitSlotTable { .. }
                | Command::StartSlotMove { .. }
                | Command::CommitSlotMove { .. }
                | Command::EndSlotMove { .. }
                | Command::FreezeSlots { .. }
                | Command::ReceiveSlots { .. }
                | Command::ActivateSlots { .. }
                | Command::DropSlotRows { .. }
        )
    }

    /// Whether the command may share an entry with others. A lease may not: its fencing
    /// token is its entry's index, which must differ between any two leases. A tick may not:
    /// it stands for the time of its own entry. Definitions go to the meta group, which is
    /// never busy.
    pub fn batchable(&self) -> bool {
        matches!(
            self.inner(),
            Command::CreateWorkflow { .. }
                | Command::Event { .. }
                | Command::Cancel { .. }
                | Command::CompleteTask { .. }
                | Command::FailTask { .. }
                | Command::HeartbeatTask { .. }
        )
    }

    /// The command without the caller [`Command::By`] names.
    pub fn inner(&self) -> &Command {
        match self {
            Command::By { command, .. } => command.inner(),
            command => command,
        }
    }

    /// `self`, naming `caller` as its sender when there is one.
    pub fn by(self, caller: Option<&str>) -> Command {
        match caller {
            Some(caller) => Command::By {
                caller: caller.to_string(),
                command: Box::new(self),
            },
            None => self,
        }
    }

    /// The client commands this one stands for: those in a batch, else 1.
    pub fn count(&self) -> usize {
        match self {
            Command::Batch(commands) => commands.len(),
            Command::By { command, .. } => command.count(),
            _ => 1,
        }
    }

    /// The bytes of text the command carries, near enough to bound a batch's size.
    pub fn text_len(&self) -> usize {
        match self {
            Command::PutDefinition { name, json } => name.len() + json.len(),
            Command::CreateWorkflow {
                id,
                definition,
                definition_json,
                context_json,
                fingerprint,
                ..
            } => {
                id.len()
                    + definition.len()
                    + definition_json.len()
                    + context_json.len()
                    + fingerprint.len()
            }
            Command::Event {
                id,
                event,
                payload_json,
                request_id,
                ..
            } => {
                id.len()
                    + event.len()
                    + payload_json.as_ref().map_or(0, String::len)
                    + request_id.as_ref().map_or(0, String::len)
            }
            Command::Cancel {
                id,
                reason,
                request_id,
            } => {
                id.len()
                    + reason.as_ref().map_or(0, String::len)
                    + request_id.as_ref().map_or(0, String::len)
            }
            Command::LeaseTasks { types, worker, .. } => {
                types.iter().map(String::len).sum::<usize>() + worker.len()
            }
            Command::CompleteTask {
                task_id,
                output_json,
                ..
            } => task_id.len() + output_json.as_ref().map_or(0, String::len),
            Command::FailTask { task_id, error, .. } => task_id.len() + error.len(),
            Command::HeartbeatTask { task_id, .. } => task_id.len(),
            Command::Tick => 0,
            Command::Batch(commands) => commands.iter().map(Command::text_len).sum(),
            Command::RegisterNode { addr, .. } | Command::SetNode { addr, .. } => {
                addr.client.len() + addr.peer.len()
            }
            Command::SetPlacement { placement, .. } | Command::AddGroup { placement } => {
                placement.voters.len() * 16 + 64
            }
            Command::InitSlotTable { .. } => crate::ring::SLOTS as usize * 4,
            Command::StartSlotMove { slot_move } => slot_move.slots.len() * 4 + 64,
            Command::FreezeSlots { slots, .. } | Command::ReceiveSlots { slots, .. } => {
                slots.len() * 4 + 16
            }
            Command::ImportRows { rows, .. } => rows.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Command::DropSlotRows { after, .. } => after.as_ref().map_or(0, String::len) + 16,
            Command::SetGroupState { .. }
            | Command::CommitSlotMove { .. }
            | Command::EndSlotMove { .. }
            | Command::ActivateSlots { .. } => 16,
            Command::By { caller, command } => caller.len() + command.text_len(),
        }
    }
}

/// A stored definition version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionVersion {
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    /// The definition's JSON text.
    pub json: String,
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("workflow {id:?} not found")]
    WorkflowNotFound { id: String },
    #[error("workflow {id:?} exists and was created by a different request")]
    WorkflowExists { id: String },
    #[error("event {event:?} is not allowed in state {state:?}")]
    EventNotAllowed { state: String, event: String },
    #[error("workflow has finished with status {}", status.as_str())]
    Finished { status: Status },
    #[error("event {event:?} is emitted by the engine only")]
    EngineEvent { event: String },
    #[error("expected revision {expected}, workflow is at {current}")]
    RevisionMismatch { expected: u64, current: u64 },
    #[error("task {id:?} not found")]
    TaskNotFound { id: String },
    #[error("task {task_id:?}: {reason}")]
    LeaseLost { task_id: String, reason: String },
    #[error("node {id} {reason}")]
    NodeExists { id: u64, reason: String },
    #[error("the placement of group {group} changed since it was read")]
    PlacementChanged { group: u64 },
    /// The workflow's slot is fenced in this group: it moved (or is moving) in move
    /// `move_id`. The sender refreshes its slot table and asks the owner, or waits.
    #[error("workflow {id:?} (slot {slot}) moved from this group in slot move {move_id}")]
    Moved { id: String, slot: u32, move_id: u64 },
    /// A slot move's step that no longer fits what is recorded (a late or repeated one).
    #[error("slot move {move_id}: {reason}")]
    SlotMoveStale { move_id: u64, reason: String },
    /// A data group's record does not allow the change.
    #[error("group {group}: {reason}")]
    GroupRefused { group: u64, reason: String },
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Refusal {
        match r {
            Rejection::EventNotAllowed { state, event } => {
                Refusal::EventNotAllowed { state, event }
            }
            Rejection::Finished { status } => Refusal::Finished { status },
            Rejection::EngineEvent { event } => Refusal::EngineEvent { event },
            Rejection::RevisionMismatch { expected, current } => {
                Refusal::RevisionMismatch { expected, current }
            }
        }
    }
}

/// What applying a command produced; the response to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Blank and membership entries.
    Nothing,
    Definition {
        stored: DefinitionVersion,
        /// false when the content equalled the latest version, which is returned instead.
        created: bool,
    },
    Workflow {
        workflow: Workflow,
        /// true for a create that made a new workflow (HTTP 201).
        created: bool,
    },
    Refused(Refusal),
    /// Tasks handed out by a `LeaseTasks`.
    Leased {
        tasks: Vec<LeasedTask>,
    },
    /// A task after complete, fail or heartbeat, with its workflow.
    Task {
        task: Task,
        workflow: Workflow,
    },
    /// The outcomes of a [`Command::Batch`], in its order.
    Batch(Vec<Outcome>),
    /// A node's record after `RegisterNode` or `SetNode`.
    Node {
        node: NodeRecord,
        /// true when `RegisterNode` recorded a node that was not known (HTTP 201).
        created: bool,
    },
    /// Where a step that goes in bounded parts ([`Command::DropSlotRows`]) goes on from;
    /// `None` when it is done.
    Cursor {
        next: Option<String>,
    },
}

/// A task as a worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedTask {
    pub id: String,
    pub workflow_id: String,
    pub task_type: String,
    pub attempt: u32,
    pub token: u64,
    pub expires_at_ms: u64,
    /// The workflow's context as JSON object text.
    pub context_json: String,
}

impl std::fmt::Display for Stamped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.command.kind(), self.at_ms)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Nothing => write!(f, "nothing"),
            Outcome::Definition { stored, created } => {
                write!(
                    f,
                    "definition {} v{} created={created}",
                    stored.name, stored.version
                )
            }
            Outcome::Workflow { workflow, created } => write!(
                f,
                "workflow {} rev {} created={created}",
                workflow.id, workflow.revision
            ),
            Outcome::Refused(r) => write!(f, "refused: {r}"),
            Outcome::Leased { tasks } => write!(f, "leased {} tasks", tasks.len()),
            Outcome::Task { task, .. } => {
                write!(f, "task {} {}", task.id, task.phase.name())
            }
            Outcome::Batch(outcomes) => write!(f, "{} outcomes", outcomes.len()),
            Outcome::Cursor { next } => write!(f, "cursor {next:?}"),
            Outcome::Node { node, created } => write!(
                f,
                "node {} {} created={created}",
                node.id,
                node.state.as_str()
            ),
        }
    }
}
