//! Turning a device's PUBLISH on its telemetry topic into [`Telemetry`], and a C2D delivery into
//! the property bag of its topic.

use bytes::Bytes;

use super::error::{ProtocolViolation, shorten};
use super::{property_bag, rfc3339};
use crate::message::{C2dDelivery, Telemetry, header};

/// How the PUBLISH that carried a message was flagged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// The endpoint sends it as the device's last will.
    pub(crate) will: bool,
    /// The device set the retain flag: nothing is retained, the flag is passed on as
    /// [`header::RETAIN`], as IoT Hub does.
    pub(crate) retain: bool,
}

/// Builds the telemetry of a PUBLISH whose topic carried `bag`.
///
/// The system properties the SDKs send (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.exp`, `$.uid`,
/// `$.ifid`, `$.on`, `$.sub`) fill [`Telemetry::system`]; `$.to` and unknown `$.` keys mean
/// nothing on device-to-cloud messages and are dropped. Keys naming a header the gateway writes
/// itself (`iothub-…`, `dt-dataschema`, `mqtt-retain`) are dropped too: IoT Hub overwrites
/// them, and dropping keeps a device from passing off its own values as the gateway's stamps
/// without cutting it off. Everything else is a custom property, in order.
pub(crate) fn from_publish(
    bag: &str,
    payload: Bytes,
    flags: Flags,
) -> Result<Telemetry, ProtocolViolation> {
    let mut telemetry = Telemetry::new(payload);
    telemetry.will = flags.will;
    for (key, value) in property_bag::decode(bag)? {
        let system = &mut telemetry.system;
        match key.as_str() {
            "$.mid" => system.message_id = Some(value),
            "$.cid" => system.correlation_id = Some(value),
            "$.ct" => system.content_type = Some(value),
            "$.ce" => system.content_encoding = Some(value),
            "$.uid" => system.user_id = Some(value),
            "$.ifid" => system.interface_id = Some(value),
            "$.on" => system.output_name = Some(value),
            "$.sub" => system.component = Some(value),
            "$.exp" => {
                system.expiry = Some(rfc3339::parse_expiry(&value).ok_or_else(|| {
                    ProtocolViolation::PropertyBag(format!(
                        "$.exp {:?} is neither RFC 3339 nor Unix milliseconds",
                        shorten(&value)
                    ))
                })?)
            }
            k if k.starts_with(header::RESERVED_PREFIX) => {
                tracing::debug!(property = k, "dropping an unsupported system property");
            }
            k if stamped_by_gateway(k) => {
                tracing::debug!(
                    property = %shorten(k),
                    "dropping a property the gateway writes itself"
                );
            }
            _ => telemetry.properties.push((key, value)),
        }
    }
    if flags.retain {
        telemetry
            .properties
            .push((header::RETAIN.to_string(), "true".to_string()));
    }
    Ok(telemetry)
}

/// Whether the gateway writes a header of this name from what it knows rather than from the
/// message: IoT Hub's stamps (`iothub-…`, `dt-dataschema`) and the retain flag. (Names of system
/// properties a device sets through `$.` keys, such as `message-id`, are not dropped here: the
/// hub refuses them as custom properties, which tells the device its message is wrong.)
fn stamped_by_gateway(name: &str) -> bool {
    name == header::RETAIN || name == header::MODEL_ID || name.starts_with(header::IOTHUB_PREFIX)
}

/// The C2D property that carries the delivery's lock token (the HTTPS device API's `ETag`).
pub const LOCK_TOKEN_PROPERTY: &str = "iothub-locktoken";

/// The property bag of a C2D delivery's topic: `$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.to`,
/// `$.exp` (RFC 3339 UTC), `iothub-ack` — what IoT Hub sends — then this hub's
/// [`LOCK_TOKEN_PROPERTY`] and the custom properties.
pub(crate) fn c2d_bag(delivery: &C2dDelivery, to: &str) -> Vec<(String, String)> {
    let mut pairs = vec![("$.mid".to_string(), delivery.message_id.clone())];
    let optional = [
        ("$.cid", &delivery.correlation_id),
        ("$.ct", &delivery.content_type),
        ("$.ce", &delivery.content_encoding),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            pairs.push((key.to_string(), value.clone()));
        }
    }
    pairs.push(("$.to".to_string(), to.to_string()));
    pairs.push((
        "$.exp".to_string(),
        rfc3339::format_millis(delivery.expires_at),
    ));
    pairs.push(("iothub-ack".to_string(), delivery.ack.as_str().to_string()));
    // Not an IoT Hub property: the delivery's lock token, the `ETag` the HTTPS device API takes,
    // so that a device can reject or abandon over HTTPS what it received here (MQTT can only
    // complete). An `iothub-` name cannot clash with an application property.
    pairs.push((
        LOCK_TOKEN_PROPERTY.to_string(),
        delivery.lock_token.to_string(),
    ));
    pairs.extend(delivery.properties.iter().cloned());
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::Timestamp;

    #[test]
    fn system_and_custom_properties() {
        let t = from_publish(
            "%24.mid=m1&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.500Z&temp=21&site=a%20b",
            Bytes::from_static(b"{}"),
            Flags::default(),
        )
        .expect("telemetry");
        assert_eq!(t.system.message_id.as_deref(), Some("m1"));
        assert_eq!(t.system.correlation_id.as_deref(), Some("c1"));
        assert_eq!(t.system.content_type.as_deref(), Some("application/json"));
        assert_eq!(t.system.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            t.system.expiry,
            Some(Timestamp::from_unix_millis(1_893_456_000_500))
        );
        assert_eq!(
            t.properties,
            vec![("temp".into(), "21".into()), ("site".into(), "a b".into())]
        );
        assert!(!t.will);
        assert!(from_publish("%24.exp=soon", Bytes::new(), Flags::default()).is_err());
    }

    /// The `$.` keys the Azure SDKs send besides the basic five are kept, not dropped.
    #[test]
    fn sdk_system_properties_are_kept() {
        let t = from_publish(
            "%24.uid=ops&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.on=out1&%24.sub=thermostat1&%24.to=%2Fx&%24.unknown=1",
            Bytes::new(),
            Flags::default(),
        )
        .expect("telemetry");
        assert_eq!(t.system.user_id.as_deref(), Some("ops"));
        assert_eq!(
            t.system.interface_id.as_deref(),
            Some("urn:azureiot:Security:SecurityAgent:1")
        );
        assert_eq!(t.system.output_name.as_deref(), Some("out1"));
        assert_eq!(t.system.component.as_deref(), Some("thermostat1"));
        assert!(t.properties.is_empty(), "{:?}", t.properties);
    }

    #[test]
    fn gateway_stamps_in_the_bag_are_dropped_and_retain_is_passed_on() {
        let t = from_publish(
            "iothub-connection-device-id=other&iothub-MessageType=Will&dt-dataschema=dtmi%3Afake%3B1&mqtt-retain=false&iothub-enqueuedtime=0&kept=1",
            Bytes::new(),
            Flags {
                will: false,
                retain: true,
            },
        )
        .expect("telemetry");
        assert_eq!(
            t.properties,
            vec![
                ("kept".into(), "1".into()),
                (header::RETAIN.into(), "true".into())
            ]
        );
        // Names the device sets through `$.` keys are not dropped: the hub refuses them.
        let t = from_publish("message-id=x&user-id=y", Bytes::new(), Flags::default())
            .expect("telemetry");
        assert_eq!(t.properties.len(), 2);
    }
}
