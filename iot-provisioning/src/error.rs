//! The error type of `iot-provisioning`.

use std::io;
use std::path::PathBuf;

use iot_core::DeviceId;
use iot_core::storage::StorageError;

/// What went wrong in provisioning: a kind a caller can act on, with the device it concerns.
///
/// No variant carries a secret: keys and tokens never appear in an error or its message (the
/// errors of the identity store and the registry wrapped here promise the same).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device does not exist.
    #[error("device {id} does not exist")]
    NotFound {
        /// The device asked for.
        id: DeviceId,
    },

    /// `register` named a device that exists already (or the same id twice in one bulk request).
    #[error("device {id} already exists")]
    AlreadyExists {
        /// The device.
        id: DeviceId,
    },

    /// The `if_match` etag is not the registry record's current one.
    #[error("device {id} has etag {actual}, not {expected}: it changed since it was read")]
    PreconditionFailed {
        /// The device.
        id: DeviceId,
        /// The etag the caller passed.
        expected: String,
        /// The record's current etag.
        actual: String,
    },

    /// Metadata must be a JSON object.
    #[error("metadata of device {id} must be a JSON object, got {found}")]
    MetadataNotAnObject {
        /// The device.
        id: DeviceId,
        /// The JSON type found instead (`"array"`, `"string"`, …).
        found: &'static str,
    },

    /// The operation is refused for a disabled device (resetting credentials, issuing a token).
    #[error("device {id} is disabled")]
    DeviceDisabled {
        /// The device.
        id: DeviceId,
    },

    /// An argument was refused (for example a token lifetime of zero).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// A workflow hook vetoed the operation before anything was written.
    #[error("the {hook} hook vetoed {operation} of {id}: {reason}")]
    Vetoed {
        /// The hook's name.
        hook: String,
        /// The operation.
        operation: &'static str,
        /// The device.
        id: DeviceId,
        /// The reason the hook gave.
        reason: String,
    },

    /// A workflow hook failed before the operation; nothing was written.
    #[error("the {hook} hook failed before {operation} of {id}: {reason}")]
    HookFailed {
        /// The hook's name.
        hook: String,
        /// The operation.
        operation: &'static str,
        /// The device.
        id: DeviceId,
        /// What failed.
        reason: String,
    },

    /// In an all-or-nothing bulk request, this item was valid but was not applied because another
    /// item failed.
    #[error(
        "device {id} was not registered because another item of the all-or-nothing request failed"
    )]
    Aborted {
        /// The device.
        id: DeviceId,
    },

    /// An operation could not be completed or undone because a store keeps failing; the intent
    /// stays in the journal and is finished by recovery (on the next operation or the next
    /// start). The two stores may disagree on `id` until then.
    #[error("the operation on {id} is pending recovery: {reason}")]
    RecoveryPending {
        /// The device.
        id: DeviceId,
        /// The failure that stopped it.
        reason: String,
    },

    /// No enrollment (individual or group, as `kind` says) has this id.
    #[error("{kind} {id} does not exist")]
    EnrollmentNotFound {
        /// `"individual enrollment"` or `"enrollment group"`.
        kind: &'static str,
        /// The registration id or group id.
        id: String,
    },

    /// A create-only write found an enrollment under this id.
    #[error("{kind} {id} already exists")]
    EnrollmentExists {
        /// `"individual enrollment"` or `"enrollment group"`.
        kind: &'static str,
        /// The registration id or group id.
        id: String,
    },

    /// A write conditioned on a version found another one: the enrollment changed since it
    /// was read.
    #[error("{kind} {id} has version {actual}, not {expected}: it changed since it was read")]
    EnrollmentChanged {
        /// `"individual enrollment"` or `"enrollment group"`.
        kind: &'static str,
        /// The registration id or group id.
        id: String,
        /// The version the caller passed.
        expected: u64,
        /// The stored version.
        actual: u64,
    },

    /// The identity store failed.
    #[error("identity store: {0}")]
    Identity(#[source] iot_identity::Error),

    /// The registry failed.
    #[error("registry: {0}")]
    Registry(#[source] iot_registry::Error),

    /// The intent journal failed.
    #[error("journal {operation} {path}: {source}")]
    Journal {
        /// What was being done.
        operation: &'static str,
        /// The journal file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The journal holds data that fails its checks somewhere other than a torn tail (see the
    /// storage kit's rule in `iot_core::storage::frame`); `FileJournalConfig::recovery` can ask
    /// for a repair.
    #[error("corrupt journal {path} at byte {position}: {reason}")]
    CorruptJournal {
        /// The journal file.
        path: PathBuf,
        /// Byte position of the bad frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// Another provisioner holds the journal's directory.
    #[error("the journal at {path} is locked by another provisioner")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// An error from `iot-core` (the audit log, an id).
    #[error(transparent)]
    Core(#[from] iot_core::Error),

    /// A [`Journal`](crate::Journal) (or another backend) implemented outside this crate failed
    /// in its own terms. The backend's error stays the `source`; `retryable` is its judgement of
    /// whether the same call may succeed later. Build it with [`Error::backend`].
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend failed (for example `"postgres journal"`), for logs.
        backend: String,
        /// The backend's own error (never carrying a secret).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether retrying the same call later may succeed.
        retryable: bool,
    },
}

/// The storage kit's errors keep their kind: `Corrupt` becomes `CorruptJournal` with its file and
/// position, `Locked` stays `Locked`, I/O trouble is a `Journal` error.
impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io {
                operation,
                path,
                source,
            } => Error::Journal {
                operation,
                path,
                source,
            },
            StorageError::Corrupt {
                path,
                position,
                reason,
            } => Error::CorruptJournal {
                path,
                position,
                reason,
            },
            StorageError::Locked { path } => Error::Locked { path },
            StorageError::Failed { path } => Error::Journal {
                operation: "append",
                path,
                source: io::Error::other(
                    "the journal refuses appends after an earlier failure; reopen it",
                ),
            },
            StorageError::Config { reason } => Error::InvalidInput { reason },
            too_large @ StorageError::TooLarge { .. } => Error::invalid(too_large.to_string()),
            // `StorageError` is non-exhaustive: a kind added later is at least reported as I/O.
            other => Error::Journal {
                operation: "store",
                path: PathBuf::new(),
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

impl Error {
    /// A short, stable name of the kind, for audit records and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::MetadataNotAnObject { .. } => "metadata_not_an_object",
            Error::DeviceDisabled { .. } => "device_disabled",
            Error::InvalidInput { .. } => "invalid_input",
            Error::Vetoed { .. } => "vetoed",
            Error::HookFailed { .. } => "hook_failed",
            Error::Aborted { .. } => "aborted",
            Error::RecoveryPending { .. } => "recovery_pending",
            Error::EnrollmentNotFound { .. } => "enrollment_not_found",
            Error::EnrollmentExists { .. } => "enrollment_exists",
            Error::EnrollmentChanged { .. } => "enrollment_changed",
            Error::Identity(_) => "identity_store",
            Error::Registry(_) => "registry",
            Error::Journal { .. } => "journal",
            Error::CorruptJournal { .. } => "corrupt_journal",
            Error::Locked { .. } => "locked",
            Error::Core(_) => "core",
            Error::Backend { .. } => "backend",
        }
    }

    /// Whether the same call may succeed later (store or journal trouble, pending recovery).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Identity(e) => e.is_retryable(),
            Error::Registry(e) => e.is_retryable(),
            Error::Journal { .. } | Error::RecoveryPending { .. } | Error::Locked { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// A [`Error::Backend`]: `source` is the backend's own error, kept as the cause.
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

    /// Maps a store error about `id` to the provisioning kind a caller acts on.
    pub(crate) fn from_identity(e: iot_identity::Error) -> Self {
        match e {
            iot_identity::Error::NotFound { id } => Error::NotFound { id },
            iot_identity::Error::AlreadyExists { id } => Error::AlreadyExists { id },
            other => Error::Identity(other),
        }
    }

    /// Maps a registry error to the provisioning kind a caller acts on.
    pub(crate) fn from_registry(e: iot_registry::Error) -> Self {
        match e {
            iot_registry::Error::NotFound { id } => Error::NotFound { id },
            iot_registry::Error::AlreadyExists { id } => Error::AlreadyExists { id },
            iot_registry::Error::PreconditionFailed {
                id,
                expected,
                actual,
            } => Error::PreconditionFailed {
                id,
                expected: expected.as_str().to_owned(),
                actual: actual.as_str().to_owned(),
            },
            other => Error::Registry(other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JSON type name of `v`, for error messages.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_backend_error_keeps_its_source_and_says_whether_to_retry() {
        let lost = Error::backend(
            "postgres journal",
            io::Error::new(io::ErrorKind::TimedOut, "statement timeout"),
            true,
        );
        assert!(lost.is_retryable());
        assert_eq!(lost.kind(), "backend");
        assert_eq!(
            lost.to_string(),
            "postgres journal backend: statement timeout"
        );
        let source = lost.source().expect("the backend's error is the source");
        assert_eq!(
            source.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::TimedOut)
        );
        assert!(!Error::backend("postgres journal", "no such table", false).is_retryable());
    }

    #[test]
    fn an_identity_backend_error_is_retryable_through_provisioning_as_the_backend_said() {
        let retry = iot_identity::Error::backend("postgres", "connection reset", true);
        assert!(Error::from_identity(retry).is_retryable());
        let fatal = iot_identity::Error::backend("postgres", "permission denied", false);
        assert!(!Error::from_identity(fatal).is_retryable());
    }
}
