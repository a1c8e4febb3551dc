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
        payload_json: Some(r#"{"by": "test"}"#.into()),
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
    assert_eq!(g.workflow("wf").workflow.context["order"], 7);

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
        output_json: Some(r#"{"shipped": true}"#.into()),
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
    assert_eq!(workflow.context["shipped"], true);
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
