//! How NATS failures reach callers: `iot_core::Error::Backend` with backend `"nats"`, the client's
//! own error as the source, and whether a retry may help.

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::context::PublishErrorKind;
use iot_core::{Error, Offset, PartitionId};

/// The `backend` of every error this adapter returns.
pub const BACKEND: &str = "nats";

/// Wraps a NATS client error. `retryable` says whether the same call may succeed later.
pub(crate) fn backend(
    source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    retryable: bool,
) -> Error {
    Error::backend(BACKEND, source, retryable)
}

/// A JetStream API request failed (stream info, purge, KV, consumer creation): transient unless
/// the server answered with a refusal, which the callers map themselves where it matters.
pub(crate) fn request(
    source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    backend(source, true)
}

/// An operation took longer than the configured request timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer from NATS within {millis} ms while {what}")]
pub struct Timeout {
    /// What was being done.
    pub what: &'static str,
    /// The timeout.
    pub millis: u64,
}

/// An append that failed after some of its records may have been stored.
///
/// JetStream 2.9 publishes a batch record by record (the log does not state
/// `atomic_batches`), so a failure can leave a prefix of the batch in the partition. `acked`
/// records starting at `first` are known stored; records after them may be stored too if
/// their acknowledgement was lost — `next_offset` tells.
#[derive(Debug)]
pub struct AppendFailed {
    /// The partition written.
    pub partition: PartitionId,
    /// Where the batch started.
    pub first: Offset,
    /// Records of the batch the server acknowledged, from the start of the batch.
    pub acked: u64,
    /// Records in the batch.
    pub total: u64,
    /// What the server or the client said about the first record that failed.
    pub kind: PublishErrorKind,
    /// Shared: one failure of a group-committed batch is reported to each append in it.
    source: Arc<async_nats::jetstream::context::PublishError>,
}

impl AppendFailed {
    pub(crate) fn new(
        partition: PartitionId,
        first: Offset,
        acked: u64,
        total: u64,
        source: async_nats::jetstream::context::PublishError,
    ) -> Self {
        AppendFailed {
            partition,
            first,
            acked,
            total,
            kind: source.kind(),
            source: Arc::new(source),
        }
    }

    /// The same failure as seen by the part of the batch that starts `skip` records in and holds
    /// `total` records: how many of those were acknowledged.
    pub(crate) fn for_part(&self, skip: u64, total: u64) -> Self {
        AppendFailed {
            partition: self.partition,
            first: Offset(self.first.0 + skip),
            acked: self.acked.saturating_sub(skip).min(total),
            total,
            kind: self.kind,
            source: Arc::clone(&self.source),
        }
    }

    /// Nothing of the batch was acknowledged and the failure was transient (a timeout, a lost
    /// connection): the caller may retry the whole batch. A retry after a lost acknowledgement can
    /// store the batch twice; callers that mind compare `next_offset` first.
    pub fn is_retryable(&self) -> bool {
        self.acked == 0
            && matches!(
                self.kind,
                PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending
                    | PublishErrorKind::WrongLastSequence
                    | PublishErrorKind::WrongLastMessageId
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::Other
            )
    }
}

impl fmt::Display for AppendFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "append to partition {} failed after {} of {} records were acknowledged (batch at offset {})",
            self.partition, self.acked, self.total, self.first
        )
    }
}

impl std::error::Error for AppendFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl From<AppendFailed> for Error {
    fn from(e: AppendFailed) -> Self {
        let retryable = e.is_retryable();
        backend(e, retryable)
    }
}

/// The stream holds something this adapter did not write where it expected its own records.
#[derive(Debug, thiserror::Error)]
#[error("stream {stream}: {reason}")]
pub struct Inconsistent {
    /// The stream.
    pub stream: String,
    /// What was found.
    pub reason: String,
}
