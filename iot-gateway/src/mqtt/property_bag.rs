//! The URL-encoded property bag that IoT Hub's MQTT topics carry after their fixed prefix.
//!
//! A bag is `key=value` pairs joined by `&`, each key and value percent-encoded. Devices encode
//! inconsistently (the Python SDK leaves `/` alone and encodes `$` as `%24`; the C SDK encodes
//! more), so decoding accepts any percent-encoding, and encoding escapes everything but the
//! unreserved characters so that the bag never contains a `/` and stays one topic level.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::error::ProtocolViolation;

/// Characters escaped when we write a bag: all but RFC 3986's unreserved ones.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The most pairs accepted in one bag; a topic is already bounded by the packet size, this bounds
/// the work per message.
pub(crate) const MAX_PAIRS: usize = 64;

/// Decodes a bag into its pairs, in order. An empty bag has no pairs; a key without `=` has an
/// empty value (IoT Hub sends such keys for flags).
pub(crate) fn decode(bag: &str) -> Result<Vec<(String, String)>, ProtocolViolation> {
    let mut pairs = Vec::new();
    for part in bag.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_PAIRS {
            return Err(ProtocolViolation::PropertyBag(format!(
                "more than {MAX_PAIRS} properties"
            )));
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let key = unescape(key)?;
        if key.is_empty() {
            return Err(ProtocolViolation::PropertyBag("empty property name".into()));
        }
        pairs.push((key, unescape(value)?));
    }
    Ok(pairs)
}

/// Encodes pairs into a bag (no leading or trailing separator).
pub(crate) fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
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

/// Percent-encodes one value the way [`encode`] does.
pub(crate) fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, ESCAPED).to_string()
}

/// Percent-decodes one key or value; the result must be UTF-8 without NUL.
fn unescape(raw: &str) -> Result<String, ProtocolViolation> {
    let text = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ProtocolViolation::PropertyBag("a property is not UTF-8".into()))?;
    if text.contains('\0') {
        return Err(ProtocolViolation::PropertyBag(
            "a property contains NUL".into(),
        ));
    }
    Ok(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_the_python_sdk_sends() {
        // urllib.parse.quote leaves '/' and encodes '$'.
        let pairs = decode("%24.mid=m%201&%24.ct=application/json&temp%20alert=true").expect("bag");
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
        assert_eq!(decode("").expect("empty"), vec![]);
        assert_eq!(
            decode("a&&b=").expect("bag"),
            vec![("a".into(), String::new()), ("b".into(), String::new())]
        );
    }

    #[test]
    fn refuses_bad_input() {
        assert!(decode("%FF=1").is_err());
        assert!(decode("a=%00").is_err());
        assert!(decode("=value").is_err());
        let many = (0..=MAX_PAIRS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(decode(&many).is_err());
    }

    #[test]
    fn encoding_escapes_separators() {
        let bag = encode([("$.ct", "application/json"), ("a&b", "c=d")]);
        assert_eq!(bag, "%24.ct=application%2Fjson&a%26b=c%3Dd");
        assert!(!bag.contains('/'));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            pairs in proptest::collection::vec(("[^\\x00]{1,12}", "[^\\x00]{0,12}"), 0..8)
        ) {
            let bag = encode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert!(!bag.contains('/'));
            prop_assert_eq!(decode(&bag).expect("own encoding decodes"), pairs);
        }

        #[test]
        fn decode_never_panics(bag in ".{0,200}") {
            let _ = decode(&bag);
        }
    }
}
