//! The field gateway's upstream forwarder (feature `edge`): what runs next to the devices and
//! carries their traffic to a cloud hub over a link that may be down for hours.
//!
//! Leaf devices connect to a local [`Hub`](crate::Hub) (its MQTT endpoint, its own identities);
//! their telemetry lands in the local hub's telemetry log, which is durable when the hub was
//! opened with [`Hub::open_dir`](crate::Hub::open_dir). A [`Forwarder`] reads that log as a
//! consumer group and sends every record upstream through a
//! [`DeviceClient`](crate::client::DeviceClient) that connects **as the leaf device** (one
//! upstream identity per leaf, as IoT Edge's transparent gateway does), with the message's
//! payload, id, correlation id, content type and encoding and custom properties. It commits a
//! batch only once the cloud hub acknowledged every message of it, so a restart resumes after
//! the last forwarded batch (at least once: a back end drops duplicates by message id).
//!
//! Downstream, each upstream client passes what the cloud sends for its leaf to the local hub:
//! C2D messages ([`Gateway::send_c2d`](crate::Gateway::send_c2d)), direct methods
//! ([`Gateway::invoke_method`](crate::Gateway::invoke_method), the answer goes back up) and
//! desired-property patches ([`Gateway::patch_desired`](crate::Gateway::patch_desired)); the
//! leaves' reported-property patches go up from the local hub's twin-change log.
//!
//! See `docs/field-gateway.md` for the design, delivery guarantees and the retention bound.

/// Compiles the example of `docs/field-gateway.md`.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/field-gateway.md")]
pub struct FieldGatewayDoc;

mod convert;
mod downlink;
mod error;
mod forwarder;
mod identities;
mod options;

pub use error::EdgeError;
pub use forwarder::{Forwarder, ForwarderStats};
pub use identities::{IdentityFn, IdentityMap, UpstreamIdentities};
pub use options::ForwarderOptions;
