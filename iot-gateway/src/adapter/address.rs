//! Device addresses as IoT Hub's protocols spell them, one path segment at a time:
//! `devices/{id}/messages/events` (telemetry), `devices/{id}/messages/devicebound` (the next C2D
//! message) and `devices/{id}/messages/devicebound/{lockToken}` (one delivered message, with
//! `/abandon` to give it back). MQTT topics, HTTP paths, AMQP link addresses and CoAP Uri-Path
//! options all use this form; an adapter splits its address into segments and parses them here.
//!
//! An address names a device; parsing does not say the caller may use it. An adapter opens the
//! session of [`Address::device`] with the credential the caller presented, so that a token for
//! one device cannot reach another device's address (the gateway refuses the credential).

use std::fmt;

use iot_core::DeviceId;

use crate::message::LockToken;

/// What an address names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Address {
    /// `devices/{id}/messages/events`: the device's telemetry.
    Telemetry {
        /// The device.
        device: DeviceId,
    },
    /// `devices/{id}/messages/devicebound`: the device's next C2D message.
    DeviceBound {
        /// The device.
        device: DeviceId,
    },
    /// `devices/{id}/messages/devicebound/{lockToken}`: a C2D message the device holds (to
    /// complete or reject).
    DeviceBoundMessage {
        /// The device.
        device: DeviceId,
        /// The delivery's lock token ([`LOCK_TOKEN_PROPERTY`](super::LOCK_TOKEN_PROPERTY)).
        lock: LockToken,
    },
    /// `devices/{id}/messages/devicebound/{lockToken}/abandon`: give the message back.
    Abandon {
        /// The device.
        device: DeviceId,
        /// The delivery's lock token.
        lock: LockToken,
    },
}

impl Address {
    /// The device the address names.
    pub fn device(&self) -> &DeviceId {
        match self {
            Address::Telemetry { device }
            | Address::DeviceBound { device }
            | Address::DeviceBoundMessage { device, .. }
            | Address::Abandon { device, .. } => device,
        }
    }

    /// Parses an address from its path segments (empty segments, as a leading or trailing `/`
    /// leaves, are skipped). `devicebound` is matched without case: IoT Hub's documents write
    /// `deviceBound`, the SDKs `devicebound`.
    pub fn parse<'a>(segments: impl IntoIterator<Item = &'a str>) -> Result<Self, AddressError> {
        let segments: Vec<&str> = segments.into_iter().filter(|s| !s.is_empty()).collect();
        let device = |id: &str| DeviceId::new(id).map_err(|_| AddressError::InvalidDeviceId);
        let lock = |text: &str| {
            text.parse::<LockToken>()
                .map_err(|_| AddressError::InvalidLockToken)
        };
        match segments.as_slice() {
            ["devices", id, "messages", "events"] => Ok(Address::Telemetry {
                device: device(id)?,
            }),
            ["devices", id, "messages", bound] if is_device_bound(bound) => {
                Ok(Address::DeviceBound {
                    device: device(id)?,
                })
            }
            ["devices", id, "messages", bound, token] if is_device_bound(bound) => {
                Ok(Address::DeviceBoundMessage {
                    device: device(id)?,
                    lock: lock(token)?,
                })
            }
            ["devices", id, "messages", bound, token, "abandon"] if is_device_bound(bound) => {
                Ok(Address::Abandon {
                    device: device(id)?,
                    lock: lock(token)?,
                })
            }
            _ => Err(AddressError::Unknown),
        }
    }

    /// `devices/{id}/messages/devicebound`, the `$.to` of the device's C2D messages.
    pub fn device_bound_of(device: &DeviceId) -> String {
        format!("/devices/{device}/messages/devicebound")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Telemetry { device } => write!(f, "devices/{device}/messages/events"),
            Address::DeviceBound { device } => write!(f, "devices/{device}/messages/devicebound"),
            Address::DeviceBoundMessage { device, lock } => {
                write!(f, "devices/{device}/messages/devicebound/{lock}")
            }
            Address::Abandon { device, lock } => {
                write!(f, "devices/{device}/messages/devicebound/{lock}/abandon")
            }
        }
    }
}

fn is_device_bound(segment: &str) -> bool {
    segment.eq_ignore_ascii_case("devicebound")
}

/// Why an address was refused. Nothing of the address is echoed: it is the device's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Not one of the device addresses.
    #[error("not a device address")]
    Unknown,
    /// The device id segment is not a valid device id.
    #[error("the device id in the address is not valid")]
    InvalidDeviceId,
    /// The lock token segment is not `{sequence}.{delivery}`.
    #[error("the lock token in the address is not valid")]
    InvalidLockToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Result<Address, AddressError> {
        Address::parse(path.split('/'))
    }

    #[test]
    fn every_form_round_trips_through_display() {
        let device: DeviceId = "dev-1".parse().expect("id");
        let lock = LockToken {
            sequence: 7,
            delivery: 2,
        };
        for address in [
            Address::Telemetry {
                device: device.clone(),
            },
            Address::DeviceBound {
                device: device.clone(),
            },
            Address::DeviceBoundMessage {
                device: device.clone(),
                lock,
            },
            Address::Abandon {
                device: device.clone(),
                lock,
            },
        ] {
            assert_eq!(parse(&address.to_string()), Ok(address.clone()));
            assert_eq!(address.device(), &device);
        }
    }

    #[test]
    fn spellings_and_refusals() {
        assert!(matches!(
            parse("/devices/d/messages/deviceBound/"),
            Ok(Address::DeviceBound { .. })
        ));
        assert_eq!(parse("devices/d/messages"), Err(AddressError::Unknown));
        assert_eq!(parse("devices/d/twin"), Err(AddressError::Unknown));
        assert_eq!(
            parse("devices/d/messages/devicebound/x"),
            Err(AddressError::InvalidLockToken)
        );
        assert_eq!(
            parse("devices/a b/messages/events"),
            Err(AddressError::InvalidDeviceId)
        );
    }
}
