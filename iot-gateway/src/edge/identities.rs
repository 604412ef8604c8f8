//! Where the forwarder gets each leaf device's upstream identity.
//!
//! The field gateway connects to the cloud hub as each of its leaf devices, so it holds their
//! upstream credentials. They come from the integrator: a fixed map (for a gateway provisioned
//! with its leaves' connection strings) or a function (for one that derives keys, asks DPS or a
//! secret store).

use std::collections::HashMap;
use std::fmt;

use iot_core::DeviceId;

use crate::client::ClientOptions;

/// The upstream identities of the leaf devices: for a leaf, the options of the device client
/// that represents it upstream (the cloud hub's host, the leaf's id there, its key or
/// certificate, TLS roots, transport). The forwarder replaces the options' outbox with its own.
pub trait UpstreamIdentities: Send + Sync + fmt::Debug + 'static {
    /// The upstream options of `device`, or `None` if it has no upstream identity (its telemetry
    /// is then skipped and counted in [`ForwarderStats::skipped`](super::ForwarderStats)).
    fn options(&self, device: &DeviceId) -> Option<ClientOptions>;

    /// Leaves to connect upstream when the forwarder starts, before they send anything, so that
    /// C2D messages and method calls reach them. The provided method names none: a leaf is
    /// then connected upstream on its first telemetry message.
    fn devices(&self) -> Vec<DeviceId> {
        Vec::new()
    }
}

/// A fixed map from leaf device to upstream options; every leaf in it is connected upstream when
/// the forwarder starts.
#[derive(Debug, Default, Clone)]
pub struct IdentityMap {
    map: HashMap<DeviceId, ClientOptions>,
}

impl IdentityMap {
    /// An empty map.
    pub fn new() -> Self {
        IdentityMap::default()
    }

    /// Adds (or replaces) the upstream options of `device`.
    pub fn insert(&mut self, device: DeviceId, options: ClientOptions) -> &mut Self {
        self.map.insert(device, options);
        self
    }

    /// Adds the upstream options of `device`, builder style.
    pub fn with(mut self, device: DeviceId, options: ClientOptions) -> Self {
        self.map.insert(device, options);
        self
    }
}

impl UpstreamIdentities for IdentityMap {
    fn options(&self, device: &DeviceId) -> Option<ClientOptions> {
        self.map.get(device).cloned()
    }

    fn devices(&self) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = self.map.keys().cloned().collect();
        devices.sort();
        devices
    }
}

/// Upstream identities from a function, called the first time the forwarder needs a leaf's
/// client (and again after that client was dropped).
pub struct IdentityFn<F>(pub F);

impl<F> fmt::Debug for IdentityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityFn")
    }
}

impl<F> UpstreamIdentities for IdentityFn<F>
where
    F: Fn(&DeviceId) -> Option<ClientOptions> + Send + Sync + 'static,
{
    fn options(&self, device: &DeviceId) -> Option<ClientOptions> {
        (self.0)(device)
    }
}
