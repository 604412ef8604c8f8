//! DPS's MQTT topics: the two requests a device publishes, the one filter it subscribes to,
//! and the answer topic.

use super::super::error::{ProtocolViolation, shorten};
use super::super::property_bag;

/// The only filter a registering device subscribes to.
pub(crate) const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// Request ids and operation ids are echoed back; bound them.
const MAX_ID_LEN: usize = 128;

/// What a PUBLISH of a registering device asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`.
    Register {
        /// The request id to answer with.
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`.
    OperationStatus {
        /// The request id to answer with.
        rid: String,
        /// The operation asked about.
        operation_id: String,
    },
}

/// Classifies a PUBLISH topic of a registering device; anything else closes the connection.
pub(crate) fn classify(topic: &str) -> Result<Request, ProtocolViolation> {
    let not_allowed = || ProtocolViolation::TopicNotAllowed {
        topic: shorten(topic),
    };
    let invalid = |reason| ProtocolViolation::InvalidTopic {
        topic: shorten(topic),
        reason,
    };
    let (kind, query) =
        if let Some(q) = topic.strip_prefix("$dps/registrations/PUT/iotdps-register/?") {
            ("register", q)
        } else if let Some(q) =
            topic.strip_prefix("$dps/registrations/GET/iotdps-get-operationstatus/?")
        {
            ("status", q)
        } else {
            return Err(not_allowed());
        };
    let pairs = property_bag::decode(query)?;
    let find = |key: &str| {
        pairs
            .iter()
            .find_map(|(k, v)| (k == key).then(|| v.clone()))
            .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LEN)
    };
    let rid = find("$rid").ok_or_else(|| invalid("no $rid, or longer than 128 bytes"))?;
    if kind == "register" {
        return Ok(Request::Register { rid });
    }
    let operation_id =
        find("operationId").ok_or_else(|| invalid("no operationId, or longer than 128 bytes"))?;
    Ok(Request::OperationStatus { rid, operation_id })
}

/// Checks a SUBSCRIBE or UNSUBSCRIBE filter of a registering device.
pub(crate) fn check_filter(filter: &str) -> Result<(), ProtocolViolation> {
    if filter == RESPONSE_FILTER {
        Ok(())
    } else {
        Err(ProtocolViolation::TopicNotAllowed {
            topic: shorten(filter),
        })
    }
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`. The keys are written as DPS
/// writes them: the Python SDK splits the topic at `$` to find the properties.
pub(crate) fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    let rid = property_bag::encode_value(rid);
    match retry_after {
        Some(s) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={s}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_two_requests() {
        assert_eq!(
            classify("$dps/registrations/PUT/iotdps-register/?$rid=7f3a").expect("register"),
            Request::Register { rid: "7f3a".into() }
        );
        assert_eq!(
            classify(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=op%2D1"
            )
            .expect("status"),
            Request::OperationStatus {
                rid: "2".into(),
                operation_id: "op-1".into()
            }
        );
        for bad in [
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register/?x=1",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
            "$dps/registrations/DELETE/x/?$rid=1",
            "devices/d/messages/events/",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
        let long = format!(
            "$dps/registrations/PUT/iotdps-register/?$rid={}",
            "r".repeat(129)
        );
        assert!(classify(&long).is_err());
    }

    #[test]
    fn answers_on_the_response_topic() {
        assert_eq!(
            response_topic(202, "abc", Some(1)),
            "$dps/registrations/res/202/?$rid=abc&retry-after=1"
        );
        assert_eq!(
            response_topic(200, "abc", None),
            "$dps/registrations/res/200/?$rid=abc"
        );
        assert!(check_filter(RESPONSE_FILTER).is_ok());
        assert!(check_filter("$dps/#").is_err());
    }
}
