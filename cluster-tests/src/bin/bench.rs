//! `raftflow-bench`: raftflow and etcd side by side on this machine (see `bench` in the
//! library). Writes `table.md`, `bench.json` and `chart.png` under `--out`.

use std::path::PathBuf;

// The generator shares the cores with the systems it measures: the allocator the nodes use
// spends less of them than glibc's on its many small request and response buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use raftflow_cluster_tests::bench::load::Workload;
use raftflow_cluster_tests::bench::report::{self, Machine};
use raftflow_cluster_tests::bench::{
    add_group, idle, join as join_bench, restart, run, Config, System,
};

#[derive(Parser, Debug)]
struct Args {
    /// Comma-separated: create, transitions, read-mix, tasks, task-loop, ping, events,
    /// events-one-node, events-wrk (empty: none).
    #[arg(
        long,
        default_value = "create,transitions,read-mix,tasks,task-loop,ping,events,events-one-node,events-wrk"
    )]
    workloads: String,
    /// Orders with 1 KiB contexts that the events workloads pick from at random.
    #[arg(long, default_value_t = 10_000)]
    population: usize,
    /// Comma-separated numbers of concurrent clients.
    #[arg(long, default_value = "1,16,64,256")]
    concurrency: String,
    /// Comma-separated: raftflow, etcd, raftflow-secure (mutual TLS between the nodes and an
    /// API token on every request: the cost of both), flask-redis-always and
    /// flask-redis-everysec (the simple service of cluster-tests/baseline, tasks only).
    #[arg(
        long,
        default_value = "raftflow,etcd,flask-redis-always,flask-redis-everysec"
    )]
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
    /// Also measure the CPU of a cluster with this many idle groups (0: skip).
    #[arg(long, default_value_t = 64)]
    idle_groups: u64,
    /// Also time a kill -9 and restart of a node holding this many workflows (0: skip).
    #[arg(long, default_value_t = 0)]
    restart_workflows: u64,
    /// Also time a fourth node joining a cluster holding this many workflows, under a
    /// transition load (0: skip).
    #[arg(long, default_value_t = 0)]
    join_workflows: u64,
    /// Clients of the transition load around the join.
    #[arg(long, default_value_t = 64)]
    join_clients: usize,
    /// Also time adding a data group to a cluster holding this many workflows (of `--groups`
    /// groups), under a transition load (0: skip).
    #[arg(long, default_value_t = 0)]
    group_workflows: u64,
    /// Report directory.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Run nothing: draw `chart.png` beside this `bench.json` again.
    #[arg(long)]
    plot_only: Option<PathBuf>,
    /// The raftflow binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
}

fn list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(|x| parse(x.trim()).ok_or_else(|| anyhow::anyhow!("unknown {what} {x:?}")))
        .collect()
}

fn join(xs: &[f64], decimals: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(json) = &args.plot_only {
        let chart = json.with_file_name("chart.png");
        report::plot(&chart, &report::read_rows(json)?)?;
        println!("wrote {}", chart.display());
        return Ok(());
    }
    let config = Config {
        systems: list(&args.systems, "system", |s| match s {
            "raftflow" => Some(System::Raftflow),
            "etcd" => Some(System::Etcd),
            "raftflow-secure" => Some(System::RaftflowSecure),
            "flask-redis-always" => Some(System::FlaskRedisAlways),
            "flask-redis-everysec" => Some(System::FlaskRedisEverysec),
            _ => None,
        })?,
        workloads: if args.workloads.is_empty() {
            Vec::new()
        } else {
            list(&args.workloads, "workload", Workload::parse)?
        },
        concurrency: list(&args.concurrency, "concurrency", |s| {
            s.parse().ok().filter(|&n: &usize| (1..=4096).contains(&n))
        })?,
        warmup_s: args.warmup_s,
        duration_s: args.duration_s.max(1),
        groups: args.groups,
        node_threads: args.node_threads,
        population: args.population.max(1),
        bin: args.bin.clone(),
    };
    let machine = Machine::describe();
    println!(
        "raftflow-bench: {} ({} cores, {} GiB, fdatasync p50 {} / p99 {} µs, thread wake-up p50 {} / p99 {} µs, memory {} ns), {}; {} s per cell after {} s warm-up",
        machine.cpu,
        machine.cores,
        machine.memory_gib,
        machine.fsync_us[0],
        machine.fsync_us[1],
        machine.wakeup_us[0],
        machine.wakeup_us[1],
        machine.memory_ns,
        machine.etcd,
        config.duration_s,
        config.warmup_s
    );
    let rows = if config.workloads.is_empty() {
        Vec::new()
    } else {
        run(&config).await?
    };
    let mut table = report::table(&rows);
    let idle = if args.idle_groups > 0 {
        let r = idle(args.idle_groups, 10, args.bin.clone()).await?;
        table.push_str(&format!(
            "\nidle: {} groups, CPU per node {} % of a core, RSS {} MiB\n",
            r.groups,
            join(&r.cpu_percent, 1),
            join(&r.rss_mib, 0)
        ));
        Some(r)
    } else {
        None
    };
    let restarted = if args.restart_workflows > 0 {
        let r = restart(args.restart_workflows, args.groups, args.bin.clone()).await?;
        table.push_str(&format!(
            "\nrestart: node 3 holding {} workflows ({:.0} MiB on disk, loaded in {:.0} s) ready {:.2} s and serving {:.2} s after kill -9; RSS {:.0} MiB at ready, peak {:.0} MiB\n",
            r.workflows, r.data_dir_mib, r.load_seconds, r.ready_seconds, r.serving_seconds, r.rss_at_ready_mib, r.peak_rss_mib
        ));
        Some(r)
    } else {
        None
    };
    let joined = if args.join_workflows > 0 {
        let r = join_bench(
            args.join_workflows,
            args.groups,
            args.join_clients,
            args.duration_s.max(10),
            args.bin.clone(),
        )
        .await?;
        table.push_str(&format!(
            "\njoin: a 4th node joins 3 holding {} workflows ({:.0} MiB per node, loaded in {:.0} s): \
             active after {:.1} s, holds its share ({} of {} voting replicas) after {:.1} s, \
             {:.0} MiB caught up ({:.1} MiB/s); transitions from {} clients {:.0}/s p99 {:.1} ms \
             during the change, {:.0}/s p99 {:.1} ms before it\n",
            r.workflows,
            r.node_data_mib,
            r.load_seconds,
            r.active_seconds,
            r.replicas,
            r.groups * 3,
            r.share_seconds,
            r.caught_up_mib,
            r.catch_up_mib_per_s,
            args.join_clients,
            r.during.ops_per_s,
            r.during.p99_ms,
            r.before.ops_per_s,
            r.before.p99_ms,
        ));
        Some(r)
    } else {
        None
    };
    let group_added = if args.group_workflows > 0 {
        let r = add_group(
            args.group_workflows,
            args.groups,
            args.join_clients,
            args.duration_s.max(10),
            args.bin.clone(),
        )
        .await?;
        table.push_str(&format!(
            "\nadd a group: {} groups holding {} workflows (loaded in {:.0} s) get a {}th; it holds \
             {} slots (about {} workflows moved) after {:.1} s; transitions from {} clients \
             {:.0}/s p99 {:.1} ms max {:.0} ms ({} errors) during the move, {:.0}/s p99 {:.1} ms \
             max {:.0} ms before it\n",
            r.groups,
            r.workflows,
            r.load_seconds,
            r.groups + 1,
            r.slots_moved,
            r.workflows_moved,
            r.move_seconds,
            args.join_clients,
            r.during.ops_per_s,
            r.during.p99_ms,
            r.during.max_ms,
            r.during.errors.values().sum::<u64>(),
            r.before.ops_per_s,
            r.before.p99_ms,
            r.before.max_ms,
        ));
        Some(r)
    } else {
        None
    };
    println!("\n{table}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("table.md"), &table)?;
    report::write_json(
        &args.out.join("bench.json"),
        &report::Extras {
            machine: &machine,
            idle: idle.as_ref(),
            restart: restarted.as_ref(),
            join: joined.as_ref(),
            group_add: group_added.as_ref(),
        },
        &config,
        &rows,
    )?;
    if !rows.is_empty() {
        report::plot(&args.out.join("chart.png"), &rows)?;
    }
    println!(
        "wrote {0}/table.md, {0}/bench.json, {0}/chart.png",
        args.out.display()
    );
    Ok(())
}
