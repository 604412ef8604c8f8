//! A receive link's reader: a task that reads the partition one batch ahead of the link.
//!
//! The connection asks for a batch ([`Feed::want`]) when the link's queue runs empty; the task
//! reads it (or waits on `Log::wait_for` at the log's end, so new telemetry goes out as it is
//! appended, without polling) and hands it over on the connection's channel. At most one
//! batch per link is thus in flight, and one queued: memory per link is bounded by two reads.

use std::sync::Arc;

use iot_core::{Log, Offset, PartitionId, ReadLimits, StoredRecord};
use tokio::sync::{Notify, mpsc};

/// Records read from the log per batch (at most 4 MiB of them).
///
/// Why this many: a log read decodes every stored frame it touches whole, and the hub appends
/// telemetry in batches; reading 256 at a time decoded each record of such a backlog about
/// five times. 1 024 decodes it about twice, and bounds what a link holds between reads.
pub(crate) const BATCH: usize = 1024;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a reader hands the connection: its link's id, and records (never empty) or the
/// failure that ends the link.
pub(crate) type Fed = (u64, Result<Vec<StoredRecord>, iot_core::Error>);

/// The connection's side of a link's reader. Dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Feed {
    want: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// Starts reading `partition` from `from` for the link `id`.
    pub(crate) fn start(
        log: Arc<dyn Log>,
        partition: PartitionId,
        from: Offset,
        id: u64,
        to: mpsc::UnboundedSender<Fed>,
    ) -> Self {
        let want = Arc::new(Notify::new());
        let task = tokio::spawn(read(log, partition, from, id, to, want.clone()));
        Feed { want, task }
    }

    /// Asks for the next batch.
    pub(crate) fn want(&self) {
        self.want.notify_one();
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read(
    log: Arc<dyn Log>,
    partition: PartitionId,
    mut next: Offset,
    id: u64,
    to: mpsc::UnboundedSender<Fed>,
    want: Arc<Notify>,
) {
    let limits = ReadLimits {
        max_records: BATCH,
        max_bytes: BATCH_BYTES,
    };
    loop {
        want.notified().await;
        let batch = loop {
            match log.read(partition, next, limits).await {
                Ok(records) if records.is_empty() => {
                    if let Err(e) = log.wait_for(partition, next).await {
                        break Err(e);
                    }
                }
                Ok(records) => break Ok(records),
                // Retention removed records under the reader: go on from the oldest held.
                Err(iot_core::Error::OffsetTruncated { earliest, .. }) => next = earliest,
                Err(e) => break Err(e),
            }
        };
        let failed = batch.is_err();
        if let Ok(records) = &batch
            && let Some(last) = records.last()
        {
            next = Offset(last.offset.0 + 1);
        }
        if to.send((id, batch)).is_err() || failed {
            return;
        }
    }
}
