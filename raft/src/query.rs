//! Reads of one group's rows that any node can make: on its own replica when it holds one,
//! else on the group's leader over the peer connection (a node need not hold a replica of a
//! group to serve it).

use serde::{Deserialize, Serialize};

use raftflow_storage::Store;
use raftflow_workflow::HistoryRow;

use std::collections::BTreeSet;

use raftflow_workflow::task::workflow_of_task;

use crate::ring::slot_of;
use crate::signals::Signals;
use crate::tables::{self, SlotFence, TaskRecord, WorkflowRecord};
use crate::{Error, Result};

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
    /// The rows of the slots this group froze for slot move `move_id`, workflow by workflow
    /// in id order after `after`, about `max_bytes` of them (at least one workflow's).
    SlotRows {
        move_id: u64,
        after: Option<String>,
        max_bytes: u32,
    },
    /// Up to `limit` workflows with ids after `after`, in id order, with the slots this group
    /// holds fenced (whose rows a listing takes from the slot table's owner instead).
    WorkflowPage {
        after: Option<String>,
        limit: u32,
    },
    /// [`Query::History`], with who caused each row: [`Answer::HistoryBy`].
    HistoryBy {
        id: String,
        limit: u32,
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
    /// The workflow's slot is fenced in this group (see [`crate::Refusal::Moved`]).
    Moved {
        slot: u32,
        move_id: u64,
    },
    SlotRows {
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        /// Where the next part starts; `None` when every row has been sent.
        next: Option<String>,
        /// Above every lease token this group has issued.
        token_floor: u64,
    },
    WorkflowPage {
        workflows: Vec<WorkflowRecord>,
        fenced: Vec<(u32, SlotFence)>,
    },
    HistoryBy(Option<Vec<HistoryEntry>>),
}

/// A history row and the API caller whose command wrote it (`None`: the engine wrote it on
/// its own, or the API was open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub row: HistoryRow,
    pub by: Option<String>,
}

/// Most workflow keys one [`Query::SlotRows`] looks at.
const SLOT_ROWS_SCAN: usize = 65_536;

impl Query {
    /// Runs the query on this node's replica of `group`.
    pub(crate) fn run(&self, store: &Store, signals: &Signals, group: u64) -> Result<Answer> {
        // A read of one workflow on a group that fenced its slot: the sender asks the owner.
        let workflow = match self {
            Query::Workflow { id } | Query::History { id, .. } | Query::HistoryBy { id, .. } => {
                Some(id.as_str())
            }
            Query::Task { id } => workflow_of_task(id),
            _ => None,
        };
        if let Some(wf) = workflow {
            let slot = slot_of(wf);
            if let Some(fence) = tables::read_fence(store, group, slot)? {
                return Ok(Answer::Moved {
                    slot,
                    move_id: fence.move_id(),
                });
            }
        }
        Ok(match self {
            Query::Workflow { id } => Answer::Workflow(tables::read_workflow(store, group, id)?),
            Query::History { id, limit } => Answer::History(
                history(store, group, id, *limit)?
                    .map(|rows| rows.into_iter().map(|(row, _)| row).collect()),
            ),
            Query::HistoryBy { id, limit } => {
                Answer::HistoryBy(history(store, group, id, *limit)?.map(|rows| {
                    rows.into_iter()
                        .map(|(row, by)| HistoryEntry { row, by })
                        .collect()
                }))
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
            Query::SlotRows {
                move_id,
                after,
                max_bytes,
            } => slot_rows(
                store,
                group,
                *move_id,
                after.as_deref(),
                *max_bytes as usize,
            )?,
            Query::WorkflowPage { after, limit } => Answer::WorkflowPage {
                workflows: tables::scan_workflows(store, group, after.as_deref(), *limit as usize)?,
                fenced: tables::read_fences(store, group)?.into_iter().collect(),
            },
        })
    }
}

/// Workflow `id`'s history with its callers; `None` when there is no such workflow.
fn history(store: &Store, group: u64, id: &str, limit: u32) -> Result<Option<tables::CalledRows>> {
    if tables::read_workflow(store, group, id)?.is_none() {
        return Ok(None);
    }
    Ok(Some(tables::read_history(
        store,
        group,
        id,
        limit as usize,
    )?))
}

/// The next part of the rows a slot move copies: every row of each workflow in the slots
/// fenced for move `move_id`, with the pinned definitions they name.
fn slot_rows(
    store: &Store,
    group: u64,
    move_id: u64,
    after: Option<&str>,
    max_bytes: usize,
) -> Result<Answer> {
    let moving: BTreeSet<u32> = tables::read_fences(store, group)?
        .into_iter()
        .filter(|(_, f)| matches!(f, SlotFence::Leaving { move_id: m, .. } if *m == move_id))
        .map(|(s, _)| s)
        .collect();
    if moving.is_empty() {
        return Err(Error::Unavailable(format!(
            "group {group} has not frozen the slots of move {move_id}"
        )));
    }
    let mut rows = Vec::new();
    let mut bytes = 0;
    let mut pinned = BTreeSet::new();
    let mut cursor = after.map(tables::workflow_key);
    let mut looked = 0;
    let next = 'scan: loop {
        let keys = store.scan_state(group, tables::WORKFLOWS, cursor.as_deref(), 1024)?;
        let Some((last, _)) = keys.last() else {
            break None;
        };
        cursor = Some(last.clone());
        let exhausted = keys.len() < 1024;
        for (key, value) in keys {
            looked += 1;
            let Some(id) = tables::workflow_of_key(&key) else {
                continue;
            };
            if moving.contains(&slot_of(&id)) {
                let rec: WorkflowRecord = raftflow_storage::codec::decode(&value)?;
                let def = (rec.workflow.definition.clone(), rec.workflow.version);
                if pinned.insert(def.clone()) {
                    let key = tables::pinned_key(&def.0, def.1);
                    if let Some(v) = store.get_state(group, &key)? {
                        bytes += key.len() + v.len();
                        rows.push((key, v));
                    }
                }
                bytes += key.len() + value.len();
                rows.push((key, value));
                for prefix in [tables::history_prefix(&id), tables::dedup_prefix(&id)] {
                    for (k, v) in store.scan_state(group, &prefix, None, usize::MAX >> 1)? {
                        bytes += k.len() + v.len();
                        rows.push((k, v));
                    }
                }
                let tasks =
                    store.scan_state(group, &tables::tasks_prefix(&id), None, usize::MAX >> 1)?;
                for (k, v) in tasks {
                    if tables::workflow_of_key(&k).as_deref() == Some(id.as_str()) {
                        bytes += k.len() + v.len();
                        rows.push((k, v));
                    }
                }
            }
            if bytes >= max_bytes || looked >= SLOT_ROWS_SCAN {
                break 'scan Some(id);
            }
        }
        if exhausted {
            break None;
        }
    };
    let applied = match store.get_state(group, tables::APPLIED)? {
        Some(row) => crate::consensus::applied_index(&row)?.unwrap_or(0),
        None => 0,
    };
    let base: u64 = match store.get_state(group, tables::TOKEN_BASE)? {
        Some(v) => raftflow_storage::codec::decode(&v)?,
        None => 0,
    };
    Ok(Answer::SlotRows {
        rows,
        next,
        token_floor: applied + base,
    })
}
