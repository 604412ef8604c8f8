//! The gateway's shared state and its service side (`Gateway`): every table a `Mutex<BTreeMap>`,
//! devices authenticated through `iot_identity::Authenticator`, telemetry in a `MemoryLog`.
//!
//! Lock order, where two are held at once: twins → sessions → a session's flow → methods, and
//! flow → inbox → feedback. No lock is held across an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use iot_core::{DeviceId, Log, MemoryLog, Record, Timestamp, partition_for_key};
use iot_gateway::inbox::{InboxMessage, Removed};
use iot_gateway::message::header;
use iot_gateway::twins::{DesiredPatch, Section, Twin, TwinLimits};
use iot_gateway::{
    C2dMessage, C2dReceipt, CloseReason, DeviceSession, Error, Feedback, Gateway, InboxLimits,
    MethodCall, MethodResponse, Result, SessionOptions, validate,
};
use iot_identity::{
    Authenticator, ChangeEvent, ChangeKind, ChangeStream, DeviceStatus, IdentityStore, Presented,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::session::{MapSession, SessionState};

/// What the gateway accepts; the suite is told the same through `testkit::Limits`.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) inbox: InboxLimits,
    pub(crate) twin: TwinLimits,
    /// Payload plus property names and values, for telemetry and C2D messages.
    pub(crate) max_message_bytes: usize,
    pub(crate) default_ttl: Duration,
    pub(crate) max_ttl: Duration,
    /// Method requests waiting in one session.
    pub(crate) method_queue: usize,
    /// Desired patches waiting in one session before they fold into the whole document.
    pub(crate) desired_queue: usize,
    pub(crate) max_method_payload: usize,
    pub(crate) max_method_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // A short lock and a small count, so the suite's lock-expiry and dead-letter checks
            // run rather than skip.
            inbox: InboxLimits::default()
                .lock_duration(Duration::from_millis(300))
                .max_delivery_count(3),
            twin: TwinLimits::default(),
            max_message_bytes: 64 * 1024,
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(48 * 3600),
            method_queue: 8,
            desired_queue: 8,
            max_method_payload: 64 * 1024,
            max_method_timeout: Duration::from_secs(120),
        }
    }
}

/// A method call waiting for the device's answer.
#[derive(Debug)]
pub(crate) struct PendingMethod {
    pub(crate) session: u64,
    /// Whether `next_event` gave it to the device (only then may the device answer it).
    pub(crate) handed_out: bool,
    /// Dropped without an answer when the session goes away: the caller reads `DeviceOffline`.
    pub(crate) reply: oneshot::Sender<Result<MethodResponse>>,
}

#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    auth: Authenticator,
    identity: Arc<dyn IdentityStore>,
    pub(crate) telemetry: Arc<dyn Log>,
    pub(crate) events: Arc<dyn Log>,
    pub(crate) sessions: Mutex<BTreeMap<DeviceId, Arc<SessionState>>>,
    pub(crate) inbox: Mutex<super::inbox::Inbox>,
    pub(crate) twins: Mutex<BTreeMap<DeviceId, Twin>>,
    pub(crate) methods: Mutex<BTreeMap<u64, PendingMethod>>,
    /// Feedback stream position → record.
    feedback: Mutex<BTreeMap<u64, Feedback>>,
    /// Every feedback record before this position was completed by a receiver.
    feedback_completed: AtomicU64,
    next_id: AtomicU64,
    /// Bumped when a session opens, closes or subscribes, for method calls waiting for one.
    pub(crate) sessions_changed: watch::Sender<u64>,
}

/// Locks a table; a poisoned one (a panic elsewhere) is still consistent, since every change
/// is made in one step under the lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn bump_sessions(&self) {
        self.sessions_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn require_device(&self, device: &DeviceId) -> Result<()> {
        match self.identity.get(device).await.map_err(Error::Identity)? {
            Some(_) => Ok(()),
            None => Err(Error::DeviceNotFound {
                device: device.clone(),
            }),
        }
    }

    /// Writes the feedback the senders of `removed` asked for.
    pub(crate) fn report(&self, removed: Vec<Removed>) {
        let now = Timestamp::now();
        let mut feedback = lock(&self.feedback);
        for r in removed {
            if !r.message.ack.wants(r.status) {
                continue;
            }
            let offset = feedback.last_key_value().map_or(0, |(&k, _)| k + 1);
            let record = Feedback::new(
                r.device,
                r.message.message_id,
                r.status,
                now,
                r.delivery_count,
            )
            .with_correlation_id(r.message.correlation_id)
            .with_offset(offset);
            feedback.insert(offset, record);
        }
    }

    /// Ends a session once: unlists it, marks it closed, fails its method calls and gives back
    /// the C2D messages it held. Returns whether this call ended it. Synchronous, so `Drop` can
    /// call it.
    pub(crate) fn end_session(&self, s: &SessionState, reason: CloseReason) -> bool {
        {
            let mut sessions = lock(&self.sessions);
            if sessions.get(&s.device).is_some_and(|cur| cur.id == s.id) {
                sessions.remove(&s.device);
            }
        }
        if !s.mark_closed(reason) {
            return false;
        }
        lock(&self.methods).retain(|_, p| p.session != s.id);
        lock(&self.inbox).release(&s.device, s.id);
        self.bump_sessions();
        true
    }

    /// Ends a session and writes its disconnect event.
    pub(crate) async fn close_session(&self, s: &SessionState, reason: CloseReason) {
        if self.end_session(s, reason.clone()) {
            self.connection_event(&s.device, "disconnected", Some(reason.as_str()))
                .await;
        }
    }

    pub(crate) async fn connection_event(
        &self,
        device: &DeviceId,
        event: &str,
        reason: Option<&str>,
    ) {
        let mut record =
            Record::new(device.as_str(), Bytes::new()).with_header(header::EVENT, event);
        if let Some(reason) = reason {
            record = record.with_header(header::REASON, reason);
        }
        let partition = partition_for_key(device.as_str(), self.events.partition_count());
        if let Err(e) = self.events.append(partition, vec![record]).await {
            tracing::warn!(device = %device, error = %e, "could not write a connection event");
        }
    }

    /// Closes the session of `s.device` if the identity store no longer lets it in (after a
    /// missed change, or a change racing the connect).
    async fn recheck(&self, s: &SessionState) {
        let reason = match self.identity.get(&s.device).await {
            Ok(None) => Some(CloseReason::Deleted),
            Ok(Some(id)) if id.generation_id != s.generation => Some(CloseReason::Deleted),
            Ok(Some(id)) => match id.status {
                DeviceStatus::Disabled { .. } => Some(CloseReason::Disabled),
                DeviceStatus::Enabled if id.etag != s.etag => {
                    Some(CloseReason::CredentialsReplaced)
                }
                DeviceStatus::Enabled => None,
            },
            Err(e) => {
                tracing::warn!(device = %s.device, error = %e, "could not re-check an identity");
                None
            }
        };
        if let Some(reason) = reason {
            self.close_session(s, reason).await;
        }
    }

    fn session_of(&self, device: &DeviceId) -> Option<Arc<SessionState>> {
        lock(&self.sessions).get(device).cloned()
    }
}

/// The out-of-crate gateway. Its identity watcher stops when it is dropped.
#[derive(Debug)]
pub(crate) struct MapGateway {
    core: Arc<Core>,
    watcher: JoinHandle<()>,
}

impl Drop for MapGateway {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl MapGateway {
    /// A gateway of the devices in `identity`, SAS tokens scoped to `host`. Needs a tokio
    /// runtime (it follows the identity store's changes on a task).
    pub(crate) fn new(
        identity: Arc<dyn IdentityStore>,
        host: &str,
        config: Config,
    ) -> Result<Self> {
        let telemetry: Arc<dyn Log> = Arc::new(MemoryLog::new(4)?);
        let events: Arc<dyn Log> = Arc::new(MemoryLog::new(4)?);
        // Subscribe before anyone can connect, so no change is missed.
        let changes = identity.subscribe();
        let core = Arc::new(Core {
            config,
            auth: Authenticator::new(Arc::clone(&identity), host),
            identity,
            telemetry,
            events,
            sessions: Mutex::default(),
            inbox: Mutex::default(),
            twins: Mutex::default(),
            methods: Mutex::default(),
            feedback: Mutex::default(),
            feedback_completed: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            sessions_changed: watch::channel(0).0,
        });
        let watcher = tokio::spawn(follow_identities(Arc::downgrade(&core), changes));
        Ok(MapGateway { core, watcher })
    }

    /// Where telemetry goes (what the suite's fixture reads).
    pub(crate) fn telemetry_log(&self) -> &Arc<dyn Log> {
        &self.core.telemetry
    }

    /// Where connect and disconnect events go.
    pub(crate) fn events_log(&self) -> &Arc<dyn Log> {
        &self.core.events
    }
}

/// Closes the sessions the identity store's changes revoke, and forgets deleted devices.
async fn follow_identities(core: Weak<Core>, mut changes: ChangeStream) {
    while let Some(event) = changes.recv().await {
        let Some(core) = core.upgrade() else { return };
        match event {
            ChangeEvent::Changed(change) => {
                if change.kind == ChangeKind::Deleted {
                    lock(&core.inbox).remove_device(&change.id);
                    lock(&core.twins).remove(&change.id);
                }
                if !change.revokes_sessions() {
                    continue;
                }
                let Some(s) = core.session_of(&change.id) else {
                    continue;
                };
                let reason = match change.kind {
                    ChangeKind::Deleted => CloseReason::Deleted,
                    ChangeKind::CredentialsReplaced => CloseReason::CredentialsReplaced,
                    _ => CloseReason::Disabled,
                };
                core.close_session(&s, reason).await;
            }
            ChangeEvent::Lagged { .. } => {
                let sessions: Vec<_> = lock(&core.sessions).values().cloned().collect();
                for s in sessions {
                    core.recheck(&s).await;
                }
            }
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidInput {
        reason: reason.into(),
    }
}

/// A JSON body of at most `limit` bytes (empty means `null`).
fn check_json(what: &'static str, payload: &[u8], limit: usize) -> Result<()> {
    if payload.len() > limit {
        return Err(Error::TooLarge {
            what,
            size: payload.len(),
            limit,
        });
    }
    if !payload.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map_err(|_| invalid(format!("the {what} is not JSON")))?;
    }
    Ok(())
}

pub(crate) fn check_method_response(core: &Core, r: &MethodResponse) -> Result<()> {
    check_json(
        "method response",
        &r.payload,
        core.config.max_method_payload,
    )
}

/// Removes a method call's traces however `invoke_method` ends (answer, timeout, cancel).
struct Forget<'a> {
    core: &'a Core,
    session: &'a SessionState,
    request_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.core.methods).remove(&self.request_id);
        self.session.forget_method(self.request_id);
    }
}

#[async_trait]
impl Gateway for MapGateway {
    async fn connect(
        &self,
        device: &DeviceId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        let core = &self.core;
        let who = core
            .auth
            .authenticate(device, credential)
            .await
            .map_err(|e| {
                if e.is_auth_failure() {
                    Error::Unauthorized {
                        device: device.clone(),
                        kind: e.kind(),
                    }
                } else {
                    Error::Identity(e)
                }
            })?;
        if options.c2d_window == 0 {
            return Err(invalid("the C2D window must be at least 1"));
        }
        // Non-empty, at most 4096 bytes, no control characters: a property value's rules.
        validate::check_system(&[(header::MODEL_ID, &options.model_id)])?;
        let state = Arc::new(SessionState::new(
            core.next_id(),
            &who,
            header::auth_method(&credential),
            &options,
        ));
        let older = lock(&core.sessions).insert(device.clone(), Arc::clone(&state));
        if let Some(older) = older {
            core.close_session(&older, CloseReason::TakenOver).await;
        }
        core.bump_sessions();
        core.connection_event(device, "connected", None).await;
        // A change made between the authentication and the listing was not seen by the watcher.
        core.recheck(&state).await;
        Ok(Box::new(MapSession::new(Arc::clone(core), state)))
    }

    async fn send_c2d(&self, device: &DeviceId, message: C2dMessage) -> Result<C2dReceipt> {
        let core = &self.core;
        let ttl = message.ttl.unwrap_or(core.config.default_ttl);
        if ttl.is_zero() || ttl > core.config.max_ttl {
            return Err(invalid(format!(
                "a TTL is more than zero and at most {:?}",
                core.config.max_ttl
            )));
        }
        let system = validate::check_system(&[
            (header::MESSAGE_ID, &message.message_id),
            (header::CORRELATION_ID, &message.correlation_id),
            (header::CONTENT_TYPE, &message.content_type),
            (header::CONTENT_ENCODING, &message.content_encoding),
        ])?;
        let size =
            message.payload.len() + system + validate::check_properties(&message.properties)?;
        if size > core.config.max_message_bytes {
            return Err(Error::TooLarge {
                what: "C2D message",
                size,
                limit: core.config.max_message_bytes,
            });
        }
        core.require_device(device).await?;
        let now = Timestamp::now();
        let message_id = message
            .message_id
            .unwrap_or_else(|| format!("c2d-{}-{}", now.as_unix_micros(), core.next_id()));
        let stored = InboxMessage::new(message_id.clone(), message.payload, now, ttl)
            .with_content(message.content_type, message.content_encoding)
            .with_properties(message.properties)
            .with_ack(message.ack);
        let stored = match message.correlation_id {
            Some(c) => stored.with_correlation_id(c),
            None => stored,
        };
        let expires_at = stored.expires_at;
        let removed = lock(&core.inbox).enqueue(device, stored, now, core.config.inbox)?;
        core.report(removed);
        if let Some(s) = core.session_of(device) {
            s.wake();
        }
        Ok(C2dReceipt {
            message_id,
            expires_at,
        })
    }

    async fn feedback_completed(&self) -> Result<u64> {
        Ok(self.core.feedback_completed.load(Ordering::Acquire))
    }

    async fn complete_feedback(&self, next: u64) -> Result<()> {
        // Not past the end of the feedback, and never back.
        let end = lock(&self.core.feedback)
            .last_key_value()
            .map_or(0, |(&k, _)| k + 1);
        self.core
            .feedback_completed
            .fetch_max(next.min(end), Ordering::AcqRel);
        Ok(())
    }

    async fn read_feedback(&self, from: u64, max: usize) -> Result<Vec<Feedback>> {
        // Expired messages nobody looked up yet get their feedback now, so readers see it.
        let removed = lock(&self.core.inbox).purge_expired(Timestamp::now());
        self.core.report(removed);
        let feedback = lock(&self.core.feedback);
        Ok(feedback
            .range(from..)
            .take(max)
            .map(|(_, f)| f.clone())
            .collect())
    }

    async fn get_twin(&self, device: &DeviceId) -> Result<Twin> {
        self.core.require_device(device).await?;
        Ok(lock(&self.core.twins)
            .get(device)
            .cloned()
            .unwrap_or_default())
    }

    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: serde_json::Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        let core = &self.core;
        core.require_device(device).await?;
        // Held while the patch is pushed, so sessions get patches in version order.
        let mut twins = lock(&core.twins);
        let twin = twins.get(device).cloned().unwrap_or_default().patched(
            device,
            Section::Desired,
            &patch,
            if_version,
            core.config.twin,
        )?;
        twins.insert(device.clone(), twin.clone());
        if let Some(s) = lock(&core.sessions).get(device) {
            let step = DesiredPatch::new(twin.desired.version, patch);
            s.push_desired(step, &twin.desired, core.config.desired_queue);
        }
        Ok(twin)
    }

    async fn invoke_method(&self, device: &DeviceId, call: MethodCall) -> Result<MethodResponse> {
        let core = &self.core;
        let name_ok = (1..=128).contains(&call.name.len())
            && call.name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if !name_ok {
            return Err(invalid(
                "a method name is 1 to 128 printable ASCII characters, no '/'",
            ));
        }
        check_json(
            "method payload",
            &call.payload,
            core.config.max_method_payload,
        )?;
        let longest = core.config.max_method_timeout;
        if call.response_timeout > longest || call.connect_timeout > longest {
            return Err(invalid(format!("method timeouts are at most {longest:?}")));
        }
        core.require_device(device).await?;
        let offline = || Error::DeviceOffline {
            device: device.clone(),
        };
        let deadline = tokio::time::Instant::now() + call.connect_timeout;
        let mut changed = core.sessions_changed.subscribe();
        let request_id = core.next_id();
        // Wait for a session that takes methods, and queue the request in it. The call is
        // listed before the request is queued, so the device can answer it at once.
        let (session, answer) = loop {
            if let Some(s) = core.session_of(device) {
                let (reply, answer) = oneshot::channel();
                let pending = PendingMethod {
                    session: s.id,
                    handed_out: false,
                    reply,
                };
                lock(&core.methods).insert(request_id, pending);
                let queued = s.push_method(request_id, &call, core.config.method_queue);
                if !matches!(queued, Ok(true)) {
                    lock(&core.methods).remove(&request_id);
                }
                if queued? {
                    break (s, answer);
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(offline());
            }
        };
        let _forget = Forget {
            core,
            session: &session,
            request_id,
        };
        match tokio::time::timeout(call.response_timeout, answer).await {
            Ok(Ok(answer)) => answer,
            // The session closed or stopped taking methods before answering.
            Ok(Err(_)) => Err(offline()),
            Err(_) => Err(Error::TimedOut {
                device: device.clone(),
                operation: "method response",
                after: call.response_timeout,
            }),
        }
    }

    async fn connected_devices(&self) -> Result<Vec<DeviceId>> {
        Ok(lock(&self.core.sessions).keys().cloned().collect())
    }
}
