//! IoT Hub's HTTPS device API: what a device calls with its own SAS token (or one signed by a
//! policy with `DeviceConnect`).
//!
//! | route | operation |
//! | --- | --- |
//! | `POST /devices/{id}/messages/events` | send telemetry, one message or a batch ([`events`]) |
//! | `GET /devices/{id}/messages/deviceBound` | receive the next C2D message, locked ([`bound`]) |
//! | `DELETE /devices/{id}/messages/deviceBound/{etag}` | complete it (`?reject`: reject) |
//! | `POST /devices/{id}/messages/deviceBound/{etag}/abandon` | abandon it |
//!
//! Each request is authenticated by [`Caller`](super::Caller) and must name the device its
//! token is for — or, over HTTPS without a token, the device its client certificate chain
//! proves. The hub is reached through a cached gateway session per device
//! ([`sessions`]), so that a C2D lock taken by one request can be settled by the next.

mod bound;
mod events;
mod sessions;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use iot_core::DeviceId;

use self::sessions::DeviceSessions;
use super::auth::ByCertificate;
use super::error::{ApiError, ApiResult, code};
use super::server::PeerAddr;
use super::state::HttpState;
use crate::error::Error;
use crate::gateway::DeviceSession;

pub use events::BATCH_CONTENT_TYPE;

/// Every device route, over [`HttpState`], with its own session cache. Wrap it with
/// [`with_common_layers`](super::with_common_layers) (as [`router`](super::router) does).
pub fn routes() -> Router<HttpState> {
    let sessions = DeviceSessions::default();
    let mut router = Router::new().route("/devices/{id}/messages/events", post(events::send));
    // IoT Hub matches paths without case; the Node SDK writes `devicebound`, the docs
    // `deviceBound`.
    for bound in ["deviceBound", "devicebound", "DeviceBound"] {
        router = router
            .route(
                &format!("/devices/{{id}}/messages/{bound}"),
                get(bound::receive),
            )
            .route(
                &format!("/devices/{{id}}/messages/{bound}/{{etag}}"),
                delete(bound::settle),
            )
            .route(
                &format!("/devices/{{id}}/messages/{bound}/{{etag}}/abandon"),
                post(bound::abandon),
            );
    }
    router.layer(Extension(sessions))
}

/// How a request reached the endpoint: its peer's address (recorded with the device's
/// session) and the certificate chain it authenticated with, if it did. Take it after
/// [`Caller`](super::Caller), which puts the chain there.
#[derive(Clone, Debug, Default)]
struct Via {
    peer: Option<IpAddr>,
    by_certificate: Option<ByCertificate>,
}

impl<S: Send + Sync> FromRequestParts<S> for Via {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Via {
            peer: parts.extensions.get::<PeerAddr>().map(|p| p.0.ip()),
            by_certificate: parts.extensions.get::<ByCertificate>().cloned(),
        })
    }
}

/// 412 `DeviceMessageLockLost`: the lock token is not the message's current lock.
fn lock_lost() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        code::LOCK_LOST,
        "the lock token is not held (settled, expired, or its session ended)",
    )
}

/// Runs `op` on the device's cached session. If the session turns out to have closed under the
/// cache (taken over, token expired), it is dropped and `op` runs once more on a new one.
async fn with_session<T, F, Fut>(
    sessions: &DeviceSessions,
    state: &HttpState,
    id: &DeviceId,
    via: &Via,
    op: F,
) -> ApiResult<T>
where
    F: Fn(Arc<dyn DeviceSession>) -> Fut,
    Fut: Future<Output = crate::Result<T>>,
{
    let mut retried = false;
    loop {
        let session = sessions
            .session(state, id, via.peer, via.by_certificate.as_ref())
            .await?;
        match op(session.clone()).await {
            Ok(value) => return Ok(value),
            Err(Error::SessionClosed { .. }) if !retried => {
                sessions.evict(&session).await;
                retried = true;
            }
            Err(Error::LockLost { .. }) => return Err(lock_lost()),
            Err(e) => return Err(e.into()),
        }
    }
}
