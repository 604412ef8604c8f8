//! `enforce_retention` as a purge of a prefix of each partition's stream.
//!
//! Every record carries its enqueued time and the byte sum of the records before it, both
//! non-decreasing along the stream, so the first record to keep is found by a binary search with
//! one direct read per step; a purge up to it removes exactly what the policy drops. (The server
//! can also enforce retention by itself, as stream limits: `NatsLogConfig::stream_limits`.)

use iot_core::{Offset, Result, RetentionPolicy, RetentionReport, Timestamp};

use super::error::request;
use super::factory::Shared;
use super::partition::Partition;

pub(crate) async fn enforce(
    shared: &Shared,
    part: &Partition,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return Ok(report);
    }
    let bounds = part.bounds(shared).await?;
    let (first, end) = (bounds.earliest.get(), bounds.next.get());
    if first == end {
        return Ok(report);
    }
    let last = part.get(shared, Offset(end - 1)).await?;
    let total = last.size_before + last.record.size_bytes() as u64;
    let cutoff = policy.max_age.map(|age| now.saturating_sub(age));

    // The smallest offset in first..=end whose record the policy keeps (`end`: none).
    let (mut lo, mut hi) = (first, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let record = part.get(shared, Offset(mid)).await?;
        let too_old = cutoff.is_some_and(|c| record.enqueued_time < c);
        let too_big = policy
            .max_bytes
            .is_some_and(|max| total - record.size_before > max);
        if too_old || too_big {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let keep_from = lo;
    if keep_from == first {
        return Ok(report);
    }
    let removed_before = if keep_from == end {
        total
    } else {
        part.get(shared, Offset(keep_from)).await?.size_before
    };
    let first_size_before = part.get(shared, Offset(first)).await?.size_before;
    shared
        .timed("purging a stream", async {
            // Purges every message below the given sequence: offsets below `keep_from`.
            part.stream
                .purge()
                .sequence(keep_from + 1)
                .await
                .map_err(request)
        })
        .await?;
    report.records_removed = keep_from - first;
    report.bytes_removed = removed_before - first_size_before;
    Ok(report)
}
