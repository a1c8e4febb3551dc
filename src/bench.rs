//! `raftflow bench`: closed-loop load spread over the nodes for a fixed time after a warm-up.
//!
//! - `transitions`: each client drives its own workflow with compare-and-set events;
//! - `tasks`: clients start single-task workflows, workers poll and complete them; the number
//!   is completed workflows per second, the latency from start to completion.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use raftflow_api::client::Client;
use raftflow_api::types::{CompleteTask, CreateWorkflow, PollTasks, SendEvent};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Client addresses of the nodes, comma-separated.
    #[arg(long, default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003")]
    pub nodes: String,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// `transitions`, `tasks` or `all`.
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// Workers polling and completing tasks (the `tasks` workload).
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
}

/// One task, then done: the `tasks` workload's definition.
fn single_task() -> serde_json::Value {
    serde_json::json!({
        "name": "bench-task",
        "initial": "work",
        "states": {
            "work": {"task": {"type": "bench"}, "on": {"task.completed": "done"}},
            "done": {"terminal": "succeeded"}
        }
    })
}

/// Two states and two events: every transition is accepted, forever.
fn pingpong() -> serde_json::Value {
    serde_json::json!({
        "name": "bench-pingpong",
        "initial": "ping",
        "states": {
            "ping": {"on": {"flip": "pong"}},
            "pong": {"on": {"flop": "ping"}}
        }
    })
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, key: String) {
        *self.errors.lock().unwrap().entry(key).or_default() += 1;
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let nodes: Vec<Client> = args
        .nodes
        .split(',')
        .map(|a| Client::new(a.trim(), timeout))
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "--nodes is empty");
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    match args.workload.as_str() {
        "transitions" => transitions(&args, &nodes, &run_id).await,
        "tasks" => tasks(&args, &nodes, &run_id).await,
        "all" => {
            transitions(&args, &nodes, &run_id).await?;
            println!();
            tasks(&args, &nodes, &run_id).await
        }
        other => anyhow::bail!("--workload {other:?}: use transitions, tasks or all"),
    }
}

async fn transitions(args: &BenchArgs, nodes: &[Client], run_id: &str) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    nodes[0]
        .put_definition("bench-pingpong", &pingpong())
        .await
        .context("defining the bench workflow")?;
    let stats = Arc::new(Stats::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = nodes[c % nodes.len()].clone();
        let (stats, measuring, stop) = (stats.clone(), measuring.clone(), stop.clone());
        let id = format!("bench-{run_id}-{c}");
        tasks.push(tokio::spawn(async move {
            let create = CreateWorkflow {
                id: Some(id.clone()),
                definition: "bench-pingpong".into(),
                version: None,
                context: None,
            };
            let mut revision = match client.create_workflow(&create).await {
                Ok((_, wf)) => wf.revision,
                Err(e) => {
                    *stats
                        .errors
                        .lock()
                        .unwrap()
                        .entry(format!("create: {e}"))
                        .or_default() += 1;
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let event = if revision % 2 == 1 { "flip" } else { "flop" };
                let req = SendEvent {
                    event: event.into(),
                    payload: None,
                    expected_revision: Some(revision),
                    request_id: None,
                };
                let start = Instant::now();
                let result = client.send_event(&id, &req).await;
                let us = start.elapsed().as_micros() as u64;
                let counted = measuring.load(Ordering::Relaxed);
                match result {
                    Ok(wf) => {
                        revision = wf.revision;
                        if counted {
                            stats.ok.fetch_add(1, Ordering::Relaxed);
                            stats.latencies_us.lock().unwrap().push(us);
                        }
                    }
                    Err(e) => {
                        if counted {
                            let key = e.code().unwrap_or("transport").to_string();
                            *stats.errors.lock().unwrap().entry(key).or_default() += 1;
                        }
                        // Learn the current revision before trying again.
                        match client.get_workflow(&id, false).await {
                            Ok(wf) => revision = wf.revision,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            }
        }));
    }
    println!(
        "bench transitions: {} clients over {} nodes, warm-up {} s, measuring {} s",
        args.clients,
        nodes.len(),
        args.warmup_s,
        args.duration_s
    );
    measure(args, "transitions", &stats, &measuring).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), t).await;
    }
    Ok(())
}

/// Clients start single-task workflows (at most two per worker waiting at a time); workers
/// poll and complete them.
async fn tasks(args: &BenchArgs, nodes: &[Client], run_id: &str) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    nodes[0]
        .put_definition("bench-task", &single_task())
        .await
        .context("defining the bench task workflow")?;
    let stats = Arc::new(Stats::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let backlog = Arc::new(tokio::sync::Semaphore::new(args.workers.max(1) * 2));
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let client = nodes[c % nodes.len()].clone();
        let (stats, stop, started, backlog) = (
            stats.clone(),
            stop.clone(),
            started.clone(),
            backlog.clone(),
        );
        let prefix = format!("bench-task-{run_id}-{c}");
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(permit)) =
                    tokio::time::timeout(Duration::from_millis(200), backlog.acquire()).await
                else {
                    continue;
                };
                permit.forget();
                let id = format!("{prefix}-{n}");
                n += 1;
                started.lock().unwrap().insert(id.clone(), Instant::now());
                let req = CreateWorkflow {
                    id: Some(id.clone()),
                    definition: "bench-task".into(),
                    version: None,
                    context: Some(serde_json::json!({"n": n})),
                };
                if let Err(e) = client.create_workflow(&req).await {
                    stats.error(format!("create: {}", e.code().unwrap_or("transport")));
                    started.lock().unwrap().remove(&id);
                    backlog.add_permits(1);
                }
            }
        }));
    }
    for w in 0..args.workers {
        let client = nodes[w % nodes.len()].clone();
        let (stats, measuring, stop, started, backlog) = (
            stats.clone(),
            measuring.clone(),
            stop.clone(),
            started.clone(),
            backlog.clone(),
        );
        handles.push(tokio::spawn(async move {
            let poll = PollTasks {
                types: vec!["bench".into()],
                worker: format!("bench-{w}"),
                max: Some(1),
                wait_ms: Some(500),
                lease_ms: None,
            };
            while !stop.load(Ordering::Relaxed) {
                let list = match client.poll_tasks(&poll).await {
                    Ok(list) => list,
                    Err(e) => {
                        stats.error(format!("poll: {}", e.code().unwrap_or("transport")));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for task in list.tasks {
                    let req = CompleteTask {
                        lease_token: task.lease_token,
                        output: None,
                    };
                    match client.complete_task(&task.id, &req).await {
                        Ok(_) => {
                            let t0 = started.lock().unwrap().remove(&task.workflow_id);
                            backlog.add_permits(1);
                            if measuring.load(Ordering::Relaxed) {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                                if let Some(t0) = t0 {
                                    let us = t0.elapsed().as_micros() as u64;
                                    stats.latencies_us.lock().unwrap().push(us);
                                }
                            }
                        }
                        Err(e) => {
                            stats.error(format!("complete: {}", e.code().unwrap_or("transport")))
                        }
                    }
                }
            }
        }));
    }
    println!(
        "bench tasks: {} clients starting single-task workflows, {} workers, over {} nodes, warm-up {} s, measuring {} s",
        args.clients,
        args.workers,
        nodes.len(),
        args.warmup_s,
        args.duration_s
    );
    measure(args, "completed workflows", &stats, &measuring).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), h).await;
    }
    Ok(())
}

/// Waits out the warm-up, counts `stats.ok` for the measured seconds with a progress line per
/// second, then prints the rate, latency percentiles and errors.
async fn measure(args: &BenchArgs, unit: &str, stats: &Stats, measuring: &AtomicBool) {
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    stats.errors.lock().unwrap().clear();
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut last = 0;
    for s in 1..=args.duration_s {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ok = stats.ok.load(Ordering::Relaxed);
        println!("  t={s:>3}s  {:>8} {unit}/s", ok - last);
        last = ok;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let ok = stats.ok.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "{unit}: {ok} in {elapsed:.1} s = {:.0}/s",
        ok as f64 / elapsed
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    let errors = stats.errors.lock().unwrap();
    if errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors: {errors:?}");
    }
}
