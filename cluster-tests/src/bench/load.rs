//! The load generator: closed-loop clients spread over the nodes of either system, a warm-up,
//! a fixed measured window with a progress line per second, then the counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use raftflow_client::client::{Client, ClientError};
use raftflow_client::types::{CompleteTask, CreateWorkflow, PollTasks, SendEvent};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::etcd::EtcdError;
use super::procstat::Usage;
use super::wire::{Wire, WireError};

/// What each client does in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Create a new workflow (etcd: put a new key if it does not exist).
    Create,
    /// A transition with `expected_revision` on the client's own workflow (etcd: a transaction
    /// comparing the key's `mod_revision`, then a put).
    Transitions,
    /// 90% linearizable reads of the client's workflow, 10% transitions.
    ReadMix,
    /// Single-task workflows end to end: start, poll, complete (raftflow only).
    Tasks,
    /// What a service in production sends: an event with a 200-byte payload on an order
    /// picked at random among [`Config::population`](super::Config) orders with 1 KiB
    /// contexts, requests spread over every node (etcd: read the order's 1 KiB value, then
    /// rewrite it by a compare-and-set on its `mod_revision`, again on a conflict).
    Events,
    /// [`Workload::Events`] with every request sent to one node, as a user who points a
    /// client or a load tool at one address does.
    EventsOneNode,
    /// [`Workload::EventsOneNode`] driven by `wrk` instead of our generator (etcd: puts of
    /// the 1 KiB values, which its gateway can send without a read first; see `wrk.rs`).
    EventsWrk,
    /// Each client takes a single-task workflow through in turn: start it, poll a task,
    /// complete it; an operation is the whole cycle. What one user with one worker waits for a
    /// workflow, where in `tasks` a workflow also waits behind the one its worker is on (the
    /// starters keep two per worker). raftflow only.
    TaskLoop,
    /// An HTTP round trip that touches neither Raft nor the disk (raftflow: `GET /healthz`;
    /// etcd: `GET /version`): what this machine, this generator and each server's HTTP stack
    /// allow before any replication work. Not a workload users run; a ceiling to read the others
    /// against.
    Ping,
}

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::Create,
        Workload::Transitions,
        Workload::ReadMix,
        Workload::Tasks,
        Workload::TaskLoop,
        Workload::Ping,
        Workload::Events,
        Workload::EventsOneNode,
        Workload::EventsWrk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Transitions => "transitions",
            Workload::ReadMix => "read-mix",
            Workload::Tasks => "tasks",
            Workload::TaskLoop => "task-loop",
            Workload::Ping => "ping",
            Workload::Events => "events",
            Workload::EventsOneNode => "events-one-node",
            Workload::EventsWrk => "events-wrk",
        }
    }

    /// Whether it works on the population of orders made before the cells.
    pub fn on_population(self) -> bool {
        matches!(
            self,
            Workload::Events | Workload::EventsOneNode | Workload::EventsWrk
        )
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Whether etcd has an equivalent.
    pub fn on_etcd(self) -> bool {
        !matches!(self, Workload::Tasks | Workload::TaskLoop)
    }
}

/// One client's connection to one node of the system under load. The measured requests go
/// through [`Wire`]; the tasks workload uses the typed client.
pub enum Conn {
    Raftflow {
        wire: Wire,
        client: Client,
    },
    Etcd {
        wire: Wire,
    },
    /// The Flask + Redis service (`baseline.rs`): single-task workflows only.
    Baseline {
        wire: Wire,
    },
}

/// The definition every transition workload uses: two states, every event accepted, forever.
pub fn pingpong() -> serde_json::Value {
    serde_json::json!({
        "name": "bench-pingpong",
        "initial": "ping",
        "states": {
            "ping": {"on": {"flip": "pong"}},
            "pong": {"on": {"flop": "ping"}}
        }
    })
}

/// One task, then done: the `tasks` workload's definition.
pub fn single_task() -> serde_json::Value {
    serde_json::json!({
        "name": "bench-task",
        "initial": "work",
        "states": {
            "work": {"task": {"type": "bench"}, "on": {"task.completed": "done"}},
            "done": {"terminal": "succeeded"}
        }
    })
}

/// The realistic workloads' definition: an order takes updates until it is closed.
pub fn order() -> serde_json::Value {
    serde_json::json!({
        "name": "bench-order",
        "initial": "open",
        "states": {
            "open": {"on": {"update": "open", "close": "closed"}},
            "closed": {"terminal": "succeeded"}
        }
    })
}

/// `value` with its `pad` field filled so that it serializes to `bytes` bytes.
fn padded(mut value: serde_json::Value, pad: &str, bytes: usize) -> serde_json::Value {
    let len = value.to_string().len();
    value[pad] = serde_json::Value::String("x".repeat(bytes.saturating_sub(len + pad.len() + 6)));
    value
}

/// Order `i`'s context: a customer, an address, five lines, 1 KiB of JSON.
pub fn order_context(i: usize) -> serde_json::Value {
    let items: Vec<serde_json::Value> = (0..5)
        .map(|k| {
            serde_json::json!({
                "sku": format!("SKU-{:05}", (i * 31 + k * 7) % 100_000),
                "name": format!("Item {k} of order {i}"),
                "qty": 1 + (i + k) % 4,
                "unit_price": 9.99 + k as f64,
            })
        })
        .collect();
    let context = serde_json::json!({
        "order_id": format!("ord-{i:08}"),
        "customer": {
            "id": format!("cus-{:06}", (i * 7919) % 1_000_000),
            "name": "Ada Lovelace",
            "email": "ada.lovelace@example.com",
            "address": {"street": "12 Analytical Engine Road", "city": "London",
                        "postcode": "NW1 6XE", "country": "GB"},
        },
        "items": items,
        "currency": "EUR",
        "total": 123.45,
    });
    padded(context, "notes", CONTEXT_BYTES)
}

/// An update's payload: a payment, 200 bytes of JSON. Its keys are the same every time, so
/// merging it leaves the context's size as it was.
pub fn update_payload(n: u64) -> serde_json::Value {
    let payload = serde_json::json!({
        "payment": {"method": "card", "amount": 10 + n % 500, "currency": "EUR",
                    "reference": format!("pay-{n:012}")},
    });
    padded(payload, "note", PAYLOAD_BYTES)
}

const CONTEXT_BYTES: usize = 1024;
const PAYLOAD_BYTES: usize = 200;

/// The key of order `i` of the population made under `prefix`.
pub fn order_key(prefix: &str, i: usize) -> String {
    format!("{prefix}-o{i}")
}

/// Makes the population: `n` orders under `prefix`, over `connect`'s connections, 32 at a
/// time (raftflow: workflows of `bench-order` with 1 KiB contexts; etcd: keys with the same
/// 1 KiB values).
pub async fn populate(
    connect: &dyn Fn(usize) -> Conn,
    prefix: &str,
    n: usize,
) -> Result<(), Failed> {
    let lanes = 32.min(n.max(1));
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let mut conn = connect(lane);
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (lane..n).step_by(lanes) {
                conn.create_order(&order_key(&prefix, i), i).await?;
            }
            Ok::<(), Failed>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Failed::bad_response(e.to_string()))??;
    }
    Ok(())
}

/// The value etcd stores per key: about the size of raftflow's workflow view.
fn etcd_value(key: &str, revision: u64) -> String {
    let state = if revision % 2 == 1 { "ping" } else { "pong" };
    format!(
        r#"{{"id":"{key}","definition":"bench-pingpong","version":1,"state":"{state}","status":"running","revision":{revision},"context":{{}},"created_at":"2026-11-24T00:00:00.000Z","updated_at":"2026-11-24T00:00:00.000Z","group":0}}"#
    )
}

/// A failed operation: the error code it is counted under, and what the server said.
#[derive(Debug)]
pub struct Failed {
    code: String,
    message: String,
}

impl Failed {
    fn during(mut self, step: &str) -> Failed {
        self.code = format!("{step}: {}", self.code);
        self
    }

    /// The code this failure is counted under.
    pub fn code(&self) -> &str {
        &self.code
    }

    fn transport(e: WireError) -> Failed {
        Failed {
            code: "transport".into(),
            message: e.0,
        }
    }

    fn http(status: u16, body: &[u8]) -> Failed {
        Failed {
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).into_owned(),
        }
    }

    fn bad_response(message: String) -> Failed {
        Failed {
            code: "bad_response".into(),
            message,
        }
    }
}

/// The part of an answer's JSON body the generator reads.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failed> {
    serde_json::from_slice(body)
        .map_err(|e| Failed::bad_response(format!("{e}: {}", String::from_utf8_lossy(body))))
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        Failed {
            code: e.code().map_or("transport", |c| c.as_str()).to_string(),
            message: e.to_string(),
        }
    }
}

impl From<EtcdError> for Failed {
    fn from(e: EtcdError) -> Failed {
        Failed {
            code: e.code(),
            message: format!("{e:?}"),
        }
    }
}

/// The part of raftflow's workflow view the generator reads.
#[derive(serde::Deserialize)]
struct Revision {
    revision: u64,
}

/// A raftflow answer: the workflow's revision on 2xx, else the API's error code.
fn raftflow_revision(status: u16, body: &[u8]) -> Result<u64, Failed> {
    if (200..300).contains(&status) {
        return decode::<Revision>(body).map(|r| r.revision);
    }
    Err(Failed::from(ClientError::from_response(status, body)))
}

/// POSTs `req` to raftflow: the workflow's revision on 2xx, else the API's error code.
async fn raftflow_post(wire: &mut Wire, path: &str, req: &impl Serialize) -> Result<u64, Failed> {
    let body = serde_json::to_vec(req).expect("a request encodes");
    let status = wire.post(path, &body).await.map_err(Failed::transport)?;
    raftflow_revision(status, wire.body())
}

/// The parts of etcd's txn and range answers the generator reads (int64s are strings).
#[derive(serde::Deserialize)]
struct EtcdReply {
    header: EtcdHeader,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    kvs: Vec<EtcdKv>,
}

#[derive(serde::Deserialize)]
struct EtcdHeader {
    revision: String,
}

#[derive(serde::Deserialize)]
struct EtcdKv {
    mod_revision: String,
    /// Base64.
    #[serde(default)]
    value: Option<String>,
}

fn etcd_reply(status: u16, body: &[u8]) -> Result<EtcdReply, Failed> {
    if status != 200 {
        return Err(Failed::from(EtcdError::Status(status)));
    }
    decode(body)
}

fn etcd_int(s: &str) -> Result<u64, Failed> {
    s.parse()
        .map_err(|_| Failed::bad_response(format!("not a revision: {s:?}")))
}

impl Conn {
    /// Creates `key`; returns its revision.
    pub async fn create(&mut self, key: &str) -> Result<u64, Failed> {
        match self {
            Conn::Baseline { .. } => Err(Failed::bad_response("not on the baseline".into())),
            Conn::Raftflow { wire, .. } => {
                let req = CreateWorkflow {
                    id: Some(key.to_string()),
                    definition: "bench-pingpong".into(),
                    version: None,
                    context: None,
                };
                raftflow_post(wire, "/v1/workflows", &req).await
            }
            Conn::Etcd { wire } => etcd_put_if(wire, key, 0, &etcd_value(key, 1)).await,
        }
    }

    /// A compare-and-set transition from `revision`; returns the new revision.
    pub async fn transition(&mut self, key: &str, revision: u64) -> Result<u64, Failed> {
        match self {
            Conn::Baseline { .. } => Err(Failed::bad_response("not on the baseline".into())),
            Conn::Raftflow { wire, .. } => {
                let req = SendEvent {
                    event: if revision % 2 == 1 { "flip" } else { "flop" }.into(),
                    payload: None,
                    expected_revision: Some(revision),
                    request_id: None,
                };
                raftflow_post(wire, &format!("/v1/workflows/{key}/events"), &req).await
            }
            Conn::Etcd { wire } => {
                etcd_put_if(wire, key, revision, &etcd_value(key, revision + 1)).await
            }
        }
    }

    /// Creates order `i` at `key` with its 1 KiB context.
    pub async fn create_order(&mut self, key: &str, i: usize) -> Result<(), Failed> {
        match self {
            Conn::Baseline { .. } => Err(Failed::bad_response("not on the baseline".into())),
            Conn::Raftflow { wire, .. } => {
                let req = CreateWorkflow {
                    id: Some(key.to_string()),
                    definition: "bench-order".into(),
                    version: None,
                    context: Some(order_context(i)),
                };
                raftflow_post(wire, "/v1/workflows", &req).await.map(drop)
            }
            Conn::Etcd { wire } => {
                let value = order_context(i).to_string();
                match etcd_put_if(wire, key, 0, &value).await {
                    // Made by an earlier attempt: the same value.
                    Err(f) if f.code == EtcdError::CompareFailed.code() => Ok(()),
                    r => r.map(drop),
                }
            }
        }
    }

    /// Update `n` of the order at `key`: an event with a 200-byte payload (etcd: read the
    /// value, then a compare-and-set of the updated one).
    pub async fn update_order(&mut self, key: &str, n: u64) -> Result<(), Failed> {
        let payload = update_payload(n);
        match self {
            Conn::Baseline { .. } => Err(Failed::bad_response("not on the baseline".into())),
            Conn::Raftflow { wire, .. } => {
                let req = SendEvent {
                    event: "update".into(),
                    payload: Some(payload),
                    expected_revision: None,
                    request_id: None,
                };
                raftflow_post(wire, &format!("/v1/workflows/{key}/events"), &req)
                    .await
                    .map(drop)
            }
            Conn::Etcd { wire } => {
                let range = serde_json::to_vec(&serde_json::json!({"key": B64.encode(key)}))
                    .expect("a request encodes");
                let mut last = None;
                for _ in 0..8 {
                    let status = wire
                        .post("/v3/kv/range", &range)
                        .await
                        .map_err(Failed::transport)?;
                    let reply = etcd_reply(status, wire.body())?;
                    let Some(kv) = reply.kvs.first() else {
                        return Err(Failed::bad_response(format!("no order at {key}")));
                    };
                    let expected = etcd_int(&kv.mod_revision)?;
                    let Some(current) = kv.value.as_deref() else {
                        return Err(Failed::bad_response(format!("no value at {key}")));
                    };
                    // The client's read-modify-write: merge the payload into the stored order.
                    let stored = B64
                        .decode(current)
                        .map_err(|e| Failed::bad_response(e.to_string()))?;
                    let mut order: serde_json::Value = decode(&stored)?;
                    for (k, v) in payload.as_object().expect("an object payload") {
                        order[k] = v.clone();
                    }
                    match etcd_put_if(wire, key, expected, &order.to_string()).await {
                        Err(f) if f.code == EtcdError::CompareFailed.code() => last = Some(f),
                        r => return r.map(drop),
                    }
                }
                Err(last.expect("eight attempts failed"))
            }
        }
    }

    /// A single-task workflow on the Flask + Redis service: start it, complete its task.
    pub async fn baseline_workflow(&mut self, n: u64) -> Result<(), Failed> {
        let Conn::Baseline { wire } = self else {
            return Err(Failed::bad_response("not the baseline".into()));
        };
        let start = serde_json::json!({"context": {"n": n}}).to_string();
        let status = wire
            .post("/start_workflow", start.as_bytes())
            .await
            .map_err(Failed::transport)?;
        if status != 201 {
            return Err(Failed::http(status, wire.body()).during("start"));
        }
        let id = decode::<serde_json::Value>(wire.body())?["id"].clone();
        let complete = serde_json::json!({"id": id, "output": {"ok": true}}).to_string();
        let status = wire
            .post("/complete_task", complete.as_bytes())
            .await
            .map_err(Failed::transport)?;
        if status != 200 {
            return Err(Failed::http(status, wire.body()).during("complete"));
        }
        Ok(())
    }

    /// A single-task workflow on raftflow, by one client: start it, poll until a task is
    /// leased, complete it. Alone, the client gets its own task; beside others, a poll may
    /// lease another client's, and each cycle still starts one workflow and completes one.
    pub async fn task_cycle(&mut self, id: &str) -> Result<(), Failed> {
        let Conn::Raftflow { client, .. } = self else {
            return Err(Failed::bad_response("not raftflow".into()));
        };
        let req = CreateWorkflow {
            id: Some(id.to_string()),
            definition: "bench-task".into(),
            version: None,
            context: Some(serde_json::json!({"id": id})),
        };
        client
            .create_workflow(&req)
            .await
            .map_err(|e| Failed::from(e).during("start"))?;
        let poll = PollTasks {
            types: vec!["bench".into()],
            worker: format!("{id}-worker"),
            max: Some(1),
            wait_ms: Some(1000),
            lease_ms: None,
        };
        for _ in 0..5 {
            let list = client
                .poll_tasks(&poll)
                .await
                .map_err(|e| Failed::from(e).during("poll"))?;
            if let Some(task) = list.tasks.into_iter().next() {
                let done = CompleteTask {
                    lease_token: task.lease_token,
                    output: None,
                };
                return client
                    .complete_task(&task.id, &done)
                    .await
                    .map(drop)
                    .map_err(|e| Failed::from(e).during("complete"));
            }
        }
        Err(Failed::bad_response(format!("{id}: no task leased in five 1 s polls")).during("poll"))
    }

    /// A request the server answers without Raft or disk.
    pub async fn ping(&mut self) -> Result<(), Failed> {
        let (wire, path) = match self {
            Conn::Raftflow { wire, .. } => (wire, "/healthz"),
            Conn::Etcd { wire } | Conn::Baseline { wire } => (wire, "/version"),
        };
        match wire.get(path).await.map_err(Failed::transport)? {
            200 => Ok(()),
            status => Err(Failed {
                code: format!("http_{status}"),
                message: String::from_utf8_lossy(wire.body()).into_owned(),
            }),
        }
    }

    /// A linearizable read; returns the current revision.
    pub async fn read(&mut self, key: &str) -> Result<u64, Failed> {
        match self {
            Conn::Baseline { .. } => Err(Failed::bad_response("not on the baseline".into())),
            Conn::Raftflow { wire, .. } => {
                let status = wire
                    .get(&format!("/v1/workflows/{key}"))
                    .await
                    .map_err(Failed::transport)?;
                raftflow_revision(status, wire.body())
            }
            Conn::Etcd { wire } => {
                let body = serde_json::to_vec(&serde_json::json!({"key": B64.encode(key)}))
                    .expect("a request encodes");
                let status = wire
                    .post("/v3/kv/range", &body)
                    .await
                    .map_err(Failed::transport)?;
                match etcd_reply(status, wire.body())?.kvs.first() {
                    Some(kv) => etcd_int(&kv.mod_revision),
                    None => Ok(0),
                }
            }
        }
    }
}

/// etcd's equivalent of a transition: a txn that compares the key's `mod_revision` (its
/// `create_revision` with 0, for a create) and puts `value`; returns the new revision.
async fn etcd_put_if(
    wire: &mut Wire,
    key: &str,
    expected: u64,
    value: &str,
) -> Result<u64, Failed> {
    let body = serde_json::to_vec(&super::etcd::txn_put_if(key, expected, value))
        .expect("a request encodes");
    let status = wire
        .post("/v3/kv/txn", &body)
        .await
        .map_err(Failed::transport)?;
    let reply = etcd_reply(status, wire.body())?;
    if !reply.succeeded {
        return Err(Failed::from(EtcdError::CompareFailed));
    }
    etcd_int(&reply.header.revision)
}

/// What one cell of the run measured.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Measured {
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The longest a successful request took.
    #[serde(default)]
    pub max_ms: f64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error code.
    pub error_examples: BTreeMap<String, String>,
    /// Per node process, in the order of the system's members.
    pub nodes: Vec<Usage>,
    /// CPU seconds of the load generator itself.
    pub generator_cpu_s: f64,
    /// The host's memory latency right before the cell, ns
    /// ([`super::report::memory_latency_ns`]): how busy its neighbours kept the host.
    #[serde(default)]
    pub host_memory_ns: f64,
}

impl Measured {
    /// A cell that could not run: nothing done, and why.
    pub fn failed(code: &str, message: String) -> Measured {
        Measured {
            ops: 0,
            seconds: 0.0,
            ops_per_s: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            errors: BTreeMap::from([(code.to_string(), 1)]),
            error_examples: BTreeMap::from([(code.to_string(), message)]),
            nodes: Vec::new(),
            generator_cpu_s: 0.0,
            host_memory_ns: 0.0,
        }
    }
}

/// Counters the clients share with the measuring loop.
#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    ok: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    error_examples: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    fn record(&self, started: Instant, result: Result<(), Failed>) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros() as u64;
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.latencies_us.lock().unwrap().push(us);
            }
            Err(failed) => self.count(failed),
        }
    }

    /// Counts a failure whether or not the window is open (setup failures matter too).
    fn count(&self, failed: Failed) {
        self.error_examples
            .lock()
            .unwrap()
            .entry(failed.code.clone())
            .or_insert(failed.message);
        *self.errors.lock().unwrap().entry(failed.code).or_default() += 1;
    }
}

/// How one cell runs.
pub struct Cell<'a> {
    pub workload: Workload,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connections to make, round-robin over the members: one per client.
    pub connect: &'a dyn Fn(usize) -> Conn,
    /// Node processes to account CPU and memory to.
    pub pids: Vec<u32>,
    /// Unique per cell, so that keys never collide across cells.
    pub prefix: String,
    /// Ends the measurement early once set (else it lasts `duration`).
    pub until: Option<Arc<AtomicBool>>,
    /// The orders the realistic workloads update: their prefix and number.
    pub population: (String, usize),
}

/// Runs one cell: starts the clients, waits out the warm-up, measures, stops the clients.
pub async fn run_cell(cell: Cell<'_>) -> Measured {
    let shared = Arc::new(Shared::default());
    let mut handles = Vec::new();
    let baseline = matches!((cell.connect)(0), Conn::Baseline { .. });
    if cell.workload == Workload::Tasks && !baseline {
        spawn_tasks(&cell, &shared, &mut handles);
    } else {
        for c in 0..cell.clients {
            let one_node = cell.workload == Workload::EventsOneNode;
            let conn = (cell.connect)(if one_node { 0 } else { c });
            let shared = shared.clone();
            let key = format!("{}-{c}", cell.prefix);
            let workload = cell.workload;
            let population = cell.population.clone();
            handles.push(tokio::spawn(async move {
                if workload.on_population() {
                    updates(conn, population, c as u64, &shared).await
                } else {
                    closed_loop(conn, workload, key, c as u64, &shared).await
                }
            }));
        }
    }
    tokio::time::sleep(cell.warmup).await;
    let usage_before = Usage::sample_all(&cell.pids);
    let generator_before = super::procstat::cpu_seconds(std::process::id());
    shared.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut peaks = vec![0u64; cell.pids.len()];
    let mut last = 0;
    let mut next_line = Duration::from_secs(1);
    let ended = || {
        cell.until
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    };
    while start.elapsed() < cell.duration && !ended() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (peak, pid) in peaks.iter_mut().zip(&cell.pids) {
            *peak = (*peak).max(super::procstat::rss_bytes(*pid));
        }
        if start.elapsed() >= next_line {
            let ok = shared.ok.load(Ordering::Relaxed);
            eprint!(
                "\r    t={:>3}s {:>8} ops/s ",
                next_line.as_secs(),
                ok - last
            );
            last = ok;
            next_line += Duration::from_secs(1);
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    eprint!("\r{:40}\r", "");
    let nodes = Usage::since(&usage_before, &peaks);
    let generator_cpu_s = super::procstat::cpu_seconds(std::process::id()) - generator_before;
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(6), h).await;
    }
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let ops = shared.ok.load(Ordering::Relaxed);
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap());
    let error_examples = std::mem::take(&mut *shared.error_examples.lock().unwrap());
    Measured {
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
        errors,
        error_examples,
        nodes,
        generator_cpu_s,
        host_memory_ns: 0.0,
    }
}

/// One closed-loop client of the create, transitions and read-mix workloads.
async fn closed_loop(mut conn: Conn, workload: Workload, key: String, seed: u64, shared: &Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut revision = 0;
    if !matches!(
        workload,
        Workload::Create | Workload::Ping | Workload::Tasks | Workload::TaskLoop
    ) {
        // The client's own workflow, made before the clock starts.
        match conn.create(&key).await {
            Ok(rev) => revision = rev,
            Err(failed) => {
                shared.count(failed.during("setup"));
                return;
            }
        }
    }
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = match workload {
            Workload::Tasks => {
                n += 1;
                conn.baseline_workflow(n).await
            }
            Workload::Create => {
                n += 1;
                conn.create(&format!("{key}-{n}")).await.map(drop)
            }
            Workload::TaskLoop => {
                n += 1;
                conn.task_cycle(&format!("{key}-{n}")).await
            }
            Workload::Ping => conn.ping().await,
            Workload::ReadMix if rng.gen_ratio(9, 10) => conn.read(&key).await.map(drop),
            _ => match conn.transition(&key, revision).await {
                Ok(rev) => {
                    revision = rev;
                    Ok(())
                }
                Err(failed) => {
                    // Learn the current revision before trying again.
                    match conn.read(&key).await {
                        Ok(rev) => revision = rev,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    Err(failed)
                }
            },
        };
        shared.record(started, result);
    }
}

/// One closed-loop client of the realistic workloads: updates of orders picked at random.
async fn updates(mut conn: Conn, (prefix, n): (String, usize), seed: u64, shared: &Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent = seed << 32;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = order_key(&prefix, rng.gen_range(0..n.max(1)));
        sent += 1;
        let started = Instant::now();
        let result = conn.update_order(&key, sent).await;
        shared.record(started, result);
    }
}

/// The tasks workload: `clients` starters create single-task workflows (at most two waiting
/// per worker), `clients` workers poll and complete them. An operation is a completed
/// workflow; its latency runs from the start request to the completion's answer.
fn spawn_tasks(
    cell: &Cell<'_>,
    shared: &Arc<Shared>,
    handles: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let backlog = Arc::new(tokio::sync::Semaphore::new(cell.clients.max(1) * 2));
    for c in 0..cell.clients {
        let Conn::Raftflow { client, .. } = (cell.connect)(c) else {
            return;
        };
        let (shared, started, backlog) = (shared.clone(), started.clone(), backlog.clone());
        let prefix = format!("{}-{c}", cell.prefix);
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                let Ok(Ok(permit)) =
                    tokio::time::timeout(Duration::from_millis(200), backlog.acquire()).await
                else {
                    continue;
                };
                permit.forget();
                n += 1;
                let id = format!("{prefix}-{n}");
                started.lock().unwrap().insert(id.clone(), Instant::now());
                let req = CreateWorkflow {
                    id: Some(id.clone()),
                    definition: "bench-task".into(),
                    version: None,
                    context: Some(serde_json::json!({"n": n})),
                };
                if let Err(e) = client.create_workflow(&req).await {
                    shared.record(Instant::now(), Err(Failed::from(e).during("start")));
                    started.lock().unwrap().remove(&id);
                    backlog.add_permits(1);
                }
            }
        }));
    }
    for w in 0..cell.clients {
        let Conn::Raftflow { client, .. } = (cell.connect)(w) else {
            return;
        };
        let (shared, started, backlog) = (shared.clone(), started.clone(), backlog.clone());
        let worker = format!("{}-w{w}", cell.prefix);
        handles.push(tokio::spawn(async move {
            let poll = PollTasks {
                types: vec!["bench".into()],
                worker,
                max: Some(1),
                wait_ms: Some(500),
                lease_ms: None,
            };
            while !shared.stop.load(Ordering::Relaxed) {
                let list = match client.poll_tasks(&poll).await {
                    Ok(list) => list,
                    Err(e) => {
                        shared.record(Instant::now(), Err(Failed::from(e).during("poll")));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for task in list.tasks {
                    let req = CompleteTask {
                        lease_token: task.lease_token,
                        output: None,
                    };
                    let result = client.complete_task(&task.id, &req).await;
                    let result = result
                        .map(drop)
                        .map_err(|e| Failed::from(e).during("complete"));
                    // Tasks left over from an earlier cell are done, but not counted.
                    if let Some(t0) = started.lock().unwrap().remove(&task.workflow_id) {
                        backlog.add_permits(1);
                        shared.record(t0, result);
                    }
                }
            }
        }));
    }
}
