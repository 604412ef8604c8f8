//! `/devices/{id}/messages/devicebound`: the device receives its C2D messages. Each is sent
//! unsettled; the device's outcome settles it at the gateway — `accepted` completes it,
//! `rejected` rejects it (dead-lettered), `released` and `modified` abandon it (delivered
//! again). A link that ends with deliveries unsettled leaves them locked to the session, which
//! gives them back when it closes or their lock lapses.

use std::sync::Arc;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::Outcome;

use super::claims::lapsed;
use super::conn::{Conn, amqp_error};
use super::convert;
use super::router::Router;
use crate::gateway::{DeviceSession, Subscription};
use crate::message::LockToken;

pub(super) async fn serve(conn: Arc<Conn>, mut sender: Sender, router: Arc<Router>) {
    // The device's deliveries come from its router (its one reader of the session's events).
    let mut queue = tokio::select! {
        queue = router.c2d.lock() => queue,
        () = conn.closed.cancelled() => return,
    };
    if let Err(e) = router.subscribe(Subscription::C2d).await {
        tracing::debug!(error = %e, "C2D subscribe failed");
        let _ = sender
            .close_with_error(super::conn::gateway_error(&e))
            .await;
        return;
    }
    let mut expiry = router.grant();
    loop {
        let (session, delivery) = tokio::select! {
            item = queue.recv() => match item {
                Some(item) => item,
                None => break,
            },
            () = lapsed(&mut expiry) => {
                let _ = sender
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "the token expired"))
                    .await;
                return;
            }
            () = router.closed.cancelled() => {
                tracing::debug!("C2D link: the device's session closed");
                let _ = sender
                    .close_with_error(amqp_error(
                        AmqpError::UnauthorizedAccess,
                        "the device's session closed",
                    ))
                    .await;
                return;
            }
            _ = sender.on_detach() => return,
            () = conn.closed.cancelled() => return,
        };
        let device = session.device_id().clone();
        let message = convert::c2d_delivery(&device, &delivery);
        match sender.send_batchable(message).await {
            Ok(outcome) => {
                let lock = delivery.lock_token;
                tokio::spawn(async move {
                    settle(session.as_ref(), lock, outcome.await.ok()).await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "C2D link ended");
                let _ = session.abandon(delivery.lock_token).await;
                return;
            }
        }
    }
    let _ = sender.close().await;
}

/// Settles a delivery at the gateway by the device's outcome. No outcome (the link or the
/// connection ended first) leaves it to the lock and the session's close.
async fn settle(session: &dyn DeviceSession, lock: LockToken, outcome: Option<Outcome>) {
    let result = match outcome {
        Some(Outcome::Accepted(_)) => session.complete(lock).await,
        Some(Outcome::Rejected(_)) => session.reject(lock).await,
        Some(Outcome::Released(_)) | Some(Outcome::Modified(_)) => session.abandon(lock).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %lock, "C2D settlement failed");
    }
}
