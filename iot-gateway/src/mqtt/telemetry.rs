//! Turning a device's PUBLISH on its telemetry topic into [`Telemetry`], and a C2D delivery into
//! the property bag of its topic.

use bytes::Bytes;
use iot_core::Timestamp;

use super::error::{ProtocolViolation, shorten};
use super::property_bag;
use crate::message::{C2dDelivery, Telemetry, header};

/// Builds the telemetry of a PUBLISH whose topic carried `bag`.
///
/// System properties (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.exp`) fill [`Telemetry::system`]; the
/// other `$.` properties the SDKs send (`$.uid`, `$.on`, `$.ifid`, `$.to`) have no meaning here
/// and are dropped, since names starting with `$` are reserved in records; everything else is a
/// custom property, in order.
pub(crate) fn from_publish(
    bag: &str,
    payload: Bytes,
    will: bool,
) -> Result<Telemetry, ProtocolViolation> {
    let mut telemetry = Telemetry::new(payload);
    telemetry.will = will;
    for (key, value) in property_bag::decode(bag)? {
        let system = &mut telemetry.system;
        match key.as_str() {
            "$.mid" => system.message_id = Some(value),
            "$.cid" => system.correlation_id = Some(value),
            "$.ct" => system.content_type = Some(value),
            "$.ce" => system.content_encoding = Some(value),
            "$.exp" => {
                system.expiry = Some(parse_expiry(&value).ok_or_else(|| {
                    ProtocolViolation::PropertyBag(format!(
                        "$.exp {:?} is neither RFC 3339 nor Unix milliseconds",
                        shorten(&value)
                    ))
                })?)
            }
            k if k.starts_with(header::RESERVED_PREFIX) => {
                tracing::debug!(property = k, "dropping an unsupported system property");
            }
            _ => telemetry.properties.push((key, value)),
        }
    }
    Ok(telemetry)
}

/// The property bag of a C2D delivery's topic: `$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.to`, then
/// the custom properties.
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
    pairs.extend(delivery.properties.iter().cloned());
    pairs
}

/// `$.exp` as IoT Hub documents it (`2030-01-01T00:00:00.000Z`, RFC 3339), or as Unix
/// milliseconds, which some devices send.
fn parse_expiry(text: &str) -> Option<Timestamp> {
    if let Ok(millis) = text.parse::<u64>() {
        return Some(Timestamp::from_unix_millis(millis));
    }
    Timestamp::parse_rfc3339(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_custom_properties() {
        let t = from_publish(
            "%24.mid=m1&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.500Z&%24.uid=u&temp=21&site=a%20b",
            Bytes::from_static(b"{}"),
            false,
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
    }

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("0"), Some(Timestamp::EPOCH));
        assert_eq!(
            parse_expiry("1970-01-02T00:00:01Z"),
            Some(Timestamp::from_unix_millis(86_401_000))
        );
        assert_eq!(
            parse_expiry("2000-03-01T00:00:00+00:00"),
            Some(Timestamp::from_unix_millis(951_868_800_000))
        );
        for bad in [
            "",
            "2030-13-01T00:00:00Z",
            "2030-01-01T00:00:00",
            "1969-12-31T00:00:00Z",
            "x",
            // Years whose day arithmetic used to overflow (a panic with overflow checks).
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775808-01-01T00:00:00Z",
            "99999999999999-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
        assert!(from_publish("%24.exp=soon", Bytes::new(), false).is_err());
    }
}
