//! Fuzzing of definition parsing, the other input a node takes from anyone with a token: a
//! definition is parsed and checked by the API, then drives every workflow of it inside apply,
//! where a panic would stop the node's group. Generated definitions mix valid and dangling state
//! references, tasks with extreme retry settings, timers of any length and terminal states;
//! every one the checks accept must create workflows that take any sequence of events, engine
//! events included, and a cancel, without a panic, and must read back as itself from its JSON.
//! Random text must be refused or parsed, never crash. `RAFTFLOW_FUZZ_CASES` sets the cases
//! (default 20,000 each).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use raftflow_workflow::{
    cancel, create, fire_event, step_on_entry, Definition, EventOrigin, JsonObject, Status, Step,
    TASK_COMPLETED, TASK_FAILED, TIMER_FIRED,
};
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("RAFTFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// State names, mostly from a small pool so that references often resolve; sometimes odd.
fn state_name() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => prop::sample::select(vec!["a", "b", "c", "done"]).prop_map(String::from),
        1 => Just(String::new()),
        1 => "[ -~]{0,12}",
        1 => "\\PC{0,6}",
    ]
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => prop::sample::select(vec!["go", "back", "stop"]).prop_map(String::from),
        3 => prop::sample::select(vec![TASK_COMPLETED, TASK_FAILED, TIMER_FIRED, "created", "cancel"])
            .prop_map(String::from),
        1 => "[ -~]{0,10}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        30 => (1u32..100_000).prop_map(|n| json!(n)),
        1 => Just(json!(0)),
        1 => Just(json!(1)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!(f64::MAX)),
        1 => Just(json!(null)),
        1 => Just(json!("7")),
        1 => any::<u32>().prop_map(|n| json!(n)),
    ]
}

fn state_def() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map(event_name(), state_name(), 0..3),
        prop::option::weighted(
            0.3,
            (
                prop_oneof![20 => "[a-z]{1,6}", 1 => "[ -~]{0,8}"],
                prop::option::of(number()),
                prop::option::of(number()),
                prop::option::of(number()),
                prop::option::of(number()),
            ),
        ),
        prop::option::weighted(0.2, number()),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec![
                "succeeded",
                "failed",
                "cancelled",
                "succeeded",
                "bogus",
            ]),
        ),
        prop::option::weighted(0.01, Just(json!({"unknown": true}))),
    )
        .prop_map(|(on, task, timer, terminal, extra)| {
            let mut s = serde_json::Map::new();
            if !on.is_empty() {
                s.insert("on".into(), json!(on));
            }
            if let Some((t, max_attempts, backoff, mult, lease)) = task {
                let mut spec = serde_json::Map::new();
                spec.insert("type".into(), json!(t));
                for (k, v) in [
                    ("max_attempts", max_attempts),
                    ("backoff_ms", backoff),
                    ("backoff_multiplier", mult),
                    ("lease_ms", lease),
                ] {
                    if let Some(v) = v {
                        spec.insert(k.into(), v);
                    }
                }
                s.insert("task".into(), Value::Object(spec));
            }
            if let Some(t) = timer {
                s.insert("timer_ms".into(), t);
            }
            if let Some(t) = terminal {
                s.insert("terminal".into(), json!(t));
            }
            if let Some(Value::Object(x)) = extra {
                s.extend(x);
            }
            Value::Object(s)
        })
}

/// Anything shaped like a definition: mostly refused.
fn loose_definition() -> impl Strategy<Value = Value> {
    (
        prop_oneof![20 => Just("d".to_string()), 1 => "[ -~]{0,70}"],
        prop_oneof![10 => Just("a".to_string()), 1 => state_name()],
        prop::collection::btree_map(state_name(), state_def(), 0..5),
    )
        .prop_map(
            |(name, initial, states)| json!({"name": name, "initial": initial, "states": states}),
        )
}

/// A valid definition by construction: states `s0..sN`, each reaching the next with `go`,
/// the last terminal; each other state plain, a task state (with any retry settings) or a
/// timer state, with extra events to any state.
fn valid_definition() -> impl Strategy<Value = Value> {
    let state = (
        0u8..3,
        prop::collection::vec(
            (prop::sample::select(vec!["back", "stop", "x.y"]), 0usize..8),
            0..3,
        ),
        prop::option::of(1u32..20),
        prop::option::of(0u64..10_000_000),
        prop::option::of(prop_oneof![Just(1.0f64), 1.0f64..1e6, Just(1e300)]),
        1u64..u64::MAX,
        any::<bool>(),
    );
    (
        prop::collection::vec(state, 1..6),
        prop::sample::select(vec!["succeeded", "failed", "cancelled"]),
    )
        .prop_map(|(states, end)| {
            let n = states.len();
            let mut out = serde_json::Map::new();
            for (i, (kind, extra, attempts, backoff, mult, ms, handle_failed)) in
                states.into_iter().enumerate()
            {
                let next = format!("s{}", i + 1);
                let mut on = serde_json::Map::new();
                on.insert("go".into(), json!(next));
                for (event, to) in extra {
                    on.insert(event.into(), json!(format!("s{}", to % (n + 1))));
                }
                let mut st = serde_json::Map::new();
                match kind {
                    1 => {
                        on.insert(TASK_COMPLETED.into(), json!(next));
                        if handle_failed {
                            on.insert(TASK_FAILED.into(), json!("s0"));
                        }
                        let mut t = json!({"type": "t", "lease_ms": ms % 1_000_000 + 1});
                        if let Some(a) = attempts {
                            t["max_attempts"] = json!(a);
                        }
                        if let Some(b) = backoff {
                            t["backoff_ms"] = json!(b);
                        }
                        if let Some(m) = mult {
                            t["backoff_multiplier"] = json!(m);
                        }
                        st.insert("task".into(), t);
                    }
                    2 => {
                        on.insert(TIMER_FIRED.into(), json!(next));
                        st.insert("timer_ms".into(), json!(ms));
                    }
                    _ => {}
                }
                st.insert("on".into(), Value::Object(on));
                out.insert(format!("s{i}"), Value::Object(st));
            }
            out.insert(format!("s{n}"), json!({"terminal": end}));
            json!({"name": "d", "initial": "s0", "states": out})
        })
}

fn definition() -> impl Strategy<Value = Value> {
    prop_oneof![loose_definition(), valid_definition()]
}

/// Drives a workflow of an accepted `def` through `events` (each as engine or client), as
/// apply would: open steps, timers and tasks included. Must not panic.
fn drive(def: &Definition, events: &[(String, bool)]) -> Result<(), TestCaseError> {
    let (mut wf, _) = create(def, 1, "wf", JsonObject::new(), 1_000);
    for (i, (event, engine)) in events.iter().enumerate() {
        let now = 1_000 + i as u64;
        if let Some(Step::Task(mut task)) = step_on_entry(def, &wf) {
            // Retry arithmetic with whatever the definition set.
            let _ = task.lease(1, "w", task.lease_ms, now);
            let _ = task.fail(1, "boom", true, now);
        }
        let origin = if *engine {
            EventOrigin::Engine
        } else {
            EventOrigin::Client
        };
        let was_running = wf.status == Status::Running;
        if let Ok((next, row)) = fire_event(def, &wf, event, None, None, origin, now) {
            prop_assert!(was_running);
            prop_assert_eq!(next.revision, wf.revision + 1);
            prop_assert_eq!(row.revision, next.revision);
            wf = next;
        }
    }
    if wf.status == Status::Running {
        let (cancelled, _) = cancel(&wf, Some("fuzz".into()), 2_000).unwrap();
        prop_assert_eq!(cancelled.status, Status::Cancelled);
    } else {
        prop_assert!(cancel(&wf, None, 2_000).is_err());
    }
    Ok(())
}

#[test]
fn generated_definitions_are_refused_or_run_without_a_panic() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(
            &(
                definition(),
                prop::collection::vec((event_name(), any::<bool>()), 0..12),
            ),
            |(json, events)| {
                let Ok(def) = serde_json::from_value::<Definition>(json) else {
                    return Ok(());
                };
                if !def.problems().is_empty() {
                    return Ok(());
                }
                accepted.set(accepted.get() + 1);
                // What the API stores reads back as the same definition.
                let text = serde_json::to_string(&def).unwrap();
                let back: Definition = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(&back, &def);
                prop_assert!(back.problems().is_empty());
                drive(&def, &events)
            },
        )
        .unwrap();
    eprintln!(
        "definition fuzz: {} generated, {} accepted and driven",
        cases(),
        accepted.get()
    );
    // The generator reaches past the checks: a run where nothing was accepted drove nothing.
    assert!(accepted.get() > cases() / 50, "{} accepted", accepted.get());
}

#[test]
fn random_text_is_refused_or_parsed() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&"\\PC{0,200}", |text| {
            if let Ok(def) = serde_json::from_str::<Definition>(&text) {
                let _ = def.problems();
            }
            Ok(())
        })
        .unwrap();
}
