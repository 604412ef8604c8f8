//! Turning a device's PUBLISH on its telemetry topic into [`Telemetry`], and a C2D delivery into
//! the property bag of its topic.

use bytes::Bytes;
use iot_core::Timestamp;

use super::error::{ProtocolViolation, shorten};
use super::property_bag;
use crate::message::{C2dDelivery, Telemetry, header};

/// Builds the telemetry of a PUBLISH whose topic carried `bag`.
///
/// System properties (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.exp`) fill [`Telemetry::system`]; the
/// other `$.` properties the SDKs send (`$.uid`, `$.on`, `$.ifid`, `$.to`) have no meaning here
/// and are dropped, since names starting with `$` are reserved in records; everything else is a
/// custom property, in order.
pub(crate) fn from_publish(
    bag: &str,
    payload: Bytes,
    will: bool,
) -> Result<Telemetry, ProtocolViolation> {
    let mut telemetry = Telemetry::new(payload);
    telemetry.will = will;
    for (key, value) in property_bag::decode(bag)? {
        let system = &mut telemetry.system;
        match key.as_str() {
            "$.mid" => system.message_id = Some(value),
            "$.cid" => system.correlation_id = Some(value),
            "$.ct" => system.content_type = Some(value),
            "$.ce" => system.content_encoding = Some(value),
            "$.exp" => {
                system.expiry = Some(parse_expiry(&value).ok_or_else(|| {
                    ProtocolViolation::PropertyBag(format!(
                        "$.exp {:?} is neither RFC 3339 UTC nor Unix milliseconds",
                        shorten(&value)
                    ))
                })?)
            }
            k if k.starts_with(header::RESERVED_PREFIX) => {
                tracing::debug!(property = k, "dropping an unsupported system property");
            }
            _ => telemetry.properties.push((key, value)),
        }
    }
    Ok(telemetry)
}

/// The property bag of a C2D delivery's topic: `$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.to`, then
/// the custom properties.
pub(crate) fn c2d_bag(delivery: &C2dDelivery, to: &str) -> Vec<(String, String)> {
    let mut pairs = vec![("$.mid".to_string(), delivery.message_id.clone())];
    let optional = [
        ("$.cid", &delivery.correlation_id),
        ("$.ct", &delivery.content_type),
        ("$.ce", &delivery.content_encoding),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            pairs.push((key.to_string(), value.clone()));
        }
    }
    pairs.push(("$.to".to_string(), to.to_string()));
    pairs.extend(delivery.properties.iter().cloned());
    pairs
}

/// `$.exp` as IoT Hub documents it (`2030-01-01T00:00:00.000Z`, RFC 3339 in UTC), or as Unix
/// milliseconds, which some devices send.
fn parse_expiry(text: &str) -> Option<Timestamp> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_custom_properties() {
        let t = from_publish(
            "%24.mid=m1&%24.cid=c1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00.500Z&%24.uid=u&temp=21&site=a%20b",
            Bytes::from_static(b"{}"),
            false,
        )
        .expect("telemetry");
        assert_eq!(t.system.message_id.as_deref(), Some("m1"));
        assert_eq!(t.system.correlation_id.as_deref(), Some("c1"));
        assert_eq!(t.system.content_type.as_deref(), Some("application/json"));
        assert_eq!(t.system.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            t.system.expiry,
            Some(Timestamp::from_unix_millis(1_893_456_000_500))
        );
        assert_eq!(
            t.properties,
            vec![("temp".into(), "21".into()), ("site".into(), "a b".into())]
        );
        assert!(!t.will);
    }

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
        assert!(from_publish("%24.exp=soon", Bytes::new(), false).is_err());
    }
}
