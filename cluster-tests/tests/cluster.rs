//! Replication, failover and recovery, against real node processes over real sockets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftflow_api::client::{Client, ClientError};
use raftflow_api::types::{CreateWorkflow, SendEvent};
use raftflow_cluster_tests::{counter_definition, eventually, order_definition, Cluster};

const READY: Duration = Duration::from_secs(30);

fn create(id: &str, definition: &str) -> CreateWorkflow {
    CreateWorkflow {
        id: Some(id.to_string()),
        definition: definition.to_string(),
        version: None,
        context: None,
    }
}

fn tick(expected_revision: Option<u64>) -> SendEvent {
    SendEvent {
        event: "tick".into(),
        payload: None,
        expected_revision,
        request_id: None,
    }
}

async fn define_counter(c: &Client) {
    let (status, _) = c
        .put_definition("counter", &counter_definition())
        .await
        .unwrap();
    assert!(status == 201 || status == 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_written_through_node1_is_read_through_nodes_2_and_3() {
    let cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let n1 = cluster.client(1);
    let (status, stored) = n1
        .put_definition("order", &order_definition())
        .await
        .unwrap();
    assert_eq!((status, stored.version), (201, 1));
    let mut req = create("order-17", "order");
    req.context = Some(serde_json::json!({"amount": 30}));
    let (status, wf) = n1.create_workflow(&req).await.unwrap();
    assert_eq!(
        (status, wf.revision, wf.state.as_str()),
        (201, 1, "created")
    );
    let ev = SendEvent {
        event: "pay".into(),
        payload: Some(serde_json::json!({"card": "visa"})),
        expected_revision: Some(1),
        request_id: None,
    };
    let wf = n1.send_event("order-17", &ev).await.unwrap();
    assert_eq!((wf.revision, wf.state.as_str()), (2, "paid"));

    for node in [2, 3] {
        let c = cluster.client(node);
        // Linearizable: every acknowledged write is visible at once, on any node.
        let got = c.get_workflow("order-17", false).await.unwrap();
        assert_eq!(
            (got.revision, got.state.as_str()),
            (2, "paid"),
            "node {node}"
        );
        assert_eq!(
            got.context,
            serde_json::json!({"amount": 30, "card": "visa"})
        );
        // Local reads catch up within moments.
        eventually(Duration::from_secs(5), || async {
            let got = c.get_workflow("order-17", true).await?;
            anyhow::ensure!(got.revision == 2, "local read at revision {}", got.revision);
            Ok(())
        })
        .await
        .unwrap();
        let h = c.history("order-17").await.unwrap();
        let events: Vec<_> = h
            .events
            .iter()
            .map(|e| (e.revision, e.event.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(
            events,
            vec![(1, "created", "created"), (2, "pay", "paid")],
            "node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_group_leader_elects_a_new_one_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, 3, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let n1 = cluster.client(1);
    define_counter(&n1).await;
    // Workflows until one lives in each group.
    let mut by_group: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for i in 0..30 {
        let id = format!("k-{i}");
        let (_, wf) = n1.create_workflow(&create(&id, "counter")).await.unwrap();
        by_group.entry(wf.group).or_default().push(id);
    }
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for ids in by_group.values() {
        for id in ids {
            for rev in 1..=3 {
                let wf = n1.send_event(id, &tick(Some(rev))).await.unwrap();
                acked.insert(id.clone(), wf.revision);
            }
        }
    }
    // Kill the leader of the group with the most workflows.
    let (&group, ids) = by_group.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let leader = cluster
        .leader_of(1, group)
        .await
        .expect("group has a leader");
    cluster.kill9(leader);
    let survivor = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    let c = cluster.client(survivor);
    let id = &ids[0];
    let start = Instant::now();
    let wf = eventually(Duration::from_secs(15), || async {
        Ok(c.send_event(id, &tick(Some(acked[id]))).await?)
    })
    .await
    .unwrap();
    let failover = start.elapsed();
    println!("group {group}: leader {leader} killed; a write succeeded after {failover:?}");
    // A few election timeouts (750-1500 ms each) plus detection.
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    acked.insert(id.clone(), wf.revision);

    for (id, rev) in &acked {
        let got = c.get_workflow(id, false).await.unwrap();
        assert_eq!(
            got.revision, *rev,
            "workflow {id} lost an acknowledged transition"
        );
    }
    // The old leader comes back and sees everything too.
    cluster.restart(leader);
    cluster.wait_ready(READY).await.unwrap();
    let back = cluster.client(leader);
    for (id, rev) in &acked {
        let got = back.get_workflow(id, false).await.unwrap();
        assert_eq!(got.revision, *rev, "workflow {id} on the restarted node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_all_nodes_during_writes_keeps_every_acknowledged_transition() {
    let mut cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define_counter(&cluster.client(1)).await;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..12u64 {
        let c = cluster.client(1 + w % 3);
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let id = format!("crash-{w}");
            let Ok((_, wf)) = c.create_workflow(&create(&id, "counter")).await else {
                return;
            };
            let mut rev = wf.revision;
            acked.lock().unwrap().insert(id.clone(), rev);
            // Until the kill makes writes fail.
            while let Ok(wf) = c.send_event(&id, &tick(Some(rev))).await {
                rev = wf.revision;
                acked.lock().unwrap().insert(id.clone(), rev);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: u64 = acked.values().sum();
    assert!(
        total > 100,
        "the load made too few writes ({total}) to mean anything"
    );
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(2);
    for (id, rev) in &acked {
        let got = c.get_workflow(id, false).await.unwrap();
        // An unacknowledged last write may have committed too: never fewer, at most one more.
        assert!(
            got.revision == *rev || got.revision == rev + 1,
            "workflow {id}: acknowledged revision {rev}, found {}",
            got.revision
        );
        let h = c.history(id).await.unwrap();
        let revs: Vec<u64> = h.events.iter().map(|e| e.revision).collect();
        assert_eq!(
            revs,
            (1..=got.revision).collect::<Vec<_>>(),
            "history of {id}"
        );
    }
    println!(
        "{} workflows, {total} acknowledged revisions, all present after kill -9 of every node",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_that_missed_a_purged_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(
        3,
        2,
        &["--snapshot-every", "50", "--log-kept-behind-snapshot", "5"],
    );
    cluster.wait_ready(READY).await.unwrap();
    let n1 = cluster.client(1);
    define_counter(&n1).await;
    let ids: Vec<String> = (0..8).map(|i| format!("snap-{i}")).collect();
    for id in &ids {
        n1.create_workflow(&create(id, "counter")).await.unwrap();
    }
    let before = cluster.probe(3).cluster().await.unwrap();
    let applied_before: BTreeMap<u64, u64> = before
        .groups
        .iter()
        .map(|g| (g.id, g.last_applied.unwrap_or(0)))
        .collect();
    cluster.kill9(3);
    // Enough writes that every group snapshots and purges well past node 3's log.
    let mut revs: BTreeMap<String, u64> = BTreeMap::new();
    let c = cluster.client(1);
    for round in 0..40 {
        for id in &ids {
            let wf = eventually(Duration::from_secs(10), || async {
                Ok(c.send_event(id, &tick(None)).await?)
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
            revs.insert(id.clone(), wf.revision);
        }
    }
    for node in [1, 2] {
        eventually(Duration::from_secs(20), || async {
            let v = cluster.probe(node).cluster().await?;
            for g in v.groups.iter().filter(|g| g.kind == "data") {
                let purged = g.purged.unwrap_or(0);
                anyhow::ensure!(
                    purged > applied_before[&g.id],
                    "node {node} group {}: purged {purged}, node 3 had applied {}",
                    g.id,
                    applied_before[&g.id]
                );
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    cluster.restart(3);
    cluster.wait_ready(READY).await.unwrap();
    let n3 = cluster.probe(3);
    for (id, rev) in &revs {
        eventually(Duration::from_secs(20), || async {
            let got = n3.get_workflow(id, true).await?;
            anyhow::ensure!(
                got.revision == *rev,
                "node 3 local read of {id}: {} != {rev}",
                got.revision
            );
            Ok(())
        })
        .await
        .unwrap();
    }
    let after = n3.cluster().await.unwrap();
    for g in after.groups.iter().filter(|g| g.kind == "data") {
        // The entries node 3 missed were gone from every log, so only a snapshot could bring it here.
        assert!(
            g.snapshot.unwrap_or(0) > applied_before[&g.id],
            "group {}: node 3 holds snapshot {:?}, had applied {}",
            g.id,
            g.snapshot,
            applied_before[&g.id]
        );
    }
}

async fn leaders_per_node(cluster: &Cluster, via: u64) -> anyhow::Result<BTreeMap<u64, usize>> {
    let v = cluster.probe(via).cluster().await?;
    let mut led = BTreeMap::new();
    for g in v.groups.iter().filter(|g| g.kind == "data") {
        let l = g
            .leader
            .ok_or_else(|| anyhow::anyhow!("group {} has no leader", g.id))?;
        *led.entry(l).or_insert(0) += 1;
    }
    Ok(led)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_over_nodes_and_again_after_a_restart() {
    let groups = 8u64;
    let bound = groups.div_ceil(3) as usize + 1;
    let mut cluster = Cluster::start(3, groups, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let spread = || async {
        let led = leaders_per_node(&cluster, 1).await?;
        anyhow::ensure!(
            led.len() == 3 && led.values().all(|n| *n <= bound),
            "leaders per node {led:?}"
        );
        Ok(led)
    };
    let led = eventually(Duration::from_secs(30), spread).await.unwrap();
    println!("stable: data groups led per node {led:?} (bound {bound})");
    cluster.kill9(2);
    cluster
        .wait_new_leader(1, 1, 2, Duration::from_secs(10))
        .await
        .ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(2);
    cluster.wait_ready(READY).await.unwrap();
    let spread = || async {
        let led = leaders_per_node(&cluster, 1).await?;
        anyhow::ensure!(
            led.len() == 3 && led.values().all(|n| *n <= bound),
            "leaders per node {led:?}"
        );
        Ok(led)
    };
    let led = eventually(Duration::from_secs(30), spread).await.unwrap();
    println!("after node 2 rejoined: data groups led per node {led:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_create_is_a_retry_and_a_repeated_request_id_changes_nothing() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(2);
    define_counter(&c).await;
    let (s1, a) = c.create_workflow(&create("same", "counter")).await.unwrap();
    let (s2, b) = cluster
        .client(3)
        .create_workflow(&create("same", "counter"))
        .await
        .unwrap();
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a, b);
    let ev = SendEvent {
        request_id: Some("r-1".into()),
        ..tick(None)
    };
    let first = c.send_event("same", &ev).await.unwrap();
    let again = cluster.client(1).send_event("same", &ev).await.unwrap();
    assert_eq!(
        first, again,
        "a repeated request id returns the first outcome"
    );
    let now = c.get_workflow("same", false).await.unwrap();
    assert_eq!(now.revision, 2, "the repeat changed nothing");
    // A repeated request id that was refused stays refused, even though it would now pass.
    let cas = SendEvent {
        request_id: Some("r-2".into()),
        ..tick(Some(9))
    };
    let e1 = c.send_event("same", &cas).await.unwrap_err();
    assert_eq!(e1.code(), Some("revision_mismatch"));
    let e2 = c.send_event("same", &cas).await.unwrap_err();
    assert!(matches!(e2, ClientError::Api { status: 409, .. }));
}
