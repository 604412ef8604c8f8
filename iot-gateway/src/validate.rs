//! Property and size validation shared by telemetry and C2D messages.

use crate::error::{Error, Result};
use crate::message::header;

/// The longest property name, in bytes.
pub const MAX_PROPERTY_NAME: usize = 128;
/// The longest property value, in bytes.
pub const MAX_PROPERTY_VALUE: usize = 4096;
/// The most custom properties one message may carry.
pub const MAX_PROPERTIES: usize = 64;

/// Header names the gateway sets itself; custom properties may not reuse them. (Names starting
/// with `$` or `iothub-`, the other stamps, are refused by prefix.)
const SYSTEM_NAMES: [&str; 8] = [
    header::MESSAGE_ID,
    header::CORRELATION_ID,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::EXPIRY_TIME,
    header::USER_ID,
    header::COMPONENT,
    header::MODEL_ID,
];

fn shorten(name: &str) -> String {
    name.chars().take(MAX_PROPERTY_NAME + 8).collect()
}

/// Whether the gateway writes a header of this name itself, so that a custom property may not
/// use it: the system properties and the stamps (`$…`, `iothub-…`, `dt-dataschema`, …).
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with(header::RESERVED_PREFIX)
        || name.starts_with(header::IOTHUB_PREFIX)
        || SYSTEM_NAMES.contains(&name)
}

/// Checks one custom property: a name of 1 to 128 printable ASCII characters other than
/// separators the protocols use (`&`, `=`, `/`), not reserved; a value of at most 4096 bytes of
/// UTF-8 without control characters.
pub fn check_property(name: &str, value: &str) -> Result<()> {
    let refuse = |reason: &str| Error::InvalidProperty {
        name: shorten(name),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(refuse("the name is empty"));
    }
    if name.len() > MAX_PROPERTY_NAME {
        return Err(refuse("the name is longer than 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'/'))
    {
        return Err(refuse(
            "the name must be printable ASCII without spaces, '&', '=' or '/'",
        ));
    }
    if name.starts_with(header::RESERVED_PREFIX) || name.starts_with(header::IOTHUB_PREFIX) {
        return Err(refuse("names starting with '$' or 'iothub-' are reserved"));
    }
    if SYSTEM_NAMES.contains(&name) {
        return Err(refuse("the name is a system property; set it as one"));
    }
    check_value(name, value)
}

/// Checks a property or system-property value.
pub fn check_value(name: &str, value: &str) -> Result<()> {
    if value.len() > MAX_PROPERTY_VALUE {
        return Err(Error::InvalidProperty {
            name: shorten(name),
            reason: format!("the value is longer than {MAX_PROPERTY_VALUE} bytes"),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidProperty {
            name: shorten(name),
            reason: "the value contains control characters".into(),
        });
    }
    Ok(())
}

/// Checks a list of custom properties (count, each one, no duplicates) and returns their size.
pub fn check_properties(properties: &[(String, String)]) -> Result<usize> {
    if properties.len() > MAX_PROPERTIES {
        return Err(Error::InvalidProperty {
            name: String::new(),
            reason: format!(
                "{} properties; at most {MAX_PROPERTIES} are allowed",
                properties.len()
            ),
        });
    }
    let mut size = 0;
    for (i, (name, value)) in properties.iter().enumerate() {
        check_property(name, value)?;
        if properties[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidProperty {
                name: shorten(name),
                reason: "the name appears twice".into(),
            });
        }
        size += name.len() + value.len();
    }
    Ok(size)
}

/// Checks the optional system properties and returns their size.
pub fn check_system(fields: &[(&str, &Option<String>)]) -> Result<usize> {
    let mut size = 0;
    for (name, value) in fields {
        if let Some(value) = value {
            if value.is_empty() {
                return Err(Error::InvalidProperty {
                    name: (*name).to_owned(),
                    reason: "the value is empty".into(),
                });
            }
            check_value(name, value)?;
            size += value.len();
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(check_property("temp-unit", "C").is_ok());
        for bad in [
            "",
            "$x",
            "iothub-x",
            "a b",
            "a=b",
            "a&b",
            "a/b",
            "message-id",
            "user-id",
            "dt-subject",
            "dt-dataschema",
            "iothub-connection-device-id",
            "é",
        ] {
            assert!(
                matches!(check_property(bad, "v"), Err(Error::InvalidProperty { .. })),
                "{bad:?}"
            );
        }
        assert!(check_property(&"n".repeat(129), "v").is_err());
        assert!(check_property("n", &"v".repeat(4097)).is_err());
        assert!(check_property("n", "a\nb").is_err());
        assert!(check_property("n", "a\0b").is_err());
        let dup = vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        assert!(check_properties(&dup).is_err());
        let many: Vec<_> = (0..65).map(|i| (format!("p{i}"), String::new())).collect();
        assert!(check_properties(&many).is_err());
    }
}
