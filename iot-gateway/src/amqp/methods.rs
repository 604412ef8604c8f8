//! `/devices/{id}/methods/devicebound`: direct methods, as IoT Hub serves them to the AMQP
//! device SDKs. The device attaches a receiver (requests) and a sender (answers) on the same
//! address.
//!
//! * A **request** carries the application property `IoThub-methodname`, a correlation id
//!   (the gateway's request id in a UUID: zeros, then the id big-endian) and the JSON payload
//!   in a data section.
//! * An **answer** carries the same correlation id (a UUID, or its text as the Node SDK sends
//!   it back), the application property `IoThub-status` and the JSON payload.
//!
//! The device listens for methods while its receiver link is attached: the link subscribes the
//! session to method requests and unsubscribes when it ends, so invocations then find the
//! device offline.

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Uuid};

use super::conn::{Conn, amqp_error, gateway_error};
use super::convert::{self, AmqpMessage};
use super::device_wait::{next_delivery, next_outgoing};
use super::router::Router;
use crate::gateway::Subscription;
use crate::method::{MethodRequest, MethodResponse};

const METHOD_NAME: &str = "IoThub-methodname";
const STATUS: &str = "IoThub-status";

/// The correlation id of request `id`.
pub(super) fn correlation_of(id: u64) -> MessageId {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&id.to_be_bytes());
    MessageId::Uuid(Uuid::from(bytes))
}

/// The request id a correlation id names: a UUID as [`correlation_of`] makes it, its text, or a
/// number.
pub(super) fn request_of(id: &MessageId) -> Option<u64> {
    match id {
        MessageId::Uuid(u) => uuid_id(u.as_inner()),
        MessageId::Ulong(n) => Some(*n),
        MessageId::String(s) => {
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            if hex.len() == 32 {
                let mut bytes = [0u8; 16];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                uuid_id(&bytes)
            } else {
                s.parse().ok()
            }
        }
        MessageId::Binary(_) => None,
    }
}

fn uuid_id(bytes: &[u8; 16]) -> Option<u64> {
    if bytes[..8].iter().any(|b| *b != 0) {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[8..]);
    Some(u64::from_be_bytes(id))
}

fn request_message(request: &MethodRequest) -> AmqpMessage {
    let mut app = OrderedMap::new();
    app.insert(
        METHOD_NAME.to_string(),
        SimpleValue::String(request.name.clone()),
    );
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: Some(correlation_of(request.request_id)),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(app)),
        body: Body::Data(vec![Data(Binary::from(request.payload.to_vec()))].into()),
        footer: None,
    }
}

/// The device's answer in `message`.
fn response_of(message: &AmqpMessage) -> Result<MethodResponse, String> {
    let request_id = message
        .properties
        .as_ref()
        .and_then(|p| p.correlation_id.as_ref())
        .and_then(request_of)
        .ok_or("the answer has no request's correlation id")?;
    let status = message
        .application_properties
        .as_ref()
        .and_then(|a| a.0.get(STATUS))
        .and_then(|v| match v {
            SimpleValue::Int(n) => Some(*n),
            SimpleValue::Long(n) => i32::try_from(*n).ok(),
            SimpleValue::Uint(n) => i32::try_from(*n).ok(),
            SimpleValue::Short(n) => Some(i32::from(*n)),
            SimpleValue::String(s) => s.parse().ok(),
            _ => None,
        })
        .ok_or("the answer has no IoThub-status")?;
    let payload = convert::payload(&message.body).map_err(|e| e.0)?;
    Ok(MethodResponse {
        request_id,
        status,
        payload,
    })
}

/// The device's receiver link: method requests while it is attached.
pub(super) async fn requests(conn: Arc<Conn>, mut sender: Sender, router: Arc<Router>) {
    let mut grant = router.grant();
    let mut queue = tokio::select! {
        queue = router.methods.lock() => queue,
        () = conn.closed.cancelled() => return,
    };
    if let Err(e) = router.subscribe(Subscription::Methods).await {
        let _ = sender.close_with_error(gateway_error(&e)).await;
        return;
    }
    loop {
        let request =
            match next_outgoing(queue.recv(), &mut sender, &mut grant, &router, &conn).await {
                Ok(request) => request,
                Err(ended) => {
                    ended.detach_sender(sender).await;
                    break;
                }
            };
        if let Err(e) = sender.send_batchable(request_message(&request)).await {
            tracing::debug!(error = %e, "method request link ended");
            break;
        }
    }
    drop(queue);
    router.unsubscribe(Subscription::Methods).await;
}

/// The device's sender link: answers, each accepted once the gateway took it.
pub(super) async fn responses(conn: Arc<Conn>, mut receiver: Receiver, router: Arc<Router>) {
    let mut grant = router.grant();
    loop {
        let next = next_delivery(
            &mut receiver,
            &mut grant,
            &router,
            &conn,
            "method responses",
        );
        let delivery = match next.await {
            Ok(delivery) => delivery,
            Err(ended) => return ended.detach_receiver(receiver).await,
        };
        let outcome = match response_of(delivery.message()) {
            Ok(response) => match router.session() {
                Some(session) => session
                    .respond_method(response)
                    .await
                    .map_err(|e| gateway_error(&e)),
                None => Err(amqp_error(AmqpError::IllegalState, "no session")),
            },
            Err(reason) => Err(amqp_error(AmqpError::DecodeError, reason)),
        };
        let settled = match outcome {
            Ok(()) => receiver.accept(&delivery).await,
            Err(error) => receiver.reject(&delivery, error).await,
        };
        if let Err(e) = settled {
            tracing::debug!(error = %e, "method response disposition failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_through_correlation_ids() {
        for id in [0, 1, 42, u64::MAX] {
            assert_eq!(request_of(&correlation_of(id)), Some(id));
        }
        assert_eq!(
            request_of(&MessageId::String(
                "00000000-0000-0000-0000-00000000002a".into()
            )),
            Some(42)
        );
        assert_eq!(request_of(&MessageId::String("42".into())), Some(42));
        assert_eq!(
            request_of(&MessageId::String(
                "10000000-0000-0000-0000-00000000002a".into()
            )),
            None
        );
    }
}
