//! What a device's twin and method links wait for beside their own traffic: the device's grant
//! lapsing, its session on the gateway closing, the connection closing. One place, so that all
//! four links end the same way: a lapsed grant or a closed session detaches the link with
//! `amqp:unauthorized-access` and says why; a closed connection or a detach by the device just
//! ends it.

use std::future::Future;

use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::watch;

use super::claims::{DeviceGrant, lapsed};
use super::conn::{Conn, amqp_error};
use super::router::Router;

/// Why a device link stops waiting.
pub(super) enum Ended {
    /// Detach with `amqp:unauthorized-access` and this description.
    Refuse(&'static str),
    /// End without a word: the traffic ended, the connection closed, or the device detached.
    Quietly,
}

impl Ended {
    /// Ends an incoming link as this says.
    pub(super) async fn detach_receiver(self, receiver: Receiver) {
        if let Ended::Refuse(description) = self {
            let _ = receiver
                .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, description))
                .await;
        }
    }

    /// Ends an outgoing link as this says.
    pub(super) async fn detach_sender(self, sender: Sender) {
        if let Ended::Refuse(description) = self {
            let _ = sender
                .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, description))
                .await;
        }
    }
}

/// What a device link waits for beside its traffic, as one future: why it should stop.
async fn stop(
    grant: &mut watch::Receiver<Option<DeviceGrant>>,
    router: &Router,
    conn: &Conn,
) -> Ended {
    tokio::select! {
        () = lapsed(grant) => Ended::Refuse("the token expired"),
        () = router.closed.cancelled() => Ended::Refuse("the device's session closed"),
        () = conn.closed.cancelled() => Ended::Quietly,
    }
}

/// The next delivery on one of the device's incoming links (`link` names it in the log), or
/// why the link is to stop (see [`Ended::detach_receiver`]).
pub(super) async fn next_delivery(
    receiver: &mut Receiver,
    grant: &mut watch::Receiver<Option<DeviceGrant>>,
    router: &Router,
    conn: &Conn,
    link: &'static str,
) -> Result<Delivery<Body<Value>>, Ended> {
    tokio::select! {
        d = receiver.recv::<Body<Value>>() => d.map_err(|e| {
            tracing::debug!(error = %e, link, "device link ended");
            Ended::Quietly
        }),
        why = stop(grant, router, conn) => Err(why),
    }
}

/// The next item `next` gives for one of the device's outgoing links, or why the link is to
/// stop (see [`Ended::detach_sender`]; the queue ended or the device detached: quietly).
pub(super) async fn next_outgoing<T>(
    next: impl Future<Output = Option<T>>,
    sender: &mut Sender,
    grant: &mut watch::Receiver<Option<DeviceGrant>>,
    router: &Router,
    conn: &Conn,
) -> Result<T, Ended> {
    tokio::select! {
        item = next => item.ok_or(Ended::Quietly),
        _ = sender.on_detach() => Err(Ended::Quietly),
        why = stop(grant, router, conn) => Err(why),
    }
}
