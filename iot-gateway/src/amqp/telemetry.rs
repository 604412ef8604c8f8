//! `/devices/{id}/messages/events`: the device sends telemetry. Each message is accepted once
//! it is in the log (the at-least-once promise), rejected with the reason otherwise.
//!
//! Deliveries that have already arrived when the link wakes are taken together (up to
//! [`BURST`]): they are appended one after another, in the order the device sent them, and the
//! accepted ones are settled with one disposition per run of consecutive delivery ids rather
//! than one each. A device that keeps a window of messages in flight, as the SDKs do, thus costs
//! the endpoint one disposition frame per wake-up instead of one per message.
//!
//! A batched message (message format `0x80013700`, as IoT Hub takes it: each data section an
//! encoded message) becomes one record per inner message, appended in order; the delivery is
//! accepted once all are in the log. An unusable inner message rejects the whole batch
//! (`amqp:decode-error`, naming its position) before anything of it is appended; a refusal by
//! the gateway part-way (throttling, say) rejects it with the gateway's reason, the records
//! before it staying appended (a device that sends the batch again duplicates them, as with any
//! at-least-once retry).

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, delivery::Delivery};
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use futures::FutureExt as _;
use tokio::sync::watch;

use super::claims::{DeviceGrant, lapsed};
use super::conn::{Conn, amqp_error, gateway_error};
use super::convert;
use crate::DeviceSession;
use crate::adapter::{AMQP_BATCH_FORMAT, DEFAULT_MAX_DEPTH};

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
            let outcome = append(&conn, session.as_ref(), delivery).await;
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

/// Appends what one delivery carries: its message, or each message of a batch in order.
async fn append(
    conn: &Conn,
    session: &dyn DeviceSession,
    delivery: &TelemetryDelivery,
) -> Result<(), definitions::Error> {
    let unusable = |convert::Unusable(reason)| amqp_error(AmqpError::DecodeError, reason);
    if *delivery.message_format() == Some(AMQP_BATCH_FORMAT) {
        let records = convert::telemetry_batch(
            delivery.message(),
            conn.shared.config.max_batch_messages,
            DEFAULT_MAX_DEPTH,
        )
        .map_err(unusable)?;
        for record in records {
            session
                .send_telemetry(record)
                .await
                .map_err(|e| gateway_error(&e))?;
        }
        return Ok(());
    }
    let telemetry = convert::telemetry(delivery.message()).map_err(unusable)?;
    session
        .send_telemetry(telemetry)
        .await
        .map_err(|e| gateway_error(&e))
}
