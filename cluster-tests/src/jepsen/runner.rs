//! One Jepsen-style run: a three-node cluster on 127.0.0.1-3 inside the run's private network
//! namespace, workloads recording a history, a nemesis cycling one fault (fault / heal), then
//! a heal, a post-heal workload, final reads of every key from every node, and the checkers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::checkers::{check_appends, check_cluster, check_unique};
use super::history::{check_processes, pair, write_jsonl, Op, OpType, Recorder, CLIENT_PROCESSES};
use super::linear::{self, Verdict};
use super::nemesis::{Fault, Nemesis, LIBFAKETIME};
use super::tasks::{self, check_tasks, TaskWorkload};
use crate::{Cluster, Spec};
use raftflow_client::client::{Client, ClientError};
use raftflow_client::ErrorCode;

/// Address the test clients send from: outside every cut between 127.0.0.1-3.
pub const CLIENT_IP: [u8; 4] = [127, 0, 0, 100];
/// Nemesis cycle: this long with the fault, then this long healed.
pub const FAULT_PERIOD: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Process ids of the nemesis, the leader sampler and the digest reader (above every client's,
/// which come from [`Recorder::process`]).
pub const NEMESIS_PROCESS: u64 = CLIENT_PROCESSES + 1_000_000;
const SAMPLER_PROCESS: u64 = NEMESIS_PROCESS + 1;
const DIGEST_PROCESS: u64 = NEMESIS_PROCESS + 2;
const REGISTER_CLIENTS: u64 = 4;
const APPEND_CLIENTS: u64 = 3;
const UNIQUE_CLIENTS: u64 = 3;
/// Operations per register key before clients move on (keeps the search small).
const OPS_PER_REGISTER_KEY: u64 = 120;
const APPENDS_PER_KEY: u64 = 80;
/// Fewer `ok`s than this for a workload makes the run UNKNOWN.
const MIN_OKS: usize = 10;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub fault: Fault,
    pub seconds: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub bin: Option<PathBuf>,
    /// `RAFTFLOW_MUTANT` for the nodes (with a binary built with the `mutants` feature).
    pub mutant: Option<String>,
    pub groups: u64,
    /// Mutual TLS between the nodes (the default; `--plain-peers` turns it off).
    pub peer_tls: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub fault: String,
    pub seed: u64,
    #[serde(flatten)]
    pub judgement: Judgement,
}

const DEFINITION: &str = "jepsen";

fn definition() -> Value {
    json!({
        "name": DEFINITION,
        "initial": "on",
        "states": {"on": {"on": {"tick": "on", "stop": "off"}}, "off": {"terminal": "succeeded"}}
    })
}

/// Certificates of one CA for nodes 1-5 (127.0.0.1-.5; 4 and 5 may join) under the report
/// directory, and the settings that make each node use its own.
fn peer_certificates(spec: &mut Spec, cfg: &RunConfig) -> anyhow::Result<()> {
    let dir = cfg.out.join("certs");
    let bin = cfg.bin.clone().unwrap_or_else(crate::binary);
    let mut certs = std::process::Command::new(&bin);
    certs.arg("certs").arg("--dir").arg(&dir);
    for id in 1..=5 {
        certs.args(["--node", &format!("{id}=127.0.0.{id}")]);
    }
    let out = certs.output().context("running raftflow certs")?;
    anyhow::ensure!(out.status.success(), "raftflow certs: {out:?}");
    let file = |f: String| dir.join(f).display().to_string();
    spec.env
        .push(("RAFTFLOW_PEER_CA".into(), file("ca.pem".into())));
    for id in 1..=5u64 {
        let env = spec.node_env.entry(id).or_default();
        env.push(("RAFTFLOW_PEER_CERT".into(), file(format!("node-{id}.pem"))));
        env.push((
            "RAFTFLOW_PEER_KEY".into(),
            file(format!("node-{id}-key.pem")),
        ));
    }
    Ok(())
}

struct Ctx {
    rec: Arc<Recorder>,
    clients: Vec<Client>,
    stop: AtomicBool,
    next_value: AtomicU64,
    register_keys: Mutex<Vec<String>>,
    append_keys: Mutex<Vec<String>>,
    unique_keys: Mutex<Vec<String>>,
    run: String,
}

impl Ctx {
    fn client(&self, node: u64) -> &Client {
        &self.clients[(node - 1) as usize]
    }
}

/// Retries an unrecorded setup step (creating a workflow before it is used) until it works,
/// starting at `node` and moving to the next node on each retry: a client whose first node is
/// cut off would otherwise sit out the whole fault in setup, recording nothing. (A create that
/// timed out but took effect is answered 200 by the retry: same id, same definition.)
async fn setup_create(ctx: &Ctx, node: u64, id: &str) -> bool {
    let req = raftflow_client::types::CreateWorkflow {
        id: Some(id.to_string()),
        definition: DEFINITION.into(),
        version: Some(1),
        context: None,
    };
    for attempt in 0..50 {
        if ctx.stop.load(Ordering::Relaxed) {
            return false;
        }
        let node = 1 + (node - 1 + attempt) % 3;
        if ctx.client(node).create_workflow(&req).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn is_write_indeterminate(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => *status >= 500,
    }
}

async fn register_client(ctx: Arc<Ctx>, slot: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut process = ctx.rec.process();
    let mut generation = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let key = format!("reg-{}-{generation}-{slot}", ctx.run);
        let node = 1 + (slot + generation) % 3;
        if !setup_create(&ctx, node, &key).await {
            continue;
        }
        ctx.register_keys.lock().await.push(key.clone());
        let mut known: Option<u64> = Some(1);
        for _ in 0..OPS_PER_REGISTER_KEY {
            if ctx.stop.load(Ordering::Relaxed) {
                return;
            }
            let node = rng.gen_range(1..=3u64);
            let c = ctx.client(node);
            let Some(expected) = known.filter(|_| rng.gen_bool(0.5)) else {
                let op = ctx.rec.invoke(process, "read", &key, Value::Null, node);
                match c.get_workflow(&key, false).await {
                    Ok(wf) => {
                        known = Some(wf.revision);
                        op.ok(json!(wf.revision));
                    }
                    Err(e) => op.fail(json!(e.to_string())),
                }
                continue;
            };
            let op = ctx.rec.invoke(process, "cas", &key, json!(expected), node);
            let ev = raftflow_client::types::SendEvent {
                event: "tick".into(),
                payload: None,
                expected_revision: Some(expected),
                request_id: None,
            };
            match c.send_event(&key, &ev).await {
                Ok(wf) => {
                    known = Some(wf.revision);
                    op.ok(json!(wf.revision));
                }
                Err(ClientError::Api {
                    code: ErrorCode::RevisionMismatch,
                    details,
                    ..
                }) => {
                    let current = details
                        .as_ref()
                        .and_then(|d| d["current_revision"].as_u64());
                    known = current;
                    op.fail(json!({"current": current}));
                }
                Err(e) if is_write_indeterminate(&e) => {
                    op.info(json!(e.to_string()));
                    // A process with an unknown outcome retires; a fresh one takes over.
                    process = ctx.rec.process();
                    known = None;
                }
                Err(e) => op.fail(json!(e.to_string())),
            }
        }
        generation += 1;
    }
}

fn history_values(h: &raftflow_client::types::HistoryView) -> Vec<u64> {
    h.events
        .iter()
        .filter(|e| e.event == "tick")
        .filter_map(|e| e.payload.as_ref().and_then(|p| p["v"].as_u64()))
        .collect()
}

async fn append_client(ctx: Arc<Ctx>, slot: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut process = ctx.rec.process();
    let mut generation = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let key = format!("app-{}-{generation}-{slot}", ctx.run);
        if !setup_create(&ctx, 1 + slot % 3, &key).await {
            continue;
        }
        ctx.append_keys.lock().await.push(key.clone());
        let mut retry: Option<u64> = None;
        let mut appends = 0;
        while appends < APPENDS_PER_KEY && !ctx.stop.load(Ordering::Relaxed) {
            let node = rng.gen_range(1..=3u64);
            let c = ctx.client(node);
            if rng.gen_bool(0.3) {
                let op = ctx.rec.invoke(process, "read", &key, Value::Null, node);
                match c.history(&key).await {
                    Ok(h) => op.ok(json!(history_values(&h))),
                    Err(e) => op.fail(json!(e.to_string())),
                }
                continue;
            }
            // After an unknown outcome, the next process retries the same append, with the
            // same request id, as its own operation.
            let v = retry
                .take()
                .unwrap_or_else(|| ctx.next_value.fetch_add(1, Ordering::Relaxed));
            appends += 1;
            let op = ctx.rec.invoke(process, "append", &key, json!(v), node);
            let ev = raftflow_client::types::SendEvent {
                event: "tick".into(),
                payload: Some(json!({"v": v})),
                expected_revision: None,
                request_id: Some(format!("a-{v}")),
            };
            match c.send_event(&key, &ev).await {
                Ok(_) => {
                    op.ok(json!(v));
                    // Sometimes send it again, as a client that lost the answer would: the
                    // request id must make the second send change nothing.
                    if rng.gen_bool(0.1) {
                        retry = Some(v);
                    }
                }
                Err(e) if is_write_indeterminate(&e) => {
                    op.info(json!(e.to_string()));
                    process = ctx.rec.process();
                    retry = Some(v);
                }
                Err(e) => op.fail(json!(e.to_string())),
            }
        }
        generation += 1;
    }
}

async fn unique_round(ctx: Arc<Ctx>, n: u64) {
    let key = format!("uniq-{}-{n}", ctx.run);
    ctx.unique_keys.lock().await.push(key.clone());
    let mut racers = Vec::new();
    for p in 0..UNIQUE_CLIENTS {
        let ctx = ctx.clone();
        let key = key.clone();
        racers.push(tokio::spawn(async move {
            let creator = 100 * n + p;
            let req = raftflow_client::types::CreateWorkflow {
                id: Some(key.clone()),
                definition: DEFINITION.into(),
                version: Some(1),
                context: Some(json!({"creator": creator})),
            };
            // A create with an unknown outcome is retried once with the same request.
            for attempt in 0..2u64 {
                let node = 1 + (p + attempt + n) % 3;
                let process = ctx.rec.process();
                let op = ctx
                    .rec
                    .invoke(process, "create", &key, json!({"creator": creator}), node);
                match ctx.client(node).create_workflow(&req).await {
                    Ok((status, wf)) => {
                        let got = wf.context["creator"].as_u64();
                        op.ok(json!({"creator": got, "status": status}));
                        return;
                    }
                    Err(e) if is_write_indeterminate(&e) => op.info(json!(e.to_string())),
                    Err(e) => {
                        op.fail(json!({"code": e.code()}));
                        return;
                    }
                }
            }
        }));
    }
    for r in racers {
        let _ = r.await;
    }
}

async fn unique_client(ctx: Arc<Ctx>) {
    let mut n = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        unique_round(ctx.clone(), n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples every node's own view: a node that says it leads a group in a term is a leader.
async fn leader_sampler(ctx: Arc<Ctx>) {
    while !ctx.stop.load(Ordering::Relaxed) {
        for node in 1..=3u64 {
            if let Ok(v) = ctx.client(node).cluster().await {
                for g in v.groups.iter().filter(|g| g.role == "leader") {
                    ctx.rec
                        .invoke(SAMPLER_PROCESS, "leader-sample", "", Value::Null, node)
                        .ok(json!({"group": g.id, "term": g.term, "leader": node}));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Processes `FINAL_READ_PROCESS + 1..=3` read every key from node 1-3 at the end of a run.
pub const FINAL_READ_PROCESS: u64 = CLIENT_PROCESSES;

/// Records one final read (`f`) of `key` on `node`.
async fn final_read(
    ctx: &Ctx,
    f: &'static str,
    node: u64,
    key: &str,
    read: impl std::future::Future<Output = Result<Value, ClientError>>,
) {
    let op = ctx
        .rec
        .invoke(FINAL_READ_PROCESS + node, f, key, Value::Null, node);
    match read.await {
        Ok(v) => op.ok(v),
        Err(e) => op.fail(json!(e.to_string())),
    }
}

/// How long one membership request may take before its outcome is recorded as unknown.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The membership nemesis's `step`th change, made through the API while the workloads run on
/// nodes 1-3: node 4 joins, node 5 joins, node 4 drains, node 5 is killed and force-removed
/// (ids are never reused, and 127.0.0.1-5 are the namespace's addresses). Each change is
/// recorded with its outcome: a request that timed out is `info` (it may still happen).
async fn membership_step(ctx: &Ctx, cluster: &mut Cluster, step: usize) {
    let rec = |what: &str, detail: Value| {
        ctx.rec
            .invoke(NEMESIS_PROCESS, "membership", what, detail, 0)
    };
    match step {
        0 | 1 => {
            let (id, via) = (4 + step as u64, 1 + step as u64);
            let op = rec("join", json!({"node": id, "via": via}));
            cluster.join(id, via);
            op.ok(json!(format!(
                "node {id} started with --join through node {via}"
            )));
        }
        2 => {
            // The joins must have moved replicas: else the drain below would move nothing.
            let op = rec("replicas-on-4", json!({"node": 4}));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let voting = match ctx.client(1).cluster().await {
                    Ok(v) => v
                        .groups
                        .iter()
                        .filter(|g| g.kind == "data" && g.voters.contains(&4))
                        .count(),
                    Err(_) => 0,
                };
                if voting > 0 {
                    op.ok(json!({"groups": voting}));
                    break;
                }
                if Instant::now() > deadline {
                    op.fail(json!("node 4 holds no voting replica 20 s after joining"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            send_until_answered(ctx, "drain", json!({"node": 4}), "/v1/cluster/nodes/4").await;
        }
        3 => {
            cluster.kill9(5);
            let path = "/v1/cluster/nodes/5?force=true";
            send_until_answered(
                ctx,
                "force-remove",
                json!({"node": 5, "killed": true}),
                path,
            )
            .await;
        }
        _ => {}
    }
}

/// The slot-move nemesis's `step`th change, through the API of node 1-3 in turn while the
/// workloads run: even steps add a data group, odd ones retire the lowest serving one, so
/// that slots keep moving (each change redirects the moves under way). Each request is
/// recorded with its outcome (`info` when unknown).
async fn slot_change(ctx: &Ctx, step: usize) {
    let node = 1 + step as u64 % 3;
    let client = ctx.client(node).clone();
    let (what, method, path) = if step.is_multiple_of(2) {
        (
            "add-group",
            reqwest::Method::POST,
            "/v1/cluster/groups".to_string(),
        )
    } else {
        let serving = match client.cluster().await {
            Ok(view) => view
                .groups
                .iter()
                .filter(|g| g.kind == "data" && g.state.as_deref() == Some("serving"))
                .map(|g| g.id)
                .min(),
            Err(_) => None,
        };
        let Some(group) = serving else {
            return;
        };
        (
            "retire-group",
            reqwest::Method::DELETE,
            format!("/v1/cluster/groups/{group}"),
        )
    };
    let op = ctx
        .rec
        .invoke(NEMESIS_PROCESS, "slots", what, json!({"path": path}), node);
    let body = json!({});
    // A change that meets a killed metadata leader (503, or no answer) is sent again for up to
    // 20 s, as an operator would; adding twice only adds one more group.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            client.request(
                method.clone(),
                &path,
                (method == reqwest::Method::POST).then_some(&body),
            ),
        )
        .await;
        let again = match &r {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => is_write_indeterminate(e) || e.is_transient(),
            Err(_) => true,
        };
        if again && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match r {
            Ok(Ok((status, v))) => op.ok(json!({"status": status, "group": v})),
            Ok(Err(e)) if is_write_indeterminate(&e) => op.info(json!(e.to_string())),
            Ok(Err(e)) => op.fail(json!(e.to_string())),
            Err(_) => op.info(json!("timed out: the change may still happen")),
        }
        return;
    }
}

/// After the slot-move nemesis: waits (up to 120 s) until no slot moves and no group is
/// retiring, and records whether it got there.
async fn slots_settle(ctx: &Ctx) {
    let op = ctx
        .rec
        .invoke(NEMESIS_PROCESS, "slots-settled", "", Value::Null, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        match ctx.client(1).cluster().await {
            Ok(view) => {
                let retiring: Vec<u64> = view
                    .groups
                    .iter()
                    .filter(|g| g.state.as_deref() == Some("retiring"))
                    .map(|g| g.id)
                    .collect();
                if retiring.is_empty() && view.placement.moves.is_empty() {
                    op.ok(json!({"slots_per_group": view.placement.slots_per_group}));
                    return;
                }
                last = format!("retiring {retiring:?}; moves {:?}", view.placement.moves);
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    op.fail(json!(format!("not settled within 120 s: {last}")));
}

/// In the `membership-faults` and `slot-moves-faults` scenarios, after the `step`th change: a kill, a
/// partition, a pause or another kill among nodes 1-3, aimed at the metadata group's leader
/// (the node driving the change) when it is one of them, held for half a fault period and
/// healed.
async fn membership_fault(
    ctx: &Ctx,
    cluster: &mut Cluster,
    nemesis: &mut Nemesis,
    fault: Fault,
    step: usize,
) -> anyhow::Result<()> {
    if !fault.faults_between_changes() {
        return Ok(());
    }
    let kind = [
        Fault::KillLeader,
        Fault::PartitionLeaderMinority,
        Fault::PauseLeader,
        Fault::KillFollower,
    ][step % 4];
    let mut target = 1 + step as u64 % 3;
    for n in 1..=3 {
        if let Some(l) = cluster.leader_of(n, 0).await {
            if l <= 3 {
                target = l;
            }
            break;
        }
    }
    let op = ctx.rec.invoke(
        NEMESIS_PROCESS,
        kind.name(),
        "",
        json!({"group": 0, "leader": target}),
        0,
    );
    match nemesis.inject(cluster, kind, target) {
        Ok(what) => op.ok(json!(what)),
        Err(e) => op.fail(json!(format!("{e:#}"))),
    }
    tokio::time::sleep(FAULT_PERIOD / 2).await;
    let op = ctx.rec.invoke(NEMESIS_PROCESS, "heal", "", Value::Null, 0);
    op.ok(json!(nemesis.heal(cluster)?));
    Ok(())
}

/// Sends `DELETE path` through node 1 as the membership nemesis's `what`, again every 500 ms
/// for up to 20 s while the answer is unknown or says to retry (the metadata group's leader
/// may just have been killed): an operator would send it again, and it is idempotent. Each
/// attempt is recorded with its outcome.
async fn send_until_answered(ctx: &Ctx, what: &str, detail: Value, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let op = ctx
            .rec
            .invoke(NEMESIS_PROCESS, "membership", what, detail.clone(), 0);
        let client = ctx.client(1).clone();
        let r = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            client.request(reqwest::Method::DELETE, path, None),
        )
        .await;
        let again = match &r {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => is_write_indeterminate(e) || e.is_transient(),
            Err(_) => true,
        };
        match r {
            Ok(Ok((status, v))) => op.ok(json!({"status": status, "node": v})),
            Ok(Err(e)) if is_write_indeterminate(&e) => op.info(json!(e.to_string())),
            Ok(Err(e)) => op.fail(json!(e.to_string())),
            Err(_) => op.info(json!("timed out: the change may still happen")),
        }
        if !again || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// After the membership nemesis: waits (up to 90 s) until nodes 4 and 5 are removed and every
/// data group has three voters on nodes 1-3 with no replica moving, and records whether it
/// got there.
async fn membership_settle(ctx: &Ctx) {
    let op = ctx
        .rec
        .invoke(NEMESIS_PROCESS, "membership-settled", "", Value::Null, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        match ctx.client(1).cluster().await {
            Ok(view) => {
                let removed = view
                    .nodes
                    .iter()
                    .filter(|n| n.id > 3)
                    .all(|n| n.state == "removed");
                let placed = view
                    .groups
                    .iter()
                    .filter(|g| g.kind == "data")
                    .all(|g| g.voters.len() == 3 && g.voters.iter().all(|v| *v <= 3));
                if removed && placed && view.placement.replica_moves.is_empty() {
                    op.ok(json!("nodes 4 and 5 removed; every group on nodes 1-3"));
                    return;
                }
                last = format!(
                    "nodes {:?}; moves {:?}",
                    view.nodes
                        .iter()
                        .map(|n| (n.id, n.state.clone()))
                        .collect::<Vec<_>>(),
                    view.placement.replica_moves
                );
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    op.fail(json!(format!("not settled within 90 s: {last}")));
}

async fn data_group_leader(cluster: &Cluster, group: u64) -> Option<u64> {
    for n in 1..=3 {
        if let Some(l) = cluster.leader_of(n, group).await {
            return Some(l);
        }
    }
    None
}

/// Reads the replicas' digest of every group until they agree on the applied index (or 20 s
/// pass), and records what each replica reported.
async fn record_digests(ctx: &Ctx, groups: u64) {
    // The groups as the cluster has them now (the slot-move nemesis adds and retires some).
    let groups: Vec<u64> = match ctx.client(1).cluster().await {
        Ok(view) => view.groups.iter().map(|g| g.id).collect(),
        Err(_) => (0..=groups).collect(),
    };
    for group in groups {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for node in 1..=3u64 {
                let path = format!("/v1/cluster/groups/{group}/digest");
                if let Ok(v) = ctx.client(node).get_json(&path).await {
                    seen.push((node, v));
                }
            }
            let applied: std::collections::BTreeSet<_> =
                seen.iter().map(|(_, v)| v["applied"].as_u64()).collect();
            if (seen.len() == 3 && applied.len() == 1) || Instant::now() > deadline {
                for (node, v) in seen {
                    ctx.rec.invoke(DIGEST_PROCESS, "digest", "", Value::Null, node).ok(
                        json!({"group": group, "node": node, "applied": v["applied"], "digest": v["digest"]}),
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Everything the checkers conclude from one history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Judgement {
    pub valid: bool,
    pub unknown: Vec<String>,
    /// Checker name -> anomalies it found.
    pub anomalies: BTreeMap<String, Vec<String>>,
    pub counts: BTreeMap<String, usize>,
    pub faults_injected: usize,
    pub heal_write_ms: Option<u64>,
}

/// Judges a recorded history: the same verdict for a live run and for a history read back from
/// `history.jsonl`.
pub fn judge(ops: &[Op]) -> Judgement {
    let paired = pair(ops);
    let mut unknown = Vec::new();
    let nemesis: Vec<_> = paired
        .iter()
        .filter(|p| p.process == NEMESIS_PROCESS)
        .collect();
    let faults: Vec<_> = nemesis
        .iter()
        .filter(|p| p.f != "heal" && p.f != "heal-write")
        .collect();
    let faults_injected = faults.iter().filter(|p| p.is_ok()).count();
    for p in faults.iter().filter(|p| p.outcome == Some(OpType::Fail)) {
        unknown.push(format!(
            "fault {} could not be injected: {}",
            p.f, p.result_value
        ));
    }
    if faults_injected == 0 {
        unknown.push("the fault never took effect".to_string());
    }
    let mut counts = BTreeMap::new();
    for (f, key_prefix) in [
        ("cas", "reg-"),
        ("read", "reg-"),
        ("append", "app-"),
        ("read", "app-"),
        ("create", "uniq-"),
        ("tcomplete", tasks::KEY_PREFIX),
    ] {
        let n = paired
            .iter()
            .filter(|p| {
                p.f == f
                    && p.key.starts_with(key_prefix)
                    && p.is_ok()
                    && p.process < FINAL_READ_PROCESS
            })
            .count();
        counts.insert(format!("{key_prefix}{f} ok"), n);
        if n < MIN_OKS {
            unknown.push(format!(
                "only {n} ok {key_prefix}{f} operations (need {MIN_OKS})"
            ));
        }
    }
    let with_prefix = |prefix: &str| -> Vec<_> {
        paired
            .iter()
            .filter(|p| p.key.starts_with(prefix))
            .cloned()
            .collect()
    };
    let mut linear_anomalies = Vec::new();
    for (key, verdict) in linear::check(&with_prefix("reg-"), 1) {
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(why) => {
                linear_anomalies.push(format!("{key}: not linearizable: {why}"))
            }
            Verdict::Unknown(why) => unknown.push(format!("{key}: linearizability unknown: {why}")),
        }
    }
    let heal_write_ms = nemesis
        .iter()
        .find(|p| p.f == "heal-write" && p.is_ok())
        .and_then(|p| p.result_value.as_u64());
    let mut cluster_anomalies = Vec::new();
    if heal_write_ms.is_none() {
        cluster_anomalies.push("no write succeeded within 10 s of the heal".to_string());
    }
    cluster_anomalies.extend(check_cluster(&paired));
    let mut anomalies = BTreeMap::new();
    anomalies.insert("linearizable-register".to_string(), linear_anomalies);
    anomalies.insert(
        "append-history".to_string(),
        check_appends(&with_prefix("app-")),
    );
    anomalies.insert(
        "unique-create".to_string(),
        check_unique(&with_prefix("uniq-")),
    );
    anomalies.insert(
        "tasks".to_string(),
        check_tasks(&paired, FINAL_READ_PROCESS),
    );
    anomalies.insert("whole-cluster".to_string(), cluster_anomalies);
    // A malformed history would make every checker above judge the wrong pairs.
    anomalies.insert("history".to_string(), check_processes(ops));
    Judgement {
        valid: anomalies.values().all(Vec::is_empty) && unknown.is_empty(),
        unknown,
        anomalies,
        counts,
        faults_injected,
        heal_write_ms,
    }
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.out)?;
    println!(
        "jepsen: fault {} seed {} for {} s -> {}",
        cfg.fault.name(),
        cfg.seed,
        cfg.seconds,
        cfg.out.display()
    );
    let client_ip = IpAddr::from(CLIENT_IP);
    let mut spec = Spec {
        nodes: 3,
        groups: cfg.groups,
        own_ips: true,
        bin: cfg.bin.clone(),
        client_ip: Some(client_ip),
        extra: vec!["--write-timeout-ms".into(), "2000".into()],
        ..Spec::default()
    };
    if let Some(m) = &cfg.mutant {
        spec.env.push(("RAFTFLOW_MUTANT".into(), m.clone()));
    }
    let clock_file = cfg.out.join("node1.faketime");
    if cfg.fault == Fault::Clock {
        std::fs::write(&clock_file, "+0\n")?;
        let pre = |v: &str| {
            vec![
                ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
                ("FAKETIME".to_string(), v.to_string()),
            ]
        };
        spec.node_env.insert(2, pre("+0 x2"));
        spec.node_env.insert(3, pre("+0 x0.5"));
        spec.node_env.insert(
            1,
            vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                (
                    "FAKETIME_TIMESTAMP_FILE".into(),
                    clock_file.display().to_string(),
                ),
                ("FAKETIME_CACHE_DURATION".into(), "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ],
        );
    }
    if cfg.peer_tls {
        peer_certificates(&mut spec, &cfg)?;
    }
    let mut cluster = Cluster::launch(spec);
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .context("cluster did not become ready")?;
    let clients: Vec<Client> = (1..=3)
        .map(|n| cluster.client_with_timeout(n, CLIENT_TIMEOUT))
        .collect();
    clients[0]
        .put_definition(DEFINITION, &definition())
        .await
        .context("defining the workflow")?;
    clients[0]
        .put_definition(tasks::TASK_DEFINITION, &tasks::definition())
        .await
        .context("defining the task workflow")?;
    let rec = Arc::new(Recorder::default());
    let task_workload = TaskWorkload::new(rec.clone(), clients.clone(), format!("{:x}", cfg.seed));
    let ctx = Arc::new(Ctx {
        rec,
        clients,
        stop: AtomicBool::new(false),
        next_value: AtomicU64::new(1),
        register_keys: Mutex::default(),
        append_keys: Mutex::default(),
        unique_keys: Mutex::default(),
        run: format!("{:x}", cfg.seed),
    });
    let mut tasks = Vec::new();
    let spawn_workloads =
        |ctx: &Arc<Ctx>, tasks: &mut Vec<tokio::task::JoinHandle<()>>, salt: u64| {
            for s in 0..REGISTER_CLIENTS {
                tasks.push(tokio::spawn(register_client(
                    ctx.clone(),
                    s + salt,
                    cfg.seed ^ (s + salt),
                )));
            }
            for s in 0..APPEND_CLIENTS {
                tasks.push(tokio::spawn(append_client(
                    ctx.clone(),
                    s + salt,
                    cfg.seed ^ (0x100 + s + salt),
                )));
            }
            tasks.push(tokio::spawn(unique_client(ctx.clone())));
        };
    spawn_workloads(&ctx, &mut tasks, 0);
    let task_clients = task_workload.spawn(cfg.seed);
    let sampler = tokio::spawn(leader_sampler(ctx.clone()));

    let mut nemesis = Nemesis {
        clock_file: (cfg.fault == Fault::Clock).then(|| clock_file.clone()),
        ..Nemesis::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let deadline = Instant::now() + Duration::from_secs(cfg.seconds);
    let fault = cfg.fault.name();
    tokio::time::sleep(FAULT_PERIOD / 2).await;
    let mut membership = 0;
    while cfg.fault.changes_membership() && Instant::now() + FAULT_PERIOD < deadline {
        membership_step(&ctx, &mut cluster, membership).await;
        membership_fault(&ctx, &mut cluster, &mut nemesis, cfg.fault, membership).await?;
        membership += 1;
        tokio::time::sleep(FAULT_PERIOD).await;
    }
    let mut changes = 0;
    while cfg.fault.moves_slots() && Instant::now() + FAULT_PERIOD < deadline {
        slot_change(&ctx, changes).await;
        membership_fault(&ctx, &mut cluster, &mut nemesis, cfg.fault, changes).await?;
        changes += 1;
        tokio::time::sleep(FAULT_PERIOD).await;
    }
    if cfg.fault.moves_slots() {
        slots_settle(&ctx).await;
    }
    if cfg.fault.changes_membership() {
        // Whatever changes the run had no time for happen now, while the workloads go on.
        while membership < 4 {
            membership_step(&ctx, &mut cluster, membership).await;
            membership_fault(&ctx, &mut cluster, &mut nemesis, cfg.fault, membership).await?;
            membership += 1;
            tokio::time::sleep(FAULT_PERIOD).await;
        }
        membership_settle(&ctx).await;
    }
    // Every other fault: fault / heal cycles (the membership changes above are the whole of
    // that scenario's nemesis).
    loop {
        if cfg.fault.changes_membership() || cfg.fault.moves_slots() {
            break;
        }
        let group = rng.gen_range(1..=cfg.groups);
        let Some(leader) = data_group_leader(&cluster, group).await else {
            if Instant::now() + FAULT_PERIOD >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let op = ctx.rec.invoke(
            NEMESIS_PROCESS,
            fault,
            "",
            json!({"group": group, "leader": leader}),
            0,
        );
        match nemesis.inject(&mut cluster, cfg.fault, leader) {
            Ok(what) => op.ok(json!(what)),
            Err(e) => op.fail(json!(format!("{e:#}"))),
        }
        tokio::time::sleep(FAULT_PERIOD).await;
        if Instant::now() + FAULT_PERIOD * 2 >= deadline {
            // The last fault stays in place until the final heal below.
            break;
        }
        let op = ctx.rec.invoke(NEMESIS_PROCESS, "heal", "", Value::Null, 0);
        op.ok(json!(nemesis.heal(&mut cluster)?));
        tokio::time::sleep(FAULT_PERIOD).await;
    }
    // Heal everything, then a write must succeed within 10 s.
    let op = ctx.rec.invoke(NEMESIS_PROCESS, "heal", "", Value::Null, 0);
    op.ok(json!(nemesis.heal(&mut cluster)?));
    let heal_at = Instant::now();
    let probe_key = format!("heal-{}", ctx.run);
    while heal_at.elapsed() < Duration::from_secs(10) {
        let node = 1 + heal_at.elapsed().as_millis() as u64 % 3;
        if setup_create(&ctx, node, &probe_key).await {
            let ms = heal_at.elapsed().as_millis() as u64;
            ctx.rec
                .invoke(NEMESIS_PROCESS, "heal-write", "", Value::Null, 0)
                .ok(json!(ms));
            break;
        }
    }
    // A short post-heal workload, then stop every client.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctx.stop.store(true, Ordering::Relaxed);
    task_workload.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Workers go on until every task workflow has finished (bounded), then stop.
    task_workload.drain().await;
    for t in task_clients {
        let _ = t.await;
    }
    sampler.abort();
    cluster.wait_ready(Duration::from_secs(30)).await.ok();

    // Final reads of every key from every node.
    for node in 1..=3u64 {
        let c = ctx.client(node).clone();
        for key in ctx.register_keys.lock().await.iter() {
            let read = async {
                c.get_workflow(key, false)
                    .await
                    .map(|wf| json!(wf.revision))
            };
            final_read(&ctx, "read", node, key, read).await;
        }
        for key in ctx.append_keys.lock().await.iter() {
            let read = async { c.history(key).await.map(|h| json!(history_values(&h))) };
            final_read(&ctx, "read", node, key, read).await;
        }
        for key in ctx.unique_keys.lock().await.iter() {
            let read = async {
                match c.get_workflow(key, false).await {
                    Ok(wf) => Ok(json!({"creator": wf.context["creator"]})),
                    // Every create failed: there is no workflow, which is a fine answer.
                    Err(ClientError::Api { status: 404, .. }) => Ok(json!({"creator": null})),
                    Err(e) => Err(e),
                }
            };
            final_read(&ctx, "read", node, key, read).await;
        }
    }
    for (i, key) in task_workload.keys.lock().await.iter().enumerate() {
        let node = 1 + i as u64 % 3;
        let c = ctx.client(node).clone();
        final_read(
            &ctx,
            "thistory",
            node,
            key,
            TaskWorkload::final_read(&c, key),
        )
        .await;
    }
    // Replicas converge: same applied index and the same rows in every group.
    record_digests(&ctx, cfg.groups).await;

    let ops = ctx.rec.ops();
    write_jsonl(&ops, &cfg.out.join("history.jsonl"))?;
    let nemesis_ops: Vec<_> = ops
        .iter()
        .filter(|o| o.process == NEMESIS_PROCESS)
        .cloned()
        .collect();
    write_jsonl(&nemesis_ops, &cfg.out.join("nemesis.jsonl"))?;
    for n in 1..=3 {
        let _ = std::fs::copy(cluster.log_path(n), cfg.out.join(format!("node{n}.log")));
    }
    let title = format!("raftflow under {} (seed {})", fault, cfg.seed);
    if let Err(e) = super::plot::plot(&ops, &title, &cfg.out.join("plot.png")) {
        eprintln!("no plot: {e:#}");
    }
    drop(cluster);

    let report = Report {
        fault: fault.to_string(),
        seed: cfg.seed,
        judgement: judge(&ops),
    };
    std::fs::write(
        cfg.out.join("verdict.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}
