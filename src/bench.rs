//! `raftflow bench`: closed-loop clients spread over the nodes, each driving its own workflow
//! with compare-and-set transitions, for a fixed time after a warm-up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use raftflow_api::client::Client;
use raftflow_api::types::{CreateWorkflow, SendEvent};

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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let nodes: Vec<Client> = args
        .nodes
        .split(',')
        .map(|a| Client::new(a.trim(), timeout))
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "--nodes is empty");
    nodes[0]
        .put_definition("bench-pingpong", &pingpong())
        .await
        .context("defining the bench workflow")?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
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
        "bench: {} clients over {} nodes, warm-up {} s, measuring {} s",
        args.clients,
        nodes.len(),
        args.warmup_s,
        args.duration_s
    );
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut last = 0;
    for s in 1..=args.duration_s {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ok = stats.ok.load(Ordering::Relaxed);
        println!("  t={s:>3}s  {:>8} transitions/s", ok - last);
        last = ok;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), t).await;
    }
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
        "transitions: {ok} in {elapsed:.1} s = {:.0}/s",
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
    Ok(())
}
