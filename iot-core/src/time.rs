//! RFC 3339 timestamps (`2024-02-29T10:15:30.5Z`), parsed and formatted without a date library.
//!
//! Devices send them (`$.exp` of a telemetry message), rules read them (`TIMESTAMP BY`), and
//! outputs carry them (`System.Timestamp()`); one implementation keeps those in agreement.
//!
//! Times are microseconds since the Unix epoch as an `i64`, so instants before 1970 have a value
//! too; [`Timestamp::parse_rfc3339`] and [`Timestamp::to_rfc3339`] are the same for the unsigned
//! [`Timestamp`] records carry.

use std::fmt;

use crate::timestamp::Timestamp;

/// A text that is not an RFC 3339 timestamp, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp: {reason}")]
#[non_exhaustive]
pub struct Rfc3339Error {
    /// The refused text (at most its first 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Rfc3339Error {
    fn new(input: &str, reason: &'static str) -> Self {
        Rfc3339Error {
            input: input.chars().take(64).collect(),
            reason,
        }
    }
}

/// Whether a timestamp without a time zone is refused (as RFC 3339 says) or read as UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MissingZone {
    Refuse,
    Utc,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into microseconds since the epoch.
///
/// `T` may also be `t` or a space, `Z` may be `z`; a leap second (`:60`) counts as the next
/// second; fraction digits past the sixth are ignored. The date must exist (no February 30).
///
/// ```
/// use iot_core::time::parse_rfc3339;
///
/// assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Ok(1_500_000));
/// assert_eq!(parse_rfc3339("1970-01-01T02:00:01.5+02:00"), Ok(1_500_000));
/// assert!(parse_rfc3339("1970-01-01T00:00:01").is_err(), "no time zone");
/// ```
pub fn parse_rfc3339(text: &str) -> Result<i64, Rfc3339Error> {
    parse(text, MissingZone::Refuse)
}

/// Like [`parse_rfc3339`], but a missing time zone means UTC — what people type into a rule or a
/// configuration file (`2024-02-29 10:15:30`).
pub fn parse_rfc3339_assume_utc(text: &str) -> Result<i64, Rfc3339Error> {
    parse(text, MissingZone::Utc)
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, always six
/// fraction digits, so the texts sort as the times do). Years outside 0000–9999 have no RFC 3339
/// form; they are written with the digits (and sign) they need.
///
/// ```
/// use iot_core::time::format_rfc3339;
///
/// assert_eq!(format_rfc3339(1_709_201_730_500_000), "2024-02-29T10:15:30.500000Z");
/// assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
/// ```
pub fn format_rfc3339(micros: i64) -> String {
    Rfc3339(micros).to_string()
}

/// Displays microseconds since the epoch as [`format_rfc3339`] does, without an intermediate
/// `String`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let fraction = self.0.rem_euclid(1_000_000);
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let of_day = secs.rem_euclid(86_400);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60
        )
    }
}

impl Timestamp {
    /// Parses an RFC 3339 timestamp (see [`parse_rfc3339`]); instants before the epoch, which
    /// a `Timestamp` cannot hold, are refused.
    ///
    /// ```
    /// use iot_core::Timestamp;
    ///
    /// let t = Timestamp::parse_rfc3339("2030-01-01T00:00:00.500Z")?;
    /// assert_eq!(t, Timestamp::from_unix_millis(1_893_456_000_500));
    /// assert_eq!(t.to_rfc3339(), "2030-01-01T00:00:00.500000Z");
    /// # Ok::<(), iot_core::time::Rfc3339Error>(())
    /// ```
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, Rfc3339Error> {
        let micros = parse_rfc3339(text)?;
        u64::try_from(micros)
            .map(Timestamp::from_unix_micros)
            .map_err(|_| Rfc3339Error::new(text, "is before 1970-01-01T00:00:00Z"))
    }

    /// This instant as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (see [`format_rfc3339`]).
    pub fn to_rfc3339(self) -> String {
        // Timestamps past i64::MAX microseconds (year 294 247) are clamped there.
        format_rfc3339(i64::try_from(self.as_unix_micros()).unwrap_or(i64::MAX))
    }
}

fn parse(text: &str, missing_zone: MissingZone) -> Result<i64, Rfc3339Error> {
    let refuse = |reason| Rfc3339Error::new(text, reason);
    let b = text.as_bytes();
    // A fixed-width decimal field; None unless every byte is an ASCII digit.
    let field = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(refuse("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let number = |from, len| field(from, len).ok_or_else(|| refuse("a field is not a number"));
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(1..=12).contains(&month) {
        return Err(refuse("the month is not 01 to 12"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(refuse("the day does not exist in that month"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(refuse("the time of day is out of range"));
    }

    let mut at = 19;
    let mut micros = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(refuse("a '.' without fraction digits"));
        }
        // The first six digits, scaled to microseconds; later digits are below the resolution.
        let kept = digits.min(6);
        let value = field(at, kept).ok_or_else(|| refuse("a field is not a number"))?;
        micros = value * 10i64.pow(6 - kept as u32);
        at += digits;
    }

    let offset_secs = match &b[at..] {
        [] => match missing_zone {
            MissingZone::Utc => 0,
            MissingZone::Refuse => return Err(refuse("no time zone (Z or ±HH:MM)")),
        },
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (zone_hours, zone_minutes) = (number(at + 1, 2)?, number(at + 4, 2)?);
            if zone_hours > 23 || zone_minutes > 59 {
                return Err(refuse("the time zone offset is out of range"));
            }
            let offset = zone_hours * 3600 + zone_minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return Err(refuse("the time zone is not Z or ±HH:MM")),
    };
    // Four-digit years keep every product here far inside i64.
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Ok(seconds * 1_000_000 + micros)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zones_fractions_and_separators() {
        let t = Ok(1_709_201_730_500_000);
        assert_eq!(parse_rfc3339("2024-02-29T10:15:30.5Z"), t);
        assert_eq!(parse_rfc3339("2024-02-29t10:15:30.500z"), t);
        assert_eq!(parse_rfc3339("2024-02-29 12:15:30.5+02:00"), t);
        assert_eq!(parse_rfc3339("2024-02-29T08:45:30.5-01:30"), t);
        assert_eq!(parse_rfc3339("2024-02-29T10:15:30.500000999Z"), t);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1_000_000));
        assert_eq!(
            parse_rfc3339("1998-12-31T23:59:60Z"),
            parse_rfc3339("1999-01-01T00:00:00Z"),
            "a leap second counts as the next second"
        );
        assert_eq!(
            parse_rfc3339_assume_utc("1970-01-01 00:00:01"),
            Ok(1_000_000)
        );
        assert_eq!(
            parse_rfc3339_assume_utc("1970-01-01T00:00:01+01:00"),
            Ok(-3_599_000_000)
        );
    }

    #[test]
    fn refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00Z ",
            "x024-01-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
            "2024-01-01T00:00:00é",
            "2024-01-01T0é:00:00Z",
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775808-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_rfc3339_assume_utc("2024-01-01T00:00:00+0").is_err());
        let e = parse_rfc3339(&"9".repeat(1000)).expect_err("refused");
        assert_eq!(e.input.len(), 64, "the error repeats a bounded prefix");
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339(1_709_201_730_500_000),
            "2024-02-29T10:15:30.500000Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_rfc3339(253_402_300_799_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
        // Every day of four centuries around the epoch, at an odd time of day.
        for day in -73_000..73_000i64 {
            let micros = day * 86_400_000_000 + 45_296_789_012;
            let text = format_rfc3339(micros);
            assert_eq!(parse_rfc3339(&text), Ok(micros), "{text}");
        }
    }

    #[test]
    fn timestamps_refuse_instants_before_the_epoch() {
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-02T00:00:01Z"),
            Ok(Timestamp::from_unix_millis(86_401_000))
        );
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59.999999Z").is_err());
        assert_eq!(
            Timestamp::from_unix_micros(u64::MAX).to_rfc3339(),
            format_rfc3339(i64::MAX)
        );
    }
}
