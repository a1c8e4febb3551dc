//! Each client command: one request (or a few), then the answer printed for people or as the
//! API's JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use raftflow_client::client::Method;
use raftflow_client::types::*;
use raftflow_client::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::output::{self, bold, dim, relative, short_json, status, table};
use super::{ClientCmd, ClusterCmd, DefinitionCmd, ExitCode, Global, Output, TaskCmd, WorkflowCmd};

/// How often `--wait` reads the workflow.
const WAIT_POLL: Duration = Duration::from_millis(300);

/// Why a command stopped: the API's error, or the CLI's own (a bad file, a bad JSON argument).
enum Failure {
    Api(ClientError),
    Local(ExitCode, String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Api(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Local(ExitCode::Usage, format!("{e:#}"))
    }
}

type Outcome = Result<ExitCode, Failure>;

/// Runs `cmd` and returns the process's exit status; errors go to stderr with their code.
pub async fn run(global: &Global, cmd: ClientCmd) -> i32 {
    let client = match global.client() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::Usage as i32;
        }
    };
    let cli = Cli {
        client,
        json: global.output == Output::Json,
    };
    let result = match cmd {
        ClientCmd::Definition(c) => cli.definition(c).await,
        ClientCmd::Workflow(c) => cli.workflow(c).await,
        ClientCmd::Task(c) => cli.task(c).await,
        ClientCmd::Cluster(c) => cli.cluster(c, global).await,
    };
    match result {
        Ok(code) => code as i32,
        Err(Failure::Api(e)) => {
            match &e {
                ClientError::Api {
                    status,
                    code,
                    message,
                    details,
                } => {
                    eprintln!("error: {message} ({code}, HTTP {status})");
                    if let Some(problems) = details
                        .as_ref()
                        .and_then(|d| d.get("problems"))
                        .and_then(Value::as_array)
                    {
                        for p in problems {
                            eprintln!("  - {}", p.as_str().unwrap_or_default());
                        }
                    }
                }
                ClientError::Transport(m) => eprintln!("error: no node answered: {m}"),
            }
            ExitCode::of(&e) as i32
        }
        Err(Failure::Local(code, message)) => {
            eprintln!("error: {message}");
            code as i32
        }
    }
}

struct Cli {
    client: Client,
    json: bool,
}

/// `@FILE` reads the file; anything else is the JSON itself. It must be an object.
fn json_object_arg(what: &str, arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => arg.to_string(),
    };
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))?;
    anyhow::ensure!(v.is_object(), "{what} must be a JSON object");
    Ok(v)
}

/// A definition file: YAML for `.yaml`/`.yml`, JSON otherwise; `-` reads stdin.
fn read_definition(file: &str) -> anyhow::Result<Value> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let yaml = file.ends_with(".yaml") || file.ends_with(".yml");
    let v: Value = if yaml {
        serde_yaml_ng::from_str(&text).with_context(|| format!("{file} is not valid YAML"))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{file} is not valid JSON"))?
    };
    anyhow::ensure!(v.is_object(), "{file}: a definition is an object");
    Ok(v)
}

/// A query string from the pairs whose value is present, percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::Local(
            ExitCode::Failed,
            format!("the node's answer has an unexpected shape: {e}"),
        )
    })
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

impl Cli {
    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.client.request(Method::GET, path, None).await?.1)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), Failure> {
        Ok(self.client.request(method, path, Some(body)).await?)
    }

    // ---- definitions ----

    async fn definition(&self, cmd: DefinitionCmd) -> Outcome {
        match cmd {
            DefinitionCmd::Apply { file, name } => {
                let mut def = read_definition(&file)?;
                let name = match (name, def.get("name").and_then(Value::as_str)) {
                    (Some(n), _) => n,
                    (None, Some(n)) => n.to_string(),
                    (None, None) => {
                        return Err(Failure::Local(
                            ExitCode::Usage,
                            format!("{file} has no \"name\": pass --name"),
                        ))
                    }
                };
                def["name"] = json!(name);
                let (code, v) = self
                    .send(
                        Method::PUT,
                        &format!("/v1/definitions/{}", encode(&name)),
                        &def,
                    )
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    let stored: DefinitionStored = decode(&v)?;
                    let what = if code == 201 {
                        "stored as a new version"
                    } else {
                        "unchanged"
                    };
                    println!(
                        "definition {} version {}: {what}",
                        bold(&stored.name),
                        stored.version
                    );
                }
            }
            DefinitionCmd::Get { name, version } => {
                let path = match version {
                    Some(v) => format!("/v1/definitions/{}/versions/{v}", encode(&name)),
                    None => format!("/v1/definitions/{}", encode(&name)),
                };
                let v = self.get(&path).await?;
                if self.json {
                    print_json(&v);
                } else {
                    print_definition(&decode(&v)?);
                }
            }
            DefinitionCmd::List => {
                let v = self.get("/v1/definitions").await?;
                if self.json {
                    print_json(&v);
                } else {
                    let list: DefinitionList = decode(&v)?;
                    let rows: Vec<Vec<String>> = list
                        .definitions
                        .iter()
                        .map(|d| vec![d.name.clone(), d.latest_version.to_string()])
                        .collect();
                    print!("{}", table(&["NAME", "LATEST VERSION"], &rows));
                }
            }
            DefinitionCmd::Versions { name, last } => {
                let latest: DefinitionView = decode(
                    &self
                        .get(&format!("/v1/definitions/{}", encode(&name)))
                        .await?,
                )?;
                let first = latest.version.saturating_sub(last.max(1) - 1).max(1);
                let mut versions = Vec::new();
                for version in first..=latest.version {
                    versions.push(
                        self.get(&format!(
                            "/v1/definitions/{}/versions/{version}",
                            encode(&name)
                        ))
                        .await?,
                    );
                }
                if self.json {
                    print_json(&json!({"name": name, "versions": versions}));
                } else {
                    let mut rows = Vec::new();
                    for v in &versions {
                        let d: DefinitionView = decode(v)?;
                        rows.push(vec![
                            d.version.to_string(),
                            relative(&d.created_at),
                            d.initial.clone(),
                            d.states
                                .as_object()
                                .map(|s| s.len())
                                .unwrap_or(0)
                                .to_string(),
                        ]);
                    }
                    print!(
                        "{}",
                        table(&["VERSION", "CREATED", "INITIAL", "STATES"], &rows)
                    );
                }
            }
        }
        Ok(ExitCode::Ok)
    }

    // ---- workflows ----

    async fn workflow(&self, cmd: WorkflowCmd) -> Outcome {
        match cmd {
            WorkflowCmd::Start {
                definition,
                id,
                version,
                context,
                wait,
                wait_timeout_s,
            } => {
                let mut body = json!({"definition": definition});
                if let Some(id) = id {
                    body["id"] = json!(id);
                }
                if let Some(v) = version {
                    body["version"] = json!(v);
                }
                if let Some(c) = context {
                    body["context"] = json_object_arg("--context", &c)?;
                }
                let (_, v) = self.send(Method::POST, "/v1/workflows", &body).await?;
                if wait {
                    let wf: WorkflowView = decode(&v)?;
                    return self.wait_for_end(&wf.id, wait_timeout_s).await;
                }
                self.print_workflow(&v)?;
            }
            WorkflowCmd::Get {
                id,
                local,
                wait,
                wait_timeout_s,
            } => {
                if wait {
                    return self.wait_for_end(&id, wait_timeout_s).await;
                }
                let q = if local { "?consistency=local" } else { "" };
                let v = self
                    .get(&format!("/v1/workflows/{}{q}", encode(&id)))
                    .await?;
                self.print_workflow(&v)?;
            }
            WorkflowCmd::List {
                definition,
                status,
                state,
                limit,
                page_token,
                all,
            } => {
                let mut token = page_token;
                let mut pages: Vec<Value> = Vec::new();
                loop {
                    let q = query(&[
                        ("definition", definition.clone()),
                        ("status", status.clone()),
                        ("state", state.clone()),
                        ("limit", limit.map(|l| l.to_string())),
                        ("page_token", token.clone()),
                    ]);
                    let page = self.get(&format!("/v1/workflows{q}")).await?;
                    token = page["next_page_token"].as_str().map(str::to_string);
                    pages.push(page);
                    if !all || token.is_none() {
                        break;
                    }
                }
                let workflows: Vec<Value> = pages
                    .iter()
                    .flat_map(|p| p["workflows"].as_array().cloned().unwrap_or_default())
                    .collect();
                if self.json {
                    print_json(&json!({"workflows": workflows, "next_page_token": token}));
                } else {
                    let mut rows = Vec::new();
                    for w in &workflows {
                        let w: WorkflowView = decode(w)?;
                        rows.push(vec![
                            w.id,
                            format!("{} v{}", w.definition, w.version),
                            w.state,
                            output::status(&w.status),
                            w.revision.to_string(),
                            relative(&w.updated_at),
                            w.group.to_string(),
                        ]);
                    }
                    print!(
                        "{}",
                        table(
                            &[
                                "ID",
                                "DEFINITION",
                                "STATE",
                                "STATUS",
                                "REVISION",
                                "UPDATED",
                                "GROUP"
                            ],
                            &rows
                        )
                    );
                    if let Some(t) = token {
                        println!("{}", dim(&format!("more: --page-token {t}  (or --all)")));
                    }
                }
            }
            WorkflowCmd::Send {
                id,
                event,
                payload,
                expect_revision,
                request_id,
            } => {
                let mut body = json!({"event": event});
                if let Some(p) = payload {
                    body["payload"] = json_object_arg("--payload", &p)?;
                }
                if let Some(r) = expect_revision {
                    body["expected_revision"] = json!(r);
                }
                if let Some(r) = request_id {
                    body["request_id"] = json!(r);
                }
                let (_, v) = self
                    .send(
                        Method::POST,
                        &format!("/v1/workflows/{}/events", encode(&id)),
                        &body,
                    )
                    .await?;
                self.print_workflow(&v)?;
            }
            WorkflowCmd::Cancel {
                id,
                reason,
                request_id,
            } => {
                let mut body = json!({});
                if let Some(r) = reason {
                    body["reason"] = json!(r);
                }
                if let Some(r) = request_id {
                    body["request_id"] = json!(r);
                }
                let (_, v) = self
                    .send(
                        Method::POST,
                        &format!("/v1/workflows/{}/cancel", encode(&id)),
                        &body,
                    )
                    .await?;
                self.print_workflow(&v)?;
            }
            WorkflowCmd::History { id } => {
                let v = self
                    .get(&format!("/v1/workflows/{}/history", encode(&id)))
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    let h: HistoryView = decode(&v)?;
                    let rows: Vec<Vec<String>> = h
                        .events
                        .iter()
                        .map(|e| {
                            vec![
                                e.revision.to_string(),
                                e.event.clone(),
                                e.from.clone().unwrap_or_else(|| "-".into()),
                                e.to.clone(),
                                relative(&e.at),
                                e.by.clone().unwrap_or_else(|| "-".into()),
                                e.payload
                                    .as_ref()
                                    .map(|p| short_json(p, 60))
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(
                            &["REVISION", "EVENT", "FROM", "TO", "AT", "BY", "PAYLOAD"],
                            &rows
                        )
                    );
                }
            }
        }
        Ok(ExitCode::Ok)
    }

    fn print_workflow(&self, v: &Value) -> Result<(), Failure> {
        if self.json {
            print_json(v);
            return Ok(());
        }
        let w: WorkflowView = decode(v)?;
        let rows = [
            ("id", bold(&w.id)),
            (
                "definition",
                format!("{} (version {})", w.definition, w.version),
            ),
            ("state", w.state.clone()),
            ("status", status(&w.status)),
            ("revision", w.revision.to_string()),
            ("group", w.group.to_string()),
            (
                "created",
                format!("{} ({})", w.created_at, relative(&w.created_at)),
            ),
            (
                "updated",
                format!("{} ({})", w.updated_at, relative(&w.updated_at)),
            ),
        ];
        for (k, v) in rows {
            println!("{:<11} {v}", format!("{k}:"));
        }
        println!(
            "context:    {}",
            serde_json::to_string_pretty(&w.context)
                .unwrap_or_default()
                .replace('\n', "\n            ")
        );
        Ok(())
    }

    /// Reads the workflow until it ends, redrawing one progress line on a terminal.
    async fn wait_for_end(&self, id: &str, timeout_s: u64) -> Outcome {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(timeout_s);
        let progress = output::progress_on();
        loop {
            let v = self.get(&format!("/v1/workflows/{}", encode(id))).await?;
            let w: WorkflowView = decode(&v)?;
            if w.status != "running" {
                if progress {
                    eprint!("\r\x1b[2K");
                }
                self.print_workflow(&v)?;
                return Ok(if w.status == "succeeded" {
                    ExitCode::Ok
                } else {
                    ExitCode::EndedUnsuccessfully
                });
            }
            if progress {
                eprint!(
                    "\r\x1b[2Kwaiting for {id} to end: {} (revision {}), {}s",
                    w.state,
                    w.revision,
                    start.elapsed().as_secs()
                );
                let _ = std::io::stderr().flush();
            }
            if Instant::now() >= deadline {
                if progress {
                    eprintln!();
                }
                return Err(Failure::Local(
                    ExitCode::WaitTimedOut,
                    format!(
                        "{id} is still running ({}, revision {}) after {timeout_s} s",
                        w.state, w.revision
                    ),
                ));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    // ---- tasks ----

    async fn task(&self, cmd: TaskCmd) -> Outcome {
        match cmd {
            TaskCmd::Poll {
                types,
                worker,
                max,
                wait_ms,
                lease_ms,
            } => {
                let mut body = json!({"types": types, "worker": worker});
                if let Some(m) = max {
                    body["max"] = json!(m);
                }
                if let Some(w) = wait_ms {
                    body["wait_ms"] = json!(w);
                }
                if let Some(l) = lease_ms {
                    body["lease_ms"] = json!(l);
                }
                let timeout = Duration::from_millis(wait_ms.unwrap_or(0)) + Duration::from_secs(10);
                let (_, v) = self
                    .client
                    .request_within(Method::POST, "/v1/tasks/poll", Some(&body), timeout)
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    let list: TaskList = decode(&v)?;
                    if list.tasks.is_empty() {
                        println!("no task ready");
                    }
                    let rows: Vec<Vec<String>> = list
                        .tasks
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.task_type.clone(),
                                t.attempt.to_string(),
                                t.lease_token.to_string(),
                                relative(&t.lease_expires_at),
                                short_json(&t.context, 50),
                            ]
                        })
                        .collect();
                    if !rows.is_empty() {
                        print!(
                            "{}",
                            table(
                                &[
                                    "TASK",
                                    "TYPE",
                                    "ATTEMPT",
                                    "LEASE TOKEN",
                                    "LEASE ENDS",
                                    "CONTEXT"
                                ],
                                &rows
                            )
                        );
                    }
                }
            }
            TaskCmd::Get { id } => {
                let v = self.get(&format!("/v1/tasks/{}", encode(&id))).await?;
                self.print_task(&v)?;
            }
            TaskCmd::Complete {
                id,
                result,
                lease_token,
            } => {
                let mut body = json!({"lease_token": lease_token});
                if let Some(o) = result {
                    body["output"] = json_object_arg("the output", &o)?;
                }
                let (_, v) = self
                    .send(
                        Method::POST,
                        &format!("/v1/tasks/{}/complete", encode(&id)),
                        &body,
                    )
                    .await?;
                self.print_task_outcome(&v)?;
            }
            TaskCmd::Fail {
                id,
                lease_token,
                error,
                no_retry,
            } => {
                let body =
                    json!({"lease_token": lease_token, "error": error, "retryable": !no_retry});
                let (_, v) = self
                    .send(
                        Method::POST,
                        &format!("/v1/tasks/{}/fail", encode(&id)),
                        &body,
                    )
                    .await?;
                self.print_task_outcome(&v)?;
            }
            TaskCmd::Heartbeat {
                id,
                lease_token,
                lease_ms,
            } => {
                let mut body = json!({"lease_token": lease_token});
                if let Some(l) = lease_ms {
                    body["lease_ms"] = json!(l);
                }
                let (_, v) = self
                    .send(
                        Method::POST,
                        &format!("/v1/tasks/{}/heartbeat", encode(&id)),
                        &body,
                    )
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    let l: LeaseExtended = decode(&v)?;
                    println!(
                        "task {} lease {} now ends {} ({})",
                        l.id,
                        l.lease_token,
                        l.lease_expires_at,
                        relative(&l.lease_expires_at)
                    );
                }
            }
        }
        Ok(ExitCode::Ok)
    }

    fn print_task(&self, v: &Value) -> Result<(), Failure> {
        if self.json {
            print_json(v);
            return Ok(());
        }
        let t: TaskView = decode(v)?;
        let mut rows = vec![
            ("task", bold(&t.id)),
            ("workflow", t.workflow_id.clone()),
            ("type", t.task_type.clone()),
            ("status", status(&t.status)),
            ("attempt", format!("{} of {}", t.attempt, t.max_attempts)),
            ("lease token", t.lease_token.to_string()),
        ];
        if let Some(w) = &t.worker {
            rows.push(("worker", w.clone()));
        }
        if let Some(at) = &t.lease_expires_at {
            rows.push(("lease ends", format!("{at} ({})", relative(at))));
        }
        if let Some(at) = &t.retry_at {
            rows.push(("retry at", format!("{at} ({})", relative(at))));
        }
        if let Some(e) = &t.last_error {
            rows.push(("last error", e.clone()));
        }
        for (k, v) in rows {
            println!("{:<12} {v}", format!("{k}:"));
        }
        Ok(())
    }

    fn print_task_outcome(&self, v: &Value) -> Result<(), Failure> {
        if self.json {
            print_json(v);
            return Ok(());
        }
        self.print_task(&v["task"])?;
        let w: WorkflowView = decode(&v["workflow"])?;
        println!(
            "{:<12} {} is {} ({}, revision {})",
            "workflow:",
            w.id,
            w.state,
            status(&w.status),
            w.revision
        );
        Ok(())
    }

    // ---- cluster ----

    async fn cluster(&self, cmd: ClusterCmd, global: &Global) -> Outcome {
        match cmd {
            ClusterCmd::Status | ClusterCmd::Nodes | ClusterCmd::Groups => {
                let v = self.get("/v1/cluster").await?;
                if self.json {
                    print_json(&v);
                    return Ok(ExitCode::Ok);
                }
                let c: ClusterView = decode(&v)?;
                match cmd {
                    ClusterCmd::Nodes => print!("{}", nodes_table(&c)),
                    ClusterCmd::Groups => print!("{}", groups_table(&c)),
                    _ => {
                        println!(
                            "{}",
                            dim(&format!(
                                "as seen by node {}; replication factor {}",
                                c.node_id, c.replication_factor
                            ))
                        );
                        print!("{}", nodes_table(&c));
                        println!();
                        print!("{}", groups_table(&c));
                        let mut led = std::collections::BTreeMap::<u64, usize>::new();
                        for g in c.groups.iter().filter(|g| g.kind == "data") {
                            if let Some(l) = g.leader {
                                *led.entry(l).or_default() += 1;
                            }
                        }
                        let led: Vec<String> =
                            led.iter().map(|(n, k)| format!("node {n}: {k}")).collect();
                        println!("\ndata groups led: {}", led.join(", "));
                    }
                }
            }
            ClusterCmd::Digest { group } => {
                let v = self
                    .get(&format!("/v1/cluster/groups/{group}/digest"))
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    println!(
                        "group {group} at {}: applied index {}, digest {}",
                        self.client.base(),
                        v["applied"],
                        v["digest"].as_str().unwrap_or("?")
                    );
                }
            }
            ClusterCmd::Health => {
                let mut rows = Vec::new();
                let mut out = Vec::new();
                let mut worst = ExitCode::Ok;
                for addr in &global.addr {
                    let one = global
                        .access
                        .apply(Client::new(addr, Duration::from_secs(3)))
                        .map_err(|e| Failure::Local(ExitCode::Usage, format!("{e:#}")))?;
                    let live = one
                        .get_text("/healthz")
                        .await
                        .map(|r| r.0 == 200)
                        .unwrap_or(false);
                    let ready = one
                        .get_text("/readyz")
                        .await
                        .map(|r| r.0 == 200)
                        .unwrap_or(false);
                    if !ready {
                        worst = ExitCode::Unavailable;
                    }
                    out.push(json!({"addr": addr, "live": live, "ready": ready}));
                    let yes_no = |b: bool| status(if b { "yes" } else { "no" });
                    rows.push(vec![addr.clone(), yes_no(live), yes_no(ready)]);
                }
                if self.json {
                    print_json(&json!({ "nodes": out }));
                } else {
                    print!("{}", table(&["ADDRESS", "LIVE", "READY"], &rows));
                }
                return Ok(worst);
            }
            ClusterCmd::Metrics => {
                let (code, text) = self.client.get_text("/metrics").await?;
                if code != 200 {
                    return Err(ClientError::from_response(code, text.as_bytes()).into());
                }
                print!("{text}");
            }
            ClusterCmd::Openapi => {
                let v = self.get("/openapi.json").await?;
                print_json(&v);
            }
            ClusterCmd::AddNode {
                id,
                client_addr,
                peer_addr,
            } => {
                let body = serde_json::json!({
                    "id": id, "client_addr": client_addr, "peer_addr": peer_addr,
                });
                let (code, v) = self.send(Method::POST, "/v1/cluster/nodes", &body).await?;
                if self.json {
                    print_json(&v);
                } else {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("?");
                    let what = if code == 201 {
                        "registered"
                    } else {
                        "already registered"
                    };
                    println!("node {id} {what}: {state}");
                }
            }
            ClusterCmd::RemoveNode { id, force } => {
                let query = if force { "?force=true" } else { "" };
                let path = format!("/v1/cluster/nodes/{id}{query}");
                let (_, v) = self.client.request(Method::DELETE, &path, None).await?;
                if self.json {
                    print_json(&v);
                } else {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("?");
                    println!("node {id}: {state} (its replicas move first; watch raftflow cluster nodes)");
                }
            }
            ClusterCmd::AddGroup => {
                let body = serde_json::json!({});
                let (_, v) = self
                    .client
                    .request(Method::POST, "/v1/cluster/groups", Some(&body))
                    .await?;
                if self.json {
                    print_json(&v);
                } else {
                    let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                    println!("group {id} added (slots move to it; watch raftflow cluster groups)");
                }
            }
            ClusterCmd::RetireGroup { id } => {
                let path = format!("/v1/cluster/groups/{id}");
                let (_, v) = self.client.request(Method::DELETE, &path, None).await?;
                if self.json {
                    print_json(&v);
                } else {
                    let state = v.get("state").and_then(Value::as_str).unwrap_or("?");
                    println!(
                        "group {id}: {state} (its slots move first; watch raftflow cluster groups)"
                    );
                }
            }
        }
        Ok(ExitCode::Ok)
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn nodes_table(c: &ClusterView) -> String {
    let rows: Vec<Vec<String>> = c
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.client_addr.clone(),
                n.peer_addr.clone(),
                output::status(&n.state),
                if n.reachable {
                    "yes".into()
                } else {
                    status("UNREACHABLE")
                },
            ]
        })
        .collect();
    table(&["NODE", "CLIENT", "PEER", "STATE", "REACHABLE"], &rows)
}

fn groups_table(c: &ClusterView) -> String {
    let rows: Vec<Vec<String>> = c
        .groups
        .iter()
        .map(|g| {
            let slots = c.placement.slots_per_group[g.id.to_string()]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into());
            let ids = |v: &[u64]| {
                let s: Vec<String> = v.iter().map(u64::to_string).collect();
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.join(",")
                }
            };
            let kind = match g.state.as_deref() {
                Some(state) if state != "serving" => format!("{} ({state})", g.kind),
                _ => g.kind.clone(),
            };
            vec![
                g.id.to_string(),
                kind,
                opt(g.leader),
                // A node without a replica of the group knows no term of it.
                if g.role == "none" {
                    "-".into()
                } else {
                    g.term.to_string()
                },
                ids(&g.voters),
                ids(&g.learners),
                opt(g.last_applied),
                slots,
            ]
        })
        .collect();
    table(
        &[
            "GROUP", "KIND", "LEADER", "TERM", "VOTERS", "LEARNERS", "APPLIED", "SLOTS",
        ],
        &rows,
    )
}

/// A definition's states as a table: what each does and where its events lead.
fn print_definition(d: &DefinitionView) {
    println!(
        "{} version {}, created {} ({})",
        bold(&d.name),
        d.version,
        d.created_at,
        relative(&d.created_at)
    );
    println!("initial state: {}", d.initial);
    let mut rows = Vec::new();
    if let Some(states) = d.states.as_object() {
        for (name, s) in states {
            let mut kind = Vec::new();
            if let Some(t) = s.get("task") {
                kind.push(format!("task {}", t["type"].as_str().unwrap_or("?")));
            }
            if let Some(ms) = s.get("timer_ms") {
                kind.push(format!("timer {ms} ms"));
            }
            if let Some(t) = s.get("terminal").and_then(Value::as_str) {
                kind.push(format!("terminal: {t}"));
            }
            let events: Vec<String> = s
                .get("on")
                .and_then(Value::as_object)
                .map(|on| {
                    on.iter()
                        .map(|(e, to)| format!("{e} → {}", to.as_str().unwrap_or("?")))
                        .collect()
                })
                .unwrap_or_default();
            rows.push(vec![name.clone(), kind.join(", "), events.join(", ")]);
        }
    }
    print!("{}", table(&["STATE", "KIND", "EVENTS"], &rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_encode_values_and_skip_absent_ones() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("state", Some("a b&c".into())),
                ("x", None),
                ("limit", Some("5".into()))
            ]),
            "?state=a%20b%26c&limit=5"
        );
    }

    #[test]
    fn json_arguments_must_be_objects() {
        assert!(json_object_arg("--payload", r#"{"a": 1}"#).is_ok());
        let err = json_object_arg("--payload", "[1]").unwrap_err().to_string();
        assert!(err.contains("must be a JSON object"), "{err}");
        let err = json_object_arg("--payload", "{").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn api_errors_map_to_exit_codes() {
        let api = |status, code| ClientError::Api {
            status,
            code,
            message: String::new(),
            details: None,
        };
        use raftflow_client::ErrorCode as C;
        assert_eq!(ExitCode::of(&api(404, C::NotFound)), ExitCode::NotFound);
        assert_eq!(
            ExitCode::of(&api(409, C::WorkflowExists)),
            ExitCode::Conflict
        );
        assert_eq!(
            ExitCode::of(&api(422, C::InvalidTransition)),
            ExitCode::Usage
        );
        assert_eq!(
            ExitCode::of(&api(503, C::Unavailable)),
            ExitCode::Unavailable
        );
        assert_eq!(
            ExitCode::of(&ClientError::Transport("refused".into())),
            ExitCode::Unavailable
        );
        assert_eq!(ExitCode::of(&api(500, C::Internal)), ExitCode::Failed);
    }
}
