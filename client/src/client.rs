//! A typed client for the HTTP API, for Rust programs, tests and the bench command.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::types::*;
use crate::ErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with the API's error shape.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
    /// No answer: connection refused, reset or timed out. A write may or may not have applied.
    #[error("transport: {0}")]
    Transport(String),
}

impl ClientError {
    /// Whether the same request may succeed later: no answer, 429 or 503.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, code, .. } => {
                code.is_transient() || matches!(status, 429 | 503)
            }
        }
    }

    /// The error a non-2xx answer with the API's error body stands for.
    pub fn from_response(status: u16, body: &[u8]) -> ClientError {
        let err: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let e = &err["error"];
        ClientError::Api {
            status,
            code: serde_json::from_value(e["code"].clone()).unwrap_or(ErrorCode::Unknown),
            message: e["message"].as_str().unwrap_or_default().to_string(),
            details: e.get("details").cloned(),
        }
    }

    /// The API's error code; `None` when there was no answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            ClientError::Transport(_) => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// A poll's timeout is its wait plus this much.
const POLL_MARGIN: Duration = Duration::from_secs(10);

/// A client of a cluster through one or more of its nodes (any node serves every request).
///
/// With several addresses it fails over: a request that cannot connect to one node goes to the
/// next, and later requests start from the node that answered. A read (GET) also moves on after
/// any other transport error; a write does not, since it may have been applied.
#[derive(Clone)]
pub struct Client {
    bases: Arc<Vec<String>>,
    /// Index into `bases` of the node to try first.
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    /// The API token sent as `Authorization: Bearer`, if any.
    token: Option<Arc<str>>,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
}

/// The HTTP client under a [`Client`] of `bases`: `roots` are trusted beside the system's CAs.
///
/// The system's CAs are read (a few milliseconds of file reads and parsing) only when a base
/// is `https://`: a program that builds many plain-HTTP clients does not pay for them each time.
fn http_client(
    bases: &[String],
    timeout: Duration,
    source: Option<std::net::IpAddr>,
    roots: &[reqwest::Certificate],
) -> reqwest::Result<reqwest::Client> {
    let https = bases.iter().any(|b| b.starts_with("https://"));
    let mut builder = reqwest::Client::builder()
        .tls_built_in_native_certs(https)
        .timeout(timeout)
        .pool_max_idle_per_host(64)
        // A node closes a kept-alive connection idle for its header timeout (10 s by
        // default): let ours go well before, so no request is sent on one as it closes.
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .local_address(source);
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build()
}

/// An error and what caused it, down the chain: a TLS failure says why (an unknown issuer,
/// a name the certificate does not hold) instead of only "error sending request".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// `host:port` or a URL, as a base URL without a trailing slash.
fn base_url(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// `addr` is `host:port` or a `http://` URL.
    pub fn new(addr: &str, timeout: Duration) -> Client {
        Client::with_source(addr, timeout, None)
    }

    /// Like [`Client::new`], sending from `source` when given.
    pub fn with_source(addr: &str, timeout: Duration, source: Option<std::net::IpAddr>) -> Client {
        Client::build(vec![base_url(addr)], timeout, source)
    }

    /// A client that fails over between `addrs` (each `host:port` or a URL), in that order.
    pub fn with_addrs<S: AsRef<str>>(addrs: &[S], timeout: Duration) -> Client {
        let bases: Vec<String> = addrs.iter().map(|a| base_url(a.as_ref())).collect();
        assert!(!bases.is_empty(), "a client needs at least one address");
        Client::build(bases, timeout, None)
    }

    fn build(bases: Vec<String>, timeout: Duration, source: Option<std::net::IpAddr>) -> Client {
        Client {
            http: http_client(&bases, timeout, source, &[]).expect("http client builds"),
            bases: Arc::new(bases),
            current: Arc::new(AtomicUsize::new(0)),
            token: None,
            timeout,
            source,
        }
    }

    /// This client, trusting the CA certificates of the PEM file `ca_pem` for `https://`
    /// addresses, beside the system's (a cluster whose client port has a certificate of the
    /// cluster's own CA: see `--client-cert` in docs/CONFIGURATION.md).
    pub fn with_ca(mut self, ca_pem: &[u8]) -> Result<Client, String> {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| format!("the CA file does not parse as PEM certificates: {e}"))?;
        if roots.is_empty() {
            return Err("the CA file holds no certificate".into());
        }
        self.http = http_client(&self.bases, self.timeout, self.source, &roots)
            .map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// This client, sending `token` as `Authorization: Bearer` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.map(Into::into);
        self
    }

    /// The base URL requests go to first (the node that answered last).
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> ClientResult<(u16, T)> {
        self.call_within(method, path, body, None).await
    }

    async fn call_within<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> ClientResult<(u16, T)> {
        let (status, bytes) = self.send(method, path, body, timeout).await?;
        if (200..300).contains(&status) {
            let v = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Transport(format!("bad response body: {e}")))?;
            return Ok((status, v));
        }
        Err(ClientError::from_response(status, &bytes))
    }

    /// Sends one request, failing over between the addresses; any status is an answer.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> ClientResult<(u16, bytes::Bytes)> {
        let first = self.current.load(Ordering::Relaxed);
        let idempotent = method == Method::GET;
        let mut last = None;
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.bases[at]));
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let answer = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    resp.bytes().await.map(|b| (status, b))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(answer) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) => {
                    let next = e.is_connect() || idempotent;
                    last = Some(ClientError::Transport(format!(
                        "{}: {}",
                        self.bases[at],
                        with_causes(&e)
                    )));
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(last.expect("at least one address was tried"))
    }

    /// Any request: the answer's status and JSON body for a 2xx, the API's error otherwise.
    /// What the CLI's `-o json` prints.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> ClientResult<(u16, Value)> {
        self.call_within(method, path, body, None).await
    }

    /// Like [`Client::request`] with its own timeout (a long poll).
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> ClientResult<(u16, Value)> {
        self.call_within(method, path, body, Some(timeout)).await
    }

    /// A GET whose answer is text (`/metrics`) or whose status is the answer (`/healthz`,
    /// `/readyz`): the status and the body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> ClientResult<(u16, String)> {
        let (status, bytes) = self.send::<()>(Method::GET, path, None, None).await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// PUT a definition; the status is 201 for a new version, 200 for an unchanged one.
    pub async fn put_definition(
        &self,
        name: &str,
        def: &Value,
    ) -> ClientResult<(u16, DefinitionStored)> {
        self.call(Method::PUT, &format!("/v1/definitions/{name}"), Some(def))
            .await
    }

    /// Starts a workflow; the status is 201 when created, 200 for an identical retry.
    pub async fn create_workflow(&self, req: &CreateWorkflow) -> ClientResult<(u16, WorkflowView)> {
        self.call(Method::POST, "/v1/workflows", Some(req)).await
    }

    pub async fn send_event(&self, id: &str, req: &SendEvent) -> ClientResult<WorkflowView> {
        self.call(
            Method::POST,
            &format!("/v1/workflows/{id}/events"),
            Some(req),
        )
        .await
        .map(|r| r.1)
    }

    pub async fn cancel(&self, id: &str, req: &CancelWorkflow) -> ClientResult<WorkflowView> {
        self.call(
            Method::POST,
            &format!("/v1/workflows/{id}/cancel"),
            Some(req),
        )
        .await
        .map(|r| r.1)
    }

    /// Reads a workflow, linearizably unless `local`.
    pub async fn get_workflow(&self, id: &str, local: bool) -> ClientResult<WorkflowView> {
        let q = if local { "?consistency=local" } else { "" };
        self.call::<(), _>(Method::GET, &format!("/v1/workflows/{id}{q}"), None)
            .await
            .map(|r| r.1)
    }

    pub async fn history(&self, id: &str) -> ClientResult<HistoryView> {
        self.call::<(), _>(Method::GET, &format!("/v1/workflows/{id}/history"), None)
            .await
            .map(|r| r.1)
    }

    /// Leases ready tasks, waiting up to `req.wait_ms` for one (the request's own timeout
    /// covers the wait).
    pub async fn poll_tasks(&self, req: &PollTasks) -> ClientResult<TaskList> {
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(0));
        self.call_within(
            Method::POST,
            "/v1/tasks/poll",
            Some(req),
            Some(wait + POLL_MARGIN),
        )
        .await
        .map(|r| r.1)
    }

    pub async fn complete_task(&self, id: &str, req: &CompleteTask) -> ClientResult<TaskOutcome> {
        self.call(Method::POST, &format!("/v1/tasks/{id}/complete"), Some(req))
            .await
            .map(|r| r.1)
    }

    pub async fn fail_task(&self, id: &str, req: &FailTask) -> ClientResult<TaskOutcome> {
        self.call(Method::POST, &format!("/v1/tasks/{id}/fail"), Some(req))
            .await
            .map(|r| r.1)
    }

    pub async fn heartbeat_task(
        &self,
        id: &str,
        req: &HeartbeatTask,
    ) -> ClientResult<LeaseExtended> {
        self.call(
            Method::POST,
            &format!("/v1/tasks/{id}/heartbeat"),
            Some(req),
        )
        .await
        .map(|r| r.1)
    }

    pub async fn get_task(&self, id: &str) -> ClientResult<TaskView> {
        self.call::<(), _>(Method::GET, &format!("/v1/tasks/{id}"), None)
            .await
            .map(|r| r.1)
    }

    pub async fn cluster(&self) -> ClientResult<ClusterView> {
        self.call::<(), _>(Method::GET, "/v1/cluster", None)
            .await
            .map(|r| r.1)
    }

    /// GET a path and decode its JSON body.
    pub async fn get_json(&self, path: &str) -> ClientResult<Value> {
        self.call::<(), Value>(Method::GET, path, None)
            .await
            .map(|r| r.1)
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        self.call::<(), Value>(Method::GET, "/readyz", None)
            .await
            .is_ok()
    }
}
