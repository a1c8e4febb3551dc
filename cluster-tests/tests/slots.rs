//! Groups added and retired online, on real node processes: slots move to a new group under
//! writes (only to it, about 1/(G+1) of them) while the node driving the moves is killed;
//! workflows keep their history, request ids, tasks with their lease tokens, and timers, which
//! fire once; a retired group's workflows are all readable elsewhere; the last group stays.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftflow_client::client::{Client, Method};
use raftflow_client::types::{ClusterView, CompleteTask, CreateWorkflow, PollTasks, SendEvent};
use raftflow_client::ErrorCode;
use raftflow_cluster_tests::{eventually, order_definition, Cluster};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
/// Long enough for every slot move of a test's change.
const SETTLE: Duration = Duration::from_secs(90);
const SLOTS: u64 = 16384;

fn create(id: &str, definition: &str) -> CreateWorkflow {
    CreateWorkflow {
        id: Some(id.to_string()),
        definition: definition.into(),
        version: None,
        context: Some(json!({"amount": 30})),
    }
}

fn pay(request_id: Option<String>) -> SendEvent {
    SendEvent {
        event: "pay".into(),
        payload: None,
        expected_revision: None,
        request_id,
    }
}

async fn define(cluster: &Cluster, name: &str, definition: &Value) {
    let (status, _) = cluster
        .client(1)
        .put_definition(name, definition)
        .await
        .unwrap();
    assert!(status == 201 || status == 200);
}

/// Waits until, as node `via` sees it, no slot moves, every slot is owned by one of `groups`
/// (about equally), and no other data group is listed; returns that view.
async fn wait_slots_settled(cluster: &Cluster, via: u64, groups: &[u64]) -> ClusterView {
    eventually(SETTLE, || async {
        let view = cluster.probe(via).cluster().await?;
        anyhow::ensure!(
            view.placement.moves.is_empty(),
            "moving: {:?}",
            view.placement.moves
        );
        let per: BTreeMap<u64, u64> = view
            .placement
            .slots_per_group
            .as_object()
            .unwrap()
            .iter()
            .map(|(g, n)| (g.parse().unwrap(), n.as_u64().unwrap()))
            .collect();
        anyhow::ensure!(
            per.keys().copied().collect::<Vec<_>>() == groups,
            "slots per group {per:?}"
        );
        let share = SLOTS / groups.len() as u64;
        for (g, n) in &per {
            anyhow::ensure!(
                n.abs_diff(share) * 10 <= share,
                "group {g} owns {n} slots, share {share}"
            );
        }
        let data: Vec<u64> = view
            .groups
            .iter()
            .filter(|g| g.kind == "data")
            .map(|g| g.id)
            .collect();
        anyhow::ensure!(data == groups, "data groups {data:?}");
        Ok(view)
    })
    .await
    .unwrap()
}

/// Creates and pays workflows through every node until stopped; the acknowledged ids with
/// the revision acknowledged.
fn write_load(
    cluster: &Cluster,
    prefix: &str,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<BTreeMap<String, u64>>,
) {
    let clients: Vec<Client> = (1..=3)
        .map(|i| cluster.client_with_timeout(i, Duration::from_secs(5)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let prefix = prefix.to_string();
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(60);
            for i in 0..20_000usize {
                if stop.load(Ordering::Relaxed) || Instant::now() > until {
                    break;
                }
                let id = format!("{prefix}-{i}");
                let c = &clients[i % 3];
                if c.create_workflow(&create(&id, "order")).await.is_err() {
                    continue;
                }
                acked.lock().unwrap().insert(id.clone(), 1);
                if let Ok(wf) = clients[(i + 1) % 3].send_event(&id, &pay(None)).await {
                    acked.lock().unwrap().insert(id, wf.revision);
                }
            }
            let acked = acked.lock().unwrap().clone();
            acked
        })
    };
    (stop, handle)
}

/// Every event of `id`'s history has the next revision, from 1.
async fn assert_contiguous(client: &Client, id: &str) -> usize {
    let history = client.history(id).await.unwrap();
    for (i, e) in history.events.iter().enumerate() {
        assert_eq!(e.revision, i as u64 + 1, "{id}: {:?}", history.events);
    }
    history.events.len()
}

/// Done-when 1 and the resumption of a move after its driver is killed: a fourth group is
/// added to three under writes, with leased tasks and request ids in flight; the node driving
/// the moves is killed mid-way and restarted. A quarter of the workflows move, all to the new
/// group; nothing acknowledged is lost; repeated request ids answer their first outcome; tasks
/// leased before complete with their tokens in the new group while stale tokens are refused.
/// Then the group is retired and every workflow is readable elsewhere, its history contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_added_and_retired_under_writes_moves_its_share_and_loses_nothing() {
    let mut cluster = Cluster::start(3, 3, &[]);
    cluster.wait_ready(READY).await.unwrap();
    define(&cluster, "order", &order_definition()).await;
    let c1 = cluster.client(1);

    // 300 paid workflows (request ids), whose tasks are leased before anything moves.
    let mut before = BTreeMap::new();
    for i in 0..300 {
        let id = format!("old-{i}");
        c1.create_workflow(&create(&id, "order")).await.unwrap();
        let wf = c1
            .send_event(&id, &pay(Some(format!("pay-{id}"))))
            .await
            .unwrap();
        assert_eq!(wf.revision, 2);
        before.insert(id, wf.group);
    }
    let mut tokens = BTreeMap::new();
    while tokens.len() < 300 {
        let poll = PollTasks {
            types: vec!["ship".into()],
            worker: "w1".into(),
            max: Some(100),
            wait_ms: Some(0),
            lease_ms: Some(600_000),
        };
        let leased = c1.poll_tasks(&poll).await.unwrap().tasks;
        assert!(!leased.is_empty(), "{} of 300 tasks leased", tokens.len());
        for t in leased {
            tokens.insert(t.id, t.lease_token);
        }
    }

    let (stop, writer) = write_load(&cluster, "w");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, added) = c1
        .request(Method::POST, "/v1/cluster/groups", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 202, "{added}");
    assert_eq!(added["id"], 4, "{added}");

    // Kill the node driving the moves while one is under way, and bring it back.
    let driver = eventually(SETTLE, || async {
        let view = cluster.probe(2).cluster().await?;
        anyhow::ensure!(!view.placement.moves.is_empty(), "no slot move yet");
        let meta = view.groups.iter().find(|g| g.kind == "meta").unwrap();
        meta.leader.ok_or_else(|| anyhow::anyhow!("no meta leader"))
    })
    .await
    .unwrap();
    cluster.kill9(driver);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(driver);
    let via = if driver == 2 { 3 } else { 2 };
    wait_slots_settled(&cluster, via, &[1, 2, 3, 4]).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    cluster.wait_ready(READY).await.unwrap();

    // A quarter of the old workflows moved, every one of them to the new group.
    let c2 = cluster.client(2);
    let mut moved = 0;
    for (id, group) in &before {
        let wf = c2.get_workflow(id, false).await.unwrap();
        assert_eq!(wf.revision, 2, "{id}");
        if wf.group != *group {
            assert_eq!(wf.group, 4, "{id} moved from {group} to {}", wf.group);
            moved += 1;
        }
    }
    assert!((30..=120).contains(&moved), "{moved} of 300 moved");
    // Nothing acknowledged under the move is lost.
    for (id, revision) in &acked {
        let wf = c2.get_workflow(id, false).await.unwrap();
        assert!(
            wf.revision >= *revision,
            "{id}: {} < {revision}",
            wf.revision
        );
    }
    // A repeated request id answers its first outcome, wherever the workflow is now.
    for id in before.keys().take(100) {
        let wf = c2
            .send_event(id, &pay(Some(format!("pay-{id}"))))
            .await
            .unwrap();
        assert_eq!((wf.revision, wf.state.as_str()), (2, "paid"), "{id}");
    }
    // Leased tasks: a stale token is refused, the holder's completes.
    let c3 = cluster.client(3);
    for (task, token) in &tokens {
        let stale = CompleteTask {
            lease_token: token + 1_000_000,
            output: None,
        };
        let err = c3.complete_task(task, &stale).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::LeaseLost), "{task}: {err}");
        let done = CompleteTask {
            lease_token: *token,
            output: None,
        };
        let outcome = c3.complete_task(task, &done).await.unwrap();
        assert_eq!(outcome.workflow.state, "shipped", "{task}");
    }

    // Retire the new group: its workflows go back, every one readable with its history.
    let (status, retiring) = c1
        .request(Method::DELETE, "/v1/cluster/groups/4", None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{retiring}");
    assert_eq!(retiring["state"], "retiring");
    wait_slots_settled(&cluster, 1, &[1, 2, 3]).await;
    for id in before.keys() {
        let wf = c1.get_workflow(id, false).await.unwrap();
        assert_eq!(wf.group, before[id], "{id} is back where it started");
        assert_eq!(wf.state, "shipped");
        assert_eq!(assert_contiguous(&c1, id).await, 3);
    }
    for (id, revision) in &acked {
        let wf = c1.get_workflow(id, false).await.unwrap();
        assert!(wf.revision >= *revision, "{id}");
        assert_ne!(wf.group, 4);
    }
    // The listing holds every workflow once. A create whose answer was lost (the driving node
    // was killed) may have applied too: the writer's ids beyond the acknowledged ones may show.
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/v1/workflows?limit=500&page_token={t}"),
            None => "/v1/workflows?limit=500".to_string(),
        };
        let (_, page) = c1.request(Method::GET, &path, None).await.unwrap();
        for wf in page["workflows"].as_array().unwrap() {
            listed.push(wf["id"].as_str().unwrap().to_string());
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let unique: std::collections::BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a workflow is listed twice");
    for id in before.keys().chain(acked.keys()) {
        assert!(unique.contains(id), "{id} is not listed");
    }
    for id in &unique {
        assert!(
            before.contains_key(*id) || acked.contains_key(*id) || id.starts_with("w-"),
            "{id} is listed but was never created"
        );
    }
}

/// Timers fire once across a move, the only group cannot be retired, and unknown or malformed
/// group ids are refused; on one node, so that the moves are quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_across_a_move_and_the_last_group_stays() {
    let cluster = Cluster::start(1, 1, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let nap = json!({
        "name": "nap",
        "initial": "sleeping",
        "states": {
            "sleeping": {"timer_ms": 6000, "on": {"timer.fired": "awake"}},
            "awake": {"terminal": "succeeded"}
        }
    });
    define(&cluster, "nap", &nap).await;
    let c = cluster.client(1);
    let refused =
        |r: Result<(u16, Value), raftflow_client::client::ClientError>| r.unwrap_err().code();
    assert_eq!(
        refused(
            c.request(Method::DELETE, "/v1/cluster/groups/1", None)
                .await
        ),
        Some(ErrorCode::LastGroup)
    );
    assert_eq!(
        refused(
            c.request(Method::DELETE, "/v1/cluster/groups/9", None)
                .await
        ),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        refused(
            c.request(Method::DELETE, "/v1/cluster/groups/0", None)
                .await
        ),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        refused(
            c.request(Method::POST, "/v1/cluster/groups", Some(&json!({"x": 1})))
                .await
        ),
        Some(ErrorCode::BadRequest)
    );

    for i in 0..400 {
        c.create_workflow(&create(&format!("nap-{i}"), "nap"))
            .await
            .unwrap();
    }
    // Add a group and retire the first: every workflow moves, half of them twice over.
    let (status, _) = c
        .request(Method::POST, "/v1/cluster/groups", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(status, 202);
    let (status, _) = c
        .request(Method::DELETE, "/v1/cluster/groups/1", None)
        .await
        .unwrap();
    assert_eq!(status, 202);
    wait_slots_settled(&cluster, 1, &[2]).await;
    assert_eq!(
        refused(
            c.request(Method::DELETE, "/v1/cluster/groups/2", None)
                .await
        ),
        Some(ErrorCode::LastGroup)
    );
    // Every timer fires, once.
    eventually(SETTLE, || async {
        for i in 0..400 {
            let id = format!("nap-{i}");
            let wf = c.get_workflow(&id, false).await?;
            anyhow::ensure!(wf.state == "awake", "{id} is {}", wf.state);
            anyhow::ensure!(wf.group == 2, "{id} in group {}", wf.group);
        }
        Ok(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..400 {
        let id = format!("nap-{i}");
        let history = c.history(&id).await.unwrap();
        let fired = history
            .events
            .iter()
            .filter(|e| e.event == "timer.fired")
            .count();
        assert_eq!(fired, 1, "{id}: {:?}", history.events);
        assert_eq!(history.events.len(), 2, "{id}");
    }
}
