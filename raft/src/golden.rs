//! Pinned encodings: the bytes of every value raftflow stores or sends between nodes, checked
//! against `raft/golden/encodings.txt`.
//!
//! The values go through bincode, which writes no field names and numbers enum variants by
//! position. So the rule for every type pinned here (commands, outcomes, stored records, log
//! entries, peer frames):
//!
//! - **Enum variants are only ever appended.** A new variant goes last; none is removed or
//!   reordered. The bytes of every existing sample then stay as they are, and a new sample
//!   pins the new variant.
//! - **Struct fields never change.** bincode has no room for an appended field: bytes written
//!   before it lack it and no longer decode. New data goes in a new enum variant (as
//!   `Command::Batch` did), or comes with a new [`crate::DATA_FORMAT`] (data directory) or
//!   `PEER_PROTOCOL_VERSION` (peers) and the migration that reads the old one.
//!
//! When this test fails, an existing encoding changed: undo the change, or follow the second
//! rule. `RAFTFLOW_BLESS=1 cargo test -p raftflow-raft golden` rewrites the file; do that only
//! to pin new samples, and the diff must show added lines only.

use std::collections::BTreeMap;

use raftflow_storage::codec;
use raftflow_workflow::task::{Phase, Task};
use raftflow_workflow::{HistoryRow, JsonObject, Status, Workflow};
use serde::Serialize;

use crate::command::{Command, DefinitionVersion, LeasedTask, Outcome, Refusal, Stamped};
use crate::tables::{
    self, GroupRecord, GroupState, Move, MoveStep, NodeRecord, NodeState, OpenStep, Placement,
    SlotFence, SlotMove, SlotMoveStep, TaskRecord, WorkflowRecord,
};
use crate::transport::frames::{encode_frame, Frame, PeerReply, PeerRpc};
use crate::transport::{Forward, ForwardError, ForwardReply};

pub(crate) const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/encodings.txt");

/// Named encodings, in the order the file lists them.
#[derive(Default)]
pub(crate) struct Samples(pub(crate) Vec<(String, Vec<u8>)>);

impl Samples {
    /// A stored value, as the codec writes it.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        self.raw(name, codec::encode(value).expect("encodes"));
    }

    /// A peer frame, as it goes on the wire (length prefix included).
    pub(crate) fn frame(&mut self, name: &str, frame: Frame) {
        self.raw(name, encode_frame(frame).expect("encodes"));
    }

    pub(crate) fn raw(&mut self, name: &str, bytes: Vec<u8>) {
        assert!(self.0.iter().all(|(n, _)| n != name), "sample {name} twice");
        self.0.push((name.to_string(), bytes));
    }
}

fn context() -> JsonObject {
    serde_json::from_str(r#"{"order": 7, "items": ["a", "b"], "paid": true}"#).unwrap()
}

fn workflow() -> Workflow {
    Workflow {
        id: "order-1".into(),
        definition: "order".into(),
        version: 2,
        state: "paid".into(),
        status: Status::Running,
        revision: 3,
        context: raftflow_workflow::Context::from_object(&context()),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_500,
    }
}

fn task(phase: Phase) -> Task {
    Task {
        id: "order-1/3".into(),
        workflow_id: "order-1".into(),
        task_type: "ship".into(),
        attempt: 2,
        max_attempts: 3,
        backoff_ms: 1_000,
        backoff_multiplier: 2.0,
        lease_ms: 30_000,
        token: 9,
        phase,
        last_error: Some("carrier down".into()),
    }
}

fn commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "put_definition",
            Command::PutDefinition {
                name: "order".into(),
                json: r#"{"name":"order"}"#.into(),
            },
        ),
        (
            "create_workflow",
            Command::CreateWorkflow {
                id: "order-1".into(),
                definition: "order".into(),
                version: 2,
                definition_json: r#"{"name":"order"}"#.into(),
                context_json: r#"{"order":7}"#.into(),
                fingerprint: "fp".into(),
            },
        ),
        (
            "event",
            Command::Event {
                id: "order-1".into(),
                event: "pay".into(),
                payload_json: Some(r#"{"amount":12}"#.into()),
                expected_revision: Some(1),
                request_id: Some("req-1".into()),
            },
        ),
        (
            "cancel",
            Command::Cancel {
                id: "order-1".into(),
                reason: Some("customer asked".into()),
                request_id: None,
            },
        ),
        (
            "lease_tasks",
            Command::LeaseTasks {
                types: vec!["ship".into(), "bill".into()],
                worker: "w1".into(),
                max: 8,
                lease_ms: Some(30_000),
            },
        ),
        (
            "complete_task",
            Command::CompleteTask {
                task_id: "order-1/3".into(),
                token: 9,
                output_json: Some(r#"{"tracking":"x"}"#.into()),
            },
        ),
        (
            "fail_task",
            Command::FailTask {
                task_id: "order-1/3".into(),
                token: 9,
                error: "carrier down".into(),
                retryable: true,
            },
        ),
        (
            "heartbeat_task",
            Command::HeartbeatTask {
                task_id: "order-1/3".into(),
                token: 9,
                lease_ms: None,
            },
        ),
        ("tick", Command::Tick),
        (
            "batch",
            Command::Batch(vec![
                Command::Tick,
                Command::Cancel {
                    id: "b".into(),
                    reason: None,
                    request_id: Some("r".into()),
                },
            ]),
        ),
        (
            "register_node",
            Command::RegisterNode {
                id: 4,
                addr: node_addr(4),
            },
        ),
        (
            "set_node",
            Command::SetNode {
                id: 4,
                addr: node_addr(4),
                state: NodeState::Active,
            },
        ),
        (
            "set_placement",
            Command::SetPlacement {
                placement: placement(),
                expected: None,
            },
        ),
        (
            "add_group",
            Command::AddGroup {
                placement: placement(),
            },
        ),
        (
            "set_group_state",
            Command::SetGroupState {
                group: 9,
                state: GroupState::Retiring,
            },
        ),
        (
            "init_slot_table",
            Command::InitSlotTable {
                table: crate::ring::SlotTable::new(2),
            },
        ),
        (
            "start_slot_move",
            Command::StartSlotMove {
                slot_move: slot_move(),
            },
        ),
        ("commit_slot_move", Command::CommitSlotMove { move_id: 7 }),
        ("end_slot_move", Command::EndSlotMove { move_id: 7 }),
        (
            "freeze_slots",
            Command::FreezeSlots {
                move_id: 7,
                to: 9,
                slots: vec![1, 300],
            },
        ),
        (
            "receive_slots",
            Command::ReceiveSlots {
                move_id: 7,
                from: 2,
                slots: vec![1, 300],
            },
        ),
        (
            "import_rows",
            Command::ImportRows {
                move_id: 7,
                rows: vec![(b"w/order-1".to_vec(), b"value".to_vec())],
                token_floor: 1_000,
            },
        ),
        ("activate_slots", Command::ActivateSlots { move_id: 7 }),
        (
            "drop_slot_rows",
            Command::DropSlotRows {
                move_id: 7,
                after: Some("order-1".into()),
                limit: 4096,
            },
        ),
        (
            "by",
            Command::By {
                caller: "alice".into(),
                command: Box::new(Command::Cancel {
                    id: "order-1".into(),
                    reason: None,
                    request_id: None,
                }),
            },
        ),
    ]
}

fn slot_move() -> SlotMove {
    SlotMove {
        id: 7,
        from: 2,
        to: 9,
        slots: vec![1, 300],
        step: SlotMoveStep::Copying,
        since_ms: 1_700_000_000_000,
    }
}

fn node_addr(n: u64) -> crate::NodeAddr {
    crate::NodeAddr {
        client: format!("127.0.0.{n}:7001"),
        peer: format!("127.0.0.{n}:8001"),
    }
}

fn placement() -> Placement {
    Placement {
        group: 3,
        voters: vec![1, 2, 3],
        leader: Some(2),
        moving: Some(Move {
            from: Some(3),
            to: crate::replica_id(4, 7),
            step: MoveStep::Joint,
        }),
        epoch: 7,
    }
}

fn node_record(state: NodeState) -> NodeRecord {
    NodeRecord {
        id: 4,
        addr: node_addr(4),
        state,
        since_ms: 1_700_000_000_000,
    }
}

fn outcomes() -> Vec<(&'static str, Outcome)> {
    let refusals = [
        Refusal::WorkflowNotFound { id: "x".into() },
        Refusal::WorkflowExists { id: "x".into() },
        Refusal::EventNotAllowed {
            state: "paid".into(),
            event: "pay".into(),
        },
        Refusal::Finished {
            status: Status::Cancelled,
        },
        Refusal::EngineEvent {
            event: "task.completed".into(),
        },
        Refusal::RevisionMismatch {
            expected: 1,
            current: 3,
        },
        Refusal::TaskNotFound { id: "t".into() },
        Refusal::LeaseLost {
            task_id: "t".into(),
            reason: "expired".into(),
        },
        Refusal::NodeExists {
            id: 4,
            reason: "was removed".into(),
        },
        Refusal::PlacementChanged { group: 3 },
        Refusal::Moved {
            id: "order-1".into(),
            slot: 300,
            move_id: 7,
        },
        Refusal::SlotMoveStale {
            move_id: 7,
            reason: "late".into(),
        },
        Refusal::GroupRefused {
            group: 9,
            reason: "taken".into(),
        },
    ];
    let names = [
        "refused_workflow_not_found",
        "refused_workflow_exists",
        "refused_event_not_allowed",
        "refused_finished",
        "refused_engine_event",
        "refused_revision_mismatch",
        "refused_task_not_found",
        "refused_lease_lost",
        "refused_node_exists",
        "refused_placement_changed",
        "refused_moved",
        "refused_slot_move_stale",
        "refused_group_refused",
    ];
    let mut out = vec![
        ("nothing", Outcome::Nothing),
        (
            "definition",
            Outcome::Definition {
                stored: DefinitionVersion {
                    name: "order".into(),
                    version: 2,
                    created_at_ms: 1_700_000_000_000,
                    json: r#"{"name":"order"}"#.into(),
                },
                created: true,
            },
        ),
        (
            "workflow",
            Outcome::Workflow {
                workflow: workflow(),
                created: false,
            },
        ),
        (
            "leased",
            Outcome::Leased {
                tasks: vec![LeasedTask {
                    id: "order-1/3".into(),
                    workflow_id: "order-1".into(),
                    task_type: "ship".into(),
                    attempt: 1,
                    token: 9,
                    expires_at_ms: 1_700_000_030_000,
                    context_json: r#"{"order":7}"#.into(),
                }],
            },
        ),
        (
            "task",
            Outcome::Task {
                task: task(Phase::Completed { token: 9 }),
                workflow: workflow(),
            },
        ),
        (
            "batch",
            Outcome::Batch(vec![
                Outcome::Nothing,
                Outcome::Refused(Refusal::TaskNotFound { id: "t".into() }),
            ]),
        ),
        (
            "node",
            Outcome::Node {
                node: node_record(NodeState::Joining),
                created: true,
            },
        ),
        (
            "cursor",
            Outcome::Cursor {
                next: Some("order-1".into()),
            },
        ),
    ];
    out.extend(names.into_iter().zip(refusals.map(Outcome::Refused)));
    out
}

fn samples() -> Samples {
    let mut s = Samples::default();
    for (name, command) in commands() {
        s.value(
            &format!("command/{name}"),
            &Stamped {
                at_ms: 1_700_000_000_000,
                command,
            },
        );
    }
    for (name, outcome) in outcomes() {
        s.value(&format!("outcome/{name}"), &outcome);
    }

    // The rows of a group's state.
    for state in [
        NodeState::Joining,
        NodeState::Active,
        NodeState::Draining,
        NodeState::Removed,
    ] {
        s.value(&format!("row/node/{}", state.as_str()), &node_record(state));
    }
    s.value("row/placement", &placement());
    for step in [MoveStep::Learner, MoveStep::Joint] {
        s.value(&format!("row/placement/step_{step:?}"), &step);
    }
    for (name, step) in [
        ("none", None),
        (
            "task",
            Some(OpenStep::Task {
                task_id: "order-1/3".into(),
            }),
        ),
        ("timer", Some(OpenStep::Timer { due_ms: 42 })),
    ] {
        let record = WorkflowRecord {
            workflow: workflow(),
            fingerprint: "fp".into(),
            step,
        };
        s.value(&format!("row/workflow/step_{name}"), &record);
    }
    for (name, phase) in [
        ("ready", Phase::Ready),
        ("backoff", Phase::Backoff { until_ms: 5 }),
        (
            "leased",
            Phase::Leased {
                worker: "w1".into(),
                expires_at_ms: 6,
            },
        ),
        ("completed", Phase::Completed { token: 9 }),
        ("failed", Phase::Failed { token: 9 }),
        ("withdrawn", Phase::Withdrawn),
    ] {
        let record = TaskRecord {
            task: task(phase),
            queued: Some(17),
        };
        s.value(&format!("row/task/{name}"), &record);
    }
    for (name, payload) in [
        ("plain", None),
        (
            "payload",
            Some(raftflow_workflow::Context::from_object(&context())),
        ),
    ] {
        let row = HistoryRow {
            revision: 3,
            event: "pay".into(),
            from: Some("created".into()),
            to: "paid".into(),
            payload,
            at_ms: 1_700_000_000_500,
        };
        s.value(&format!("row/history/{name}"), &row);
    }
    s.value("row/history_caller", "alice");
    s.value("row/dedup", &Outcome::Nothing);
    s.value("row/pinned_definition", r#"{"name":"order"}"#);
    s.value("row/latest_version", &2u32);
    s.value("row/ready", &());
    for state in [
        GroupState::Serving,
        GroupState::Retiring,
        GroupState::Retired,
    ] {
        let record = GroupRecord {
            id: 9,
            state,
            since_ms: 1_700_000_000_000,
        };
        s.value(&format!("row/group/{}", state.as_str()), &record);
    }
    s.value("row/slot_table", &crate::ring::SlotTable::new(2));
    s.value("row/slot_move", &slot_move());
    s.value(
        "row/slot_move/committed",
        &SlotMove {
            step: SlotMoveStep::Committed,
            ..slot_move()
        },
    );
    s.value(
        "row/fence/leaving",
        &SlotFence::Leaving { move_id: 7, to: 9 },
    );
    s.value(
        "row/fence/arriving",
        &SlotFence::Arriving {
            move_id: 7,
            from: 2,
        },
    );
    s.value("row/token_base", &1_000u64);
    s.value("row/move_mark", &7u64);
    s.value(
        "snapshot/rows",
        &vec![(b"w/order-1".to_vec(), b"value".to_vec())],
    );

    // Where the rows are: the key layout.
    s.raw("key/workflow", tables::workflow_key("order-1"));
    s.raw("key/history", tables::history_key("order-1", 3));
    s.raw("key/history_prefix", tables::history_prefix("order-1"));
    s.raw(
        "key/history_caller",
        tables::history_caller_key("order-1", 3),
    );
    s.raw("key/dedup", tables::dedup_key("order-1", "req-1"));
    s.raw("key/task", tables::task_key("order-1/3"));
    s.raw("key/ready", tables::ready_key("ship", 17, "order-1/3"));
    s.raw(
        "key/deadline_task",
        tables::deadline_key(42, tables::DEADLINE_TASK, "order-1/3"),
    );
    s.raw(
        "key/deadline_timer",
        tables::deadline_key(42, tables::DEADLINE_TIMER, "order-1"),
    );
    s.raw("key/pinned", tables::pinned_key("order", 2));
    s.raw("key/definition", tables::definition_key("order", 2));
    s.raw("key/latest", tables::latest_key("order"));
    s.raw("key/applied", tables::APPLIED.to_vec());
    s.raw("key/group", tables::group_key(9));
    s.raw("key/slot_table", tables::SLOT_TABLE.to_vec());
    s.raw("key/slot_move", tables::SLOT_MOVE.to_vec());
    s.raw("key/fence", tables::fence_key(300));
    s.raw("key/token_base", tables::TOKEN_BASE.to_vec());
    s.raw("key/move_mark", tables::MOVE_MARK.to_vec());

    // The node's own records.
    s.raw(
        "meta/data_format",
        crate::DATA_FORMAT.to_le_bytes().to_vec(),
    );
    s.value("meta/data_groups", &8u64);

    // Peer frames that carry no Raft message.
    let request = |rpc| Frame::Request {
        id: 5,
        group: 2,
        rpc,
    };
    let response = |reply| Frame::Response { id: 5, reply };
    s.frame("frame/initialized", request(PeerRpc::Initialized));
    s.frame(
        "frame/initialize",
        request(PeerRpc::Initialize {
            members: [(2, node_addr(2)), (3, node_addr(3))].into(),
        }),
    );
    s.frame(
        "frame/forward_propose",
        request(PeerRpc::Forward(Forward::Propose {
            command: commands().remove(2).1,
            timeout_ms: 5_000,
        })),
    );
    s.frame(
        "frame/forward_read_index",
        request(PeerRpc::Forward(Forward::ReadIndex { timeout_ms: 5_000 })),
    );
    s.frame(
        "frame/reply_initialized",
        response(Ok(PeerReply::Initialized(true))),
    );
    s.frame(
        "frame/reply_outcome",
        response(Ok(PeerReply::Forward(Ok(ForwardReply::Outcome(Box::new(
            outcomes().remove(2).1,
        )))))),
    );
    s.frame(
        "frame/reply_read_index",
        response(Ok(PeerReply::Forward(Ok(ForwardReply::ReadIndex(77))))),
    );
    for (name, e) in [
        ("not_leader", ForwardError::NotLeader(Some(3))),
        ("unavailable", ForwardError::Unavailable("no quorum".into())),
        ("storage_full", ForwardError::StorageFull("disk".into())),
        ("failed", ForwardError::Failed("boom".into())),
    ] {
        s.frame(
            &format!("frame/reply_forward_{name}"),
            response(Ok(PeerReply::Forward(Err(e)))),
        );
    }
    s.frame("frame/reply_error", response(Err("no group 9".into())));
    s.frame(
        "frame/forward_query_slot_rows",
        request(PeerRpc::Forward(Forward::Query {
            query: crate::Query::SlotRows {
                move_id: 7,
                after: Some("order-1".into()),
                max_bytes: 1 << 20,
            },
            linearizable: true,
            timeout_ms: 5_000,
        })),
    );
    s.frame(
        "frame/forward_query_workflow_page",
        request(PeerRpc::Forward(Forward::Query {
            query: crate::Query::WorkflowPage {
                after: None,
                limit: 100,
            },
            linearizable: true,
            timeout_ms: 5_000,
        })),
    );
    s.frame(
        "frame/forward_query_history_by",
        request(PeerRpc::Forward(Forward::Query {
            query: crate::Query::HistoryBy {
                id: "order-1".into(),
                limit: 100,
            },
            linearizable: true,
            timeout_ms: 5_000,
        })),
    );
    for (name, answer) in [
        (
            "moved",
            crate::Answer::Moved {
                slot: 300,
                move_id: 7,
            },
        ),
        (
            "slot_rows",
            crate::Answer::SlotRows {
                rows: vec![(b"w/order-1".to_vec(), b"value".to_vec())],
                next: None,
                token_floor: 1_000,
            },
        ),
        (
            "history_by",
            crate::Answer::HistoryBy(Some(vec![crate::HistoryEntry {
                row: HistoryRow {
                    revision: 1,
                    event: "created".into(),
                    from: None,
                    to: "created".into(),
                    payload: None,
                    at_ms: 1_700_000_000_500,
                },
                by: Some("alice".into()),
            }])),
        ),
        (
            "workflow_page",
            crate::Answer::WorkflowPage {
                workflows: Vec::new(),
                fenced: vec![(300, SlotFence::Leaving { move_id: 7, to: 9 })],
            },
        ),
    ] {
        s.frame(
            &format!("frame/reply_answer_{name}"),
            response(Ok(PeerReply::Forward(Ok(ForwardReply::Answer(answer))))),
        );
    }

    // Log entries, votes, the applied row and Raft's messages: openraft's types.
    crate::consensus::golden_samples(&mut s);
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pinned `name -> hex` lines of the file.
pub(crate) fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, h)| (n.to_string(), h.trim().to_string()))
        .collect()
}

/// What differs between the pinned encodings and the current ones.
fn differences(pinned: &BTreeMap<String, String>, current: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, bytes) in current {
        match pinned.get(name) {
            Some(h) if *h == hex(bytes) => {}
            Some(h) => out.push(format!("{name}: pinned {h}\n  now {}", hex(bytes))),
            None => out.push(format!("{name}: not pinned yet (new sample)")),
        }
    }
    for name in pinned.keys() {
        if current.iter().all(|(n, _)| n != name) {
            out.push(format!("{name}: pinned but no longer produced"));
        }
    }
    out
}

#[test]
fn every_stored_and_sent_encoding_matches_its_pinned_bytes() {
    let current = samples().0;
    if std::env::var("RAFTFLOW_BLESS").as_deref() == Ok("1") {
        let mut text = String::from(
            "# The pinned encodings of raft/src/golden.rs: name, then the bytes in hex.\n\
             # Read the rule there before changing a line: lines are only ever added.\n",
        );
        for (name, bytes) in &current {
            text.push_str(&format!("{name} {}\n", hex(bytes)));
        }
        std::fs::create_dir_all(std::path::Path::new(FILE).parent().unwrap()).unwrap();
        std::fs::write(FILE, text).unwrap();
        return;
    }
    let pinned = parse(&std::fs::read_to_string(FILE).unwrap_or_default());
    let diff = differences(&pinned, &current);
    assert!(
        diff.is_empty(),
        "encodings differ from {FILE} (see the rule in raft/src/golden.rs):\n{}",
        diff.join("\n")
    );
}

/// The check itself: a reordered variant, a changed field and a dropped sample are caught.
#[test]
fn the_golden_check_catches_a_reordered_variant() {
    #[derive(Serialize)]
    enum Before {
        A,
        B(u8),
    }
    #[derive(Serialize)]
    enum Reordered {
        B(u8),
        A,
    }
    let mut before = Samples::default();
    before.value("b", &Before::B(1));
    before.value("a", &Before::A);
    let pinned: BTreeMap<String, String> =
        before.0.iter().map(|(n, b)| (n.clone(), hex(b))).collect();
    assert!(differences(&pinned, &before.0).is_empty());

    let mut after = Samples::default();
    after.value("b", &Reordered::B(1));
    after.value("a", &Reordered::A);
    let diff = differences(&pinned, &after.0);
    assert_eq!(diff.len(), 2, "{diff:?}");

    let mut fewer = Samples::default();
    fewer.value("b", &Before::B(1));
    assert_eq!(
        differences(&pinned, &fewer.0),
        ["a: pinned but no longer produced"]
    );
}
