//! `/devices/{id}/messages/events`: the device sends telemetry. Each message is accepted once
//! it is in the log (the at-least-once promise), rejected with the reason otherwise.
//!
//! Deliveries that have already arrived when the link wakes are taken together (up to
//! [`BURST`]): they are appended one after another, in the order the device sent them, and the
//! accepted ones are settled with one disposition per run of consecutive delivery ids rather
//! than one each. A device that keeps a window of messages in flight, as the SDKs do, thus costs
//! the endpoint one disposition frame per wake-up instead of one per message.

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, delivery::Delivery};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use futures::FutureExt as _;
use tokio::sync::watch;

use super::claims::{DeviceGrant, lapsed};
use super::conn::{Conn, amqp_error, gateway_error};
use super::convert;

/// Deliveries taken in one wake-up at most: bounds the memory a link holds and how long the
/// first of them waits for its disposition.
const BURST: usize = 64;

type TelemetryDelivery = Delivery<Body<Value>>;

pub(super) async fn serve(
    conn: Arc<Conn>,
    mut receiver: Receiver,
    mut grant: watch::Receiver<Option<DeviceGrant>>,
) {
    let mut burst: Vec<TelemetryDelivery> = Vec::with_capacity(BURST);
    // Indexes into `burst` of the deliveries appended and not yet settled.
    let mut accepted: Vec<usize> = Vec::with_capacity(BURST);
    loop {
        let first = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "telemetry link ended");
                    return;
                }
            },
            () = lapsed(&mut grant) => {
                let _ = receiver
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "the token expired"))
                    .await;
                return;
            }
            () = conn.closed.cancelled() => return,
        };
        burst.clear();
        burst.push(first);
        // `recv` is cancel safe: a delivery not yet complete stays with the link.
        let mut ended = None;
        while burst.len() < BURST {
            match receiver.recv::<Body<Value>>().now_or_never() {
                Some(Ok(d)) => burst.push(d),
                Some(Err(e)) => {
                    ended = Some(e);
                    break;
                }
                None => break,
            }
        }
        let session = grant.borrow().as_ref().map(|g| g.session.clone());
        let Some(session) = session else { return };
        accepted.clear();
        for (index, delivery) in burst.iter().enumerate() {
            let outcome = match convert::telemetry(delivery.message()) {
                Ok(telemetry) => session
                    .send_telemetry(telemetry)
                    .await
                    .map_err(|e| gateway_error(&e)),
                Err(convert::Unusable(reason)) => Err(amqp_error(AmqpError::DecodeError, reason)),
            };
            let settled = match outcome {
                Ok(()) => {
                    accepted.push(index);
                    Ok(())
                }
                // Settle what went before first, so dispositions follow the device's order.
                Err(error) => {
                    let before = if accepted.is_empty() {
                        Ok(())
                    } else {
                        receiver
                            .accept_all(accepted.drain(..).map(|i| &burst[i]))
                            .await
                    };
                    match before {
                        Ok(()) => receiver.reject(delivery, error).await,
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = settled {
                tracing::debug!(error = %e, "telemetry disposition failed");
                return;
            }
        }
        if !accepted.is_empty()
            && let Err(e) = receiver
                .accept_all(accepted.drain(..).map(|i| &burst[i]))
                .await
        {
            tracing::debug!(error = %e, "telemetry disposition failed");
            return;
        }
        if let Some(e) = ended {
            tracing::debug!(error = %e, "telemetry link ended");
            return;
        }
    }
}
