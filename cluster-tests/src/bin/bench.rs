//! `raftflow-bench`: raftflow and etcd side by side on this machine (see `bench` in the
//! library). Writes `table.md`, `bench.json` and `chart.png` under `--out`.

use std::path::PathBuf;

use clap::Parser;
use raftflow_cluster_tests::bench::load::Workload;
use raftflow_cluster_tests::bench::report::{self, Machine};
use raftflow_cluster_tests::bench::{run, Config, System};

#[derive(Parser, Debug)]
struct Args {
    /// Comma-separated: create, transitions, read-mix, tasks.
    #[arg(long, default_value = "create,transitions,read-mix,tasks")]
    workloads: String,
    /// Comma-separated numbers of concurrent clients.
    #[arg(long, default_value = "1,16,64,256")]
    concurrency: String,
    /// Comma-separated: raftflow, etcd.
    #[arg(long, default_value = "raftflow,etcd")]
    systems: String,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 5)]
    duration_s: u64,
    /// Seconds of load before each cell's measurement.
    #[arg(long, default_value_t = 1)]
    warmup_s: u64,
    /// raftflow's Raft groups.
    #[arg(long, default_value_t = 8)]
    groups: u64,
    /// Tokio worker threads per raftflow node (default: one per core).
    #[arg(long)]
    node_threads: Option<usize>,
    /// Report directory.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// The raftflow binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
}

fn list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(|x| parse(x.trim()).ok_or_else(|| anyhow::anyhow!("unknown {what} {x:?}")))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config {
        systems: list(&args.systems, "system", |s| match s {
            "raftflow" => Some(System::Raftflow),
            "etcd" => Some(System::Etcd),
            _ => None,
        })?,
        workloads: list(&args.workloads, "workload", Workload::parse)?,
        concurrency: list(&args.concurrency, "concurrency", |s| {
            s.parse().ok().filter(|&n: &usize| (1..=4096).contains(&n))
        })?,
        warmup_s: args.warmup_s,
        duration_s: args.duration_s.max(1),
        groups: args.groups,
        node_threads: args.node_threads,
        bin: args.bin.clone(),
    };
    let machine = Machine::describe();
    println!(
        "raftflow-bench: {} ({} cores, {} GiB), {}; {} s per cell after {} s warm-up",
        machine.cpu,
        machine.cores,
        machine.memory_gib,
        machine.etcd,
        config.duration_s,
        config.warmup_s
    );
    let rows = run(&config).await?;
    let table = report::table(&rows);
    println!("\n{table}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("table.md"), &table)?;
    report::write_json(&args.out.join("bench.json"), &machine, &config, &rows)?;
    report::plot(&args.out.join("chart.png"), &rows)?;
    println!(
        "wrote {0}/table.md, {0}/bench.json, {0}/chart.png",
        args.out.display()
    );
    Ok(())
}
