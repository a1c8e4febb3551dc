//! The benchmark's drivers against the real systems: a short cell of each workload on raftflow
//! and etcd must commit operations without errors, and etcd's compare must refuse a stale
//! revision (the benchmark's transitions would otherwise measure blind puts).

use std::time::Duration;

use raftflow_cluster_tests::bench::etcd::{EtcdClient, EtcdCluster};
use raftflow_cluster_tests::bench::load::{self, Conn, Workload};
use raftflow_cluster_tests::bench::wire::Wire;
use raftflow_cluster_tests::bench::{add_group, join, report, run, Config, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compare_and_set_refuses_a_stale_revision() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
    // The generator's own connections, as the measured cells use them.
    let conn = |i: usize| Conn::Etcd {
        wire: Wire::new(&etcd.clients[i], Duration::from_secs(5)),
    };
    let (mut a, mut b) = (conn(0), conn(2));
    let r1 = a.create("k").await.expect("create");
    assert_eq!(a.create("k").await.unwrap_err().code(), "compare_failed");
    let r2 = b.transition("k", r1).await.expect("cas from r1");
    assert!(r2 > r1);
    assert_eq!(
        a.transition("k", r1).await.unwrap_err().code(),
        "compare_failed"
    );
    // A linearizable read on another member sees the last write.
    assert_eq!(a.read("k").await.unwrap(), r2);
    assert_eq!(b.read("missing").await.unwrap(), 0);
    let reader = EtcdClient::new(&etcd.clients[1], Duration::from_secs(5));
    let (rev, value) = reader.get("k").await.unwrap();
    assert_eq!(rev, r2);
    assert!(
        value.contains(&format!("\"revision\":{}", r1 + 1)),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftflow_transitions_refuse_a_stale_revision_through_the_generator() {
    let cluster = raftflow_cluster_tests::Cluster::start(3, 2, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    cluster
        .client(1)
        .put_definition("bench-pingpong", &load::pingpong())
        .await
        .unwrap();
    let conn = |i: usize| {
        let addr = &cluster.nodes[i].client;
        Conn::Raftflow {
            wire: Wire::new(addr, Duration::from_secs(10)),
            client: raftflow_client::client::Client::new(addr, Duration::from_secs(10)),
        }
    };
    let (mut a, mut b) = (conn(0), conn(2));
    let r1 = a.create("w").await.expect("create");
    let r2 = b.transition("w", r1).await.expect("transition from r1");
    assert_eq!(r2, r1 + 1);
    assert_eq!(
        a.transition("w", r1).await.unwrap_err().code(),
        "revision_mismatch"
    );
    assert_eq!(a.read("w").await.unwrap(), r2);
    assert_eq!(b.read("missing").await.unwrap_err().code(), "not_found");
    a.ping().await.expect("ping");
}

/// One second per cell at 4 clients, without warm-up, on 2 groups.
fn short_run(systems: Vec<System>, workloads: Vec<Workload>) -> Config {
    Config {
        systems,
        workloads,
        concurrency: vec![4],
        warmup_s: 0,
        duration_s: 1,
        groups: 2,
        node_threads: None,
        population: 100,
        bin: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_of_both_systems_commits_work_and_writes_every_output() {
    let config = short_run(vec![System::Raftflow, System::Etcd], Workload::ALL.to_vec());
    let rows = run(&config).await.expect("bench runs");
    // Every workload on raftflow, all but tasks and task-loop on etcd.
    assert_eq!(rows.len(), 9 + 7);
    for row in &rows {
        let m = &row.measured;
        assert!(
            m.ops > 0,
            "{:?} {:?} committed nothing",
            row.system,
            row.workload
        );
        assert!(
            m.errors.is_empty(),
            "{:?} {:?}: {:?}",
            row.system,
            row.workload,
            m.error_examples
        );
        assert!(m.p50_ms > 0.0 && m.p50_ms <= m.p99_ms && m.p99_ms <= m.p999_ms);
        assert_eq!(m.nodes.len(), 3);
        assert!(m
            .nodes
            .iter()
            .all(|n| n.cpu_s > 0.0 && n.peak_rss_mib > 1.0));
        // Reads and pings write nothing.
        if row.system == System::Raftflow
            && !matches!(row.workload, Workload::ReadMix | Workload::Ping)
        {
            let entries = row.entries_per_fsync.unwrap_or(0.0);
            assert!(entries >= 1.0);
            // Each entry carries one client command or a batch of them.
            assert!(row.commands_per_fsync.unwrap_or(0.0) >= entries * 0.9);
        }
    }
    assert!(report::ratio(&rows, Workload::Transitions, 4).is_some());
    let dir = tempfile::tempdir().unwrap();
    let machine = report::Machine::describe();
    assert!(machine.fsync_us[0] > 0.0 && machine.wakeup_us[0] > 0.0);
    let extras = report::Extras {
        machine: &machine,
        idle: None,
        restart: None,
        join: None,
        group_add: None,
    };
    report::write_json(&dir.path().join("bench.json"), &extras, &config, &rows).unwrap();
    report::plot(&dir.path().join("chart.png"), &rows).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), rows.len());
    // The chart can be drawn again from the JSON alone.
    let again = report::read_rows(&dir.path().join("bench.json")).unwrap();
    assert_eq!(again.len(), rows.len());
    assert_eq!(again[1].measured.ops, rows[1].measured.ops);
    assert!(
        std::fs::metadata(dir.path().join("chart.png"))
            .unwrap()
            .len()
            > 10_000
    );
}

/// The join measurement on a small cluster: node 4 joins under the transition load and takes
/// its share (3 of 12 replicas of 4 groups); both windows commit transitions without errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_load_is_measured_until_it_holds_its_share() {
    let r = join(3_000, 4, 8, 2, None).await.expect("join bench");
    assert_eq!(r.replicas, 3, "{r:?}");
    assert!(r.active_seconds <= r.share_seconds, "{r:?}");
    assert!(r.caught_up_mib > 0.0, "{r:?}");
    for m in [&r.before, &r.during] {
        assert!(m.ops > 0, "{m:?}");
        assert!(m.errors.is_empty(), "{m:?}");
    }
}

/// The group measurement on a small cluster: a fourth group is added to three holding 3,000
/// workflows under the transition load and takes its share of the slots (about a quarter);
/// both windows commit transitions without errors, and the wait is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_under_load_is_measured_until_it_holds_its_share() {
    let r = add_group(3_000, 3, 8, 2, None).await.expect("group bench");
    let share = u64::from(raftflow_cluster_tests::SLOTS) / 4;
    assert!(r.slots_moved * 10 >= share * 9, "{r:?}");
    assert!(r.workflows_moved > 0 && r.move_seconds > 0.0, "{r:?}");
    for m in [&r.before, &r.during] {
        assert!(m.ops > 0, "{m:?}");
        assert!(m.errors.is_empty(), "{m:?}");
        assert!(m.max_ms >= m.p99_ms, "{m:?}");
    }
}

/// The secure cell: a cluster with mutual TLS between its nodes and a token file, every request
/// carrying the token; the table sets it beside the plain cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_secure_run_commits_work_and_reports_its_cost() {
    let config = short_run(
        vec![System::Raftflow, System::RaftflowSecure],
        vec![Workload::Transitions],
    );
    let rows = run(&config).await.expect("bench runs");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.measured.ops > 0, "{:?} committed nothing", row.system);
        assert!(
            row.measured.errors.is_empty(),
            "{:?}: {:?}",
            row.system,
            row.measured.error_examples
        );
    }
    let table = report::table(&rows);
    assert!(
        table.contains("The cost of peer TLS and API tokens")
            && table.contains("| transitions | 4 |"),
        "{table}"
    );
}

/// The simple service beside raftflow: single-task workflows on Flask + Redis complete, and
/// the table sets them beside raftflow's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_of_the_flask_redis_baseline_completes_workflows() {
    let config = short_run(
        vec![
            System::Raftflow,
            System::FlaskRedisAlways,
            System::FlaskRedisEverysec,
        ],
        vec![Workload::Tasks, Workload::Ping],
    );
    let rows = run(&config).await.expect("bench runs");
    // raftflow runs both workloads; the baseline only its tasks.
    assert_eq!(rows.len(), 2 + 1 + 1);
    for row in rows.iter().filter(|r| r.workload == Workload::Tasks) {
        assert!(row.measured.ops > 0, "{:?} completed nothing", row.system);
        assert!(
            row.measured.errors.is_empty(),
            "{:?}: {:?}",
            row.system,
            row.measured.error_examples
        );
        assert!(!row.measured.nodes.is_empty());
    }
    let table = report::table(&rows);
    assert!(
        table.contains("against the simple service") && table.contains("| 4 | "),
        "{table}"
    );
}
