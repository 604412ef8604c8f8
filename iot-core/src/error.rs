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

    /// A module id broke the rules of [`ModuleId`](crate::ModuleId).
    #[error("invalid module id {id:?}: {reason}")]
    InvalidModuleId {
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

    /// A backend's own error, kept whole as the `source` rather than flattened into a string, so
    /// that callers can downcast it and log its chain. Backends outside this crate (a database, a
    /// message broker) return their failures this way, and say whether retrying may help.
    ///
    /// The source's `Display` ends up in logs and messages: it must not carry secrets (connection
    /// strings with passwords, tokens).
    #[error("{backend} backend failed: {source}")]
    Backend {
        /// Which backend failed (`"postgres"`, `"nats"`, ...).
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether the same call may succeed later (a lost connection, a timeout), as opposed to
        /// a permanent refusal (a schema mismatch, a permission error).
        retryable: bool,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (I/O trouble, a lock held by another
    /// process, a backend failure its backend calls transient). Validation errors, corruption and
    /// misconfiguration are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Locked { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Wraps a backend's own error (see [`Error::Backend`]).
    ///
    /// ```
    /// use iot_core::Error;
    ///
    /// let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s");
    /// let e = Error::backend("my-db", timeout, true);
    /// assert!(e.is_retryable());
    /// assert!(e.to_string().starts_with("my-db backend failed"));
    /// ```
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
        retryable: bool,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
            retryable,
        }
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
            // The remaining kinds (a store that refuses writes until reopened, a value too large
            // for the format) are permanent: retrying the same call cannot help. The storage
            // error is kept whole so that callers can still match on it.
            other => Error::Backend {
                backend: "storage",
                source: Box::new(other),
                retryable: false,
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::storage::StorageError;

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset by peer")]
    struct Reset;

    #[test]
    fn backend_errors_keep_their_source_and_retry_flag() {
        let transient = Error::backend("db", Reset, true);
        assert!(transient.is_retryable());
        let source = transient.source().expect("a source");
        assert!(source.downcast_ref::<Reset>().is_some(), "source lost");
        assert_eq!(
            transient.to_string(),
            "db backend failed: connection reset by peer"
        );
        assert!(!Error::backend("db", Reset, false).is_retryable());
    }

    /// A store that refuses writes until reopened is not helped by a retry, and the storage
    /// error stays matchable instead of becoming a string inside an I/O error.
    #[test]
    fn permanent_storage_errors_are_not_retryable() {
        for storage in [
            StorageError::Failed {
                path: PathBuf::from("/x/journal"),
            },
            StorageError::TooLarge {
                what: "snapshot",
                size: 10,
                limit: 1,
            },
        ] {
            let e = Error::from(storage);
            assert!(!e.is_retryable(), "{e}");
            let kept = e
                .source()
                .and_then(|s| s.downcast_ref::<StorageError>())
                .is_some();
            assert!(kept, "the storage error was flattened: {e:?}");
        }
    }
}
