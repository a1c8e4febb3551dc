//! Histories as Jepsen records them: every operation is an `invoke` followed by `ok` (it
//! happened), `fail` (it certainly did not) or `info` (unknown: it may take effect at any later
//! time). Written as JSON lines so any run can be checked again.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The function: `read`, `cas`, `append`, `create`, ...
    pub f: String,
    pub key: String,
    pub value: Value,
    /// Nanoseconds since the run started, from one monotonic clock.
    pub time: u64,
    /// The node the client talked to (0 for the nemesis).
    pub node: u64,
}

/// Collects a run's operations in the order they happened.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    next_process: AtomicU64,
}

/// Process ids from [`Recorder::process`] stay below this; fixed ids of the harness's own
/// processes (the nemesis, the final reads) lie above it.
pub const CLIENT_PROCESSES: u64 = 1 << 60;

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            next_process: AtomicU64::new(1),
        }
    }
}

impl Recorder {
    /// A process id no one has used: for a new client, and for a client whose last operation
    /// ended unknown (that process may still be running it, so it never invokes again).
    pub fn process(&self) -> u64 {
        let p = self.next_process.fetch_add(1, Ordering::Relaxed);
        assert!(p < CLIENT_PROCESSES, "out of client process ids");
        p
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, process: u64, kind: OpType, f: &str, key: &str, value: Value, node: u64) {
        let mut ops = self.ops.lock().expect("recorder lock");
        let index = ops.len() as u64;
        // Time is taken under the lock so that index order and time order agree.
        let time = self.elapsed_ns();
        ops.push(Op {
            index,
            process,
            kind,
            f: f.to_string(),
            key: key.to_string(),
            value,
            time,
            node,
        });
    }

    /// Records the invocation of `f` on `key` and returns the handle that records its end.
    pub fn invoke(
        &self,
        process: u64,
        f: &'static str,
        key: &str,
        value: Value,
        node: u64,
    ) -> Pending<'_> {
        self.record(process, OpType::Invoke, f, key, value, node);
        Pending {
            rec: self,
            process,
            f,
            key: key.to_string(),
            node,
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("recorder lock").clone()
    }

    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        write_jsonl(&self.ops(), path)
    }
}

/// An invoked operation; exactly one of its methods records how it ended.
pub struct Pending<'a> {
    rec: &'a Recorder,
    process: u64,
    f: &'static str,
    key: String,
    node: u64,
}

impl Pending<'_> {
    pub fn ok(self, value: Value) {
        self.end(OpType::Ok, value)
    }

    pub fn fail(self, value: Value) {
        self.end(OpType::Fail, value)
    }

    pub fn info(self, value: Value) {
        self.end(OpType::Info, value)
    }

    fn end(self, kind: OpType, value: Value) {
        self.rec
            .record(self.process, kind, self.f, &self.key, value, self.node);
    }
}

pub fn write_jsonl(ops: &[Op], path: &Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut f, op)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

/// An operation with its invocation and completion paired.
#[derive(Debug, Clone)]
pub struct Paired {
    pub process: u64,
    pub f: String,
    pub key: String,
    pub invoke_value: Value,
    /// `None` while open: the process crashed or the history ended (treated as `info`).
    pub outcome: Option<OpType>,
    pub result_value: Value,
    /// Index of the invocation and of the completion (`u64::MAX` if none).
    pub invoke_index: u64,
    pub complete_index: u64,
}

impl Paired {
    pub fn is_ok(&self) -> bool {
        self.outcome == Some(OpType::Ok)
    }

    pub fn is_info(&self) -> bool {
        matches!(self.outcome, None | Some(OpType::Info))
    }
}

/// Pairs every invocation with the next completion of the same process.
pub fn pair(ops: &[Op]) -> Vec<Paired> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<Paired> = Vec::new();
    for op in ops {
        match op.kind {
            OpType::Invoke => {
                open.insert(op.process, out.len());
                out.push(Paired {
                    process: op.process,
                    f: op.f.clone(),
                    key: op.key.clone(),
                    invoke_value: op.value.clone(),
                    outcome: None,
                    result_value: Value::Null,
                    invoke_index: op.index,
                    complete_index: u64::MAX,
                });
            }
            kind => {
                if let Some(i) = open.remove(&op.process) {
                    out[i].outcome = Some(kind);
                    out[i].result_value = op.value.clone();
                    if kind != OpType::Info {
                        out[i].complete_index = op.index;
                    }
                }
            }
        }
    }
    out
}

/// A history is well formed when each process runs one operation at a time: it invokes only
/// after its last operation ended, and ends only an operation it invoked. Otherwise pairing
/// mixes two clients' operations, and a checker would judge one's invocation by another's end.
pub fn check_processes(ops: &[Op]) -> Vec<String> {
    let mut open: std::collections::HashMap<u64, &Op> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for op in ops {
        match op.kind {
            OpType::Invoke => {
                if let Some(prev) = open.insert(op.process, op) {
                    problems.push(format!(
                        "process {} invoked {} {} (op {}) while its {} {} (op {}) was open",
                        op.process, op.f, op.key, op.index, prev.f, prev.key, prev.index
                    ));
                }
            }
            _ => {
                if open.remove(&op.process).is_none() {
                    problems.push(format!(
                        "process {} ended {} {} (op {}) that it never invoked",
                        op.process, op.f, op.key, op.index
                    ));
                }
            }
        }
    }
    problems
}

/// Builds a history from `(process, type, f, key, value)` rows, one time step each: for the
/// checkers' tests.
#[cfg(test)]
pub(crate) fn history_of(rows: &[(u64, OpType, &str, &str, Value)]) -> Vec<Paired> {
    let ops: Vec<Op> = rows
        .iter()
        .enumerate()
        .map(|(i, (p, t, f, k, v))| Op {
            index: i as u64,
            process: *p,
            kind: *t,
            f: f.to_string(),
            key: k.to_string(),
            value: v.clone(),
            time: i as u64,
            node: 1,
        })
        .collect();
    pair(&ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, process: u64, kind: OpType, f: &str) -> Op {
        Op {
            index,
            process,
            kind,
            f: f.into(),
            key: "k".into(),
            value: Value::Null,
            time: index,
            node: 1,
        }
    }

    #[test]
    fn a_process_with_two_open_operations_is_reported() {
        use OpType::*;
        let good = [
            op(0, 1, Invoke, "create"),
            op(1, 2, Invoke, "create"),
            op(2, 1, Info, "create"),
            op(3, 2, Ok, "create"),
            op(4, 2, Invoke, "read"),
        ];
        assert_eq!(check_processes(&good), Vec::<String>::new());
        // Two clients sharing process 7: the create's invocation would be paired with the
        // poll's failure.
        let shared = [
            op(0, 7, Invoke, "create"),
            op(1, 7, Invoke, "tpoll"),
            op(2, 7, Fail, "tpoll"),
            op(3, 7, Ok, "create"),
        ];
        let problems = check_processes(&shared).join("\n");
        assert!(
            problems.contains("while its create k (op 0) was open"),
            "{problems}"
        );
        assert!(
            problems.contains("ended create k (op 3) that it never invoked"),
            "{problems}"
        );
    }

    #[test]
    fn fresh_processes_are_distinct() {
        let rec = Recorder::default();
        let ids: std::collections::BTreeSet<u64> = (0..1000).map(|_| rec.process()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|&p| p < CLIENT_PROCESSES));
    }
}
