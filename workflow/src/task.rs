//! Tasks and timers: the engine's own steps, as pure decisions over leader-stamped time.
//!
//! A task lives from the moment its workflow enters a `task` state until it completes, fails
//! for good, or is withdrawn because the workflow moved on. Workers hold it under a lease whose
//! token (a fencing token) the caller assigns and which only grows; every check here compares
//! against the time stamped into the log entry being applied, never a clock.

use serde::{Deserialize, Serialize};

use crate::{Definition, TaskSpec, Workflow};

/// Attempts a task gets when its spec does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Delay before the second attempt when the spec does not say.
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Growth of the delay per further attempt when the spec does not say.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// How long a lease lasts when neither the poll nor the spec says.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// The longest lease a worker may ask for, and the longest retry delay.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;

/// The id of the task a workflow opened by entering a state at `revision`. Workflow ids may
/// contain `:`, so the revision after the last `:` is what makes the id parseable.
pub fn task_id(workflow_id: &str, revision: u64) -> String {
    format!("{workflow_id}:{revision}")
}

/// The workflow id inside a task id, if the id has the task-id shape.
pub fn workflow_of_task(task_id: &str) -> Option<&str> {
    let (wf, rev) = task_id.rsplit_once(':')?;
    (!wf.is_empty() && !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_digit())).then_some(wf)
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for a worker.
    Ready,
    /// Failed an attempt; ready again at `until_ms`.
    Backoff { until_ms: u64 },
    /// Held by `worker` under the task's current token until `expires_at_ms`.
    Leased { worker: String, expires_at_ms: u64 },
    /// Completed under `token`; a repeat of that completion is answered, not applied again.
    Completed { token: u64 },
    /// Failed for good (attempts used up, or a non-retryable failure) under `token`.
    Failed { token: u64 },
    /// The workflow left the task's state (an event or a cancel) before the task finished.
    Withdrawn,
}

/// A task as stored and replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub workflow_id: String,
    pub task_type: String,
    /// The current attempt, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub backoff_multiplier: f64,
    /// Lease length when the poll does not ask for one.
    pub lease_ms: u64,
    /// The token of the latest lease; 0 before the first.
    pub token: u64,
    pub phase: Phase,
    pub last_error: Option<String>,
}

/// Why a lease-holder's request was refused (HTTP 409 `lease_lost`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    #[error("token {given} is not the task's current token {current}")]
    WrongToken { given: u64, current: u64 },
    #[error("the lease of token {token} expired at {expires_at_ms} ms")]
    Expired { token: u64, expires_at_ms: u64 },
    #[error("the task is not leased (it is {phase})")]
    NotLeased { phase: &'static str },
}

/// What a `fail` decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailDecision {
    /// Another attempt runs once the backoff ends at `until_ms`.
    Retry { attempt: u32, until_ms: u64 },
    /// No attempt is left (or the failure is not retryable): `task.failed` fires.
    Exhausted,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Backoff { .. } => "backoff",
            Phase::Leased { .. } => "leased",
            Phase::Completed { .. } => "completed",
            Phase::Failed { .. } => "failed",
            Phase::Withdrawn => "withdrawn",
        }
    }

    /// Whether the task still waits for a worker's outcome.
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            Phase::Ready | Phase::Backoff { .. } | Phase::Leased { .. }
        )
    }
}

impl Task {
    /// The task a workflow opens by entering a state with `spec` at `revision`.
    pub fn open(workflow_id: &str, revision: u64, spec: &TaskSpec) -> Task {
        Task {
            id: task_id(workflow_id, revision),
            workflow_id: workflow_id.to_string(),
            task_type: spec.task_type.clone(),
            attempt: 1,
            max_attempts: spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            backoff_ms: spec.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS),
            backoff_multiplier: spec
                .backoff_multiplier
                .unwrap_or(DEFAULT_BACKOFF_MULTIPLIER),
            lease_ms: spec.lease_ms.unwrap_or(DEFAULT_LEASE_MS).min(MAX_LEASE_MS),
            token: 0,
            phase: Phase::Ready,
            last_error: None,
        }
    }

    /// Whether a worker may take the task at `now_ms`: ready, or leased under a lease that
    /// has run out (which the next tick would have turned back into ready anyway).
    pub fn is_available(&self, now_ms: u64) -> bool {
        match &self.phase {
            Phase::Ready => true,
            Phase::Leased { expires_at_ms, .. } => *expires_at_ms <= now_ms,
            _ => false,
        }
    }

    /// Hands the task to `worker` under `token` until `now_ms + lease_ms`.
    pub fn lease(&mut self, token: u64, worker: &str, lease_ms: u64, now_ms: u64) -> u64 {
        assert!(
            token > self.token,
            "task {}: lease token must grow ({} after {})",
            self.id,
            token,
            self.token
        );
        assert!(
            self.is_available(now_ms),
            "task {}: leased while {}",
            self.id,
            self.phase.name()
        );
        let expires_at_ms = now_ms.saturating_add(lease_ms.clamp(1, MAX_LEASE_MS));
        self.token = token;
        self.phase = Phase::Leased {
            worker: worker.to_string(),
            expires_at_ms,
        };
        expires_at_ms
    }

    /// Whether `token` holds a live lease at `now_ms`.
    pub fn check_lease(&self, token: u64, now_ms: u64) -> Result<(), LeaseLost> {
        match &self.phase {
            Phase::Leased { expires_at_ms, .. } => {
                if token != self.token {
                    Err(LeaseLost::WrongToken {
                        given: token,
                        current: self.token,
                    })
                } else if *expires_at_ms <= now_ms {
                    Err(LeaseLost::Expired {
                        token,
                        expires_at_ms: *expires_at_ms,
                    })
                } else {
                    Ok(())
                }
            }
            other => Err(LeaseLost::NotLeased {
                phase: other.name(),
            }),
        }
    }

    /// Extends a live lease to `now_ms + lease_ms`.
    pub fn heartbeat(&mut self, token: u64, lease_ms: u64, now_ms: u64) -> Result<u64, LeaseLost> {
        self.check_lease(token, now_ms)?;
        let expires_at_ms = now_ms.saturating_add(lease_ms.clamp(1, MAX_LEASE_MS));
        if let Phase::Leased {
            expires_at_ms: e, ..
        } = &mut self.phase
        {
            *e = expires_at_ms;
        }
        Ok(expires_at_ms)
    }

    /// Records a failed attempt under a live lease and decides what follows.
    pub fn fail(
        &mut self,
        token: u64,
        error: &str,
        retryable: bool,
        now_ms: u64,
    ) -> Result<FailDecision, LeaseLost> {
        self.check_lease(token, now_ms)?;
        self.last_error = Some(error.to_string());
        if retryable && self.attempt < self.max_attempts {
            let until_ms = now_ms.saturating_add(self.backoff_after(self.attempt));
            self.attempt += 1;
            self.phase = Phase::Backoff { until_ms };
            Ok(FailDecision::Retry {
                attempt: self.attempt,
                until_ms,
            })
        } else {
            self.phase = Phase::Failed { token };
            Ok(FailDecision::Exhausted)
        }
    }

    /// `backoff_ms × backoff_multiplier^(attempt-1)`, capped at [`MAX_LEASE_MS`].
    pub fn backoff_after(&self, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let ms = self.backoff_ms as f64 * self.backoff_multiplier.powi(exp);
        if ms.is_finite() {
            (ms as u64).min(MAX_LEASE_MS)
        } else {
            MAX_LEASE_MS
        }
    }

    /// Completes the task under a live lease. A repeat of the completion that already
    /// happened (same token) is `Ok(false)`: answered, changing nothing.
    pub fn complete(&mut self, token: u64, now_ms: u64) -> Result<bool, LeaseLost> {
        if self.phase == (Phase::Completed { token }) {
            return Ok(false);
        }
        self.check_lease(token, now_ms)?;
        self.phase = Phase::Completed { token };
        Ok(true)
    }

    /// Time has reached `now_ms`: an expired lease or a finished backoff makes the task
    /// ready. Returns whether the task changed.
    pub fn advance_to(&mut self, now_ms: u64) -> bool {
        let due = match &self.phase {
            Phase::Leased { expires_at_ms, .. } => *expires_at_ms <= now_ms,
            Phase::Backoff { until_ms } => *until_ms <= now_ms,
            _ => false,
        };
        if due {
            self.phase = Phase::Ready;
        }
        due
    }

    /// When the task next needs the clock: a lease expiry or the end of a backoff.
    pub fn deadline_ms(&self) -> Option<u64> {
        match &self.phase {
            Phase::Leased { expires_at_ms, .. } => Some(*expires_at_ms),
            Phase::Backoff { until_ms } => Some(*until_ms),
            _ => None,
        }
    }
}

/// The engine step a workflow is waiting on in its current state.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Task(Task),
    /// `timer.fired` is due at `due_ms`.
    Timer {
        due_ms: u64,
    },
}

/// The step `wf` opens in the state it is in now (just entered at `wf.revision`), if any.
pub fn step_on_entry(def: &Definition, wf: &Workflow) -> Option<Step> {
    if wf.status != crate::Status::Running {
        return None;
    }
    let state = def.state(&wf.state);
    if let Some(spec) = &state.task {
        return Some(Step::Task(Task::open(&wf.id, wf.revision, spec)));
    }
    state.timer_ms.map(|ms| Step::Timer {
        due_ms: wf.updated_at_ms.saturating_add(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            task_type: "ship".into(),
            max_attempts: Some(3),
            backoff_ms: Some(100),
            backoff_multiplier: Some(2.0),
            lease_ms: Some(1000),
        }
    }

    #[test]
    fn task_ids_carry_their_workflow() {
        assert_eq!(task_id("order:17", 2), "order:17:2");
        assert_eq!(workflow_of_task("order:17:2"), Some("order:17"));
        assert_eq!(workflow_of_task("order"), None);
        assert_eq!(workflow_of_task("order:x"), None);
        assert_eq!(workflow_of_task(":2"), None);
    }

    #[test]
    fn lease_expiry_makes_the_task_available_and_old_tokens_lose() {
        let mut t = Task::open("w", 2, &spec());
        assert_eq!(t.lease(5, "a", 1000, 10), 1010);
        assert!(!t.is_available(1009));
        assert!(t.is_available(1010));
        assert_eq!(
            t.check_lease(5, 1010),
            Err(LeaseLost::Expired {
                token: 5,
                expires_at_ms: 1010
            })
        );
        assert!(t.advance_to(1010));
        assert_eq!(t.phase, Phase::Ready);
        t.lease(9, "b", 1000, 1020);
        assert_eq!(
            t.complete(5, 1030),
            Err(LeaseLost::WrongToken {
                given: 5,
                current: 9
            })
        );
        assert_eq!(t.complete(9, 1030), Ok(true));
        assert_eq!(t.complete(9, 1040), Ok(false), "a repeat is answered");
        assert!(t.complete(5, 1040).is_err());
    }

    #[test]
    #[should_panic(expected = "lease token must grow")]
    fn tokens_never_go_back() {
        let mut t = Task::open("w", 2, &spec());
        t.lease(5, "a", 10, 0);
        t.advance_to(100);
        t.lease(5, "b", 10, 100);
    }

    #[test]
    fn heartbeat_extends_a_live_lease_only() {
        let mut t = Task::open("w", 2, &spec());
        t.lease(1, "a", 100, 0);
        assert_eq!(t.heartbeat(1, 500, 50), Ok(550));
        assert!(!t.is_available(549));
        assert!(t.heartbeat(2, 500, 60).is_err());
        assert!(t.heartbeat(1, 500, 550).is_err(), "expired");
    }

    #[test]
    fn failures_back_off_exponentially_until_attempts_run_out() {
        let mut t = Task::open("w", 2, &spec());
        t.lease(1, "a", 1000, 0);
        assert_eq!(
            t.fail(1, "boom", true, 10),
            Ok(FailDecision::Retry {
                attempt: 2,
                until_ms: 110
            })
        );
        assert!(!t.is_available(200), "backoff ends only by a tick");
        assert!(!t.advance_to(109));
        assert!(t.advance_to(110));
        t.lease(2, "a", 1000, 110);
        assert_eq!(
            t.fail(2, "boom", true, 120),
            Ok(FailDecision::Retry {
                attempt: 3,
                until_ms: 320
            })
        );
        t.advance_to(320);
        t.lease(3, "a", 1000, 320);
        assert_eq!(t.fail(3, "boom", true, 330), Ok(FailDecision::Exhausted));
        assert_eq!(t.phase, Phase::Failed { token: 3 });
        assert_eq!(t.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_non_retryable_failure_ends_at_once() {
        let mut t = Task::open("w", 2, &spec());
        t.lease(1, "a", 1000, 0);
        assert_eq!(
            t.fail(1, "bad input", false, 1),
            Ok(FailDecision::Exhausted)
        );
    }

    #[test]
    fn backoff_is_capped() {
        let mut s = spec();
        s.backoff_multiplier = Some(1e300);
        let t = Task::open("w", 2, &s);
        assert_eq!(t.backoff_after(1), 100);
        assert_eq!(t.backoff_after(5), MAX_LEASE_MS);
    }

    #[test]
    fn defaults_apply_when_the_spec_is_silent() {
        let t = Task::open(
            "w",
            1,
            &TaskSpec {
                task_type: "x".into(),
                max_attempts: None,
                backoff_ms: None,
                backoff_multiplier: None,
                lease_ms: None,
            },
        );
        assert_eq!(
            (t.max_attempts, t.backoff_ms, t.lease_ms),
            (DEFAULT_MAX_ATTEMPTS, DEFAULT_BACKOFF_MS, DEFAULT_LEASE_MS)
        );
    }
}
