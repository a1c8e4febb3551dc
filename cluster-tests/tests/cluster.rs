//! Replication, failover and recovery, against real node processes over real sockets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftflow_client::client::{Client, ClientError};
use raftflow_client::types::{CreateWorkflow, SendEvent};
use raftflow_client::ErrorCode;
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

/// A one-node cluster (a developer's) is its own quorum: it keeps taking writes and serving
/// linearizable reads after an election timeout with no peer to hear from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_cluster_keeps_writing_after_an_election_timeout() {
    let cluster = Cluster::start(1, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(1);
    define_counter(&c).await;
    c.create_workflow(&create("solo", "counter")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let wf = c.send_event("solo", &tick(Some(1))).await.unwrap();
    assert_eq!(wf.revision, 2);
    assert_eq!(c.get_workflow("solo", false).await.unwrap().revision, 2);
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
        // Other groups the dead node led may still be electing: 503 until they have a leader.
        let got = eventually(Duration::from_secs(10), || async {
            Ok(c.get_workflow(id, false).await?)
        })
        .await
        .unwrap();
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

/// When a node comes back, the balancer hands its preferred group back to it. Clients must
/// not see that: a request that meets the handover waits for the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_handover_after_a_restart_fails_no_request() {
    let mut cluster = Cluster::start(3, 3, &[]);
    cluster.wait_ready(READY).await.unwrap();
    cluster.wait_balanced(READY).await.unwrap();
    let n2 = cluster.client(2);
    define_counter(&n2).await;
    // A workflow in group 1, whose preferred leader is node 1.
    let mut id = None;
    for i in 0..60 {
        let candidate = format!("h-{i}");
        let (_, wf) = n2
            .create_workflow(&create(&candidate, "counter"))
            .await
            .unwrap();
        if wf.group == 1 {
            id = Some((candidate, wf.revision));
            break;
        }
    }
    let (id, mut rev) = id.expect("one of 60 ids hashes to group 1");
    cluster.kill9(1);
    let wf = eventually(Duration::from_secs(15), || async {
        Ok(n2.send_event(&id, &tick(Some(rev))).await?)
    })
    .await
    .unwrap();
    rev = wf.revision;
    let interim = cluster.leader_of(2, 1).await;
    assert!(matches!(interim, Some(2 | 3)), "group 1 led by {interim:?}");

    cluster.restart(1);
    cluster.wait_ready(READY).await.unwrap();
    // Write and read through every node until node 1 leads group 1 again, and a second on.
    let clients = [cluster.client(1), cluster.client(2), cluster.client(3)];
    let mut failures = Vec::new();
    let mut handed_back_at = None;
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < Duration::from_secs(20)
        && handed_back_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(1))
    {
        for c in &clients {
            match c.send_event(&id, &tick(Some(rev))).await {
                Ok(wf) => rev = wf.revision,
                Err(e) => failures.push(format!("write: {e}")),
            }
            match c.get_workflow(&id, false).await {
                Ok(wf) if wf.revision == rev => {}
                Ok(wf) => failures.push(format!("read revision {} != {rev}", wf.revision)),
                Err(e) => failures.push(format!("read: {e}")),
            }
            ops += 2;
        }
        if handed_back_at.is_none() && cluster.leader_of(2, 1).await == Some(1) {
            handed_back_at = Some(Instant::now());
        }
    }
    println!("{ops} requests around the handover of group 1 back to node 1");
    assert!(handed_back_at.is_some(), "node 1 never led group 1 again");
    assert!(
        failures.is_empty(),
        "{} of {ops} failed: {failures:?}",
        failures.len()
    );
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
    // A leader keeps the log a down follower still needs; if the balancer moved leadership
    // only after the writes, node 1 could hold a group's snapshot unpurged until the next one.
    cluster.wait_balanced(READY).await.unwrap();
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
    // Rows enough that each group's snapshot spans several 1 MiB chunks.
    let big: Vec<String> = (0..48).map(|i| format!("snap-big-{i}")).collect();
    let blob = |i: usize| format!("{i}-{}", "x".repeat(100_000));
    for (i, id) in big.iter().enumerate() {
        let mut req = create(id, "counter");
        req.context = Some(serde_json::json!({"blob": blob(i)}));
        eventually(Duration::from_secs(10), || async {
            Ok(n1.create_workflow(&req).await?)
        })
        .await
        .unwrap();
    }
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
    for (i, id) in big.iter().enumerate() {
        let got = n3.get_workflow(id, true).await.unwrap();
        assert_eq!(got.context["blob"], blob(i), "{id} on node 3");
    }
    // The leaders streamed node 3 its snapshots in chunks: at least one was over a chunk.
    let sent: Vec<u64> = [1, 2]
        .iter()
        .flat_map(|n| {
            let log = std::fs::read_to_string(cluster.log_path(*n)).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("sent a snapshot"))
                .filter_map(|l| l.split("bytes=").nth(1)?.split(' ').next()?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    assert!(
        sent.iter().any(|b| *b > 1 << 20),
        "snapshot sizes sent: {sent:?}"
    );
    // The entries node 3 missed were gone from every log, so only a snapshot could bring it here.
    // openraft reports an installed snapshot once its core has handled the state machine's reply,
    // which can come after the installed rows are already readable: wait for the report.
    eventually(Duration::from_secs(20), || async {
        let after = n3.cluster().await?;
        for g in after.groups.iter().filter(|g| g.kind == "data") {
            anyhow::ensure!(
                g.snapshot.unwrap_or(0) > applied_before[&g.id],
                "group {}: node 3 holds snapshot {:?} (applied {:?}, purged {:?}), had applied {}",
                g.id,
                g.snapshot,
                g.last_applied,
                g.purged,
                applied_before[&g.id]
            );
        }
        Ok(())
    })
    .await
    .unwrap();
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

/// Waits until every node leads at least one and at most `bound` data groups.
async fn wait_for_spread(cluster: &Cluster, bound: usize) -> BTreeMap<u64, usize> {
    eventually(Duration::from_secs(30), || async {
        let led = leaders_per_node(cluster, 1).await?;
        anyhow::ensure!(
            led.len() == 3 && led.values().all(|n| *n <= bound),
            "leaders per node {led:?}"
        );
        Ok(led)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_over_nodes_and_again_after_a_restart() {
    let groups = 8u64;
    let bound = groups.div_ceil(3) as usize + 1;
    let mut cluster = Cluster::start(3, groups, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let led = wait_for_spread(&cluster, bound).await;
    println!("stable: data groups led per node {led:?} (bound {bound})");
    cluster.kill9(2);
    cluster
        .wait_new_leader(1, 1, 2, Duration::from_secs(10))
        .await
        .ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(2);
    cluster.wait_ready(READY).await.unwrap();
    let led = wait_for_spread(&cluster, bound).await;
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
    assert_eq!(e1.code(), Some(ErrorCode::RevisionMismatch));
    let e2 = c.send_event("same", &cas).await.unwrap_err();
    assert!(matches!(e2, ClientError::Api { status: 409, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_over_every_group_with_filters() {
    let cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(1);
    define_counter(&c).await;
    c.put_definition("order", &order_definition())
        .await
        .unwrap();
    let mut groups = std::collections::BTreeSet::new();
    for i in 0..25 {
        let (_, wf) = c
            .create_workflow(&create(&format!("l-{i:02}"), "counter"))
            .await
            .unwrap();
        groups.insert(wf.group);
    }
    for i in 0..5 {
        c.create_workflow(&create(&format!("o-{i}"), "order"))
            .await
            .unwrap();
    }
    let stop = SendEvent {
        event: "stop".into(),
        payload: None,
        expected_revision: None,
        request_id: None,
    };
    c.send_event("l-00", &stop).await.unwrap();
    assert!(groups.len() > 1, "25 ids should land in several groups");

    let http = reqwest::Client::new();
    let base = format!("http://{}", cluster.node(3).client);
    let list_on = |node, query: String| {
        let http = http.clone();
        let url = format!("http://{}/v1/workflows?{query}", cluster.node(node).client);
        async move {
            let v: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            v
        }
    };
    let list = |query: String| list_on(3, query);
    // Every workflow exactly once over pages of 7, on a node that may not lead any of these
    // groups: a listing is linearizable, so it shows every acknowledged create at once.
    let all = {
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..20 {
            let q = match &token {
                Some(t) => format!("limit=7&page_token={t}"),
                None => "limit=7".into(),
            };
            let page = list(q).await;
            for w in page["workflows"].as_array().unwrap() {
                seen.push(w["id"].as_str().unwrap().to_string());
            }
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 30, "saw {seen:?}");
        seen
    };
    let unique: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 30, "a workflow was listed twice");
    // Each transition acknowledged through node 1 is in the next listing on nodes 2 and 3.
    let tick = SendEvent {
        event: "tick".into(),
        ..stop.clone()
    };
    for round in 0..100 {
        let wf = c.send_event("l-01", &tick).await.unwrap();
        for node in [2, 3] {
            let page = list_on(node, "definition=counter&limit=1000".into()).await;
            let listed = page["workflows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["id"] == "l-01")
                .map(|w| w["revision"].as_u64().unwrap());
            assert_eq!(
                listed,
                Some(wf.revision),
                "round {round}: node {node} listed a stale l-01"
            );
        }
    }

    let orders = list("definition=order&limit=1000".into()).await;
    assert_eq!(orders["workflows"].as_array().unwrap().len(), 5);
    let done = list("status=succeeded".into()).await;
    let ids: Vec<_> = done["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::json!("l-00")]);
    let created = list("state=created&definition=order".into()).await;
    assert_eq!(created["workflows"].as_array().unwrap().len(), 5);
    // The reads above made node 3 apply every create, so its replica alone has them too.
    let local = list("consistency=local&definition=order".into()).await;
    assert_eq!(local["workflows"].as_array().unwrap().len(), 5);
    let bad = http
        .get(format!("{base}/v1/workflows?consistency=eventual"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let defs: serde_json::Value = http
        .get(format!("{base}/v1/definitions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        defs,
        serde_json::json!({"definitions": [
            {"name": "counter", "latest_version": 1},
            {"name": "order", "latest_version": 1}
        ]})
    );
    // A changed definition is a new version; the old one stays readable.
    let mut changed = counter_definition();
    changed["states"]["on"]["on"]["reset"] = serde_json::json!("on");
    let (status, v2) = c.put_definition("counter", &changed).await.unwrap();
    assert_eq!((status, v2.version), (201, 2));
    let (status, again) = c.put_definition("counter", &changed).await.unwrap();
    assert_eq!((status, again.version), (200, 2));
    let v1: serde_json::Value = http
        .get(format!("{base}/v1/definitions/counter/versions/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["version"], 1);
    assert!(v1["states"]["on"]["on"].get("reset").is_none());
    // Workflows stay pinned to the version they started with.
    let old = c.get_workflow("l-01", false).await.unwrap();
    assert_eq!(old.version, 1);
    let reset = SendEvent {
        event: "reset".into(),
        ..stop.clone()
    };
    let err = c.send_event("l-01", &reset).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTransition));
}

/// `node`'s `/metrics` page.
async fn metrics_text(cluster: &Cluster, node: u64) -> String {
    reqwest::get(format!("http://{}/metrics", cluster.node(node).client))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter of `name` on every node's `/metrics`, summed.
async fn metric_sum(cluster: &Cluster, nodes: u64, name: &str) -> f64 {
    let mut sum = 0.0;
    for node in 1..=nodes {
        sum += metrics_text(cluster, node)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("node {node} has no metric {name}"));
    }
    sum
}

/// Commands that reach a busy group's leader together share one Raft entry. Each still gets
/// its own outcome, and applies after the ones before it in the entry: of two events on one
/// workflow that expect the same revision, exactly one wins, wherever they landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_entries_and_each_gets_its_own_outcome() {
    const WORKFLOWS: usize = 48;
    const ROUNDS: u64 = 4;
    // One data group: every command goes to the same leader.
    let cluster = Cluster::start(3, 1, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(1);
    define_counter(&c).await;
    for i in 0..WORKFLOWS {
        c.create_workflow(&create(&format!("b-{i}"), "counter"))
            .await
            .unwrap();
    }
    let proposals_before = metric_sum(&cluster, 3, "raftflow_proposals_total").await;
    let entries_before = metric_sum(&cluster, 3, "raftflow_proposal_entries_total").await;
    for round in 1..=ROUNDS {
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..WORKFLOWS {
            for node in [1 + (i as u64 % 3), 1 + ((i as u64 + 1) % 3)] {
                let client = cluster.client(node);
                sends.spawn(async move {
                    let sent = client
                        .send_event(&format!("b-{i}"), &tick(Some(round)))
                        .await;
                    (i, sent)
                });
            }
        }
        let mut won = vec![0; WORKFLOWS];
        while let Some(joined) = sends.join_next().await {
            match joined.unwrap() {
                (i, Ok(wf)) => {
                    assert_eq!(wf.revision, round + 1, "b-{i}");
                    won[i] += 1;
                }
                (i, Err(e)) => {
                    assert_eq!(e.code(), Some(ErrorCode::RevisionMismatch), "b-{i}: {e}")
                }
            }
        }
        assert!(won.iter().all(|&n| n == 1), "round {round}: {won:?}");
    }
    let proposals = metric_sum(&cluster, 3, "raftflow_proposals_total").await - proposals_before;
    let entries = metric_sum(&cluster, 3, "raftflow_proposal_entries_total").await - entries_before;
    let commands = (WORKFLOWS as u64 * 2 * ROUNDS) as f64;
    assert!(
        proposals >= commands,
        "{proposals} proposals for {commands} commands"
    );
    assert!(
        entries < proposals,
        "{proposals} commands went into {entries} entries: none shared one"
    );
    for i in 0..WORKFLOWS {
        let wf = cluster
            .client(2)
            .get_workflow(&format!("b-{i}"), false)
            .await
            .unwrap();
        assert_eq!(wf.revision, ROUNDS + 1, "b-{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_openapi_describe_the_node() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let c = cluster.client(1);
    define_counter(&c).await;
    c.create_workflow(&create("m-1", "counter")).await.unwrap();
    for _ in 0..10 {
        c.send_event("m-1", &tick(None)).await.unwrap();
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}", cluster.node(1).client);
    let text = metrics_text(&cluster, 1).await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    };
    assert!(value("raftflow_wal_fsyncs_total") > 0.0);
    assert!(value("raftflow_wal_fsync_seconds_total") > 0.0);
    // The bench reads the same counters by name (they only grow between the two reads).
    let wal = raftflow_cluster_tests::bench::wal_counters(&[cluster.node(1).client.clone()]).await;
    assert!(wal.syncs >= value("raftflow_wal_fsyncs_total"));
    assert!(wal.entries >= value("raftflow_wal_synced_entries_total"));
    assert!(wal.commands >= value("raftflow_wal_synced_commands_total"));
    assert!(wal.sync_s >= value("raftflow_wal_fsync_seconds_total"));
    // 11 client writes plus the groups' own entries, all made durable by those fsyncs.
    assert!(value("raftflow_wal_synced_commands_total") >= 11.0);
    assert!(value("raftflow_wal_synced_entries_total") >= 1.0);
    assert!(value("raftflow_group_applied_index{group=\"0\"}") > 0.0);
    assert!(text.contains("raftflow_group_leader{group=\"1\"}"));
    assert!(text.contains("raftflow_http_requests_total{route=\"/v1/workflows/{id}/events\",method=\"POST\",status=\"200\"}"));
    assert!(text.contains("raftflow_http_request_duration_seconds_bucket{route=\"/v1/workflows/{id}/events\",le=\"+Inf\"}"));
    let proposals = value("raftflow_proposals_total");
    assert!(proposals >= 1.0, "node 1 proposed {proposals}");
    let entries = value("raftflow_proposal_entries_total");
    assert!(
        entries >= 1.0 && entries <= proposals,
        "{proposals} proposals in {entries} entries"
    );

    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/workflows",
        "/v1/workflows/{id}/events",
        "/v1/definitions/{name}",
        "/v1/cluster",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"].get("WorkflowView").is_some());
}
