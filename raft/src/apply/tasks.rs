//! Apply's task and timer steps: the ready queue, leases, retries and timers.
//!
//! Every decision uses the time stamped into the entry being applied and the entry's log
//! index (lease tokens, queue order), so every replica reaches the same rows.

use std::ops::ControlFlow;
use std::sync::Arc;

use raftflow_workflow::{
    self as workflow, Context, Definition, EventOrigin, FailDecision, HistoryRow, LeaseLost, Step,
    Task, Workflow, TASK_COMPLETED, TASK_FAILED, TASK_RETRYING, TIMER_FIRED,
};
use serde_json::json;

use super::tx::Tx;
use super::Applier;
use crate::command::{LeasedTask, Outcome, Refusal};
use crate::mutant::{self, Mutant};
use crate::rfc3339;
use crate::tables::{self, OpenStep, TaskRecord, WorkflowRecord};

/// Most deadlines one tick acts on; the leader ticks again while more are due.
const MAX_DEADLINES_PER_TICK: usize = 512;
/// Keys a ready-queue or deadline scan reads at a time.
const SCAN_CHUNK: usize = 128;
/// Most tasks one lease command hands out.
pub(crate) const MAX_TASKS_PER_LEASE: u32 = 100;

/// The time and log index of the entry being applied.
#[derive(Clone, Copy)]
pub(crate) struct At {
    pub now_ms: u64,
    pub index: u64,
}

/// Visits the keys under `prefix` in key order, from `hint` on (a hint of this replica's: no
/// key the visitor wants sorts before it), in chunks of [`SCAN_CHUNK`], until `visit` breaks
/// or the keys run out. Returns the last key visited. The visitor decides what each key is
/// worth (fenced keys are stepped over without counting), so where the scan starts cannot
/// change what it finds.
fn scan_from_hint(
    tx: &Tx,
    prefix: &[u8],
    hint: Option<&[u8]>,
    mut visit: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Option<Vec<u8>> {
    let mut last: Option<Vec<u8>> = None;
    loop {
        let keys = match &last {
            None => tx.scan_keys_hinted(prefix, hint, SCAN_CHUNK),
            Some(k) => tx.scan_keys(prefix, Some(&raftflow_storage::key_after(k)), SCAN_CHUNK),
        };
        let exhausted = keys.len() < SCAN_CHUNK;
        for key in keys {
            let flow = visit(&key);
            last = Some(key);
            if flow.is_break() {
                return last;
            }
        }
        if exhausted {
            return last;
        }
    }
}

impl Applier {
    /// Stores a change of `rec`'s workflow: its history row, the new workflow and, when the
    /// workflow (re-)entered a state, the step it waited on closed and the new state's opened.
    /// A recorded retry changes neither state nor step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn advance_workflow(
        &mut self,
        tx: &mut Tx,
        rec: &mut WorkflowRecord,
        def: &Definition,
        next: Workflow,
        row: HistoryRow,
        reentered: bool,
        at: At,
    ) {
        assert_eq!(
            next.revision,
            rec.workflow.revision + 1,
            "group {}: workflow {} revision must grow by exactly one",
            self.group,
            next.id
        );
        self.put_history(tx, &next.id, &row);
        if reentered {
            close_step(tx, rec);
            rec.workflow = next;
            open_step(tx, rec, def, at);
        } else {
            rec.workflow = next;
        }
        tx.put_workflow(tables::workflow_key(&rec.workflow.id), rec);
    }

    pub(crate) fn lease_tasks(
        &mut self,
        tx: &mut Tx,
        types: &[String],
        worker: &str,
        max: u32,
        lease_ms: Option<u64>,
        at: At,
    ) -> Outcome {
        let mut left = max.min(MAX_TASKS_PER_LEASE) as usize;
        let mut tasks = Vec::new();
        let mut seen_types = std::collections::BTreeSet::new();
        for task_type in types {
            if left == 0 {
                break;
            }
            if !seen_types.insert(task_type) {
                continue;
            }
            let ids = self.first_ready(tx, task_type, left);
            for task_id in ids {
                let token = at.index + self.token_base(tx);
                let mut trec = self.task_record(tx, &task_id);
                unqueue(tx, &mut trec);
                let expires_at_ms = trec.task.lease(
                    token,
                    worker,
                    lease_ms.unwrap_or(trec.task.lease_ms),
                    at.now_ms,
                );
                move_deadline(tx, &trec.task.id, None, Some(expires_at_ms));
                tx.put_encoded(tables::task_key(&task_id), &trec);
                let wf = self.workflow_record(tx, &trec.task.workflow_id).workflow;
                tasks.push(LeasedTask {
                    id: task_id,
                    workflow_id: wf.id,
                    task_type: trec.task.task_type.clone(),
                    attempt: trec.task.attempt,
                    token: trec.task.token,
                    expires_at_ms,
                    context_json: wf.context.into_string(),
                });
                left -= 1;
            }
        }
        Outcome::Leased { tasks }
    }

    /// The first `n` ready tasks of `task_type` whose slots this group serves, in queue order.
    ///
    /// Tasks of fenced slots (moving away, or not yet served here) stay queued and are stepped
    /// over, however many there are: the scan starts at this replica's floor, a hint kept in
    /// memory that another replica may not have (it restarted, or applied an entry that lifted
    /// fences in another batch), and where a scan starts must never change what it finds.
    /// Every key before the floor is a leased task's deletion or a fenced task.
    fn first_ready(&mut self, tx: &Tx, task_type: &str, n: usize) -> Vec<String> {
        let prefix = tables::ready_prefix(task_type);
        let floor = self.signals.ready_floor(self.group, task_type);
        let mut found = Vec::new();
        let last = scan_from_hint(tx, &prefix, floor.as_deref(), |key| {
            let task_id = tables::task_of_ready_key(key, task_type);
            if !self.task_fenced(tx, &task_id) {
                found.push(task_id);
            }
            if found.len() == n {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        // Every key looked at is taken by this lease or fenced: later scans start after it.
        if let Some(last) = last {
            self.signals.raise_ready_floor(self.group, task_type, &last);
        }
        found
    }

    /// The deadlines due at `now_ms`, oldest first, of slots this group serves: at most
    /// [`MAX_DEADLINES_PER_TICK`] of them. Like [`Applier::first_ready`], fenced ones are
    /// stepped over however many there are, since the scan starts at a hint of this replica's
    /// (`deadline_from`: no live deadline of a served slot sorts before it).
    fn due_deadlines(&mut self, tx: &Tx, now_ms: u64) -> Vec<(Vec<u8>, u64, u8, String)> {
        let hint = self.deadline_from.clone();
        let mut due = Vec::new();
        scan_from_hint(tx, tables::DEADLINES, hint.as_deref(), |key| {
            let (due_ms, kind, id) = tables::parse_deadline_key(key);
            if due_ms > now_ms {
                return ControlFlow::Break(());
            }
            let fenced = match kind {
                tables::DEADLINE_TIMER => self.fence_of(tx, &id).is_some(),
                _ => self.task_fenced(tx, &id),
            };
            if !fenced {
                due.push((key.to_vec(), due_ms, kind, id));
            }
            if due.len() == MAX_DEADLINES_PER_TICK {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        due
    }

    pub(crate) fn complete_task(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        token: u64,
        output_json: Option<&str>,
        at: At,
    ) -> Outcome {
        if let Some(moved) =
            raftflow_workflow::task::workflow_of_task(task_id).and_then(|wf| self.moved(tx, wf))
        {
            return moved;
        }
        let Some(mut trec) = tx.get_decoded::<TaskRecord>(&tables::task_key(task_id)) else {
            return task_not_found(task_id);
        };
        let old_deadline = trec.task.deadline_ms();
        let fresh = if mutant::active() == Mutant::LeaseCheck && trec.task.phase.is_open() {
            // The mutant takes any token while the task is open: a stale holder wins.
            trec.task.phase = workflow::Phase::Completed { token };
            true
        } else {
            match trec.task.complete(token, at.now_ms) {
                Ok(fresh) => fresh,
                Err(lost) => return lease_lost(&trec.task, lost),
            }
        };
        let mut rec = self.workflow_record(tx, &trec.task.workflow_id);
        if !fresh {
            return Outcome::Task {
                task: trec.task,
                workflow: rec.workflow,
            };
        }
        move_deadline(tx, task_id, old_deadline, None);
        unqueue(tx, &mut trec);
        tx.put_encoded(tables::task_key(task_id), &trec);
        let output = output_json.map(|o| super::logged_object("output", o));
        let def = self.definition(tx, &rec.workflow.definition, rec.workflow.version);
        self.fire_engine_event(tx, &mut rec, &def, TASK_COMPLETED, output, at);
        Outcome::Task {
            task: trec.task,
            workflow: rec.workflow,
        }
    }

    pub(crate) fn fail_task(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        token: u64,
        error: &str,
        retryable: bool,
        at: At,
    ) -> Outcome {
        if let Some(moved) =
            raftflow_workflow::task::workflow_of_task(task_id).and_then(|wf| self.moved(tx, wf))
        {
            return moved;
        }
        let Some(mut trec) = tx.get_decoded::<TaskRecord>(&tables::task_key(task_id)) else {
            return task_not_found(task_id);
        };
        let old_deadline = trec.task.deadline_ms();
        let failed_attempt = trec.task.attempt;
        let decision = match trec.task.fail(token, error, retryable, at.now_ms) {
            Ok(d) => d,
            Err(lost) => return lease_lost(&trec.task, lost),
        };
        let mut rec = self.workflow_record(tx, &trec.task.workflow_id);
        let def = self.definition(tx, &rec.workflow.definition, rec.workflow.version);
        match decision {
            FailDecision::Retry { until_ms, .. } => {
                move_deadline(tx, task_id, old_deadline, Some(until_ms));
                tx.put_encoded(tables::task_key(task_id), &trec);
                let payload = json!({
                    "task_id": task_id, "attempt": failed_attempt, "error": error,
                    "retry_at": rfc3339(until_ms),
                });
                let (next, row) =
                    workflow::record(&rec.workflow, TASK_RETRYING, object(payload), at.now_ms);
                self.advance_workflow(tx, &mut rec, &def, next, row, false, at);
            }
            FailDecision::Exhausted => {
                move_deadline(tx, task_id, old_deadline, None);
                tx.put_encoded(tables::task_key(task_id), &trec);
                let payload = object(json!({ "error": error }));
                self.fire_engine_event(tx, &mut rec, &def, TASK_FAILED, payload, at);
            }
        }
        Outcome::Task {
            task: trec.task,
            workflow: rec.workflow,
        }
    }

    pub(crate) fn heartbeat_task(
        &mut self,
        tx: &mut Tx,
        task_id: &str,
        token: u64,
        lease_ms: Option<u64>,
        at: At,
    ) -> Outcome {
        if let Some(moved) =
            raftflow_workflow::task::workflow_of_task(task_id).and_then(|wf| self.moved(tx, wf))
        {
            return moved;
        }
        let Some(mut trec) = tx.get_decoded::<TaskRecord>(&tables::task_key(task_id)) else {
            return task_not_found(task_id);
        };
        let old_deadline = trec.task.deadline_ms();
        let lease_ms = lease_ms.unwrap_or(trec.task.lease_ms);
        if let Err(lost) = trec.task.heartbeat(token, lease_ms, at.now_ms) {
            return lease_lost(&trec.task, lost);
        }
        move_deadline(tx, task_id, old_deadline, trec.task.deadline_ms());
        tx.put_encoded(tables::task_key(task_id), &trec);
        let rec = self.workflow_record(tx, &trec.task.workflow_id);
        Outcome::Task {
            task: trec.task,
            workflow: rec.workflow,
        }
    }

    /// Acts on every deadline at or before the entry's time, oldest first, up to a bound.
    pub(crate) fn tick(&mut self, tx: &mut Tx, at: At) -> Outcome {
        for (key, due_ms, kind, id) in self.due_deadlines(tx, at.now_ms) {
            tx.delete(key);
            tx.deadlines_touched = true;
            match kind {
                tables::DEADLINE_TIMER => {
                    let mut rec = self.workflow_record(tx, &id);
                    if rec.step == (Some(OpenStep::Timer { due_ms })) {
                        let def =
                            self.definition(tx, &rec.workflow.definition, rec.workflow.version);
                        self.fire_engine_event(tx, &mut rec, &def, TIMER_FIRED, None, at);
                    }
                }
                tables::DEADLINE_TASK => {
                    let mut trec = self.task_record(tx, &id);
                    if trec.task.deadline_ms() == Some(due_ms) && trec.task.advance_to(at.now_ms) {
                        enqueue(tx, &mut trec, at.index);
                        tx.put_encoded(tables::task_key(&id), &trec);
                    }
                }
                other => panic!(
                    "group {}: deadline of unknown kind {other} for {id:?}",
                    self.group
                ),
            }
        }
        Outcome::Nothing
    }

    fn fire_engine_event(
        &mut self,
        tx: &mut Tx,
        rec: &mut WorkflowRecord,
        def: &Arc<Definition>,
        event: &str,
        payload: Option<Context>,
        at: At,
    ) {
        let (next, row) = workflow::fire_event(
            def,
            &rec.workflow,
            event,
            payload,
            None,
            EventOrigin::Engine,
            at.now_ms,
        )
        .unwrap_or_else(|r| {
            // An open step means a running workflow in the state that handles its event.
            panic!(
                "group {}: workflow {}: engine event {event} refused: {r}",
                self.group, rec.workflow.id
            )
        });
        self.advance_workflow(tx, rec, def, next, row, true, at);
    }

    fn task_record(&self, tx: &Tx, task_id: &str) -> TaskRecord {
        tx.get_decoded(&tables::task_key(task_id))
            .unwrap_or_else(|| panic!("group {}: indexed task {task_id} is missing", self.group))
    }

    fn workflow_record(&self, tx: &Tx, id: &str) -> WorkflowRecord {
        tx.get_decoded(&tables::workflow_key(id))
            .unwrap_or_else(|| {
                panic!(
                    "group {}: workflow {id} of a task or timer is missing",
                    self.group
                )
            })
    }
}

/// Withdraws the task or drops the timer `rec` waits on.
fn close_step(tx: &mut Tx, rec: &mut WorkflowRecord) {
    match rec.step.take() {
        None => {}
        Some(OpenStep::Timer { due_ms }) => {
            tx.delete(tables::deadline_key(
                due_ms,
                tables::DEADLINE_TIMER,
                &rec.workflow.id,
            ));
            tx.deadlines_touched = true;
        }
        Some(OpenStep::Task { task_id }) => {
            let key = tables::task_key(&task_id);
            let Some(mut trec) = tx.get_decoded::<TaskRecord>(&key) else {
                return;
            };
            if trec.task.phase.is_open() {
                move_deadline(tx, &task_id, trec.task.deadline_ms(), None);
                unqueue(tx, &mut trec);
                trec.task.phase = workflow::Phase::Withdrawn;
                tx.put_encoded(key, &trec);
            }
        }
    }
}

/// Opens the step of the state `rec.workflow` is in now.
pub(crate) fn open_step(tx: &mut Tx, rec: &mut WorkflowRecord, def: &Definition, at: At) {
    match workflow::step_on_entry(def, &rec.workflow) {
        None => {}
        Some(Step::Timer { due_ms }) => {
            tx.put_encoded(
                tables::deadline_key(due_ms, tables::DEADLINE_TIMER, &rec.workflow.id),
                &(),
            );
            tx.deadlines_touched = true;
            rec.step = Some(OpenStep::Timer { due_ms });
        }
        Some(Step::Task(task)) => {
            let task_id = task.id.clone();
            let mut trec = TaskRecord { task, queued: None };
            enqueue(tx, &mut trec, at.index);
            tx.put_encoded(tables::task_key(&task_id), &trec);
            rec.step = Some(OpenStep::Task { task_id });
        }
    }
}

fn enqueue(tx: &mut Tx, trec: &mut TaskRecord, seq: u64) {
    debug_assert!(trec.queued.is_none());
    tx.put_encoded(
        tables::ready_key(&trec.task.task_type, seq, &trec.task.id),
        &(),
    );
    trec.queued = Some(seq);
    tx.made_ready = true;
}

fn unqueue(tx: &mut Tx, trec: &mut TaskRecord) {
    if let Some(seq) = trec.queued.take() {
        tx.delete(tables::ready_key(&trec.task.task_type, seq, &trec.task.id));
    }
}

fn move_deadline(tx: &mut Tx, task_id: &str, from: Option<u64>, to: Option<u64>) {
    if from == to {
        return;
    }
    if let Some(due) = from {
        tx.delete(tables::deadline_key(due, tables::DEADLINE_TASK, task_id));
    }
    if let Some(due) = to {
        tx.put_encoded(
            tables::deadline_key(due, tables::DEADLINE_TASK, task_id),
            &(),
        );
    }
    tx.deadlines_touched = true;
}

fn object(v: serde_json::Value) -> Option<Context> {
    match v {
        serde_json::Value::Object(m) => Some(Context::from_object(&m)),
        _ => None,
    }
}

fn task_not_found(task_id: &str) -> Outcome {
    Outcome::Refused(Refusal::TaskNotFound {
        id: task_id.to_string(),
    })
}

fn lease_lost(task: &Task, lost: LeaseLost) -> Outcome {
    Outcome::Refused(Refusal::LeaseLost {
        task_id: task.id.clone(),
        reason: lost.to_string(),
    })
}
