//! `/devices/{id}/twin`: the device's twin, as IoT Hub serves it to the AMQP device SDKs.
//!
//! The device sends requests on its sender link and reads the answers (and desired-property
//! patches) on its receiver link. A request carries the message annotations `operation`
//! (`GET`, `PATCH`, `PUT`, `DELETE`) and `resource`, a correlation id and, for a PATCH, the
//! JSON body; the answer carries the same correlation id and the annotations `status` (and
//! `version` where one applies):
//!
//! | operation | resource | does | status |
//! | --- | --- | --- | --- |
//! | `GET` | none | the twin `{"desired": …, "reported": …}` | 200 |
//! | `PATCH` | `/properties/reported` | merges the body into the reported properties | 204, `version` |
//! | `PUT` | `/notifications/twin/properties/desired` | starts desired-patch pushes | 200 |
//! | `DELETE` | `/notifications/twin/properties/desired` | stops them | 200 |
//!
//! Anything else is answered 400; a gateway failure 429 (throttled) or 500. A desired patch
//! is pushed on the receiver link without a correlation id, its `$version` in the body.

use std::sync::Arc;

use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::messaging::{
    Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, Symbol, Value};

use super::conn::Conn;
use super::convert::{self, AmqpMessage};
use super::device_wait::{next_delivery, next_outgoing};
use super::router::Router;
use crate::gateway::Subscription;

/// The resource of desired-patch notifications.
const DESIRED_NOTIFICATIONS: &str = "/notifications/twin/properties/desired";

/// A twin message: an answer (with `correlation_id` and `status`) or a pushed patch.
pub(super) fn message(
    correlation_id: Option<MessageId>,
    status: Option<i32>,
    version: Option<u64>,
    body: Vec<u8>,
) -> AmqpMessage {
    let mut annotations = OrderedMap::new();
    if let Some(status) = status {
        annotations.insert(Symbol::from("status").into(), Value::Int(status));
    }
    if let Some(version) = version {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        annotations.insert(Symbol::from("version").into(), Value::Long(version));
    }
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(MessageAnnotations(annotations)),
        properties: Some(Properties {
            correlation_id,
            ..Properties::default()
        }),
        application_properties: None,
        body: Body::Data(vec![Data(Binary::from(body))].into()),
        footer: None,
    }
}

/// A message annotation's value as text.
fn annotation(message: &AmqpMessage, name: &str) -> Option<String> {
    let annotations = message.message_annotations.as_ref()?;
    annotations.0.iter().find_map(|(k, v)| {
        let key = match k {
            fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s) => s.as_str(),
            _ => return None,
        };
        if key != name {
            return None;
        }
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Symbol(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    })
}

/// The status a gateway failure is answered with.
fn status_of(e: &crate::Error) -> i32 {
    match e {
        crate::Error::InvalidInput { .. } | crate::Error::InvalidProperty { .. } => 400,
        crate::Error::TooLarge { .. } => 413,
        crate::Error::Throttled { .. } => 429,
        _ => {
            tracing::warn!(error = %e, "AMQP twin request failed at the gateway");
            500
        }
    }
}

/// Answers one request: (status, version, body).
async fn answer(router: &Router, request: &AmqpMessage) -> (i32, Option<u64>, Vec<u8>) {
    let Some(session) = router.session() else {
        return (500, None, Vec::new());
    };
    let operation = annotation(request, "operation").unwrap_or_default();
    let resource = annotation(request, "resource");
    match (operation.as_str(), resource.as_deref()) {
        ("GET", None | Some("") | Some("/")) => match session.get_twin().await {
            Ok(twin) => (200, None, twin.to_device_json().to_string().into_bytes()),
            Err(e) => (status_of(&e), None, Vec::new()),
        },
        ("PATCH", Some("/properties/reported")) => {
            let patch = convert::payload(&request.body)
                .ok()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok());
            let Some(patch @ serde_json::Value::Object(_)) = patch else {
                return (400, None, Vec::new());
            };
            match session.patch_reported(patch).await {
                Ok(version) => (204, Some(version), Vec::new()),
                Err(e) => (status_of(&e), None, Vec::new()),
            }
        }
        ("PUT", Some(DESIRED_NOTIFICATIONS)) => {
            match router.subscribe(Subscription::DesiredPatches).await {
                Ok(()) => (200, None, Vec::new()),
                Err(e) => (status_of(&e), None, Vec::new()),
            }
        }
        ("DELETE", Some(DESIRED_NOTIFICATIONS)) => {
            router.unsubscribe(Subscription::DesiredPatches).await;
            (200, None, Vec::new())
        }
        _ => (400, None, Vec::new()),
    }
}

/// The device's sender link: requests, each accepted once answered.
pub(super) async fn requests(conn: Arc<Conn>, mut receiver: Receiver, router: Arc<Router>) {
    let mut grant = router.grant();
    loop {
        let delivery =
            match next_delivery(&mut receiver, &mut grant, &router, &conn, "twin requests").await {
                Ok(delivery) => delivery,
                Err(ended) => return ended.detach_receiver(receiver).await,
            };
        let request = delivery.message();
        let correlation_id = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let (status, version, body) = answer(&router, request).await;
        router.to_twin_link(message(correlation_id, Some(status), version, body));
        if let Err(e) = receiver.accept(&delivery).await {
            tracing::debug!(error = %e, "twin request disposition failed");
            return;
        }
    }
}

/// The device's receiver link: answers and desired patches. Ending it stops the pushes.
pub(super) async fn responses(conn: Arc<Conn>, mut sender: Sender, router: Arc<Router>) {
    let mut grant = router.grant();
    {
        let mut queue = tokio::select! {
            queue = router.twin_rx.lock() => queue,
            () = conn.closed.cancelled() => return,
        };
        loop {
            let message =
                match next_outgoing(queue.recv(), &mut sender, &mut grant, &router, &conn).await {
                    Ok(message) => message,
                    Err(ended) => {
                        ended.detach_sender(sender).await;
                        break;
                    }
                };
            // Answers are settled by the device at once; the outcome is not waited for.
            if let Err(e) = sender.send_batchable(message).await {
                tracing::debug!(error = %e, "twin response link ended");
                break;
            }
        }
    }
    router.unsubscribe(Subscription::DesiredPatches).await;
}
