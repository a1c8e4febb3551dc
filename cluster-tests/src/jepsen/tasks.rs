//! The task workload: workflows whose first state is a task and whose second is a timer.
//! Workers poll, sometimes pause beyond their lease, sometimes re-send a completion with an
//! older token they saw for the same task, sometimes fail an attempt, sometimes complete twice.
//!
//! After heal and drain, [`check_tasks`] asks of the history: every task of every created
//! workflow completed exactly once and its timer fired exactly once, not before due; no
//! completion with a stale token was accepted; the tokens handed out for one task strictly
//! increase and are never handed out twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::history::{Paired, Recorder};
use raftflow_client::client::{Client, ClientError};
use raftflow_client::types::{CompleteTask, CreateWorkflow, FailTask, PollTasks};

pub const TASK_DEFINITION: &str = "jepsen-task";
const TASK_TYPE: &str = "jepsen";
/// The timer after the task.
pub const TIMER_MS: u64 = 500;
/// Leases are short, so pauses outlast them.
const LEASE_MS: u64 = 1000;
/// A pausing worker sleeps this long holding its lease.
const PAUSE: Duration = Duration::from_millis(1300);
const CREATORS: u64 = 2;
const WORKERS: u64 = 4;
/// Key prefix of the workload's workflows.
pub const KEY_PREFIX: &str = "task-";
/// How long the workers get after the heal to finish every task.
const DRAIN: Duration = Duration::from_secs(40);

pub fn definition() -> Value {
    json!({
        "name": TASK_DEFINITION,
        "initial": "work",
        "states": {
            "work": {"task": {"type": TASK_TYPE, "lease_ms": LEASE_MS, "max_attempts": 1000,
                              "backoff_ms": 100, "backoff_multiplier": 1.0},
                     "on": {"task.completed": "wait"}},
            "wait": {"timer_ms": TIMER_MS, "on": {"timer.fired": "done"}},
            "done": {"terminal": "succeeded"}
        }
    })
}

/// The workload's shared state.
pub struct TaskWorkload {
    pub rec: Arc<Recorder>,
    clients: Vec<Client>,
    run: String,
    /// Creators stop.
    pub stop: AtomicBool,
    /// Workers stop (after the drain).
    pub workers_stop: AtomicBool,
    pub keys: Mutex<Vec<String>>,
    /// Every token seen handed out per task, for stale re-sends.
    tokens: Mutex<HashMap<String, Vec<u64>>>,
    next: AtomicU64,
}

fn node_client(clients: &[Client], node: u64) -> &Client {
    &clients[(node - 1) as usize]
}

fn indeterminate(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => *status >= 500,
    }
}

impl TaskWorkload {
    pub fn new(rec: Arc<Recorder>, clients: Vec<Client>, run: String) -> Arc<Self> {
        Arc::new(TaskWorkload {
            rec,
            clients,
            run,
            stop: AtomicBool::new(false),
            workers_stop: AtomicBool::new(false),
            keys: Mutex::default(),
            tokens: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Spawns the creators and the workers.
    pub fn spawn(self: &Arc<Self>, seed: u64) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for c in 0..CREATORS {
            handles.push(tokio::spawn(self.clone().creator(seed ^ (0x300 + c))));
        }
        for w in 0..WORKERS {
            handles.push(tokio::spawn(self.clone().worker(w, seed ^ (0x400 + w))));
        }
        handles
    }

    async fn creator(self: Arc<Self>, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut process = self.rec.process();
        while !self.stop.load(Ordering::Relaxed) {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let key = format!("{KEY_PREFIX}{}-{n}", self.run);
            self.keys.lock().await.push(key.clone());
            let node = rng.gen_range(1..=3u64);
            let req = CreateWorkflow {
                id: Some(key.clone()),
                definition: TASK_DEFINITION.into(),
                version: Some(1),
                context: Some(json!({"n": n})),
            };
            let op = self.rec.invoke(process, "tcreate", &key, Value::Null, node);
            match node_client(&self.clients, node).create_workflow(&req).await {
                Ok(_) => op.ok(Value::Null),
                Err(e) if indeterminate(&e) => {
                    op.info(json!(e.to_string()));
                    process = self.rec.process();
                }
                Err(e) => op.fail(json!(e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn worker(self: Arc<Self>, slot: u64, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut process = self.rec.process();
        let name = format!("w{slot}");
        while !self.workers_stop.load(Ordering::Relaxed) {
            let node = rng.gen_range(1..=3u64);
            let c = node_client(&self.clients, node);
            let req = PollTasks {
                types: vec![TASK_TYPE.into()],
                worker: name.clone(),
                max: Some(1),
                wait_ms: Some(500),
                lease_ms: None,
            };
            let op = self.rec.invoke(process, "tpoll", "", Value::Null, node);
            let task = match c.poll_tasks(&req).await {
                Ok(mut list) => match list.tasks.pop() {
                    Some(t) => {
                        op.ok(json!({"task": t.id, "token": t.lease_token}));
                        t
                    }
                    None => {
                        op.ok(json!({"task": null}));
                        continue;
                    }
                },
                Err(e) => {
                    // A poll with no answer may have leased a task nobody will run; its lease
                    // expires and the task goes to someone else.
                    if indeterminate(&e) {
                        op.info(json!(e.to_string()));
                        process = self.rec.process();
                    } else {
                        op.fail(json!(e.to_string()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let older = {
                let mut tokens = self.tokens.lock().await;
                let seen = tokens.entry(task.id.clone()).or_default();
                let older = seen.iter().copied().filter(|t| *t < task.lease_token).min();
                seen.push(task.lease_token);
                older
            };
            // A worker that still holds an older lease's token tries it first: refused (the
            // checker fails the run if it is not), and then completes with the new one.
            if let Some(old) = older.filter(|_| rng.gen_bool(0.5)) {
                self.report(&mut process, node, &task.id, old, false).await;
            }
            let roll: f64 = rng.gen();
            if roll < 0.1 {
                tokio::time::sleep(PAUSE).await;
            } else if roll < 0.15 {
                self.report(&mut process, node, &task.id, task.lease_token, true)
                    .await;
                continue;
            }
            let node = rng.gen_range(1..=3u64);
            let ok = self
                .report(&mut process, node, &task.id, task.lease_token, false)
                .await;
            if ok && rng.gen_bool(0.1) {
                // Completing twice: answered again, applied once.
                self.report(&mut process, node, &task.id, task.lease_token, false)
                    .await;
            }
        }
    }

    /// Completes (or fails) `task` with `token`; returns whether the answer was `ok`. A
    /// completion's output carries its token, so the history shows whose completion won.
    async fn report(
        &self,
        process: &mut u64,
        node: u64,
        task: &str,
        token: u64,
        fail: bool,
    ) -> bool {
        let c = node_client(&self.clients, node);
        let f = if fail { "tfail" } else { "tcomplete" };
        let op = self
            .rec
            .invoke(*process, f, task, json!({"token": token}), node);
        let r = if fail {
            let req = FailTask {
                lease_token: token,
                error: "jepsen says no".into(),
                retryable: Some(true),
            };
            c.fail_task(task, &req).await.map(|_| ())
        } else {
            let req = CompleteTask {
                lease_token: token,
                output: Some(json!({"done_by": token})),
            };
            c.complete_task(task, &req).await.map(|_| ())
        };
        match r {
            Ok(()) => {
                op.ok(json!({"token": token}));
                true
            }
            Err(e) if indeterminate(&e) => {
                op.info(json!(e.to_string()));
                *process = self.rec.process();
                false
            }
            Err(e) => {
                op.fail(json!({"code": e.code()}));
                false
            }
        }
    }

    /// After the heal: waits (bounded) until every workflow the creators tried has finished
    /// or is known not to exist, then stops the workers.
    pub async fn drain(&self) {
        let deadline = Instant::now() + DRAIN;
        let keys = self.keys.lock().await.clone();
        let mut pending: Vec<String> = keys;
        let c = &self.clients[0];
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for key in pending {
                match c.get_workflow(&key, false).await {
                    Ok(wf) if wf.status != "running" => {}
                    Err(ClientError::Api { status: 404, .. }) => {}
                    _ => still.push(key),
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        self.workers_stop.store(true, Ordering::Relaxed);
    }

    /// Final read of one workflow: status and its engine events.
    pub async fn final_read(c: &Client, key: &str) -> Result<Value, ClientError> {
        let wf = match c.get_workflow(key, false).await {
            Ok(wf) => wf,
            Err(ClientError::Api { status: 404, .. }) => return Ok(json!({"missing": true})),
            Err(e) => return Err(e),
        };
        let h = c.history(key).await?;
        let events: Vec<Value> = h
            .events
            .iter()
            .map(|e| {
                let at = OffsetDateTime::parse(&e.at, &Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
                    .unwrap_or(0);
                let done_by = e.payload.as_ref().and_then(|p| p["done_by"].as_u64());
                json!({"event": e.event, "at_ms": at, "done_by": done_by})
            })
            .collect();
        Ok(json!({"status": wf.status, "events": events}))
    }
}

/// The task id of a workload workflow (its task state is entered at revision 1).
fn task_of(key: &str) -> String {
    format!("{key}:1")
}

/// Judges the task workload's part of a history (ops on `task-` keys and task polls).
pub fn check_tasks(ops: &[Paired], final_read_process: u64) -> Vec<String> {
    let mut anomalies = Vec::new();
    // Tokens handed out, per task: (token, invoke index, complete index).
    let mut leases: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for p in ops.iter().filter(|p| p.f == "tpoll" && p.is_ok()) {
        if let (Some(task), Some(token)) = (
            p.result_value["task"].as_str(),
            p.result_value["token"].as_u64(),
        ) {
            leases.entry(task.to_string()).or_default().push((
                token,
                p.invoke_index,
                p.complete_index,
            ));
        }
    }
    for (task, ls) in &leases {
        for (i, a) in ls.iter().enumerate() {
            for b in &ls[i + 1..] {
                if a.0 == b.0 {
                    anomalies.push(format!("{task}: token {} was handed out twice", a.0));
                }
                for (first, second) in [(a, b), (b, a)] {
                    if first.2 < second.1 && first.0 >= second.0 {
                        anomalies.push(format!(
                            "{task}: token {} was handed out after token {}",
                            second.0, first.0
                        ));
                    }
                }
            }
        }
    }
    // Final reads: what each workflow's history says.
    let finals: BTreeMap<&str, &Value> = ops
        .iter()
        .filter(|p| p.f == "thistory" && p.is_ok() && p.process > final_read_process)
        .map(|p| (p.key.as_str(), &p.result_value))
        .collect();
    let winner = |key: &str| -> Option<u64> {
        finals.get(key)?["events"]
            .as_array()?
            .iter()
            .find(|e| e["event"] == "task.completed")?["done_by"]
            .as_u64()
    };
    // No report with a stale token may be accepted: one that was accepted (ok, or an unknown
    // outcome whose token is the one the history shows winning) after a newer token for the
    // same task had been handed out.
    for p in ops.iter().filter(|p| p.f == "tcomplete" || p.f == "tfail") {
        let Some(token) = p.invoke_value["token"].as_u64() else {
            continue;
        };
        let key = p.key.strip_suffix(":1").unwrap_or(&p.key);
        let accepted =
            p.is_ok() || (p.is_info() && p.f == "tcomplete" && winner(key) == Some(token));
        if !accepted {
            continue;
        }
        if let Some(newer) = leases.get(&p.key).and_then(|ls| {
            ls.iter()
                .filter(|l| l.0 > token && l.2 < p.invoke_index)
                .map(|l| l.0)
                .max()
        }) {
            anomalies.push(format!(
                "{}: {} with stale token {token} accepted after token {newer} was handed out",
                p.key, p.f
            ));
        }
    }
    // Every created workflow: its task completed exactly once, its timer fired exactly once,
    // not before due, and it finished.
    // Every key a create was tried for, and whether one of its creates was acknowledged.
    let mut created: BTreeMap<&str, bool> = BTreeMap::new();
    for p in ops.iter().filter(|p| p.f == "tcreate") {
        *created.entry(p.key.as_str()).or_default() |= p.is_ok();
    }
    for (key, ok) in created {
        let Some(fin) = finals.get(key) else {
            if ok {
                anomalies.push(format!("{key}: created but never read at the end"));
            }
            continue;
        };
        if fin["missing"] == true {
            if ok {
                anomalies.push(format!("{key}: acknowledged create is missing"));
            }
            continue;
        }
        let events = fin["events"].as_array().cloned().unwrap_or_default();
        let at = |name: &str| -> Vec<u64> {
            events
                .iter()
                .filter(|e| e["event"] == name)
                .filter_map(|e| e["at_ms"].as_u64())
                .collect()
        };
        let (completed, fired) = (at("task.completed"), at("timer.fired"));
        if completed.len() != 1 {
            anomalies.push(format!(
                "{} completed {} times",
                task_of(key),
                completed.len()
            ));
        }
        if fired.len() != 1 {
            anomalies.push(format!("{key}: timer fired {} times", fired.len()));
        }
        if let (Some(c), Some(f)) = (completed.first(), fired.first()) {
            if *f < c + TIMER_MS {
                anomalies.push(format!(
                    "{key}: timer fired {} ms after its state was entered, before its {TIMER_MS} ms",
                    f.saturating_sub(*c)
                ));
            }
        }
        if fin["status"] != "succeeded" {
            anomalies.push(format!("{key}: still {} after the drain", fin["status"]));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jepsen::history::{history_of, OpType::*};

    const FINAL: u64 = 90_000;

    fn fin(status: &str, events: Value) -> Value {
        json!({"status": status, "events": events})
    }

    fn done(done_by: u64) -> Value {
        fin(
            "succeeded",
            json!([{"event": "created", "at_ms": 1}, {"event": "task.completed", "at_ms": 10, "done_by": done_by},
                   {"event": "timer.fired", "at_ms": 10 + TIMER_MS}]),
        )
    }

    #[test]
    fn a_clean_task_history_passes() {
        let ops = history_of(&[
            (1, Invoke, "tcreate", "task-a", Value::Null),
            (1, Ok, "tcreate", "task-a", Value::Null),
            (2, Invoke, "tpoll", "", Value::Null),
            (2, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 5})),
            (3, Invoke, "tpoll", "", Value::Null),
            (3, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 9})),
            (3, Invoke, "tcomplete", "task-a:1", json!({"token": 5})),
            (
                3,
                Fail,
                "tcomplete",
                "task-a:1",
                json!({"code": "lease_lost"}),
            ),
            (3, Invoke, "tcomplete", "task-a:1", json!({"token": 9})),
            (3, Ok, "tcomplete", "task-a:1", json!({"token": 9})),
            (3, Invoke, "tcomplete", "task-a:1", json!({"token": 9})),
            (3, Ok, "tcomplete", "task-a:1", json!({"token": 9})),
            (FINAL + 1, Invoke, "thistory", "task-a", Value::Null),
            (FINAL + 1, Ok, "thistory", "task-a", done(9)),
        ]);
        assert_eq!(check_tasks(&ops, FINAL), Vec::<String>::new());
    }

    #[test]
    fn a_stale_token_accepted_is_reported() {
        let ops = history_of(&[
            (1, Invoke, "tcreate", "task-a", Value::Null),
            (1, Ok, "tcreate", "task-a", Value::Null),
            (2, Invoke, "tpoll", "", Value::Null),
            (2, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 5})),
            (3, Invoke, "tpoll", "", Value::Null),
            (3, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 9})),
            (2, Invoke, "tcomplete", "task-a:1", json!({"token": 5})),
            (2, Ok, "tcomplete", "task-a:1", json!({"token": 5})),
            (FINAL + 1, Invoke, "thistory", "task-a", Value::Null),
            (FINAL + 1, Ok, "thistory", "task-a", done(5)),
        ]);
        let a = check_tasks(&ops, FINAL);
        assert!(
            a.iter()
                .any(|a| a.contains("stale token 5 accepted after token 9")),
            "{a:?}"
        );
    }

    #[test]
    fn a_stale_completion_with_unknown_outcome_that_won_is_reported() {
        let ops = history_of(&[
            (2, Invoke, "tpoll", "", Value::Null),
            (2, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 5})),
            (3, Invoke, "tpoll", "", Value::Null),
            (3, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 9})),
            (2, Invoke, "tcomplete", "task-a:1", json!({"token": 5})),
            (2, Info, "tcomplete", "task-a:1", json!("timeout")),
            (FINAL + 1, Invoke, "thistory", "task-a", Value::Null),
            (FINAL + 1, Ok, "thistory", "task-a", done(5)),
        ]);
        assert_eq!(check_tasks(&ops, FINAL).len(), 1);
    }

    #[test]
    fn duplicate_and_decreasing_tokens_are_reported() {
        let ops = history_of(&[
            (2, Invoke, "tpoll", "", Value::Null),
            (2, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 9})),
            (3, Invoke, "tpoll", "", Value::Null),
            (3, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 5})),
            (4, Invoke, "tpoll", "", Value::Null),
            (4, Ok, "tpoll", "", json!({"task": "task-a:1", "token": 5})),
        ]);
        let a = check_tasks(&ops, FINAL).join("\n");
        assert!(a.contains("handed out twice"), "{a}");
        assert!(a.contains("token 5 was handed out after token 9"), "{a}");
    }

    #[test]
    fn double_completion_early_timer_and_undrained_work_are_reported() {
        let ops = history_of(&[
            (1, Invoke, "tcreate", "task-a", Value::Null),
            (1, Ok, "tcreate", "task-a", Value::Null),
            (1, Invoke, "tcreate", "task-b", Value::Null),
            (1, Ok, "tcreate", "task-b", Value::Null),
            (1, Invoke, "tcreate", "task-c", Value::Null),
            (1, Ok, "tcreate", "task-c", Value::Null),
            (FINAL + 1, Invoke, "thistory", "task-a", Value::Null),
            (
                FINAL + 1,
                Ok,
                "thistory",
                "task-a",
                fin(
                    "succeeded",
                    json!([{"event": "task.completed", "at_ms": 10}, {"event": "task.completed", "at_ms": 20},
                           {"event": "timer.fired", "at_ms": 30}]),
                ),
            ),
            (FINAL + 1, Invoke, "thistory", "task-b", Value::Null),
            (
                FINAL + 1,
                Ok,
                "thistory",
                "task-b",
                fin("running", json!([{"event": "created", "at_ms": 1}])),
            ),
            (FINAL + 1, Invoke, "thistory", "task-c", Value::Null),
            (
                FINAL + 1,
                Ok,
                "thistory",
                "task-c",
                json!({"missing": true}),
            ),
        ]);
        let a = check_tasks(&ops, FINAL).join("\n");
        assert!(a.contains("task-a:1 completed 2 times"), "{a}");
        assert!(a.contains("before its"), "{a}");
        assert!(a.contains("task-b:1 completed 0 times"), "{a}");
        assert!(a.contains("task-b: still \"running\""), "{a}");
        assert!(a.contains("task-c: acknowledged create is missing"), "{a}");
    }
}
