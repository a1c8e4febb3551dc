//! The workflow domain: definitions, their validation, and the pure transition function.
//!
//! Nothing here does IO, reads a clock or knows about Raft. Callers hand in the command's
//! timestamp (stamped by the Raft leader) and persist the decision this crate returns, so the
//! same log entry applied on every replica yields the same workflow, byte for byte.

mod context;
mod definition;
pub mod task;
mod transition;

pub use context::Context;
pub use definition::{
    is_valid_id, is_valid_name, Definition, StateDef, TaskSpec, Terminal, MAX_ID_LEN, MAX_NAME_LEN,
};
pub use task::{step_on_entry, FailDecision, LeaseLost, Phase, Step, Task};
pub use transition::{
    cancel, create, fire_event, record, EventOrigin, HistoryRow, Rejection, Status, Workflow,
    CANCEL_EVENT, CREATED_EVENT, TASK_COMPLETED, TASK_FAILED, TASK_RETRYING, TIMER_FIRED,
};

/// A JSON object: a workflow's context, an event payload.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;
