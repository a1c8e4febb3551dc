//! Tasks and timers on real node processes: leases, fencing tokens, heartbeats, retries,
//! timers across a leader kill, cancel, and how fast a waiting poll wakes.

use std::time::{Duration, Instant};

use raftflow_client::client::{Client, ClientError};
use raftflow_client::types::{
    CancelWorkflow, CompleteTask, CreateWorkflow, FailTask, HeartbeatTask, PollTasks, TaskLease,
    WorkflowView,
};
use raftflow_cluster_tests::{eventually, Cluster};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const READY: Duration = Duration::from_secs(30);

/// `work` (a task of type `ty` with `spec`) → `wait` (a timer of `timer_ms`) → `done`.
fn task_then_timer(name: &str, ty: &str, spec: Value, timer_ms: u64) -> Value {
    let mut task = json!({"type": ty});
    task.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    json!({
        "name": name,
        "initial": "work",
        "states": {
            "work": {"task": task, "on": {"task.completed": "wait", "task.failed": "broken", "stop": "stopped"}},
            "wait": {"timer_ms": timer_ms, "on": {"timer.fired": "done", "stop": "stopped"}},
            "done": {"terminal": "succeeded"},
            "broken": {"terminal": "failed"},
            "stopped": {"terminal": "cancelled"}
        }
    })
}

async fn start(c: &Client, definition: &str, id: &str) -> WorkflowView {
    let req = CreateWorkflow {
        id: Some(id.into()),
        definition: definition.into(),
        version: None,
        context: Some(json!({"n": 1})),
    };
    let (status, wf) = c.create_workflow(&req).await.unwrap();
    assert_eq!(status, 201);
    wf
}

fn poll(ty: &str, worker: &str, wait_ms: u64) -> PollTasks {
    PollTasks {
        types: vec![ty.into()],
        worker: worker.into(),
        max: None,
        wait_ms: Some(wait_ms),
        lease_ms: None,
    }
}

/// The one task `req` should find. Polls wait for it: a poll reads the node's own replica, which
/// may apply a create the leader has just acknowledged a moment later.
async fn poll_one(c: &Client, req: &PollTasks) -> TaskLease {
    let req = PollTasks {
        wait_ms: Some(req.wait_ms.unwrap_or(0).max(2000)),
        ..req.clone()
    };
    let mut list = c.poll_tasks(&req).await.unwrap();
    assert_eq!(list.tasks.len(), 1, "{:?}", list.tasks);
    list.tasks.pop().unwrap()
}

fn complete(token: u64) -> CompleteTask {
    CompleteTask {
        lease_token: token,
        output: Some(json!({"done_by": token})),
    }
}

fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (409, "lease_lost"))
        }
        other => panic!("expected 409 lease_lost, got {other:?}"),
    }
}

fn ms(rfc3339: &str) -> i128 {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .unwrap()
        .unix_timestamp_nanos()
        / 1_000_000
}

async fn events(c: &Client, id: &str) -> Vec<(String, String)> {
    c.history(id)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| (e.event, e.at))
        .collect()
}

fn count(events: &[(String, String)], name: &str) -> usize {
    events.iter().filter(|(e, _)| e == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_handed_out_again_with_a_higher_token_and_the_old_one_is_refused() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let (n1, n2, n3) = (cluster.client(1), cluster.client(2), cluster.client(3));
    let def = task_then_timer("lease", "pack", json!({"lease_ms": 400}), 60_000);
    n1.put_definition("lease", &def).await.unwrap();
    start(&n1, "lease", "l-1").await;

    let first = poll_one(&n1, &poll("pack", "slow", 0)).await;
    assert_eq!((first.id.as_str(), first.attempt), ("l-1:1", 1));
    assert_eq!(first.context, json!({"n": 1}));
    let lease_ms =
        ms(&first.lease_expires_at) - OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    assert!(lease_ms <= 400, "lease of {lease_ms} ms");
    // While the lease is live nobody else gets the task.
    assert!(n3
        .poll_tasks(&poll("pack", "other", 0))
        .await
        .unwrap()
        .tasks
        .is_empty());

    // Once it expires, a waiting poll on another node gets it, under a higher token.
    let second = poll_one(&n2, &poll("pack", "fast", 3000)).await;
    assert_eq!((second.id.as_str(), second.attempt), ("l-1:1", 1));
    assert!(
        second.lease_token > first.lease_token,
        "{} then {}",
        first.lease_token,
        second.lease_token
    );

    // The stale holder can do nothing with its token.
    assert_lease_lost(
        n3.complete_task(&first.id, &complete(first.lease_token))
            .await,
    );
    let hb = HeartbeatTask {
        lease_token: first.lease_token,
        lease_ms: None,
    };
    assert_lease_lost(n1.heartbeat_task(&first.id, &hb).await);
    let fail = FailTask {
        lease_token: first.lease_token,
        error: "late".into(),
        retryable: None,
    };
    assert_lease_lost(n1.fail_task(&first.id, &fail).await);

    // The current holder completes; a repeat of its completion is answered the same way.
    let done = n3
        .complete_task(&second.id, &complete(second.lease_token))
        .await
        .unwrap();
    assert_eq!(
        (done.task.status.as_str(), done.workflow.state.as_str()),
        ("completed", "wait")
    );
    assert_eq!(
        done.workflow.context,
        json!({"n": 1, "done_by": second.lease_token})
    );
    let again = n2
        .complete_task(&second.id, &complete(second.lease_token))
        .await
        .unwrap();
    assert_eq!(again.workflow.revision, done.workflow.revision);
    assert_lease_lost(
        n1.complete_task(&first.id, &complete(first.lease_token))
            .await,
    );
    let history = events(&n2, "l-1").await;
    assert_eq!(count(&history, "task.completed"), 1, "{history:?}");

    // Unknown and malformed task ids.
    for bad in ["l-1:99", "nope:1"] {
        match n1.complete_task(bad, &complete(1)).await {
            Err(ClientError::Api { status: 404, .. }) => {}
            other => panic!("{bad}: expected 404, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_alive_past_its_length() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let (n1, n2) = (cluster.client(1), cluster.client(2));
    let def = task_then_timer("beat", "long", json!({"lease_ms": 500}), 60_000);
    n1.put_definition("beat", &def).await.unwrap();
    start(&n1, "beat", "b-1").await;
    let lease = poll_one(&n1, &poll("long", "holder", 0)).await;
    let mut expires = ms(&lease.lease_expires_at);
    let hb = HeartbeatTask {
        lease_token: lease.lease_token,
        lease_ms: Some(500),
    };
    // Three lease lengths, heartbeating every 200 ms: nobody else may take the task.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ext = n2.heartbeat_task(&lease.id, &hb).await.unwrap();
        assert_eq!(ext.lease_token, lease.lease_token);
        let new_expiry = ms(&ext.lease_expires_at);
        assert!(new_expiry > expires, "{new_expiry} after {expires}");
        expires = new_expiry;
        let stolen = n2.poll_tasks(&poll("long", "thief", 0)).await.unwrap();
        assert!(stolen.tasks.is_empty(), "{:?}", stolen.tasks);
    }
    let done = n1
        .complete_task(&lease.id, &complete(lease.lease_token))
        .await
        .unwrap();
    assert_eq!(done.workflow.state, "wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_back_off_exponentially_then_task_failed_fires() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let n1 = cluster.client(1);
    let spec = json!({"max_attempts": 3, "backoff_ms": 300, "backoff_multiplier": 2.0});
    n1.put_definition("retry", &task_then_timer("retry", "flaky", spec, 60_000))
        .await
        .unwrap();
    start(&n1, "retry", "r-1").await;

    let mut lease = poll_one(&n1, &poll("flaky", "w", 0)).await;
    for (attempt, backoff_ms) in [(1u32, 300i128), (2, 600)] {
        assert_eq!(lease.attempt, attempt);
        let fail = FailTask {
            lease_token: lease.lease_token,
            error: format!("attempt {attempt} broke"),
            retryable: None,
        };
        let out = n1.fail_task(&lease.id, &fail).await.unwrap();
        assert_eq!(out.task.status, "backoff");
        assert_eq!(out.workflow.status, "running");
        let retry_at = ms(out.task.retry_at.as_deref().unwrap());
        assert_eq!(retry_at - ms(&out.workflow.updated_at), backoff_ms);
        // Not before the backoff ends...
        assert!(n1
            .poll_tasks(&poll("flaky", "w", 0))
            .await
            .unwrap()
            .tasks
            .is_empty());
        // ...and promptly after.
        lease = poll_one(&n1, &poll("flaky", "w", 5000)).await;
        let leased_at = ms(&lease.lease_expires_at) - 30_000;
        assert!(
            leased_at >= retry_at,
            "leased at {leased_at}, retry at {retry_at}"
        );
        assert!(
            leased_at - retry_at < 300,
            "leased {} ms late",
            leased_at - retry_at
        );
    }
    assert_eq!(lease.attempt, 3);
    let fail = FailTask {
        lease_token: lease.lease_token,
        error: "attempt 3 broke".into(),
        retryable: None,
    };
    let out = n1.fail_task(&lease.id, &fail).await.unwrap();
    assert_eq!(out.task.status, "failed");
    assert_eq!(
        (out.workflow.state.as_str(), out.workflow.status.as_str()),
        ("broken", "failed")
    );
    let history = events(&n1, "r-1").await;
    assert_eq!(count(&history, "task.retrying"), 2, "{history:?}");
    assert_eq!(count(&history, "task.failed"), 1, "{history:?}");

    // A non-retryable failure ends the task at its first attempt.
    start(&n1, "retry", "r-2").await;
    let lease = poll_one(&n1, &poll("flaky", "w", 0)).await;
    let fail = FailTask {
        lease_token: lease.lease_token,
        error: "bad input".into(),
        retryable: Some(false),
    };
    let out = n1.fail_task(&lease.id, &fail).await.unwrap();
    assert_eq!(
        (out.task.attempt, out.workflow.status.as_str()),
        (1, "failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_once_on_time_and_once_after_its_leader_is_killed() {
    let mut cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let n1 = cluster.client(1);
    let timer = json!({
        "name": "timer", "initial": "wait",
        "states": {
            "wait": {"timer_ms": 1500, "on": {"timer.fired": "done"}},
            "done": {"terminal": "succeeded"}
        }
    });
    n1.put_definition("timer", &timer).await.unwrap();

    // On a healthy cluster: at or after due, within 100 ms of it.
    let wf = start(&n1, "timer", "t-healthy").await;
    let done = eventually(Duration::from_secs(5), || async {
        let w = n1.get_workflow("t-healthy", false).await?;
        anyhow::ensure!(w.status == "succeeded", "still {}", w.state);
        Ok(w)
    })
    .await
    .unwrap();
    let late = ms(&done.updated_at) - ms(&wf.created_at) - 1500;
    assert!((0..100).contains(&late), "fired {late} ms after due");

    // Kill the leader of the group right after the workflow entered the timer state.
    let wf = start(&n1, "timer", "t-failover").await;
    let leader = cluster.leader_of(1, wf.group).await.unwrap();
    cluster.kill9(leader);
    let via = if leader == 1 { 2 } else { 1 };
    let c = cluster.client(via);
    let done = eventually(Duration::from_secs(15), || async {
        let w = c.get_workflow("t-failover", false).await?;
        anyhow::ensure!(w.status == "succeeded", "still {}", w.state);
        Ok(w)
    })
    .await
    .unwrap();
    assert!(ms(&done.updated_at) >= ms(&wf.created_at) + 1500);
    let history = events(&c, "t-failover").await;
    assert_eq!(count(&history, "timer.fired"), 1, "{history:?}");
    assert_eq!(done.revision, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_withdraws_a_leased_task_and_a_pending_timer() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let (n1, n2) = (cluster.client(1), cluster.client(2));
    n1.put_definition("cx", &task_then_timer("cx", "cx", json!({}), 300))
        .await
        .unwrap();
    start(&n1, "cx", "c-1").await;
    let lease = poll_one(&n2, &poll("cx", "w", 0)).await;
    let wf = n1.cancel("c-1", &CancelWorkflow::default()).await.unwrap();
    assert_eq!(wf.status, "cancelled");
    assert_lease_lost(
        n2.complete_task(&lease.id, &complete(lease.lease_token))
            .await,
    );
    assert_eq!(n1.get_task(&lease.id).await.unwrap().status, "withdrawn");
    assert!(n1
        .poll_tasks(&poll("cx", "w", 300))
        .await
        .unwrap()
        .tasks
        .is_empty());

    // A workflow cancelled while its timer runs never sees the timer fire.
    start(&n1, "cx", "c-2").await;
    let lease = poll_one(&n2, &poll("cx", "w", 0)).await;
    n2.complete_task(&lease.id, &complete(lease.lease_token))
        .await
        .unwrap();
    n1.cancel("c-2", &CancelWorkflow::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let history = events(&n1, "c-2").await;
    assert_eq!(count(&history, "timer.fired"), 0, "{history:?}");
    assert_eq!(
        n1.get_workflow("c-2", false).await.unwrap().status,
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_task_wakes_a_waiting_poll_on_any_node_well_under_a_second() {
    let cluster = Cluster::start(3, 4, &[]);
    cluster.wait_ready(READY).await.unwrap();
    // Leadership settles first, so that no handover falls inside the polls and leases timed here.
    cluster.wait_balanced(READY).await.unwrap();
    let n1 = cluster.client(1);
    n1.put_definition("wake", &task_then_timer("wake", "wake", json!({}), 60_000))
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..9u64 {
        let poller = cluster.client(1 + i % 3);
        let waiting = tokio::spawn(async move {
            let got = poller.poll_tasks(&poll("wake", "w", 10_000)).await;
            (got, Instant::now())
        });
        // Let the poll find nothing and start waiting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let creator = cluster.client(1 + (i + 1) % 3);
        start(&creator, "wake", &format!("wake-{i}")).await;
        let acked = Instant::now();
        let (got, woke) = waiting.await.unwrap();
        let got = got.unwrap();
        assert_eq!(got.tasks.len(), 1, "poll {i} woke with {:?}", got.tasks);
        assert_eq!(got.tasks[0].workflow_id, format!("wake-{i}"));
        worst = worst.max(woke.saturating_duration_since(acked));
    }
    eprintln!("worst wake-up after the create's ack: {worst:?}");
    assert!(
        worst < Duration::from_millis(250),
        "a poll woke {worst:?} late"
    );
}
