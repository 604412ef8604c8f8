//! The state every handler shares.

use std::fmt;
use std::sync::Arc;

use std::sync::OnceLock;

use iot_core::Log;
use iot_identity::access::{AccessControl, SubscriptionStore};
use iot_identity::ca::CertificateAuthorities;
use iot_identity::{IdentityStore, ModuleStore};
use iot_provisioning::Provisioning;
use iot_registry::Registry;
use tokio_util::sync::CancellationToken;

use super::config::HttpConfig;
use super::login_throttle::LoginThrottle;
use super::policy::PolicyStore;
use super::token_cache::TokenCache;
use crate::gateway::Gateway;

/// What the HTTP handlers reach: the gateway (sessions, twins, methods, C2D), provisioning (the
/// one writer of identities and registry records), the registry (reads and queries), the
/// identity store (reads: a device's keys for `GET /devices/{id}`, device SAS checks), the
/// shared access policies, the host name tokens are scoped to, and the configuration.
///
/// Cloning is cheap (one `Arc`). Each part is a trait object, so any implementation of the
/// SDK's traits serves the same API.
#[derive(Clone)]
pub struct HttpState(Arc<Inner>);

struct Inner {
    gateway: Arc<dyn Gateway>,
    provisioning: Arc<dyn Provisioning>,
    registry: Arc<dyn Registry>,
    identity: Arc<dyn IdentityStore>,
    policies: Arc<PolicyStore>,
    host: String,
    config: HttpConfig,
    tokens: TokenCache,
    /// The CA certificates the `/certificates` routes manage, when set.
    authorities: OnceLock<CertificateAuthorities>,
    /// Module identities, once set ([`HttpState::with_modules`]).
    modules: OnceLock<Arc<dyn ModuleStore>>,
    /// The access matrix user sessions are checked against, once set
    /// ([`HttpState::with_access`]).
    access: OnceLock<AccessControl>,
    /// Users' alert subscriptions, once set ([`HttpState::with_subscriptions`]).
    subscriptions: OnceLock<Arc<dyn SubscriptionStore>>,
    /// Failed-login budgets of `POST /auth/login`.
    logins: LoginThrottle,
    /// The telemetry log of `GET /devices/{id}/telemetry/stream`, once set.
    telemetry_stream: OnceLock<Arc<dyn Log>>,
    /// The alerts topic of `GET /alerts/stream`, once set.
    alerts_stream: OnceLock<Arc<dyn Log>>,
    /// Cancelled by [`HttpState::close_streams`]: every live stream ends.
    streams_closed: CancellationToken,
    /// Jobs and configurations, once set ([`HttpState::with_fleet`]).
    fleet: OnceLock<crate::fleet::Fleet>,
}

impl fmt::Debug for HttpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpState")
            .field("host", &self.0.host)
            .field("gateway", &self.0.gateway)
            .finish_non_exhaustive()
    }
}

/// A state that does not keep its parts alive: the fleet engines' way back to the state that
/// holds them (a twin job's tag change re-evaluates configurations) without a cycle.
#[derive(Clone)]
pub(crate) struct WeakState(std::sync::Weak<Inner>);

impl WeakState {
    /// The state, while something else holds it.
    pub(crate) fn upgrade(&self) -> Option<HttpState> {
        self.0.upgrade().map(HttpState)
    }
}

impl fmt::Debug for WeakState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakState")
    }
}

impl HttpState {
    /// The state over these parts. `registry` and `identity` must be the stores `provisioning`
    /// writes (the handlers read them directly and write only through `provisioning`); `host` is
    /// the hub's host name as tokens name it (`localhost`, `hub.example.net`), without a port.
    pub fn new(
        gateway: Arc<dyn Gateway>,
        provisioning: Arc<dyn Provisioning>,
        registry: Arc<dyn Registry>,
        identity: Arc<dyn IdentityStore>,
        policies: Arc<PolicyStore>,
        host: impl Into<String>,
        config: HttpConfig,
    ) -> Self {
        HttpState(Arc::new(Inner {
            gateway,
            provisioning,
            registry,
            identity,
            policies,
            host: host.into(),
            tokens: TokenCache::new(config.token_cache_size),
            logins: LoginThrottle::new(config.login_limit),
            authorities: OnceLock::new(),
            config,
            modules: std::sync::OnceLock::new(),
            access: OnceLock::new(),
            telemetry_stream: OnceLock::new(),
            alerts_stream: OnceLock::new(),
            streams_closed: CancellationToken::new(),
            fleet: OnceLock::new(),
            subscriptions: OnceLock::new(),
        }))
    }

    /// Serves IoT Hub's `/jobs/v2` and `/configurations` routes over `fleet` (see
    /// [`crate::fleet`] and [`fleet_devices`](Self::fleet_devices) for the engines' view of
    /// the devices). Without it those routes answer 404. Set once; later calls change nothing.
    pub fn with_fleet(self, fleet: crate::fleet::Fleet) -> Self {
        let _ = self.0.fleet.set(fleet);
        self
    }

    /// The fleet engines, if [`with_fleet`](Self::with_fleet) gave them.
    pub fn fleet(&self) -> Option<&crate::fleet::Fleet> {
        self.0.fleet.get()
    }

    /// The devices as the fleet engines see them: queries in IoT Hub's language answered as
    /// `POST /devices/query` answers them, methods through the gateway, twin writes as
    /// `PATCH /twins/{id}` makes them. It holds a copy of this state's parts without the fleet,
    /// so engines and state do not hold each other.
    pub fn fleet_devices(&self) -> std::sync::Arc<dyn crate::fleet::FleetDevices> {
        let copy = HttpState::new(
            self.0.gateway.clone(),
            self.0.provisioning.clone(),
            self.0.registry.clone(),
            self.0.identity.clone(),
            self.0.policies.clone(),
            self.0.host.clone(),
            self.0.config.clone(),
        );
        if let Some(modules) = self.modules() {
            let _ = copy.0.modules.set(modules.clone());
        }
        std::sync::Arc::new(
            super::service::HubDevices::new(copy).notifying(WeakState(Arc::downgrade(&self.0))),
        )
    }

    /// Serves the module routes (`/devices/{id}/modules/…`, `/twins/{id}/modules/…`) over
    /// `modules`, the store the gateway authenticates modules against (a [`Hub`]'s
    /// [`modules`](crate::Hub::modules)). Without it those routes answer 404 `ModuleNotFound`.
    /// Set once: a second call keeps the first store.
    ///
    /// [`Hub`]: crate::Hub
    pub fn with_modules(self, modules: Arc<dyn ModuleStore>) -> Self {
        let _ = self.0.modules.set(modules);
        self
    }

    /// Accepts user sessions of `access` (`Authorization: Bearer {token}`) beside shared access
    /// policies, each route checked against the access matrix (see
    /// [`user_access`](super::user_access)). Set once; later calls change nothing.
    pub fn with_access(self, access: AccessControl) -> Self {
        let _ = self.0.access.set(access);
        self
    }

    /// Serves `GET /devices/{id}/telemetry/stream` (Server-Sent Events, see
    /// [`live`](super::live)) over `log`, the gateway's telemetry log (a [`Hub`]'s
    /// [`telemetry_log`](crate::Hub::telemetry_log)). Without it the route answers 404. Set once.
    ///
    /// [`Hub`]: crate::Hub
    pub fn with_telemetry_stream(self, log: Arc<dyn Log>) -> Self {
        let _ = self.0.telemetry_stream.set(log);
        self
    }

    /// Serves `GET /alerts/stream` (Server-Sent Events) over `log`, the topic a rule writes its
    /// alerts to. Without it the route answers 404. Set once.
    pub fn with_alerts_stream(self, log: Arc<dyn Log>) -> Self {
        let _ = self.0.alerts_stream.set(log);
        self
    }

    /// Ends every live stream now, and each one opened later at once: call it before
    /// [`HttpServer::shutdown`](super::HttpServer::shutdown), whose graceful shutdown otherwise
    /// waits its whole grace period for stream clients, which never leave on their own.
    pub fn close_streams(&self) {
        self.0.streams_closed.cancel();
    }

    /// Cancelled once [`close_streams`](Self::close_streams) was called.
    pub(crate) fn streams_closed(&self) -> &CancellationToken {
        &self.0.streams_closed
    }

    /// The telemetry log of the live stream, if set.
    pub fn telemetry_stream(&self) -> Option<&Arc<dyn Log>> {
        self.0.telemetry_stream.get()
    }

    /// The alerts topic of the live feed, if set.
    pub fn alerts_stream(&self) -> Option<&Arc<dyn Log>> {
        self.0.alerts_stream.get()
    }

    /// Serves `/access/me/subscriptions` over `subscriptions`: each user's own alert
    /// subscriptions (see [`subscriptions`](super::subscriptions)). Set once.
    pub fn with_subscriptions(self, subscriptions: Arc<dyn SubscriptionStore>) -> Self {
        let _ = self.0.subscriptions.set(subscriptions);
        self
    }

    /// The alert subscriptions, if [`with_subscriptions`](Self::with_subscriptions) gave them.
    pub fn subscriptions(&self) -> Option<&Arc<dyn SubscriptionStore>> {
        self.0.subscriptions.get()
    }

    /// The access matrix, if [`with_access`](Self::with_access) gave one.
    pub fn access(&self) -> Option<&AccessControl> {
        self.0.access.get()
    }

    /// The module identities, if [`with_modules`](Self::with_modules) gave them.
    pub fn modules(&self) -> Option<&Arc<dyn ModuleStore>> {
        self.0.modules.get()
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.0.gateway
    }

    /// Provisioning, the one writer of identities and registry records.
    pub fn provisioning(&self) -> &Arc<dyn Provisioning> {
        &self.0.provisioning
    }

    /// The registry (read it; write through [`provisioning`](Self::provisioning)).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.0.registry
    }

    /// The identity store (read it; write through [`provisioning`](Self::provisioning)).
    pub fn identity(&self) -> &Arc<dyn IdentityStore> {
        &self.0.identity
    }

    /// The shared access policies.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.0.policies
    }

    /// The host name tokens are scoped to.
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// Serves IoT Hub's `/certificates` routes over `authorities` — give it the same value as
    /// the hub's [`HubBuilder::certificate_authorities`](crate::HubBuilder::certificate_authorities),
    /// so that a CA verified here authenticates devices there. Set once, before serving (a
    /// second call is ignored). Without it those routes answer 404.
    pub fn with_certificate_authorities(self, authorities: CertificateAuthorities) -> Self {
        if self.0.authorities.set(authorities).is_err() {
            tracing::warn!("certificate authorities were set already; the first stay");
        }
        self
    }

    /// The CA certificates of the `/certificates` routes, if set.
    pub fn certificate_authorities(&self) -> Option<&CertificateAuthorities> {
        self.0.authorities.get()
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.0.config
    }

    /// Failed-login budgets.
    pub(crate) fn logins(&self) -> &LoginThrottle {
        &self.0.logins
    }

    /// Verified service tokens.
    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.0.tokens
    }
}
