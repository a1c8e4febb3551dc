//! The HTTP API of `docs/API.md`: axum routes, forwarding to group leaders, errors, metrics and
//! the OpenAPI document. The request and response types, the typed client and the worker loop
//! are in `raftflow-client`, which the server shares with its clients.
//!
//! Any node answers any request. A handler maps the request to its Raft group, serves it if
//! this node leads the group, and otherwise forwards it once to the leader's client address.

pub mod auth;
mod console;
mod error;
mod extract;
mod handlers;
mod metrics;
pub mod serve;
mod tasks;
mod views;

pub use raftflow_client::types;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use utoipa::OpenApi;

use raftflow_raft::RaftNode;

pub use error::{ApiError, RETRY_AFTER_SECS};

/// A peer that does not accept a health probe's connection this fast is unreachable.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a write or read barrier may wait for its group before answering 503.
    pub write_timeout: Duration,
    /// Requests served at once; more are shed with 429 `overloaded`.
    pub max_inflight_requests: usize,
    /// How long a request's body may take to arrive before a 408 `request_timeout`.
    pub body_timeout: Duration,
    /// Health probes of peers (`/v1/cluster`) leave from this address (fault tests cut links
    /// between node IPs).
    pub source_ip: Option<std::net::IpAddr>,
    /// Log every request with its caller (`--access-log`).
    pub access_log: bool,
    /// The cluster's client ports speak HTTPS (`--client-cert`): peers are probed over it.
    pub client_tls: bool,
    /// CA certificates (PEM) trusted beside the system's when probing peers over HTTPS.
    pub trusted_ca_pem: Option<Vec<u8>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1 << 20,
            write_timeout: Duration::from_secs(5),
            max_inflight_requests: 4096,
            body_timeout: Duration::from_secs(10),
            source_ip: None,
            access_log: false,
            client_tls: false,
            trusted_ca_pem: None,
        }
    }
}

/// What every handler shares. Axum clones the state for each extractor and middleware of
/// every request, so it is one `Arc`: one reference count to touch, not one per field, each a
/// cache line the two cores would pass back and forth.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub node: Arc<RaftNode>,
    pub config: ApiConfig,
    /// Who may call what; open when the node has no token file.
    pub auth: auth::Auth,
    http: reqwest::Client,
    metrics: metrics::HttpMetrics,
    inflight: tokio::sync::Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(node: Arc<RaftNode>, config: ApiConfig) -> Self {
        AppState::with_auth(node, config, auth::Auth::open())
    }

    /// A state whose `/v1` routes need the tokens of `auth`.
    pub fn with_auth(node: Arc<RaftNode>, config: ApiConfig, auth: auth::Auth) -> Self {
        let mut http = reqwest::Client::builder()
            .local_address(config.source_ip)
            .connect_timeout(PROBE_CONNECT_TIMEOUT);
        let roots = config
            .trusted_ca_pem
            .as_deref()
            .map(reqwest::Certificate::from_pem_bundle);
        for root in roots.into_iter().flatten().flatten() {
            http = http.add_root_certificate(root);
        }
        let http = http.build().expect("http client builds");
        AppState(Arc::new(Shared {
            node,
            inflight: tokio::sync::Semaphore::new(config.max_inflight_requests),
            config,
            auth,
            http,
            metrics: Default::default(),
        }))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "raftflow",
        description = "A durable workflow engine on Raft. Errors are `{\"error\": {\"code\", \"message\", \"details\"}}` with a stable code."
    ),
    paths(
        handlers::put_definition,
        handlers::get_definition,
        handlers::get_definition_version,
        handlers::list_definitions,
        handlers::create_workflow,
        handlers::get_workflow,
        handlers::send_event,
        handlers::cancel_workflow,
        handlers::get_history,
        handlers::list_workflows,
        tasks::poll_tasks,
        tasks::complete_task,
        tasks::fail_task,
        tasks::heartbeat_task,
        tasks::get_task,
        handlers::cluster,
        handlers::register_node,
        handlers::remove_node,
        handlers::add_group,
        handlers::retire_group,
        handlers::group_digest,
        handlers::healthz,
        handlers::readyz,
        prometheus,
        openapi,
        console::index,
    ),
    components(schemas(
        types::CreateWorkflow,
        types::SendEvent,
        types::CancelWorkflow,
        types::WorkflowView,
        types::HistoryEvent,
        types::HistoryView,
        types::WorkflowList,
        types::DefinitionStored,
        types::DefinitionSummary,
        types::DefinitionList,
        types::DefinitionView,
        types::ErrorBody,
        types::ErrorDetail,
        types::ClusterView,
        types::NodeView,
        types::RegisterNode,
        types::ClusterNode,
        types::GroupView,
        types::PlacementView,
        types::PollTasks,
        types::TaskLease,
        types::TaskList,
        types::CompleteTask,
        types::FailTask,
        types::HeartbeatTask,
        types::TaskView,
        types::TaskOutcome,
        types::LeaseExtended,
    )),
    modifiers(&CommonAnswers)
)]
pub struct ApiDoc;

/// Every `/v1` operation takes a bearer token (when the node has a token file), and may answer,
/// besides its own results: 401 and 403 for the token, 400 for a malformed request, 413 for a
/// body over the limit, the transient 429 and 503 that any call can meet, and for a write the
/// 507 of a full disk.
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{RefOr, ResponseBuilder, SecurityRequirement};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1") {
                continue;
            }
            let operations = [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (true, &mut item.patch),
            ];
            for (writes, op) in operations {
                let Some(op) = op else { continue };
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let mut answers = vec![
                    ("400", "a malformed request (`bad_request`)"),
                    ("401", "no token, or an unknown one (`unauthenticated`)"),
                    (
                        "403",
                        "the token's role may not call this route (`forbidden`)",
                    ),
                    (
                        "429",
                        "too many requests in flight (`overloaded`): retry later",
                    ),
                    (
                        "503",
                        "no leader or no quorum at the moment (`unavailable`): retry later",
                    ),
                ];
                if op.request_body.is_some() {
                    answers.push(("413", "the body is over the limit (`payload_too_large`)"));
                }
                if writes {
                    answers.push(("507", "a node's disk is full (`storage_full`)"));
                }
                for (status, what) in answers {
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(what)
                                    .content(
                                        "application/json",
                                        utoipa::openapi::ContentBuilder::new()
                                            .schema(Some(utoipa::openapi::Ref::from_schema_name(
                                                "ErrorBody",
                                            )))
                                            .build(),
                                    )
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// `(METHOD, path)` of every route in the OpenAPI document.
pub fn openapi_routes() -> std::collections::BTreeSet<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut routes = std::collections::BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let item = serde_json::to_value(item).unwrap_or_default();
        for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "the OpenAPI 3 document")))]
async fn openapi() -> Response {
    handlers::text_response(
        "application/json",
        ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()),
    )
}

/// Counters and gauges in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
async fn prometheus(State(state): State<AppState>) -> Response {
    handlers::text_response("text/plain; version=0.0.4", metrics::render(&state))
}

impl AppState {
    /// Requests holding one of the `max_inflight_requests` slots now.
    pub fn inflight_requests(&self) -> usize {
        self.config
            .max_inflight_requests
            .saturating_sub(self.inflight.available_permits())
    }
}

/// Sheds requests beyond `max_inflight_requests` with 429, so an overloaded node answers
/// quickly instead of queueing without bound. Health, readiness and metrics are never shed.
async fn shed_load(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    match state.inflight.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::overloaded(state.config.max_inflight_requests).into_response(),
    }
}

/// The API's router over `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/definitions", get(handlers::list_definitions))
        .route(
            "/v1/definitions/{name}",
            put(handlers::put_definition).get(handlers::get_definition),
        )
        .route(
            "/v1/definitions/{name}/versions/{version}",
            get(handlers::get_definition_version),
        )
        .route(
            "/v1/workflows",
            post(handlers::create_workflow).get(handlers::list_workflows),
        )
        .route("/v1/workflows/{id}", get(handlers::get_workflow))
        .route("/v1/workflows/{id}/events", post(handlers::send_event))
        .route("/v1/workflows/{id}/cancel", post(handlers::cancel_workflow))
        .route("/v1/workflows/{id}/history", get(handlers::get_history))
        .route("/v1/tasks/poll", post(tasks::poll_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/complete", post(tasks::complete_task))
        .route("/v1/tasks/{id}/fail", post(tasks::fail_task))
        .route("/v1/tasks/{id}/heartbeat", post(tasks::heartbeat_task))
        .route("/v1/cluster", get(handlers::cluster))
        .route("/v1/cluster/nodes", post(handlers::register_node))
        .route("/v1/cluster/nodes/{id}", delete(handlers::remove_node))
        .route("/v1/cluster/groups", post(handlers::add_group))
        .route("/v1/cluster/groups/{id}", delete(handlers::retire_group))
        .route(
            "/v1/cluster/groups/{id}/digest",
            get(handlers::group_digest),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(console::redirect))
        .route("/ui/", get(console::index))
        .route("/ui/{file}", get(console::asset))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            shed_load,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
