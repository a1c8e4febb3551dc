//! The apply logic on its own: rows in a `BTreeMap`, commands handed straight to the
//! [`Applier`]; no RocksDB, no openraft, no log.

use std::collections::BTreeMap;
use std::sync::Arc;

use raftflow_workflow::Status;

use super::{Applier, At, RowCache, Tx};
use crate::command::{Command, Outcome, Refusal};
use crate::signals::Signals;
use crate::tables::{self, WorkflowRecord};

const GROUP: u64 = 1;
const PING_PONG: &str = r#"{"name": "pp", "initial": "ping", "states": {"ping": {"on": {"flip": "pong"}}, "pong": {"on": {"flop": "ping"}}}}"#;
const JOB: &str = r#"{"name": "job", "initial": "work", "states": {"work": {"task": {"type": "t"}, "on": {"task.completed": "done"}}, "done": {"terminal": "succeeded"}}}"#;

/// A group's rows and its applier, applying one command per "entry".
struct Group {
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    applier: Applier,
    cache: RowCache,
    index: u64,
}

impl Group {
    fn new() -> Self {
        Group {
            rows: BTreeMap::new(),
            applier: Applier::new(GROUP, Arc::new(Signals::default())),
            cache: RowCache::default(),
            index: 0,
        }
    }

    /// Applies `command` as the next entry, stamped `at_ms`, and stores what it wrote.
    fn apply(&mut self, at_ms: u64, command: Command) -> Outcome {
        self.index += 1;
        let cache = std::mem::take(&mut self.cache);
        let mut tx = Tx::new(GROUP, &self.rows, cache);
        let at = At {
            now_ms: at_ms,
            index: self.index,
        };
        let outcome = self.applier.run(&mut tx, at, &command);
        let (writes, mut cache) = tx.finish();
        for (k, v) in &writes {
            match v {
                Some(v) => self.rows.insert(k.clone(), v.clone()),
                None => self.rows.remove(k),
            };
        }
        cache.absorb(writes);
        self.cache = cache;
        outcome
    }

    fn workflow(&self, id: &str) -> WorkflowRecord {
        let row = self.rows.get(&tables::workflow_key(id)).expect("stored");
        raftflow_storage::codec::decode(row).expect("decodes")
    }

    fn history_len(&self, id: &str) -> usize {
        let prefix = tables::history_key(id, 0);
        let prefix = &prefix[..prefix.len() - 8];
        self.rows.keys().filter(|k| k.starts_with(prefix)).count()
    }
}

fn create(id: &str, name: &str, json: &str, fingerprint: &str) -> Command {
    Command::CreateWorkflow {
        id: id.into(),
        definition: name.into(),
        version: 1,
        definition_json: json.into(),
        context_json: r#"{"order": 7}"#.into(),
        fingerprint: fingerprint.into(),
    }
}

fn event(id: &str, event: &str, expected: Option<u64>, request_id: Option<&str>) -> Command {
    Command::Event {
        id: id.into(),
        event: event.into(),
        payload_json: Some(r#"{"by":"test"}"#.into()),
        expected_revision: expected,
        request_id: request_id.map(Into::into),
    }
}

fn lease(max: u32, lease_ms: u64) -> Command {
    Command::LeaseTasks {
        types: vec!["t".into()],
        worker: "w1".into(),
        max,
        lease_ms: Some(lease_ms),
    }
}

fn state_of(outcome: &Outcome) -> (String, u64) {
    match outcome {
        Outcome::Workflow { workflow, .. } => (workflow.state.clone(), workflow.revision),
        other => panic!("not a workflow: {other}"),
    }
}

#[test]
fn a_create_is_idempotent_for_its_request_and_refused_for_another() {
    let mut g = Group::new();
    let first = g.apply(1_000, create("wf", "pp", PING_PONG, "req-a"));
    assert!(matches!(first, Outcome::Workflow { created: true, .. }));
    assert_eq!(state_of(&first), ("ping".into(), 1));
    assert_eq!(g.workflow("wf").workflow.context.to_object()["order"], 7);

    let again = g.apply(1_001, create("wf", "pp", PING_PONG, "req-a"));
    assert!(matches!(again, Outcome::Workflow { created: false, .. }));
    assert_eq!(state_of(&again), ("ping".into(), 1));

    let other = g.apply(1_002, create("wf", "pp", PING_PONG, "req-b"));
    assert_eq!(
        other,
        Outcome::Refused(Refusal::WorkflowExists { id: "wf".into() })
    );
    assert_eq!(g.history_len("wf"), 1);
}

#[test]
fn events_move_the_state_only_at_the_expected_revision() {
    let mut g = Group::new();
    g.apply(1_000, create("wf", "pp", PING_PONG, "f"));
    assert_eq!(
        state_of(&g.apply(1_001, event("wf", "flip", Some(1), None))),
        ("pong".into(), 2)
    );
    assert_eq!(
        g.apply(1_002, event("wf", "flop", Some(1), None)),
        Outcome::Refused(Refusal::RevisionMismatch {
            expected: 1,
            current: 2
        })
    );
    assert!(matches!(
        g.apply(1_003, event("wf", "flip", None, None)),
        Outcome::Refused(Refusal::EventNotAllowed { .. })
    ));
    assert_eq!(
        g.apply(1_004, event("nobody", "flip", None, None)),
        Outcome::Refused(Refusal::WorkflowNotFound {
            id: "nobody".into()
        })
    );
    let rec = g.workflow("wf");
    assert_eq!(
        (rec.workflow.state.as_str(), rec.workflow.revision),
        ("pong", 2)
    );
    assert_eq!(
        rec.workflow.updated_at_ms, 1_001,
        "time is the entry's stamp"
    );
    assert_eq!(g.history_len("wf"), 2, "refusals write no history");
}

#[test]
fn a_repeated_request_id_returns_its_first_outcome_and_applies_once() {
    let mut g = Group::new();
    g.apply(1_000, create("wf", "pp", PING_PONG, "f"));
    let first = g.apply(1_001, event("wf", "flip", None, Some("r1")));
    assert_eq!(state_of(&first), ("pong".into(), 2));
    g.apply(1_002, event("wf", "flop", None, None));
    // The workflow moved on (ping, r3); the retry of r1 gets r1's answer, not a new flip.
    let retry = g.apply(1_003, event("wf", "flip", None, Some("r1")));
    assert_eq!(retry, first);
    assert_eq!(g.workflow("wf").workflow.revision, 3);
    // A refused request is remembered as refused.
    let refused = g.apply(1_004, event("wf", "flop", None, Some("r2")));
    assert!(matches!(refused, Outcome::Refused(_)));
    g.apply(1_005, event("wf", "flip", None, None));
    assert_eq!(
        g.apply(1_006, event("wf", "flop", None, Some("r2"))),
        refused
    );
}

#[test]
fn a_cancel_finishes_the_workflow_and_later_events_are_refused() {
    let mut g = Group::new();
    g.apply(1_000, create("wf", "pp", PING_PONG, "f"));
    let cancelled = g.apply(
        1_001,
        Command::Cancel {
            id: "wf".into(),
            reason: Some("customer asked".into()),
            request_id: None,
        },
    );
    let Outcome::Workflow { workflow, .. } = cancelled else {
        panic!("{cancelled}")
    };
    assert_eq!(workflow.status, Status::Cancelled);
    assert_eq!(
        g.apply(1_002, event("wf", "flip", None, None)),
        Outcome::Refused(Refusal::Finished {
            status: Status::Cancelled
        })
    );
}

#[test]
fn a_task_is_leased_once_completed_by_its_holder_and_moves_the_workflow() {
    let mut g = Group::new();
    g.apply(1_000, create("j1", "job", JOB, "f"));
    let Outcome::Leased { tasks } = g.apply(1_001, lease(10, 30_000)) else {
        panic!("a lease answers with tasks")
    };
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!((task.workflow_id.as_str(), task.attempt), ("j1", 1));
    assert_eq!(task.expires_at_ms, 31_001);
    assert!(
        task.context_json.contains("\"order\":7"),
        "{}",
        task.context_json
    );
    // Leased: nobody else gets it.
    assert_eq!(
        g.apply(1_002, lease(10, 30_000)),
        Outcome::Leased { tasks: vec![] }
    );

    let complete = |token| Command::CompleteTask {
        task_id: task.id.clone(),
        token,
        output_json: Some(r#"{"shipped":true}"#.into()),
    };
    assert!(matches!(
        g.apply(1_003, complete(task.token + 1)),
        Outcome::Refused(Refusal::LeaseLost { .. })
    ));
    let done = g.apply(1_004, complete(task.token));
    let Outcome::Task { workflow, .. } = &done else {
        panic!("{done}")
    };
    assert_eq!(workflow.state, "done");
    assert_eq!(workflow.status, Status::Succeeded);
    assert_eq!(workflow.context.to_object()["shipped"], true);
}

#[test]
fn a_tick_past_a_lease_hands_the_task_out_again_with_a_higher_token() {
    let mut g = Group::new();
    g.apply(1_000, create("j1", "job", JOB, "f"));
    let Outcome::Leased { tasks } = g.apply(1_001, lease(1, 100)) else {
        panic!()
    };
    let first = tasks[0].clone();
    // Before the lease ends a tick changes nothing.
    g.apply(1_050, Command::Tick);
    assert_eq!(
        g.apply(1_060, lease(1, 100)),
        Outcome::Leased { tasks: vec![] }
    );
    // After it, the task is ready again: the same attempt (the worker did not fail it), under a
    // token above the first.
    g.apply(1_200, Command::Tick);
    let Outcome::Leased { tasks } = g.apply(1_201, lease(1, 100)) else {
        panic!()
    };
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, first.id);
    assert_eq!(tasks[0].attempt, 1);
    assert!(tasks[0].token > first.token);
    // The old holder's completion is refused.
    assert!(matches!(
        g.apply(
            1_202,
            Command::CompleteTask {
                task_id: first.id.clone(),
                token: first.token,
                output_json: None,
            }
        ),
        Outcome::Refused(Refusal::LeaseLost { .. })
    ));
}

#[test]
fn a_definition_gets_a_new_version_only_when_its_text_changes() {
    let mut g = Group::new();
    let put = |json: &str| Command::PutDefinition {
        name: "pp".into(),
        json: json.into(),
    };
    let version = |o: Outcome| match o {
        Outcome::Definition { stored, created } => (stored.version, created),
        other => panic!("{other}"),
    };
    assert_eq!(version(g.apply(1, put(PING_PONG))), (1, true));
    assert_eq!(version(g.apply(2, put(PING_PONG))), (1, false));
    assert_eq!(version(g.apply(3, put(JOB))), (2, true));
    assert_eq!(version(g.apply(4, put(PING_PONG))), (3, true));
}

#[test]
fn a_batch_applies_in_order_and_each_command_reads_the_ones_before() {
    let mut g = Group::new();
    let outcome = g.apply(
        1_000,
        Command::Batch(vec![
            create("wf", "pp", PING_PONG, "f"),
            event("wf", "flip", Some(1), None),
            event("wf", "flip", Some(1), None),
        ]),
    );
    let Outcome::Batch(outcomes) = outcome else {
        panic!()
    };
    assert_eq!(state_of(&outcomes[0]), ("ping".into(), 1));
    assert_eq!(state_of(&outcomes[1]), ("pong".into(), 2));
    assert!(matches!(
        outcomes[2],
        Outcome::Refused(Refusal::RevisionMismatch { .. })
    ));
    assert_eq!(g.workflow("wf").workflow.revision, 2);
}

fn addr(n: u16) -> crate::NodeAddr {
    crate::NodeAddr {
        client: format!("127.0.0.1:{}", 7000 + n),
        peer: format!("127.0.0.1:{}", 8000 + n),
    }
}

fn node_outcome(o: Outcome) -> (tables::NodeState, bool) {
    match o {
        Outcome::Node { node, created } => (node.state, created),
        other => panic!("expected a node, got {other}"),
    }
}

#[test]
fn a_node_registers_once_and_a_taken_or_removed_id_is_refused() {
    use tables::NodeState::*;
    let mut g = Group::new();
    let register = |id, n| Command::RegisterNode { id, addr: addr(n) };
    assert_eq!(node_outcome(g.apply(1, register(4, 4))), (Joining, true));
    // The same request again is a retry.
    assert_eq!(node_outcome(g.apply(2, register(4, 4))), (Joining, false));
    // The same id from other addresses is another node.
    assert!(matches!(
        g.apply(3, register(4, 5)),
        Outcome::Refused(Refusal::NodeExists { id: 4, .. })
    ));
    let set = |id, n, state| Command::SetNode {
        id,
        addr: addr(n),
        state,
    };
    assert_eq!(node_outcome(g.apply(4, set(4, 4, Active))), (Active, false));
    assert_eq!(node_outcome(g.apply(5, register(4, 4))), (Active, false));
    // Removed is for good: no state change and no registration brings the id back.
    assert_eq!(
        node_outcome(g.apply(6, set(4, 4, Removed))),
        (Removed, false)
    );
    assert_eq!(
        node_outcome(g.apply(7, set(4, 4, Active))),
        (Removed, false)
    );
    match g.apply(8, register(4, 4)) {
        Outcome::Refused(Refusal::NodeExists { id: 4, reason }) => {
            assert!(reason.contains("removed"), "{reason}")
        }
        other => panic!("a removed id registered again: {other}"),
    }
    let row: tables::NodeRecord =
        raftflow_storage::codec::decode(&g.rows[&tables::node_key(4)]).unwrap();
    assert_eq!((row.state, row.since_ms), (Removed, 6));
}

#[test]
fn a_placement_changes_only_from_the_placement_it_was_decided_on() {
    let mut g = Group::new();
    let placement = |voters: Vec<u64>, epoch| tables::Placement {
        group: 2,
        voters,
        leader: None,
        moving: None,
        epoch,
    };
    let first = placement(vec![1, 2, 3], 0);
    let set = |p: &tables::Placement, expected: Option<&tables::Placement>| Command::SetPlacement {
        placement: p.clone(),
        expected: expected.cloned(),
    };
    assert_eq!(g.apply(1, set(&first, None)), Outcome::Nothing);
    // A second "first" placement, decided without seeing the one recorded, is refused.
    let other = placement(vec![4, 5, 6], 0);
    assert!(matches!(
        g.apply(2, set(&other, None)),
        Outcome::Refused(Refusal::PlacementChanged { group: 2 })
    ));
    let mut moving = first.clone();
    moving.epoch = 1;
    moving.moving = Some(tables::Move {
        from: Some(3),
        to: crate::replica_id(4, 1),
        step: tables::MoveStep::Learner,
    });
    assert_eq!(g.apply(3, set(&moving, Some(&first))), Outcome::Nothing);
    // A stale driver that still sees the first placement changes nothing.
    assert!(matches!(
        g.apply(4, set(&other, Some(&first))),
        Outcome::Refused(Refusal::PlacementChanged { .. })
    ));
    let p: tables::Placement =
        raftflow_storage::codec::decode(&g.rows[&tables::placement_key(2)]).unwrap();
    assert_eq!(p, moving);
}

// ---- slot moves ---------------------------------------------------------------------------

const WAIT: &str = r#"{"name": "wait", "initial": "sleeping", "states": {"sleeping": {"timer_ms": 1000, "on": {"timer.fired": "awake"}}, "awake": {"terminal": "succeeded"}}}"#;

impl Group {
    /// Every row of the workflows in `slots`, and the pinned definitions: what the old
    /// group's copy query sends (`Query::SlotRows`, which reads RocksDB).
    fn slot_rows(&self, slots: &[u32]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.rows
            .iter()
            .filter(|(k, _)| {
                k.starts_with(b"p/")
                    || tables::workflow_of_key(k)
                        .is_some_and(|id| slots.contains(&crate::ring::slot_of(&id)))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn has_rows_of(&self, id: &str) -> bool {
        self.rows
            .keys()
            .any(|k| tables::workflow_of_key(k).as_deref() == Some(id))
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> usize {
        self.rows.keys().filter(|k| k.starts_with(prefix)).count()
    }
}

/// Moves the slot of workflow `id` from `a` to `b` (move 1, at 1 s) and activates it there.
fn move_slot_of(id: &str, a: &mut Group, b: &mut Group) {
    let slot = crate::ring::slot_of(id);
    let slots = vec![slot];
    let freeze = Command::FreezeSlots {
        move_id: 1,
        to: 2,
        slots: slots.clone(),
    };
    assert_eq!(a.apply(1_001, freeze), Outcome::Nothing);
    let receive = Command::ReceiveSlots {
        move_id: 1,
        from: 1,
        slots,
    };
    assert_eq!(b.apply(1_001, receive), Outcome::Nothing);
    let import = Command::ImportRows {
        move_id: 1,
        rows: a.slot_rows(&[slot]),
        token_floor: a.index,
    };
    assert_eq!(b.apply(1_002, import), Outcome::Nothing);
    assert_eq!(
        b.apply(1_003, Command::ActivateSlots { move_id: 1 }),
        Outcome::Nothing
    );
}

fn moved(o: &Outcome) -> bool {
    matches!(o, Outcome::Refused(Refusal::Moved { .. }))
}

fn leased(o: Outcome) -> Vec<crate::command::LeasedTask> {
    match o {
        Outcome::Leased { tasks } => tasks,
        other => panic!("not a lease: {other}"),
    }
}

/// Two workflow ids in different slots.
fn two_slots() -> (String, String) {
    let a = "job-a".to_string();
    let b = (0..)
        .map(|i| format!("job-{i}"))
        .find(|b| crate::ring::slot_of(b) != crate::ring::slot_of(&a))
        .unwrap();
    (a, b)
}

#[test]
fn a_slot_moves_with_its_history_request_ids_task_token_and_timer_and_leaves_a_fence() {
    let (mut a, mut b) = (Group::new(), Group::new());
    let (moving, staying) = two_slots();
    let sleeper = (0..)
        .map(|i| format!("sleep-{i}"))
        .find(|s| crate::ring::slot_of(s) == crate::ring::slot_of(&moving))
        .unwrap();
    a.apply(1_000, create(&moving, "job", JOB, "f"));
    a.apply(1_000, create(&staying, "job", JOB, "f"));
    a.apply(1_000, create(&sleeper, "wait", WAIT, "f"));
    let cancel = |id: &str, rid: &str| Command::Cancel {
        id: id.into(),
        reason: None,
        request_id: Some(rid.into()),
    };
    // Lease both tasks in the old group; b's leases start at a lower index than a's.
    let tasks = leased(a.apply(1_010, lease(10, 60_000)));
    assert_eq!(tasks.len(), 2);
    let token = tasks
        .iter()
        .find(|t| t.workflow_id == moving)
        .unwrap()
        .token;
    b.index = 1; // far behind a's log

    let slot = crate::ring::slot_of(&moving);
    let freeze = Command::FreezeSlots {
        move_id: 1,
        to: 2,
        slots: vec![slot],
    };
    assert_eq!(a.apply(1_020, freeze.clone()), Outcome::Nothing);
    assert_eq!(
        a.apply(1_021, freeze),
        Outcome::Nothing,
        "a freeze is idempotent"
    );
    // From the freeze on, the old group answers "moved" for the slot, and only for it.
    assert!(moved(&a.apply(1_030, cancel(&moving, "r1"))));
    assert!(moved(&a.apply(1_030, create(&moving, "job", JOB, "f"))));
    let complete = Command::CompleteTask {
        task_id: format!("{moving}:1"),
        token,
        output_json: None,
    };
    assert!(moved(&a.apply(1_030, complete.clone())));
    assert!(!moved(&a.apply(1_030, event(&staying, "nope", None, None))));
    // Its timer and lease expiry are left alone, even when due.
    a.apply(70_000, Command::Tick);
    assert_eq!(a.workflow(&sleeper).workflow.state, "sleeping");
    assert!(a.workflow(&moving).workflow.status == Status::Running);

    let rows = a.slot_rows(&[slot]);
    let receive = Command::ReceiveSlots {
        move_id: 1,
        from: 1,
        slots: vec![slot],
    };
    assert_eq!(b.apply(1_040, receive), Outcome::Nothing);
    let import = Command::ImportRows {
        move_id: 1,
        rows: rows.clone(),
        token_floor: a.index,
    };
    assert_eq!(b.apply(1_050, import.clone()), Outcome::Nothing);
    assert_eq!(
        b.apply(1_051, import),
        Outcome::Nothing,
        "an import is idempotent"
    );
    // Not served before the move commits and the slot is activated here.
    assert!(moved(&b.apply(1_060, complete.clone())));
    b.apply(70_000, Command::Tick);
    assert_eq!(b.workflow(&sleeper).workflow.state, "sleeping");
    assert_eq!(
        b.apply(1_070, Command::ActivateSlots { move_id: 1 }),
        Outcome::Nothing
    );

    // The task completes in the new group with the token the old one issued.
    match b.apply(1_080, complete.clone()) {
        Outcome::Task { workflow, .. } => assert_eq!(workflow.state, "done"),
        other => panic!("complete after the move: {other}"),
    }
    // The history came along: created, task.completed.
    assert_eq!(b.history_len(&moving), 2);
    // The timer fires once, in the new group.
    b.apply(70_001, Command::Tick);
    assert_eq!(b.workflow(&sleeper).workflow.state, "awake");
    assert_eq!(b.history_len(&sleeper), 2);

    // The old group deletes the rows and keeps the fence: "moved", never "not found".
    let drop = Command::DropSlotRows {
        move_id: 1,
        after: None,
        limit: 1,
    };
    let mut after = match a.apply(1_090, drop) {
        Outcome::Cursor { next } => next,
        other => panic!("{other}"),
    };
    while let Some(next) = after {
        let drop = Command::DropSlotRows {
            move_id: 1,
            after: Some(next),
            limit: 1,
        };
        after = match a.apply(1_091, drop) {
            Outcome::Cursor { next } => next,
            other => panic!("{other}"),
        };
    }
    assert!(!a.has_rows_of(&moving) && !a.has_rows_of(&sleeper));
    assert!(a.has_rows_of(&staying));
    assert!(moved(&a.apply(1_100, cancel(&moving, "r2"))));
    // No queue or deadline key is left behind for the moved workflows: only the staying
    // task, ready again since its lease expired at the tick.
    assert_eq!(a.keys_with_prefix(tables::DEADLINES), 0);
    assert_eq!(a.keys_with_prefix(b"q/"), 1);
    // A late step of this move changes nothing once the group went on to a later move.
    let later = Command::FreezeSlots {
        move_id: 2,
        to: 3,
        slots: vec![crate::ring::slot_of(&staying)],
    };
    assert_eq!(a.apply(1_110, later), Outcome::Nothing);
    let late = Command::FreezeSlots {
        move_id: 1,
        to: 2,
        slots: vec![slot],
    };
    assert!(matches!(
        a.apply(1_120, late),
        Outcome::Refused(Refusal::SlotMoveStale { .. })
    ));
}

#[test]
fn tokens_a_group_issues_after_receiving_a_task_are_above_the_old_groups() {
    let (mut a, mut b) = (Group::new(), Group::new());
    let (moving, _) = two_slots();
    a.index = 10_000;
    a.apply(1_000, create(&moving, "job", JOB, "f"));
    let old = leased(a.apply(1_000, lease(1, 100)))[0].token;
    move_slot_of(&moving, &mut a, &mut b);
    // The lease expires in the new group; the task is handed out again with a higher token.
    b.apply(5_000, Command::Tick);
    let new = leased(b.apply(5_001, lease(1, 60_000)));
    assert_eq!(new.len(), 1);
    assert!(new[0].token > old, "{} after {old}", new[0].token);
    let stale = Command::CompleteTask {
        task_id: new[0].id.clone(),
        token: old,
        output_json: None,
    };
    assert!(matches!(
        b.apply(5_002, stale),
        Outcome::Refused(Refusal::LeaseLost { .. })
    ));
}

#[test]
fn rows_of_a_slot_the_group_is_not_receiving_are_refused() {
    let (mut a, mut b) = (Group::new(), Group::new());
    let (moving, _) = two_slots();
    a.apply(1_000, create(&moving, "job", JOB, "f"));
    let slot = crate::ring::slot_of(&moving);
    let import = Command::ImportRows {
        move_id: 1,
        rows: a.slot_rows(&[slot]),
        token_floor: 0,
    };
    assert!(matches!(
        b.apply(1_001, import),
        Outcome::Refused(Refusal::SlotMoveStale { .. })
    ));
    assert!(!b.has_rows_of(&moving));
}

#[test]
fn tasks_made_ready_in_the_new_group_after_a_move_are_handed_out() {
    // The old group's log is far ahead of the new one's: a ready task it queued sorts after
    // everything the new group will queue for a long while, unless the import re-queues it.
    let (mut a, mut b) = (Group::new(), Group::new());
    let (moving, local) = two_slots();
    a.index = 10_000;
    a.apply(1_000, create(&moving, "job", JOB, "f"));
    move_slot_of(&moving, &mut a, &mut b);
    assert_eq!(leased(b.apply(1_004, lease(1, 60_000))).len(), 1);
    b.apply(1_005, create(&local, "job", JOB, "f"));
    let next = leased(b.apply(1_006, lease(1, 60_000)));
    assert_eq!(next.len(), 1, "the new group's own task is handed out");
    assert_eq!(next[0].workflow_id, local);
}

// ---- who caused a history row -------------------------------------------------------------

impl Group {
    /// Workflow `id`'s history as `(event, caller)` pairs, read the way a query reads it.
    fn history_by(&self, id: &str, limit: usize) -> Vec<(String, Option<String>)> {
        let prefix = tables::history_prefix(id);
        let keys = self
            .rows
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()));
        tables::history_of_rows(id, keys, limit)
            .unwrap()
            .into_iter()
            .map(|(row, by)| (row.event, by))
            .collect()
    }
}

fn by(caller: &str, command: Command) -> Command {
    command.by(Some(caller))
}

fn named(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    pairs
        .iter()
        .map(|(e, by)| (e.to_string(), by.map(str::to_string)))
        .collect()
}

#[test]
fn history_rows_name_the_caller_whose_command_wrote_them_and_only_that_command() {
    let mut g = Group::new();
    g.apply(1_000, by("ops", create("wf", "pp", PING_PONG, "f")));
    // A batch: each command's rows name its own caller, or none; a caller does not leak
    // into the next command.
    g.apply(
        1_001,
        Command::Batch(vec![
            by("alice", event("wf", "flip", Some(1), None)),
            event("wf", "flop", Some(2), None),
            by("bob", event("wf", "flip", Some(3), None)),
        ]),
    );
    g.apply(1_002, event("wf", "flop", Some(4), None));
    assert_eq!(
        g.history_by("wf", 100),
        named(&[
            ("created", Some("ops")),
            ("flip", Some("alice")),
            ("flop", None),
            ("flip", Some("bob")),
            ("flop", None),
        ])
    );
    // A limit counts rows, not caller rows, and keeps the last row's caller.
    assert_eq!(
        g.history_by("wf", 2),
        named(&[("created", Some("ops")), ("flip", Some("alice"))])
    );
    // A refused command writes no caller row.
    g.apply(1_003, by("mallory", event("wf", "flip", Some(1), None)));
    assert_eq!(g.history_len("wf"), 5 + 3);

    // Rows the engine writes on its own (a timer) name nobody; a worker's completion names
    // the worker.
    g.apply(1_010, by("ops", create("nap", "wait", WAIT, "f")));
    g.apply(5_000, Command::Tick);
    assert_eq!(
        g.history_by("nap", 100),
        named(&[("created", Some("ops")), ("timer.fired", None)])
    );
    g.apply(5_001, create("job", "job", JOB, "f"));
    let task = leased(g.apply(5_002, lease(1, 60_000))).remove(0);
    let complete = Command::CompleteTask {
        task_id: task.id.clone(),
        token: task.token,
        output_json: None,
    };
    g.apply(5_003, by("worker-7", complete));
    assert_eq!(
        g.history_by("job", 100),
        named(&[("created", None), ("task.completed", Some("worker-7"))])
    );
}

#[test]
fn the_callers_of_a_workflows_history_move_with_its_slot() {
    let (mut a, mut b) = (Group::new(), Group::new());
    let (moving, _) = two_slots();
    a.apply(1_000, by("ops", create(&moving, "pp", PING_PONG, "f")));
    a.apply(1_000, by("alice", event(&moving, "flip", Some(1), None)));
    let before = a.history_by(&moving, 100);
    assert_eq!(
        before,
        named(&[("created", Some("ops")), ("flip", Some("alice"))])
    );
    move_slot_of(&moving, &mut a, &mut b);
    assert_eq!(b.history_by(&moving, 100), before);
    // The old group's drop takes the caller rows with the rest.
    let drop = Command::DropSlotRows {
        move_id: 1,
        after: None,
        limit: 100,
    };
    assert_eq!(a.apply(1_010, drop), Outcome::Cursor { next: None });
    assert!(!a.has_rows_of(&moving));
}
