//! The validated module identifier.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device_id::DeviceId;
use crate::error::Error;

/// The id of a module of a device (IoT Hub's module identities, `devices/{id}/modules/{moduleId}`),
/// validated on construction.
///
/// IoT Hub gives module ids the rules of device ids — 1 to 128 characters, ASCII letters and
/// digits and `- . + % _ # * ? ! ( ) , : = @ $ '`, case-sensitive — so the check is
/// [`DeviceId::validate`]'s, reported as [`Error::InvalidModuleId`]. IoT Edge's system modules
/// (`$edgeAgent`, `$edgeHub`) are valid ids. A module id is unique within its device only: two
/// devices may each have a module `filter`.
///
/// ```
/// use iot_core::ModuleId;
///
/// let id: ModuleId = "filter".parse()?;
/// assert_eq!(id.as_str(), "filter");
/// assert!(ModuleId::new("a/b").is_err());
/// # Ok::<(), iot_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(Arc<str>);

impl ModuleId {
    /// The longest id accepted, in characters (all ASCII).
    pub const MAX_LEN: usize = DeviceId::MAX_LEN;

    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        Self::validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// Checks `id` against the rules above.
    pub fn validate(id: &str) -> Result<(), Error> {
        DeviceId::validate(id).map_err(|e| match e {
            Error::InvalidDeviceId { id, reason } => Error::InvalidModuleId { id, reason },
            other => other,
        })
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ModuleId").field(&&*self.0).finish()
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ModuleId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModuleId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for ModuleId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Serialize for ModuleId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModuleId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ModuleId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_device_id_rules_with_its_own_error() {
        assert!(ModuleId::new("$edgeHub").is_ok());
        assert!(ModuleId::new("x".repeat(128)).is_ok());
        for bad in ["", "a/b", "a b", "é", "x".repeat(129).as_str()] {
            assert!(
                matches!(ModuleId::new(bad), Err(Error::InvalidModuleId { .. })),
                "{bad:?} was accepted"
            );
        }
        let bad: Result<ModuleId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
    }
}
