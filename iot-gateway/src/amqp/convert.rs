//! AMQP messages to and from the gateway's messages, with IoT Hub's mapping:
//!
//! | AMQP | gateway |
//! | --- | --- |
//! | `properties.message-id` / `correlation-id` | message id / correlation id (strings; numeric, UUID and binary ids as text) |
//! | `properties.content-type` / `content-encoding` | content type / encoding |
//! | `properties.user-id` | user id (UTF-8) |
//! | `properties.absolute-expiry-time` | expiry |
//! | `properties.to` (service C2D) | the device, `/devices/{id}/messages/devicebound` |
//! | `application-properties` | custom properties (values as text); `iothub-ack` on service C2D is the ack request |
//! | body: data sections (or an amqp-value string or binary) | payload |
//!
//! A batched telemetry message (message format [`AMQP_BATCH_FORMAT`]) holds one encoded
//! message per data section; each is mapped as above ([`telemetry_batch`]).

use bytes::Bytes;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Header, Message, MessageAnnotations, MessageId,
    Properties,
};
use fe2o3_amqp::types::primitives::{
    Binary, OrderedMap, SimpleValue, Symbol, Timestamp as AmqpTimestamp, Value,
};
use iot_core::{DeviceId, Timestamp};

use crate::adapter::{AMQP_BATCH_FORMAT, Address, check_amqp_values, properties};
use crate::message::{AckRequest, C2dDelivery, C2dMessage, Feedback, FeedbackStatus, Telemetry};

/// The content type of IoT Hub's feedback messages.
pub const FEEDBACK_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// An AMQP message as the endpoint receives it.
pub(super) type AmqpMessage = Message<Body<Value>>;

/// Why a message cannot be taken (answered with a `rejected` outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unusable(pub(super) String);

/// A message id as text: strings as they are, numbers in decimal, UUIDs hyphenated, binary
/// ids as lowercase hex.
pub(super) fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// An application property's value as text.
fn simple_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Float(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        SimpleValue::Char(c) => c.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Uuid(u) => uuid_text(u.as_inner()),
        SimpleValue::Null => String::new(),
        _ => return None,
    })
}

/// The payload of a message body.
pub(super) fn payload(body: &Body<Value>) -> Result<Bytes, Unusable> {
    match body {
        Body::Data(sections) => {
            let mut out = Vec::new();
            for Data(bytes) in sections.iter() {
                out.extend_from_slice(bytes);
            }
            Ok(Bytes::from(out))
        }
        Body::Value(AmqpValue(Value::String(s))) => Ok(Bytes::from(s.clone().into_bytes())),
        Body::Value(AmqpValue(Value::Binary(b))) => Ok(Bytes::from(b.to_vec())),
        Body::Value(AmqpValue(Value::Null)) | Body::Empty => Ok(Bytes::new()),
        _ => Err(Unusable(
            "the body must be data sections, or an amqp-value string or binary".into(),
        )),
    }
}

/// The application properties as text pairs, in order; `None` values dropped.
fn app_pairs(message: &AmqpMessage) -> Vec<(String, String)> {
    message
        .application_properties
        .as_ref()
        .map(|ApplicationProperties(map)| {
            map.iter()
                .filter_map(|(k, v)| simple_text(v).map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Device-to-cloud telemetry from a device's message on `/devices/{id}/messages/events`.
pub(super) fn telemetry(message: &AmqpMessage) -> Result<Telemetry, Unusable> {
    // Application properties whose names look like the `$.` system keys would be read as
    // system properties by the shared mapping: drop them (AMQP carries system properties in
    // their own section). The system properties follow, so they win.
    let mut pairs: Vec<(String, String)> = app_pairs(message)
        .into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .collect();
    if let Some(p) = &message.properties {
        let mut system = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                pairs.push((key.to_string(), value));
            }
        };
        system("$.mid", p.message_id.as_ref().map(id_text));
        system("$.cid", p.correlation_id.as_ref().map(id_text));
        system(
            "$.ct",
            p.content_type.as_ref().map(|s| s.as_str().to_owned()),
        );
        system(
            "$.ce",
            p.content_encoding.as_ref().map(|s| s.as_str().to_owned()),
        );
        system(
            "$.uid",
            p.user_id
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        );
        system(
            "$.exp",
            p.absolute_expiry_time
                .as_ref()
                .map(|t| t.milliseconds().to_string()),
        );
    }
    if let Some(MessageAnnotations(annotations)) = &message.message_annotations {
        // The Azure SDKs put the Plug and Play and module fields in message annotations.
        for (key, name) in [
            ("iothub-interface-id", "$.ifid"),
            ("iothub-component-name", "$.sub"),
            ("iothub-outputname", "$.on"),
        ] {
            let found = annotations.iter().find_map(|(k, v)| match k {
                OwnedKey::Symbol(s) if s.as_str() == key => Some(v),
                _ => None,
            });
            if let Some(Value::String(v)) = found {
                pairs.push((name.to_string(), v.clone()));
            }
        }
    }
    properties::telemetry_from_properties(pairs, payload(&message.body)?)
        .map_err(|e| Unusable(e.reason().to_string()))
}

/// Telemetry records from a batched message ([`AMQP_BATCH_FORMAT`]): one per data section, in
/// order, each section an encoded AMQP message. A section of the outer message that an inner
/// message lacks (properties, application properties, message annotations) is taken from the
/// outer one, as Microsoft's uAMQP batches apply it to each message. All or nothing: the first
/// unusable inner message makes the whole batch unusable, naming its position.
pub(super) fn telemetry_batch(
    outer: &AmqpMessage,
    max_messages: usize,
    max_depth: usize,
) -> Result<Vec<Telemetry>, Unusable> {
    let Body::Data(sections) = &outer.body else {
        return Err(Unusable(format!(
            "a batched message (format {AMQP_BATCH_FORMAT:#x}) must hold data sections"
        )));
    };
    if sections.is_empty() {
        return Err(Unusable("a batched message holds no message".into()));
    }
    if sections.len() > max_messages {
        return Err(Unusable(format!(
            "a batched message holds {} messages, at most {max_messages} are taken",
            sections.len()
        )));
    }
    let mut records = Vec::with_capacity(sections.len());
    for (index, Data(bytes)) in sections.iter().enumerate() {
        let unusable =
            |reason: &dyn std::fmt::Display| Unusable(format!("batched message {index}: {reason}"));
        let inner = decode_inner(bytes, max_depth).map_err(|e| unusable(&e))?;
        let inner = Message {
            properties: inner.properties.or_else(|| outer.properties.clone()),
            application_properties: inner
                .application_properties
                .or_else(|| outer.application_properties.clone()),
            message_annotations: inner
                .message_annotations
                .or_else(|| outer.message_annotations.clone()),
            ..inner
        };
        records.push(telemetry(&inner).map_err(|Unusable(reason)| unusable(&reason))?);
    }
    Ok(records)
}

/// One message of a batch, from the bytes of its data section. The encoding is checked first
/// (sizes within the bytes, nesting bounded), so the decoder allocates nothing beyond them.
fn decode_inner(bytes: &[u8], max_depth: usize) -> Result<AmqpMessage, String> {
    use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;

    check_amqp_values(bytes, max_depth).map_err(|e| e.to_string())?;
    let reader = serde_amqp::read::SliceReader::new(bytes);
    <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(reader)
        .map_err(|e| format!("not an AMQP message: {e}"))
}

/// A C2D message from a back end's message on `/messages/devicebound`, and the device its
/// `to` names.
pub(super) fn c2d_message(message: &AmqpMessage) -> Result<(DeviceId, C2dMessage), Unusable> {
    let props = message
        .properties
        .as_ref()
        .ok_or_else(|| Unusable("a C2D message needs properties with `to`".into()))?;
    let to = props
        .to
        .as_deref()
        .ok_or_else(|| Unusable("a C2D message needs `to`".into()))?;
    let device = match Address::parse(to.split('/')) {
        Ok(Address::DeviceBound { device }) => device,
        _ => {
            return Err(Unusable(
                "`to` must be /devices/{id}/messages/devicebound".into(),
            ));
        }
    };
    let mut c2d = C2dMessage::new(payload(&message.body)?);
    c2d.message_id = props.message_id.as_ref().map(id_text);
    c2d.correlation_id = props.correlation_id.as_ref().map(id_text);
    c2d.content_type = props.content_type.as_ref().map(|s| s.as_str().to_owned());
    c2d.content_encoding = props
        .content_encoding
        .as_ref()
        .map(|s| s.as_str().to_owned());
    if let Some(expiry) = &props.absolute_expiry_time {
        let now = Timestamp::now().as_unix_millis();
        let at = u64::try_from(expiry.milliseconds()).unwrap_or(0);
        if at <= now {
            return Err(Unusable("the message expired already".into()));
        }
        c2d.ttl = Some(std::time::Duration::from_millis(at - now));
    }
    for (key, value) in app_pairs(message) {
        if key.eq_ignore_ascii_case("iothub-ack") {
            c2d.ack = match value.to_ascii_lowercase().as_str() {
                "none" => AckRequest::None,
                "positive" => AckRequest::Positive,
                "negative" => AckRequest::Negative,
                "full" => AckRequest::Full,
                _ => {
                    return Err(Unusable(
                        "iothub-ack must be none, positive, negative or full".into(),
                    ));
                }
            };
        } else {
            c2d.properties.push((key, value));
        }
    }
    Ok((device, c2d))
}

fn timestamp(t: Timestamp) -> AmqpTimestamp {
    AmqpTimestamp::from_milliseconds(i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX))
}

/// The AMQP message a device receives for a C2D delivery.
pub(super) fn c2d_delivery(device: &DeviceId, delivery: &C2dDelivery) -> Message<Body<Value>> {
    let properties = Properties {
        message_id: Some(MessageId::String(delivery.message_id.clone())),
        correlation_id: delivery.correlation_id.clone().map(MessageId::String),
        content_type: delivery.content_type.clone().map(Symbol::from),
        content_encoding: delivery.content_encoding.clone().map(Symbol::from),
        to: Some(Address::device_bound_of(device)),
        absolute_expiry_time: Some(timestamp(delivery.expires_at)),
        creation_time: Some(timestamp(delivery.enqueued_at)),
        ..Properties::default()
    };
    let mut app = OrderedMap::new();
    for (k, v) in &delivery.properties {
        app.insert(k.clone(), SimpleValue::String(v.clone()));
    }
    let mut annotations = OrderedMap::new();
    annotations.insert(
        Symbol::from("iothub-enqueuedtime").into(),
        Value::Timestamp(timestamp(delivery.enqueued_at)),
    );
    annotations.insert(
        Symbol::from("iothub-ack").into(),
        Value::String(delivery.ack.as_str().to_owned()),
    );
    Message {
        header: Some(Header {
            durable: true,
            delivery_count: delivery.delivery_count.saturating_sub(1),
            ..Header::default()
        }),
        delivery_annotations: None,
        message_annotations: Some(MessageAnnotations(annotations)),
        properties: Some(properties),
        application_properties: Some(ApplicationProperties(app)),
        body: Body::Data(vec![Data(Binary::from(delivery.payload.to_vec()))].into()),
        footer: None,
    }
}

/// IoT Hub's feedback status names.
fn status_code(status: FeedbackStatus) -> &'static str {
    match status {
        FeedbackStatus::Success => "Success",
        FeedbackStatus::Expired => "Expired",
        FeedbackStatus::DeliveryCountExceeded => "DeliveryCountExceeded",
        FeedbackStatus::Rejected => "Rejected",
    }
}

/// One feedback message: a JSON array of IoT Hub's feedback records in a data section.
pub(super) fn feedback_batch(records: &[Feedback], batch_id: u64) -> Message<Body<Value>> {
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "originalMessageId": r.message_id,
                "correlationId": r.correlation_id,
                "deviceId": r.device_id.as_str(),
                "deviceGenerationId": "",
                "statusCode": status_code(r.status),
                "description": status_code(r.status),
                "enqueuedTimeUtc": r.at.to_rfc3339(),
            })
        })
        .collect();
    let body = serde_json::to_vec(&json).unwrap_or_default();
    let properties = Properties {
        message_id: Some(MessageId::String(format!("feedback-{batch_id}"))),
        content_type: Some(Symbol::from(FEEDBACK_CONTENT_TYPE)),
        content_encoding: Some(Symbol::from("utf-8")),
        ..Properties::default()
    };
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties: None,
        body: Body::Data(vec![Data(Binary::from(body))].into()),
        footer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(props: Properties, app: &[(&str, SimpleValue)], body: &[u8]) -> AmqpMessage {
        let mut map = OrderedMap::new();
        for (k, v) in app {
            map.insert((*k).to_string(), v.clone());
        }
        Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(props),
            application_properties: Some(ApplicationProperties(map)),
            body: Body::Data(vec![Data(Binary::from(body.to_vec()))].into()),
            footer: None,
        }
    }

    #[test]
    fn telemetry_takes_system_and_application_properties() {
        let props = Properties {
            message_id: Some(MessageId::String("m1".into())),
            content_type: Some(Symbol::from("application/json")),
            ..Properties::default()
        };
        let m = message(
            props,
            &[
                ("temp", SimpleValue::Int(21)),
                ("$.mid", SimpleValue::String("forged".into())),
                (
                    "iothub-connection-device-id",
                    SimpleValue::String("other".into()),
                ),
            ],
            b"{}",
        );
        let t = telemetry(&m).expect("telemetry");
        assert_eq!(t.system.message_id.as_deref(), Some("m1"));
        assert_eq!(t.system.content_type.as_deref(), Some("application/json"));
        assert_eq!(t.properties, vec![("temp".to_string(), "21".to_string())]);
        assert_eq!(&t.payload[..], b"{}");
    }

    #[test]
    fn c2d_needs_a_device_address_and_reads_the_ack() {
        let props = Properties {
            to: Some("/devices/d1/messages/devicebound".into()),
            message_id: Some(MessageId::Ulong(7)),
            ..Properties::default()
        };
        let m = message(
            props,
            &[("iothub-ack", SimpleValue::String("full".into()))],
            b"x",
        );
        let (device, c2d) = c2d_message(&m).expect("c2d");
        assert_eq!(device.as_str(), "d1");
        assert_eq!(c2d.message_id.as_deref(), Some("7"));
        assert_eq!(c2d.ack, AckRequest::Full);
        assert!(c2d.properties.is_empty());
        let bad = message(
            Properties {
                to: Some("/devices/d1/messages/events".into()),
                ..Properties::default()
            },
            &[],
            b"x",
        );
        assert!(c2d_message(&bad).is_err());
    }
}
