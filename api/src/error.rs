//! The API's one error type: `{"error": {"code", "message", "details"}}` with a stable code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use raftflow_client::ErrorCode;
use raftflow_raft::{Error as RaftError, Refusal};

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// A 413 whose body was read to its end: the connection can carry the next request.
    body_drained: bool,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(code.http_status()).expect("a valid status"),
            code,
            message: message.into(),
            details: None,
            body_drained: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// The same refusal, once the body was read and dropped: no need to close the connection.
    pub fn payload_too_large_drained(limit: usize) -> Self {
        ApiError {
            body_drained: true,
            ..Self::payload_too_large(limit)
        }
    }

    pub fn invalid_definition(problems: Vec<String>) -> Self {
        let mut e = Self::new(
            ErrorCode::InvalidDefinition,
            format!("definition has {} problem(s)", problems.len()),
        );
        e.details = Some(json!({ "problems": problems }));
        e
    }

    pub fn invalid_transition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidTransition, message)
    }

    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            ErrorCode::Overloaded,
            format!("node is serving its limit of {limit} requests; retry"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 401: no token or an unknown one.
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "this cluster needs an API token: send `Authorization: Bearer <token>`",
        )
    }

    /// 403: the caller's role may not call `method path`.
    pub fn forbidden(
        caller: &crate::auth::Caller,
        method: &axum::http::Method,
        path: &str,
    ) -> Self {
        Self::new(
            ErrorCode::Forbidden,
            format!(
                "{} (role {}) may not call {method} {path}",
                caller.name,
                caller.role.as_str()
            ),
        )
    }

    /// 408: the body did not arrive within `after`. Its rest may still come, so the
    /// connection cannot carry another request: it is closed.
    pub fn request_timeout(after: std::time::Duration) -> Self {
        Self::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                after.as_millis()
            ),
        )
    }

    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StorageFull, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let message = r.to_string();
        match r {
            Refusal::WorkflowNotFound { .. } => ApiError::not_found(message),
            Refusal::WorkflowExists { .. } => ApiError::new(ErrorCode::WorkflowExists, message),
            Refusal::RevisionMismatch { current, .. } => {
                let mut e = ApiError::new(ErrorCode::RevisionMismatch, message);
                e.details = Some(json!({ "current_revision": current }));
                e
            }
            Refusal::TaskNotFound { .. } => ApiError::not_found(message),
            Refusal::LeaseLost { .. } => ApiError::new(ErrorCode::LeaseLost, message),
            Refusal::NodeExists { .. } => ApiError::new(ErrorCode::NodeExists, message),
            Refusal::PlacementChanged { .. }
            | Refusal::Moved { .. }
            | Refusal::SlotMoveStale { .. }
            | Refusal::GroupRefused { .. } => ApiError::unavailable(message),
            Refusal::EventNotAllowed { .. }
            | Refusal::Finished { .. }
            | Refusal::EngineEvent { .. } => ApiError::invalid_transition(message),
        }
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader { leader: None } => {
                ApiError::unavailable("the group has no leader right now")
            }
            RaftError::NotLeader {
                leader: Some((id, _)),
            } => ApiError::unavailable(format!("node {id} leads the group; retry")),
            RaftError::Unavailable(m) => ApiError::unavailable(m),
            RaftError::StorageFull(m) => ApiError::storage_full(m),
            RaftError::Storage(s) if s.is_no_space() => ApiError::storage_full(s.to_string()),
            RaftError::NoSuchGroup(g) => ApiError::not_found(format!("no group {g}")),
            RaftError::NotEnoughNodes(m) => ApiError::new(ErrorCode::NotEnoughNodes, m),
            RaftError::LastGroup(m) => ApiError::new(ErrorCode::LastGroup, m),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        let mut resp = (self.status, axum::Json(json!({ "error": body }))).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&RETRY_AFTER_SECS.to_string()).expect("digits"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if (self.status == StatusCode::PAYLOAD_TOO_LARGE && !self.body_drained)
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            // The body was refused unread, so the connection cannot carry another request:
            // say so, or a client that finished sending it would pool a connection the
            // server is about to close and lose its next request on it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_413_closes_the_connection_unless_its_body_was_read() {
        let unread = ApiError::payload_too_large(10).into_response();
        assert_eq!(unread.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(unread.headers().get(header::CONNECTION).unwrap(), "close");
        let drained = ApiError::payload_too_large_drained(10).into_response();
        assert_eq!(drained.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(drained.headers().get(header::CONNECTION).is_none());
    }
}
