//! Apply's meta-group records of data groups and slot moves: each a compare-and-set on what
//! is recorded, so a driver that decided on an old record changes nothing.

use super::tx::Tx;
use crate::command::{Outcome, Refusal};
use crate::ring::SlotTable;
use crate::tables::{self, GroupRecord, GroupState, Placement, SlotMove, SlotMoveStep};

fn refused(group: u64, reason: impl Into<String>) -> Outcome {
    Outcome::Refused(Refusal::GroupRefused {
        group,
        reason: reason.into(),
    })
}

fn stale(move_id: u64, reason: impl Into<String>) -> Outcome {
    Outcome::Refused(Refusal::SlotMoveStale {
        move_id,
        reason: reason.into(),
    })
}

/// The state of data group `group` as recorded: a group with a placement and no record is one
/// the cluster was created with, serving.
pub(crate) fn group_state(tx: &Tx, group: u64) -> Option<GroupState> {
    match tx.get_decoded::<GroupRecord>(&tables::group_key(group)) {
        Some(r) => Some(r.state),
        None => tx
            .get(&tables::placement_key(group))
            .map(|_| GroupState::Serving),
    }
}

pub(crate) fn add_group(tx: &mut Tx, placement: &Placement, now: u64) -> Outcome {
    let group = placement.group;
    if group == crate::META_GROUP
        || tx.get(&tables::group_key(group)).is_some()
        || tx.get(&tables::placement_key(group)).is_some()
    {
        return refused(group, "the id is taken");
    }
    tx.put_encoded(tables::placement_key(group), placement);
    let record = GroupRecord {
        id: group,
        state: GroupState::Serving,
        since_ms: now,
    };
    tx.put_encoded(tables::group_key(group), &record);
    Outcome::Nothing
}

pub(crate) fn set_group_state(tx: &mut Tx, group: u64, state: GroupState, now: u64) -> Outcome {
    let Some(current) = group_state(tx, group) else {
        return refused(group, "no such group");
    };
    if current == state {
        return Outcome::Nothing;
    }
    if current == GroupState::Retired {
        return refused(group, "is retired");
    }
    if state == GroupState::Retired {
        let Some(table) = tx.get_decoded::<SlotTable>(tables::SLOT_TABLE) else {
            return refused(group, "still owns slots");
        };
        if table.slots_per_group().contains_key(&group) {
            return refused(group, "still owns slots");
        }
        let moving = tx.get_decoded::<SlotMove>(tables::SLOT_MOVE);
        if moving.is_some_and(|m| m.from == group || m.to == group) {
            return refused(group, "takes part in a slot move");
        }
        tx.delete(tables::placement_key(group));
    }
    let record = GroupRecord {
        id: group,
        state,
        since_ms: now,
    };
    tx.put_encoded(tables::group_key(group), &record);
    Outcome::Nothing
}

pub(crate) fn start_slot_move(tx: &mut Tx, slot_move: &SlotMove, now: u64) -> Outcome {
    let id = slot_move.id;
    if let Some(m) = tx.get_decoded::<SlotMove>(tables::SLOT_MOVE) {
        return stale(id, format!("move {} is under way", m.id));
    }
    let Some(mut table) = tx.get_decoded::<SlotTable>(tables::SLOT_TABLE) else {
        return stale(id, "no slot table is recorded");
    };
    if id != table.moves + 1 {
        return stale(id, format!("the next move is {}", table.moves + 1));
    }
    if group_state(tx, slot_move.to) != Some(GroupState::Serving) {
        return refused(slot_move.to, "does not serve");
    }
    if let Some(s) = slot_move
        .slots
        .iter()
        .find(|s| table.group_of_slot(**s) != slot_move.from)
    {
        return stale(id, format!("slot {s} is not group {}'s", slot_move.from));
    }
    table.moves = id;
    tx.put_encoded(tables::SLOT_TABLE.to_vec(), &table);
    let recorded = SlotMove {
        step: SlotMoveStep::Copying,
        since_ms: now,
        ..slot_move.clone()
    };
    tx.put_encoded(tables::SLOT_MOVE.to_vec(), &recorded);
    Outcome::Nothing
}

pub(crate) fn commit_slot_move(tx: &mut Tx, move_id: u64) -> Outcome {
    let Some(mut m) = tx.get_decoded::<SlotMove>(tables::SLOT_MOVE) else {
        return stale(move_id, "no move is under way");
    };
    if m.id != move_id {
        return stale(move_id, format!("move {} is under way", m.id));
    }
    if m.step == SlotMoveStep::Committed {
        return Outcome::Nothing;
    }
    let mut table: SlotTable = tx
        .get_decoded(tables::SLOT_TABLE)
        .expect("a move under way has a slot table");
    table.assign(&m.slots, m.to, m.id);
    tx.put_encoded(tables::SLOT_TABLE.to_vec(), &table);
    m.step = SlotMoveStep::Committed;
    tx.put_encoded(tables::SLOT_MOVE.to_vec(), &m);
    Outcome::Nothing
}

pub(crate) fn end_slot_move(tx: &mut Tx, move_id: u64) -> Outcome {
    match tx.get_decoded::<SlotMove>(tables::SLOT_MOVE) {
        None => Outcome::Nothing,
        Some(m) if m.id == move_id && m.step == SlotMoveStep::Committed => {
            tx.delete(tables::SLOT_MOVE.to_vec());
            Outcome::Nothing
        }
        Some(m) => stale(move_id, format!("move {} is {}", m.id, m.step.as_str())),
    }
}
