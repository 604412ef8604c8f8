//! Names of topics and consumer groups.
//!
//! Both end up in file names (a `FileLog` keeps one directory per topic and one offsets file per
//! group), so both use a conservative alphabet.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

const MAX_NAME_LEN: usize = 128;

fn validate(kind: &'static str, name: &str) -> Result<(), Error> {
    let refuse = |reason: String| Error::InvalidName {
        kind,
        name: name.chars().take(MAX_NAME_LEN + 12).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(refuse(format!("is longer than {MAX_NAME_LEN} bytes")));
    }
    if name.starts_with('.') {
        return Err(refuse("starts with '.'".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(refuse(format!(
            "contains {c:?}; use ASCII letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates and wraps `name`: 1 to 128 ASCII letters, digits, `-`, `_` or `.`, not
            /// starting with `.`.
            pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
                let name = name.as_ref();
                validate($kind, name)?;
                Ok(Self(Arc::from(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($ty)).field(&&*self.0).finish()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of a topic, such as `telemetry`, `alerts` or `audit`.
    TopicName,
    "topic"
);

name_type!(
    /// The name of a consumer group: readers sharing one committed position per partition.
    GroupName,
    "consumer group"
);

impl TopicName {
    /// Device-to-cloud telemetry.
    pub const TELEMETRY: &'static str = "telemetry";
    /// Alerts raised by stream processors.
    pub const ALERTS: &'static str = "alerts";
    /// The audit trail of provisioning and administration.
    pub const AUDIT: &'static str = "audit";
    /// Device lifecycle and connection events.
    pub const EVENTS: &'static str = "events";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(TopicName::new("telemetry").is_ok());
        assert!(GroupName::new("pump.v2-a_b").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../x", "é"] {
            assert!(TopicName::new(bad).is_err(), "{bad:?}");
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
        assert!(TopicName::new("x".repeat(129)).is_err());
    }
}
