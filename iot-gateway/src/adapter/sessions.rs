//! Gateway sessions for connectionless protocols, opened by the token each request presents.
//!
//! The gateway's device-side door is a session ([`Gateway::connect`]), and a C2D message is
//! locked *to a session*: closing the session gives the message back. A protocol without
//! connections (CoAP over UDP, HTTP) must therefore keep a device's session open between
//! requests, or the request that completes a message would always find its lock gone. And it
//! must not open one per request: each `connect` takes over the last session.
//!
//! [`TokenSessions`] keeps one session per device together with the SAS token that opened it.
//! A request presenting the *same* token (compared in constant time) reuses the session; any
//! other token goes through [`Gateway::connect`], which verifies it against the identity store
//! and, if it is good, takes over. So every request is authenticated by the gateway, either
//! now or by the connect that opened the session with byte-for-byte the same token, and
//! whatever ends that session (expiry of the token, disabling, deleting or re-keying the
//! device, a connection over another protocol) makes the next request present its token to the
//! gateway again. A refused token never touches the cached session.
//!
//! A session without requests for [`idle`](TokenSessions::new) is closed (in the background,
//! while the cache lives). Tokens are zeroized when dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use iot_core::DeviceId;
use iot_identity::Presented;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::gateway::{DeviceSession, Gateway, SessionOptions};

/// A device's session as the cache shares it.
pub type SharedSession = Arc<dyn DeviceSession>;

struct Held {
    token: Zeroizing<String>,
    session: SharedSession,
}

struct Slot {
    /// The cached session; a std lock held only to read or swap it, so that a request with the
    /// cached token never waits behind a connect.
    held: Mutex<Option<Held>>,
    /// One connect at a time per device: two concurrent first requests would otherwise each
    /// open a session, and the second would take over the first.
    connecting: tokio::sync::Mutex<()>,
    last_used: Mutex<Instant>,
}

impl Slot {
    /// The cached session, if it was opened with `token` and is still open.
    fn cached(&self, token: &str) -> Option<SharedSession> {
        let held = lock(&self.held);
        let current = held.as_ref()?;
        let same_token: bool = current.token.as_bytes().ct_eq(token.as_bytes()).into();
        (same_token && current.session.close_reason().is_none()).then(|| current.session.clone())
    }
}

struct Inner {
    gateway: Arc<dyn Gateway>,
    slots: Mutex<HashMap<DeviceId, Arc<Slot>>>,
    idle: Duration,
    reaper_started: std::sync::atomic::AtomicBool,
}

/// One open gateway session per device, keyed by the token that opened it. Clones share the
/// cache.
#[derive(Clone)]
pub struct TokenSessions {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSessions")
            .field("devices", &lock(&self.inner.slots).len())
            .field("idle", &self.inner.idle)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a map that is still well formed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TokenSessions {
    /// A cache over `gateway` that closes a session after `idle` without a request. Make
    /// `idle` longer than the inbox's lock duration, so that a lock outlives the pause between
    /// receiving a message and settling it.
    pub fn new(gateway: Arc<dyn Gateway>, idle: Duration) -> Self {
        TokenSessions {
            inner: Arc::new(Inner {
                gateway,
                slots: Mutex::new(HashMap::new()),
                idle,
                reaper_started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The gateway sessions are opened on.
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.inner.gateway
    }

    /// The open session of `device` if `token` is the one it was opened with; otherwise a new
    /// session opened with `token` (taking over the cached one). `options` are used only when a
    /// session is opened; their `peer` is charged for a refused token.
    ///
    /// Errors are the gateway's: [`Error::Unauthorized`](crate::Error::Unauthorized) for a
    /// token it refuses, whatever the reason.
    pub async fn session(
        &self,
        device: &DeviceId,
        token: &str,
        options: SessionOptions,
    ) -> Result<SharedSession> {
        self.start_reaper();
        let slot = {
            let mut slots = lock(&self.inner.slots);
            slots
                .entry(device.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        held: Mutex::new(None),
                        connecting: tokio::sync::Mutex::new(()),
                        last_used: Mutex::new(Instant::now()),
                    })
                })
                .clone()
        };
        *lock(&slot.last_used) = Instant::now();
        if let Some(session) = slot.cached(token) {
            return Ok(session);
        }
        let _connecting = slot.connecting.lock().await;
        // A request with the same token may have connected while this one waited.
        if let Some(session) = slot.cached(token) {
            return Ok(session);
        }
        let session: SharedSession = Arc::from(
            self.inner
                .gateway
                .connect(device, Presented::SasToken(token), options)
                .await?,
        );
        *lock(&slot.held) = Some(Held {
            token: Zeroizing::new(token.to_owned()),
            session: session.clone(),
        });
        Ok(session)
    }

    /// Counts as a request of `device` for the idle timer: an adapter that holds a device's
    /// session for a long wait of its own (an observation, a long poll) keeps it open so.
    pub fn keep_alive(&self, device: &DeviceId) {
        if let Some(slot) = lock(&self.inner.slots).get(device) {
            *lock(&slot.last_used) = Instant::now();
        }
    }

    /// Closes every cached session (the adapter shuts down).
    pub async fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).drain().map(|(_, s)| s).collect();
        for slot in slots {
            let held = lock(&slot.held).take();
            if let Some(held) = held {
                held.session.close().await;
            }
        }
    }

    fn start_reaper(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(reap(Arc::downgrade(&self.inner)));
    }
}

/// Closes sessions idle for longer than the cache's `idle`, until the cache is dropped.
async fn reap(inner: Weak<Inner>) {
    let Some(idle) = inner.upgrade().map(|i| i.idle) else {
        return;
    };
    let period = (idle / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let expired: Vec<Arc<Slot>> = {
            let mut slots = lock(&inner.slots);
            let now = Instant::now();
            let ids: Vec<DeviceId> = slots
                .iter()
                .filter(|(_, slot)| now.duration_since(*lock(&slot.last_used)) > idle)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| slots.remove(id)).collect()
        };
        for slot in expired {
            let held = lock(&slot.held).take();
            if let Some(held) = held {
                tracing::debug!(device = %held.session.device_id(), "closing an idle adapter session");
                held.session.close().await;
            }
        }
    }
}
