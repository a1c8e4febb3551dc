//! Prometheus text-format metrics: HTTP requests and latencies, proposals, read-index calls,
//! WAL group commit, and each group's applied index, term and leader.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_S.len()],
    sum_s: f64,
    count: u64,
}

#[derive(Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl HttpMetrics {
    fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        let mut lat = self.latency.lock().expect("metrics lock");
        let h = lat.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS_S.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum_s += seconds;
        h.count += 1;
    }
}

/// Middleware: counts every request by route template, method and status, and times it.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let access = state.config.access_log.then(|| {
        (
            req.uri().path().to_string(),
            req.uri().query().map(str::to_string),
        )
    });
    let start = Instant::now();
    let resp = next.run(req).await;
    if let Some((path, query)) = access {
        let caller = resp.extensions().get::<crate::auth::Caller>();
        tracing::info!(
            target: "raftflow::access",
            method = %method,
            path = %path,
            query = %query.as_deref().unwrap_or(""),
            status = resp.status().as_u16(),
            ms = %format!("{:.3}", start.elapsed().as_secs_f64() * 1e3),
            caller = %caller.map_or("-", |c| &*c.name),
            "request"
        );
    }
    state.metrics.record(
        &route,
        &method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# TYPE raftflow_http_requests_total counter");
    for ((route, method, status), n) in state.metrics.requests.lock().expect("lock").iter() {
        let _ = writeln!(
            w,
            "raftflow_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(w, "# TYPE raftflow_http_request_duration_seconds histogram");
    for (route, h) in state.metrics.latency.lock().expect("lock").iter() {
        for (i, b) in BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                w,
                "raftflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            w,
            "raftflow_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            w,
            "raftflow_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            h.sum_s
        );
        let _ = writeln!(
            w,
            "raftflow_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count
        );
    }
    let node = &state.node;
    let c = node.counters();
    // Counters print as numbers without a fraction when they have none (f64 holds them exactly
    // up to 2^53).
    let n = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed) as f64;
    let counters = [
        (
            "raftflow_proposals_total",
            "Commands proposed by this node.",
            n(&c.proposals),
        ),
        (
            "raftflow_proposal_entries_total",
            "Raft entries this node's proposals went into; under load several commands share one.",
            n(&c.proposal_entries),
        ),
        (
            "raftflow_proposals_failed_total",
            "Proposals that failed (not leader, no quorum).",
            n(&c.proposals_failed),
        ),
        (
            "raftflow_read_index_total",
            "Linearizable read barriers.",
            n(&c.read_barriers),
        ),
        (
            "raftflow_moved_answers_total",
            "Requests that met a \"moved\" answer (their slot moved between groups) and followed it.",
            n(&c.moved_answers),
        ),
        (
            "raftflow_slot_moves_total",
            "Slot moves this node drove to their end (as the meta group's leader).",
            n(&c.slot_moves),
        ),
        (
            "raftflow_slots_moved_total",
            "Slots those moves took to another group.",
            n(&c.slots_moved),
        ),
        (
            "raftflow_slot_rows_copied_total",
            "Rows those moves copied.",
            n(&c.slot_rows_copied),
        ),
        (
            "raftflow_slot_bytes_copied_total",
            "Bytes of rows those moves copied.",
            n(&c.slot_bytes_copied),
        ),
    ];
    let sync = node.store().syncer().stats();
    let wal = [
        (
            "raftflow_wal_fsyncs_total",
            "WAL fsyncs (group commits).",
            n(&sync.syncs),
        ),
        (
            "raftflow_wal_sync_requests_total",
            "Appends and votes acknowledged by those fsyncs.",
            n(&sync.requests),
        ),
        (
            "raftflow_wal_synced_entries_total",
            "Log entries made durable; divide by fsyncs for entries per fsync.",
            n(&sync.entries),
        ),
        (
            "raftflow_wal_synced_commands_total",
            "Client commands in those entries (an entry carries several under load); divide by fsyncs for commands per fsync.",
            n(&sync.commands),
        ),
        (
            "raftflow_wal_fsync_seconds_total",
            "Time spent in WAL fsyncs; divide by fsyncs for the mean.",
            n(&sync.sync_micros) / 1e6,
        ),
    ];
    for (name, help, v) in counters.iter().chain(wal.iter()) {
        let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(
        w,
        "# HELP raftflow_http_requests_inflight Requests being served now (health, readiness and metrics not counted); at max_inflight_requests more are shed with 429.\n# TYPE raftflow_http_requests_inflight gauge\nraftflow_http_requests_inflight {}",
        state.inflight_requests()
    );
    let moving = node.slot_move().map_or(0, |m| m.slots);
    let _ = writeln!(
        w,
        "# HELP raftflow_slots_moving Slots in the slot move under way (0: none).\n# TYPE raftflow_slots_moving gauge\nraftflow_slots_moving {moving}"
    );
    let _ = writeln!(w, "# TYPE raftflow_group_slots gauge");
    for (group, slots) in node.slots().slots_per_group() {
        let _ = writeln!(w, "raftflow_group_slots{{group=\"{group}\"}} {slots}");
    }
    let _ = writeln!(w, "# TYPE raftflow_group_applied_index gauge");
    let _ = writeln!(w, "# TYPE raftflow_group_leader gauge");
    let _ = writeln!(w, "# TYPE raftflow_group_is_leader gauge");
    let _ = writeln!(w, "# TYPE raftflow_group_term gauge");
    for g in node.group_status() {
        let id = g.id;
        let _ = writeln!(
            w,
            "raftflow_group_applied_index{{group=\"{id}\"}} {}",
            g.last_applied.unwrap_or(0)
        );
        let _ = writeln!(
            w,
            "raftflow_group_leader{{group=\"{id}\"}} {}",
            g.leader.unwrap_or(0)
        );
        let _ = writeln!(
            w,
            "raftflow_group_is_leader{{group=\"{id}\"}} {}",
            u8::from(g.leader == Some(node.id()))
        );
        let _ = writeln!(w, "raftflow_group_term{{group=\"{id}\"}} {}", g.term);
    }
    out
}
