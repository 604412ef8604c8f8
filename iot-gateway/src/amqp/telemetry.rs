//! `/devices/{id}/messages/events`: the device sends telemetry. Each message is accepted once
//! it is in the log (the at-least-once promise), rejected with the reason otherwise.

use std::sync::Arc;

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::watch;

use super::claims::{DeviceGrant, lapsed};
use super::conn::{Conn, amqp_error, gateway_error};
use super::convert;

pub(super) async fn serve(
    conn: Arc<Conn>,
    mut receiver: Receiver,
    mut grant: watch::Receiver<Option<DeviceGrant>>,
) {
    loop {
        let delivery = tokio::select! {
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
        let session = grant.borrow().as_ref().map(|g| g.session.clone());
        let Some(session) = session else { return };
        let outcome = match convert::telemetry(delivery.message()) {
            Ok(telemetry) => session
                .send_telemetry(telemetry)
                .await
                .map_err(|e| gateway_error(&e)),
            Err(convert::Unusable(reason)) => Err(amqp_error(AmqpError::DecodeError, reason)),
        };
        let settled = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => receiver.reject(&delivery, error).await,
        };
        if let Err(e) = settled {
            tracing::debug!(error = %e, "telemetry disposition failed");
            return;
        }
    }
}
