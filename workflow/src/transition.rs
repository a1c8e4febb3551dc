//! The pure transition function: (workflow, command, timestamp) -> new workflow + history row.

use serde::{Deserialize, Serialize};

use crate::definition::is_engine_event;
use crate::{Context, Definition, JsonObject, Terminal};

/// The history event recorded for a create (revision 1).
pub const CREATED_EVENT: &str = "created";
/// The history event recorded for a cancel.
pub const CANCEL_EVENT: &str = "cancel";
/// Engine events.
pub const TASK_COMPLETED: &str = "task.completed";
pub const TASK_FAILED: &str = "task.failed";
/// A failed attempt that will be retried (history only; the state does not change).
pub const TASK_RETRYING: &str = "task.retrying";
pub const TIMER_FIRED: &str = "timer.fired";

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    fn of_terminal(t: Terminal) -> Status {
        match t {
            Terminal::Succeeded => Status::Succeeded,
            Terminal::Failed => Status::Failed,
            Terminal::Cancelled => Status::Cancelled,
        }
    }
}

/// A workflow instance as it is stored and replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub state: String,
    pub status: Status,
    pub revision: u64,
    pub context: Context,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// One entry of a workflow's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub revision: u64,
    pub event: String,
    pub from: Option<String>,
    pub to: String,
    /// Stored as its text (a string), as the tree it replaced was.
    pub payload: Option<Context>,
    pub at_ms: u64,
}

/// Who sends an event: clients may not send the engine's own `task.*` / `timer.*` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOrigin {
    Client,
    Engine,
}

/// Why a command was refused. Each maps to one API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("event {event:?} is not allowed in state {state:?}")]
    EventNotAllowed { state: String, event: String },
    #[error("workflow has finished with status {}", status.as_str())]
    Finished { status: Status },
    #[error("event {event:?} is emitted by the engine only")]
    EngineEvent { event: String },
    #[error("expected revision {expected}, workflow is at {current}")]
    RevisionMismatch { expected: u64, current: u64 },
}

/// Starts a workflow of `def` in its initial state.
pub fn create(
    def: &Definition,
    version: u32,
    id: &str,
    context: JsonObject,
    now_ms: u64,
) -> (Workflow, HistoryRow) {
    let initial = def.state(&def.initial);
    let status = initial
        .terminal
        .map(Status::of_terminal)
        .unwrap_or(Status::Running);
    let wf = Workflow {
        id: id.to_string(),
        definition: def.name.clone(),
        version,
        state: def.initial.clone(),
        status,
        revision: 1,
        context: Context::from_object(&context),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    };
    let row = HistoryRow {
        revision: 1,
        event: CREATED_EVENT.to_string(),
        from: None,
        to: def.initial.clone(),
        payload: (!wf.context.is_empty()).then(|| wf.context.clone()),
        at_ms: now_ms,
    };
    (wf, row)
}

/// Applies `event` to `wf`: the target state from the current state's `on` map, the payload
/// merged into the context at the top level, revision + 1.
pub fn fire_event(
    def: &Definition,
    wf: &Workflow,
    event: &str,
    payload: Option<Context>,
    expected_revision: Option<u64>,
    origin: EventOrigin,
    now_ms: u64,
) -> Result<(Workflow, HistoryRow), Rejection> {
    if origin == EventOrigin::Client && is_engine_event(event) {
        return Err(Rejection::EngineEvent {
            event: event.to_string(),
        });
    }
    check_revision(wf, expected_revision)?;
    if wf.status != Status::Running {
        return Err(Rejection::Finished { status: wf.status });
    }
    let Some(target) = def.state(&wf.state).on.get(event) else {
        if origin == EventOrigin::Engine && event == TASK_FAILED {
            // A task state without a `task.failed` handler fails the whole workflow, as an
            // unhandled error fails a Step Functions execution.
            let mut next = wf.clone();
            merge(&mut next.context, &payload);
            next.status = Status::Failed;
            return Ok(advance(wf, next, event, payload, now_ms));
        }
        return Err(Rejection::EventNotAllowed {
            state: wf.state.clone(),
            event: event.to_string(),
        });
    };
    let target_def = def.state(target);
    let mut next = wf.clone();
    merge(&mut next.context, &payload);
    next.state = target.clone();
    next.status = target_def
        .terminal
        .map(Status::of_terminal)
        .unwrap_or(Status::Running);
    Ok(advance(wf, next, event, payload, now_ms))
}

/// Ends a running workflow with status `cancelled`; its state stays where it was.
pub fn cancel(
    wf: &Workflow,
    reason: Option<String>,
    now_ms: u64,
) -> Result<(Workflow, HistoryRow), Rejection> {
    if wf.status != Status::Running {
        return Err(Rejection::Finished { status: wf.status });
    }
    let mut next = wf.clone();
    next.status = Status::Cancelled;
    let payload = reason.map(|r| {
        let mut m = JsonObject::new();
        m.insert("reason".to_string(), serde_json::Value::String(r));
        Context::from_object(&m)
    });
    Ok(advance(wf, next, CANCEL_EVENT, payload, now_ms))
}

/// Records an engine event that keeps the workflow where it is (a task attempt that failed
/// and will be retried): a history row and revision + 1, nothing else.
pub fn record(
    wf: &Workflow,
    event: &str,
    payload: Option<Context>,
    now_ms: u64,
) -> (Workflow, HistoryRow) {
    assert!(
        wf.status == Status::Running,
        "workflow {}: engine event {event} recorded after it finished",
        wf.id
    );
    advance(wf, wf.clone(), event, payload, now_ms)
}

fn merge(context: &mut Context, payload: &Option<Context>) {
    if let Some(p) = payload {
        context.merge_context(p);
    }
}

fn check_revision(wf: &Workflow, expected: Option<u64>) -> Result<(), Rejection> {
    match expected {
        Some(expected) if expected != wf.revision => Err(Rejection::RevisionMismatch {
            expected,
            current: wf.revision,
        }),
        _ => Ok(()),
    }
}

fn advance(
    prev: &Workflow,
    mut next: Workflow,
    event: &str,
    payload: Option<Context>,
    now_ms: u64,
) -> (Workflow, HistoryRow) {
    next.revision = prev.revision + 1;
    // A leader's clock may step back across elections; time in the record never does.
    next.updated_at_ms = now_ms.max(prev.updated_at_ms);
    let row = HistoryRow {
        revision: next.revision,
        event: event.to_string(),
        from: Some(prev.state.clone()),
        to: next.state.clone(),
        payload,
        at_ms: next.updated_at_ms,
    };
    (next, row)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn order() -> Definition {
        serde_json::from_value(json!({
            "name": "order",
            "initial": "created",
            "states": {
                "created":   {"on": {"pay": "paid", "cancel": "cancelled"}},
                "paid":      {"task": {"type": "ship"}, "on": {"task.completed": "shipped", "task.failed": "cancelled"}},
                "shipped":   {"timer_ms": 60000, "on": {"timer.fired": "delivered"}},
                "delivered": {"terminal": "succeeded"},
                "cancelled": {"terminal": "cancelled"}
            }
        }))
        .unwrap()
    }

    fn obj(v: serde_json::Value) -> JsonObject {
        v.as_object().unwrap().clone()
    }

    fn ctx(v: serde_json::Value) -> Context {
        Context::from_object(&obj(v))
    }

    #[test]
    fn create_starts_at_revision_one_in_initial_state() {
        let (wf, row) = create(&order(), 1, "o-1", obj(json!({"amount": 30})), 1000);
        assert_eq!(wf.state, "created");
        assert_eq!(wf.status, Status::Running);
        assert_eq!(wf.revision, 1);
        assert_eq!(row.event, "created");
        assert_eq!(row.from, None);
        assert_eq!(row.payload, Some(ctx(json!({"amount": 30}))));
    }

    #[test]
    fn event_moves_state_merges_payload_and_bumps_revision() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", obj(json!({"amount": 30, "a": 1})), 1000);
        let (wf2, row) = fire_event(
            &def,
            &wf,
            "pay",
            Some(ctx(json!({"a": 2, "card": "x"}))),
            Some(1),
            EventOrigin::Client,
            2000,
        )
        .unwrap();
        assert_eq!(wf2.state, "paid");
        assert_eq!(wf2.revision, 2);
        assert_eq!(
            wf2.context.to_object(),
            obj(json!({"amount": 30, "a": 2, "card": "x"}))
        );
        assert_eq!(row.from.as_deref(), Some("created"));
        assert_eq!(row.to, "paid");
        assert_eq!(wf2.updated_at_ms, 2000);
    }

    #[test]
    fn terminal_target_sets_status_and_then_events_are_refused() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", JsonObject::new(), 1);
        let (wf, _) = fire_event(&def, &wf, "cancel", None, None, EventOrigin::Client, 2).unwrap();
        assert_eq!(wf.status, Status::Cancelled);
        assert_eq!(
            fire_event(&def, &wf, "pay", None, None, EventOrigin::Client, 3),
            Err(Rejection::Finished {
                status: Status::Cancelled
            })
        );
        assert!(matches!(
            cancel(&wf, None, 4),
            Err(Rejection::Finished { .. })
        ));
    }

    #[test]
    fn clients_cannot_send_engine_events() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", JsonObject::new(), 1);
        let (wf, _) = fire_event(&def, &wf, "pay", None, None, EventOrigin::Client, 2).unwrap();
        assert!(matches!(
            fire_event(
                &def,
                &wf,
                "task.completed",
                None,
                None,
                EventOrigin::Client,
                3
            ),
            Err(Rejection::EngineEvent { .. })
        ));
        let (wf, _) = fire_event(
            &def,
            &wf,
            "task.completed",
            None,
            None,
            EventOrigin::Engine,
            3,
        )
        .unwrap();
        assert_eq!(wf.state, "shipped");
    }

    #[test]
    fn an_unhandled_task_failure_fails_the_workflow_in_place() {
        let def: Definition = serde_json::from_value(json!({
            "name": "x", "initial": "work",
            "states": {
                "work": {"task": {"type": "t"}, "on": {"task.completed": "done"}},
                "done": {"terminal": "succeeded"}
            }
        }))
        .unwrap();
        let (wf, _) = create(&def, 1, "w", JsonObject::new(), 1);
        let err = Some(ctx(json!({"error": "boom"})));
        let (wf2, row) =
            fire_event(&def, &wf, TASK_FAILED, err, None, EventOrigin::Engine, 2).unwrap();
        assert_eq!((wf2.state.as_str(), wf2.status), ("work", Status::Failed));
        assert_eq!(wf2.context.to_object(), obj(json!({"error": "boom"})));
        assert_eq!(row.event, TASK_FAILED);
        assert!(fire_event(&def, &wf, TASK_FAILED, None, None, EventOrigin::Client, 2).is_err());
    }

    #[test]
    fn a_recorded_retry_bumps_the_revision_only() {
        let (wf, _) = create(&order(), 1, "o-1", JsonObject::new(), 1);
        let (wf2, row) = record(&wf, TASK_RETRYING, Some(ctx(json!({"attempt": 2}))), 5);
        assert_eq!((wf2.revision, wf2.state.as_str()), (2, "created"));
        assert_eq!(wf2.context, wf.context);
        assert_eq!(
            (row.from.as_deref(), row.to.as_str()),
            (Some("created"), "created")
        );
    }

    #[test]
    fn revision_mismatch_reports_current() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", JsonObject::new(), 1);
        assert_eq!(
            fire_event(&def, &wf, "pay", None, Some(7), EventOrigin::Client, 2),
            Err(Rejection::RevisionMismatch {
                expected: 7,
                current: 1
            })
        );
    }

    #[test]
    fn unknown_event_is_not_allowed() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", JsonObject::new(), 1);
        assert!(matches!(
            fire_event(&def, &wf, "ship", None, None, EventOrigin::Client, 2),
            Err(Rejection::EventNotAllowed { .. })
        ));
    }

    #[test]
    fn cancel_keeps_state_and_records_reason() {
        let (wf, _) = create(&order(), 1, "o-1", JsonObject::new(), 1);
        let (wf2, row) = cancel(&wf, Some("customer".into()), 5).unwrap();
        assert_eq!(wf2.status, Status::Cancelled);
        assert_eq!(wf2.state, "created");
        assert_eq!(wf2.revision, 2);
        assert_eq!(row.event, CANCEL_EVENT);
        assert_eq!(row.payload, Some(ctx(json!({"reason": "customer"}))));
    }

    #[test]
    fn time_in_the_record_never_goes_back() {
        let def = order();
        let (wf, _) = create(&def, 1, "o-1", JsonObject::new(), 1000);
        let (wf2, row) = fire_event(&def, &wf, "pay", None, None, EventOrigin::Client, 10).unwrap();
        assert_eq!(wf2.updated_at_ms, 1000);
        assert_eq!(row.at_ms, 1000);
    }

    proptest! {
        /// Any sequence of events keeps the invariants: revision counts accepted events, a
        /// rejected event changes nothing, and a finished workflow stays finished.
        #[test]
        fn random_event_sequences_keep_invariants(
            events in proptest::collection::vec(
                prop_oneof![
                    Just("pay"), Just("cancel"), Just("task.completed"),
                    Just("task.failed"), Just("timer.fired"), Just("bogus")
                ],
                0..20,
            ),
            engine in proptest::collection::vec(any::<bool>(), 20),
        ) {
            let def = order();
            let (mut wf, _) = create(&def, 1, "p", JsonObject::new(), 1);
            let mut accepted = 0u64;
            for (i, ev) in events.iter().enumerate() {
                let origin = if engine[i] { EventOrigin::Engine } else { EventOrigin::Client };
                let was_finished = wf.status != Status::Running;
                if let Ok((next, row)) = fire_event(&def, &wf, ev, None, None, origin, 1 + i as u64) {
                        prop_assert!(!was_finished);
                        prop_assert_eq!(next.revision, wf.revision + 1);
                        prop_assert_eq!(row.revision, next.revision);
                        match def.state(&wf.state).on.get(*ev) {
                            Some(target) => prop_assert_eq!(target, &next.state),
                            None => {
                                // Only an unhandled engine `task.failed` ends a workflow in place.
                                prop_assert_eq!(*ev, "task.failed");
                                prop_assert_eq!(next.status, Status::Failed);
                            }
                        }
                        accepted += 1;
                        wf = next;
                }
                prop_assert_eq!(wf.revision, 1 + accepted);
            }
        }
    }
}
