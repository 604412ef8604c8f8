//! `Hub`: the reference [`Gateway`](crate::Gateway) over a log, an identity store, an inbox and a twin store.

mod activity;
mod config;
mod gateway_impl;
mod hooks;
mod modules;
mod records;
mod session;
mod settle;
mod stamp;
pub mod stats;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use iot_core::{
    DeviceId, EndpointId, FileLogConfig, Log, PartitionId, Producer, Record, Timestamp, Topics,
};
use iot_identity::{
    Authenticator, CertificateAuthorities, ChangeEvent, ChangeKind, ChangeStream,
    DeviceConnectPolicies, DeviceStatus, FileModuleStore, FileModuleStoreConfig, IdentityStore,
    MemoryModuleStore, ModuleStore, SasVerifier,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::error::{CloseReason, Error, Result, ThrottledOperation};
use crate::inbox::{FileInbox, FileInboxConfig, InboxStore, MemoryInbox, Removed};
use crate::method::MethodResponse;
use crate::sync_util::lock;
use crate::throttle::{ConnectThrottle, DeviceThrottle, HubShare, TelemetryThrottle};
use crate::twins::{FileTwinStore, FileTwinStoreConfig, MemoryTwinStore, TwinStore};

pub use config::{HubConfig, topic};
pub use hooks::SessionObserver;
use modules::watch_modules;
use session::SessionShared;

/// The reference gateway.
///
/// Telemetry goes to the `telemetry` topic keyed (and so partitioned) by device id; twin changes,
/// connection events, C2D feedback and dead letters go to their own topics ([`topic`]). C2D
/// messages wait in an [`InboxStore`], twins live in a [`TwinStore`]. Devices authenticate
/// against an [`IdentityStore`], whose change stream the hub follows to cut the sessions of
/// disabled, deleted or re-keyed devices at once.
///
/// `Hub` is cheap to clone (all clones are one hub). Background tasks (the identity watcher and
/// the expiry sweep) run on the tokio runtime that built it and stop with
/// [`shutdown`](Hub::shutdown) or when the last clone is dropped.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_gateway::{C2dMessage, DeviceSession, Gateway, Hub, SessionEvent, SessionOptions, Subscription};
/// use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Presented, SymmetricKey};
///
/// let identities = Arc::new(MemoryIdentityStore::new());
/// let key = SymmetricKey::generate();
/// let id = "thermostat-1".parse()?;
/// identities.create(NewIdentity::new(id, Credentials::SymmetricKeys {
///     primary: key.clone(), secondary: SymmetricKey::generate(),
/// })).await?;
/// let hub = Hub::memory(identities, "hub.example.net").await?;
///
/// let device = "thermostat-1".parse()?;
/// hub.send_c2d(&device, C2dMessage::new("reboot")).await?;
/// let session = hub.connect(&device, Presented::SymmetricKey(&key.expose_base64()),
///     SessionOptions::default()).await?;
/// session.subscribe(Subscription::C2d).await?;
/// let SessionEvent::C2d(message) = session.next_event().await? else { panic!() };
/// assert_eq!(message.payload, "reboot");
/// session.complete(message.lock_token).await?;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// Builds a [`Hub`] from its parts; every part has an in-memory default.
#[derive(Debug)]
pub struct HubBuilder {
    identity: Arc<dyn IdentityStore>,
    host: String,
    topics: Option<Arc<Topics>>,
    inbox: Option<Arc<dyn InboxStore>>,
    twins: Option<Arc<dyn TwinStore>>,
    modules: Option<Arc<dyn ModuleStore>>,
    policies: Option<Arc<dyn DeviceConnectPolicies>>,
    authorities: Option<CertificateAuthorities>,
    observer: Option<Arc<dyn SessionObserver>>,
    config: HubConfig,
}

impl HubBuilder {
    /// Lets devices whose credentials are [`Credentials::CertificateAuthority`] connect with a
    /// certificate chain that leads to a CA `authorities` holds verified, with the device id
    /// as the leaf's common name (IoT Hub's X.509 CA authentication). The CAs are read at every
    /// connect: deleting one refuses its devices' next connection. Default: such devices are
    /// refused.
    ///
    /// [`Credentials::CertificateAuthority`]: iot_identity::Credentials::CertificateAuthority
    pub fn certificate_authorities(mut self, authorities: CertificateAuthorities) -> Self {
        self.authorities = Some(authorities);
        self
    }

    /// Also lets devices connect with SAS tokens signed by a shared access policy with the
    /// `DeviceConnect` right (`sr={host}/devices/{id}`, `skn={policy}`), as protocol gateways
    /// do — on every endpoint, since they all connect through [`Gateway::connect`]. Such a
    /// session ends when its token expires; rotating the policy's key refuses the next connect
    /// but does not cut sessions already open. Default: only the device's own credentials.
    ///
    /// [`Gateway::connect`]: crate::Gateway::connect
    pub fn device_connect_policies(mut self, policies: Arc<dyn DeviceConnectPolicies>) -> Self {
        self.policies = Some(policies);
        self
    }

    /// Uses `topics` for the log (default: in-memory topics).
    pub fn topics(mut self, topics: Arc<Topics>) -> Self {
        self.topics = Some(topics);
        self
    }

    /// Uses `inbox` for C2D messages (default: [`MemoryInbox`]).
    pub fn inbox(mut self, inbox: Arc<dyn InboxStore>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Uses `twins` for twins (default: [`MemoryTwinStore`]).
    pub fn twins(mut self, twins: Arc<dyn TwinStore>) -> Self {
        self.twins = Some(twins);
        self
    }

    /// Uses `modules` for module identities (default: [`MemoryModuleStore`]). Modules
    /// authenticate against it ([`Gateway::connect_module`](crate::Gateway::connect_module)),
    /// and the hub follows its changes to end the sessions of deleted or re-keyed modules.
    pub fn modules(mut self, modules: Arc<dyn ModuleStore>) -> Self {
        self.modules = Some(modules);
        self
    }

    /// Uses `config` (default: [`HubConfig::default`]).
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Opens the topics and starts the hub's background tasks (needs a tokio runtime with a
    /// timer).
    pub async fn build(self) -> Result<Hub> {
        let config = self.config;
        if config.inbox.max_depth == 0 || config.method_queue == 0 || config.desired_queue == 0 {
            return Err(Error::invalid("queue limits must be positive"));
        }
        let topics = self
            .topics
            .unwrap_or_else(|| Arc::new(Topics::memory(config.partitions)));
        let open = |name| topics.topic_with_partitions(name, config.partitions);
        let telemetry = Producer::new(open(topic::TELEMETRY).await?);
        let twin_changes = Producer::new(open(topic::TWIN_CHANGES).await?);
        let events = Producer::new(open(topic::CONNECTION_EVENTS).await?);
        let deadletter = Producer::new(open(topic::C2D_DEADLETTER).await?);
        let feedback = topics.topic_with_partitions(topic::C2D_FEEDBACK, 1).await?;
        // Subscribe before the hub exists, so no change made after `build` returns is missed.
        let changes = self.identity.subscribe();
        let modules = self
            .modules
            .unwrap_or_else(|| Arc::new(MemoryModuleStore::new()));
        let module_changes = modules.subscribe();
        let hub_share = HubShare::new();
        let mut auth = Authenticator::new(self.identity.clone(), self.host.clone()).with_verifier(
            SasVerifier {
                clock_skew: config.token_skew,
                ..SasVerifier::default()
            },
        );
        if let Some(policies) = self.policies {
            auth = auth.with_device_connect_policies(policies);
        }
        if let Some(authorities) = self.authorities.clone() {
            auth = auth.with_certificate_authorities(authorities);
        }
        let inner = Arc::new(HubInner {
            auth,
            identity: self.identity,
            authorities: self.authorities,
            hub_name: crate::events::hub_name(&self.host).to_owned(),
            event_seq: AtomicU64::new(0),
            host: self.host,
            telemetry,
            twin_changes,
            events,
            deadletter,
            feedback,
            inbox: self.inbox.unwrap_or_else(|| Arc::new(MemoryInbox::new())),
            twins: self
                .twins
                .unwrap_or_else(|| Arc::new(MemoryTwinStore::new())),
            modules,
            sessions: Mutex::new(HashMap::new()),
            activity: activity::ActivityLog::default(),
            connect_throttle: ConnectThrottle::new(config.throttle, &hub_share),
            telemetry_throttle: TelemetryThrottle::new(config.throttle, Arc::clone(&hub_share)),
            twin_throttle: DeviceThrottle::new(
                ThrottledOperation::Twin,
                config.throttle.device_twin,
                config.throttle.hub_twin,
                Arc::clone(&hub_share),
            ),
            method_throttle: DeviceThrottle::new(
                ThrottledOperation::Method,
                config.throttle.device_methods,
                config.throttle.hub_methods,
                Arc::clone(&hub_share),
            ),
            hub_share,
            stats: stats::HubStats::default(),
            topics: topics.clone(),
            methods: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            sessions_changed: watch::channel(0).0,
            desired_lock: tokio::sync::Mutex::new(()),
            feedback_completion: tokio::sync::Mutex::new(()),
            observer: self.observer,
            tasks: Mutex::new(Vec::new()),
            shut: AtomicBool::new(false),
            config,
        });
        let watcher = tokio::spawn(watch_identities(Arc::downgrade(&inner), changes));
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&inner)));
        // Retention of the hub's topics (none unless configured).
        let retention = iot_core::retention::spawn(topics.clone(), inner.config.retention.clone());
        let module_watcher = tokio::spawn(watch_modules(Arc::downgrade(&inner), module_changes));
        lock(&inner.tasks).extend([watcher, sweeper, retention, module_watcher]);
        Ok(Hub { inner })
    }
}

impl Hub {
    /// A builder for a hub of devices in `identity` at `host` (SAS tokens are scoped to
    /// `{host}/devices/{id}`).
    pub fn builder(identity: Arc<dyn IdentityStore>, host: impl Into<String>) -> HubBuilder {
        HubBuilder {
            identity,
            host: host.into(),
            topics: None,
            inbox: None,
            twins: None,
            modules: None,
            policies: None,
            authorities: None,
            observer: None,
            config: HubConfig::default(),
        }
    }

    /// A hub with everything but the identity store in memory, and the default configuration.
    pub async fn memory(identity: Arc<dyn IdentityStore>, host: impl Into<String>) -> Result<Hub> {
        Self::builder(identity, host).build().await
    }

    /// A hub with file-backed parts under `dir`: topics as `FileLog`s in `dir/log`, the inbox in
    /// `dir/inbox`, twins in `dir/twins`, module identities in `dir/modules` (all fsync before
    /// acknowledging). The inbox and twins
    /// open with `config.recovery`.
    pub async fn open_dir(
        dir: impl AsRef<Path>,
        identity: Arc<dyn IdentityStore>,
        host: impl Into<String>,
        config: HubConfig,
    ) -> Result<Hub> {
        Self::builder_in_dir(dir, identity, host, config)
            .await?
            .build()
            .await
    }

    /// The builder [`open_dir`](Self::open_dir) builds, with the file-backed parts already
    /// open, for a hub that needs more (for example
    /// [`device_connect_policies`](HubBuilder::device_connect_policies)).
    pub async fn builder_in_dir(
        dir: impl AsRef<Path>,
        identity: Arc<dyn IdentityStore>,
        host: impl Into<String>,
        config: HubConfig,
    ) -> Result<HubBuilder> {
        let dir = dir.as_ref();
        let topics = Topics::file(
            dir.join("log"),
            FileLogConfig::default().partitions(config.partitions),
        );
        let inbox = FileInboxConfig::default().recovery(config.recovery);
        let inbox = FileInbox::open(dir.join("inbox"), inbox).await?;
        let twins = FileTwinStoreConfig::default().recovery(config.recovery);
        let twins = FileTwinStore::open(dir.join("twins"), twins).await?;
        let modules = FileModuleStoreConfig::default().recovery(config.recovery);
        let modules = FileModuleStore::open(dir.join("modules"), modules)
            .await
            .map_err(Error::Identity)?;
        Ok(Self::builder(identity, host)
            .topics(Arc::new(topics))
            .inbox(Arc::new(inbox))
            .twins(Arc::new(twins))
            .modules(Arc::new(modules))
            .config(config))
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The host SAS tokens are scoped to.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The CAs CA-signed devices authenticate against
    /// ([`HubBuilder::certificate_authorities`]), if any.
    pub fn certificate_authorities(&self) -> Option<&CertificateAuthorities> {
        self.inner.authorities.as_ref()
    }

    /// The telemetry topic.
    pub fn telemetry_log(&self) -> &Arc<dyn Log> {
        self.inner.telemetry.log()
    }

    /// The twin-change topic.
    pub fn twin_changes_log(&self) -> &Arc<dyn Log> {
        self.inner.twin_changes.log()
    }

    /// The connection-event topic.
    pub fn connection_events_log(&self) -> &Arc<dyn Log> {
        self.inner.events.log()
    }

    /// The dead-letter topic.
    pub fn deadletter_log(&self) -> &Arc<dyn Log> {
        self.inner.deadletter.log()
    }

    /// The inbox store.
    pub fn inbox(&self) -> &Arc<dyn InboxStore> {
        &self.inner.inbox
    }

    /// The twin store.
    pub fn twins(&self) -> &Arc<dyn TwinStore> {
        &self.inner.twins
    }

    /// The topics the hub's logs live in (those of [`HubBuilder::topics`]).
    pub fn topics(&self) -> &Arc<Topics> {
        &self.inner.topics
    }

    /// A snapshot of the hub's counters and today's metering ([`stats`]).
    pub fn stats(&self) -> stats::StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The devices with an open session (of the device itself; module sessions are not listed).
    pub fn session_devices(&self) -> Vec<DeviceId> {
        lock(&self.inner.sessions)
            .keys()
            .filter(|k| k.module.is_none())
            .map(|k| k.device.clone())
            .collect()
    }

    /// Removes expired C2D messages now (and writes their feedback); the hub also does this
    /// every [`HubConfig::sweep_interval`].
    pub async fn purge_expired(&self) -> Result<usize> {
        self.inner.purge_expired().await
    }

    /// Stops accepting connections, closes every session with [`CloseReason::Shutdown`] and
    /// stops the background tasks.
    pub async fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::SeqCst);
        let sessions: Vec<_> = lock(&self.inner.sessions).values().cloned().collect();
        for s in sessions {
            self.inner.close_session(&s, CloseReason::Shutdown).await;
        }
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Forgets a method request when dropped (removing what is already gone is harmless).
struct ForgetMethod<'a> {
    hub: &'a HubInner,
    session: &'a SessionShared,
    request_id: u64,
}

impl Drop for ForgetMethod<'_> {
    fn drop(&mut self) {
        lock(&self.hub.methods).remove(&self.request_id);
        self.session.forget_method(self.request_id);
    }
}

struct PendingMethod {
    device: DeviceId,
    session: u64,
    /// The device's answer, or why it was refused ([`Error::InvalidMethodResponse`]).
    reply: oneshot::Sender<Result<MethodResponse>>,
}

#[derive(Debug)]
pub(crate) struct HubInner {
    config: HubConfig,
    auth: Authenticator,
    identity: Arc<dyn IdentityStore>,
    /// The verified CAs CA-signed devices authenticate against, when configured.
    authorities: Option<CertificateAuthorities>,
    host: String,
    /// `hubName` of the events the hub writes (`crate::events::hub_name` of `host`).
    hub_name: String,
    /// Orders connection state events (`sequenceNumber`) within one time tick.
    event_seq: AtomicU64,
    telemetry: Producer,
    twin_changes: Producer,
    events: Producer,
    deadletter: Producer,
    feedback: Arc<dyn Log>,
    inbox: Arc<dyn InboxStore>,
    twins: Arc<dyn TwinStore>,
    modules: Arc<dyn ModuleStore>,
    /// Live sessions of devices and of modules, each under its own key.
    sessions: Mutex<HashMap<EndpointId, Arc<SessionShared>>>,
    /// Connects, disconnects and last activity per device (see `activity.rs`).
    activity: activity::ActivityLog,
    connect_throttle: ConnectThrottle,
    telemetry_throttle: TelemetryThrottle,
    /// Twin reads and updates: a device's own operations take from its bucket and the hub's,
    /// the back end's from the hub's only.
    twin_throttle: DeviceThrottle,
    /// Direct-method invocations, per target device and hub-wide.
    method_throttle: DeviceThrottle,
    /// The part of the hub-wide quotas this hub enforces (1 unless it shares them with other
    /// hubs: `Hub::set_hub_quota_share`).
    hub_share: Arc<HubShare>,
    /// Counters and metering for operators (see `stats.rs`).
    stats: stats::HubStats,
    /// The topics the hub's logs are in (retention runs over them).
    topics: Arc<Topics>,
    methods: Mutex<HashMap<u64, PendingMethod>>,
    next_request: AtomicU64,
    next_session: AtomicU64,
    /// Bumped whenever a session opens, closes or subscribes, for method calls waiting for a
    /// device to come online.
    sessions_changed: watch::Sender<u64>,
    /// Serialises desired patches so sessions get them in version order.
    desired_lock: tokio::sync::Mutex<()>,
    /// Serialises completions of the feedback queue, so that its position never moves back.
    feedback_completion: tokio::sync::Mutex<()>,
    /// Told when sessions open and close (see `hooks.rs`).
    observer: Option<Arc<dyn SessionObserver>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut: AtomicBool,
}

impl std::fmt::Debug for PendingMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingMethod")
            .field("device", &self.device)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl HubInner {
    /// `DeviceNotFound` unless the identity store knows `device`: the service-side calls refuse
    /// to queue, patch or invoke anything for a device that cannot exist.
    async fn require_device(&self, device: &DeviceId) -> Result<()> {
        match self.identity.get(device).await.map_err(Error::Identity)? {
            Some(_) => Ok(()),
            None => Err(Error::DeviceNotFound {
                device: device.clone(),
            }),
        }
    }

    /// The live session of `device` itself (not of its modules).
    fn session_of(&self, device: &DeviceId) -> Option<Arc<SessionShared>> {
        self.endpoint_session(&EndpointId::device(device.clone()))
    }

    fn endpoint_session(&self, key: &EndpointId) -> Option<Arc<SessionShared>> {
        lock(&self.sessions).get(key).cloned()
    }

    fn bump_sessions(&self) {
        self.sessions_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Closes a session once: marks it, forgets it, fails its pending method calls, releases
    /// the C2D messages it held, and writes the disconnect event.
    pub(crate) async fn close_session(&self, s: &Arc<SessionShared>, reason: CloseReason) {
        // Forget it first, so that nobody who sees it closed still finds it listed.
        {
            let mut sessions = lock(&self.sessions);
            if sessions.get(&s.key).is_some_and(|cur| cur.id == s.id) {
                sessions.remove(&s.key);
            }
        }
        let Some(held) = s.mark_closed(reason.clone()) else {
            return;
        };
        lock(&self.methods).retain(|_, p| p.session != s.id);
        self.stats.closed();
        self.bump_sessions();
        // Observers follow device sessions (the cluster's presence); module sessions are
        // this hub's own.
        if let Some(observer) = self.observer.as_ref().filter(|_| s.module.is_none()) {
            observer.closed(&s.device, s.id, &reason);
        }
        for token in held {
            match self
                .inbox
                .settle(&s.device, token, crate::inbox::Settlement::Abandon)
                .await
            {
                Ok(_) | Err(Error::LockLost { .. }) => {}
                Err(e) => warn!(device = %s.device, error = %e, "could not release a C2D lock"),
            }
        }
        if s.module.is_none() {
            self.activity
                .disconnected(&s.device, Timestamp::now(), s.last_active.get());
        }
        let event = records::connection_event(
            &self.hub_name,
            &s.key,
            false,
            Some(reason.as_str()),
            self.event_seq.fetch_add(1, Ordering::Relaxed),
        );
        if let Err(e) = self.events.send(event).await {
            warn!(device = %s.key, error = %e, "could not write a disconnect event");
        }
        info!(device = %s.key, reason = %reason, "session closed");
    }

    /// Writes feedback and dead letters for messages that left the inbox.
    pub(crate) async fn report(&self, removed: &[Removed]) -> Result<()> {
        if removed.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let feedback: Vec<Record> = removed
            .iter()
            .filter_map(|r| records::feedback(r, now))
            .collect();
        let dead: Vec<Record> = removed.iter().filter_map(records::dead_letter).collect();
        if !feedback.is_empty() {
            self.feedback.append(PartitionId(0), feedback).await?;
        }
        if !dead.is_empty() {
            self.deadletter.send_batch(dead).await?;
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<usize> {
        let removed = self.inbox.purge_expired(Timestamp::now()).await?;
        self.report(&removed).await?;
        Ok(removed.len())
    }

    /// Closes the session of `device` if the identity store no longer lets it in.
    async fn recheck(&self, s: &Arc<SessionShared>) {
        if s.module.is_some() {
            return self.recheck_module(s).await;
        }
        let reason = match self.identity.get(&s.device).await {
            Ok(None) => Some(CloseReason::Deleted),
            Ok(Some(identity)) if identity.generation_id != s.generation => {
                Some(CloseReason::Deleted)
            }
            Ok(Some(identity)) => match identity.status {
                DeviceStatus::Disabled { .. } => Some(CloseReason::Disabled),
                // Written since authentication and enabled: the credentials were replaced (or
                // the device was disabled and enabled again, which revokes sessions too).
                DeviceStatus::Enabled if identity.etag != s.etag => {
                    Some(CloseReason::CredentialsReplaced)
                }
                DeviceStatus::Enabled => None,
            },
            Err(e) => {
                warn!(device = %s.device, error = %e, "could not re-check an identity");
                None
            }
        };
        if let Some(reason) = reason {
            self.close_session(s, reason).await;
        }
    }
}

/// Follows the identity store's changes and closes sessions they revoke.
async fn watch_identities(hub: Weak<HubInner>, mut changes: ChangeStream) {
    while let Some(event) = changes.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            ChangeEvent::Changed(change) => {
                if change.kind == ChangeKind::Deleted {
                    // Its modules go with it; their own changes end their sessions and twins.
                    if let Err(e) = hub.modules.delete_device(&change.id).await {
                        warn!(device = %change.id, error = %e, "could not remove a deleted device's modules");
                    }
                    if let Err(e) = hub.inbox.remove_device(&change.id).await {
                        warn!(device = %change.id, error = %e, "could not empty a deleted device's inbox");
                    }
                    if let Err(e) = hub.twins.remove(&change.id).await {
                        warn!(device = %change.id, error = %e, "could not remove a deleted device's twin");
                    }
                    hub.activity.forget(&change.id);
                }
                if !change.revokes_sessions() {
                    continue;
                }
                if change.kind != ChangeKind::CredentialsReplaced {
                    // A disabled (or deleted) device's modules may not stay connected; new
                    // device keys are not the modules' keys and leave them be.
                    hub.close_module_sessions(&change.id, &change.kind).await;
                }
                let Some(s) = hub.session_of(&change.id) else {
                    continue;
                };
                let reason = match change.kind {
                    ChangeKind::Deleted => CloseReason::Deleted,
                    ChangeKind::CredentialsReplaced => CloseReason::CredentialsReplaced,
                    _ => CloseReason::Disabled,
                };
                hub.close_session(&s, reason).await;
                if change.kind == ChangeKind::Deleted {
                    // Again after the close, which recorded the disconnect: a deleted device has
                    // no history, and one created again under its id starts without one.
                    hub.activity.forget(&change.id);
                }
            }
            ChangeEvent::Lagged { missed } => {
                warn!(
                    missed,
                    "identity changes were missed; re-checking every session"
                );
                let sessions: Vec<_> = lock(&hub.sessions).values().cloned().collect();
                for s in sessions {
                    hub.recheck(&s).await;
                }
            }
        }
    }
}

/// Purges expired C2D messages every `sweep_interval`.
async fn sweep(hub: Weak<HubInner>) {
    let period = match hub.upgrade() {
        Some(h) => h.config.sweep_interval.max(Duration::from_millis(10)),
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if let Err(e) = hub.purge_expired().await {
            warn!(error = %e, "expiry sweep failed");
        }
    }
}

pub(super) fn check_method_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'+'))
    {
        return Err(Error::invalid(
            "a method name is 1 to 128 printable ASCII characters without '/', '?', '#', '+'",
        ));
    }
    Ok(())
}

pub(super) fn check_json(what: &'static str, payload: &[u8], limit: usize) -> Result<()> {
    if payload.len() > limit {
        return Err(Error::TooLarge {
            what,
            size: payload.len(),
            limit,
        });
    }
    if !payload.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map_err(|e| Error::invalid(format!("the {what} is not JSON: {e}")))?;
    }
    Ok(())
}
