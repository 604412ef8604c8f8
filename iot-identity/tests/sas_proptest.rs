//! Property tests of SAS tokens: round trips, and tampering with any single character.

use iot_core::DeviceId;
use iot_identity::{SasVerifier, SymmetricKey, sas};
use proptest::prelude::*;

const ID_CHARS: &str = "abcXYZ019-.+%_#*?!(),:=@$'";

fn device_id() -> impl Strategy<Value = DeviceId> {
    let chars: Vec<char> = ID_CHARS.chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), 1..=128)
        .prop_map(|c| DeviceId::new(c.into_iter().collect::<String>()).expect("alphabet is valid"))
}

fn key() -> impl Strategy<Value = SymmetricKey> {
    proptest::collection::vec(any::<u8>(), 32..=64)
        .prop_map(|b| SymmetricKey::from_bytes(&b).expect("length is valid"))
}

fn host() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,20}\\.azure-devices\\.net"
}

/// The byte range of a field's value inside a token.
fn field_range(token: &str, name: &str) -> std::ops::Range<usize> {
    let start = token.find(&format!("{name}=")).expect("field present") + name.len() + 1;
    let end = token[start..].find('&').map_or(token.len(), |e| start + e);
    start..end
}

/// Whether replacing `token[at]` by `c` only changes the hex case of a percent-escape: the same
/// bytes, so the same token to any URL decoder (Azure's C SDK writes lower-case escapes, so we
/// accept both). Every other change must fail.
fn only_changes_escape_case(token: &str, at: usize, c: char) -> bool {
    let bytes = token.as_bytes();
    let in_escape = (at >= 1 && bytes[at - 1] == b'%') || (at >= 2 && bytes[at - 2] == b'%');
    in_escape
        && bytes[at].is_ascii_hexdigit()
        && c.is_ascii_hexdigit()
        && bytes[at].eq_ignore_ascii_case(&(c as u8))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generate_then_verify_round_trips(
        id in device_id(), key in key(), host in host(),
        expiry in 0u64..=u64::MAX, policy in proptest::option::of("[A-Za-z0-9._-]{1,64}"),
    ) {
        let resource = sas::device_resource(&host, &id);
        let token = sas::generate(&resource, &key, expiry, policy.as_deref()).expect("generate");
        let verified = SasVerifier::default()
            .verify(token.as_str(), &resource, &key, None, policy.as_deref(), expiry)
            .expect("verify");
        prop_assert_eq!(verified.expiry, expiry);
        let parsed = sas::parse(token.as_str(), 4096).expect("parse");
        prop_assert_eq!(parsed.resource(), resource.as_str());
    }

    #[test]
    fn any_single_character_change_fails(
        id in device_id(), key in key(), expiry in 0u64..4_000_000_000,
        field in prop_oneof![Just("sig"), Just("se"), Just("sr")],
        position in any::<prop::sample::Index>(),
        replacement in proptest::char::range('!', '~'),
        delete in any::<bool>(),
    ) {
        let resource = sas::device_resource("hub.azure-devices.net", &id);
        let token = sas::generate(&resource, &key, expiry, None).expect("generate");
        let token = token.as_str();
        let range = field_range(token, field);
        let at = range.start + position.index(range.len());
        let original = token.as_bytes()[at] as char;
        let mut tampered = token.to_owned();
        if delete {
            tampered.remove(at);
        } else {
            prop_assume!(replacement != original);
            prop_assume!(!only_changes_escape_case(token, at, replacement));
            tampered.replace_range(at..at + 1, &replacement.to_string());
        }
        let result = SasVerifier::default().verify(&tampered, &resource, &key, None, None, expiry);
        prop_assert!(result.is_err(), "{} accepted after changing {} at {}", tampered, field, at);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}", prefixed in any::<bool>()) {
        let token = if prefixed { format!("SharedAccessSignature {text}") } else { text };
        let key = SymmetricKey::from_bytes(&[1; 32]).expect("key");
        let result = SasVerifier::default().verify(&token, "h/devices/d", &key, None, None, 0);
        prop_assert!(result.is_err());
    }
}
