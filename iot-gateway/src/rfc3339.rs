//! The instants IoT Hub's MQTT topics carry in `$.exp`: RFC 3339
//! (`2030-01-01T00:00:00.000Z`), or Unix milliseconds, which some devices send.

use iot_core::Timestamp;

/// `$.exp` as IoT Hub documents it (`2030-01-01T00:00:00.000Z`, RFC 3339), or as Unix
/// milliseconds, which some devices send. RFC 3339 parsing is `iot_core::time`'s.
pub(crate) fn parse_expiry(text: &str) -> Option<Timestamp> {
    if let Ok(millis) = text.parse::<u64>() {
        return Some(Timestamp::from_unix_millis(millis));
    }
    Timestamp::parse_rfc3339(text).ok()
}

/// `t` as RFC 3339 in UTC with milliseconds (`2030-01-01T00:00:00.000Z`), the form IoT Hub
/// writes in `$.exp`: `iot_core::time`'s microsecond form cut to three fraction digits.
pub(crate) fn format_millis(t: Timestamp) -> String {
    let millis = t.as_unix_millis();
    let micros = i64::try_from(millis.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut text = iot_core::time::format_rfc3339(micros);
    // `….ffffffZ` -> `….fffZ`
    text.truncate(text.len().saturating_sub(4));
    text.push('Z');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("0"), Some(Timestamp::EPOCH));
        assert_eq!(
            parse_expiry("1970-01-02T00:00:01Z"),
            Some(Timestamp::from_unix_millis(86_401_000))
        );
        assert_eq!(
            parse_expiry("2000-03-01T00:00:00+00:00"),
            Some(Timestamp::from_unix_millis(951_868_800_000))
        );
        for bad in [
            "",
            "2030-13-01T00:00:00Z",
            "2030-01-01T00:00:00",
            "1969-12-31T00:00:00Z",
            "x",
            // Years whose day arithmetic used to overflow (a panic with overflow checks).
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775808-01-01T00:00:00Z",
            "99999999999999-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_as_iot_hub_writes_and_parses_back() {
        assert_eq!(format_millis(Timestamp::EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_millis(Timestamp::from_unix_millis(1_893_456_000_500)),
            "2030-01-01T00:00:00.500Z"
        );
        assert_eq!(
            format_millis(Timestamp::from_unix_millis(951_868_800_000 - 1)),
            "2000-02-29T23:59:59.999Z"
        );
        for millis in [
            0,
            1,
            86_399_999,
            951_868_800_000,
            4_102_444_800_123,
            253_402_300_799_999,
        ] {
            let t = Timestamp::from_unix_millis(millis);
            assert_eq!(parse_expiry(&format_millis(t)), Some(t), "{millis}");
        }
    }
}
