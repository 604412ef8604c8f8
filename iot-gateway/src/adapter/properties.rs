//! Message properties as IoT Hub's protocols carry them: the URL-encoded property bag
//! (`key=value&…`, the MQTT topic suffix and the HTTP and CoAP query), and the mapping between
//! its `$.` system keys and [`Telemetry`] / [`C2dDelivery`].
//!
//! A bag is `key=value` pairs joined by `&`, each key and value percent-encoded. Devices encode
//! inconsistently (the Python SDK leaves `/` alone and encodes `$` as `%24`; the C SDK encodes
//! more), so decoding accepts any percent-encoding, and encoding escapes everything but the
//! unreserved characters so that a bag never contains a `/` and stays one MQTT topic level.

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::message::{C2dDelivery, Telemetry, header};
use crate::rfc3339;

/// Characters escaped when we write a bag: all but RFC 3986's unreserved ones.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The most pairs accepted in one bag: a bag is already bounded by the packet or datagram that
/// carried it, this bounds the work per message.
pub const MAX_PAIRS: usize = 64;

/// The C2D property that carries the delivery's lock token (the HTTPS device API's `ETag`): an
/// adapter hands it to the device so that the device can name the message it settles.
pub const LOCK_TOKEN_PROPERTY: &str = "iothub-locktoken";

/// Why a property bag or a property was refused. The text names the property, shortened, and
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid property: {0}")]
pub struct PropertyError(String);

impl PropertyError {
    /// What was wrong.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Decodes a bag into its pairs, in order. An empty bag has no pairs; a key without `=` has an
/// empty value (IoT Hub sends such keys for flags). Refused: more than [`MAX_PAIRS`] pairs, an
/// empty key, a key or value that is not UTF-8 or contains NUL once decoded.
pub fn decode_bag(bag: &str) -> Result<Vec<(String, String)>, PropertyError> {
    decode_pairs(bag.split('&'))
}

/// Decodes pairs given one percent-encoded `key=value` text each (query parameters already
/// split at `&`) with the rules of [`decode_bag`]. Empty texts are skipped.
pub fn decode_pairs<'a>(
    parts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, PropertyError> {
    collect_pairs(parts, unescape)
}

/// Pairs given one `key=value` text each that the protocol already carries unescaped (CoAP's
/// Uri-Query options: the client percent-decoded the URI into them), split at the first `=`
/// with the rules of [`decode_bag`] but nothing decoded. Empty texts are skipped.
pub fn plain_pairs<'a>(
    parts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, PropertyError> {
    collect_pairs(parts, |text| {
        if text.contains('\0') {
            return Err(PropertyError("a property contains NUL".into()));
        }
        Ok(text.to_owned())
    })
}

fn collect_pairs<'a>(
    parts: impl IntoIterator<Item = &'a str>,
    text: impl Fn(&str) -> Result<String, PropertyError>,
) -> Result<Vec<(String, String)>, PropertyError> {
    let mut pairs = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_PAIRS {
            return Err(PropertyError(format!("more than {MAX_PAIRS} properties")));
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let key = text(key)?;
        if key.is_empty() {
            return Err(PropertyError("empty property name".into()));
        }
        pairs.push((key, text(value)?));
    }
    Ok(pairs)
}

/// Encodes pairs into a bag (no leading or trailing separator).
pub fn encode_bag<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(key, ESCAPED));
        out.push('=');
        out.extend(utf8_percent_encode(value, ESCAPED));
    }
    out
}

/// Percent-encodes one value the way [`encode_bag`] does.
pub fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, ESCAPED).to_string()
}

/// Percent-decodes one key or value; the result must be UTF-8 without NUL.
fn unescape(raw: &str) -> Result<String, PropertyError> {
    let text = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PropertyError("a property is not UTF-8".into()))?;
    if text.contains('\0') {
        return Err(PropertyError("a property contains NUL".into()));
    }
    Ok(text.into_owned())
}

/// Builds the telemetry of a device message from its payload and its decoded properties.
///
/// The system properties the Azure SDKs send (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.exp`,
/// `$.uid`, `$.ifid`, `$.on`, `$.sub`) fill [`Telemetry::system`]; `$.to` and unknown `$.` keys
/// mean nothing on device-to-cloud messages and are dropped. Keys naming a header the gateway
/// writes itself (`iothub-…`, `dt-dataschema`, `mqtt-retain`) are dropped too: IoT Hub
/// overwrites them, and dropping keeps a device from passing off its own values as the
/// gateway's stamps without cutting it off. Everything else is a custom property, in order (the
/// gateway still validates names and values when the message is sent).
pub fn telemetry_from_properties(
    pairs: impl IntoIterator<Item = (String, String)>,
    payload: impl Into<Bytes>,
) -> Result<Telemetry, PropertyError> {
    let mut telemetry = Telemetry::new(payload);
    for (key, value) in pairs {
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
                    PropertyError("$.exp is neither RFC 3339 nor Unix milliseconds".into())
                })?)
            }
            k if k.starts_with(header::RESERVED_PREFIX) => {
                tracing::debug!(property = %shorten(k), "dropping an unsupported system property");
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
    Ok(telemetry)
}

/// Whether the gateway writes a header of this name from what it knows rather than from the
/// message: IoT Hub's stamps (`iothub-…`, `dt-dataschema`) and the retain flag. (Names of system
/// properties a device sets through `$.` keys, such as `message-id`, are not dropped here: the
/// hub refuses them as custom properties, which tells the device its message is wrong.)
fn stamped_by_gateway(name: &str) -> bool {
    name == header::RETAIN || name == header::MODEL_ID || name.starts_with(header::IOTHUB_PREFIX)
}

/// The properties of a C2D delivery as IoT Hub sends them to a device: `$.mid`, `$.cid`, `$.ct`,
/// `$.ce`, `$.to` (the address `to`), `$.exp` (RFC 3339 UTC), `iothub-ack`, then this hub's
/// [`LOCK_TOKEN_PROPERTY`] and the custom properties. Encode them with [`encode_bag`].
pub fn c2d_properties(delivery: &C2dDelivery, to: &str) -> Vec<(String, String)> {
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
    // so that a device can settle over any adapter what it received over another. An `iothub-`
    // name cannot clash with an application property.
    pairs.push((
        LOCK_TOKEN_PROPERTY.to_string(),
        delivery.lock_token.to_string(),
    ));
    pairs.extend(delivery.properties.iter().cloned());
    pairs
}

/// At most 64 characters of a device-chosen name, for logs and errors.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::Timestamp;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_the_python_sdk_sends() {
        // urllib.parse.quote leaves '/' and encodes '$'.
        let pairs =
            decode_bag("%24.mid=m%201&%24.ct=application/json&temp%20alert=true").expect("bag");
        assert_eq!(
            pairs,
            vec![
                ("$.mid".to_string(), "m 1".to_string()),
                ("$.ct".to_string(), "application/json".to_string()),
                ("temp alert".to_string(), "true".to_string()),
            ]
        );
    }

    #[test]
    fn keys_without_values_and_empty_parts() {
        assert_eq!(decode_bag("").expect("empty"), vec![]);
        assert_eq!(
            decode_bag("a&&b=").expect("bag"),
            vec![("a".into(), String::new()), ("b".into(), String::new())]
        );
        assert_eq!(
            decode_pairs(["a=1", "", "b%20c=%26"]).expect("pairs"),
            vec![("a".into(), "1".into()), ("b c".into(), "&".into())]
        );
        // Already unescaped: `%41` stays as it is, `=` after the first is the value's.
        assert_eq!(
            plain_pairs(["$.ct=a/b", "k=%41=1", "flag"]).expect("pairs"),
            vec![
                ("$.ct".into(), "a/b".into()),
                ("k".into(), "%41=1".into()),
                ("flag".into(), String::new())
            ]
        );
        assert!(plain_pairs(["=v"]).is_err());
        assert!(plain_pairs(["k=\0"]).is_err());
    }

    #[test]
    fn refuses_bad_input() {
        assert!(decode_bag("%FF=1").is_err());
        assert!(decode_bag("a=%00").is_err());
        assert!(decode_bag("=value").is_err());
        let many = (0..=MAX_PAIRS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(decode_bag(&many).is_err());
    }

    #[test]
    fn encoding_escapes_separators() {
        let bag = encode_bag([("$.ct", "application/json"), ("a&b", "c=d")]);
        assert_eq!(bag, "%24.ct=application%2Fjson&a%26b=c%3Dd");
        assert!(!bag.contains('/'));
    }

    fn telemetry(bag: &str) -> Result<Telemetry, PropertyError> {
        telemetry_from_properties(decode_bag(bag)?, Bytes::from_static(b"{}"))
    }

    #[test]
    fn system_and_custom_properties() {
        let t = telemetry(
            "%24.mid=m1&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.500Z&temp=21&site=a%20b",
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
        assert!(telemetry("%24.exp=soon").is_err());
    }

    /// The `$.` keys the Azure SDKs send besides the basic five are kept, not dropped.
    #[test]
    fn sdk_system_properties_are_kept() {
        let t = telemetry(
            "%24.uid=ops&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.on=out1&%24.sub=thermostat1&%24.to=%2Fx&%24.unknown=1",
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
    fn gateway_stamps_are_dropped() {
        let t = telemetry(
            "iothub-connection-device-id=other&iothub-MessageType=Will&dt-dataschema=dtmi%3Afake%3B1&mqtt-retain=false&iothub-enqueuedtime=0&kept=1",
        )
        .expect("telemetry");
        assert_eq!(t.properties, vec![("kept".into(), "1".into())]);
        // Names the device sets through `$.` keys are not dropped: the hub refuses them.
        let t = telemetry("message-id=x&user-id=y").expect("telemetry");
        assert_eq!(t.properties.len(), 2);
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            pairs in proptest::collection::vec(("[^\\x00]{1,12}", "[^\\x00]{0,12}"), 0..8)
        ) {
            let bag = encode_bag(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert!(!bag.contains('/'));
            prop_assert_eq!(decode_bag(&bag).expect("own encoding decodes"), pairs);
        }

        #[test]
        fn decode_never_panics(bag in ".{0,200}") {
            let _ = decode_bag(&bag);
        }
    }
}
