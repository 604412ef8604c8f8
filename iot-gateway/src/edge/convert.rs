//! Between the local hub's records and the device client's messages, both ways.

use std::time::Duration;

use iot_core::{Record, Timestamp};

use crate::client;
use crate::message::{C2dMessage, header};
use crate::validate;

/// The upstream message of a local telemetry record: its payload, its system properties (message
/// and correlation id, content type and encoding, expiry, user id, interface id, output name,
/// component) and its custom properties, in order. The local hub's stamps (`iothub-connection-…`,
/// `iothub-enqueuedtime`, `$…`, `dt-dataschema`) stay behind: the cloud hub stamps its own, as
/// the leaf device. So do the retain flag and the will marker (docs/field-gateway.md, limits).
pub(crate) fn upstream_message(record: &Record) -> client::Message {
    let headers = &record.headers;
    let owned = |name: &str| headers.get(name).map(str::to_owned);
    let mut message = client::Message::new(record.payload.clone());
    message.message_id = owned(header::MESSAGE_ID);
    message.correlation_id = owned(header::CORRELATION_ID);
    message.content_type = owned(header::CONTENT_TYPE);
    message.content_encoding = owned(header::CONTENT_ENCODING);
    message.expiry = headers
        .get(header::EXPIRY_TIME)
        .and_then(|millis| millis.parse().ok())
        .map(Timestamp::from_unix_millis);
    message.user_id = owned(header::USER_ID);
    message.interface_id = owned(header::INTERFACE_ID);
    message.output_name = owned(header::OUTPUT_NAME);
    message.component = owned(header::COMPONENT);
    message.properties = headers
        .iter()
        .filter(|(name, _)| !validate::is_reserved_name(name) && *name != header::RETAIN)
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    message
}

/// The local C2D message of one the cloud hub sent to a leaf: id, correlation id, content type
/// and encoding, custom properties, and the time left before `$.exp`. The local hub writes no
/// feedback (the upstream message is completed once the local inbox holds it).
pub(crate) fn local_c2d(upstream: &client::C2dMessage, now: Timestamp) -> C2dMessage {
    let owned = |name: &str| upstream.property(name).map(str::to_owned);
    let ttl = upstream
        .property("$.exp")
        .and_then(crate::mqtt::rfc3339::parse_expiry)
        .map(|expiry| {
            // An already expired message still gets a moment: the cloud hub sent it, so it was
            // alive there; the local hub refuses a zero time to live.
            let left = expiry.as_unix_millis().saturating_sub(now.as_unix_millis());
            Duration::from_millis(left.max(1000))
        });
    let mut message = C2dMessage::new(upstream.payload.clone());
    message.message_id = owned("$.mid");
    message.correlation_id = owned("$.cid");
    message.content_type = owned("$.ct");
    message.content_encoding = owned("$.ce");
    message.ttl = ttl;
    message.properties = upstream
        .properties
        .iter()
        .filter(|(name, _)| !validate::is_reserved_name(name))
        .cloned()
        .collect();
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_ids_and_custom_properties_and_loses_the_stamps() {
        let record = Record::new("leaf-1", "42")
            .with_header(header::DEVICE_ID, "leaf-1")
            .with_header(header::ENQUEUED_TIME, "1")
            .with_header(header::MESSAGE_ID, "m-7")
            .with_header(header::CORRELATION_ID, "c-7")
            .with_header(header::CONTENT_TYPE, "application/json")
            .with_header(header::CONTENT_ENCODING, "utf-8")
            .with_header(header::EXPIRY_TIME, "1700000000123")
            .with_header(header::USER_ID, "u-1")
            .with_header(header::INTERFACE_ID, "if-1")
            .with_header(header::OUTPUT_NAME, "out-1")
            .with_header(header::COMPONENT, "thermostat1")
            .with_header(header::MODEL_ID, "dtmi:x;1")
            .with_header(header::RETAIN, "true")
            .with_header("unit", "C")
            .with_header("zone", "a/b");
        let m = upstream_message(&record);
        assert_eq!(m.payload.as_ref(), b"42");
        assert_eq!(m.message_id.as_deref(), Some("m-7"));
        assert_eq!(m.correlation_id.as_deref(), Some("c-7"));
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            m.expiry,
            Some(Timestamp::from_unix_millis(1_700_000_000_123))
        );
        assert_eq!(m.user_id.as_deref(), Some("u-1"));
        assert_eq!(m.interface_id.as_deref(), Some("if-1"));
        assert_eq!(m.output_name.as_deref(), Some("out-1"));
        assert_eq!(m.component.as_deref(), Some("thermostat1"));
        assert_eq!(
            m.properties,
            vec![("unit".into(), "C".into()), ("zone".into(), "a/b".into())]
        );
    }

    #[test]
    fn a_c2d_message_keeps_its_ids_properties_and_remaining_lifetime() {
        let upstream = client::C2dMessage {
            payload: "open".into(),
            properties: vec![
                ("$.mid".into(), "c-1".into()),
                ("$.cid".into(), "r-1".into()),
                ("$.ct".into(), "text/plain".into()),
                ("$.ce".into(), "utf-8".into()),
                ("$.to".into(), "/devices/leaf-1/messages/devicebound".into()),
                ("$.exp".into(), "1970-01-01T00:01:40.000Z".into()),
                ("iothub-ack".into(), "full".into()),
                ("iothub-locktoken".into(), "1.1".into()),
                ("valve".into(), "3".into()),
            ],
            ack: None,
            #[cfg(feature = "client-https")]
            https: None,
        };
        let local = local_c2d(&upstream, Timestamp::from_unix_millis(40_000));
        assert_eq!(local.payload.as_ref(), b"open");
        assert_eq!(local.message_id.as_deref(), Some("c-1"));
        assert_eq!(local.correlation_id.as_deref(), Some("r-1"));
        assert_eq!(local.content_type.as_deref(), Some("text/plain"));
        assert_eq!(local.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(local.ttl, Some(Duration::from_secs(60)));
        assert_eq!(local.properties, vec![("valve".into(), "3".into())]);

        let late = local_c2d(&upstream, Timestamp::from_unix_millis(500_000));
        assert_eq!(late.ttl, Some(Duration::from_secs(1)));
    }
}
