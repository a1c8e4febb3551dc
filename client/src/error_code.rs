//! The API's stable error codes: one enum for the server that sends them and the clients that
//! switch on them.

use serde::{Deserialize, Serialize};

/// The `code` of an error answer `{"error": {"code", "message", "details"}}`.
///
/// The wire form is the snake_case name (`revision_mismatch`). Codes are only ever added; a
/// client that meets a code newer than itself decodes it as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not valid JSON, a field has the wrong type, an id has characters
    /// outside its alphabet.
    BadRequest,
    /// 404: no such workflow, definition, version, task or group.
    NotFound,
    /// 409: a create with an id that exists and a different request.
    WorkflowExists,
    /// 409: `expected_revision` given and not the current one (details: `current_revision`).
    RevisionMismatch,
    /// 409: a task outcome or heartbeat with a lease token that is not the current one.
    LeaseLost,
    /// 413: a body above the configured limit.
    PayloadTooLarge,
    /// 422: the definition fails validation (details: `problems`).
    InvalidDefinition,
    /// 422: the event is not allowed in the current state, or the workflow has finished.
    InvalidTransition,
    /// 429: the node sheds load; retry after `Retry-After`.
    Overloaded,
    /// 503: the owning group has no leader or no quorum right now; retry after `Retry-After`.
    Unavailable,
    /// 507: the node cannot write to its disk.
    StorageFull,
    /// 500: a bug.
    Internal,
    /// 409: a node id that is taken, or was removed (ids are never used again).
    NodeExists,
    /// 409: a node cannot be removed: the others could not hold every group's replicas.
    NotEnoughNodes,
    /// 409: the only serving data group cannot be retired.
    LastGroup,
    /// 401: no token, or one the node does not know (`WWW-Authenticate: Bearer`).
    Unauthenticated,
    /// 403: the token's role may not call this route.
    Forbidden,
    /// 408: the request's body did not arrive in time (`--body-timeout-ms`); the connection
    /// is closed.
    RequestTimeout,
    /// A code this client does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server sends, in the order of the enum.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::WorkflowExists,
        ErrorCode::RevisionMismatch,
        ErrorCode::LeaseLost,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidDefinition,
        ErrorCode::InvalidTransition,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::StorageFull,
        ErrorCode::Internal,
        ErrorCode::NodeExists,
        ErrorCode::NotEnoughNodes,
        ErrorCode::LastGroup,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RequestTimeout,
    ];

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::WorkflowExists => "workflow_exists",
            ErrorCode::RevisionMismatch => "revision_mismatch",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidDefinition => "invalid_definition",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
            ErrorCode::NodeExists => "node_exists",
            ErrorCode::NotEnoughNodes => "not_enough_nodes",
            ErrorCode::LastGroup => "last_group",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status a server answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::WorkflowExists
            | ErrorCode::RevisionMismatch
            | ErrorCode::LeaseLost
            | ErrorCode::NodeExists
            | ErrorCode::NotEnoughNodes
            | ErrorCode::LastGroup => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InvalidDefinition | ErrorCode::InvalidTransition => 422,
            ErrorCode::Overloaded => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::StorageFull => 507,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }

    /// Whether the same request may succeed later, unchanged.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_the_snake_case_name_both_ways() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn a_code_from_a_newer_server_decodes_as_unknown() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn statuses_follow_the_api_table() {
        assert_eq!(ErrorCode::RevisionMismatch.http_status(), 409);
        assert_eq!(ErrorCode::InvalidDefinition.http_status(), 422);
        assert_eq!(ErrorCode::StorageFull.http_status(), 507);
        assert!(ErrorCode::Unavailable.is_transient());
        assert!(!ErrorCode::LeaseLost.is_transient());
    }

    #[test]
    fn every_code_is_in_the_api_reference() {
        let page = include_str!("../../docs/API.md");
        for code in ErrorCode::ALL {
            if code == ErrorCode::Internal {
                continue; // a bug, not part of the contract's table
            }
            assert!(
                page.contains(&format!("`{}`", code.as_str())),
                "docs/API.md does not list {code}"
            );
        }
    }
}
