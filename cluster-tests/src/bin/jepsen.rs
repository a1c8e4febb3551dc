//! `raftflow-jepsen`: runs Jepsen-style scenarios against real `raftflow` processes inside a
//! private network namespace (re-executing itself under `unshare --net`), and exits 0 when
//! every checker passed, 1 when one found an anomaly, 2 when a run was UNKNOWN.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use raftflow_cluster_tests::jepsen::history::read_jsonl;
use raftflow_cluster_tests::jepsen::nemesis::Fault;
use raftflow_cluster_tests::jepsen::runner::{judge, run, Judgement, RunConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Fault to cycle (kill-leader, kill-follower, kill-all, pause-leader,
    /// partition-leader-minority, partition-leader-majority, bridge, one-way, clock) or `all`.
    #[arg(long, default_value = "all")]
    fault: String,
    /// Seconds of faults per scenario.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Drives the operation mix and the fault schedule; printed at the start.
    #[arg(long)]
    seed: Option<u64>,
    /// Report directory (one sub-directory per scenario).
    #[arg(long, default_value = "jepsen-report")]
    out: PathBuf,
    /// The raftflow binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Run the nodes with RAFTFLOW_MUTANT set (needs a binary built with `--features mutants`).
    #[arg(long)]
    mutant: Option<String>,
    #[arg(long, default_value_t = 4)]
    groups: u64,
    /// Runs per fault, each with its own seed (seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Peers talk plain TCP instead of mutual TLS (certificates made by `raftflow certs`).
    #[arg(long)]
    plain_peers: bool,
    /// Run nothing: judge the recorded histories under this report directory again.
    #[arg(long)]
    check: Option<PathBuf>,
}

const IN_NETNS: &str = "RAFTFLOW_JEPSEN_NETNS";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.check {
        std::process::exit(check_again(dir)?);
    }
    if std::env::var(IN_NETNS).as_deref() != Ok("1") {
        // Everything the run sends stays inside a network namespace of its own, which has only
        // a loopback interface and no route out.
        let me = std::env::current_exe()?;
        let status = Command::new("unshare")
            .args(["--net", "--fork", "--"])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .env(IN_NETNS, "1")
            .status()
            .map_err(|e| anyhow::anyhow!("running unshare (util-linux; needs root): {e}"))?;
        std::process::exit(status.code().unwrap_or(2));
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    anyhow::ensure!(up.success(), "could not bring up loopback in the namespace");
    let faults: Vec<Fault> = if args.fault == "all" {
        Fault::ALL.to_vec()
    } else {
        args.fault
            .split(',')
            .map(|f| Fault::parse(f).ok_or_else(|| anyhow::anyhow!("unknown fault {f:?}")))
            .collect::<Result<_, _>>()?
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("seed {seed}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut worst = 0;
    let mut plan = Vec::new();
    for fault in faults {
        for r in 0..args.runs {
            plan.push((fault, r));
        }
    }
    for (i, (fault, r)) in plan.into_iter().enumerate() {
        let dir = if args.runs > 1 {
            format!("{}-{r}", fault.name())
        } else {
            fault.name().to_string()
        };
        let cfg = RunConfig {
            fault,
            seconds: args.seconds,
            seed: seed.wrapping_add(i as u64),
            out: args.out.join(dir),
            bin: args.bin.clone(),
            mutant: args.mutant.clone(),
            groups: args.groups,
            peer_tls: !args.plain_peers,
        };
        let report = rt.block_on(run(cfg))?;
        worst = worst.max(print_verdict(&report.fault, &report.judgement));
    }
    std::process::exit(worst);
}

/// Prints a judgement; returns the exit code it calls for (0 valid, 1 anomalies, 2 unknown).
fn print_verdict(name: &str, j: &Judgement) -> i32 {
    let (verdict, code) = if j.valid {
        ("VALID", 0)
    } else if j.anomalies.values().any(|a| !a.is_empty()) {
        ("INVALID", 1)
    } else {
        ("UNKNOWN", 2)
    };
    println!(
        "{name}: {verdict}  faults={} heal-write={:?}ms counts={:?}",
        j.faults_injected, j.heal_write_ms, j.counts
    );
    for (checker, found) in &j.anomalies {
        for a in found.iter().take(5) {
            println!("  {checker}: {a}");
        }
        if found.len() > 5 {
            println!("  {checker}: ... {} more", found.len() - 5);
        }
    }
    for u in &j.unknown {
        println!("  unknown: {u}");
    }
    code
}

/// Judges the `history.jsonl` of every run directory under `dir` again.
fn check_again(dir: &std::path::Path) -> anyhow::Result<i32> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("history.jsonl").exists())
        .collect();
    if dir.join("history.jsonl").exists() {
        runs.push(dir.to_path_buf());
    }
    anyhow::ensure!(!runs.is_empty(), "no history.jsonl under {}", dir.display());
    runs.sort();
    let mut worst = 0;
    for run in runs {
        let ops = read_jsonl(&run.join("history.jsonl"))?;
        worst = worst.max(print_verdict(&run.display().to_string(), &judge(&ops)));
    }
    Ok(worst)
}
