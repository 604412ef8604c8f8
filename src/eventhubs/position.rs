//! Where a receive link starts: the source's selector filter, resolved against the log.
//!
//! Event Hubs clients send `apache.org:selector-filter:string` with one comparison on an
//! annotation: `amqp.annotation.x-opt-offset > '42'`, `… x-opt-sequence-number >= '42'` or
//! `… x-opt-enqueued-time > '1700000000000'` (Unix milliseconds). A partition's sequence
//! numbers and offsets are both the log offset (`docs/eventhubs.md`), so an offset or a
//! sequence number `n` starts at log offset `n + 1` (`>`) or `n` (`>=`); `-1` is the start of
//! the partition and `@latest` its end. An enqueued time starts at the first record enqueued
//! after it (at or after, for `>=`), found by binary search: enqueued times never decrease
//! within a partition. A start before the oldest record still held starts at the oldest.

use iot_core::{Log, Offset, PartitionId, ReadLimits};

use super::error::Result;

/// The descriptor name of the selector filter.
pub(crate) const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// Its numeric descriptor (Apache's domain 0x468C, filter 4).
pub(crate) const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// A parsed starting position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest record held.
    Earliest,
    /// Only records appended from now on.
    Latest,
    /// This log offset (offsets and sequence numbers).
    At(u64),
    /// The first record enqueued after (or, `inclusive`, at) this Unix millisecond.
    EnqueuedAfter { millis: u64, inclusive: bool },
}

/// Parses a selector expression; `None` when it is not one this endpoint understands.
pub(crate) fn parse(expr: &str) -> Option<Start> {
    let rest = expr.trim();
    let rest = rest
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case("amqp.annotation."))
        .map(|_| &rest[16..])?;
    let (name, _) = rest.split_once(|c: char| c.is_whitespace() || c == '>' || c == '=')?;
    let rest = rest[name.len()..].trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (true, r)
    } else {
        return None;
    };
    let value = rest.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let numbered = |value: &str| -> Option<Start> {
        match value {
            "-1" => Some(Start::Earliest),
            "@latest" => Some(Start::Latest),
            v => {
                let n: u64 = v.parse().ok()?;
                Some(Start::At(if inclusive { n } else { n.checked_add(1)? }))
            }
        }
    };
    match name.to_ascii_lowercase().as_str() {
        "x-opt-offset" | "x-opt-sequence-number" => numbered(value),
        "x-opt-enqueued-time" => Some(Start::EnqueuedAfter {
            millis: value.parse().ok()?,
            inclusive,
        }),
        _ => None,
    }
}

/// The log offset `start` names in `partition`.
pub(crate) async fn resolve(log: &dyn Log, partition: PartitionId, start: Start) -> Result<Offset> {
    let earliest = log.earliest_offset(partition).await?;
    let next = log.next_offset(partition).await?;
    let at = match start {
        Start::Earliest => earliest.0,
        Start::Latest => next.0,
        Start::At(n) => n.min(next.0),
        Start::EnqueuedAfter { millis, inclusive } => {
            // The first offset whose record is enqueued after the time: the predicate is
            // monotonic over the partition, so binary search with one-record reads.
            let (mut lo, mut hi) = (earliest.0, next.0);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let records = log
                    .read(partition, Offset(mid), ReadLimits::records(1))
                    .await?;
                let after = match records.first() {
                    Some(r) => {
                        let t = r.enqueued_time.as_unix_millis();
                        if inclusive { t >= millis } else { t > millis }
                    }
                    None => true,
                };
                if after {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            lo
        }
    };
    Ok(Offset(at.max(earliest.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '-1'"),
            Some(Start::Earliest)
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '@latest'"),
            Some(Start::Latest)
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '41'"),
            Some(Start::At(42))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset >= '41'"),
            Some(Start::At(41))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-sequence-number > '7'"),
            Some(Start::At(8))
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Some(Start::EnqueuedAfter {
                millis: 1_700_000_000_000,
                inclusive: false
            })
        );
        assert_eq!(parse("amqp.annotation.x-opt-offset > 41"), None);
        assert_eq!(parse("amqp.annotation.x-other > '1'"), None);
        assert_eq!(parse("x-opt-offset > '1'"), None);
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '18446744073709551615'"),
            None
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("amqp.annotation.é"), None);
    }
}
