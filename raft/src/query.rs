//! Reads of one group's rows that any node can make: on its own replica when it holds one,
//! else on the group's leader over the peer connection (a node need not hold a replica of a
//! group to serve it).

use serde::{Deserialize, Serialize};

use raftflow_storage::Store;
use raftflow_workflow::HistoryRow;

use crate::signals::Signals;
use crate::tables::{self, TaskRecord, WorkflowRecord};
use crate::Result;

/// A read of one group's rows. Variants are only ever appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Query {
    Workflow {
        id: String,
    },
    /// A workflow's history, oldest first, up to `limit` rows; `None` when there is no such
    /// workflow.
    History {
        id: String,
        limit: u32,
    },
    Task {
        id: String,
    },
    /// Up to `limit` workflows with ids after `after`, in id order.
    Workflows {
        after: Option<String>,
        limit: u32,
    },
    /// Whether a task of any of `types` is ready to be leased.
    HasReady {
        types: Vec<String>,
    },
}

/// What a [`Query`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Workflow(Option<WorkflowRecord>),
    History(Option<Vec<HistoryRow>>),
    Task(Option<TaskRecord>),
    Workflows(Vec<WorkflowRecord>),
    HasReady(bool),
}

impl Query {
    /// Runs the query on this node's replica of `group`.
    pub(crate) fn run(&self, store: &Store, signals: &Signals, group: u64) -> Result<Answer> {
        Ok(match self {
            Query::Workflow { id } => Answer::Workflow(tables::read_workflow(store, group, id)?),
            Query::History { id, limit } => {
                if tables::read_workflow(store, group, id)?.is_none() {
                    Answer::History(None)
                } else {
                    Answer::History(Some(tables::read_history(
                        store,
                        group,
                        id,
                        *limit as usize,
                    )?))
                }
            }
            Query::Task { id } => Answer::Task(tables::read_task(store, group, id)?),
            Query::Workflows { after, limit } => Answer::Workflows(tables::scan_workflows(
                store,
                group,
                after.as_deref(),
                *limit as usize,
            )?),
            Query::HasReady { types } => {
                Answer::HasReady(tables::has_ready(store, signals, group, types)?)
            }
        })
    }
}
