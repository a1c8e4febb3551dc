//! `raftflow-jepsen`: runs Jepsen-style scenarios against real `raftflow` processes inside a
//! private network namespace (re-executing itself under `unshare --net`), and exits 0 when
//! every checker passed, 1 when one found an anomaly, 2 when a run was UNKNOWN.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use raftflow_cluster_tests::jepsen::nemesis::Fault;
use raftflow_cluster_tests::jepsen::runner::{run, RunConfig};

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
}

const IN_NETNS: &str = "RAFTFLOW_JEPSEN_NETNS";

fn main() -> anyhow::Result<()> {
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
    let args = Args::parse();
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
        };
        let report = rt.block_on(run(cfg))?;
        let verdict = if report.valid {
            "VALID"
        } else if report.anomalies.values().any(|a| !a.is_empty()) {
            "INVALID"
        } else {
            "UNKNOWN"
        };
        println!(
            "{}: {verdict}  faults={} heal-write={:?}ms counts={:?}",
            report.fault, report.faults_injected, report.heal_write_ms, report.counts
        );
        for (checker, found) in &report.anomalies {
            for a in found.iter().take(5) {
                println!("  {checker}: {a}");
            }
            if found.len() > 5 {
                println!("  {checker}: ... {} more", found.len() - 5);
            }
        }
        for u in &report.unknown {
            println!("  unknown: {u}");
        }
        worst = worst.max(match verdict {
            "VALID" => 0,
            "INVALID" => 1,
            _ => 2,
        });
    }
    std::process::exit(worst);
}
