//! Cloud-to-device messages over HTTPS, as IoT Hub serves them to polling devices:
//!
//! * `GET /devices/{id}/messages/deviceBound` — the next message, locked: 200 with the payload
//!   as the body and the lock token as the `ETag` (quoted); 204 when none is waiting. Headers:
//!   `iothub-messageid`, `iothub-correlationid`, `iothub-to`, `iothub-expiry`,
//!   `iothub-enqueuedtime`, `iothub-deliverycount`, `iothub-sequencenumber`, `iothub-ack`,
//!   `iothub-contenttype`, `iothub-contentencoding` and `iothub-app-{name}` per custom property.
//! * `DELETE /devices/{id}/messages/deviceBound/{etag}` — complete (feedback `success`);
//!   with `?reject`, reject (dead-lettered, feedback `rejected`). 204.
//! * `POST /devices/{id}/messages/deviceBound/{etag}/abandon` — give it back for redelivery. 204.
//!
//! A lock token that is not held (already settled, expired, or from a session the hub closed)
//! is 412 `DeviceMessageLockLost`, as in IoT Hub. The path segment is matched without case
//! (the Node SDK writes `devicebound`).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use iot_core::DeviceId;

use super::sessions::DeviceSessions;
use super::{Via, lock_lost, with_session};
use crate::error::Error;
use crate::gateway::{SessionEvent, Subscription};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult, code};
use crate::http::extract::DevicePath;
use crate::http::state::HttpState;
use crate::inbox::Settlement as InboxSettlement;
use crate::message::{C2dDelivery, LockToken};

/// `GET /devices/{id}/messages/deviceBound`.
pub(super) async fn receive(
    caller: Caller,
    DevicePath(id): DevicePath,
    State(state): State<HttpState>,
    Extension(sessions): Extension<DeviceSessions>,
    via: Via,
) -> ApiResult<Response> {
    let id = caller.device(&id)?.clone();
    // Nothing waiting (locked messages count as waiting): answer at once without a session.
    if let Ok(0) = state.gateway().pending_c2d(&id).await {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let wait = state.config().c2d_receive_wait;
    let delivery = with_session(&sessions, &state, &id, &via, |session| async move {
        session.subscribe(Subscription::C2d).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // `next_event` is cancel safe: a lock taken after the deadline is handed out by
            // the next GET.
            match tokio::time::timeout_at(deadline, session.next_event()).await {
                Err(_) => return Ok(None),
                Ok(Ok(SessionEvent::C2d(delivery))) => return Ok(Some(delivery)),
                Ok(Ok(SessionEvent::Closed(reason))) => {
                    return Err(Error::SessionClosed {
                        device: session.device_id().clone(),
                        reason,
                    });
                }
                // The session subscribes to C2D only; nothing else is handed out.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    })
    .await?;
    Ok(match delivery {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(delivery) => message_response(&id, delivery),
    })
}

fn message_response(id: &DeviceId, d: C2dDelivery) -> Response {
    let mut response = Response::new(Body::from(d.payload.clone()));
    let headers = response.headers_mut();
    let mut put = |name: &str, value: &str| match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value.as_bytes()),
    ) {
        (Ok(name), Ok(value)) => {
            headers.append(name, value);
        }
        // Property names and values are checked when the message is sent; one that is still
        // not a valid header (a name with `(` or `"`) is left out rather than failing the GET.
        _ => tracing::warn!(device = %id, property = name, "property not sendable as a header"),
    };
    put("etag", &format!("\"{}\"", d.lock_token));
    put("iothub-messageid", &d.message_id);
    if let Some(v) = &d.correlation_id {
        put("iothub-correlationid", v);
    }
    put("iothub-to", &format!("/devices/{id}/messages/deviceBound"));
    put("iothub-expiry", &d.expires_at.to_rfc3339());
    put("iothub-enqueuedtime", &d.enqueued_at.to_rfc3339());
    put("iothub-deliverycount", &d.delivery_count.to_string());
    put("iothub-sequencenumber", &d.lock_token.sequence.to_string());
    put("iothub-ack", d.ack.as_str());
    if let Some(v) = &d.content_type {
        put("iothub-contenttype", v);
    }
    if let Some(v) = &d.content_encoding {
        put("iothub-contentencoding", v);
    }
    for (name, value) in &d.properties {
        put(&format!("iothub-app-{name}"), value);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

#[derive(Clone, Copy)]
enum Settlement {
    Complete,
    Reject,
    Abandon,
}

/// `DELETE /devices/{id}/messages/deviceBound/{etag}[?reject]`.
pub(super) async fn settle(
    caller: Caller,
    Path((id, etag)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    State(state): State<HttpState>,
    Extension(sessions): Extension<DeviceSessions>,
    via: Via,
) -> ApiResult<StatusCode> {
    let how = if query.contains_key("reject") {
        Settlement::Reject
    } else {
        Settlement::Complete
    };
    settle_with(caller, &id, &etag, &state, &sessions, via, how).await
}

/// `POST /devices/{id}/messages/deviceBound/{etag}/abandon`.
pub(super) async fn abandon(
    caller: Caller,
    Path((id, etag)): Path<(String, String)>,
    State(state): State<HttpState>,
    Extension(sessions): Extension<DeviceSessions>,
    via: Via,
) -> ApiResult<StatusCode> {
    settle_with(
        caller,
        &id,
        &etag,
        &state,
        &sessions,
        via,
        Settlement::Abandon,
    )
    .await
}

async fn settle_with(
    caller: Caller,
    id: &str,
    etag: &str,
    state: &HttpState,
    sessions: &DeviceSessions,
    via: Via,
    how: Settlement,
) -> ApiResult<StatusCode> {
    let id = caller.device(&device_id(id)?)?.clone();
    let token = lock_token(etag)?;
    let gateway = state.gateway();
    if gateway.settles_c2d_by_token() {
        // The lock token names the delivery: settle it in the inbox, leaving whichever session
        // holds it (this cache's, or the device's MQTT connection) in place.
        let settlement = match how {
            Settlement::Complete => InboxSettlement::Complete,
            Settlement::Reject => InboxSettlement::Reject,
            Settlement::Abandon => InboxSettlement::Abandon,
        };
        return match gateway.settle_c2d(&id, token, settlement).await {
            Ok(()) => Ok(StatusCode::NO_CONTENT),
            Err(Error::LockLost { .. }) => Err(lock_lost()),
            Err(e) => Err(e.into()),
        };
    }
    with_session(sessions, state, &id, &via, |session| async move {
        match how {
            Settlement::Complete => session.complete(token).await,
            Settlement::Reject => session.reject(token).await,
            Settlement::Abandon => session.abandon(token).await,
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn device_id(raw: &str) -> ApiResult<DeviceId> {
    DeviceId::new(raw).map_err(|e| ApiError::bad_request(format!("invalid device id: {e}")))
}

/// The lock token of an `ETag` path segment (quotes, if the client kept them, removed).
fn lock_token(etag: &str) -> ApiResult<LockToken> {
    let trimmed = etag.trim();
    let unquoted = trimmed
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(trimmed);
    unquoted.parse().map_err(|_| {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            code::LOCK_LOST,
            "the lock token is not one this hub handed out",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_parse_with_or_without_quotes() {
        let t = lock_token("\"7.2\"").expect("token");
        assert_eq!((t.sequence, t.delivery), (7, 2));
        assert!(lock_token("7.2").is_ok());
        let err = lock_token("nope").expect_err("bad token");
        assert_eq!(err.status, StatusCode::PRECONDITION_FAILED);
    }
}
