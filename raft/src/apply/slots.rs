//! Apply's side of a slot move: the fences that stop a group serving slots it gives away or
//! is still receiving, and the steps that freeze, receive, activate and drop slots.
//!
//! A fence is checked here, where commands apply, not where requests arrive: a command for a
//! fenced slot's workflow that reaches this group after the freeze is answered "moved" however
//! it was routed, and a tick or a lease leaves the slot's deadlines and ready tasks alone.
//! Every step names its move; a group remembers the last move it took part in (`v`), so a step
//! of an older move that arrives late changes nothing.

use std::collections::BTreeMap;

use raftflow_storage::codec;
use raftflow_workflow::task::workflow_of_task;

use super::tx::Tx;
use super::Applier;
use crate::command::{Outcome, Refusal};
use crate::ring::slot_of;
use crate::tables::{self, OpenStep, SlotFence, TaskRecord, WorkflowRecord};

/// Most history, dedup or task rows of one workflow a drop deletes (far above what a
/// workflow holds: its history is bounded by the API's read limit long before).
const ROWS_PER_WORKFLOW: usize = 1 << 20;

impl Applier {
    /// This group's fences, by slot, read from the rows at first use.
    pub(crate) fn fences(&mut self, tx: &Tx) -> &BTreeMap<u32, SlotFence> {
        self.fences.get_or_insert_with(|| {
            tx.scan_keys(tables::FENCES, None, usize::MAX >> 1)
                .into_iter()
                .map(|k| {
                    let fence = tx.get_decoded(&k).expect("a scanned fence exists");
                    (tables::slot_of_fence_key(&k), fence)
                })
                .collect()
        })
    }

    fn set_fence(&mut self, tx: &mut Tx, slot: u32, fence: Option<SlotFence>) {
        let key = tables::fence_key(slot);
        self.fences(tx);
        let fences = self.fences.as_mut().expect("loaded");
        match fence {
            Some(f) => {
                tx.put_encoded(key, &f);
                fences.insert(slot, f);
            }
            None => {
                tx.delete(key);
                fences.remove(&slot);
            }
        }
    }

    /// The fence of workflow `id`'s slot, if it has one.
    pub(crate) fn fence_of(&mut self, tx: &Tx, id: &str) -> Option<SlotFence> {
        let fences = self.fences(tx);
        if fences.is_empty() {
            return None;
        }
        fences.get(&slot_of(id)).cloned()
    }

    /// The "moved" answer for workflow `id` if its slot is fenced here.
    pub(crate) fn moved(&mut self, tx: &Tx, id: &str) -> Option<Outcome> {
        let fence = self.fence_of(tx, id)?;
        Some(Outcome::Refused(Refusal::Moved {
            id: id.to_string(),
            slot: slot_of(id),
            move_id: fence.move_id(),
        }))
    }

    /// Whether the workflow of task `task_id` is fenced here.
    pub(crate) fn task_fenced(&mut self, tx: &Tx, task_id: &str) -> bool {
        workflow_of_task(task_id).is_some_and(|wf| self.fence_of(tx, wf).is_some())
    }

    /// What lease tokens issued here are offset by: 0 until this group received a task from
    /// another group, then above every token that group issued.
    pub(crate) fn token_base(&mut self, tx: &Tx) -> u64 {
        *self
            .token_base
            .get_or_insert_with(|| tx.get_decoded(tables::TOKEN_BASE).unwrap_or(0))
    }

    /// The refusal of a step of move `move_id` older than the last move this group took part
    /// in; otherwise records `move_id` as that move.
    fn enter_move(&mut self, tx: &mut Tx, move_id: u64) -> Option<Outcome> {
        let mark: u64 = tx.get_decoded(tables::MOVE_MARK).unwrap_or(0);
        if move_id < mark {
            return Some(stale(
                move_id,
                format!("this group has gone on to move {mark}"),
            ));
        }
        if move_id > mark {
            tx.put_encoded(tables::MOVE_MARK.to_vec(), &move_id);
        }
        None
    }

    pub(crate) fn freeze_slots(
        &mut self,
        tx: &mut Tx,
        move_id: u64,
        to: u64,
        slots: &[u32],
    ) -> Outcome {
        let want = SlotFence::Leaving { move_id, to };
        if let Some(clash) = self.clash(tx, slots, &want) {
            return clash;
        }
        if let Some(refused) = self.enter_move(tx, move_id) {
            return refused;
        }
        for slot in slots {
            self.set_fence(tx, *slot, Some(want.clone()));
        }
        Outcome::Nothing
    }

    pub(crate) fn receive_slots(
        &mut self,
        tx: &mut Tx,
        move_id: u64,
        from: u64,
        slots: &[u32],
    ) -> Outcome {
        let want = SlotFence::Arriving { move_id, from };
        // A slot this group gave away in an earlier move keeps that fence (its tombstone)
        // until it arrives here again.
        let clash = slots.iter().find(|s| match self.fences(tx).get(s) {
            None => false,
            Some(SlotFence::Leaving { move_id: m, .. }) => *m >= move_id,
            Some(f) => *f != want,
        });
        if let Some(slot) = clash {
            return stale(move_id, format!("slot {slot} is fenced for another move"));
        }
        if let Some(refused) = self.enter_move(tx, move_id) {
            return refused;
        }
        // No row of these slots is left here from before: a move starts only once the one
        // before it has dropped its rows.
        for slot in slots {
            self.set_fence(tx, *slot, Some(want.clone()));
        }
        Outcome::Nothing
    }

    /// Refuses a freeze when one of `slots` is fenced otherwise than `want` already.
    fn clash(&mut self, tx: &Tx, slots: &[u32], want: &SlotFence) -> Option<Outcome> {
        let fences = self.fences(tx);
        let slot = slots
            .iter()
            .find(|s| fences.get(s).is_some_and(|f| f != want))?;
        Some(stale(
            want.move_id(),
            format!("slot {slot} is fenced for another move"),
        ))
    }

    pub(crate) fn import_rows(
        &mut self,
        tx: &mut Tx,
        at: super::At,
        move_id: u64,
        rows: &[(Vec<u8>, Vec<u8>)],
        token_floor: u64,
    ) -> Outcome {
        for (key, _) in rows {
            if key.starts_with(b"p/") {
                continue;
            }
            let Some(id) = tables::workflow_of_key(key) else {
                return stale(
                    move_id,
                    format!("row {:?} is not a workflow's", String::from_utf8_lossy(key)),
                );
            };
            match self.fence_of(tx, &id) {
                Some(SlotFence::Arriving { move_id: m, .. }) if m == move_id => {}
                _ => {
                    return stale(
                        move_id,
                        format!("workflow {id:?} is not in a slot this group is receiving"),
                    )
                }
            }
        }
        for (key, value) in rows {
            if key.starts_with(b"p/") && tx.get(key).is_some() {
                continue;
            }
            // The ready queue and deadline keys a record names come with it. A ready task
            // joins this group's queue at this entry's index, like any task made ready here:
            // the queue's order is this group's log order, which its scans rely on (see
            // `Signals::ready_floor`); the old group's index would sort anywhere in it.
            if key.starts_with(tables::TASKS) {
                let mut trec: TaskRecord = codec::decode(value).expect("a moved task decodes");
                if let Some(old) = trec.queued {
                    let seq = if crate::mutant::active() == crate::mutant::Mutant::KeepQueueOrder {
                        old
                    } else {
                        at.index
                    };
                    trec.queued = Some(seq);
                    tx.put_encoded(
                        tables::ready_key(&trec.task.task_type, seq, &trec.task.id),
                        &(),
                    );
                    tx.made_ready = true;
                }
                if let Some(due) = trec.task.deadline_ms() {
                    tx.put_encoded(
                        tables::deadline_key(due, tables::DEADLINE_TASK, &trec.task.id),
                        &(),
                    );
                }
                tx.put_encoded(key.clone(), &trec);
                continue;
            }
            if key.starts_with(tables::WORKFLOWS) {
                let rec: WorkflowRecord = codec::decode(value).expect("a moved workflow decodes");
                if let Some(OpenStep::Timer { due_ms }) = rec.step {
                    tx.put_encoded(
                        tables::deadline_key(due_ms, tables::DEADLINE_TIMER, &rec.workflow.id),
                        &(),
                    );
                }
            }
            tx.put_bytes(key.clone(), value.clone());
        }
        if token_floor > self.token_base(tx) {
            self.token_base = Some(token_floor);
            tx.put_encoded(tables::TOKEN_BASE.to_vec(), &token_floor);
        }
        Outcome::Nothing
    }

    pub(crate) fn activate_slots(&mut self, tx: &mut Tx, move_id: u64) -> Outcome {
        let arriving: Vec<u32> = self
            .fences(tx)
            .iter()
            .filter(|(_, f)| matches!(f, SlotFence::Arriving { move_id: m, .. } if *m == move_id))
            .map(|(s, _)| *s)
            .collect();
        for slot in &arriving {
            self.set_fence(tx, *slot, None);
        }
        if !arriving.is_empty() {
            // Their ready tasks and deadlines were stepped over while fenced, and the scan
            // hints went past them: scans start over, from the next command on (the rest of
            // this batch included, or replicas that apply it in other batches would differ).
            self.signals.forget_ready_floors(self.group);
            self.deadline_from = None;
            tx.made_ready = true;
            tx.deadlines_touched = true;
        }
        Outcome::Nothing
    }

    pub(crate) fn drop_slot_rows(
        &mut self,
        tx: &mut Tx,
        move_id: u64,
        after: Option<&str>,
        limit: u32,
    ) -> Outcome {
        let from = after.map(|a| raftflow_storage::key_after(&tables::workflow_key(a)));
        let keys = tx.scan_keys(tables::WORKFLOWS, from.as_deref(), limit as usize);
        let next = if keys.len() < limit as usize {
            None
        } else {
            keys.last().and_then(|k| tables::workflow_of_key(k))
        };
        for key in keys {
            let Some(id) = tables::workflow_of_key(&key) else {
                continue;
            };
            match self.fence_of(tx, &id) {
                Some(SlotFence::Leaving { move_id: m, .. }) if m == move_id => {}
                _ => continue,
            }
            self.drop_workflow(tx, &id);
        }
        Outcome::Cursor { next }
    }

    /// Deletes every row of workflow `id`: record, history, dedup records, tasks and the
    /// queue and deadline keys they name.
    fn drop_workflow(&mut self, tx: &mut Tx, id: &str) {
        if let Some(rec) = tx.get_decoded::<WorkflowRecord>(&tables::workflow_key(id)) {
            if let Some(OpenStep::Timer { due_ms }) = rec.step {
                tx.delete(tables::deadline_key(due_ms, tables::DEADLINE_TIMER, id));
                tx.deadlines_touched = true;
            }
        }
        tx.delete(tables::workflow_key(id));
        for prefix in [tables::history_prefix(id), tables::dedup_prefix(id)] {
            for key in tx.scan_keys(&prefix, None, ROWS_PER_WORKFLOW) {
                tx.delete(key);
            }
        }
        for key in tx.scan_keys(&tables::tasks_prefix(id), None, ROWS_PER_WORKFLOW) {
            if tables::workflow_of_key(&key).as_deref() != Some(id) {
                continue;
            }
            if let Some(trec) = tx.get_decoded::<TaskRecord>(&key) {
                if let Some(seq) = trec.queued {
                    tx.delete(tables::ready_key(&trec.task.task_type, seq, &trec.task.id));
                }
                if let Some(due) = trec.task.deadline_ms() {
                    tx.delete(tables::deadline_key(
                        due,
                        tables::DEADLINE_TASK,
                        &trec.task.id,
                    ));
                    tx.deadlines_touched = true;
                }
            }
            tx.delete(key);
        }
    }
}

fn stale(move_id: u64, reason: String) -> Outcome {
    Outcome::Refused(Refusal::SlotMoveStale { move_id, reason })
}
