//! Conversions every adapter needs between the SDK's values and PostgreSQL columns.

use iot_core::Timestamp;

/// A timestamp as a `bigint` of microseconds since the Unix epoch. Times past the year 294 000
/// (only reachable by saturating arithmetic on absurd durations) are stored as the largest
/// `bigint`, which still compares as "later than any real time".
pub(crate) fn to_micros(t: Timestamp) -> i64 {
    i64::try_from(t.as_unix_micros()).unwrap_or(i64::MAX)
}

/// The inverse of [`to_micros`]; a negative value (never written by an adapter) reads as the
/// epoch.
pub(crate) fn from_micros(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(u64::try_from(micros).unwrap_or(0))
}

/// A `u64` counter (a sequence number, a version) as a `bigint`; `None` when it cannot be one,
/// which no stored row can match.
pub(crate) fn to_bigint(n: u64) -> Option<i64> {
    i64::try_from(n).ok()
}

/// A stored `bigint` counter as `u64` (stored counters are never negative; one that is reads
/// as 0).
pub(crate) fn from_bigint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
