//! The instants IoT Hub's MQTT topics carry in `$.exp`: RFC 3339 in UTC
//! (`2030-01-01T00:00:00.000Z`), or Unix milliseconds, which some devices send.

use iot_core::Timestamp;

/// `$.exp` as IoT Hub documents it (`2030-01-01T00:00:00.000Z`, RFC 3339 in UTC), or as Unix
/// milliseconds, which some devices send.
pub(crate) fn parse_expiry(text: &str) -> Option<Timestamp> {
    if let Ok(millis) = text.parse::<u64>() {
        return Some(Timestamp::from_unix_millis(millis));
    }
    parse_rfc3339_utc(text)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`.
fn parse_rfc3339_utc(text: &str) -> Option<Timestamp> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date = date.split('-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    // RFC 3339 years have four digits; the bound also keeps the day arithmetic below far from
    // overflow for any year a device sends.
    if date.next().is_some()
        || !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
    {
        return None;
    }
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.split(':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros_fraction: u64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    // Under 3 million days (year 9999) of 86 400 seconds: far below u64::MAX.
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(Timestamp::from_unix_micros(
        seconds
            .checked_mul(1_000_000)?
            .checked_add(micros_fraction)?,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `t` as RFC 3339 in UTC with milliseconds (`2030-01-01T00:00:00.000Z`), the form IoT Hub
/// writes in `$.exp`.
pub(crate) fn format_millis(t: Timestamp) -> String {
    let millis = t.as_unix_millis();
    let seconds = millis / 1000;
    let (days, in_day) = (seconds / 86_400, seconds % 86_400);
    // u64 milliseconds reach about 584 million years: far inside i64 days.
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        millis % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm,
/// the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
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
