//! API tokens against real nodes: every `/v1` route of the OpenAPI document answers 401
//! without a token and 403 for a role that may not call it; the token file reloads on SIGHUP;
//! the CLI sends a token; a node refuses an open API on a reachable address.

use std::time::Duration;

use raftflow_cluster_tests::{binary, free_port, Cluster};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);

const ADMIN: &str = "adm-0123456789abcdef";
const OPERATOR: &str = "ops-0123456789abcdef";
const WORKER: &str = "wrk-0123456789abcdef";
const READER: &str = "rdr-0123456789abcdef";

fn token_file(reader: &str) -> String {
    format!(
        "# TOKEN,NAME,ROLE\n{ADMIN},alice,admin\n{OPERATOR},bob,operator\n\
         {WORKER},shipper,worker\n{reader},dash,reader\n"
    )
}

/// What the contract (docs/API.md, Authentication) lets each role call, written out here
/// rather than taken from the server: admin everything; operator workflows, definitions and
/// every GET; worker the task routes and reading workflows and tasks; reader every GET.
fn contract_allows(role: &str, method: &str, path: &str) -> bool {
    let get = method == "GET";
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    match role {
        "admin" => true,
        "reader" => get,
        "operator" => get || under("/v1/workflows") || under("/v1/definitions"),
        "worker" => (get && under("/v1/workflows")) || under("/v1/tasks"),
        _ => unreachable!(),
    }
}

struct Answer {
    status: u16,
    code: String,
    www_authenticate: Option<String>,
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method.clone(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        // Not JSON: a call the role may make is refused by the handler (400), never done.
        req = req
            .header("content-type", "application/json")
            .body("not json");
    }
    let resp = req.send().await.expect("the node answers");
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        code: body["error"]["code"].as_str().unwrap_or("").to_string(),
        www_authenticate,
    }
}

/// Every `(METHOD, path)` under `/v1` in the node's OpenAPI document, with each `{param}`
/// given a value no resource has (`nope`), so that a call let through changes nothing.
async fn v1_routes(http: &reqwest::Client, base: &str) -> Vec<(String, String)> {
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1") {
            continue;
        }
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "nope" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                routes.push((method.to_uppercase(), concrete.clone()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_a_token_and_a_role_that_may_call_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, token_file(READER)).unwrap();
    let tokens_arg = tokens.to_str().unwrap();
    let mut c = Cluster::start(3, 2, &["--token-file", tokens_arg, "--access-log"]);
    c.wait_ready(READY).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("http://{}", c.node(2).client);

    let routes = v1_routes(&http, &base).await;
    assert!(routes.len() >= 20, "{routes:?}");
    let roles = [
        ("admin", ADMIN),
        ("operator", OPERATOR),
        ("worker", WORKER),
        ("reader", READER),
    ];
    let (mut refused, mut allowed) = (0, 0);
    for (method, path) in &routes {
        for token in [None, Some("not-a-token-0123456789"), Some("")] {
            let a = send(&http, &base, method, path, token).await;
            assert_eq!(
                (a.status, a.code.as_str()),
                (401, "unauthenticated"),
                "{method} {path} with {token:?}"
            );
            assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"));
        }
        for (role, token) in roles {
            let a = send(&http, &base, method, path, Some(token)).await;
            if contract_allows(role, method, path) {
                allowed += 1;
                assert!(
                    ![401, 403].contains(&a.status) && a.status < 500,
                    "{role} {method} {path}: {} {}",
                    a.status,
                    a.code
                );
            } else {
                refused += 1;
                assert_eq!(
                    (a.status, a.code.as_str()),
                    (403, "forbidden"),
                    "{role} {method} {path}"
                );
            }
        }
    }
    eprintln!(
        "{} routes: {allowed} role calls let through, {refused} refused",
        routes.len()
    );
    assert!(allowed > 0 && refused > 0);

    // Health, readiness, metrics and the document stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            send(&http, &base, "GET", path, None).await.status,
            200,
            "{path}"
        );
    }

    // A real write under a token: the access log names its caller.
    let client = c.client(2).with_token(Some(OPERATOR.into()));
    client
        .put_definition("order", &raftflow_cluster_tests::order_definition())
        .await
        .unwrap();
    let log = std::fs::read_to_string(c.log_path(2)).unwrap();
    assert!(
        log.lines().any(|l| l.contains("raftflow::access")
            && l.contains("caller=bob")
            && l.contains("/v1/definitions/order")),
        "no access log line for bob's PUT"
    );

    // Each history row names the caller whose request caused it, whichever node took the
    // request and whichever read it back: bob created, alice paid, the shipper completed.
    use raftflow_client::types::{CompleteTask, CreateWorkflow, PollTasks, SendEvent};
    let as_ = |node: u64, token: &str| c.client(node).with_token(Some(token.to_string()));
    let create = CreateWorkflow {
        id: Some("o-by".into()),
        definition: "order".into(),
        version: None,
        context: None,
    };
    as_(2, OPERATOR).create_workflow(&create).await.unwrap();
    let pay = SendEvent {
        event: "pay".into(),
        payload: None,
        expected_revision: None,
        request_id: None,
    };
    as_(3, ADMIN).send_event("o-by", &pay).await.unwrap();
    let poll = PollTasks {
        types: vec!["ship".into()],
        worker: "truck-1".into(),
        max: None,
        wait_ms: Some(5_000),
        lease_ms: None,
    };
    let task = as_(1, WORKER)
        .poll_tasks(&poll)
        .await
        .unwrap()
        .tasks
        .remove(0);
    let done = CompleteTask {
        lease_token: task.lease_token,
        output: None,
    };
    as_(1, WORKER).complete_task(&task.id, &done).await.unwrap();
    let history = as_(1, READER).history("o-by").await.unwrap();
    let by: Vec<(&str, Option<&str>)> = history
        .events
        .iter()
        .map(|e| (e.event.as_str(), e.by.as_deref()))
        .collect();
    assert_eq!(
        by,
        [
            ("created", Some("bob")),
            ("pay", Some("alice")),
            ("task.completed", Some("shipper")),
        ]
    );

    // SIGHUP reloads the file: the reader's token is replaced on every node.
    let new_reader = "rdr-new-0123456789abcdef";
    std::fs::write(&tokens, token_file(new_reader)).unwrap();
    for id in 1..=3 {
        c.signal(id, libc::SIGHUP);
    }
    raftflow_cluster_tests::eventually(Duration::from_secs(10), || async {
        for id in 1..=3 {
            let base = format!("http://{}", c.node(id).client);
            let old = send(&http, &base, "GET", "/v1/definitions", Some(READER)).await;
            let new = send(&http, &base, "GET", "/v1/definitions", Some(new_reader)).await;
            anyhow::ensure!(
                old.status == 401 && new.status == 200,
                "node {id} not reloaded"
            );
        }
        Ok(())
    })
    .await
    .unwrap();
    // A file that does not parse leaves the tokens in use as they were.
    std::fs::write(&tokens, "garbage\n").unwrap();
    c.signal(2, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!c.has_exited(2));
    let a = send(&http, &base, "GET", "/v1/definitions", Some(new_reader)).await;
    assert_eq!(a.status, 200);
    let log = std::fs::read_to_string(c.log_path(2)).unwrap();
    assert!(log.contains("the token file was not reloaded"));

    // The CLI: a token by flag, by environment, by file; none is refused with exit code 8.
    std::fs::write(&tokens, token_file(new_reader)).unwrap();
    let addr = c.node(1).client.clone();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(binary())
            .args(["--addr", &addr])
            .args(args)
            .env_remove("RAFTFLOW_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let token_path = dir.path().join("my-token");
    std::fs::write(&token_path, format!("{OPERATOR}\n")).unwrap();
    let token_path = token_path.to_str().unwrap();
    let none = cli(&["definition", "list"], &[]);
    assert_eq!(none.status.code(), Some(8), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("unauthenticated"));
    for (args, env) in [
        (vec!["--token", OPERATOR, "definition", "list"], vec![]),
        (
            vec!["definition", "list"],
            vec![("RAFTFLOW_TOKEN", OPERATOR)],
        ),
        (
            vec!["--token-path", token_path, "definition", "list"],
            vec![],
        ),
    ] {
        let out = cli(&args, &env);
        assert_eq!(out.status.code(), Some(0), "{args:?} {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("order"));
    }
    let reader = cli(
        &[
            "--token", new_reader, "workflow", "start", "order", "--id", "o-1",
        ],
        &[],
    );
    assert_eq!(reader.status.code(), Some(8), "{reader:?}");
    assert!(String::from_utf8_lossy(&reader.stderr).contains("forbidden"));

    // A node joining this cluster registers itself with an admin token of its token file.
    c.join(4, 1);
    raftflow_cluster_tests::eventually(Duration::from_secs(30), || async {
        let view = c
            .client(1)
            .with_token(Some(new_reader.to_string()))
            .cluster()
            .await?;
        anyhow::ensure!(
            view.nodes.iter().any(|n| n.id == 4),
            "node 4 not registered"
        );
        Ok(())
    })
    .await
    .unwrap();
    c.kill9(4);
}

#[tokio::test]
async fn an_open_api_on_a_reachable_address_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let peer = free_port("127.0.0.1");
    let serve = |extra: &[&str]| {
        std::process::Command::new(binary())
            .args(["serve", "--id", "1", "--groups", "1"])
            .arg("--initial-cluster")
            .arg(format!("1=127.0.0.1:{port}/127.0.0.1:{peer}"))
            .arg("--client-listen")
            .arg(format!("0.0.0.0:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = serve(&[]).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("--insecure"),
        "{stderr}"
    );

    let mut open = serve(&["--insecure"]);
    let http = reqwest::Client::new();
    let ok = raftflow_cluster_tests::eventually(Duration::from_secs(20), || async {
        let r = http
            .get(format!("http://127.0.0.1:{port}/v1/definitions"))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "status {}", r.status());
        Ok(())
    })
    .await;
    let _ = open.kill();
    let _ = open.wait();
    ok.unwrap();
}
