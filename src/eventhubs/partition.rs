//! A receive link on a partition: streams the partition's records from the starting position
//! and then tails the log (`Log::wait_for`), so new telemetry goes out as it is appended,
//! without polling. The link stops when the client detaches it, the connection's claim
//! expires (closed with `amqp:unauthorized-access`) or the endpoint stops.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr};
use iot_core::{Offset, PartitionId, ReadLimits};
use tokio::sync::watch;

use super::Shared;
use super::claims::{Claims, unix_now};
use super::event;

/// Records read from the log per batch (at most 4 MiB of them).
///
/// Why this many: a log read decodes every stored frame it touches whole, and the hub appends
/// telemetry in batches (the benchmark's log in frames of 1 000 records); reading 256 at a time
/// decoded each record of such a backlog about five times, half of the endpoint's work. 1 024
/// decodes it about twice, and bounds what a link holds between reads.
const BATCH: usize = 1024;

/// Streams `partition` from `next` on `sender` until the link or the connection ends.
pub(crate) async fn stream(
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    mut sender: Sender,
    partition: PartitionId,
    mut next: Offset,
    mut stop: watch::Receiver<bool>,
) {
    let log = shared.log.clone();
    let limits = ReadLimits {
        max_records: BATCH,
        max_bytes: 4 * 1024 * 1024,
    };
    let mut event = event::EventBuffer::new();
    loop {
        let Some(until) = claims.valid_until(unix_now()) else {
            close(sender, AmqpError::UnauthorizedAccess, "the token expired").await;
            return;
        };
        let records = match log.read(partition, next, limits).await {
            Ok(records) => records,
            Err(iot_core::Error::OffsetTruncated { earliest, .. }) => {
                // Retention removed records under the reader: go on from the oldest held.
                next = earliest;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, partition = partition.0, "reading the telemetry log");
                close(sender, AmqpError::InternalError, "the log failed").await;
                return;
            }
        };
        if records.is_empty() {
            let expiry = Duration::from_secs(until.saturating_sub(unix_now()).min(86_400 * 365));
            tokio::select! {
                waited = log.wait_for(partition, next) => {
                    if let Err(e) = waited {
                        tracing::warn!(error = %e, partition = partition.0, "tailing the log");
                        close(sender, AmqpError::InternalError, "the log failed").await;
                        return;
                    }
                }
                _ = sender.on_detach() => return,
                _ = tokio::time::sleep(expiry) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        for stored in &records {
            // Not waiting for each settlement: deliveries are pipelined up to the client's
            // credit, and `send_batchable` waits for credit when it runs out.
            let sent = tokio::select! {
                sent = sender.send_batchable_ref(event.fill(stored)) => sent,
                _ = stop.changed() => return,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, partition = partition.0, "receive link ended");
                return;
            }
            next = Offset(stored.offset.0 + 1);
        }
    }
}

/// Closes a link with an error condition.
pub(crate) async fn close(sender: Sender, condition: AmqpError, description: &str) {
    let error = AmqpErr::new(condition, Some(description.to_owned()), None);
    if let Err(e) = sender.close_with_error(error).await {
        tracing::debug!(error = %e, "closing a link");
    }
}
