//! The `raftflow` CLI against a real three-node cluster: what it prints for people, that
//! `-o json` is the API's JSON, its exit codes, fail-over between addresses, `--wait`, and
//! shell completions that load in bash, and output into a closed pipe.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use raftflow_cluster_tests::{binary, order_definition, Cluster};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn fails(self, code: i32, stderr_has: &str) -> Run {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks {stderr_has:?}: {}",
            self.stderr
        );
        self
    }
}

/// Runs `raftflow ARGS` with `--addr addr` (no terminal: no colour, no progress lines).
fn raftflow(addr: &str, args: &[&str]) -> Run {
    let out = Command::new(binary())
        .args(args)
        .env("RAFTFLOW_ADDR", addr)
        .env_remove("NO_COLOR")
        .output()
        .expect("run raftflow");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn api_get(addr: &str, path: &str) -> Value {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_every_part_of_the_api() {
    let cluster = Cluster::start(3, 2, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let addrs: Vec<String> = (1..=3).map(|i| cluster.node(i).client.clone()).collect();
    let all = addrs.join(",");
    let n1 = addrs[0].as_str();
    let dir = tempfile::tempdir().unwrap();

    // Definitions, from YAML and JSON.
    let yaml = write(
        dir.path(),
        "order.yaml",
        "name: order\ninitial: created\nstates:\n  created: {on: {pay: paid, cancel: cancelled}}\n  paid:\n    task: {type: ship}\n    on: {task.completed: shipped, task.failed: cancelled}\n  shipped: {on: {deliver: delivered}}\n  delivered: {terminal: succeeded}\n  cancelled: {terminal: cancelled}\n",
    );
    let run = raftflow(&all, &["definition", "apply", &yaml]).ok();
    assert!(
        run.stdout
            .contains("order version 1: stored as a new version"),
        "{}",
        run.stdout
    );
    let run = raftflow(&all, &["def", "apply", &yaml]).ok();
    assert!(
        run.stdout.contains("version 1: unchanged"),
        "{}",
        run.stdout
    );
    let json_file = write(dir.path(), "order.json", &order_definition().to_string());
    let run = raftflow(&all, &["def", "apply", &json_file, "-o", "json"]).ok();
    assert_eq!(run.json()["version"], 2);
    let bad = write(
        dir.path(),
        "bad.json",
        r#"{"name": "bad", "initial": "nowhere", "states": {}}"#,
    );
    raftflow(&all, &["def", "apply", &bad]).fails(2, "invalid_definition");

    let run = raftflow(&all, &["definition", "list", "-o", "json"]).ok();
    assert_eq!(run.json(), api_get(n1, "/v1/definitions").await);
    let run = raftflow(&all, &["definition", "list"]).ok();
    assert!(
        run.stdout.starts_with("NAME   LATEST VERSION\norder  2"),
        "{}",
        run.stdout
    );
    let run = raftflow(&all, &["definition", "get", "order", "--version", "1"]).ok();
    assert!(
        run.stdout.contains("initial state: created"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("task ship"), "{}", run.stdout);
    assert!(run.stdout.contains("pay → paid"), "{}", run.stdout);
    let run = raftflow(&all, &["definition", "versions", "order", "-o", "json"]).ok();
    assert_eq!(run.json()["versions"].as_array().unwrap().len(), 2);
    raftflow(&all, &["definition", "get", "nope"]).fails(3, "not_found");

    // A workflow's life: start, send with a compare-and-set and a request id, read, history.
    let run = raftflow(
        &all,
        &[
            "workflow",
            "start",
            "order",
            "--id",
            "o-1",
            "--version",
            "1",
            "--context",
            r#"{"amount": 30}"#,
            "-o",
            "json",
        ],
    )
    .ok();
    let started = run.json();
    assert_eq!(started["state"], "created");
    assert_eq!(started["context"], json!({"amount": 30}));
    let run = raftflow(
        &all,
        &[
            "wf",
            "send",
            "o-1",
            "pay",
            "--expect-revision",
            "1",
            "--request-id",
            "pay-1",
            "--payload",
            r#"{"card": "visa"}"#,
        ],
    )
    .ok();
    assert!(run.stdout.contains("state:      paid"), "{}", run.stdout);
    assert!(run.stdout.contains("revision:   2"), "{}", run.stdout);
    // The same request id again: the first outcome, nothing changed.
    raftflow(&all, &["wf", "send", "o-1", "pay", "--request-id", "pay-1"]).ok();
    raftflow(
        &all,
        &["wf", "send", "o-1", "pay", "--expect-revision", "1"],
    )
    .fails(4, "revision_mismatch");
    raftflow(&all, &["wf", "send", "o-1", "nonsense"]).fails(2, "invalid_transition");
    raftflow(&all, &["wf", "get", "missing"]).fails(3, "not_found");
    raftflow(&all, &["wf", "send", "o-1", "pay", "--payload", "[1]"])
        .fails(2, "--payload must be a JSON object");

    let run = raftflow(&all, &["wf", "get", "o-1", "-o", "json"]).ok();
    assert_eq!(run.json(), api_get(n1, "/v1/workflows/o-1").await);
    assert_eq!(run.json()["revision"], 2);
    let run = raftflow(&all, &["wf", "get", "o-1", "--local", "-o", "json"]).ok();
    assert_eq!(run.json()["id"], "o-1");
    let run = raftflow(&all, &["wf", "history", "o-1", "-o", "json"]).ok();
    assert_eq!(run.json(), api_get(n1, "/v1/workflows/o-1/history").await);
    let run = raftflow(&all, &["wf", "history", "o-1"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("REVISION  EVENT"), "{}", run.stdout);
    assert!(
        lines[2].contains("pay") && lines[2].contains("created  paid"),
        "{}",
        run.stdout
    );

    // Listing with filters and paging.
    for i in 2..=4 {
        raftflow(&all, &["wf", "start", "order", "--id", &format!("o-{i}")]).ok();
    }
    let run = raftflow(&all, &["wf", "list", "--state", "created", "-o", "json"]).ok();
    let mut sorted: Vec<String> = run.json()["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    sorted.sort();
    assert_eq!(sorted, ["o-2", "o-3", "o-4"]);
    let run = raftflow(&all, &["wf", "list", "--limit", "2", "-o", "json"]).ok();
    let page = run.json();
    assert_eq!(page["workflows"].as_array().unwrap().len(), 2);
    let token = page["next_page_token"]
        .as_str()
        .expect("a second page")
        .to_string();
    let run = raftflow(
        &all,
        &[
            "wf",
            "list",
            "--limit",
            "2",
            "--page-token",
            &token,
            "-o",
            "json",
        ],
    )
    .ok();
    assert_eq!(run.json()["workflows"].as_array().unwrap().len(), 2);
    let run = raftflow(&all, &["wf", "list", "--limit", "1", "--all", "-o", "json"]).ok();
    assert_eq!(run.json()["workflows"].as_array().unwrap().len(), 4);
    let run = raftflow(&all, &["wf", "list", "--limit", "2"]).ok();
    assert!(run.stdout.contains("more: --page-token"), "{}", run.stdout);

    // Tasks: o-1 is in `paid`, which opened task o-1:2.
    let run = raftflow(
        &all,
        &[
            "task",
            "poll",
            "--type",
            "ship",
            "--wait-ms",
            "2000",
            "-o",
            "json",
        ],
    )
    .ok();
    let tasks = run.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 1, "{}", run.stdout);
    assert_eq!(tasks[0]["id"], "o-1:2");
    let token = tasks[0]["lease_token"].to_string();
    let run = raftflow(&all, &["task", "get", "o-1:2"]).ok();
    assert!(run.stdout.contains("status:      leased"), "{}", run.stdout);
    raftflow(
        &all,
        &["task", "heartbeat", "o-1:2", "--lease-token", &token],
    )
    .ok();
    raftflow(
        &all,
        &["task", "heartbeat", "o-1:2", "--lease-token", "999"],
    )
    .fails(4, "lease_lost");
    let run = raftflow(
        &all,
        &[
            "task",
            "fail",
            "o-1:2",
            "--lease-token",
            &token,
            "--error",
            "carrier down",
            "-o",
            "json",
        ],
    )
    .ok();
    assert_eq!(run.json()["task"]["status"], "backoff");
    // Leased again after the backoff (1 s), then completed with an output.
    let run = raftflow(
        &all,
        &[
            "task",
            "poll",
            "--type",
            "ship",
            "--wait-ms",
            "5000",
            "-o",
            "json",
        ],
    )
    .ok();
    let token = run.json()["tasks"][0]["lease_token"].to_string();
    let run = raftflow(
        &all,
        &[
            "task",
            "complete",
            "o-1:2",
            r#"{"tracking": "T-1"}"#,
            "--lease-token",
            &token,
        ],
    )
    .ok();
    assert!(run.stdout.contains("o-1 is shipped"), "{}", run.stdout);
    let run = raftflow(&all, &["task", "poll", "--type", "ship"]).ok();
    assert_eq!(run.stdout.trim(), "no task ready");

    // --wait: ends succeeded (exit 0) or cancelled (exit 6), or runs out (exit 7).
    raftflow(
        &all,
        &["wf", "get", "o-2", "--wait", "--wait-timeout-s", "1"],
    )
    .fails(7, "still running");
    raftflow(&all, &["wf", "cancel", "o-2", "--reason", "test"]).ok();
    raftflow(&all, &["wf", "get", "o-2", "--wait"]).fails(6, "");
    raftflow(&all, &["wf", "cancel", "o-2"]).fails(2, "invalid_transition");
    raftflow(&all, &["wf", "send", "o-1", "deliver"]).ok();
    let run = raftflow(&all, &["wf", "get", "o-1", "--wait"]).ok();
    assert!(
        run.stdout.contains("status:     succeeded"),
        "{}",
        run.stdout
    );

    // The cluster.
    let run = raftflow(&all, &["cluster", "status", "-o", "json"]).ok();
    let view = run.json();
    assert_eq!(view["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(view["replication_factor"], 3);
    assert!(view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "active"));
    assert!(view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["learners"] == json!([])));
    assert_eq!(view["placement"]["moves"], json!([]));
    let run = raftflow(&all, &["cluster", "groups"]).ok();
    assert_eq!(
        run.stdout.lines().count(),
        4,
        "a header, the meta group and 2 data groups: {}",
        run.stdout
    );
    let run = raftflow(&all, &["cluster", "nodes"]).ok();
    assert!(run.stdout.contains(n1), "{}", run.stdout);
    let run = raftflow(&all, &["status"]).ok();
    assert!(run.stdout.contains("data groups led:"), "{}", run.stdout);
    let run = raftflow(&all, &["cluster", "digest", "1", "-o", "json"]).ok();
    assert_eq!(run.json()["group"], 1);
    let run = raftflow(&all, &["cluster", "health", "-o", "json"]).ok();
    assert_eq!(run.json()["nodes"].as_array().unwrap().len(), 3);
    assert!(run.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["ready"] == true));
    let run = raftflow(&all, &["cluster", "metrics"]).ok();
    assert!(
        run.stdout.contains("raftflow_proposals_total"),
        "{}",
        run.stdout
    );
    let run = raftflow(&all, &["cluster", "openapi"]).ok();
    assert!(run.json()["paths"]["/v1/workflows"].is_object());

    // Fail-over: the first address is down, the next answers; nothing answers: exit 5.
    let dead = format!(
        "127.0.0.1:{}",
        raftflow_cluster_tests::free_port("127.0.0.1")
    );
    let run = raftflow(&format!("{dead},{n1}"), &["wf", "get", "o-1", "-o", "json"]).ok();
    assert_eq!(run.json()["id"], "o-1");
    raftflow(
        &format!("{dead},{n1}"),
        &["wf", "start", "order", "--id", "o-5"],
    )
    .ok();
    raftflow(&dead, &["wf", "get", "o-1"]).fails(5, "no node answered");
    let run = raftflow(&format!("{dead},{n1}"), &["cluster", "health"]);
    assert_eq!(run.code, 5, "one address is not ready: {}", run.stdout);

    // Usage errors are clap's exit 2.
    raftflow(&all, &["wf", "send"]).fails(2, "Usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_over_when_a_node_is_killed() {
    let mut cluster = Cluster::start(3, 1, &[]);
    cluster.wait_ready(READY).await.unwrap();
    let all: Vec<String> = (1..=3).map(|i| cluster.node(i).client.clone()).collect();
    let all = all.join(",");
    let def = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(def.path(), order_definition().to_string()).unwrap();
    raftflow(&all, &["def", "apply", &def.path().to_string_lossy()]).ok();
    raftflow(&all, &["wf", "start", "order", "--id", "k-1"]).ok();
    cluster.kill9(1);
    // Node 1 is first in the list and gone: the others serve the same workflow, once the
    // survivors have a leader.
    let mut last = None;
    for _ in 0..50 {
        let run = raftflow(
            &all,
            &[
                "wf",
                "send",
                "k-1",
                "pay",
                "--request-id",
                "k-1-pay",
                "-o",
                "json",
            ],
        );
        if run.code == 0 {
            assert_eq!(run.json()["state"], "paid");
            last = None;
            break;
        }
        assert_eq!(run.code, 5, "only unavailable is expected: {}", run.stderr);
        last = Some(run.stderr);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_none(), "never served: {last:?}");
    let run = raftflow(&all, &["wf", "get", "k-1", "-o", "json"]).ok();
    assert_eq!(run.json()["revision"], 2);
}

#[test]
fn bash_completions_load_and_complete_subcommands() {
    let out = Command::new(binary())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let cword = words.len() - 1;
        let program = format!(
            "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT={}\n_raftflow raftflow '{}' '{}'\necho \"${{COMPREPLY[@]}}\"",
            script.path().display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            line.len(),
            words[cword],
            words[cword.saturating_sub(1)],
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let top = complete("raftflow wor");
    assert!(
        top.contains(&"workflow".to_string()) && top.contains(&"worker".to_string()),
        "{top:?}"
    );
    assert_eq!(complete("raftflow workflow hi"), ["history"]);
    let flags = complete("raftflow workflow send --");
    assert!(
        flags.contains(&"--expect-revision".to_string()),
        "{flags:?}"
    );
}

/// Output into a pipe whose reader has gone (`| head` that has read enough) ends the command
/// by SIGPIPE, as with other Unix tools, not with a panic about a broken pipe.
#[test]
fn output_into_a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary())
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
