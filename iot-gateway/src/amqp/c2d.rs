//! `/devices/{id}/messages/devicebound`: the device receives its C2D messages. Each is sent
//! unsettled; the device's outcome settles it at the gateway — `accepted` completes it,
//! `rejected` rejects it (dead-lettered), `released` and `modified` abandon it (delivered
//! again). A link that ends with deliveries unsettled leaves them locked to the session, which
//! gives them back when it closes or their lock lapses.

use std::sync::Arc;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::Outcome;
use tokio::sync::watch;

use super::claims::{DeviceGrant, lapsed};
use super::conn::{Conn, amqp_error};
use super::convert;
use crate::gateway::{DeviceSession, SessionEvent, Subscription};
use crate::message::LockToken;

pub(super) async fn serve(
    conn: Arc<Conn>,
    mut sender: Sender,
    mut grant: watch::Receiver<Option<DeviceGrant>>,
) {
    let Some(mut session) = current(&mut grant) else {
        return;
    };
    if let Err(e) = session.subscribe(Subscription::C2d).await {
        tracing::debug!(error = %e, "C2D subscribe failed");
        let _ = sender
            .close_with_error(super::conn::gateway_error(&e))
            .await;
        return;
    }
    let device = session.device_id().clone();
    // The expiry watch has a receiver of its own: `grant` follows renewals in the loop.
    let mut expiry = grant.clone();
    loop {
        let event = tokio::select! {
            event = session.next_event() => event,
            changed = grant.changed() => {
                // A renewed token: the grant carries a new session.
                if changed.is_err() {
                    break;
                }
                match current(&mut grant) {
                    Some(next) if !Arc::ptr_eq(&next, &session) => {
                        session = next;
                        if session.subscribe(Subscription::C2d).await.is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
                continue;
            }
            () = lapsed(&mut expiry) => {
                let _ = sender
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "the token expired"))
                    .await;
                return;
            }
            _ = sender.on_detach() => return,
            () = conn.closed.cancelled() => return,
        };
        match event {
            Ok(SessionEvent::C2d(delivery)) => {
                let message = convert::c2d_delivery(&device, &delivery);
                match sender.send_batchable(message).await {
                    Ok(outcome) => {
                        let session = session.clone();
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
            Ok(SessionEvent::Closed(reason)) => {
                // Taken over by a renewal: the next turn of the loop sees the new session.
                let renewed = grant
                    .borrow()
                    .as_ref()
                    .is_some_and(|g| !Arc::ptr_eq(&g.session, &session));
                if renewed {
                    continue;
                }
                tracing::debug!(%reason, "C2D link: the device's session closed");
                let _ = sender
                    .close_with_error(amqp_error(
                        AmqpError::UnauthorizedAccess,
                        format!("the device's session closed: {reason}"),
                    ))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "C2D link: next_event failed");
                if grant.borrow().is_none() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let _ = sender.close().await;
}

fn current(grant: &mut watch::Receiver<Option<DeviceGrant>>) -> Option<Arc<dyn DeviceSession>> {
    grant
        .borrow_and_update()
        .as_ref()
        .map(|g| g.session.clone())
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
