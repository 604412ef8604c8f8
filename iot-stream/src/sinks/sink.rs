//! The `Sink` trait: where an endpoint's batches go.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord};

/// Why a sink could not take a batch.
///
/// The message is logged and stamped on dead-lettered records, so it must not carry secrets
/// (keys, tokens, signed URLs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The endpoint may take the batch later (unreachable, timed out, throttled, 5xx): the sink
    /// processor retries with backoff.
    #[error("endpoint unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The endpoint refused the batch and will refuse it again (too large, not encodable, a 4xx
    /// answer): its records go to the dead-letter topic at once.
    #[error("endpoint refused the batch: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
}

impl SinkError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }
}

/// A batch of one partition of an endpoint's topic: consecutive records in offset order.
#[derive(Clone, Copy, Debug)]
pub struct SinkBatch<'a> {
    /// The partition the records were read from.
    pub partition: PartitionId,
    /// The records (never empty).
    pub records: &'a [StoredRecord],
}

impl SinkBatch<'_> {
    /// The first record (batches are never empty).
    pub fn first(&self) -> Option<&StoredRecord> {
        self.records.first()
    }
}

/// An endpoint behind a topic: object storage, a webhook, a queue.
///
/// A [`SinkProcessor`](super::SinkProcessor) cuts the topic into batches and calls
/// [`write`](Sink::write) once per batch, one partition at a time per processor.
///
/// # Contract
///
/// * **Idempotent per batch.** After a crash, the batch in flight is written again, with the same
///   records (batches are cut deterministically, see [`BatchPolicy`](super::BatchPolicy)). A sink
///   either makes the second write replace the first (object names from the batch's first
///   offset) or gives the receiver a key to drop duplicates by (a message id).
/// * **All or nothing is not required**, but a batch is only done when `write` returned `Ok`:
///   on an error the whole batch is written again, or dead-lettered.
/// * Must not panic on any record content.
#[async_trait]
pub trait Sink: Send + Sync + Debug + 'static {
    /// A short name for logs and the dead-letter header (`x-sink`).
    fn name(&self) -> &str;

    /// Delivers `batch`.
    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError>;
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: Sink + ?Sized> Sink for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        (**self).write(batch).await
    }
}
