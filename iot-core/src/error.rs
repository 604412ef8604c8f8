//! The error type of `iot-core`.

use std::io;
use std::path::PathBuf;

use crate::offset::{Offset, PartitionId};

/// What went wrong in `iot-core`: a kind a caller can match on, with the context that makes the
/// message useful (which partition, which offset, which file).
///
/// The enum is `#[non_exhaustive]`: new kinds may be added in minor releases. No variant ever carries
/// a record's payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device id broke the rules of [`DeviceId`](crate::DeviceId).
    #[error("invalid device id {id:?}: {reason}")]
    InvalidDeviceId {
        /// The refused id (at most its first 140 characters).
        id: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A topic or consumer-group name broke the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `"topic"` or `"consumer group"`.
        kind: &'static str,
        /// The refused name (shortened if huge).
        name: String,
        /// Which rule it broke.
        reason: String,
    },

    /// An argument was refused (for example an empty batch or a zero read limit).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// One record is larger than the log's `max_record_bytes`.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Encoded size of the record.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A batch is larger than the log's `max_batch_bytes` or `max_batch_records`.
    #[error(
        "batch of {records} records and {size} bytes exceeds the limit of {limit_records} records or {limit} bytes"
    )]
    BatchTooLarge {
        /// Number of records in the batch.
        records: usize,
        /// Encoded size of the batch.
        size: usize,
        /// The configured record-count limit.
        limit_records: usize,
        /// The configured byte limit.
        limit: usize,
    },

    /// The partition does not exist in this log.
    #[error("partition {partition} does not exist (the log has {partitions} partitions)")]
    UnknownPartition {
        /// The partition asked for.
        partition: PartitionId,
        /// How many partitions the log has.
        partitions: u32,
    },

    /// The offset was removed by retention; reading can resume at `earliest`.
    #[error(
        "offset {offset} of partition {partition} was removed by retention; the earliest offset is {earliest}"
    )]
    OffsetTruncated {
        /// The partition read.
        partition: PartitionId,
        /// The offset asked for.
        offset: Offset,
        /// The earliest offset still in the partition.
        earliest: Offset,
    },

    /// The offset lies past the end of the partition (reading at exactly `next` is allowed and
    /// returns nothing).
    #[error("offset {offset} of partition {partition} is past the end; the next offset is {next}")]
    OffsetBeyondEnd {
        /// The partition read.
        partition: PartitionId,
        /// The offset asked for.
        offset: Offset,
        /// The offset the next appended record will get.
        next: Offset,
    },

    /// Another process (or another `FileLog` in this one) holds the log's directory for writing.
    #[error("the log at {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// Stored data failed its checksum or framing, somewhere recovery may not silently drop it.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// The configuration is inconsistent, or does not match what is stored on disk.
    #[error("misconfigured: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The log was closed, or a background task it depends on has stopped.
    #[error("the log is closed")]
    Closed,

    /// The log refuses writes after an I/O failure it could not undo (for example a failed
    /// fsync, after which the state of the file is unknown). Reopening runs recovery.
    #[error("partition {partition} is unavailable: {reason}; reopen the log to recover")]
    Unavailable {
        /// The partition that failed.
        partition: PartitionId,
        /// What failed.
        reason: String,
    },

    /// An I/O operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", "fsync", ...).
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (I/O trouble, a lock held by another
    /// process). Validation errors, corruption and misconfiguration are permanent.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Locked { .. })
    }

    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError as S;
        match e {
            S::Io {
                operation,
                path,
                source,
            } => Error::Io {
                operation,
                path,
                source,
            },
            S::Corrupt {
                path,
                position,
                reason,
            } => Error::Corrupt {
                path,
                position,
                reason,
            },
            S::Locked { path } => Error::Locked { path },
            S::Config { reason } => Error::Config { reason },
            other => Error::Io {
                operation: "store",
                path: std::path::PathBuf::new(),
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
