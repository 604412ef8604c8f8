//! The error type of `iot-stream`.

use std::io;
use std::path::PathBuf;

use iot_core::storage::StorageError;

/// What went wrong in `iot-stream`: a kind a caller can act on, with its context.
///
/// The enum is `#[non_exhaustive]`. No variant carries a record's payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log under the processor host or a processor failed.
    #[error(transparent)]
    Log(#[from] iot_core::Error),

    /// An argument or a record was refused (bad JSON, a non-object patch, a zero window size…).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// A rule could not be compiled: a syntax error or a construct the rule language does not
    /// support, with its position in the rule text (1-based line and column; 0 when unknown).
    #[error("rule error at line {line}, column {column}: {reason}")]
    Rule {
        /// What is wrong.
        reason: String,
        /// 1-based line of the offending token.
        line: u64,
        /// 1-based column of the offending token.
        column: u64,
    },

    /// No rule, processor group or record of that name exists.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// Something of that name already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What was duplicated.
        what: String,
    },

    /// A processor failed on a batch. The host retries it and, for a record that keeps failing,
    /// sends it to the dead-letter topic.
    #[error("processor failed: {reason}")]
    Processor {
        /// What failed.
        reason: String,
    },

    /// Stored state failed its checksum or framing where recovery may not drop it.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// Another process (or another store in this one) holds the store's directory.
    #[error("the state store at {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The store refuses writes after an I/O failure it could not undo; reopen it.
    #[error("the state store is unavailable: {reason}; reopen it to recover")]
    Unavailable {
        /// What failed.
        reason: String,
    },

    /// A dependency outside this crate (for example the device registry) failed.
    #[error("{what} failed: {reason}")]
    External {
        /// Which dependency.
        what: &'static str,
        /// Its error, as text.
        reason: String,
    },

    /// The processor host or the component was shut down.
    #[error("shut down")]
    Closed,

    /// An I/O operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A storage backend outside this crate (a database, a network store) failed. `source` is
    /// the backend's own error, kept as the cause; `retryable` is the backend's judgement of
    /// whether the same call may succeed later. Build it with [`Error::backend`].
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend failed (for example `"postgres"`), for logs.
        backend: String,
        /// The backend's own error. It must not carry payloads or secrets.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether retrying the same call later may succeed.
        retryable: bool,
    },
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Log(e) => e.is_retryable(),
            Error::Io { .. } | Error::Locked { .. } | Error::Processor { .. } => true,
            Error::External { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// An [`Error::Backend`]: `source` is the backend's own error, kept as the cause.
    pub fn backend(
        backend: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
        retryable: bool,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            source: source.into(),
            retryable,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }
}

impl From<StorageError> for Error {
    /// Keeps the kind: corruption stays [`Error::Corrupt`] with its file and position, a held
    /// lock stays [`Error::Locked`].
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io {
                operation,
                path,
                source,
            } => Error::Io {
                operation,
                path,
                source,
            },
            StorageError::Corrupt {
                path,
                position,
                reason,
            } => Error::Corrupt {
                path,
                position,
                reason,
            },
            StorageError::Locked { path } => Error::Locked { path },
            e @ StorageError::Failed { .. } => Error::Unavailable {
                reason: e.to_string(),
            },
            e => Error::InvalidInput {
                reason: e.to_string(),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
