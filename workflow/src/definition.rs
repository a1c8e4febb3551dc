//! Workflow definitions (state machines) and their validation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// Longest definition, state, event or task-type name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest workflow id.
pub const MAX_ID_LEN: usize = 128;

/// Engine-emitted events; a client may not send these.
const ENGINE_EVENT_PREFIXES: [&str; 2] = ["task.", "timer."];
use crate::transition::{TASK_COMPLETED, TASK_FAILED, TIMER_FIRED};

/// `[A-Za-z0-9_.-]{1,64}`: definition, state, event and task-type names.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[A-Za-z0-9_.:-]{1,128}`: workflow ids.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether an event name is reserved for the engine (`task.*`, `timer.*`).
pub fn is_engine_event(event: &str) -> bool {
    ENGINE_EVENT_PREFIXES.iter().any(|p| event.starts_with(p))
}

/// How a terminal state ends a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminal {
    Succeeded,
    Failed,
    Cancelled,
}

/// The work a task state hands to workers; unset fields take the defaults in [`crate::task`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(rename = "type")]
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// One state of a definition.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    /// event name -> target state
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub on: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Terminal>,
}

/// A state-machine definition as the API accepts and returns it.
///
/// Stored as JSON text: its serde shape is the API's, with optional fields skipped, which a
/// non-self-describing codec such as bincode cannot read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    pub initial: String,
    pub states: BTreeMap<String, StateDef>,
}

impl Definition {
    /// Every problem with this definition, in a stable order; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !is_valid_name(&self.name) {
            problems.push(format!(
                "name {:?} must match [A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}",
                self.name
            ));
        }
        if self.states.is_empty() {
            problems.push("states must not be empty".to_string());
        }
        if !self.states.contains_key(&self.initial) {
            problems.push(format!(
                "initial state {:?} is not a defined state",
                self.initial
            ));
        }
        for (name, state) in &self.states {
            self.state_problems(name, state, &mut problems);
        }
        if self.states.contains_key(&self.initial) {
            for name in self.unreachable_states() {
                problems.push(format!(
                    "state {name:?} is not reachable from initial state {:?}",
                    self.initial
                ));
            }
        }
        problems
    }

    fn state_problems(&self, name: &str, state: &StateDef, problems: &mut Vec<String>) {
        if !is_valid_name(name) {
            problems.push(format!(
                "state name {name:?} must match [A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}"
            ));
        }
        for (event, target) in &state.on {
            if !is_valid_name(event) {
                problems.push(format!(
                    "state {name:?}: event name {event:?} must match [A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}"
                ));
            }
            if !self.states.contains_key(target) {
                problems.push(format!(
                    "state {name:?}: event {event:?} targets undefined state {target:?}"
                ));
            }
            if is_engine_event(event)
                && ![TASK_COMPLETED, TASK_FAILED, TIMER_FIRED].contains(&event.as_str())
            {
                problems.push(format!(
                    "state {name:?}: {event:?} is not an engine event (task.completed, task.failed, timer.fired)"
                ));
            }
            if (event == TASK_COMPLETED || event == TASK_FAILED) && state.task.is_none() {
                problems.push(format!("state {name:?}: handles {event:?} but has no task"));
            }
            if event == TIMER_FIRED && state.timer_ms.is_none() {
                problems.push(format!(
                    "state {name:?}: handles \"timer.fired\" but has no timer_ms"
                ));
            }
        }
        if state.terminal.is_some() {
            if !state.on.is_empty() {
                problems.push(format!(
                    "state {name:?}: a terminal state must not have `on`"
                ));
            }
            if state.task.is_some() || state.timer_ms.is_some() {
                problems.push(format!(
                    "state {name:?}: a terminal state must not have a task or timer"
                ));
            }
        } else if state.on.is_empty() {
            problems.push(format!(
                "state {name:?}: a non-terminal state needs at least one outgoing event"
            ));
        }
        if let Some(task) = &state.task {
            if !is_valid_name(&task.task_type) {
                problems.push(format!(
                    "state {name:?}: task type {:?} must match [A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}",
                    task.task_type
                ));
            }
            if !state.on.contains_key(TASK_COMPLETED) {
                problems.push(format!(
                    "state {name:?}: a task state must handle \"task.completed\""
                ));
            }
            if task.max_attempts == Some(0) {
                problems.push(format!(
                    "state {name:?}: task max_attempts must be at least 1"
                ));
            }
            if task.lease_ms == Some(0) {
                problems.push(format!("state {name:?}: task lease_ms must be at least 1"));
            }
            if let Some(m) = task.backoff_multiplier {
                if !(m.is_finite() && m >= 1.0) {
                    problems.push(format!(
                        "state {name:?}: task backoff_multiplier must be a finite number >= 1"
                    ));
                }
            }
        }
        if let Some(timer_ms) = state.timer_ms {
            if timer_ms == 0 {
                problems.push(format!("state {name:?}: timer_ms must be at least 1"));
            }
            if !state.on.contains_key(TIMER_FIRED) {
                problems.push(format!(
                    "state {name:?}: a timer state must handle \"timer.fired\""
                ));
            }
        }
    }

    /// States that no path of events from `initial` reaches, in name order.
    fn unreachable_states(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([self.initial.as_str()]);
        while let Some(name) = queue.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            if let Some(state) = self.states.get(name) {
                for target in state.on.values() {
                    if self.states.contains_key(target) && !seen.contains(target.as_str()) {
                        queue.push_back(target);
                    }
                }
            }
        }
        self.states
            .keys()
            .map(String::as_str)
            .filter(|s| !seen.contains(s))
            .collect()
    }

    /// The state named `name`. Panics if absent: a stored workflow always names a state of
    /// its pinned, validated definition, so absence is corruption.
    pub fn state(&self, name: &str) -> &StateDef {
        self.states.get(name).unwrap_or_else(|| {
            panic!(
                "definition {:?} has no state {name:?}: stored data is corrupt",
                self.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn order() -> Definition {
        serde_json::from_str(
            r#"{
            "name": "order",
            "initial": "created",
            "states": {
                "created":   {"on": {"pay": "paid", "cancel": "cancelled"}},
                "paid":      {"task": {"type": "ship"}, "on": {"task.completed": "shipped", "task.failed": "cancelled"}},
                "shipped":   {"timer_ms": 60000, "on": {"timer.fired": "delivered"}},
                "delivered": {"terminal": "succeeded"},
                "cancelled": {"terminal": "cancelled"}
            }}"#,
        )
        .unwrap()
    }

    #[test]
    fn api_example_definition_is_valid() {
        assert_eq!(order().problems(), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_listed() {
        let def: Definition = serde_json::from_str(
            r#"{
            "name": "bad name!",
            "initial": "nope",
            "states": {
                "a": {"on": {"go": "missing"}},
                "b": {"terminal": "failed", "on": {"x": "a"}},
                "c": {},
                "t": {"task": {"type": "ship"}, "on": {"x": "a"}},
                "w": {"timer_ms": 5, "on": {"x": "a"}}
            }}"#,
        )
        .unwrap();
        let problems = def.problems();
        let expect = [
            "name \"bad name!\"",
            "initial state \"nope\" is not a defined state",
            "state \"a\": event \"go\" targets undefined state \"missing\"",
            "state \"b\": a terminal state must not have `on`",
            "state \"c\": a non-terminal state needs at least one outgoing event",
            "state \"t\": a task state must handle \"task.completed\"",
            "state \"w\": a timer state must handle \"timer.fired\"",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.contains(e)),
                "missing problem {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    #[test]
    fn unreachable_state_is_a_problem() {
        let def: Definition = serde_json::from_str(
            r#"{"name": "x", "initial": "a", "states": {
                "a": {"on": {"go": "b"}}, "b": {"terminal": "succeeded"},
                "island": {"terminal": "failed"}}}"#,
        )
        .unwrap();
        assert_eq!(
            def.problems(),
            vec!["state \"island\" is not reachable from initial state \"a\"".to_string()]
        );
    }

    #[test]
    fn engine_events_need_their_step() {
        let def: Definition = serde_json::from_str(
            r#"{"name": "x", "initial": "a", "states": {
                "a": {"on": {"task.completed": "b", "timer.fired": "b", "task.other": "b"}},
                "b": {"terminal": "succeeded"}}}"#,
        )
        .unwrap();
        let problems = def.problems();
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Definition>(
            r#"{"name": "x", "initial": "a", "states": {"a": {"terminl": "failed"}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn names_and_ids_follow_their_alphabets() {
        assert!(is_valid_name("order-v2.1_x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a:b"));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(is_valid_id("order:17"));
        assert!(is_valid_id(&"x".repeat(128)));
        assert!(!is_valid_id(&"x".repeat(129)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("ä"));
    }
}
