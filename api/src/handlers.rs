//! Route handlers. Each finds the group that owns the request and hands the work to the
//! node: a write is committed by the group's leader (this node, or over the peer connection),
//! a linearizable read is served from this node's replica once it has applied the leader's
//! read index.

use std::time::Duration;

use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use raftflow_raft::{
    tables, Answer, Command, DefinitionVersion, NodeAddr, Outcome, Query, META_GROUP,
};
use raftflow_workflow::{is_valid_id, is_valid_name, Definition, Status};

use crate::auth::CallerName;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::types::*;
use crate::{views, AppState};
use raftflow_raft::rfc3339;

/// Most history rows one read returns.
const MAX_HISTORY_ROWS: usize = 100_000;
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;
/// A list page scans at most this many rows per requested row, so a filter that matches
/// little still answers quickly (with a page token to go on).
const LIST_SCAN_FACTOR: usize = 10;
/// How long a create waits for this node's replica of the meta group to show a definition.
const DEFINITION_WAIT: Duration = Duration::from_millis(1000);

/// Commits `command` on the leader of `group` (wherever it is) within the write timeout.
pub(crate) async fn propose(state: &AppState, group: u64, command: Command) -> ApiResult<Outcome> {
    match tokio::time::timeout(
        state.config.write_timeout,
        state
            .node
            .commit(group, command, state.config.write_timeout),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "group {group} did not commit the write within {} ms; it may still apply",
            state.config.write_timeout.as_millis()
        ))),
    }
}

/// Commits a command on workflow `workflow` in the group that owns it (following the slot if
/// it moves): the group and the outcome.
pub(crate) async fn propose_for(
    state: &AppState,
    workflow: &str,
    command: Command,
) -> ApiResult<(u64, Outcome)> {
    let timeout = state.config.write_timeout;
    match tokio::time::timeout(timeout, state.node.commit_for(workflow, command, timeout)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "the write to workflow {workflow:?} did not commit within {} ms; it may still apply",
            timeout.as_millis()
        ))),
    }
}

/// Reads workflow `workflow`'s rows in the group that owns it (following the slot if it
/// moves): the group and the answer.
pub(crate) async fn query_for(
    state: &AppState,
    workflow: &str,
    params: &ReadParams,
    query: Query,
) -> ApiResult<(u64, Answer)> {
    let linearizable = !(params.local()? || stale_mutant());
    let timeout = state.config.write_timeout;
    match tokio::time::timeout(
        timeout,
        state.node.query_for(workflow, query, linearizable, timeout),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "the group of workflow {workflow:?} has no quorum right now"
        ))),
    }
}

/// Waits until a following read of this node's replica of `group` is linearizable.
pub(crate) async fn read_barrier(state: &AppState, group: u64) -> ApiResult<()> {
    let timeout = state.config.write_timeout;
    match tokio::time::timeout(timeout, state.node.linearize(group, timeout)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "group {group} has no quorum right now"
        ))),
    }
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

/// A response whose body is JSON text already written.
pub(crate) fn json_text_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub(crate) fn check_id(id: &str) -> ApiResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "workflow id {id:?} must match [A-Za-z0-9_.:-]{{1,128}}"
        )))
    }
}

pub(crate) fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {name:?} must match [A-Za-z0-9_.-]{{1,64}}"
        )))
    }
}

fn check_request_id(request_id: &Option<String>) -> ApiResult<()> {
    match request_id {
        Some(r) if !is_valid_id(r) => Err(ApiError::bad_request(format!(
            "request_id {r:?} must match [A-Za-z0-9_.:-]{{1,128}}"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn object_text(what: &str, v: Option<Value>) -> ApiResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.to_string())),
        Some(_) => Err(ApiError::bad_request(format!(
            "{what} must be a JSON object"
        ))),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// `linearizable` (default) or `local`.
    pub consistency: Option<String>,
}

impl ReadParams {
    fn local(&self) -> ApiResult<bool> {
        parse_consistency(self.consistency.as_deref())
    }
}

/// Whether a read asked to skip the read index (`consistency=local`).
fn parse_consistency(consistency: Option<&str>) -> ApiResult<bool> {
    match consistency {
        None | Some("linearizable") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be `linearizable` or `local`, not {other:?}"
        ))),
    }
}

/// The failure suite's stale-read mutant skips every read index.
fn stale_mutant() -> bool {
    raftflow_raft::mutant::active() == raftflow_raft::mutant::Mutant::StaleRead
}

/// Serves a read of the meta group (every node holds a copy) from this node's replica:
/// directly (`local`), or once the replica has applied the leader's read index.
pub(crate) async fn read_meta<F>(
    state: &AppState,
    params: &ReadParams,
    read: F,
) -> ApiResult<Response>
where
    F: FnOnce() -> ApiResult<Response>,
{
    if !(params.local()? || stale_mutant()) {
        read_barrier(state, META_GROUP).await?;
    }
    read()
}

pub(crate) async fn query_group(
    state: &AppState,
    group: u64,
    query: Query,
    linearizable: bool,
) -> ApiResult<Answer> {
    let timeout = state.config.write_timeout;
    match tokio::time::timeout(
        timeout,
        state.node.query(group, query, linearizable, timeout),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "group {group} has no quorum right now"
        ))),
    }
}

// ---- definitions ---------------------------------------------------------------------------

/// Store a definition as a new version (201), or return the latest version when the content
/// equals it (200).
#[utoipa::path(put, path = "/v1/definitions/{name}", request_body = Object,
    params(("name" = String, Path, description = "definition name")),
    responses((status = 201, body = DefinitionStored), (status = 200, body = DefinitionStored),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_definition(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<Value>,
) -> ApiResult<Response> {
    check_name("definition name", &name)?;
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a definition must be a JSON object"))?;
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(name.clone()));
        }
        Some(Value::String(n)) if *n == name => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "body name {other} differs from the path name {name:?}"
            )))
        }
    }
    let def: Definition = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid definition: {e}")))?;
    let problems = def.problems();
    if !problems.is_empty() {
        return Err(ApiError::invalid_definition(problems));
    }
    let json = serde_json::to_string(&def).map_err(|e| ApiError::internal(e.to_string()))?;
    (async {
        match propose(&state, META_GROUP, Command::PutDefinition { name, json }).await? {
            Outcome::Definition { stored, created } => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(
                    status,
                    &DefinitionStored {
                        name: stored.name,
                        version: stored.version,
                        created_at: rfc3339(stored.created_at_ms),
                    },
                ))
            }
            other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
        }
    })
    .await
}

fn definition_view(stored: DefinitionVersion) -> ApiResult<DefinitionView> {
    let def: Value =
        serde_json::from_str(&stored.json).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(DefinitionView {
        name: stored.name,
        version: stored.version,
        created_at: rfc3339(stored.created_at_ms),
        initial: def["initial"].as_str().unwrap_or_default().to_string(),
        states: def["states"].clone(),
    })
}

/// The latest version of a definition.
#[utoipa::path(get, path = "/v1/definitions/{name}",
    params(("name" = String, Path, description = "definition name")),
    responses((status = 200, body = DefinitionView), (status = 404, body = ErrorBody)))]
pub async fn get_definition(
    State(state): State<AppState>,
    Path(name): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    check_name("definition name", &name)?;
    read_meta(&state, &params, || {
        let store = state.node.store();
        let latest = tables::read_latest_version(store, META_GROUP, &name)?
            .ok_or_else(|| ApiError::not_found(format!("definition {name:?} not found")))?;
        let stored = tables::read_definition(store, META_GROUP, &name, latest)?
            .ok_or_else(|| ApiError::not_found(format!("definition {name:?} not found")))?;
        Ok(json_response(StatusCode::OK, &definition_view(stored)?))
    })
    .await
}

/// One version of a definition.
#[utoipa::path(get, path = "/v1/definitions/{name}/versions/{version}",
    params(("name" = String, Path, description = "definition name"), ("version" = u32, Path, description = "version, from 1")),
    responses((status = 200, body = DefinitionView), (status = 404, body = ErrorBody)))]
pub async fn get_definition_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    check_name("definition name", &name)?;
    let version: u32 = version.parse().map_err(|_| {
        ApiError::bad_request(format!("version {version:?} is not a positive integer"))
    })?;
    read_meta(&state, &params, || {
        let stored = tables::read_definition(state.node.store(), META_GROUP, &name, version)?
            .ok_or_else(|| {
                ApiError::not_found(format!("definition {name:?} has no version {version}"))
            })?;
        Ok(json_response(StatusCode::OK, &definition_view(stored)?))
    })
    .await
}

/// Every definition with its latest version.
#[utoipa::path(get, path = "/v1/definitions", responses((status = 200, body = DefinitionList)))]
pub async fn list_definitions(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    read_meta(&state, &params, || {
        let list = tables::list_definitions(state.node.store(), META_GROUP)?;
        let definitions = list
            .into_iter()
            .map(|(name, latest_version)| DefinitionSummary {
                name,
                latest_version,
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &DefinitionList { definitions },
        ))
    })
    .await
}

// ---- workflows -----------------------------------------------------------------------------

/// Finds the definition version a create pins, from this node's replica of the meta group.
/// A definition acknowledged a moment ago may still be on its way here, so a miss waits
/// briefly for the replica to catch up before it becomes a 404.
async fn resolve_definition(
    state: &AppState,
    name: &str,
    version: Option<u32>,
) -> ApiResult<DefinitionVersion> {
    let store = state.node.store();
    let deadline = tokio::time::Instant::now() + DEFINITION_WAIT;
    loop {
        let v = match version {
            Some(v) => Some(v),
            None => tables::read_latest_version(store, META_GROUP, name)?,
        };
        if let Some(v) = v {
            if let Some(d) = tables::read_definition(store, META_GROUP, name, v)? {
                return Ok(d);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let what = match version {
                Some(v) => format!("definition {name:?} has no version {v}"),
                None => format!("definition {name:?} not found"),
            };
            return Err(ApiError::not_found(what));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Start a workflow; an identical retry returns it as it is now (200).
#[utoipa::path(post, path = "/v1/workflows", request_body = CreateWorkflow,
    responses((status = 201, body = WorkflowView), (status = 200, body = WorkflowView),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_workflow(
    State(state): State<AppState>,
    caller: CallerName,
    JsonBody(mut req): JsonBody<CreateWorkflow>,
) -> ApiResult<Response> {
    let id = req
        .id
        .get_or_insert_with(|| format!("wf-{}", uuid::Uuid::new_v4().simple()))
        .clone();
    check_id(&id)?;
    check_name("definition name", &req.definition)?;
    if req.version == Some(0) {
        return Err(ApiError::bad_request("version starts at 1"));
    }
    let context = object_text("context", req.context.clone())?.unwrap_or_else(|| "{}".into());
    // Identifies the request: the same id with the same request is a retry, not a conflict.
    let fingerprint = serde_json::json!({
        "definition": req.definition,
        "version": req.version,
        "context": serde_json::from_str::<Value>(&context).unwrap_or_default(),
    })
    .to_string();
    (async {
        let def = resolve_definition(&state, &req.definition, req.version).await?;
        let command = Command::CreateWorkflow {
            id: id.clone(),
            definition: def.name,
            version: def.version,
            definition_json: def.json,
            context_json: context,
            fingerprint,
        }
        .by(caller.get());
        let (group, outcome) = propose_for(&state, &id, command).await?;
        workflow_outcome(outcome, group)
    })
    .await
}

fn workflow_outcome(outcome: Outcome, group: u64) -> ApiResult<Response> {
    match outcome {
        Outcome::Workflow { workflow, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_text_response(
                status,
                views::workflow_body(&workflow, group),
            ))
        }
        Outcome::Refused(r) => Err(ApiError::from(r)),
        other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
    }
}

/// Send an event; the workflow after the transition.
#[utoipa::path(post, path = "/v1/workflows/{id}/events", request_body = SendEvent,
    params(("id" = String, Path, description = "workflow id")),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn send_event(
    State(state): State<AppState>,
    caller: CallerName,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SendEvent>,
) -> ApiResult<Response> {
    check_id(&id)?;
    check_name("event name", &req.event)?;
    check_request_id(&req.request_id)?;
    if req.event.starts_with("task.") || req.event.starts_with("timer.") {
        return Err(ApiError::invalid_transition(format!(
            "event {:?} is emitted by the engine only",
            req.event
        )));
    }
    let payload_json = object_text("payload", req.payload)?;
    (async {
        let command = Command::Event {
            id: id.clone(),
            event: req.event,
            payload_json,
            expected_revision: req.expected_revision,
            request_id: req.request_id,
        }
        .by(caller.get());
        let (group, outcome) = propose_for(&state, &id, command).await?;
        workflow_outcome(outcome, group)
    })
    .await
}

/// Cancel a running workflow.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", request_body = CancelWorkflow,
    params(("id" = String, Path, description = "workflow id")),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn cancel_workflow(
    State(state): State<AppState>,
    caller: CallerName,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CancelWorkflow>,
) -> ApiResult<Response> {
    check_id(&id)?;
    check_request_id(&req.request_id)?;
    (async {
        let command = Command::Cancel {
            id: id.clone(),
            reason: req.reason,
            request_id: req.request_id,
        }
        .by(caller.get());
        let (group, outcome) = propose_for(&state, &id, command).await?;
        workflow_outcome(outcome, group)
    })
    .await
}

/// A workflow. Linearizable unless `consistency=local`.
#[utoipa::path(get, path = "/v1/workflows/{id}",
    params(("id" = String, Path, description = "workflow id"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default) or `local`")),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody)))]
pub async fn get_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let (group, Answer::Workflow(rec)) =
        query_for(&state, &id, &params, Query::Workflow { id: id.clone() }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let rec = rec.ok_or_else(|| ApiError::not_found(format!("workflow {id:?} not found")))?;
    Ok(json_text_response(
        StatusCode::OK,
        views::workflow_body(&rec.workflow, group),
    ))
}

/// A workflow's history, oldest first.
#[utoipa::path(get, path = "/v1/workflows/{id}/history",
    params(("id" = String, Path, description = "workflow id"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default) or `local`")),
    responses((status = 200, body = HistoryView), (status = 404, body = ErrorBody)))]
pub async fn get_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let history = Query::HistoryBy {
        id: id.clone(),
        limit: MAX_HISTORY_ROWS as u32,
    };
    let (_, Answer::HistoryBy(rows)) = query_for(&state, &id, &params, history).await? else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let rows = rows.ok_or_else(|| ApiError::not_found(format!("workflow {id:?} not found")))?;
    let events = rows.into_iter().map(views::history_event).collect();
    Ok(json_response(StatusCode::OK, &HistoryView { events }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub definition: Option<String>,
    pub status: Option<String>,
    pub state: Option<String>,
    pub limit: Option<usize>,
    pub page_token: Option<String>,
    /// `linearizable` (default) or `local`.
    pub consistency: Option<String>,
}

/// `{group}/{last id}`, hex-encoded so clients treat it as opaque.
fn encode_token(group: u64, after: &str) -> String {
    format!("{group}/{after}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(token: &str) -> ApiResult<(u64, Option<String>)> {
    let bad = || ApiError::bad_request("invalid page_token");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (g, after) = text.split_once('/').ok_or_else(bad)?;
    let group = g.parse().map_err(|_| bad())?;
    Ok((group, (!after.is_empty()).then(|| after.to_string())))
}

/// Workflows of every group, filtered, in (group, id) order. Each group a page reads is read
/// from this node's replica once it has applied that group's read index, so a page shows every
/// write acknowledged before the request (`consistency=local` skips this and may be stale).
#[utoipa::path(get, path = "/v1/workflows",
    params(("definition" = Option<String>, Query, description = "definition name"),
        ("status" = Option<String>, Query, description = "running | succeeded | failed | cancelled"),
        ("state" = Option<String>, Query, description = "current state"),
        ("limit" = Option<usize>, Query, description = "page size, default 100, max 1000"),
        ("page_token" = Option<String>, Query, description = "from the previous page"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default) or `local`")),
    responses((status = 200, body = WorkflowList), (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "a group the page reads has no quorum (`consistency=local` still answers)")))]
pub async fn list_workflows(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Response> {
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIST_LIMIT}"
        )));
    }
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {s:?} is not running, succeeded, failed or cancelled"
            ))
        })?),
    };
    let groups: Vec<u64> = state.node.data_groups().collect();
    let (mut group, mut after) = match &params.page_token {
        Some(t) => decode_token(t)?,
        None => (groups[0], None),
    };
    if !groups.contains(&group) {
        // The page's group retired since: its workflows are in the others now.
        match groups.iter().find(|g| **g > group) {
            Some(next) => (group, after) = (*next, None),
            None => {
                return Ok(json_response(
                    StatusCode::OK,
                    &WorkflowList {
                        workflows: Vec::new(),
                        next_page_token: None,
                    },
                ))
            }
        }
    }
    let linearizable = !(parse_consistency(params.consistency.as_deref())? || stale_mutant());
    let mut out = Vec::new();
    let mut budget = limit * LIST_SCAN_FACTOR;
    // A workflow is listed from the group the slot table names its owner: one table for the
    // page, so that a workflow whose slot is moving is listed once.
    let mut table = state.node.slots();
    let mut table_refreshes = 0;
    // Every group up to this one has had its read index. The page's first group gets its own
    // (most pages end in it); if the page goes on, every later group gets one at once, so a
    // filtered listing over many groups waits for one round of read indexes, not one per group.
    // A group this node holds no replica of is read on its leader, which takes the read index
    // itself.
    let mut linearized: Option<u64> = None;
    loop {
        if linearizable && linearized.is_none_or(|done| done < group) {
            let pending: Vec<u64> = match linearized {
                None => vec![group],
                Some(_) => groups.iter().copied().filter(|g| *g >= group).collect(),
            };
            let hosted = pending.iter().filter(|g| state.node.serves(**g));
            futures::future::try_join_all(hosted.map(|g| read_barrier(&state, *g))).await?;
            linearized = pending.last().copied();
        }
        let scan = Query::WorkflowPage {
            after: after.clone(),
            limit: budget.min(limit * 2) as u32,
        };
        let remote_linearizable = linearizable && !state.node.serves(group);
        let Answer::WorkflowPage {
            workflows: chunk,
            fenced,
        } = query_group(&state, group, scan, remote_linearizable).await?
        else {
            return Err(ApiError::internal("unexpected answer"));
        };
        // Slots the group froze or gave away while the table still names it their owner: its
        // rows of them were whole when read unless the move has committed since (then it may
        // have deleted some), which the meta group tells.
        let leaving: Vec<u32> = fenced
            .iter()
            .filter(|(s, f)| {
                matches!(f, tables::SlotFence::Leaving { .. }) && table.group_of_slot(*s) == group
            })
            .map(|(s, _)| *s)
            .collect();
        if !leaving.is_empty() {
            read_barrier(&state, META_GROUP).await?;
            let fresh = state.node.slots();
            if leaving.iter().any(|s| fresh.group_of_slot(*s) != group) {
                table_refreshes += 1;
                if table_refreshes > 3 {
                    return Err(ApiError::unavailable(
                        "slots are moving between groups; try the listing again shortly",
                    ));
                }
                table = fresh;
                continue;
            }
        }
        let exhausted = chunk.len() < budget.min(limit * 2);
        for rec in chunk {
            budget -= 1;
            after = Some(rec.workflow.id.clone());
            let wf = rec.workflow;
            let keep = table.group_of(&wf.id) == group
                && params
                    .definition
                    .as_ref()
                    .is_none_or(|d| *d == wf.definition)
                && status.is_none_or(|s| s == wf.status)
                && params.state.as_ref().is_none_or(|s| *s == wf.state);
            if keep {
                out.push(views::workflow_view(wf, group));
                if out.len() == limit {
                    let token = encode_token(group, after.as_deref().unwrap_or(""));
                    return Ok(json_response(
                        StatusCode::OK,
                        &WorkflowList {
                            workflows: out,
                            next_page_token: Some(token),
                        },
                    ));
                }
            }
        }
        if exhausted {
            let Some(next) = groups.iter().find(|g| **g > group) else {
                return Ok(json_response(
                    StatusCode::OK,
                    &WorkflowList {
                        workflows: out,
                        next_page_token: None,
                    },
                ));
            };
            group = *next;
            after = None;
        }
        if budget == 0 {
            let token = encode_token(group, after.as_deref().unwrap_or(""));
            return Ok(json_response(
                StatusCode::OK,
                &WorkflowList {
                    workflows: out,
                    next_page_token: Some(token),
                },
            ));
        }
    }
}

// ---- cluster and operations ----------------------------------------------------------------

/// Nodes, groups with their leaders, and how workflows map to groups.
#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = ClusterView)))]
pub async fn cluster(State(state): State<AppState>) -> ApiResult<Response> {
    let node = &state.node;
    let known = node.nodes();
    let probes = known.iter().map(|n| {
        let http = state.http.clone();
        let skip = n.id == node.id() || n.state == "removed";
        let scheme = if state.config.client_tls {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}/healthz", n.addr.client);
        async move {
            if skip {
                return n.id == node.id();
            }
            http.get(url)
                .timeout(Duration::from_millis(300))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    });
    let reachable = futures::future::join_all(probes).await;
    let nodes = known
        .iter()
        .zip(reachable)
        .map(|(n, reachable)| NodeView {
            id: n.id,
            client_addr: n.addr.client.clone(),
            peer_addr: n.addr.peer.clone(),
            reachable,
            state: n.state.to_string(),
        })
        .collect();
    let mut groups: Vec<GroupView> = node
        .group_status()
        .into_iter()
        .map(|g| GroupView {
            kind: if g.id == META_GROUP { "meta" } else { "data" }.to_string(),
            id: g.id,
            leader: g.leader,
            term: g.term,
            voters: g.voters,
            learners: g.learners,
            last_applied: g.last_applied,
            last_log_index: g.last_log_index,
            committed: g.committed,
            snapshot: g.snapshot,
            purged: g.purged,
            role: g.role.to_string(),
            state: None,
        })
        .collect();
    // Groups this node holds no replica of: as the meta group places them.
    for group in node.data_groups().filter(|g| !node.hosts(*g)) {
        let placement = node.placement(group);
        let learners = placement
            .as_ref()
            .and_then(|p| p.moving.as_ref())
            .filter(|m| m.step == tables::MoveStep::Learner)
            .map(|m| vec![raftflow_raft::node_of(m.to)])
            .unwrap_or_default();
        groups.push(GroupView {
            kind: "data".to_string(),
            id: group,
            leader: node.leader_of(group).map(|(id, _)| id),
            term: 0,
            voters: node.placement_voters(group),
            learners,
            last_applied: None,
            last_log_index: None,
            committed: None,
            snapshot: None,
            purged: None,
            role: "none".to_string(),
            state: None,
        });
    }
    groups.sort_by_key(|g| g.id);
    let states = node.group_states();
    for g in groups.iter_mut().filter(|g| g.kind == "data") {
        g.state = states.get(&g.id).map(|s| s.as_str().to_string());
    }
    let slots_per_group: serde_json::Map<String, Value> = node
        .slots()
        .slots_per_group()
        .into_iter()
        .map(|(g, n)| (g.to_string(), Value::from(n)))
        .collect();
    let view = ClusterView {
        node_id: node.id(),
        replication_factor: node.replication_factor(),
        nodes,
        groups,
        placement: PlacementView {
            slots: raftflow_raft::ring::SLOTS,
            hash: "slot = fnv1a64+splitmix64(id) mod slots; slot -> group recorded in the meta \
                   group, placed by rendezvous hashing over the serving groups"
                .into(),
            slots_per_group: Value::Object(slots_per_group),
            moves: node
                .slot_move()
                .into_iter()
                .map(|m| serde_json::to_value(m).unwrap_or_default())
                .collect(),
            replica_moves: node
                .placements()
                .into_iter()
                .filter_map(|p| {
                    let m = p.moving?;
                    Some(serde_json::json!({
                        "group": p.group,
                        "from": m.from.map(raftflow_raft::node_of),
                        "to": raftflow_raft::node_of(m.to),
                        "step": match m.step {
                            tables::MoveStep::Learner => "learner",
                            tables::MoveStep::Joint => "joint",
                        },
                    }))
                })
                .collect(),
        },
    };
    Ok(json_response(StatusCode::OK, &view))
}

/// A node asks to join the cluster (what `raftflow serve --join` sends): 201 with the node,
/// `joining`; the same request again: 200. A taken or removed id: 409 `node_exists`.
#[utoipa::path(post, path = "/v1/cluster/nodes", request_body = RegisterNode,
    responses((status = 201, body = ClusterNode), (status = 200, body = ClusterNode),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register_node(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterNode>,
) -> ApiResult<Response> {
    if req.id == 0 || req.id > u64::from(u32::MAX) {
        return Err(ApiError::bad_request(format!(
            "node id {} must be 1 to {}",
            req.id,
            u32::MAX
        )));
    }
    check_host_port("client_addr", &req.client_addr)?;
    check_host_port("peer_addr", &req.peer_addr)?;
    let addr = NodeAddr {
        client: req.client_addr,
        peer: req.peer_addr,
    };
    let timeout = state.config.write_timeout;
    let registered = tokio::time::timeout(timeout, state.node.register_node(req.id, addr, timeout))
        .await
        .map_err(|_| {
            ApiError::unavailable("the meta group did not record the node in time; retry")
        })??;
    match registered {
        Outcome::Node { node, created } => Ok(json_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &views::cluster_node(node),
        )),
        Outcome::Refused(r) => Err(r.into()),
        other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// For a node that is gone for good; the removal is the same (a drain never needs the
    /// node itself), the flag says the operator knows it will not come back.
    pub force: Option<bool>,
}

/// Drains a node: its replicas move to the other nodes, then it leaves every group and is
/// recorded `removed` (202 with the node, `draining`). 404 for an unknown id; 409
/// `not_enough_nodes` when the other active nodes could not hold every group's replicas.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{id}",
    params(("id" = u64, Path, description = "node id"),
        ("force" = Option<bool>, Query, description = "the node is gone for good")),
    responses((status = 202, body = ClusterNode), (status = 200, body = ClusterNode),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<RemoveParams>,
) -> ApiResult<Response> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("node id {id:?} is not a number")))?;
    let timeout = state.config.write_timeout;
    let removed = tokio::time::timeout(timeout, state.node.remove_node(id, timeout))
        .await
        .map_err(|_| {
            ApiError::unavailable("the meta group did not record the change in time; retry")
        })??;
    match removed {
        None => Err(ApiError::not_found(format!("node {id} is not a member"))),
        Some(Outcome::Node { node, created: _ }) => {
            tracing::info!(
                node = id,
                force = params.force.unwrap_or(false),
                state = node.state.as_str(),
                "node removal requested"
            );
            let status = if node.state == tables::NodeState::Draining {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &views::cluster_node(node)))
        }
        Some(Outcome::Refused(r)) => Err(r.into()),
        Some(other) => Err(ApiError::internal(format!("unexpected outcome {other}"))),
    }
}

/// Adds a data group (202 `{"id"}`): it is placed on the active nodes with the fewest
/// replicas, and slots move to it by the consistent-hash rule (about 1/(G+1) of them).
#[utoipa::path(post, path = "/v1/cluster/groups", request_body = Object,
    responses((status = 202, description = "`{\"id\", \"state\": \"serving\"}`"),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add_group(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is `{}` (or empty): nothing about a group is chosen by the caller yet.
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        if !v.as_object().is_some_and(|o| o.is_empty()) {
            return Err(ApiError::bad_request("the body must be {}"));
        }
    }
    let timeout = state.config.write_timeout;
    let id = tokio::time::timeout(timeout, state.node.add_group(timeout))
        .await
        .map_err(|_| {
            ApiError::unavailable("the meta group did not record the change in time; retry")
        })??;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({"id": id, "state": "serving"}),
    ))
}

/// Retires a data group (202 `{"id", "state": "retiring"}`): its slots move to the serving
/// groups, then it is retired and its replicas deleted. 404 for an unknown or retired group;
/// 409 `last_group` for the only serving one.
#[utoipa::path(delete, path = "/v1/cluster/groups/{id}",
    params(("id" = u64, Path, description = "group id")),
    responses((status = 202, description = "`{\"id\", \"state\": \"retiring\"}`"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retire_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Response> {
    let group: u64 = group
        .parse()
        .ok()
        .filter(|g| *g != META_GROUP)
        .ok_or_else(|| ApiError::bad_request(format!("group {group:?} is not a data group id")))?;
    let timeout = state.config.write_timeout;
    let retired = tokio::time::timeout(timeout, state.node.retire_group(group, timeout))
        .await
        .map_err(|_| {
            ApiError::unavailable("the meta group did not record the change in time; retry")
        })??;
    match retired {
        None => Err(ApiError::not_found(format!("no data group {group}"))),
        Some(s) => Ok(json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({"id": group, "state": s.as_str()}),
        )),
    }
}

/// `host:port` with a port number, at most 255 bytes, no spaces or slashes.
fn check_host_port(what: &str, value: &str) -> ApiResult<()> {
    let ok = value.len() <= 255
        && !value.contains(|c: char| c.is_whitespace() || c == '/')
        && value.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {value:?} must be host:port"
        )))
    }
}

/// This replica's applied index of a group and a digest of its rows (for convergence checks).
#[utoipa::path(get, path = "/v1/cluster/groups/{id}/digest",
    params(("id" = u64, Path, description = "group id")),
    responses((status = 200, description = "`{\"group\", \"applied\", \"digest\"}`"),
        (status = 404, body = ErrorBody)))]
pub async fn group_digest(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Response> {
    let group: u64 = group
        .parse()
        .map_err(|_| ApiError::bad_request(format!("group {group:?} is not a number")))?;
    let node = state.node.clone();
    let r = tokio::task::spawn_blocking(move || node.group_digest(group))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match r {
        Ok((applied, digest)) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"group": group, "applied": applied, "digest": format!("{digest:016x}")}),
        )),
        Err(e) => Err(e.into()),
    }
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// 200 once every group on this node has a leader, else 503.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Response> {
    if state.node.all_groups_have_leader() {
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        ))
    } else {
        Err(ApiError::unavailable("not every group has a leader yet"))
    }
}

/// Unknown paths get the API's error shape.
pub async fn not_found(uri: OriginalUri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.0.path()))
}

pub fn text_response(content_type: &'static str, body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
