//! What the links of one connection share: the endpoint, the connection's claims, the `$cbs`
//! reply queue, and the signal that the connection is closing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::types::definitions::{self, AmqpError, LinkError};
use iot_core::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claims::Claims;
use super::convert::AmqpMessage;
use super::router::Router;
use super::server::Shared;

/// One connection's state, shared by its sessions and links.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) claims: Claims,
    /// Replies of the `$cbs` node, sent on the connection's `$cbs` reply link.
    pub(super) cbs_tx: mpsc::Sender<AmqpMessage>,
    /// Taken by the reply link while it is attached.
    pub(super) cbs_rx: Mutex<Option<mpsc::Receiver<AmqpMessage>>>,
    /// Cancelled when the connection ends: every link task stops.
    pub(super) closed: CancellationToken,
    /// Each device's event router (C2D, methods, twin links), made by the first such link.
    pub(super) routers: Mutex<HashMap<DeviceId, Arc<Router>>>,
    /// One permit per attached link ([`AmqpConfig::max_links`](super::AmqpConfig)), held by
    /// the link's task.
    pub(super) links: Arc<tokio::sync::Semaphore>,
}

impl Conn {
    /// The router of `device`, if the connection holds a current grant for it.
    pub(super) fn router(&self, device: &DeviceId) -> Option<Arc<Router>> {
        let grant = self.claims.device(device)?;
        let mut routers = self
            .routers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(router) = routers.get(device)
            && !router.closed.is_cancelled()
        {
            return Some(router.clone());
        }
        let router = Router::start(grant, self.closed.clone());
        routers.insert(device.clone(), router.clone());
        Some(router)
    }
}

/// An AMQP error with `condition` and a description.
pub(super) fn amqp_error(
    condition: AmqpError,
    description: impl Into<String>,
) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

/// The AMQP error a gateway error is answered with. Credential refusals all read alike.
pub(super) fn gateway_error(e: &crate::Error) -> definitions::Error {
    use crate::Error as E;
    match e {
        E::Unauthorized { .. } => amqp_error(AmqpError::UnauthorizedAccess, "unauthorized"),
        E::DeviceNotFound { .. } => amqp_error(AmqpError::NotFound, e.to_string()),
        E::Throttled { .. } | E::QueueFull { .. } => {
            amqp_error(AmqpError::ResourceLimitExceeded, e.to_string())
        }
        E::TooLarge { .. } => {
            definitions::Error::new(LinkError::MessageSizeExceeded, Some(e.to_string()), None)
        }
        E::InvalidProperty { .. } | E::InvalidInput { .. } => {
            amqp_error(AmqpError::InvalidField, e.to_string())
        }
        E::SessionClosed { .. } | E::Shutdown => {
            amqp_error(AmqpError::IllegalState, "the device's session closed")
        }
        E::LockLost { .. } => amqp_error(AmqpError::PreconditionFailed, e.to_string()),
        _ => {
            tracing::warn!(error = %e, "AMQP request failed at the gateway");
            amqp_error(AmqpError::InternalError, "internal error")
        }
    }
}

/// The path of a link address: `amqps://host/devices/d1/messages/events` and
/// `/devices/d1/messages/events` both give `devices/d1/messages/events`.
pub(super) fn address_path(address: &str) -> &str {
    let rest = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.trim_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_scheme_host_and_slashes() {
        assert_eq!(
            address_path("amqps://hub:5671/devices/d1/messages/events"),
            "devices/d1/messages/events"
        );
        assert_eq!(
            address_path("/messages/devicebound"),
            "messages/devicebound"
        );
        assert_eq!(address_path("$cbs"), "$cbs");
        assert_eq!(address_path("amqps://hub"), "");
    }
}
