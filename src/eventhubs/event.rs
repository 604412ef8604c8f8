//! A telemetry record as an Event Hubs event, with IoT Hub's system properties.
//!
//! | record | event |
//! | --- | --- |
//! | payload | one `data` body section |
//! | offset `n` | annotations `x-opt-sequence-number` = `n` (long), `x-opt-offset` = `"n"` |
//! | enqueued time | annotations `x-opt-enqueued-time` and `iothub-enqueuedtime` (timestamps) |
//! | key (the device id) | annotation `x-opt-partition-key` |
//! | `iothub-*`, `dt-*` headers (the hub's stamps) | annotations of the same name (strings) |
//! | `message-id`, `correlation-id`, `user-id`, `content-type`, `content-encoding`, `expiry-time` | the properties section (`absolute-expiry-time` for the last) |
//! | every other header (the device's application properties) | application properties (strings) |

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};
use iot_core::StoredRecord;
use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};

/// IoT Hub's stamp of the enqueued time, as an annotation.
const IOTHUB_ENQUEUED_TIME: &str = "iothub-enqueuedtime";
const USER_ID: &str = "user-id";
/// The message's expiry (Unix milliseconds), as the hub stores it.
const EXPIRY_TIME: &str = "expiry-time";

/// Whether a header is a system property (never an application property), as the routing
/// query language decides it (`iot_stream::routing::MessageView::app_property`).
fn is_system(name: &str) -> bool {
    let prefixed = |p: &str| {
        name.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        MESSAGE_ID,
        CORRELATION_ID,
        USER_ID,
        EXPIRY_TIME,
    ]
    .iter()
    .any(|s| s.eq_ignore_ascii_case(name))
        || name.starts_with('$')
        || prefixed("iothub-")
        || prefixed("dt-")
}

fn millis(t: iot_core::Timestamp) -> Timestamp {
    Timestamp::from_milliseconds(i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX))
}

/// The event for `stored`.
pub(crate) fn to_message(stored: &StoredRecord) -> Message<Data> {
    let record = &stored.record;
    let offset = stored.offset.0;
    let enqueued = millis(stored.enqueued_time);
    let mut annotations = MessageAnnotations::builder();
    let mut application = ApplicationProperties::builder();
    let mut properties = Properties::default();
    let mut has_properties = false;
    let mut has_application = false;
    for (name, value) in record.headers.iter() {
        if name.eq_ignore_ascii_case(IOTHUB_ENQUEUED_TIME) {
            continue;
        }
        if name == MESSAGE_ID {
            properties.message_id = Some(MessageId::String(value.to_owned()));
            has_properties = true;
        } else if name == CORRELATION_ID {
            properties.correlation_id = Some(MessageId::String(value.to_owned()));
            has_properties = true;
        } else if name == CONTENT_TYPE {
            properties.content_type = Some(Symbol::from(value));
            has_properties = true;
        } else if name == CONTENT_ENCODING {
            properties.content_encoding = Some(Symbol::from(value));
            has_properties = true;
        } else if name == EXPIRY_TIME
            && let Ok(ms) = value.parse::<i64>()
        {
            properties.absolute_expiry_time = Some(Timestamp::from_milliseconds(ms));
            has_properties = true;
        } else if name == USER_ID {
            properties.user_id = Some(Binary::from(value.as_bytes().to_vec()));
            has_properties = true;
        } else if is_system(name) {
            if !name.starts_with('$') {
                annotations = annotations.insert(Symbol::from(name), Value::String(value.into()));
            }
        } else {
            application = application.insert(name.to_owned(), SimpleValue::String(value.into()));
            has_application = true;
        }
    }
    let annotations = annotations
        .insert(
            Symbol::from(IOTHUB_ENQUEUED_TIME),
            Value::Timestamp(enqueued.clone()),
        )
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(i64::try_from(offset).unwrap_or(i64::MAX)),
        )
        .insert(
            Symbol::from("x-opt-offset"),
            Value::String(offset.to_string()),
        )
        .insert(
            Symbol::from("x-opt-enqueued-time"),
            Value::Timestamp(enqueued),
        )
        .insert(
            Symbol::from("x-opt-partition-key"),
            Value::String(record.key.clone()),
        )
        .build();
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(annotations),
        properties: has_properties.then_some(properties),
        application_properties: has_application.then(|| application.build()),
        body: Data(Binary::from(record.payload.to_vec())),
        footer: None,
    }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    use iot_core::{Offset, PartitionId, Record};

    use super::*;

    #[test]
    fn maps_stamps_to_annotations_and_properties_to_application_properties() {
        let record = Record::new("dev-1", "{}")
            .with_header("iothub-connection-device-id", "dev-1")
            .with_header("message-id", "m1")
            .with_header("content-type", "application/json")
            .with_header("level", "hot");
        let stored = StoredRecord::new(
            PartitionId(2),
            Offset(41),
            iot_core::Timestamp::from_unix_millis(1_700_000_000_000),
            record,
        );
        let m = to_message(&stored);
        let ann = m.message_annotations.expect("annotations");
        let get = |k: &str| ann.get(&OwnedKey::Symbol(Symbol::from(k))).cloned();
        assert_eq!(
            get("iothub-connection-device-id"),
            Some(Value::String("dev-1".into()))
        );
        assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(41)));
        assert_eq!(get("x-opt-offset"), Some(Value::String("41".into())));
        assert_eq!(
            get("x-opt-enqueued-time"),
            Some(Value::Timestamp(Timestamp::from_milliseconds(
                1_700_000_000_000
            )))
        );
        let app = m.application_properties.expect("application properties");
        assert_eq!(app.get("level"), Some(&SimpleValue::String("hot".into())));
        assert_eq!(app.len(), 1);
        let props = m.properties.expect("properties");
        assert_eq!(props.message_id, Some(MessageId::String("m1".into())));
        assert_eq!(&m.body.0[..], b"{}");
    }
}
