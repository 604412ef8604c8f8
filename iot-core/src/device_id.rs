//! The validated device identifier.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A device identifier, validated on construction.
///
/// The character set is the one Azure IoT Hub accepts for device ids, so ids can be used unchanged in
/// MQTT topics, SAS token resources and file names of our stores:
///
/// * 1 to 128 characters;
/// * ASCII letters and digits, and `- . + % _ # * ? ! ( ) , : = @ $ '`.
///
/// Anything else is refused with [`Error::InvalidDeviceId`]. The id is case-sensitive. Cloning is
/// cheap (the string is shared).
///
/// ```
/// use iot_core::DeviceId;
///
/// let id: DeviceId = "sensor-17".parse()?;
/// assert_eq!(id.as_str(), "sensor-17");
/// assert!(DeviceId::new("has space").is_err());
/// # Ok::<(), iot_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// The longest id accepted, in characters (all characters are ASCII, so also bytes).
    pub const MAX_LEN: usize = 128;

    /// Validates `id` and wraps it.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        Self::validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// Checks `id` against the rules above without allocating.
    pub fn validate(id: &str) -> Result<(), Error> {
        if id.is_empty() {
            return Err(invalid(id, "is empty"));
        }
        if id.len() > Self::MAX_LEN {
            return Err(invalid(id, "is longer than 128 characters"));
        }
        if let Some((position, ch)) = id.char_indices().find(|(_, c)| !is_allowed(*c)) {
            return Err(invalid(
                id,
                &format!("contains {ch:?} at byte {position}, which is not allowed"),
            ));
        }
        Ok(())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` may appear in a device id.
pub fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '+'
                | '%'
                | '_'
                | '#'
                | '*'
                | '?'
                | '!'
                | '('
                | ')'
                | ','
                | ':'
                | '='
                | '@'
                | '$'
                | '\''
        )
}

/// How much of a refused id an error repeats: enough to recognise it, bounded for huge inputs.
const SHOWN_CHARS: usize = 140;

fn invalid(id: &str, reason: &str) -> Error {
    let shown: String = id.chars().take(SHOWN_CHARS).collect();
    Error::InvalidDeviceId {
        id: shown,
        reason: reason.to_owned(),
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DeviceId").field(&&*self.0).finish()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::validate(&s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        DeviceId::try_from(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        let all = "azAZ09-.+%_#*?!(),:=@$'";
        assert_eq!(
            DeviceId::new(all).map(|d| d.to_string()).ok(),
            Some(all.to_owned())
        );
        assert!(DeviceId::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        for bad in [
            "", " ", "a b", "a/b", "a\\b", "é", "a\0", "a\n", "a;b", "a&b", "a~b", "a\"b",
        ] {
            assert!(
                matches!(DeviceId::new(bad), Err(Error::InvalidDeviceId { .. })),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            DeviceId::new("x".repeat(129)),
            Err(Error::InvalidDeviceId { .. })
        ));
    }

    #[test]
    fn error_of_a_huge_input_stays_small() {
        let err = DeviceId::new("é".repeat(1_000_000))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.len() < 1_000));
    }

    #[test]
    fn serde_validates() {
        let ok: Result<DeviceId, _> = serde_json::from_str("\"dev-1\"");
        assert!(ok.is_ok());
        let bad: Result<DeviceId, _> = serde_json::from_str("\"dev 1\"");
        assert!(bad.is_err());
    }
}
