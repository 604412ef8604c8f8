//! IoT Hub's MQTT topics, from the device's side, and their URL-encoded property bags.

use crate::adapter::properties;

/// One key or value escaped as in a bag (everything but RFC 3986's unreserved characters, so it
/// never holds a `/`): the adapter kit's encoding, shared with the hub's side.
pub(crate) fn escape(s: &str) -> String {
    properties::encode_value(s)
}

pub(crate) use properties::encode_bag;

/// The pairs of a bag from the hub, by the adapter kit's rules. A bag that breaks them (not
/// UTF-8, NUL, too many pairs: neither our hub nor IoT Hub writes one) yields no pairs and a
/// warning, rather than half-decoded text passed off as the hub's properties.
pub(crate) fn decode_bag(bag: &str) -> Vec<(String, String)> {
    properties::decode_bag(bag).unwrap_or_else(|e| {
        tracing::warn!(reason = e.reason(), "property bag from the hub refused");
        Vec::new()
    })
}

/// The topic prefix of the identity: `devices/{id}` or `devices/{id}/modules/{module}`.
pub(crate) fn identity_prefix(device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("devices/{device}/modules/{m}"),
        None => format!("devices/{device}"),
    }
}

pub(crate) const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
pub(crate) const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
pub(crate) const METHODS: &str = "$iothub/methods/POST/#";

/// What an incoming PUBLISH is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    C2d { bag: &'a str },
    TwinResponse { status: u16, bag: &'a str },
    DesiredPatch,
    Method { name: &'a str, bag: &'a str },
    Unknown,
}

pub(crate) fn classify<'a>(topic: &'a str, c2d_prefix: &str) -> Incoming<'a> {
    if let Some(bag) = topic.strip_prefix(c2d_prefix) {
        return Incoming::C2d { bag };
    }
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let (status, bag) = rest.split_once('/').unwrap_or((rest, ""));
        let bag = bag.strip_prefix('?').unwrap_or(bag);
        return match status.parse() {
            Ok(status) => Incoming::TwinResponse { status, bag },
            Err(_) => Incoming::Unknown,
        };
    }
    if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
        return Incoming::DesiredPatch;
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/")
        && let Some((name, bag)) = rest.split_once('/')
    {
        return Incoming::Method {
            name,
            bag: bag.strip_prefix('?').unwrap_or(bag),
        };
    }
    Incoming::Unknown
}

/// The value of `key` in a bag.
pub(crate) fn bag_value(bag: &str, key: &str) -> Option<String> {
    decode_bag(bag)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bags_round_trip_and_never_hold_a_slash() {
        let bag = encode_bag([("$.mid", "a/b"), ("temp unit", "°C&x=1")]);
        assert!(!bag.contains('/'));
        assert_eq!(
            decode_bag(&bag),
            vec![
                ("$.mid".to_string(), "a/b".to_string()),
                ("temp unit".to_string(), "°C&x=1".to_string())
            ]
        );
    }

    #[test]
    fn a_bag_that_breaks_the_kits_rules_yields_no_pairs() {
        assert!(decode_bag("%FF=1&a=b").is_empty());
        assert!(decode_bag("=value").is_empty());
        assert_eq!(bag_value("%FF=1&$rid=3", "$rid"), None);
    }

    #[test]
    fn classifies_the_hubs_topics() {
        let c2d = "devices/d/messages/devicebound/";
        assert_eq!(
            classify("devices/d/messages/devicebound/%24.mid=1", c2d),
            Incoming::C2d { bag: "%24.mid=1" }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$rid=3&$version=2", c2d),
            Incoming::TwinResponse {
                status: 204,
                bag: "$rid=3&$version=2"
            }
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/?$version=4", c2d),
            Incoming::DesiredPatch
        );
        assert_eq!(
            classify("$iothub/methods/POST/reboot/?$rid=9", c2d),
            Incoming::Method {
                name: "reboot",
                bag: "$rid=9"
            }
        );
        assert_eq!(classify("elsewhere", c2d), Incoming::Unknown);
        assert_eq!(
            bag_value("$rid=3&$version=2", "$version").as_deref(),
            Some("2")
        );
    }
}
