//! The URL-encoded property bag that IoT Hub's MQTT topics carry after their fixed prefix: the
//! adapter kit's ([`crate::adapter::properties`]), with its refusals as protocol violations.

use super::error::ProtocolViolation;
use crate::adapter::properties::{self, PropertyError};

impl From<PropertyError> for ProtocolViolation {
    fn from(e: PropertyError) -> Self {
        ProtocolViolation::PropertyBag(e.reason().to_owned())
    }
}

/// Decodes a bag into its pairs, in order ([`properties::decode_bag`]).
pub(crate) fn decode(bag: &str) -> Result<Vec<(String, String)>, ProtocolViolation> {
    Ok(properties::decode_bag(bag)?)
}

pub(crate) use properties::encode_bag as encode;
pub(crate) use properties::encode_value;
