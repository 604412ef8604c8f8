//! The error type of `iot-gateway`, and why a session ended.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use iot_core::storage::StorageError;
use iot_core::{DeviceId, EndpointId};

/// Why a device session ended. Endpoints turn it into their protocol's way of closing (an MQTT
/// endpoint simply drops the connection).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The endpoint (or the device) closed the session.
    ClientClosed,
    /// A newer connection of the same device took the session over.
    TakenOver,
    /// The device was disabled in the identity store.
    Disabled,
    /// The device was deleted from the identity store.
    Deleted,
    /// The device's credentials were replaced; it must authenticate again.
    CredentialsReplaced,
    /// The SAS token the session was opened with expired.
    TokenExpired,
    /// The gateway is shutting down.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CloseReason {
    /// A short stable name (`"taken-over"`, `"disabled"`, ...), used in connection events.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client-closed",
            CloseReason::TakenOver => "taken-over",
            CloseReason::Disabled => "disabled",
            CloseReason::Deleted => "deleted",
            CloseReason::CredentialsReplaced => "credentials-replaced",
            CloseReason::TokenExpired => "token-expired",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What a throttle limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottledOperation {
    /// Opening sessions.
    Connect,
    /// Sending telemetry.
    Telemetry,
    /// Reading or updating a twin.
    Twin,
    /// Invoking a direct method.
    Method,
}

/// Whose budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottleScope {
    /// The device's own budget.
    Device,
    /// The budget shared by every device of the gateway.
    Hub,
    /// The failed-authentication budget of the network address the attempt came from.
    Peer,
}

/// What went wrong in the gateway: a kind an endpoint maps to its protocol's answer, with the
/// context that makes the message useful. No variant carries a secret or a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device could not prove its identity, or it is disabled. `kind` says which check failed
    /// (for logs); endpoints answer every kind alike.
    #[error("device {device} is not authorized ({kind})")]
    Unauthorized {
        /// The device that tried.
        device: DeviceId,
        /// The identity store's failure kind (`"bad_signature"`, `"disabled_device"`, ...).
        kind: &'static str,
    },

    /// The device has no identity.
    #[error("device {device} does not exist")]
    DeviceNotFound {
        /// The device asked for.
        device: DeviceId,
    },

    /// The module has no identity (IoT Hub's `ModuleNotFound`).
    #[error("module {module} does not exist")]
    ModuleNotFound {
        /// The module asked for (`device/module`).
        module: EndpointId,
    },

    /// The device has no live session (or the session does not take this kind of request).
    #[error("device {device} is not connected")]
    DeviceOffline {
        /// The device asked for.
        device: DeviceId,
    },

    /// An operation did not finish in time (a direct method's response, for example).
    #[error("{operation} for device {device} timed out after {after:?}")]
    TimedOut {
        /// The device involved.
        device: DeviceId,
        /// What timed out (`"method response"`, `"device connect"`).
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },

    /// A token bucket is empty; retrying after `retry_after` may succeed.
    #[error(
        "{operation:?} throttled ({scope:?} limit) for device {device}; retry after {retry_after:?}"
    )]
    Throttled {
        /// The device refused.
        device: DeviceId,
        /// What was limited.
        operation: ThrottledOperation,
        /// Whose budget ran out.
        scope: ThrottleScope,
        /// When a token will be available again.
        retry_after: Duration,
    },

    /// A bounded queue is full: the device's inbox, or its pending method requests.
    #[error("the {queue} of device {device} is full ({limit} entries)")]
    QueueFull {
        /// The device.
        device: DeviceId,
        /// Which queue (`"inbox"`, `"method requests"`).
        queue: &'static str,
        /// Its capacity.
        limit: usize,
    },

    /// A message, twin section or payload is over its size limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (`"telemetry message"`, `"desired properties"`, ...).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// A message property broke the naming or value rules.
    #[error("invalid property {name:?}: {reason}")]
    InvalidProperty {
        /// The property name (shortened if huge).
        name: String,
        /// Which rule it broke.
        reason: String,
    },

    /// Some other argument was refused (a TTL over the maximum, a patch that is not a JSON
    /// object, ...).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
    },

    /// The session was closed; `reason` says why.
    #[error("the session of device {device} is closed ({reason})")]
    SessionClosed {
        /// The device.
        device: DeviceId,
        /// Why it ended.
        reason: CloseReason,
    },

    /// A lock token is unknown: the message was settled already, or its lock expired and it was
    /// delivered again (possibly to another session).
    #[error("lock token {token} of device {device} is not held (settled, or the lock expired)")]
    LockLost {
        /// The device.
        device: DeviceId,
        /// The token presented.
        token: String,
    },

    /// A method response named a request that is not pending (answered already, or timed out).
    #[error("no pending method request {request_id} for device {device}")]
    UnknownMethodRequest {
        /// The device.
        device: DeviceId,
        /// The request id presented.
        request_id: u64,
    },

    /// A device answered a method request with a response the gateway refuses (not JSON, or over
    /// the payload limit). The invoker gets it at once instead of waiting out its timeout, and
    /// the device's `respond_method` returns it too; the request is no longer pending.
    #[error("the answer of device {device} to method request {request_id} was refused: {reason}")]
    InvalidMethodResponse {
        /// The device that answered.
        device: DeviceId,
        /// The request it answered.
        request_id: u64,
        /// Why the answer was refused (never the payload itself).
        reason: String,
    },

    /// A conditional twin write named a version that is no longer current.
    #[error("the {section} properties of device {device} are at version {actual}, not {expected}")]
    PreconditionFailed {
        /// The device.
        device: DeviceId,
        /// `"desired"` or `"reported"`.
        section: &'static str,
        /// The version the caller expected.
        expected: u64,
        /// The current version.
        actual: u64,
    },

    /// A store's directory is held by another process.
    #[error("{path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// A store file is damaged in a way recovery must not silently repair: damage followed by
    /// intact data. Opening the store with `Recovery::Repair` cuts the file at `position`.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// A store file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A store refuses writes after a failure it could not undo; reopening it runs recovery.
    #[error("{path} refuses writes after an earlier failure; reopen the store to recover")]
    StoreFailed {
        /// The file that failed.
        path: PathBuf,
    },

    /// A store's configuration cannot work; the message says which value to change.
    #[error("misconfigured store: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The log refused an append or read.
    #[error(transparent)]
    Log(#[from] iot_core::Error),

    /// The identity store failed (other than refusing a credential).
    #[error(transparent)]
    Identity(iot_identity::Error),

    /// The gateway is shut down.
    #[error("the gateway is shut down")]
    Shutdown,

    /// A store backend outside this crate (a database, a network store) failed. `source` is the
    /// backend's own error, kept as the cause; `retryable` is the backend's judgement of whether
    /// the same call may succeed later. Build it with [`Error::backend`].
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend failed (for example `"postgres"`), for logs.
        backend: String,
        /// The backend's own error. It must not carry message payloads or secrets.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether retrying the same call later may succeed.
        retryable: bool,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Throttled { .. }
            | Error::QueueFull { .. }
            | Error::DeviceOffline { .. }
            | Error::TimedOut { .. }
            | Error::Io { .. }
            | Error::Locked { .. } => true,
            Error::Log(e) => e.is_retryable(),
            Error::Identity(e) => e.is_retryable(),
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

    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// Maps an identity-store error met while authenticating `device`.
    pub(crate) fn from_auth(device: &DeviceId, e: iot_identity::Error) -> Self {
        if e.is_auth_failure() {
            Error::Unauthorized {
                device: device.clone(),
                kind: e.kind(),
            }
        } else {
            Error::Identity(e)
        }
    }
}

impl From<StorageError> for Error {
    /// Keeps the kind: a caller matches `Corrupt`, `Locked`, `Io`, ... on the gateway's error.
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
            StorageError::TooLarge { what, size, limit } => Error::TooLarge { what, size, limit },
            StorageError::Failed { path } => Error::StoreFailed { path },
            StorageError::Config { reason } => Error::Config { reason },
            // A kind the kit gains later: keep its message.
            other => Error::Io {
                operation: "store",
                path: PathBuf::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_their_kind_and_context() {
        let e: Error = StorageError::corrupt("/s/wal", 42, "frame checksum mismatch").into();
        assert!(matches!(
            &e,
            Error::Corrupt { path, position: 42, .. } if path == std::path::Path::new("/s/wal")
        ));
        assert!(!e.is_retryable());
        let e: Error = StorageError::Locked {
            path: "/s/LOCK".into(),
        }
        .into();
        assert!(matches!(e, Error::Locked { .. }) && e.is_retryable());
        let e: Error = StorageError::Failed {
            path: "/s/wal".into(),
        }
        .into();
        assert!(matches!(e, Error::StoreFailed { .. }));
        let e: Error = StorageError::Config {
            reason: "no Interval".into(),
        }
        .into();
        assert!(matches!(e, Error::Config { .. }));
        let e: Error = StorageError::TooLarge {
            what: "journal operation",
            size: 2,
            limit: 1,
        }
        .into();
        assert!(matches!(e, Error::TooLarge { size: 2, .. }));
    }
}
