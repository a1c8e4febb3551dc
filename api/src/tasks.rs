//! Task routes: long-polling for work across every group, and the lease holder's complete,
//! fail and heartbeat.
//!
//! A poll looks at this node's replica of each group for ready tasks of the requested types
//! (a hint; it may trail the leader a little), and asks each group that has some to lease
//! them: a replicated `LeaseTasks` command on the group's leader, here or over the peer
//! connection. With nothing ready it waits for this node's state machines to signal a newly
//! ready task, up to `wait_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use raftflow_raft::{tables, Answer, Command, LeasedTask, Outcome, Query};
use raftflow_workflow::task::{workflow_of_task, MAX_LEASE_MS};
use raftflow_workflow::{is_valid_id, is_valid_name};

use crate::auth::CallerName;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::handlers::{
    check_id, json_response, object_text, propose, propose_for, query_for, query_group, ReadParams,
};
use crate::types::*;
use crate::{views, AppState};
use raftflow_raft::rfc3339;

/// The longest a poll waits for work.
pub const MAX_POLL_WAIT_MS: u64 = 60_000;
/// Most task types one poll may name.
const MAX_POLL_TYPES: usize = 32;
/// Most tasks one poll leases.
const MAX_POLL_TASKS: u32 = 100;
/// A worker's error text is kept up to this many bytes.
const MAX_ERROR_BYTES: usize = 8 << 10;
/// A waiting poll looks at the replicas again this often even without a signal (a signal is
/// only raised by this node's own state machines).
const POLL_RECHECK: Duration = Duration::from_millis(500);

/// Rotates the group a poll starts with, so no group's tasks always go first.
static NEXT_START: AtomicU64 = AtomicU64::new(0);

fn check_poll(req: &PollTasks) -> ApiResult<()> {
    if req.types.is_empty() || req.types.len() > MAX_POLL_TYPES {
        return Err(ApiError::bad_request(format!(
            "types must name 1 to {MAX_POLL_TYPES} task types"
        )));
    }
    for t in &req.types {
        if !is_valid_name(t) {
            return Err(ApiError::bad_request(format!(
                "task type {t:?} must match [A-Za-z0-9_.-]{{1,64}}"
            )));
        }
    }
    if !is_valid_id(&req.worker) {
        return Err(ApiError::bad_request(format!(
            "worker {:?} must match [A-Za-z0-9_.:-]{{1,128}}",
            req.worker
        )));
    }
    if req.max.is_some_and(|m| m == 0 || m > MAX_POLL_TASKS) {
        return Err(ApiError::bad_request(format!(
            "max must be 1..={MAX_POLL_TASKS}"
        )));
    }
    if req.wait_ms.is_some_and(|w| w > MAX_POLL_WAIT_MS) {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_POLL_WAIT_MS}"
        )));
    }
    check_lease_ms(req.lease_ms)
}

fn check_lease_ms(lease_ms: Option<u64>) -> ApiResult<()> {
    if lease_ms.is_some_and(|l| l == 0 || l > MAX_LEASE_MS) {
        return Err(ApiError::bad_request(format!(
            "lease_ms must be 1..={MAX_LEASE_MS}"
        )));
    }
    Ok(())
}

/// The workflow of task `id` (task ids carry it), which routes the task's requests.
fn task_workflow(id: &str) -> ApiResult<&str> {
    let wf = workflow_of_task(id)
        .ok_or_else(|| ApiError::not_found(format!("task {id:?} not found")))?;
    check_id(wf)?;
    Ok(wf)
}

fn lease_view(t: LeasedTask) -> TaskLease {
    TaskLease {
        id: t.id,
        workflow_id: t.workflow_id,
        task_type: t.task_type,
        attempt: t.attempt,
        lease_token: t.token,
        lease_expires_at: rfc3339(t.expires_at_ms),
        context: serde_json::from_str(&t.context_json).unwrap_or(Value::Null),
    }
}

/// Leases up to `max` tasks from `group` on its leader (this node, or over the peer
/// connection).
async fn lease_in_group(
    state: &AppState,
    group: u64,
    req: &PollTasks,
    max: u32,
) -> ApiResult<Vec<TaskLease>> {
    let command = Command::LeaseTasks {
        types: req.types.clone(),
        worker: req.worker.clone(),
        max,
        lease_ms: req.lease_ms,
    };
    match propose(state, group, command).await? {
        Outcome::Leased { tasks } => Ok(tasks.into_iter().map(lease_view).collect()),
        other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
    }
}

/// Whether `group` has a task of `types` ready: on this node's replica, or asked of the
/// group's leader when this node holds none (the ready signal wakes a long poll for local
/// groups only; remote ones are looked at again every `POLL_RECHECK`).
async fn has_ready(state: &AppState, group: u64, types: &[String]) -> bool {
    if state.node.serves(group) {
        return tables::has_ready(state.node.store(), state.node.signals(), group, types)
            .unwrap_or(false);
    }
    let ask = Query::HasReady {
        types: types.to_vec(),
    };
    matches!(
        query_group(state, group, ask, false).await,
        Ok(Answer::HasReady(true))
    )
}

/// Lease ready tasks of the given types from every group; long-poll up to `wait_ms` when
/// none is ready.
#[utoipa::path(post, path = "/v1/tasks/poll", request_body = PollTasks,
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
pub async fn poll_tasks(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<PollTasks>,
) -> ApiResult<Response> {
    check_poll(&req)?;
    let max = req.max.unwrap_or(1);
    let groups: Vec<u64> = state.node.data_groups().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.unwrap_or(0));
    let mut ready = state.node.signals().subscribe_ready();
    loop {
        ready.borrow_and_update();
        let start = NEXT_START.fetch_add(1, Ordering::Relaxed) as usize;
        let mut tasks = Vec::new();
        for i in 0..groups.len() {
            let group = groups[(start + i) % groups.len()];
            let left = max - tasks.len() as u32;
            if left == 0 {
                break;
            }
            if !has_ready(&state, group, &req.types).await {
                continue;
            }
            match lease_in_group(&state, group, &req, left).await {
                Ok(mut got) => tasks.append(&mut got),
                Err(e) => {
                    tracing::debug!(group, error = %e.message, "lease failed; trying other groups")
                }
            }
        }
        if !tasks.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(json_response(StatusCode::OK, &TaskList { tasks }));
        }
        let recheck = tokio::time::Instant::now() + POLL_RECHECK;
        tokio::select! {
            _ = ready.changed() => {}
            _ = tokio::time::sleep_until(deadline.min(recheck)) => {}
        }
    }
}

/// Report success: `output` is merged into the context and `task.completed` fires. A repeat
/// of a completion that already happened (same token) answers the same way again.
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", request_body = CompleteTask,
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskOutcome), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn complete_task(
    State(state): State<AppState>,
    caller: CallerName,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CompleteTask>,
) -> ApiResult<Response> {
    let wf = task_workflow(&id)?.to_string();
    let output_json = object_text("output", req.output)?;
    (async {
        let command = Command::CompleteTask {
            task_id: id,
            token: req.lease_token,
            output_json,
        }
        .by(caller.get());
        let (group, outcome) = propose_for(&state, &wf, command).await?;
        task_outcome(outcome, group)
    })
    .await
}

/// Report failure: retried after backoff while attempts remain (and `retryable` is not
/// false), else `task.failed` fires.
#[utoipa::path(post, path = "/v1/tasks/{id}/fail", request_body = FailTask,
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskOutcome), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn fail_task(
    State(state): State<AppState>,
    caller: CallerName,
    Path(id): Path<String>,
    JsonBody(mut req): JsonBody<FailTask>,
) -> ApiResult<Response> {
    let wf = task_workflow(&id)?.to_string();
    if req.error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !req.error.is_char_boundary(end) {
            end -= 1;
        }
        req.error.truncate(end);
    }
    (async {
        let command = Command::FailTask {
            task_id: id,
            token: req.lease_token,
            error: req.error,
            retryable: req.retryable.unwrap_or(true),
        }
        .by(caller.get());
        let (group, outcome) = propose_for(&state, &wf, command).await?;
        task_outcome(outcome, group)
    })
    .await
}

/// Extend the lease to `lease_ms` from now.
#[utoipa::path(post, path = "/v1/tasks/{id}/heartbeat", request_body = HeartbeatTask,
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = LeaseExtended), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn heartbeat_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<HeartbeatTask>,
) -> ApiResult<Response> {
    let wf = task_workflow(&id)?.to_string();
    check_lease_ms(req.lease_ms)?;
    (async {
        let command = Command::HeartbeatTask {
            task_id: id,
            token: req.lease_token,
            lease_ms: req.lease_ms,
        };
        match propose_for(&state, &wf, command).await?.1 {
            Outcome::Task { task, .. } => {
                let view = views::task_view(task);
                Ok(json_response(
                    StatusCode::OK,
                    &LeaseExtended {
                        id: view.id,
                        lease_token: view.lease_token,
                        lease_expires_at: view.lease_expires_at.unwrap_or_default(),
                    },
                ))
            }
            Outcome::Refused(r) => Err(ApiError::from(r)),
            other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
        }
    })
    .await
}

/// A task as the engine holds it. Linearizable unless `consistency=local`.
#[utoipa::path(get, path = "/v1/tasks/{id}",
    params(("id" = String, Path, description = "task id"),
        ("consistency" = Option<String>, Query, description = "`linearizable` (default) or `local`")),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> ApiResult<Response> {
    let wf = task_workflow(&id)?;
    let (_, Answer::Task(rec)) =
        query_for(&state, wf, &params, Query::Task { id: id.clone() }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let rec = rec.ok_or_else(|| ApiError::not_found(format!("task {id:?} not found")))?;
    Ok(json_response(StatusCode::OK, &views::task_view(rec.task)))
}

fn task_outcome(outcome: Outcome, group: u64) -> ApiResult<Response> {
    match outcome {
        Outcome::Task { task, workflow } => Ok(json_response(
            StatusCode::OK,
            &TaskOutcome {
                task: views::task_view(task),
                workflow: views::workflow_view(workflow, group),
            },
        )),
        Outcome::Refused(r) => Err(ApiError::from(r)),
        other => Err(ApiError::internal(format!("unexpected outcome {other}"))),
    }
}
