//! How an HTTP device reaches the hub: a small cache of gateway sessions, one per device.
//!
//! The gateway's device-side door is a session ([`Gateway::connect`]). HTTP has no connection to
//! hang one on, and a session per request would not do: a C2D message locked by
//! `GET …/deviceBound` is locked *to a session*, and closing the session gives it back, so the
//! `DELETE` that completes it would always find the lock gone. So the endpoint keeps each
//! device's session open between requests and closes it after
//! [`HttpConfig::device_session_idle`](crate::http::HttpConfig::device_session_idle) without
//! one (longer than the inbox's lock, so a lock outlives the pause between `GET` and `DELETE`).
//!
//! Requests are authenticated by [`Caller`](crate::http::Caller) before they reach the cache;
//! the session itself is opened with a short SAS token the endpoint signs with the device's own
//! key (scoped to `{host}/devices/{id}`, as the hub's authenticator wants), so a request
//! authenticated with a `DeviceConnect` policy or with a token signed for `host:port` opens the
//! same kind of session. A request authenticated by its client certificate chain (over HTTPS,
//! see [`Caller`](crate::http::Caller)) opens it with that chain instead, as an MQTT device
//! would; an X.509 device (thumbprint or CA-signed) therefore uses the device API with its
//! certificate, and cannot with a token (it has no key to sign one).
//!
//! A session closed under the cache (the device connected over MQTT and took it over, was
//! disabled, deleted or re-keyed) is dropped and the next request opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use iot_core::DeviceId;
use iot_identity::{Credentials, Presented, sas};

use crate::error::Error;
use crate::gateway::{DeviceSession, SessionOptions};
use crate::http::auth::ByCertificate;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::HttpState;

/// How long the token a cached session is opened with lives. The hub ends a session when its
/// token expires; the cache then opens a new one on the next request.
const SESSION_TOKEN_LIFETIME: u64 = 3600;

type Shared = Arc<dyn DeviceSession>;

struct Slot {
    session: tokio::sync::Mutex<Option<Shared>>,
    last_used: Mutex<Instant>,
}

/// The cache (one per router; clones share it).
#[derive(Clone, Default)]
pub(crate) struct DeviceSessions {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: Mutex<HashMap<DeviceId, Arc<Slot>>>,
    reaper_started: AtomicBool,
}

impl std::fmt::Debug for DeviceSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSessions")
            .field("devices", &lock(&self.inner.slots).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DeviceSessions {
    /// The open session of `id`, opening one if there is none (or the cached one closed).
    pub(crate) async fn session(
        &self,
        state: &HttpState,
        id: &DeviceId,
        peer: Option<std::net::IpAddr>,
        by_certificate: Option<&ByCertificate>,
    ) -> ApiResult<Shared> {
        self.start_reaper(state.config().device_session_idle);
        let slot = {
            let mut slots = lock(&self.inner.slots);
            slots
                .entry(id.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        session: tokio::sync::Mutex::new(None),
                        last_used: Mutex::new(Instant::now()),
                    })
                })
                .clone()
        };
        *lock(&slot.last_used) = Instant::now();
        // One connect at a time per device: two concurrent first requests would otherwise each
        // open a session, and the second would take over the first.
        let mut held = slot.session.lock().await;
        if let Some(session) = held.as_ref() {
            if session.close_reason().is_none() {
                return Ok(session.clone());
            }
            tracing::debug!(device = %id, reason = ?session.close_reason(), "cached session closed");
        }
        let session: Shared = Arc::from(open(state, id, peer, by_certificate).await?);
        *held = Some(session.clone());
        Ok(session)
    }

    /// Forgets `session` if it is still the one cached for its device (it closed).
    pub(crate) async fn evict(&self, session: &Shared) {
        let slot = lock(&self.inner.slots).get(session.device_id()).cloned();
        if let Some(slot) = slot {
            let mut held = slot.session.lock().await;
            if held.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
                *held = None;
            }
        }
    }

    fn start_reaper(&self, idle: Duration) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(reap(weak, idle));
    }
}

/// Closes sessions idle for longer than `idle`, until the cache is dropped.
async fn reap(inner: Weak<Inner>, idle: Duration) {
    let period = (idle / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let expired: Vec<(DeviceId, Arc<Slot>)> = {
            let mut slots = lock(&inner.slots);
            let now = Instant::now();
            let ids: Vec<DeviceId> = slots
                .iter()
                .filter(|(_, slot)| now.duration_since(*lock(&slot.last_used)) > idle)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| slots.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in expired {
            let session = slot.session.lock().await.take();
            if let Some(session) = session {
                tracing::debug!(device = %id, "closing an idle HTTP device session");
                session.close().await;
            }
        }
    }
}

/// Opens a session of `id`: with the request's certificate chain when it authenticated with
/// one, else with a token signed by one of the device's own keys.
async fn open(
    state: &HttpState,
    id: &DeviceId,
    peer: Option<std::net::IpAddr>,
    by_certificate: Option<&ByCertificate>,
) -> ApiResult<Box<dyn DeviceSession>> {
    let options = SessionOptions {
        peer,
        ..SessionOptions::default()
    };
    if let Some(ByCertificate(chain)) = by_certificate {
        return connect(
            state,
            id,
            Presented::CertificateChain(chain.certificates()),
            options,
        )
        .await;
    }
    let identity = state
        .identity()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::device_not_found(id.as_str()))?;
    let Credentials::SymmetricKeys { primary, .. } = &identity.credentials else {
        return Err(ApiError::unauthorized(
            "an X.509 device authenticates to the HTTP device API with its client certificate",
        ));
    };
    let token = sas::generate(
        &sas::device_resource(state.host(), id),
        primary,
        sas::unix_now() + SESSION_TOKEN_LIFETIME,
        None,
    )
    .map_err(|e| ApiError::internal(false, "signing a session token", &e))?;
    connect(state, id, Presented::SasToken(token.as_str()), options).await
}

async fn connect(
    state: &HttpState,
    id: &DeviceId,
    presented: Presented<'_>,
    options: SessionOptions,
) -> ApiResult<Box<dyn DeviceSession>> {
    state
        .gateway()
        .connect(id, presented, options)
        .await
        .map_err(|e| match e {
            // The request's own credential was good: a refusal here means the device changed
            // (disabled, re-keyed, its CA deleted) since, which the device should hear as 401.
            Error::Unauthorized { .. } => ApiError::unauthorized("the device may not connect"),
            other => other.into(),
        })
}
