//! `HubSession`: one device's live session in a [`Hub`](super::Hub).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, EndpointId, ModuleId, Timestamp};
use iot_identity::{Authenticated, ETag, GenerationId};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::activity::LastActive;
use super::stamp::{AuthMethod, SessionStamps};
use super::stats::{InKind, OutKind};
use super::{HubInner, records};
use crate::error::{CloseReason, Error, Result};
use crate::events::EventKind;
use crate::gateway::{DeviceSession, SessionEvent, SessionOptions, Subscription};
use crate::inbox::{Locked, Settlement};
use crate::message::{C2dDelivery, LockToken, Telemetry};
use crate::method::{MethodRequest, MethodResponse};
use crate::sync_util::lock;
use crate::throttle::{Bucket, TelemetryThrottle};
use crate::twins::Section;
use crate::twins::{DesiredPatch, Twin};

/// What the hub knows about a session; shared between the session handle and the hub.
#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) id: u64,
    pub(crate) device: DeviceId,
    /// The module, for a module's session.
    pub(crate) module: Option<ModuleId>,
    /// Where the hub lists the session: the device, or the device and module.
    pub(crate) key: EndpointId,
    pub(crate) generation: GenerationId,
    pub(crate) etag: ETag,
    /// What its telemetry is stamped with: who, how it authenticated, which generation, which
    /// model it announced.
    stamps: SessionStamps,
    /// When the SAS token (plus skew) expires, if the credential was one.
    expires_at: Option<Timestamp>,
    window: usize,
    state: Mutex<SessionState>,
    telemetry_bucket: Mutex<Option<Bucket>>,
    wake: Notify,
    /// When the device last did something on this session (telemetry, settlements, reported
    /// patches, method answers).
    pub(crate) last_active: LastActive,
}

#[derive(Debug, Default)]
struct SessionState {
    closed: Option<CloseReason>,
    c2d: bool,
    desired: bool,
    methods: bool,
    /// C2D deliveries handed out (or being handed out) and not settled.
    in_flight: HashSet<LockToken>,
    /// Locks given back to the inbox (see `HubSession::release`) whose abandon has not been
    /// written yet. No new lookup starts meanwhile: it would skip the still-locked older message
    /// and hand out a newer one first.
    releasing: usize,
    desired_queue: VecDeque<DesiredPatch>,
    /// The desired queue overflowed: the next desired event is the whole section.
    desired_overflow: bool,
    method_queue: VecDeque<MethodRequest>,
    /// Requests handed out and not answered.
    methods_out: HashSet<u64>,
}

impl SessionShared {
    pub(crate) fn new(
        id: u64,
        who: Authenticated,
        module: Option<ModuleId>,
        auth_method: AuthMethod,
        options: SessionOptions,
        throttle: &TelemetryThrottle,
        skew: Duration,
    ) -> Self {
        let stamps = SessionStamps::new(
            &who.id,
            module.as_ref(),
            auth_method,
            who.generation_id,
            options.model_id.as_deref(),
        );
        SessionShared {
            id,
            key: EndpointId {
                device: who.id.clone(),
                module: module.clone(),
            },
            module,
            device: who.id,
            generation: who.generation_id,
            etag: who.etag,
            stamps,
            expires_at: who
                .expires_at
                .map(|s| Timestamp::from_unix_millis(s.saturating_mul(1000)).saturating_add(skew)),
            window: options.c2d_window.max(1),
            state: Mutex::new(SessionState::default()),
            telemetry_bucket: Mutex::new(throttle.device_bucket()),
            wake: Notify::new(),
            last_active: LastActive::default(),
        }
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Marks the session closed; returns the C2D locks it held, or `None` if it was closed
    /// already.
    pub(crate) fn mark_closed(&self, reason: CloseReason) -> Option<Vec<LockToken>> {
        let held = {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return None;
            }
            st.closed = Some(reason);
            st.method_queue.clear();
            st.desired_queue.clear();
            st.in_flight.drain().collect()
        };
        self.wake();
        Some(held)
    }

    /// Drops a delivery settled outside the session (see `settle.rs`) from the ones it holds,
    /// and wakes it so that the freed window slot is used.
    pub(crate) fn forget_delivery(&self, token: LockToken) {
        if lock(&self.state).in_flight.remove(&token) {
            self.wake();
        }
    }

    fn closed(&self) -> Option<CloseReason> {
        lock(&self.state).closed.clone()
    }

    pub(crate) fn takes_methods(&self) -> bool {
        let st = lock(&self.state);
        st.methods && st.closed.is_none()
    }

    pub(crate) fn push_desired(&self, patch: DesiredPatch, capacity: usize) {
        {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return;
            }
            if st.desired_overflow || st.desired_queue.len() >= capacity {
                st.desired_queue.clear();
                st.desired_overflow = true;
            } else {
                st.desired_queue.push_back(patch);
            }
        }
        self.wake();
    }

    pub(crate) fn push_method(&self, request: MethodRequest, capacity: usize) -> Result<()> {
        {
            let mut st = lock(&self.state);
            if st.closed.is_some() || !st.methods {
                return Err(Error::DeviceOffline {
                    device: self.device.clone(),
                });
            }
            if st.method_queue.len() >= capacity {
                return Err(Error::QueueFull {
                    device: self.device.clone(),
                    queue: "method requests",
                    limit: capacity,
                });
            }
            st.method_queue.push_back(request);
        }
        self.wake();
        Ok(())
    }

    /// Stops taking method requests; returns the ids of those queued and not handed out, which
    /// the caller fails.
    fn stop_methods(&self) -> Vec<u64> {
        let mut st = lock(&self.state);
        st.methods = false;
        st.method_queue.drain(..).map(|r| r.request_id).collect()
    }

    pub(crate) fn forget_method(&self, request_id: u64) {
        let mut st = lock(&self.state);
        st.method_queue.retain(|r| r.request_id != request_id);
        st.methods_out.remove(&request_id);
    }

    /// Hands a freshly locked message to the session, unless it closed meanwhile (then the
    /// caller releases it).
    fn adopt(&self, token: LockToken) -> bool {
        let mut st = lock(&self.state);
        st.closed.is_none() && st.in_flight.insert(token)
    }
}

/// The C2D lookup running for `next_event`, kept across cancellations.
#[derive(Debug, Default)]
struct EventState {
    lookup: Option<JoinHandle<Result<Lookup>>>,
    /// The last lookup found nothing: do not look again until woken or `next_due`.
    idle: bool,
    next_due: Option<Timestamp>,
}

#[derive(Debug)]
struct Lookup {
    locked: Option<Locked>,
    next_due: Option<Timestamp>,
}

/// The [`DeviceSession`] the hub hands out.
#[derive(Debug)]
pub(crate) struct HubSession {
    hub: Arc<HubInner>,
    shared: Arc<SessionShared>,
    events: tokio::sync::Mutex<EventState>,
}

impl HubSession {
    pub(crate) fn new(hub: Arc<HubInner>, shared: Arc<SessionShared>) -> Self {
        HubSession {
            hub,
            shared,
            events: tokio::sync::Mutex::new(EventState::default()),
        }
    }

    fn check_open(&self) -> Result<()> {
        match self.shared.closed() {
            Some(reason) => Err(Error::SessionClosed {
                device: self.shared.device.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Locks the next C2D message in a task of its own, so that cancelling `next_event` never
    /// loses a lock: the task adopts the message into the session (or releases it if the
    /// session closed) and writes feedback for messages it found expired or dead.
    fn spawn_lookup(&self) -> JoinHandle<Result<Lookup>> {
        let hub = self.hub.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let outcome = hub
                .inbox
                .lock_next(&shared.device, Timestamp::now(), hub.config.inbox)
                .await?;
            if let Err(e) = hub.report(&outcome.removed).await {
                // Nothing was adopted yet: give the lock back rather than strand it until it
                // lapses.
                if let Some(l) = &outcome.locked {
                    let _ = hub
                        .inbox
                        .settle(&shared.device, l.token, Settlement::Abandon)
                        .await;
                }
                return Err(e);
            }
            let mut locked = outcome.locked;
            if let Some(l) = &locked
                && !shared.adopt(l.token)
            {
                let _ = hub
                    .inbox
                    .settle(&shared.device, l.token, Settlement::Abandon)
                    .await;
                locked = None;
            }
            Ok(Lookup {
                locked,
                next_due: outcome.next_due,
            })
        })
    }

    /// Waits for a pending C2D lookup and gives back whatever it locked: the session stopped
    /// taking C2D messages, so nothing the lookup found may be handed out.
    ///
    /// Cancel safe: the handle is awaited by reference, so a cancelled call leaves the lookup
    /// for the next one.
    async fn discard_lookup(&self, ev: &mut EventState) {
        let Some(handle) = ev.lookup.as_mut() else {
            return;
        };
        let joined = handle.await;
        ev.lookup = None;
        ev.idle = false;
        match joined {
            Ok(Ok(Lookup {
                locked: Some(locked),
                ..
            })) => self.release(locked.token),
            Ok(Ok(_)) => {}
            // Nothing was adopted: a failed lookup holds no lock.
            Ok(Err(e)) => {
                debug!(device = %self.shared.device, error = %e, "discarded C2D lookup failed");
            }
            Err(e) => {
                warn!(device = %self.shared.device, error = %e, "discarded C2D lookup task failed");
            }
        }
    }

    /// Gives a lock this session took but never handed out back to the inbox. The settlement
    /// runs in a task of its own, so that no cancellation can strand the lock; it wakes the
    /// session when done, in case it subscribed again meanwhile.
    fn release(&self, token: LockToken) {
        {
            let mut st = lock(&self.shared.state);
            st.in_flight.remove(&token);
            st.releasing += 1;
        }
        let (hub, shared) = (self.hub.clone(), self.shared.clone());
        tokio::spawn(async move {
            match hub
                .inbox
                .settle(&shared.device, token, Settlement::Abandon)
                .await
            {
                Ok(removed) => {
                    if let Err(e) = hub.report(removed.as_slice()).await {
                        warn!(device = %shared.device, error = %e, "could not report a released C2D message");
                    }
                }
                // The lock lapsed or the session's close released it first.
                Err(Error::LockLost { .. }) => {}
                Err(e) => {
                    warn!(device = %shared.device, error = %e, "could not release a C2D lock; it lapses on expiry");
                }
            }
            {
                let mut st = lock(&shared.state);
                st.releasing = st.releasing.saturating_sub(1);
            }
            shared.wake();
        });
    }

    async fn settle(&self, token: LockToken, settlement: Settlement) -> Result<()> {
        self.check_open()?;
        self.shared.last_active.touch(Timestamp::now());
        let held = lock(&self.shared.state).in_flight.contains(&token);
        if !held {
            return Err(Error::LockLost {
                device: self.shared.device.clone(),
                token: token.to_string(),
            });
        }
        let result = self
            .hub
            .inbox
            .settle(&self.shared.device, token, settlement)
            .await;
        lock(&self.shared.state).in_flight.remove(&token);
        self.shared.wake();
        if let Some(removed) = result? {
            self.hub.report(std::slice::from_ref(&removed)).await?;
        }
        Ok(())
    }

    /// The next event for the device, not yet counted in the hub's statistics.
    async fn next_event_uncounted(&self) -> Result<SessionEvent> {
        let mut ev = self.events.lock().await;
        loop {
            if let Some(expiry) = self.shared.expires_at
                && Timestamp::now() >= expiry
            {
                self.hub
                    .close_session(&self.shared, CloseReason::TokenExpired)
                    .await;
            }
            let (subscribed, want_c2d, resync) = {
                let mut st = lock(&self.shared.state);
                if let Some(reason) = st.closed.clone() {
                    return Ok(SessionEvent::Closed(reason));
                }
                if st.methods
                    && let Some(request) = st.method_queue.pop_front()
                {
                    st.methods_out.insert(request.request_id);
                    return Ok(SessionEvent::Method(request));
                }
                if st.desired
                    && let Some(patch) = st.desired_queue.pop_front()
                {
                    return Ok(SessionEvent::DesiredPatch(patch));
                }
                let resync = st.desired && std::mem::take(&mut st.desired_overflow);
                let want = st.c2d
                    && (ev.lookup.is_some()
                        || (st.releasing == 0 && st.in_flight.len() < self.shared.window));
                (st.c2d, want, resync)
            };
            if !subscribed && ev.lookup.is_some() {
                // Only when unsubscribed from C2D: otherwise a pending lookup is always wanted.
                self.discard_lookup(&mut ev).await;
            }
            if resync {
                let twin = self.hub.twin_of(&self.shared.key).await?;
                return Ok(SessionEvent::DesiredPatch(DesiredPatch::full(
                    twin.desired.version,
                    twin.desired.properties,
                )));
            }
            if want_c2d && (ev.lookup.is_some() || !ev.idle) {
                let handle = match ev.lookup.as_mut() {
                    Some(h) => h,
                    None => ev.lookup.insert(self.spawn_lookup()),
                };
                // Awaiting by reference: if this call is cancelled here, the next one resumes.
                let joined = handle.await;
                ev.lookup = None;
                let lookup = joined.map_err(|e| {
                    Error::io("C2D lookup task", "", std::io::Error::other(e.to_string()))
                })??;
                if let Some(locked) = lookup.locked {
                    if !lock(&self.shared.state).c2d {
                        // Unsubscribed while the lookup ran: the message is not handed out.
                        self.release(locked.token);
                        continue;
                    }
                    return Ok(SessionEvent::C2d(C2dDelivery::from(locked)));
                }
                ev.idle = true;
                ev.next_due = lookup.next_due;
                continue;
            }
            let due = ev.next_due;
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = sleep_until(due) => ev.next_due = None,
                () = sleep_until(self.shared.expires_at) => {}
            }
            ev.idle = false;
        }
    }
}

/// Sleeps until `t` (wall clock), or forever for `None`.
async fn sleep_until(t: Option<Timestamp>) {
    match t {
        Some(t) => {
            let now = Timestamp::now().as_unix_micros();
            let wait = Duration::from_micros(t.as_unix_micros().saturating_sub(now));
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl DeviceSession for HubSession {
    fn device_id(&self) -> &DeviceId {
        &self.shared.device
    }

    fn module_id(&self) -> Option<&ModuleId> {
        self.shared.module.as_ref()
    }

    async fn send_telemetry(&self, message: Telemetry) -> Result<()> {
        self.check_open()?;
        let now = Timestamp::now();
        let stamp = self.shared.stamps.at(now);
        // Metered as IoT Hub meters it: payload and application properties.
        let size = message.payload.len()
            + message
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let record = records::telemetry(message, &stamp, self.hub.config.max_message_bytes)?;
        self.hub.stats.throttled(
            self.hub
                .telemetry_throttle
                .take(&self.shared.device, &self.shared.telemetry_bucket),
        )?;
        self.hub.telemetry.send(record).await?;
        self.hub
            .stats
            .message_in(InKind::Telemetry, size, Some(&self.shared.device));
        self.shared.last_active.touch(now);
        Ok(())
    }

    fn throttles_telemetry(&self) -> bool {
        self.hub.telemetry_throttle.limits()
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<()> {
        {
            let mut st = lock(&self.shared.state);
            if let Some(reason) = st.closed.clone() {
                return Err(Error::SessionClosed {
                    device: self.shared.device.clone(),
                    reason,
                });
            }
            match subscription {
                // IoT Hub sends cloud-to-device messages to devices only; a module's messages
                // come through its inputs, from IoT Edge's routes (which this hub has not).
                Subscription::C2d if self.shared.module.is_some() => {
                    return Err(Error::invalid(format!(
                        "module {} takes no cloud-to-device messages",
                        self.shared.key
                    )));
                }
                Subscription::C2d => st.c2d = true,
                Subscription::DesiredPatches => st.desired = true,
                Subscription::Methods => st.methods = true,
            }
        }
        self.shared.wake();
        self.hub.bump_sessions();
        Ok(())
    }

    async fn unsubscribe(&self, subscription: Subscription) -> Result<()> {
        self.check_open()?;
        match subscription {
            Subscription::C2d => {
                lock(&self.shared.state).c2d = false;
                // Deliveries already handed out stay in `in_flight`, so the device can still
                // settle them. A lookup left behind by a cancelled `next_event` may hold a lock
                // that was never handed out: give it back now if no `next_event` is running
                // (one that is running does it itself once woken below).
                if let Ok(mut ev) = self.events.try_lock() {
                    self.discard_lookup(&mut ev).await;
                }
            }
            // Patches keep queueing in the session, as before the first `subscribe`, so that a
            // later subscription misses no version.
            Subscription::DesiredPatches => lock(&self.shared.state).desired = false,
            Subscription::Methods => {
                let queued = self.shared.stop_methods();
                if !queued.is_empty() {
                    // Dropping the reply channels makes those invocations fail with
                    // `DeviceOffline`, as when a session closes with requests queued. A request
                    // can no longer reach this session: `push_method` checks the flag.
                    let mut pending = lock(&self.hub.methods);
                    for request_id in queued {
                        pending.remove(&request_id);
                    }
                }
            }
        }
        self.shared.wake();
        self.hub.bump_sessions();
        Ok(())
    }

    async fn next_event(&self) -> Result<SessionEvent> {
        let event = self.next_event_uncounted().await?;
        let out = match &event {
            SessionEvent::C2d(_) => Some(OutKind::C2d),
            SessionEvent::DesiredPatch(_) => Some(OutKind::DesiredPatch),
            SessionEvent::Method(_) => Some(OutKind::MethodRequest),
            _ => None,
        };
        if let Some(kind) = out {
            self.hub.stats.message_out(kind);
        }
        Ok(event)
    }

    async fn complete(&self, token: LockToken) -> Result<()> {
        self.settle(token, Settlement::Complete).await
    }

    async fn abandon(&self, token: LockToken) -> Result<()> {
        self.settle(token, Settlement::Abandon).await
    }

    async fn reject(&self, token: LockToken) -> Result<()> {
        self.settle(token, Settlement::Reject).await
    }

    async fn get_twin(&self) -> Result<Twin> {
        self.check_open()?;
        self.hub
            .stats
            .throttled(self.hub.twin_throttle.take(&self.shared.device))?;
        self.hub.twin_of(&self.shared.key).await
    }

    async fn patch_reported(&self, patch: Value) -> Result<u64> {
        self.check_open()?;
        self.shared.last_active.touch(Timestamp::now());
        self.hub
            .stats
            .throttled(self.hub.twin_throttle.take(&self.shared.device))?;
        let twin = self
            .hub
            .patch_twin_of(&self.shared.key, Section::Reported, &patch, None)
            .await?;
        let version = twin.reported.version;
        self.hub
            .twin_changes
            .send(records::twin_change(
                &self.hub.hub_name,
                &self.shared.key,
                EventKind::UpdateTwin,
                "reported",
                version,
                &patch,
            ))
            .await?;
        self.hub
            .stats
            .message_in(InKind::ReportedPatch, patch.to_string().len(), None);
        Ok(version)
    }

    async fn respond_method(&self, response: MethodResponse) -> Result<()> {
        self.check_open()?;
        self.shared.last_active.touch(Timestamp::now());
        let request_id = response.request_id;
        let unknown = || Error::UnknownMethodRequest {
            device: self.shared.device.clone(),
            request_id,
        };
        // Checked before taking any lock: parsing a large payload must not hold up the session
        // or the hub's method table.
        let refusal = super::check_json(
            "method response",
            &response.payload,
            self.hub.config.max_method_payload,
        )
        .err()
        .map(|e| match e {
            Error::InvalidInput { reason } => reason,
            other => other.to_string(),
        });
        if !lock(&self.shared.state).methods_out.remove(&request_id) {
            // Not (or no longer) ours: nothing is resolved, whatever the payload.
            return Err(unknown());
        }
        let pending = lock(&self.hub.methods).remove(&request_id);
        match pending {
            Some(p) if p.session == self.shared.id => {
                let refused = |reason: &str| Error::InvalidMethodResponse {
                    device: self.shared.device.clone(),
                    request_id,
                    reason: reason.to_owned(),
                };
                // A refused answer still ends the call: the invoker learns at once why, instead
                // of waiting out its timeout for an answer that will not come. The invoker may
                // have given up a moment ago; that is not the device's fault.
                self.hub.stats.message_in(
                    InKind::MethodResponse,
                    response.payload.len(),
                    Some(&self.shared.device),
                );
                match refusal {
                    None => {
                        let _ = p.reply.send(Ok(response));
                        Ok(())
                    }
                    Some(reason) => {
                        let _ = p.reply.send(Err(refused(&reason)));
                        Err(refused(&reason))
                    }
                }
            }
            _ => Err(unknown()),
        }
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closed()
    }

    async fn close(&self) {
        self.hub
            .close_session(&self.shared, CloseReason::ClientClosed)
            .await;
    }
}

impl Drop for HubSession {
    fn drop(&mut self) {
        if self.shared.closed().is_some() {
            return;
        }
        let (hub, shared) = (self.hub.clone(), self.shared.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(
                    async move { hub.close_session(&shared, CloseReason::ClientClosed).await },
                );
            }
            Err(_) => {
                // No runtime to write the event on: at least make the session unreachable and
                // its locks lapse on their own.
                if shared.mark_closed(CloseReason::ClientClosed).is_some() {
                    warn!(device = %shared.device, "session dropped outside a runtime; its C2D locks lapse on expiry");
                    let mut sessions = lock(&hub.sessions);
                    if sessions.get(&shared.key).is_some_and(|s| s.id == shared.id) {
                        sessions.remove(&shared.key);
                    }
                }
            }
        }
    }
}
