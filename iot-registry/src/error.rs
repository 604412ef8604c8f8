//! The error type of `iot-registry`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use iot_core::DeviceId;

use crate::record::ETag;

/// What went wrong in the registry: a kind a caller can act on, with the context that makes the
/// message useful (which device, which path, which file).
///
/// The enum is `#[non_exhaustive]`. No variant carries a document's content: metadata may be large,
/// and errors end up in logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No record exists for the device.
    #[error("device {id} is not in the registry")]
    NotFound {
        /// The device asked for.
        id: DeviceId,
    },

    /// `create` found a record for the device already.
    #[error("device {id} is already in the registry")]
    AlreadyExists {
        /// The device.
        id: DeviceId,
    },

    /// The `if-match` etag is stale: the record changed since the caller read it.
    #[error("device {id} has etag {actual}, not {expected}: it changed since it was read")]
    PreconditionFailed {
        /// The device.
        id: DeviceId,
        /// The etag the caller expected.
        expected: ETag,
        /// The record's current etag.
        actual: ETag,
    },

    /// A document (or merge patch) breaks the document rules: a key with a `.`, a field of the
    /// wrong type, an unknown top-level field.
    #[error("invalid document at {path}: {reason}")]
    InvalidDocument {
        /// Where in the document (`metadata.geo.lat`, or `$` for the root).
        path: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A document is larger than the configured limit.
    #[error("document of {size} bytes exceeds the limit of {limit} bytes")]
    DocumentTooLarge {
        /// Encoded size (compact JSON of metadata and tags), or a lower bound of it when the
        /// measurement stopped at the limit.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A document (or merge patch) nests objects and arrays deeper than the configured limit.
    #[error("document nests {depth} levels deep at {path}, the limit is {limit}")]
    DocumentTooDeep {
        /// The depth reached when the check stopped (at least `limit + 1`).
        depth: usize,
        /// The configured limit.
        limit: usize,
        /// Where the limit was passed.
        path: String,
    },

    /// A query could not be parsed or compiled.
    #[error(transparent)]
    Query(#[from] QueryError),

    /// A continuation token is malformed, or belongs to another query.
    #[error("invalid continuation token: {reason}")]
    InvalidContinuation {
        /// What was wrong.
        reason: String,
    },

    /// An argument was refused (for example a zero page size).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// Another `FileRegistry` holds the directory.
    #[error("the registry at {path} is locked by another process or instance")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// Stored data failed its checksum or framing where recovery may not drop it silently.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// A snapshot was written in a format this version does not read (by a newer version of
    /// the crate, say). Nothing was changed: open it with software that reads `found`.
    #[error(
        "{path} is in snapshot format {found}, which this version cannot read (it reads IOTREG03)"
    )]
    UnsupportedFormat {
        /// The snapshot.
        path: PathBuf,
        /// The format tag found in its header.
        found: String,
    },

    /// The configuration is inconsistent.
    #[error("misconfigured: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A write failed earlier in a way that may have left the file out of step with memory; the
    /// registry refuses further writes until it is reopened.
    #[error("the registry refuses writes after an earlier I/O failure; reopen it")]
    Poisoned,

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

    /// A backend outside this crate failed. The backend's own error is kept as the `source`, so
    /// that callers can downcast it and log its chain; the backend says whether retrying may help.
    ///
    /// The source's `Display` ends up in logs and messages: it must not carry secrets (connection
    /// strings with passwords, tokens) nor document contents.
    #[error("{backend} backend failed: {source}")]
    Backend {
        /// Which backend failed (`"postgres"`, `"fault injection"`, ...).
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
    /// Whether retrying the same call later may succeed: I/O trouble, a lock held elsewhere, a
    /// stale etag (after reading the record again), or a backend failure its backend calls
    /// transient. Validation errors and corruption are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Locked { .. } | Error::PreconditionFailed { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Wraps a backend's own error (see [`Error::Backend`]).
    ///
    /// ```
    /// use iot_registry::Error;
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

    pub(crate) fn invalid_doc(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidDocument {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<iot_core::storage::StorageError> for Error {
    /// Keeps the kind: corruption stays [`Error::Corrupt`] with its file and position, a held
    /// lock stays [`Error::Locked`], a failed store stays [`Error::Poisoned`].
    fn from(e: iot_core::storage::StorageError) -> Self {
        use iot_core::storage::StorageError as S;
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
            S::TooLarge { size, limit, .. } => Error::DocumentTooLarge { size, limit },
            S::Failed { .. } => Error::Poisoned,
            S::Config { reason } => Error::Config { reason },
            other => Error::Config {
                reason: other.to_string(),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of mistake a query holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueryErrorKind {
    /// The text does not follow the grammar.
    Syntax,
    /// A function other than `STARTS_WITH`, `IS_DEFINED` (in `WHERE`) or `COUNT` (in `SELECT`).
    UnknownFunction,
    /// An operand of the wrong type: `NOT 'x'`, `STARTS_WITH(p, 3)`, `p < null`, a path where a
    /// condition is needed.
    TypeMismatch,
    /// A path that starts with something other than `metadata`, `tags`, `deviceId`, `stateRef`.
    UnknownField,
    /// Valid SQL this query language does not have (joins, `GROUP BY`, comparing two paths).
    Unsupported,
    /// The query passes a size limit (length, tokens, nesting); see [`QueryLimits`](crate::QueryLimits).
    TooComplex,
}

impl fmt::Display for QueryErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryErrorKind::Syntax => "syntax error",
            QueryErrorKind::UnknownFunction => "unknown function",
            QueryErrorKind::TypeMismatch => "type mismatch",
            QueryErrorKind::UnknownField => "unknown field",
            QueryErrorKind::Unsupported => "unsupported",
            QueryErrorKind::TooComplex => "query too complex",
        })
    }
}

/// A query that could not be parsed or compiled: where, what kind of mistake, and what was
/// expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at line {line}, column {column}: {message}")]
pub struct QueryError {
    /// What kind of mistake.
    pub kind: QueryErrorKind,
    /// 1-based line of the offending token (0 when the error concerns the whole query).
    pub line: u64,
    /// 1-based column of the offending token (0 when the error concerns the whole query).
    pub column: u64,
    /// What was expected and what was found.
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(
        kind: QueryErrorKind,
        line: u64,
        column: u64,
        message: impl Into<String>,
    ) -> Self {
        QueryError {
            kind,
            line,
            column,
            message: message.into(),
        }
    }
}
