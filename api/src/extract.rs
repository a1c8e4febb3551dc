//! Extractors that turn every malformed input into the API's error shape.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A body that declares at most this many bytes is read and dropped before its 413. A server
/// that answers before the body is in and then closes makes the client's kernel reset the
/// connection while it still sends, and the client may see that reset instead of the 413.
const DRAIN_MAX_BYTES: u64 = 16 << 20;
/// The longest a refused body may take to arrive before the node answers and closes.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A JSON body: 413 `payload_too_large` over the limit, 408 `request_timeout` when it does not
/// arrive in time, 400 `bad_request` when it does not parse into `T`. An empty body reads as `{}` (for bodies whose fields are all optional).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        // The length the body declares (its Content-Length; none when chunked).
        let declared = axum::body::HttpBody::size_hint(req.body()).exact();
        if let Some(n) = declared.filter(|&n| n > limit as u64 && n <= DRAIN_MAX_BYTES) {
            return Err(if drain(req.into_body(), n).await {
                ApiError::payload_too_large_drained(limit)
            } else {
                ApiError::payload_too_large(limit)
            });
        }
        let timeout = state.config.body_timeout;
        let bytes = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::request_timeout(timeout))?
            .map_err(|e| body_error(e, limit))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Reads `body` to its end and drops it; false if it is longer than `declared`, fails, or takes
/// longer than [`DRAIN_TIME`].
async fn drain(body: axum::body::Body, declared: u64) -> bool {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let read_all = async move {
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => read += c.len() as u64,
                Err(_) => return false,
            }
            if read > declared {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read_all)
        .await
        .unwrap_or(false)
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(limit)
    } else {
        ApiError::bad_request(format!("cannot read body: {e}"))
    }
}

/// Query parameters; 400 `bad_request` when they do not parse.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("invalid query: {}", e.body_text()))
            })
    }
}
