//! The names of users and roles: short, printable, checked once when parsed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, shorten};

/// The longest user name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 128;
/// The longest role name, in bytes.
pub const MAX_ROLE_NAME_LEN: usize = 64;

/// Letters, digits and `. _ - @ +`: enough for e-mail addresses, nothing that needs escaping in a
/// log line, a URL or a header.
fn check(kind: &str, text: &str, max: usize) -> Result<()> {
    if text.is_empty() || text.len() > max {
        return Err(Error::invalid(format!("a {kind} name is 1 to {max} bytes")));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')))
    {
        return Err(Error::invalid(format!(
            "a {kind} name may hold letters, digits and . _ - @ +, not {bad:?} (in {:?})",
            shorten(text, 64)
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps `name`.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check($kind, &name, $max)?;
                Ok($name(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

name_type!(
    /// A user's name (1 to 128 bytes of letters, digits and `. _ - @ +`).
    UserName,
    "user",
    MAX_USER_NAME_LEN
);

name_type!(
    /// A role's name (1 to 64 bytes of letters, digits and `. _ - @ +`). `admin`, `operator` and
    /// `viewer` are the built-in roles.
    RoleName,
    "role",
    MAX_ROLE_NAME_LEN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(UserName::new("ada@example.com").is_ok());
        assert!(UserName::new("").is_err());
        assert!(UserName::new("a b").is_err());
        assert!(UserName::new("x".repeat(129)).is_err());
        assert!(RoleName::new("x".repeat(65)).is_err());
        assert!(RoleName::new("floor-manager").is_ok());
        let json = serde_json::to_string(&UserName::new("ada").ok()).ok();
        assert_eq!(json.as_deref(), Some("\"ada\""));
        assert!(serde_json::from_str::<UserName>("\"a/b\"").is_err());
    }
}
