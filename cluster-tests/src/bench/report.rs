//! The bench's outputs: a line per cell as it finishes, a side-by-side table with the ratios,
//! a JSON file and a PNG chart.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::load::Workload;
use super::{Config, Row, System};
use crate::jepsen::plot::register_font;

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub etcd: String,
    pub date: String,
    /// fdatasync of a small write on the disk the clusters use, before the run (p50, p99):
    /// hosts differ, and drift, most in this.
    pub fsync_us: [f64; 2],
    /// One thread waking another that sleeps in a blocking read (p50, p99 of half a round trip
    /// over a socket pair), before the run: what every hand-off between threads, processes or
    /// nodes costs on top of the work. Virtual machines whose idle cores halt pay most here.
    pub wakeup_us: [f64; 2],
    /// One step of a chain of dependent loads at random places in 4 MiB, before the run
    /// (see [`memory_latency_ns`]).
    #[serde(default)]
    pub memory_ns: f64,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let etcd = std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "not installed".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            etcd,
            date: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            fsync_us: fsync_latency_us(500).unwrap_or([0.0; 2]),
            wakeup_us: wakeup_latency_us(5000).unwrap_or([0.0; 2]),
            memory_ns: memory_latency_ns(),
        }
    }
}

/// The time of one step of a chain of dependent loads at random places in a 4 MiB table, the
/// median of five runs of a million steps (about 15 ms each), on an otherwise idle machine.
///
/// The table outgrows a core's own caches, so each step waits on the cache the cores share
/// or on memory: what a virtual machine's neighbours on the same host take from it. On this
/// project's AMD host it read 11.5 to 22.4 ns within two hours; its worst readings came with
/// the same binary's slowest runs, though not every slow run had one. The bench records it
/// beside each cell so that runs on a busy host can be told apart from slower code.
pub fn memory_latency_ns() -> f64 {
    const SLOTS: usize = 1 << 20;
    const STEPS: u32 = 1_000_000;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let table: Vec<u32> = (0..SLOTS).map(|_| rng.gen_range(0..SLOTS as u32)).collect();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            let mut at = 0u32;
            for i in 0..STEPS {
                // Each address depends on the last load, so the loads cannot overlap.
                at = (table[at as usize] ^ i) & (SLOTS as u32 - 1);
            }
            std::hint::black_box(at);
            started.elapsed().as_secs_f64() * 1e9 / f64::from(STEPS)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    (runs[2] * 10.0).round() / 10.0
}

/// p50 and p99 of `n` fdatasyncs, each after a 512-byte append, in the temporary directory
/// the clusters' data directories are made in.
fn fsync_latency_us(n: usize) -> std::io::Result<[f64; 2]> {
    use std::io::Write;
    let mut file = tempfile::tempfile()?;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        file.write_all(&[7u8; 512])?;
        let t = std::time::Instant::now();
        file.sync_data()?;
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(p50_p99(took).map(f64::round))
}

/// p50 and p99 of half the round trip of one byte between two threads over a Unix socket
/// pair, each thread blocked in `read` until the other writes: a wake-up each way.
fn wakeup_latency_us(n: usize) -> std::io::Result<[f64; 2]> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut here, mut there) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut b = [0u8; 1];
        for _ in 0..n {
            there.read_exact(&mut b)?;
            there.write_all(&b)?;
        }
        Ok(())
    });
    let mut took = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = std::time::Instant::now();
        here.write_all(&b)?;
        here.read_exact(&mut b)?;
        took.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(p50_p99(took).map(|us| (us * 10.0).round() / 10.0))
}

/// The p50 and p99 of a machine probe's samples (at least one).
fn p50_p99(mut samples: Vec<f64>) -> [f64; 2] {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99)]
}

fn cpu_total(row: &Row) -> f64 {
    row.measured.nodes.iter().map(|n| n.cpu_s).sum()
}

fn rss_max(row: &Row) -> f64 {
    row.measured
        .nodes
        .iter()
        .map(|n| n.peak_rss_mib)
        .fold(0.0, f64::max)
}

fn errors(row: &Row) -> String {
    if row.measured.errors.is_empty() {
        return "-".into();
    }
    row.measured
        .errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per finished cell.
pub fn print_row(row: &Row) {
    let m = &row.measured;
    let cpu: Vec<String> = m.nodes.iter().map(|n| format!("{:.1}", n.cpu_s)).collect();
    println!(
        "{:<8} {:<11} {:>4} clients {:>8.0} ops/s  p50 {:>6.2}  p99 {:>6.2}  p99.9 {:>6.2} ms  cpu s {}  rss {:.0} MiB{}  errors {}  (host memory {:.1} ns)",
        row.system.name(),
        row.workload.name(),
        row.clients,
        m.ops_per_s,
        m.p50_ms,
        m.p99_ms,
        m.p999_ms,
        cpu.join("/"),
        rss_max(row),
        row.entries_per_fsync
            .map(|e| format!(
                "  {e:.1} entries/fsync ({:.1} commands, {:.0} µs each)",
                row.commands_per_fsync.unwrap_or(0.0),
                row.fsync_us.unwrap_or(0.0)
            ))
            .unwrap_or_default(),
        errors(row),
        m.host_memory_ns,
    );
    for (code, message) in &m.error_examples {
        println!("         {code}: {message}");
    }
}

fn find(rows: &[Row], system: System, workload: Workload, clients: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.system == system && r.workload == workload && r.clients == clients)
}

/// raftflow's ops/s over etcd's for the same workload and clients.
pub fn ratio(rows: &[Row], workload: Workload, clients: usize) -> Option<f64> {
    let r = find(rows, System::Raftflow, workload, clients)?;
    let e = find(rows, System::Etcd, workload, clients)?;
    (e.measured.ops_per_s > 0.0).then(|| r.measured.ops_per_s / e.measured.ops_per_s)
}

/// The side-by-side table, as Markdown (it reads on a terminal too).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | clients | raftflow ops/s | p50 / p99 / p99.9 ms | cpu s (3 nodes) | peak RSS MiB | etcd ops/s | p50 / p99 / p99.9 ms | cpu s (3 nodes) | peak RSS MiB | raftflow / etcd |\n\
         |---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|\n",
    );
    let mut keys: Vec<(Workload, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.workload, r.clients)) {
            keys.push((r.workload, r.clients));
        }
    }
    let cols = |r: Option<&Row>| -> String {
        match r {
            Some(r) => format!(
                "{:.0} | {:.2} / {:.2} / {:.2} | {:.1} | {:.0}",
                r.measured.ops_per_s,
                r.measured.p50_ms,
                r.measured.p99_ms,
                r.measured.p999_ms,
                cpu_total(r),
                rss_max(r)
            ),
            None => "- | - | - | -".into(),
        }
    };
    out.push_str(&side_by_side(rows, &keys, cols, |workload, clients| {
        let ratio = ratio(rows, workload, clients)
            .map(|x| format!("{x:.2}×"))
            .unwrap_or_else(|| "-".into());
        format!(" {ratio} |")
    }));
    out.push_str(&cost_table(rows, &keys));
    out.push_str(&security_table(rows, &keys));
    out.push_str(&baseline_table(rows));
    let errs: Vec<String> = rows
        .iter()
        .filter(|r| !r.measured.errors.is_empty())
        .map(|r| {
            format!(
                "{} {} {}: {}",
                r.system.name(),
                r.workload.name(),
                r.clients,
                errors(r)
            )
        })
        .collect();
    out.push_str(&format!(
        "\nerrors: {}\n",
        if errs.is_empty() {
            "none".to_string()
        } else {
            errs.join("; ")
        }
    ));
    out
}

/// CPU microseconds per operation: the three nodes together, and the load generator (which
/// shares the machine). The `ping` rows are the floor: an HTTP round trip with no work behind it.
/// Beside them, the host's memory latency measured right before the cell: the same code costs
/// more CPU on a host whose neighbours keep its shared caches busy.
fn cost_table(rows: &[Row], keys: &[(Workload, usize)]) -> String {
    let mut out = String::from(
        "\nCPU per operation, µs (3 nodes + generator), and the host's memory latency before the cell, ns:\n\n\
         | workload | clients | raftflow nodes | raftflow generator | host memory | etcd nodes | etcd generator | host memory |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let us = |r: Option<&Row>| -> String {
        match r.and_then(|r| Some((cpu_per_op_us(r)?, r.measured.host_memory_ns))) {
            Some(((nodes, generator), memory)) => {
                format!("{nodes:.0} | {generator:.0} | {memory:.1}")
            }
            None => "- | - | -".into(),
        }
    };
    out.push_str(&side_by_side(rows, keys, us, |_, _| String::new()));
    out
}

/// raftflow's single-task workflows beside the simple service's (start, then complete), with
/// Redis fsyncing every write and once a second.
fn baseline_table(rows: &[Row]) -> String {
    let mut clients: Vec<usize> = rows
        .iter()
        .filter(|r| r.workload == Workload::Tasks)
        .map(|r| r.clients)
        .collect();
    clients.sort_unstable();
    clients.dedup();
    let cell =
        |system: System, c: usize| find(rows, system, Workload::Tasks, c).map(|r| &r.measured);
    let mut lines = Vec::new();
    for c in clients {
        let (Some(ours), always, everysec) = (
            cell(System::Raftflow, c),
            cell(System::FlaskRedisAlways, c),
            cell(System::FlaskRedisEverysec, c),
        ) else {
            continue;
        };
        if always.is_none() && everysec.is_none() {
            continue;
        }
        let show = |m: Option<&super::load::Measured>| {
            m.map(|m| format!("{:.0} | {:.1}", m.ops_per_s, m.p99_ms))
                .unwrap_or_else(|| "- | -".into())
        };
        let ratio = always
            .filter(|m| m.ops_per_s > 0.0)
            .map(|m| format!("{:.2}×", ours.ops_per_s / m.ops_per_s))
            .unwrap_or_else(|| "-".into());
        lines.push(format!(
            "| {c} | {} | {} | {} | {ratio} |\n",
            show(Some(ours)),
            show(always),
            show(everysec)
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nSingle-task workflows completed per second against the simple service (Flask on one \
         Redis under gunicorn: start, then complete; no replica):\n\n\
         | clients | raftflow /s | p99 ms | flask+redis always /s | p99 ms | flask+redis everysec /s | p99 ms | raftflow / always |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    out.extend(lines);
    out
}

/// What mutual TLS between the nodes and a token on every request cost: raftflow's cells
/// beside `raftflow-secure`'s, where both ran.
fn security_table(rows: &[Row], keys: &[(Workload, usize)]) -> String {
    let pairs: Vec<_> = keys
        .iter()
        .filter_map(|&(w, c)| {
            Some((
                w,
                c,
                find(rows, System::Raftflow, w, c)?,
                find(rows, System::RaftflowSecure, w, c)?,
            ))
        })
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nThe cost of peer TLS and API tokens (raftflow-secure: mutual TLS between the nodes, a \
         bearer token on every request):\n\n\
         | workload | clients | plain ops/s | secure ops/s | throughput cost | plain p99 ms | secure p99 ms | plain µs CPU/op | secure µs CPU/op |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (w, c, plain, secure) in pairs {
        let cost = if plain.measured.ops_per_s > 0.0 {
            format!(
                "{:+.1}%",
                (secure.measured.ops_per_s / plain.measured.ops_per_s - 1.0) * 100.0
            )
        } else {
            "-".into()
        };
        let cpu = |r: &Row| {
            cpu_per_op_us(r)
                .map(|(n, _)| format!("{n:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "| {} | {c} | {:.0} | {:.0} | {cost} | {:.1} | {:.1} | {} | {} |\n",
            w.name(),
            plain.measured.ops_per_s,
            secure.measured.ops_per_s,
            plain.measured.p99_ms,
            secure.measured.p99_ms,
            cpu(plain),
            cpu(secure),
        ));
    }
    out
}

/// One Markdown row per (workload, clients): the cell's columns for raftflow, then for etcd
/// (`cols` of `None` when a system did not run it), then `tail`'s extra columns.
fn side_by_side(
    rows: &[Row],
    keys: &[(Workload, usize)],
    cols: impl Fn(Option<&Row>) -> String,
    tail: impl Fn(Workload, usize) -> String,
) -> String {
    let mut out = String::new();
    for &(workload, clients) in keys {
        out.push_str(&format!(
            "| {} | {} | {} | {} |{}\n",
            workload.name(),
            clients,
            cols(find(rows, System::Raftflow, workload, clients)),
            cols(find(rows, System::Etcd, workload, clients)),
            tail(workload, clients),
        ));
    }
    out
}

/// (nodes, generator) CPU µs per operation of a cell, if it completed any.
pub fn cpu_per_op_us(row: &Row) -> Option<(f64, f64)> {
    let ops = row.measured.ops as f64;
    (ops > 0.0).then(|| {
        (
            cpu_total(row) / ops * 1e6,
            row.measured.generator_cpu_s / ops * 1e6,
        )
    })
}

/// What the report carries besides the cells.
#[derive(Serialize)]
pub struct Extras<'a> {
    pub machine: &'a Machine,
    pub idle: Option<&'a super::IdleResult>,
    pub restart: Option<&'a super::RestartResult>,
    pub join: Option<&'a super::JoinResult>,
    pub group_add: Option<&'a super::GroupAddResult>,
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    extras: &'a Extras<'a>,
    config: &'a Config,
    rows: &'a [Row],
    ratios: Vec<RatioRow>,
}

#[derive(Serialize)]
struct RatioRow {
    workload: Workload,
    clients: usize,
    raftflow_over_etcd: f64,
}

pub fn write_json(
    path: &Path,
    extras: &Extras<'_>,
    config: &Config,
    rows: &[Row],
) -> anyhow::Result<()> {
    let mut ratios = Vec::new();
    for r in rows.iter().filter(|r| r.system == System::Raftflow) {
        if let Some(x) = ratio(rows, r.workload, r.clients) {
            ratios.push(RatioRow {
                workload: r.workload,
                clients: r.clients,
                raftflow_over_etcd: x,
            });
        }
    }
    let report = Report {
        extras,
        config,
        rows,
        ratios,
    };
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))
}

/// The rows of a `bench.json` written by [`write_json`], to draw its chart again.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    #[derive(serde::Deserialize)]
    struct Saved {
        rows: Vec<Row>,
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(serde_json::from_slice::<Saved>(&bytes)?.rows)
}

/// One colour per entry of [`Workload::ALL`], in that order.
const WORKLOAD_COLORS: [RGBColor; Workload::ALL.len()] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

/// Throughput (top) and p99 latency (bottom) against clients, one line per system and
/// workload: raftflow solid with circles, etcd thin with triangles.
pub fn plot(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    register_font()?;
    let mut clients: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    anyhow::ensure!(!clients.is_empty(), "nothing to plot");
    let x_of = |c: usize| clients.iter().position(|&x| x == c).unwrap_or(0) as f64;
    let root = BitMapBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let x_max = clients.len() as f64 - 0.5;
    let label = |x: &f64| {
        clients
            .get(x.round().max(0.0) as usize)
            .filter(|_| (x - x.round()).abs() < 1e-6)
            .map(|c| c.to_string())
            .unwrap_or_default()
    };
    for (area, title, y_desc, value) in [
        (
            &top,
            "operations per second (log scale)",
            "ops/s",
            (|r: &Row| r.measured.ops_per_s) as fn(&Row) -> f64,
        ),
        (
            &bottom,
            "p99 latency (log scale)",
            "ms",
            (|r: &Row| r.measured.p99_ms) as fn(&Row) -> f64,
        ),
    ] {
        // Logarithmic: the task workload's latency is ten times the others'.
        let y_max = rows.iter().map(value).fold(1.0, f64::max) * 1.5;
        let y_min = rows
            .iter()
            .map(value)
            .filter(|v| *v > 0.0)
            .fold(y_max, f64::min)
            / 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients")
            .y_desc(y_desc)
            .x_labels(clients.len() * 2 + 1)
            .x_label_formatter(&label)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, workload) in Workload::ALL.iter().enumerate() {
            let color = WORKLOAD_COLORS[i];
            for system in [
                System::Raftflow,
                System::RaftflowSecure,
                System::Etcd,
                System::FlaskRedisAlways,
                System::FlaskRedisEverysec,
            ] {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.system == system && r.workload == *workload)
                    .map(|r| (x_of(r.clients), value(r)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let (width, name) = match system {
                    System::Raftflow => (3, format!("raftflow {}", workload.name())),
                    System::Etcd => (1, format!("etcd {}", workload.name())),
                    System::RaftflowSecure => (2, format!("raftflow secure {}", workload.name())),
                    System::FlaskRedisAlways | System::FlaskRedisEverysec => {
                        (1, format!("{} {}", system.name(), workload.name()))
                    }
                };
                let style = color.stroke_width(width);
                chart
                    .draw_series(LineSeries::new(points.clone(), style))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
                match system {
                    System::Raftflow | System::RaftflowSecure => {
                        chart.draw_series(
                            points.iter().map(|&p| Circle::new(p, 4, color.filled())),
                        )?;
                    }
                    System::Etcd => {
                        chart.draw_series(
                            points
                                .iter()
                                .map(|&p| TriangleMarker::new(p, 5, color.filled())),
                        )?;
                    }
                    System::FlaskRedisAlways | System::FlaskRedisEverysec => {
                        chart.draw_series(
                            points.iter().map(|&p| Cross::new(p, 5, color.filled())),
                        )?;
                    }
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Measured;

    fn row(system: System, workload: Workload, clients: usize, ops: f64) -> Row {
        Row {
            system,
            workload,
            clients,
            measured: Measured {
                ops: ops as u64,
                seconds: 1.0,
                ops_per_s: ops,
                p50_ms: 1.0,
                p99_ms: 2.0,
                p999_ms: 3.0,
                max_ms: 4.0,
                errors: Default::default(),
                error_examples: Default::default(),
                nodes: Vec::new(),
                generator_cpu_s: 0.0,
                host_memory_ns: 0.0,
            },
            entries_per_fsync: None,
            commands_per_fsync: None,
            fsync_us: None,
        }
    }

    #[test]
    fn ratios_pair_the_same_workload_and_clients() {
        let rows = vec![
            row(System::Raftflow, Workload::Transitions, 64, 3000.0),
            row(System::Etcd, Workload::Transitions, 64, 2000.0),
            row(System::Etcd, Workload::Transitions, 256, 2000.0),
            row(System::Raftflow, Workload::Tasks, 64, 500.0),
        ];
        assert_eq!(ratio(&rows, Workload::Transitions, 64), Some(1.5));
        assert_eq!(ratio(&rows, Workload::Transitions, 256), None);
        assert_eq!(ratio(&rows, Workload::Tasks, 64), None);
        let t = table(&rows);
        assert!(t.contains("| transitions | 64 | 3000 |"), "{t}");
        assert!(t.contains("1.50×"), "{t}");
        assert!(t.contains("| tasks | 64 | 500 |"), "{t}");
    }

    #[test]
    fn cost_per_operation_divides_cpu_by_completed_operations() {
        let mut r = row(System::Raftflow, Workload::Ping, 64, 1000.0);
        r.measured.generator_cpu_s = 0.02;
        r.measured.host_memory_ns = 12.5;
        r.measured.nodes = vec![
            crate::bench::procstat::Usage {
                pid: 1,
                cpu_s: 0.01,
                peak_rss_mib: 10.0,
            };
            3
        ];
        let (nodes, generator) = cpu_per_op_us(&r).unwrap();
        assert!((nodes - 30.0).abs() < 1e-9, "{nodes}");
        assert!((generator - 20.0).abs() < 1e-9, "{generator}");
        let none = row(System::Etcd, Workload::Ping, 64, 0.0);
        assert_eq!(cpu_per_op_us(&none), None);
        let t = table(&[r, none]);
        assert!(
            t.contains("| ping | 64 | 30 | 20 | 12.5 | - | - | - |"),
            "{t}"
        );
    }

    #[test]
    fn the_memory_probe_measures_a_plausible_load_latency() {
        // A dependent load cannot take less than a core's cycle (well under 1 ns counts as the
        // loop optimised away), nor, on any machine this runs on, a millisecond.
        let ns = memory_latency_ns();
        assert!((0.5..1_000_000.0).contains(&ns), "{ns} ns per step");
    }

    #[test]
    fn a_wakeup_costs_something_and_p99_is_not_below_p50() {
        let [p50, p99] = wakeup_latency_us(200).unwrap();
        assert!(p50 > 0.0 && p99 >= p50, "{p50} {p99}");
    }
}
