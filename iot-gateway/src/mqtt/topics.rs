//! IoT Hub's MQTT topic names: what a device may publish and subscribe to, and the topics the
//! endpoint publishes to it.
//!
//! Every check is made against the device id of the session, so that a device can touch only its
//! own topics; anything unknown is a [`ProtocolViolation::TopicNotAllowed`] and closes the
//! connection.

use super::error::{ProtocolViolation, shorten};
use super::property_bag;

/// The twin request id (`$rid`) is echoed back verbatim; bound it so that a device cannot make the
/// endpoint hold large strings.
const MAX_RID_LEN: usize = 128;

/// What a PUBLISH from a device asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
    /// Telemetry; the bag holds system and application properties (still encoded).
    Telemetry {
        /// The encoded property bag after `messages/events/` (may be empty).
        bag: &'a str,
    },
    /// `$iothub/twin/GET/?$rid=…`.
    TwinGet {
        /// The request id to answer with.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=…`.
    TwinPatchReported {
        /// The request id to answer with.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid=…`.
    MethodResponse {
        /// The status the device answered with.
        status: i32,
        /// The request id the endpoint gave the method request.
        rid: String,
    },
}

/// The topic filters a device may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Subscription {
    /// `devices/{id}/messages/devicebound/#`: cloud-to-device messages.
    C2d,
    /// `$iothub/twin/res/#`: answers to twin requests.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#`: desired-property patches.
    DesiredPatches,
    /// `$iothub/methods/POST/#`: direct-method requests.
    Methods,
}

impl Subscription {
    /// Every kind, in a fixed order.
    pub(crate) const ALL: [Subscription; 4] = [
        Subscription::C2d,
        Subscription::TwinResponses,
        Subscription::DesiredPatches,
        Subscription::Methods,
    ];

    /// A small bit for sets of subscriptions.
    pub(crate) fn bit(self) -> u8 {
        match self {
            Subscription::C2d => 1,
            Subscription::TwinResponses => 2,
            Subscription::DesiredPatches => 4,
            Subscription::Methods => 8,
        }
    }
}

/// Checks the rules every PUBLISH topic name must follow (MQTT 3.1.1 §4.7).
fn check_topic_name(topic: &str) -> Result<(), ProtocolViolation> {
    let invalid = |reason| ProtocolViolation::InvalidTopic {
        topic: shorten(topic),
        reason,
    };
    if topic.is_empty() {
        return Err(invalid("empty"));
    }
    // One pass for the three bytes: this runs on every PUBLISH.
    let found = memchr::memchr3(b'+', b'#', 0, topic.as_bytes());
    match found.and_then(|at| topic.as_bytes().get(at).copied()) {
        Some(0) if !topic.contains(['+', '#']) => Err(invalid("contains NUL")),
        Some(_) => Err(invalid("wildcards are not allowed in a PUBLISH topic")),
        None => Ok(()),
    }
}

/// Classifies a PUBLISH topic from `device`.
pub(crate) fn classify_publish<'a>(
    topic: &'a str,
    device: &str,
) -> Result<Inbound<'a>, ProtocolViolation> {
    check_topic_name(topic)?;
    let not_allowed = || ProtocolViolation::TopicNotAllowed {
        topic: shorten(topic),
    };
    if let Some(rest) = topic
        .strip_prefix("devices/")
        .and_then(|t| t.strip_prefix(device))
    {
        return match rest {
            "/messages/events" => Ok(Inbound::Telemetry { bag: "" }),
            _ => rest
                .strip_prefix("/messages/events/")
                .map(|bag| Inbound::Telemetry { bag })
                .ok_or_else(not_allowed),
        };
    }
    if let Some(query) = strip_query(topic, "$iothub/twin/GET") {
        return Ok(Inbound::TwinGet {
            rid: request_id(query, topic)?,
        });
    }
    if let Some(query) = strip_query(topic, "$iothub/twin/PATCH/properties/reported") {
        return Ok(Inbound::TwinPatchReported {
            rid: request_id(query, topic)?,
        });
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
        let (status, query) = rest
            .split_once('/')
            .map(|(s, q)| (s, q.strip_prefix('?')))
            .or_else(|| rest.split_once('?').map(|(s, q)| (s, Some(q))))
            .ok_or_else(not_allowed)?;
        let status = status
            .parse::<i32>()
            .map_err(|_| ProtocolViolation::InvalidTopic {
                topic: shorten(topic),
                reason: "the method status is not an integer",
            })?;
        let query = query.ok_or_else(not_allowed)?;
        return Ok(Inbound::MethodResponse {
            status,
            rid: request_id(query, topic)?,
        });
    }
    Err(not_allowed())
}

/// `{prefix}/?{query}` or `{prefix}?{query}` → the query.
fn strip_query<'a>(topic: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = topic.strip_prefix(prefix)?;
    rest.strip_prefix("/?").or_else(|| rest.strip_prefix('?'))
}

/// The `$rid` of a request query.
fn request_id(query: &str, topic: &str) -> Result<String, ProtocolViolation> {
    let pairs = property_bag::decode(query)?;
    let rid = pairs
        .into_iter()
        .find_map(|(k, v)| (k == "$rid").then_some(v))
        .ok_or_else(|| ProtocolViolation::InvalidTopic {
            topic: shorten(topic),
            reason: "no $rid",
        })?;
    if rid.is_empty() || rid.len() > MAX_RID_LEN {
        return Err(ProtocolViolation::InvalidTopic {
            topic: shorten(topic),
            reason: "$rid is empty or longer than 128 bytes",
        });
    }
    Ok(rid)
}

/// Classifies a SUBSCRIBE topic filter from `device`.
pub(crate) fn classify_filter(
    filter: &str,
    device: &str,
) -> Result<Subscription, ProtocolViolation> {
    if filter.contains('\0') {
        return Err(ProtocolViolation::InvalidTopic {
            topic: shorten(filter),
            reason: "contains NUL",
        });
    }
    let c2d = filter
        .strip_prefix("devices/")
        .and_then(|t| t.strip_prefix(device))
        .is_some_and(|rest| rest == "/messages/devicebound/#");
    match filter {
        _ if c2d => Ok(Subscription::C2d),
        "$iothub/twin/res/#" => Ok(Subscription::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => Ok(Subscription::DesiredPatches),
        "$iothub/methods/POST/#" => Ok(Subscription::Methods),
        _ => Err(ProtocolViolation::TopicNotAllowed {
            topic: shorten(filter),
        }),
    }
}

/// Whether `filter` is IoT Edge's `devices/{deviceId}/modules/{moduleId}/inputs/#` of the module
/// whose topics are `owner` (`{deviceId}/modules/{moduleId}`): messages routed to the module's
/// inputs.
pub(crate) fn is_inputs_filter(filter: &str, owner: &str) -> bool {
    filter
        .strip_prefix("devices/")
        .and_then(|t| t.strip_prefix(owner))
        .is_some_and(|rest| rest == "/inputs/#")
}

/// `devices/{id}/messages/devicebound/{bag}` for a cloud-to-device message.
pub(crate) fn c2d_topic<'a>(
    device: &str,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    format!(
        "devices/{device}/messages/devicebound/{}",
        property_bag::encode(properties)
    )
}

/// `$iothub/twin/res/{status}/?$rid=…[&$version=…]`.
pub(crate) fn twin_response_topic(status: u16, rid: &str, version: Option<u64>) -> String {
    // The key is written as IoT Hub writes it (`$rid`, not `%24rid`): some SDKs match it literally.
    let rid = property_bag::encode_value(rid);
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version=…`.
pub(crate) fn desired_patch_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// `$iothub/methods/POST/{name}/?$rid=…`.
pub(crate) fn method_request_topic(name: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{name}/?$rid={rid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn telemetry_topics() {
        assert_eq!(
            classify_publish(
                "devices/d1/messages/events/%24.ct=application%2Fjson&a=b",
                "d1"
            ),
            Ok(Inbound::Telemetry {
                bag: "%24.ct=application%2Fjson&a=b"
            })
        );
        assert_eq!(
            classify_publish("devices/d1/messages/events/", "d1"),
            Ok(Inbound::Telemetry { bag: "" })
        );
        assert_eq!(
            classify_publish("devices/d1/messages/events", "d1"),
            Ok(Inbound::Telemetry { bag: "" })
        );
    }

    #[test]
    fn twin_and_method_topics() {
        assert_eq!(
            classify_publish("$iothub/twin/GET/?$rid=7", "d1"),
            Ok(Inbound::TwinGet { rid: "7".into() })
        );
        assert_eq!(
            classify_publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=a%2Fb&$version=3",
                "d1"
            ),
            Ok(Inbound::TwinPatchReported { rid: "a/b".into() })
        );
        assert_eq!(
            classify_publish("$iothub/methods/res/200/?$rid=1f", "d1"),
            Ok(Inbound::MethodResponse {
                status: 200,
                rid: "1f".into()
            })
        );
        assert!(classify_publish("$iothub/methods/res/abc/?$rid=1", "d1").is_err());
        assert!(classify_publish("$iothub/twin/GET/?$version=1", "d1").is_err());
    }

    #[test]
    fn other_devices_and_unknown_topics_are_refused() {
        for topic in [
            "devices/d2/messages/events/",
            "devices/d1x/messages/events/",
            "devices/d1/messages/devicebound/",
            "devices/d1/messages/eventsX",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "anything",
        ] {
            assert!(
                matches!(
                    classify_publish(topic, "d1"),
                    Err(ProtocolViolation::TopicNotAllowed { .. })
                ),
                "{topic}"
            );
        }
    }

    #[test]
    fn wildcards_and_nul_are_invalid() {
        for topic in [
            "devices/d1/messages/events/#",
            "devices/+/messages/events/",
            "a\0b",
            "",
        ] {
            assert!(
                matches!(
                    classify_publish(topic, "d1"),
                    Err(ProtocolViolation::InvalidTopic { .. })
                ),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn filters() {
        assert_eq!(
            classify_filter("devices/d1/messages/devicebound/#", "d1"),
            Ok(Subscription::C2d)
        );
        assert_eq!(
            classify_filter("$iothub/twin/res/#", "d1"),
            Ok(Subscription::TwinResponses)
        );
        assert_eq!(
            classify_filter("$iothub/twin/PATCH/properties/desired/#", "d1"),
            Ok(Subscription::DesiredPatches)
        );
        assert_eq!(
            classify_filter("$iothub/methods/POST/#", "d1"),
            Ok(Subscription::Methods)
        );
        for bad in [
            "devices/d2/messages/devicebound/#",
            "#",
            "devices/+/messages/devicebound/#",
            "$iothub/#",
        ] {
            assert!(classify_filter(bad, "d1").is_err(), "{bad}");
        }
    }

    #[test]
    fn outbound_topics() {
        assert_eq!(
            c2d_topic("d1", [("$.mid", "m1"), ("k", "a/b")]),
            "devices/d1/messages/devicebound/%24.mid=m1&k=a%2Fb"
        );
        assert_eq!(
            twin_response_topic(200, "1", None),
            "$iothub/twin/res/200/?$rid=1"
        );
        assert_eq!(
            twin_response_topic(204, "2", Some(5)),
            "$iothub/twin/res/204/?$rid=2&$version=5"
        );
        assert_eq!(
            desired_patch_topic(9),
            "$iothub/twin/PATCH/properties/desired/?$version=9"
        );
        assert_eq!(
            method_request_topic("reboot", "a1"),
            "$iothub/methods/POST/reboot/?$rid=a1"
        );
    }

    proptest! {
        #[test]
        fn a_device_never_reaches_another_devices_topics(
            topic in "(devices/|\\$iothub/)[a-z0-9/?$=&.%+#-]{0,40}",
        ) {
            // Whatever the topic, device "d1" may only publish under devices/d1/ or $iothub/.
            if let Ok(Inbound::Telemetry { .. }) = classify_publish(&topic, "d1") {
                prop_assert!(topic.starts_with("devices/d1/messages/events"));
            }
            if let Ok(Subscription::C2d) = classify_filter(&topic, "d1") {
                prop_assert_eq!(topic.as_str(), "devices/d1/messages/devicebound/#");
            }
        }
    }
}
