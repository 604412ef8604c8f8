//! Two layers every route gets, so that bad input is answered the same way everywhere:
//!
//! * [`read_body`] reads the whole request body before a handler runs, within
//!   [`HttpConfig::max_body_bytes`](super::HttpConfig::max_body_bytes) and
//!   [`HttpConfig::body_read_timeout`](super::HttpConfig::body_read_timeout). A body over the
//!   limit is 413 (told from `Content-Length` before anything is read, or as soon as the
//!   streamed body passes it); one that trickles in too slowly is 408 and the connection is
//!   closed, so a slow client holds one connection for a bounded time and nothing else. Since
//!   handlers only run with the whole body in hand, a request cut off half-way changes nothing.
//! * [`error_shape`] gives every error answer IoT Hub's JSON body and `iothub-errorcode`
//!   header, including the plain-text rejections of axum's own extractors (a path that does
//!   not parse, a query that does not deserialize).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use super::error::{ApiError, code};
use super::state::HttpState;

/// Reads the body within the limits, then runs the rest of the stack with it in memory.
pub(crate) async fn read_body(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config().max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    // No body at all (most GETs and DELETEs): nothing to read or time.
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.unwrap_or(0) == 0 {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(state.config().body_read_timeout, collect(body, limit));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(Collect::TooLarge)) => return too_large(limit),
        Ok(Err(Collect::Broken)) => {
            return closing(ApiError::bad_request("the request body could not be read"));
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                code::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

enum Collect {
    TooLarge,
    Broken,
}

async fn collect(body: Body, limit: usize) -> Result<Bytes, Collect> {
    let mut stream = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Collect::Broken)?;
        if buffer.len() + chunk.len() > limit {
            return Err(Collect::TooLarge);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

fn too_large(limit: usize) -> Response {
    // The rest of the body is not read: close the connection rather than drain it.
    closing(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::MESSAGE_TOO_LARGE,
        format!("the request body is larger than {limit} bytes"),
    ))
}

fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Rewrites an error answer that lacks IoT Hub's shape (one of axum's plain-text rejections)
/// into it, keeping the status.
pub(crate) async fn error_shape(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key("iothub-errorcode")
    {
        return response;
    }
    let (error_code, message) = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            (code::ARGUMENT_INVALID, "the request is malformed")
        }
        StatusCode::NOT_FOUND => (code::NOT_FOUND, "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => (
            code::METHOD_NOT_ALLOWED,
            "the resource does not support this method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (code::MESSAGE_TOO_LARGE, "the request is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            code::UNSUPPORTED_MEDIA_TYPE,
            "the body's content type is not accepted here",
        ),
        s if s.is_client_error() => (code::ARGUMENT_INVALID, "the request was refused"),
        _ => (code::SERVER_ERROR, "internal error"),
    };
    // 422 is axum's answer for JSON of the wrong shape; IoT Hub says 400.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, error_code, message).into_response()
}
