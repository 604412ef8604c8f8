//! Turning a device's PUBLISH on its telemetry topic into [`Telemetry`], and a C2D delivery into
//! the property bag of its topic.

use bytes::Bytes;

use super::error::ProtocolViolation;
use super::property_bag;
use crate::adapter::properties;
use crate::message::{C2dDelivery, Telemetry, header};

pub use crate::adapter::properties::LOCK_TOKEN_PROPERTY;

/// How the PUBLISH that carried a message was flagged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// The endpoint sends it as the device's last will.
    pub(crate) will: bool,
    /// The device set the retain flag: nothing is retained, the flag is passed on as
    /// [`header::RETAIN`], as IoT Hub does.
    pub(crate) retain: bool,
}

/// Builds the telemetry of a PUBLISH whose topic carried `bag`: the adapter kit's
/// [`properties::telemetry_from_properties`] (system properties, stamps dropped), then the
/// PUBLISH's own flags.
pub(crate) fn from_publish(
    bag: &str,
    payload: Bytes,
    flags: Flags,
) -> Result<Telemetry, ProtocolViolation> {
    let mut telemetry = properties::telemetry_from_properties(property_bag::decode(bag)?, payload)?;
    telemetry.will = flags.will;
    if flags.retain {
        telemetry
            .properties
            .push((header::RETAIN.to_string(), "true".to_string()));
    }
    Ok(telemetry)
}

/// The property bag of a C2D delivery's topic ([`properties::c2d_properties`]).
pub(crate) fn c2d_bag(delivery: &C2dDelivery, to: &str) -> Vec<(String, String)> {
    properties::c2d_properties(delivery, to)
}

#[cfg(test)]
mod tests {
    use super::*;

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
