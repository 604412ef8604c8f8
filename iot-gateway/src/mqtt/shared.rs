//! What every connection of one server shares. Its own module so that a connection
//! (`session`) can hold it without depending on the listener (`server`) that creates it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use iot_provisioning::onboarding::Onboarding;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use super::pending::PendingPeers;
use super::persistent::PersistentSessions;
use crate::gateway::Gateway;

/// State shared by every connection of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) gateway: Arc<dyn Gateway>,
    pub(crate) config: MqttConfig,
    pub(crate) shutdown: CancellationToken,
    /// Subscriptions of persistent sessions (clean_session = false) between connections.
    pub(crate) persistent: PersistentSessions,
    /// Connections accepted and not yet authenticated, per peer address.
    pub(crate) unauthenticated: Arc<PendingPeers>,
    /// Registration through enrollments (DPS's device protocol); `None`: registrations are
    /// refused.
    pub(crate) onboarding: Option<Arc<Onboarding>>,
    /// Whether a registration refused for want of `onboarding` was logged at `info` yet: the
    /// first is, so that a misconfiguration shows; later ones go to `debug`, so that devices
    /// retrying cannot flood the log.
    pub(crate) dps_refusal_logged: AtomicBool,
}
