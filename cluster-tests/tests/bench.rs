//! The benchmark's drivers against the real systems: a short cell of each workload on raftflow
//! and etcd must commit operations without errors, and etcd's compare must refuse a stale
//! revision (the benchmark's transitions would otherwise measure blind puts).

use std::time::Duration;

use raftflow_cluster_tests::bench::etcd::{EtcdClient, EtcdCluster, EtcdError};
use raftflow_cluster_tests::bench::load::Workload;
use raftflow_cluster_tests::bench::{report, run, Config, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compare_and_set_refuses_a_stale_revision() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
    let a = EtcdClient::new(&etcd.clients[0], Duration::from_secs(5));
    let b = EtcdClient::new(&etcd.clients[2], Duration::from_secs(5));
    let r1 = a.put_if("k", 0, "one").await.expect("create");
    assert!(matches!(
        a.put_if("k", 0, "again").await,
        Err(EtcdError::CompareFailed)
    ));
    let r2 = b.put_if("k", r1, "two").await.expect("cas from r1");
    assert!(r2 > r1);
    assert!(matches!(
        a.put_if("k", r1, "stale").await,
        Err(EtcdError::CompareFailed)
    ));
    // A linearizable read on another member sees the last write.
    assert_eq!(a.get("k").await.unwrap(), (r2, "two".to_string()));
    assert_eq!(b.get("missing").await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_of_both_systems_commits_work_and_writes_every_output() {
    let config = Config {
        systems: vec![System::Raftflow, System::Etcd],
        workloads: Workload::ALL.to_vec(),
        concurrency: vec![4],
        warmup_s: 0,
        duration_s: 1,
        groups: 2,
        node_threads: None,
        bin: None,
    };
    let rows = run(&config).await.expect("bench runs");
    // Every workload on raftflow, all but tasks on etcd.
    assert_eq!(rows.len(), 5 + 4);
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
            assert!(row.entries_per_fsync.unwrap_or(0.0) >= 1.0);
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
