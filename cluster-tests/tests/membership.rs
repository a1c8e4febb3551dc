//! Membership on real node processes: nodes join a running cluster with `serve --join` under
//! writes and take their share of the replicas, a node serves groups it holds no replica of,
//! a node drains and leaves, a dead node is replaced, and a change survives the crash of the
//! node driving it. Ids are never taken twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftflow_client::client::{Client, ClientError, Method};
use raftflow_client::types::{ClusterView, CompleteTask, CreateWorkflow, PollTasks, SendEvent};
use raftflow_client::ErrorCode;
use raftflow_cluster_tests::{eventually, order_definition, Cluster};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
/// Long enough for every replica move of a test's change (about a second each).
const SETTLE: Duration = Duration::from_secs(60);

fn create(id: &str) -> CreateWorkflow {
    CreateWorkflow {
        id: Some(id.to_string()),
        definition: "order".into(),
        version: None,
        context: Some(json!({"amount": 30})),
    }
}

fn pay() -> SendEvent {
    SendEvent {
        event: "pay".into(),
        payload: None,
        expected_revision: None,
        request_id: None,
    }
}

async fn define_order(cluster: &Cluster) {
    let (status, _) = cluster
        .client(1)
        .put_definition("order", &order_definition())
        .await
        .unwrap();
    assert!(status == 201 || status == 200);
}

/// The node's `state` in `GET /v1/cluster` as node `via` sees it.
async fn state_of(cluster: &Cluster, via: u64, id: u64) -> Option<String> {
    let view = cluster.probe(via).cluster().await.ok()?;
    view.nodes.into_iter().find(|n| n.id == id).map(|n| n.state)
}

async fn wait_state(cluster: &Cluster, via: u64, id: u64, state: &str) {
    eventually(SETTLE, || async {
        let now = state_of(cluster, via, id).await;
        anyhow::ensure!(now.as_deref() == Some(state), "node {id} is {now:?}");
        Ok(())
    })
    .await
    .unwrap();
}

/// Waits until, as node `via` sees it, every data group has three voters, all on `nodes`, no
/// replica is moving, and replicas per node differ by at most one; returns that view.
async fn wait_settled(cluster: &Cluster, via: u64, nodes: &[u64]) -> ClusterView {
    eventually(SETTLE, || async {
        let view = cluster.probe(via).cluster().await?;
        anyhow::ensure!(
            view.placement.replica_moves.is_empty(),
            "moving: {:?}",
            view.placement.replica_moves
        );
        let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
        for g in view.groups.iter().filter(|g| g.kind == "data") {
            anyhow::ensure!(
                g.voters.len() == 3,
                "group {} has voters {:?}",
                g.id,
                g.voters
            );
            for v in &g.voters {
                *load
                    .get_mut(v)
                    .ok_or_else(|| anyhow::anyhow!("group {} is on node {v}", g.id))? += 1;
            }
        }
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        anyhow::ensure!(max - min <= 1, "replicas per node {load:?}");
        Ok(view)
    })
    .await
    .unwrap()
}

/// Waits until every voter of every data group has the same rows at the same applied index.
async fn wait_converged(cluster: &Cluster, view: &ClusterView) {
    for g in view.groups.iter().filter(|g| g.kind == "data") {
        eventually(SETTLE, || async {
            let mut seen = BTreeSet::new();
            for v in &g.voters {
                let (_, d) = cluster
                    .probe(*v)
                    .request(
                        Method::GET,
                        &format!("/v1/cluster/groups/{}/digest", g.id),
                        None,
                    )
                    .await?;
                seen.insert((d["applied"].clone().to_string(), d["digest"].to_string()));
            }
            anyhow::ensure!(seen.len() == 1, "group {} replicas differ: {seen:?}", g.id);
            Ok(())
        })
        .await
        .unwrap();
    }
}

async fn register(c: &Client, body: Value) -> Result<(u16, Value), ClientError> {
    c.request(Method::POST, "/v1/cluster/nodes", Some(&body))
        .await
}

async fn remove(c: &Client, id: u64, force: bool) -> Result<(u16, Value), ClientError> {
    let path = format!(
        "/v1/cluster/nodes/{id}{}",
        if force { "?force=true" } else { "" }
    );
    c.request(Method::DELETE, &path, None).await
}

fn code(r: Result<(u16, Value), ClientError>) -> (u16, Option<ErrorCode>) {
    match r {
        Ok((status, _)) => (status, None),
        Err(ClientError::Api { status, code, .. }) => (status, Some(code)),
        Err(e) => panic!("no answer: {e}"),
    }
}

/// Creates workflows through nodes 1-3 in turn until stopped (or 20 s, or 5,000 of them);
/// returns the ids whose create was acknowledged.
fn write_load(
    cluster: &Cluster,
    prefix: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let clients: Vec<Client> = (1..=3)
        .map(|i| cluster.client_with_timeout(i, Duration::from_secs(3)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let prefix = prefix.to_string();
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(20);
            for i in 0..5_000usize {
                if stop.load(Ordering::Relaxed) || Instant::now() > until {
                    break;
                }
                let id = format!("{prefix}-{i}");
                if clients[i % 3].create_workflow(&create(&id)).await.is_ok() {
                    acked.lock().unwrap().push(id);
                }
            }
            let ids = acked.lock().unwrap().clone();
            ids
        })
    };
    (stop, handle)
}

/// Done-when 1's first half, and the resumption of a change after its driver is killed: node
/// 4 joins under writes, becomes active and takes its share of voting replicas while the meta
/// group's leader (which drives the moves) is killed mid-move; every acknowledged write is on
/// every replica of its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_writes_takes_its_share_and_a_killed_driver_does_not_stop_it() {
    let mut cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define_order(&cluster).await;
    let (stop, writer) = write_load(&cluster, "w");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.join(4, 1);
    wait_state(&cluster, 2, 4, "active").await;

    // Kill the node driving the moves while one is under way, and bring it back.
    let driver = eventually(SETTLE, || async {
        let view = cluster.probe(2).cluster().await?;
        anyhow::ensure!(!view.placement.replica_moves.is_empty(), "no move yet");
        let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
        meta.leader.ok_or_else(|| anyhow::anyhow!("no meta leader"))
    })
    .await
    .unwrap();
    cluster.kill9(driver);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(driver);

    let via = if driver == 2 { 3 } else { 2 };
    let view = wait_settled(&cluster, via, &[1, 2, 3, 4]).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "only {} writes were acknowledged",
        acked.len()
    );
    assert_eq!(view.replication_factor, 3);
    assert!(
        view.nodes.iter().all(|n| n.state == "active"),
        "{:?}",
        view.nodes
    );
    let on_4 = view
        .groups
        .iter()
        .filter(|g| g.kind == "data" && g.voters.contains(&4))
        .count();
    assert!(
        on_4 >= 1,
        "node 4 holds no voting replica: {:?}",
        view.groups
    );
    let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
    assert_eq!(meta.voters.len(), 3, "{meta:?}");
    assert!(
        meta.voters.contains(&4) || meta.learners.contains(&4),
        "{meta:?}"
    );

    cluster.wait_ready(READY).await.unwrap();
    let n4 = cluster.client(4);
    for id in &acked {
        let wf = n4.get_workflow(id, false).await.unwrap();
        assert_eq!(wf.revision, 1, "{id}");
    }
    wait_converged(&cluster, &view).await;
}

/// A node that holds no replica of a group serves its workflows: writes, linearizable and
/// local reads, history, listing over every group, and long polls for its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_serves_reads_writes_listing_and_polls() {
    let mut cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define_order(&cluster).await;
    cluster.join(4, 1);
    let view = wait_settled(&cluster, 1, &[1, 2, 3, 4]).await;
    let elsewhere: Vec<u64> = view
        .groups
        .iter()
        .filter(|g| g.kind == "data" && !g.voters.contains(&4))
        .map(|g| g.id)
        .collect();
    assert!(
        !elsewhere.is_empty(),
        "node 4 holds every group: {:?}",
        view.groups
    );

    // Workflows created through node 4 until one lives in a group node 4 does not hold.
    let n4 = cluster.client(4);
    let mut created = 0;
    let mut remote = None;
    for i in 0..200 {
        let id = format!("via-4-{i}");
        let (status, wf) = n4.create_workflow(&create(&id)).await.unwrap();
        assert_eq!((status, wf.revision), (201, 1));
        created += 1;
        if elsewhere.contains(&wf.group) {
            remote = Some(id);
            break;
        }
    }
    let id = remote.expect("a workflow in a group node 4 does not hold");
    let view4 = n4.cluster().await.unwrap();
    let g = view4
        .groups
        .iter()
        .find(|g| elsewhere.contains(&g.id))
        .unwrap();
    assert_eq!(g.role, "none", "{g:?}");

    let wf = n4.send_event(&id, &pay()).await.unwrap();
    assert_eq!((wf.state.as_str(), wf.revision), ("paid", 2));
    assert_eq!(n4.get_workflow(&id, false).await.unwrap().revision, 2);
    let local = n4.get_workflow(&id, true).await.unwrap();
    assert_eq!(
        local.state, "paid",
        "a local read of a remote group is the leader's"
    );
    assert_eq!(n4.history(&id).await.unwrap().events.len(), 2);
    let (_, page) = n4
        .request(Method::GET, "/v1/workflows?limit=1000", None)
        .await
        .unwrap();
    assert_eq!(page["workflows"].as_array().unwrap().len(), created);
    assert!(matches!(
        n4.get_workflow("no-such", false).await,
        Err(ClientError::Api { status: 404, .. })
    ));

    // The only task is in the remote group; a long poll on node 4 leases it.
    let poll = PollTasks {
        types: vec!["ship".into()],
        worker: "w4".into(),
        max: Some(1),
        wait_ms: Some(5_000),
        lease_ms: None,
    };
    let leased = n4.poll_tasks(&poll).await.unwrap().tasks;
    assert_eq!(
        leased.len(),
        1,
        "a long poll on node 4 leases the ready task"
    );
    assert_eq!(leased[0].workflow_id, id);
    assert_eq!(n4.get_task(&leased[0].id).await.unwrap().id, leased[0].id);
    let done = n4
        .complete_task(
            &leased[0].id,
            &CompleteTask {
                lease_token: leased[0].lease_token,
                output: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.workflow.state, "shipped");

    // Registration: a retry is 200; a taken id is 409 node_exists; garbage is 400.
    let me = cluster.node(4);
    let again = json!({"id": 4, "client_addr": me.client, "peer_addr": me.peer});
    assert_eq!(code(register(&cluster.client(2), again).await), (200, None));
    let taken = json!({"id": 2, "client_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2"});
    assert_eq!(
        code(register(&cluster.client(3), taken).await),
        (409, Some(ErrorCode::NodeExists))
    );
    let moved = json!({"id": 4, "client_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2"});
    assert_eq!(
        code(register(&n4, moved).await),
        (409, Some(ErrorCode::NodeExists))
    );
    for bad in [
        json!({"id": 0, "client_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2"}),
        json!({"id": 9, "client_addr": "nowhere", "peer_addr": "127.0.0.1:2"}),
        json!({"id": 9, "client_addr": "127.0.0.1:1"}),
        json!({"id": 9, "client_addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:2", "x": 1}),
    ] {
        assert_eq!(
            code(register(&n4, bad.clone()).await),
            (400, Some(ErrorCode::BadRequest)),
            "{bad}"
        );
    }

    // A restarted joined node comes back through --join again and serves at once.
    cluster.kill9(4);
    cluster.restart(4);
    eventually(READY, || async {
        let wf = cluster.client(4).get_workflow(&id, false).await?;
        anyhow::ensure!(wf.state == "shipped");
        Ok(())
    })
    .await
    .unwrap();
    assert!(cluster
        .log_tail(4, 400)
        .contains("registered with the cluster"));
}

/// Done-when 1's second half: node 1 is drained and removed; every group keeps three voters on
/// the others, everything written is there, node 1's process stops and says so, and its id is
/// refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_leaves_every_group_stops_and_its_id_is_refused_for_good() {
    let mut cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define_order(&cluster).await;
    cluster.join(4, 1);
    wait_settled(&cluster, 2, &[1, 2, 3, 4]).await;
    let (stop, writer) = write_load(&cluster, "d");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, node) = remove(&cluster.client(2), 1, false).await.unwrap();
    assert_eq!((status, node["state"].as_str()), (202, Some("draining")));
    // Asking again while it drains changes nothing and answers the same.
    let (status, node) = remove(&cluster.client(3), 1, false).await.unwrap();
    assert_eq!((status, node["state"].as_str()), (202, Some("draining")));
    wait_state(&cluster, 2, 1, "removed").await;
    let view = wait_settled(&cluster, 2, &[2, 3, 4]).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
    assert!(!meta.voters.contains(&1), "{meta:?}");
    assert_eq!(meta.voters.len(), 3, "{meta:?}");

    let deadline = Instant::now() + READY;
    while !cluster.has_exited(1) {
        assert!(Instant::now() < deadline, "node 1 still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster
            .log_tail(1, 400)
            .contains("removed from the cluster"),
        "{}",
        cluster.log_tail(1, 20)
    );

    let n3 = cluster.client(3);
    for id in &acked {
        assert_eq!(
            n3.get_workflow(id, false).await.unwrap().revision,
            1,
            "{id}"
        );
    }
    wait_converged(&cluster, &view).await;

    let again =
        json!({"id": 1, "client_addr": cluster.node(1).client, "peer_addr": cluster.node(1).peer});
    assert_eq!(
        code(register(&n3, again).await),
        (409, Some(ErrorCode::NodeExists))
    );
    assert_eq!(
        code(remove(&n3, 2, false).await),
        (409, Some(ErrorCode::NotEnoughNodes))
    );
    assert_eq!(
        code(remove(&n3, 42, false).await),
        (404, Some(ErrorCode::NotFound))
    );
}

/// Done-when 2: in a five-node cluster, a node killed for good is force-removed; every group
/// gets back to three voters on the remaining four, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_removal_of_a_dead_node_restores_three_replicas_on_the_rest() {
    let mut cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define_order(&cluster).await;
    cluster.join(4, 1);
    wait_state(&cluster, 1, 4, "active").await;
    cluster.join(5, 2);
    let view = wait_settled(&cluster, 1, &[1, 2, 3, 4, 5]).await;
    let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
    assert_eq!(
        meta.voters.len(),
        5,
        "five nodes, five meta voters: {meta:?}"
    );

    let n1 = cluster.client(1);
    let mut ids = Vec::new();
    for i in 0..100 {
        let id = format!("f-{i}");
        n1.create_workflow(&create(&id)).await.unwrap();
        ids.push(id);
    }
    cluster.kill9(3);
    let (status, node) = remove(&n1, 3, true).await.unwrap();
    assert_eq!((status, node["state"].as_str()), (202, Some("draining")));
    wait_state(&cluster, 1, 3, "removed").await;
    let view = wait_settled(&cluster, 1, &[1, 2, 4, 5]).await;
    let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
    assert_eq!(meta.voters.len(), 3, "{meta:?}");
    assert!(!meta.voters.contains(&3));
    let n5 = cluster.client(5);
    for id in &ids {
        assert_eq!(
            n5.get_workflow(id, false).await.unwrap().revision,
            1,
            "{id}"
        );
    }
    wait_converged(&cluster, &view).await;
}

/// A node started with --join on a cluster that refuses it (a taken id) stops with the
/// cluster's reason instead of serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_with_a_taken_id_stops_and_says_why() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let port = raftflow_cluster_tests::free_port("127.0.0.1");
    let peer = raftflow_cluster_tests::free_port("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(raftflow_cluster_tests::binary())
        .args(["serve", "--id", "2", "--join"])
        .arg(format!("http://{}", cluster.node(1).client))
        .args(["--client-listen", &format!("127.0.0.1:{port}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node 2 is already a member"), "{err}");
}

/// Five members created with `--replication-factor 3`: each data group starts on three of
/// them, spread (replicas per node differ by at most one, first leaders too), and every node
/// serves every group, whether it holds a replica or not. An even factor, or one above the
/// members, is refused at start with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_node_cluster_keeps_three_replicas_of_each_group() {
    let cluster = Cluster::start(5, 5, &["--replication-factor", "3"]);
    cluster.wait_ready(READY).await.unwrap();
    define_order(&cluster).await;
    let view = wait_settled(&cluster, 2, &[1, 2, 3, 4, 5]).await;
    assert_eq!(view.replication_factor, 3);
    let data: Vec<_> = view.groups.iter().filter(|g| g.kind == "data").collect();
    assert_eq!(data.len(), 5);
    // Leadership follows the preferred leaders, spread one per node.
    eventually(SETTLE, || async {
        let view = cluster.probe(2).cluster().await?;
        let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
        for g in view.groups.iter().filter(|g| g.kind == "data") {
            let l = g
                .leader
                .ok_or_else(|| anyhow::anyhow!("group {} has no leader", g.id))?;
            *leaders.entry(l).or_default() += 1;
        }
        anyhow::ensure!(
            leaders.values().all(|n| *n <= 2),
            "leaders per node {leaders:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("rf-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let via = cluster.client(1 + i as u64 % 5);
        eventually(Duration::from_secs(10), || async {
            Ok(via.create_workflow(&create(id)).await?)
        })
        .await
        .unwrap();
    }
    for node in 1..=5 {
        let c = cluster.probe(node);
        for id in &ids {
            let wf = c.get_workflow(id, false).await.unwrap();
            assert_eq!(wf.state, "created", "{id} through node {node}");
        }
    }
    wait_converged(&cluster, &view).await;
    // The factor is checked at start, and a member's data directory keeps the one it was
    // created with: a restart with another is refused.
    let mut cluster = cluster;
    cluster.kill9(1);
    let members = cluster
        .nodes
        .iter()
        .map(|n| format!("{}={}/{}", n.id, n.client, n.peer))
        .collect::<Vec<_>>()
        .join(",");
    let fresh = tempfile::tempdir().unwrap();
    for (dir, factor, reason) in [
        (fresh.path().to_path_buf(), "2", "must be odd"),
        (fresh.path().to_path_buf(), "7", "needs 1 to 5 members"),
        (
            cluster.data_dir(1),
            "1",
            "created with replication factor 3, not 1",
        ),
    ] {
        let out = std::process::Command::new(raftflow_cluster_tests::binary())
            .arg("serve")
            .args(["--id", "1", "--groups", "5", "--initial-cluster", &members])
            .args(["--replication-factor", factor, "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "factor {factor} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "factor {factor}: {err}");
    }
    cluster.restart(1);
    cluster.wait_ready(READY).await.unwrap();
}
