//! One device's session: what it is subscribed to, the desired patches and method requests
//! waiting in it, and the `DeviceSession` an endpoint drives.
//!
//! `next_event` decides under the session's `flow` lock, without awaiting, what to hand out, so
//! it is cancel safe by construction: a future dropped at its only `.await` (waiting for a wake
//! or a lock to lapse) has changed nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Headers, Record, Timestamp, partition_for_key};
use iot_gateway::message::header;
use iot_gateway::twins::{DesiredPatch, Section, Twin, TwinSection};
use iot_gateway::{
    CloseReason, DeviceSession, Error, FeedbackStatus, LockToken, MethodCall, MethodRequest,
    MethodResponse, Result, SessionEvent, SessionOptions, Subscription, Telemetry, validate,
};
use iot_identity::{Authenticated, ETag, GenerationId};
use tokio::sync::Notify;

use super::gateway::{Core, check_method_response, lock};

/// How long past its expiry a SAS token's session lives: the verifier's default clock skew, so a
/// token accepted late is not cut at once.
const TOKEN_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Flow {
    closed: Option<CloseReason>,
    c2d: bool,
    desired: bool,
    methods: bool,
    desired_queue: VecDeque<DesiredPatch>,
    method_queue: VecDeque<MethodRequest>,
}

/// A session as the gateway lists it.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) id: u64,
    pub(crate) device: DeviceId,
    /// The identity's life and record version at authentication: a change to either revokes.
    pub(crate) generation: GenerationId,
    pub(crate) etag: ETag,
    auth_method: &'static str,
    model_id: Option<String>,
    c2d_window: usize,
    token_expires: Option<Timestamp>,
    flow: Mutex<Flow>,
    /// One waiter at a time (`next_event` is called from one task), so `notify_one`'s stored
    /// permit means no wake-up is lost between a check and the wait.
    wake: Notify,
}

impl SessionState {
    pub(crate) fn new(
        id: u64,
        who: &Authenticated,
        auth_method: &'static str,
        options: &SessionOptions,
    ) -> Self {
        SessionState {
            id,
            device: who.id.clone(),
            generation: who.generation_id,
            etag: who.etag,
            auth_method,
            model_id: options.model_id.clone(),
            c2d_window: options.c2d_window,
            token_expires: who.expires_at.map(|secs| {
                Timestamp::from_unix_millis(secs.saturating_mul(1000)).saturating_add(TOKEN_SKEW)
            }),
            flow: Mutex::default(),
            wake: Notify::new(),
        }
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.flow).closed.clone()
    }

    /// Marks the session closed, dropping what waits in it; false if it already was.
    pub(crate) fn mark_closed(&self, reason: CloseReason) -> bool {
        let mut flow = lock(&self.flow);
        if flow.closed.is_some() {
            return false;
        }
        *flow = Flow {
            closed: Some(reason),
            ..Flow::default()
        };
        drop(flow);
        self.wake();
        true
    }

    /// Queues a desired patch (subscribed or not: patches wait for the subscription). With
    /// `limit` waiting already, they fold into one full-document patch of `desired`, the section
    /// after `patch` (the caller holds the twins, so no newer patch can overtake this one).
    pub(crate) fn push_desired(&self, patch: DesiredPatch, desired: &TwinSection, limit: usize) {
        let mut flow = lock(&self.flow);
        if flow.closed.is_some() {
            return;
        }
        if flow.desired_queue.len() >= limit {
            flow.desired_queue.clear();
            let whole = DesiredPatch::full(desired.version, desired.properties.clone());
            flow.desired_queue.push_back(whole);
        } else {
            flow.desired_queue.push_back(patch);
        }
        drop(flow);
        self.wake();
    }

    /// Queues a method request if the session takes methods (`Ok(false)` if it does not).
    pub(crate) fn push_method(
        &self,
        request_id: u64,
        call: &MethodCall,
        limit: usize,
    ) -> Result<bool> {
        let mut flow = lock(&self.flow);
        if flow.closed.is_some() || !flow.methods {
            return Ok(false);
        }
        if flow.method_queue.len() >= limit {
            return Err(Error::QueueFull {
                device: self.device.clone(),
                queue: "method requests",
                limit,
            });
        }
        let request = MethodRequest::new(request_id, call.name.clone(), call.payload.clone());
        flow.method_queue.push_back(request);
        drop(flow);
        self.wake();
        Ok(true)
    }

    /// Drops a request that was not handed out (its call ended).
    pub(crate) fn forget_method(&self, request_id: u64) {
        lock(&self.flow)
            .method_queue
            .retain(|r| r.request_id != request_id);
    }
}

/// What the endpoint holds. Dropping it closes the session.
#[derive(Debug)]
pub(crate) struct MapSession {
    core: Arc<Core>,
    state: Arc<SessionState>,
}

impl MapSession {
    pub(crate) fn new(core: Arc<Core>, state: Arc<SessionState>) -> Self {
        MapSession { core, state }
    }

    fn closed(&self, reason: CloseReason) -> Error {
        Error::SessionClosed {
            device: self.state.device.clone(),
            reason,
        }
    }

    /// `SessionClosed` once the session is over; ends it first if its token expired.
    async fn ensure_open(&self) -> Result<()> {
        let expired = self
            .state
            .token_expires
            .is_some_and(|t| t <= Timestamp::now());
        if expired {
            self.core
                .close_session(&self.state, CloseReason::TokenExpired)
                .await;
        }
        match self.state.close_reason() {
            Some(reason) => Err(self.closed(reason)),
            None => Ok(()),
        }
    }

    /// The log record of `m`, validated and stamped from this session.
    fn record(&self, m: Telemetry) -> Result<Record> {
        let s = &m.system;
        let system = validate::check_system(&[
            (header::MESSAGE_ID, &s.message_id),
            (header::CORRELATION_ID, &s.correlation_id),
            (header::CONTENT_TYPE, &s.content_type),
            (header::CONTENT_ENCODING, &s.content_encoding),
            (header::USER_ID, &s.user_id),
            (header::INTERFACE_ID, &s.interface_id),
            (header::OUTPUT_NAME, &s.output_name),
            (header::COMPONENT, &s.component),
        ])?;
        let size = m.payload.len() + system + validate::check_properties(&m.properties)?;
        let limit = self.core.config.max_message_bytes;
        if size > limit {
            return Err(Error::TooLarge {
                what: "telemetry message",
                size,
                limit,
            });
        }
        let st = &self.state;
        let mut h = Headers::new();
        h.insert(header::DEVICE_ID, st.device.as_str());
        h.insert(header::AUTH_METHOD, st.auth_method);
        h.insert(header::AUTH_GENERATION_ID, st.generation.to_string());
        let accepted = Timestamp::now().as_unix_millis();
        h.insert(header::ENQUEUED_TIME, accepted.to_string());
        h.insert(header::MESSAGE_SOURCE, header::MESSAGE_SOURCE_TELEMETRY);
        if let Some(model) = &st.model_id {
            h.insert(header::MODEL_ID, model.as_str());
        }
        let s = m.system;
        for (name, value) in [
            (header::MESSAGE_ID, s.message_id),
            (header::CORRELATION_ID, s.correlation_id),
            (header::CONTENT_TYPE, s.content_type),
            (header::CONTENT_ENCODING, s.content_encoding),
            (header::USER_ID, s.user_id),
            (header::INTERFACE_ID, s.interface_id),
            (header::OUTPUT_NAME, s.output_name),
            (header::COMPONENT, s.component),
        ] {
            if let Some(value) = value {
                h.insert(name, value);
            }
        }
        if let Some(expiry) = s.expiry {
            h.insert(header::EXPIRY_TIME, expiry.as_unix_millis().to_string());
        }
        if m.will {
            h.insert(header::MESSAGE_TYPE, header::MESSAGE_TYPE_WILL);
        }
        for (name, value) in m.properties {
            h.insert(name, value);
        }
        let record = Record::new(st.device.as_str(), m.payload).with_headers(h);
        Ok(match m.device_time {
            Some(t) => record.with_device_time(t),
            None => record,
        })
    }

    /// Decides the next event without awaiting: `Ok(event)`, or `Err(deadline)` to wait for a
    /// wake-up or until `deadline` (a lock lapsing, the token expiring).
    fn poll_event(&self) -> std::result::Result<SessionEvent, Option<Timestamp>> {
        let st = &self.state;
        let mut flow = lock(&st.flow);
        if let Some(reason) = &flow.closed {
            return Ok(SessionEvent::Closed(reason.clone()));
        }
        if flow.methods {
            while let Some(request) = flow.method_queue.pop_front() {
                // Only requests whose call still waits; the device may then answer it.
                if let Some(p) = lock(&self.core.methods).get_mut(&request.request_id) {
                    p.handed_out = true;
                    return Ok(SessionEvent::Method(request));
                }
            }
        }
        if flow.desired
            && let Some(patch) = flow.desired_queue.pop_front()
        {
            return Ok(SessionEvent::DesiredPatch(patch));
        }
        let mut deadline = st.token_expires;
        if flow.c2d {
            // Under `flow`, so an `unsubscribe(C2d)` that returned is never followed by a lock.
            let found = lock(&self.core.inbox).lock_next(
                &st.device,
                st.id,
                st.c2d_window,
                Timestamp::now(),
                self.core.config.inbox,
            );
            self.core.report(found.removed);
            if let Some(delivery) = found.delivery {
                return Ok(SessionEvent::C2d(delivery));
            }
            deadline = match (deadline, found.next_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Err(deadline)
    }

    async fn settle(&self, token: LockToken, outcome: Option<FeedbackStatus>) -> Result<()> {
        self.ensure_open().await?;
        let st = &self.state;
        let removed = lock(&self.core.inbox).settle(&st.device, st.id, token, outcome)?;
        self.core.report(removed.into_iter().collect());
        // A settled message frees room in the window, or comes back.
        st.wake();
        Ok(())
    }

    fn set(&self, subscription: Subscription, on: bool) -> Vec<u64> {
        let mut flow = lock(&self.state.flow);
        match subscription {
            Subscription::C2d => flow.c2d = on,
            Subscription::DesiredPatches => flow.desired = on,
            Subscription::Methods => {
                flow.methods = on;
                if !on {
                    return flow.method_queue.drain(..).map(|r| r.request_id).collect();
                }
            }
            // A kind added later: this gateway does not deliver it.
            _ => {}
        }
        Vec::new()
    }
}

impl Drop for MapSession {
    fn drop(&mut self) {
        if self
            .core
            .end_session(&self.state, CloseReason::ClientClosed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (core, device) = (Arc::clone(&self.core), self.state.device.clone());
            rt.spawn(async move {
                core.connection_event(&device, "disconnected", Some("client-closed"))
                    .await;
            });
        }
    }
}

/// Sleeps until the wall-clock time `t`, or forever.
async fn sleep_until(t: Option<Timestamp>) {
    match t {
        Some(t) => {
            let now = Timestamp::now().as_unix_micros();
            let wait = t.as_unix_micros().saturating_sub(now);
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl DeviceSession for MapSession {
    fn device_id(&self) -> &DeviceId {
        &self.state.device
    }

    async fn send_telemetry(&self, message: Telemetry) -> Result<()> {
        self.ensure_open().await?;
        let record = self.record(message)?;
        let log = &self.core.telemetry;
        let partition = partition_for_key(self.state.device.as_str(), log.partition_count());
        log.append(partition, vec![record]).await?;
        Ok(())
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<()> {
        self.ensure_open().await?;
        self.set(subscription, true);
        self.state.wake();
        // Method calls waiting for this device look again.
        self.core.bump_sessions();
        Ok(())
    }

    async fn unsubscribe(&self, subscription: Subscription) -> Result<()> {
        self.ensure_open().await?;
        let queued = self.set(subscription, false);
        let mut methods = lock(&self.core.methods);
        for id in queued {
            if let Some(p) = methods.remove(&id) {
                let offline = Error::DeviceOffline {
                    device: self.state.device.clone(),
                };
                // The caller may have given up already.
                let _ = p.reply.send(Err(offline));
            }
        }
        Ok(())
    }

    async fn next_event(&self) -> Result<SessionEvent> {
        loop {
            if self.state.close_reason().is_none() {
                // Ends the session if its token expired.
                let _ = self.ensure_open().await;
            }
            match self.poll_event() {
                Ok(event) => return Ok(event),
                Err(deadline) => {
                    tokio::select! {
                        () = self.state.wake.notified() => {}
                        () = sleep_until(deadline) => {}
                    }
                }
            }
        }
    }

    async fn complete(&self, token: LockToken) -> Result<()> {
        self.settle(token, Some(FeedbackStatus::Success)).await
    }

    async fn abandon(&self, token: LockToken) -> Result<()> {
        self.settle(token, None).await
    }

    async fn reject(&self, token: LockToken) -> Result<()> {
        self.settle(token, Some(FeedbackStatus::Rejected)).await
    }

    async fn get_twin(&self) -> Result<Twin> {
        self.ensure_open().await?;
        let twins = lock(&self.core.twins);
        Ok(twins.get(&self.state.device).cloned().unwrap_or_default())
    }

    async fn patch_reported(&self, patch: serde_json::Value) -> Result<u64> {
        self.ensure_open().await?;
        let device = &self.state.device;
        let mut twins = lock(&self.core.twins);
        let twin = twins.get(device).cloned().unwrap_or_default().patched(
            device,
            Section::Reported,
            &patch,
            None,
            self.core.config.twin,
        )?;
        let version = twin.reported.version;
        twins.insert(device.clone(), twin);
        Ok(version)
    }

    async fn respond_method(&self, response: MethodResponse) -> Result<()> {
        self.ensure_open().await?;
        let device = &self.state.device;
        // Only a request this session was handed and that still waits for its answer.
        let pending = {
            let mut methods = lock(&self.core.methods);
            match methods.get(&response.request_id) {
                Some(p) if p.session == self.state.id && p.handed_out => {
                    methods.remove(&response.request_id)
                }
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return Err(Error::UnknownMethodRequest {
                device: device.clone(),
                request_id: response.request_id,
            });
        };
        if let Err(e) = check_method_response(&self.core, &response) {
            let refused = |reason: String| Error::InvalidMethodResponse {
                device: device.clone(),
                request_id: response.request_id,
                reason,
            };
            let _ = pending.reply.send(Err(refused(e.to_string())));
            return Err(refused(e.to_string()));
        }
        let _ = pending.reply.send(Ok(response));
        Ok(())
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.state.close_reason()
    }

    async fn close(&self) {
        self.core
            .close_session(&self.state, CloseReason::ClientClosed)
            .await;
    }
}
