//! Request and response bodies of the HTTP API (`docs/API.md`); with the `openapi` feature,
//! their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorCode;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflow {
    /// `[A-Za-z0-9_.:-]{1,128}`; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub definition: String,
    /// Pins a version; the latest version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// A JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub context: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendEvent {
    pub event: String,
    /// A JSON object merged into the context at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
    /// Compare-and-set: refused with 409 unless the workflow is at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
    /// A repeated request id for the same workflow returns the first outcome and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelWorkflow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// As for events: a repeated request id returns the first outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowView {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub state: String,
    /// running | succeeded | failed | cancelled
    pub status: String,
    pub revision: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Value,
    pub created_at: String,
    pub updated_at: String,
    /// The Raft group that owns the workflow.
    pub group: u64,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEvent {
    pub revision: u64,
    pub event: String,
    pub from: Option<String>,
    pub to: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
    pub at: String,
    /// The NAME of the API token whose request caused the row; none for rows the engine
    /// wrote on its own (timers, lease expiries) or when the cluster takes no tokens.
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryView {
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionStored {
    pub name: String,
    pub version: u32,
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionSummary {
    pub name: String,
    pub latest_version: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionList {
    pub definitions: Vec<DefinitionSummary>,
}

/// A stored definition version: the definition's fields plus `version` and `created_at`.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionView {
    pub name: String,
    pub version: u32,
    pub created_at: String,
    pub initial: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub states: Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable: clients switch on it.
    pub code: ErrorCode,
    pub message: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `POST /v1/cluster/nodes`: a node asks to join (what `raftflow serve --join` sends).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    /// 1 to 4294967295; never used by another node before.
    pub id: u64,
    /// host:port of the node's HTTP API.
    pub client_addr: String,
    /// host:port of the node's peer (Raft) listener.
    pub peer_addr: String,
}

/// A node as the cluster records it (the answer to `POST /v1/cluster/nodes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterNode {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// `joining`, `active`, `draining` or `removed`.
    pub state: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub reachable: bool,
    /// `joining`, `active`, `draining` or `removed`.
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupView {
    pub id: u64,
    /// "meta" or "data"
    pub kind: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    /// Non-voting replicas, catching up.
    #[serde(default)]
    pub learners: Vec<u64>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    /// Last log index in this node's latest snapshot of the group.
    pub snapshot: Option<u64>,
    /// Last log index this node has purged from the group's log.
    pub purged: Option<u64>,
    /// This node's role in the group: `leader`, `follower`, `candidate`, `learner`, or `none`
    /// when it holds no replica (then the voters are the recorded placement and the indexes
    /// are absent).
    pub role: String,
    /// A data group's state: `serving` or `retiring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacementView {
    pub slots: u32,
    pub hash: String,
    /// Slots owned by each data group, keyed by group id.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub slots_per_group: Value,
    /// Slot moves in progress.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub moves: Vec<Value>,
    /// Replica moves in progress: `{"group", "from", "to", "step"}` (nodes; step `learner`
    /// while the new replica catches up, `joint` while it is swapped in).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub replica_moves: Vec<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    /// The node that answered.
    pub node_id: u64,
    /// Voters of each data group.
    #[serde(default)]
    pub replication_factor: u64,
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupView>,
    pub placement: PlacementView,
}

/// `POST /v1/tasks/poll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollTasks {
    /// Task types this worker runs (1 to 32 names).
    pub types: Vec<String>,
    /// The worker's name, `[A-Za-z0-9_.:-]{1,128}`; recorded with the lease.
    pub worker: String,
    /// Most tasks to lease at once: 1 (default) to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Long poll: wait up to this long (max 60000) for a task when none is ready. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Lease length for these tasks; the task's own `lease_ms` (default 30000) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// A leased task, as a worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskLease {
    /// `{workflow_id}:{revision that entered the task state}`.
    pub id: String,
    pub workflow_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    /// From 1; grows with every retry after a failure.
    pub attempt: u32,
    /// The fencing token: send it with complete, fail and heartbeat.
    pub lease_token: u64,
    pub lease_expires_at: String,
    /// The workflow's context when the task was leased.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskList {
    pub tasks: Vec<TaskLease>,
}

/// `POST /v1/tasks/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    pub lease_token: u64,
    /// A JSON object merged into the workflow context before `task.completed` fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
}

/// `POST /v1/tasks/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailTask {
    pub lease_token: u64,
    /// What went wrong (kept up to 8 KiB).
    pub error: String,
    /// Default true: retried after backoff while attempts remain. false: `task.failed` now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// `POST /v1/tasks/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatTask {
    pub lease_token: u64,
    /// The new lease length from now; the task's `lease_ms` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// A task as the engine holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub id: String,
    pub workflow_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    /// ready | backoff | leased | completed | failed | withdrawn
    pub status: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The latest token handed out (0 before the first lease).
    pub lease_token: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The answer to complete and fail: the task and its workflow afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskOutcome {
    pub task: TaskView,
    pub workflow: WorkflowView,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseExtended {
    pub id: String,
    pub lease_token: u64,
    pub lease_expires_at: String,
}
