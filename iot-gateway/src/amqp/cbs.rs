//! The `$cbs` node (claims-based security, AMQP CBS draft as IoT Hub implements it).
//!
//! A client attaches a sender link to `$cbs` for requests and a receiver link from `$cbs` for
//! replies. A request is a message with application properties `operation = "put-token"`,
//! `type` (`servicebus.windows.net:sastoken` or `azure-devices.net:sastoken`) and `name` (the
//! audience), and the SAS token as an amqp-value string body. The reply carries the request's
//! message id as correlation id and the application properties `status-code` (int: 200,
//! 400, 401, 429, 500) and `status-description`.

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Value};
use zeroize::Zeroizing;

use super::conn::{Conn, amqp_error};
use super::convert::AmqpMessage;

/// Serves the request link: each put-token is verified and answered on the reply queue.
pub(super) async fn requests(conn: Arc<Conn>, mut receiver: Receiver) {
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "$cbs request link ended");
                    return;
                }
            },
            () = conn.closed.cancelled() => return,
        };
        let reply = answer(&conn, delivery.message()).await;
        let _ = receiver.accept(&delivery).await;
        // A client that sends requests without a reply link loses its replies, not the
        // connection.
        if conn.cbs_tx.try_send(reply).is_err() {
            tracing::debug!("$cbs reply dropped: no reply link or too many waiting");
        }
    }
}

fn text<'a>(message: &'a AmqpMessage, key: &str) -> Option<&'a str> {
    let ApplicationProperties(map) = message.application_properties.as_ref()?;
    match map.get(key)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

async fn answer(conn: &Conn, request: &AmqpMessage) -> AmqpMessage {
    let (status, description) = match text(request, "operation") {
        Some("put-token") => match &request.body {
            Body::Value(AmqpValue(Value::String(token))) => {
                let token = Zeroizing::new(token.clone());
                match conn.claims.put_token(&token).await {
                    Ok(()) => (200, "OK".to_string()),
                    Err(refused) => {
                        tracing::debug!(status = refused.status, reason = %refused.description, "put-token refused");
                        (refused.status, refused.description)
                    }
                }
            }
            _ => (
                400,
                "the body must be the token as an amqp-value string".to_string(),
            ),
        },
        _ => (400, "unsupported operation".to_string()),
    };
    let props = request.properties.as_ref();
    let mut app = OrderedMap::new();
    app.insert("status-code".to_string(), SimpleValue::Int(status));
    app.insert(
        "status-description".to_string(),
        SimpleValue::String(description),
    );
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: props.and_then(|p| p.message_id.clone()),
            to: props.and_then(|p| p.reply_to.clone()),
            message_id: Some(MessageId::String(format!("cbs-{status}"))),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(app)),
        body: Body::Value(AmqpValue(Value::Null)),
        footer: None,
    }
}

/// Serves the reply link: one per connection at a time.
pub(super) async fn replies(conn: Arc<Conn>, mut sender: Sender) {
    let taken = conn
        .cbs_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let Some(mut rx) = taken else {
        let _ = sender
            .close_with_error(amqp_error(
                AmqpError::ResourceLocked,
                "a $cbs reply link is attached already",
            ))
            .await;
        return;
    };
    loop {
        tokio::select! {
            reply = rx.recv() => {
                let Some(reply) = reply else { break };
                if let Err(e) = sender.send(reply).await {
                    tracing::debug!(error = %e, "$cbs reply link ended");
                    break;
                }
            }
            _ = sender.on_detach() => break,
            () = conn.closed.cancelled() => break,
        }
    }
    // The next reply link of the connection takes the queue over.
    *conn
        .cbs_rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rx);
    let _ = sender.close().await;
}
