//! Every error row of `docs/API.md`: status and stable `code`, against real nodes.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use raftflow_cluster_tests::{counter_definition, order_definition, Cluster};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

struct Http {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    connection: Option<String>,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }

    #[track_caller]
    fn expect(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "error without message: {}",
            self.body
        );
    }
}

impl Http {
    fn new(addr: &str) -> Http {
        Http {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("node answers");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let connection = resp
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            retry_after,
            connection,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(
            reqwest::Method::PUT,
            path,
            Some(body.to_string().into_bytes()),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_have_their_status_and_code() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let h = Http::new(&cluster.node(2).client);
    h.put("/v1/definitions/order", order_definition()).await;
    h.put("/v1/definitions/counter", counter_definition()).await;

    // 400 bad_request: malformed JSON, wrong types, ids outside their alphabet.
    let a = h
        .send(
            reqwest::Method::POST,
            "/v1/workflows",
            Some(b"{\"definition\": ".to_vec()),
        )
        .await;
    a.expect(400, "bad_request");
    h.post("/v1/workflows", json!({"definition": 5}))
        .await
        .expect(400, "bad_request");
    h.post(
        "/v1/workflows",
        json!({"definition": "order", "context": [1]}),
    )
    .await
    .expect(400, "bad_request");
    h.post(
        "/v1/workflows",
        json!({"id": "bad id!", "definition": "order"}),
    )
    .await
    .expect(400, "bad_request");
    h.post(
        "/v1/workflows",
        json!({"id": "x".repeat(129), "definition": "order"}),
    )
    .await
    .expect(400, "bad_request");
    h.get("/v1/workflows/bad%20id")
        .await
        .expect(400, "bad_request");
    h.post("/v1/workflows/o-1/events", json!({"event": 7}))
        .await
        .expect(400, "bad_request");
    h.put("/v1/definitions/order", json!("not an object"))
        .await
        .expect(400, "bad_request");
    h.get("/v1/workflows?limit=0")
        .await
        .expect(400, "bad_request");
    h.get("/v1/workflows?status=sleeping")
        .await
        .expect(400, "bad_request");
    h.get("/v1/workflows/o-1?consistency=eventual")
        .await
        .expect(400, "bad_request");

    // 404 not_found: workflow, definition, version, route.
    h.get("/v1/workflows/nope").await.expect(404, "not_found");
    h.get("/v1/workflows/nope/history")
        .await
        .expect(404, "not_found");
    h.post("/v1/workflows/nope/events", json!({"event": "pay"}))
        .await
        .expect(404, "not_found");
    h.post("/v1/workflows/nope/cancel", json!({}))
        .await
        .expect(404, "not_found");
    h.get("/v1/definitions/nope").await.expect(404, "not_found");
    h.get("/v1/definitions/order/versions/9")
        .await
        .expect(404, "not_found");
    h.post("/v1/workflows", json!({"definition": "nope"}))
        .await
        .expect(404, "not_found");
    h.post(
        "/v1/workflows",
        json!({"definition": "order", "version": 9}),
    )
    .await
    .expect(404, "not_found");
    h.get("/v1/nothing-here").await.expect(404, "not_found");

    // 409 workflow_exists: the same id with a different request.
    let a = h
        .post(
            "/v1/workflows",
            json!({"id": "o-1", "definition": "order", "context": {"a": 1}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    h.post(
        "/v1/workflows",
        json!({"id": "o-1", "definition": "order", "context": {"a": 2}}),
    )
    .await
    .expect(409, "workflow_exists");

    // 409 revision_mismatch with the current revision.
    let a = h
        .post(
            "/v1/workflows/o-1/events",
            json!({"event": "pay", "expected_revision": 3}),
        )
        .await;
    a.expect(409, "revision_mismatch");
    assert_eq!(a.body["error"]["details"]["current_revision"], 1);

    // 422 invalid_definition with every problem listed.
    let bad = json!({"initial": "a", "states": {"a": {"on": {"go": "b"}}, "c": {}}});
    let a = h.put("/v1/definitions/broken", bad).await;
    a.expect(422, "invalid_definition");
    let problems = a.body["error"]["details"]["problems"]
        .as_array()
        .expect("problems list");
    assert!(problems.len() >= 3, "{problems:?}");

    // 422 invalid_transition: not allowed here, engine-only events, finished workflows.
    h.post("/v1/workflows/o-1/events", json!({"event": "ship"}))
        .await
        .expect(422, "invalid_transition");
    h.post(
        "/v1/workflows/o-1/events",
        json!({"event": "task.completed"}),
    )
    .await
    .expect(422, "invalid_transition");
    h.post("/v1/workflows/o-1/events", json!({"event": "timer.fired"}))
        .await
        .expect(422, "invalid_transition");
    let a = h
        .post("/v1/workflows/o-1/cancel", json!({"reason": "test"}))
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("cancelled")),
        "{}",
        a.body
    );
    h.post("/v1/workflows/o-1/cancel", json!({}))
        .await
        .expect(422, "invalid_transition");
    h.post("/v1/workflows/o-1/events", json!({"event": "pay"}))
        .await
        .expect(422, "invalid_transition");

    // 413 payload_too_large: a 2 MiB body. The node reads it to its end before it answers, so
    // the client gets the 413 rather than a reset while it still sends (seen in CI as a broken
    // pipe), and the connection stays usable: each round trip here reuses the client.
    let big = json!({"definition": "order", "context": {"blob": "x".repeat(2 << 20)}});
    for _ in 0..5 {
        let a = h.post("/v1/workflows", big.clone()).await;
        a.expect(413, "payload_too_large");
        assert_eq!(
            a.connection, None,
            "a drained body leaves the connection open"
        );
        assert_eq!(h.get("/healthz").await.status, 200);
    }

    // The node is still fine after all of that.
    assert_eq!(h.get("/healthz").await.status, 200);
    let a = h.get("/v1/workflows/o-1").await;
    assert_eq!(a.body["revision"], 2, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_without_quorum_says_when_to_retry() {
    let mut cluster = Cluster::start(3, 2, &["--write-timeout-ms", "1500"]);
    cluster.wait_ready(READY).await.unwrap();
    let h = Http::new(&cluster.node(1).client);
    assert_eq!(
        h.put("/v1/definitions/counter", counter_definition())
            .await
            .status,
        201
    );
    let a = h
        .post(
            "/v1/workflows",
            json!({"id": "q-1", "definition": "counter"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    cluster.kill9(2);
    cluster.kill9(3);
    // Whether node 1 still thinks it leads or knows no leader, no quorum means 503.
    let a = h
        .post("/v1/workflows/q-1/events", json!({"event": "tick"}))
        .await;
    a.expect(503, "unavailable");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    let a = h.get("/v1/workflows/q-1").await;
    a.expect(503, "unavailable");
    assert!(a.retry_after.is_some());
    // Not ready either; alive though.
    assert_eq!(h.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_node_sheds_with_429() {
    let cluster = Cluster::start(3, 1, &["--max-inflight-requests", "1"]);
    cluster.wait_ready(READY).await.unwrap();
    let h1 = Http::new(&cluster.node(1).client);
    assert_eq!(
        h1.put("/v1/definitions/counter", counter_definition())
            .await
            .status,
        201
    );
    // Hold the node's only request slot with a request whose body never finishes arriving:
    // the slot is taken from the headers on, for as long as the test keeps the socket open.
    let mut held = tokio::net::TcpStream::connect(&cluster.node(1).client)
        .await
        .unwrap();
    held.write_all(
        b"POST /v1/workflows HTTP/1.1\r\nHost: raftflow\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"id\": ",
    )
    .await
    .unwrap();
    // The gauge of requests in flight says when the slot is taken (metrics are never shed).
    raftflow_cluster_tests::eventually(Duration::from_secs(10), || async {
        let text = reqwest::get(format!("http://{}/metrics", cluster.node(1).client))
            .await?
            .text()
            .await?;
        anyhow::ensure!(
            text.lines()
                .any(|l| l == "raftflow_http_requests_inflight 1"),
            "slot not taken yet"
        );
        Ok(())
    })
    .await
    .unwrap();
    let a = h1.get("/v1/definitions").await;
    a.expect(429, "overloaded");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(h1.get("/healthz").await.status, 200, "health is never shed");
    // Once the held request ends, the slot is free again.
    drop(held);
    raftflow_cluster_tests::eventually(Duration::from_secs(10), || async {
        let status = h1.get("/v1/definitions").await.status;
        anyhow::ensure!(status == 200, "still shed: {status}");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_short_of_disk_refuses_writes_with_507() {
    // Demand a petabyte free: every write must be refused while reads still work, also when
    // it reaches the leader through another node.
    let cluster = Cluster::start(3, 1, &["--min-free-disk-bytes", "1125899906842624"]);
    cluster.wait_ready(READY).await.unwrap();
    for id in 1..=3 {
        let h = Http::new(&cluster.node(id).client);
        h.put("/v1/definitions/counter", counter_definition())
            .await
            .expect(507, "storage_full");
        h.get("/v1/definitions/counter")
            .await
            .expect(404, "not_found");
        assert_eq!(h.get("/v1/definitions").await.status, 200);
    }
}

/// A ready three-node cluster with one data group, the `counter` definition and a workflow
/// `id` created through group 1's leader, which it returns.
async fn one_group_with_a_counter(id: &str) -> (Cluster, u64) {
    let cluster = Cluster::start(3, 1, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let leader = cluster.leader_of(1, 1).await.expect("group 1 has a leader");
    let h = Http::new(&cluster.node(leader).client);
    assert_eq!(
        h.put("/v1/definitions/counter", counter_definition())
            .await
            .status,
        201
    );
    let a = h
        .post("/v1/workflows", json!({"id": id, "definition": "counter"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_answers_503_at_once() {
    let (cluster, leader) = one_group_with_a_counter("c-1").await;
    let h = Http::new(&cluster.node(leader).client);
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    for f in &followers {
        cluster.pause(*f, true);
    }
    // Longer than the election timeout (1.5 s): the leader knows it has lost its quorum.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let start = std::time::Instant::now();
    let a = h
        .post("/v1/workflows/c-1/events", json!({"event": "tick"}))
        .await;
    let took = start.elapsed();
    for f in &followers {
        cluster.pause(*f, false);
    }
    a.expect(503, "unavailable");
    // Without the check it would wait for the 5 s write timeout.
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_its_leader_answers_503_at_once() {
    let (cluster, leader) = one_group_with_a_counter("f-1").await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|n| *n != follower).collect();
    let h = Http::new(&cluster.node(follower).client);
    // A linearizable listing waits until the follower has applied the create, so the local
    // listing below has f-1 to show (the create's ack only says a majority has it, which may
    // be the leader and the other follower).
    let before = h.get("/v1/workflows").await;
    assert_eq!(before.body["workflows"][0]["id"], "f-1", "{}", before.body);
    for n in &others {
        cluster.pause(*n, true);
    }
    // Longer than two election timeouts (2 x 1.5 s): the follower has given up on its leader.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let start = std::time::Instant::now();
    let a = h
        .post("/v1/workflows/f-1/events", json!({"event": "tick"}))
        .await;
    let took = start.elapsed();
    // A listing is linearizable too, so it cannot answer either; a local one can.
    let list = h.get("/v1/workflows").await;
    let local = h.get("/v1/workflows?consistency=local").await;
    for n in &others {
        cluster.pause(*n, false);
    }
    list.expect(503, "unavailable");
    assert_eq!(local.status, 200, "{}", local.body);
    assert_eq!(local.body["workflows"][0]["id"], "f-1", "{}", local.body);
    a.expect(503, "unavailable");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not heard from its leader")),
        "{}",
        a.body
    );
    // A forward to the paused leader would wait for the 5 s write timeout.
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
}
