//! The error of the storage kit.

use std::io;
use std::path::PathBuf;

/// What went wrong in a storage-kit operation, with the file and position involved.
///
/// Every crate of the SDK converts it into its own error (`From<StorageError>`), keeping the kind:
/// a caller matches `Corrupt` or `Locked` on the crate's error as before.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
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

    /// Stored data failed its checksum or framing somewhere a crash cannot have left it: refused
    /// rather than silently dropped. [`Recovery::Repair`](crate::storage::Recovery::Repair) cuts
    /// the file at `position` when an operator asks for it.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// Another process (or another store in this one) holds the directory.
    #[error("{path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// A value to be stored is larger than the format allows.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The store refuses writes after a failure it could not undo (a failed fsync leaves the
    /// file's state unknown). Reopening runs recovery.
    #[error("{path} refuses writes after an earlier failure; reopen the store to recover")]
    Failed {
        /// The file that failed.
        path: PathBuf,
    },

    /// The configuration cannot work; the message says which value to change.
    #[error("misconfigured: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl StorageError {
    /// An I/O error with its operation and path.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// Corruption at `position` of `path`.
    pub fn corrupt(path: impl Into<PathBuf>, position: u64, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }

    /// Whether retrying later may succeed (I/O trouble, a lock held by another process).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Io { .. } | StorageError::Locked { .. })
    }
}

/// `Result` with [`StorageError`].
pub type StorageResult<T> = std::result::Result<T, StorageError>;
