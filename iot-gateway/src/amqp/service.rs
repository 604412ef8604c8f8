//! The back end's links: `/messages/devicebound` (send C2D messages; `to` names the device)
//! and `/messages/serviceBound/feedback` (receive delivery feedback, batched as IoT Hub does:
//! a JSON array of records per message, content type
//! `application/vnd.microsoft.iothub.feedback.json`). Both need a service token of a policy
//! with `ServiceConnect`.

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{Body, Outcome};
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::watch;

use super::claims::{ServiceGrant, lapsed_or_lacks};
use super::conn::{Conn, amqp_error, gateway_error};
use super::convert;
use crate::http::Rights;

/// `/messages/devicebound`: each message is queued for the device `to` names; accepted once
/// queued, rejected with the reason otherwise (unknown device: `amqp:not-found`).
pub(super) async fn devicebound(
    conn: Arc<Conn>,
    mut receiver: Receiver,
    mut grant: watch::Receiver<Option<ServiceGrant>>,
) {
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "service C2D link ended");
                    return;
                }
            },
            () = lapsed_or_lacks(&mut grant, Rights::SERVICE_CONNECT) => {
                let _ = receiver
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "the token expired"))
                    .await;
                return;
            }
            () = conn.closed.cancelled() => return,
        };
        let outcome = match convert::c2d_message(delivery.message()) {
            Ok((device, message)) => conn
                .shared
                .gateway
                .send_c2d(&device, message)
                .await
                .map(|_| ())
                .map_err(|e| gateway_error(&e)),
            Err(convert::Unusable(reason)) => Err(amqp_error(AmqpError::InvalidField, reason)),
        };
        let settled = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => receiver.reject(&delivery, error).await,
        };
        if let Err(e) = settled {
            tracing::debug!(error = %e, "service C2D disposition failed");
            return;
        }
    }
}

/// `/messages/serviceBound/feedback`: feedback records from the queue's completed position
/// ([`Gateway::feedback_completed`](crate::Gateway::feedback_completed)), in batches. A batch the
/// back end accepts moves the position past it (IoT Hub's feedback is a queue: what one receiver
/// completed, no receiver sees again, across restarts and cluster instances); any other outcome,
/// or none, sends it again.
pub(super) async fn feedback(
    conn: Arc<Conn>,
    mut sender: Sender,
    mut grant: watch::Receiver<Option<ServiceGrant>>,
) {
    let shared = conn.shared.clone();
    let mut batch_id = 0u64;
    loop {
        let read = async {
            let from = shared.gateway.feedback_completed().await?;
            let records = shared
                .gateway
                .read_feedback(from, shared.config.feedback_batch)
                .await?;
            Ok::<_, crate::Error>((from, records))
        };
        let (from, records) = match read.await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "reading feedback failed");
                (0, Vec::new())
            }
        };
        if records.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(shared.config.feedback_poll) => continue,
                () = lapsed_or_lacks(&mut grant, Rights::SERVICE_CONNECT) => {
                    let _ = sender
                        .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "the token expired"))
                        .await;
                    return;
                }
                _ = sender.on_detach() => return,
                () = conn.closed.cancelled() => return,
            }
        }
        batch_id += 1;
        let next = records.last().map_or(from, |r| r.offset + 1);
        let message = convert::feedback_batch(&records, batch_id);
        let outcome = tokio::select! {
            outcome = sender.send(message) => outcome,
            () = conn.closed.cancelled() => return,
        };
        match outcome {
            Ok(Outcome::Accepted(_)) => {
                // Never backwards: another receiver may have moved it further meanwhile (the
                // gateway keeps the larger). If it cannot be kept, the batch comes again: at
                // least once, as IoT Hub's feedback.
                if let Err(e) = shared.gateway.complete_feedback(next).await {
                    tracing::warn!(error = %e, "completing feedback failed");
                    tokio::time::sleep(shared.config.feedback_poll).await;
                }
            }
            Ok(_) => tokio::time::sleep(shared.config.feedback_poll).await,
            Err(e) => {
                tracing::debug!(error = %e, "feedback link ended");
                return;
            }
        }
    }
}
