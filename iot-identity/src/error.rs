//! The error type of `iot-identity`.

use std::io;
use std::path::PathBuf;

use iot_core::storage::StorageError;
use iot_core::{DeviceId, EndpointId};

use crate::identity::ETag;

/// What went wrong in `iot-identity`: a kind a caller can act on, with the context that makes the
/// message useful (which device, which file).
///
/// The enum is `#[non_exhaustive]`. No variant ever carries a secret: keys, passphrases, SAS tokens
/// and signatures are never part of an error or its message. A gateway should answer every
/// authentication failure with the same protocol-level refusal and keep the kind for its logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No identity with this id exists (store operations).
    #[error("device {id} does not exist")]
    NotFound {
        /// The device asked for.
        id: DeviceId,
    },

    /// `create` was called for an id that already exists.
    #[error("device {id} already exists")]
    AlreadyExists {
        /// The device that exists.
        id: DeviceId,
    },

    /// An `if_match` etag did not match the stored one (someone else changed the record first).
    #[error("device {id} has etag {actual}, not the expected {expected}")]
    PreconditionFailed {
        /// The device written.
        id: DeviceId,
        /// The etag the caller expected.
        expected: ETag,
        /// The etag the record has.
        actual: ETag,
    },

    /// No module with this id exists (module store operations).
    #[error("module {id} does not exist")]
    ModuleNotFound {
        /// The module asked for (`device/module`).
        id: EndpointId,
    },

    /// A module `create` named a module that already exists.
    #[error("module {id} already exists")]
    ModuleAlreadyExists {
        /// The module that exists.
        id: EndpointId,
    },

    /// An `if_match` etag did not match a module's stored one.
    #[error("module {id} has etag {actual}, not the expected {expected}")]
    ModulePreconditionFailed {
        /// The module written.
        id: EndpointId,
        /// The etag the caller expected.
        expected: ETag,
        /// The etag the record has.
        actual: ETag,
    },

    /// A module did not prove its identity: unknown module, a credential that does not match,
    /// or a kind of credential it is not set up for (`what` says which, for logs).
    #[error("module {id} was refused: {what}")]
    ModuleRefused {
        /// The module that tried to authenticate.
        id: EndpointId,
        /// Why: `"unknown module"`, `"bad symmetric key"`, `"bad thumbprint"`,
        /// `"wrong credential kind"`.
        what: &'static str,
    },

    /// No user with this name exists (access store operations).
    #[error("user {user} does not exist")]
    UserNotFound {
        /// The user asked for.
        user: crate::access::UserName,
    },

    /// `create_user` named a user that already exists.
    #[error("user {user} already exists")]
    UserAlreadyExists {
        /// The user that exists.
        user: crate::access::UserName,
    },

    /// A grant or a delete named a role that does not exist.
    #[error("role {role} does not exist")]
    RoleNotFound {
        /// The role asked for.
        role: crate::access::RoleName,
    },

    /// A login was refused: unknown user, wrong password or disabled user, on purpose not told
    /// apart (the audit record and the logs do not tell them apart either).
    #[error("login of {user:?} refused: wrong user name or password, or the user is disabled")]
    LoginRefused {
        /// The user name as presented (shortened).
        user: String,
    },

    /// A session token was not accepted. Never contains the token.
    #[error("session refused: {what}")]
    SessionRefused {
        /// Why: `"malformed token"`, `"unknown or ended session"`, `"expired session"`.
        what: &'static str,
    },

    /// An argument was refused (for example a zero page size, an over-long disable reason or a key
    /// shorter than 32 bytes).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What was wrong (never contains secret material).
        reason: String,
    },

    /// A SAS token could not be parsed.
    #[error("malformed SAS token: {reason}")]
    MalformedToken {
        /// Which rule the token broke.
        reason: MalformedToken,
    },

    /// A SAS token's expiry (plus the allowed clock skew) lies in the past.
    #[error(
        "SAS token expired at {expiry} (unix seconds); now is {now}, allowed clock skew {skew_secs} s"
    )]
    TokenExpired {
        /// The token's `se` field.
        expiry: u64,
        /// The verifier's clock, unix seconds.
        now: u64,
        /// The clock skew tolerated.
        skew_secs: u64,
    },

    /// A SAS token is valid for another resource (another device, module or host).
    #[error("SAS token is scoped to {actual:?}, not {expected:?}")]
    WrongScope {
        /// The resource the verifier required.
        expected: String,
        /// The resource named by the token (shortened if huge).
        actual: String,
    },

    /// A SAS token names a shared access policy (`skn`) the verifier does not accept, or lacks the one
    /// it requires.
    #[error("SAS token policy {presented:?} is not accepted (expected {expected:?})")]
    UnknownPolicy {
        /// The policy named by the token, if any (shortened if huge).
        presented: Option<String>,
        /// The policy the verifier accepts, if any.
        expected: Option<String>,
    },

    /// A SAS token's signature matches none of the keys.
    #[error("SAS token signature does not match")]
    BadSignature,

    /// Authentication named a device the store does not know.
    #[error("unknown device {id}")]
    UnknownDevice {
        /// The device that tried to authenticate.
        id: DeviceId,
    },

    /// Authentication named a device that is disabled.
    #[error("device {id} is disabled: {reason}")]
    DeviceDisabled {
        /// The disabled device.
        id: DeviceId,
        /// The reason given when it was disabled.
        reason: String,
    },

    /// The presented credential (key, thumbprint, passphrase) does not match the stored one.
    #[error("the {kind} presented for device {id} does not match")]
    BadCredential {
        /// The device that tried to authenticate.
        id: DeviceId,
        /// What was presented: `"symmetric key"`, `"thumbprint"`, `"passphrase"`.
        kind: &'static str,
    },

    /// The device authenticates with another kind of credential than the one presented.
    #[error("device {id} does not accept a {presented}; it is set up for {stored}")]
    WrongCredentialKind {
        /// The device that tried to authenticate.
        id: DeviceId,
        /// What was presented.
        presented: &'static str,
        /// What the device is set up for.
        stored: &'static str,
    },

    /// Another process (or another store in this one) holds the store's directory.
    #[error("the identity store at {path} is locked by another writer")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// Stored data failed its checksum or framing somewhere recovery may not silently drop it.
    #[error("corrupt identity store data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damaged frame.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// The store refuses writes after a write failed and could not be undone (a failed fsync
    /// leaves the log's state unknown). Reopening the store runs recovery.
    #[error(
        "the identity store's {path} refuses writes after an earlier failure; reopen the store"
    )]
    Failed {
        /// The file that failed.
        path: PathBuf,
    },

    /// The store's configuration cannot work; the message says which value to change.
    #[error("misconfigured identity store: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// An I/O operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fsync"`, ...).
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An error from `iot-core` (for example an invalid device id).
    #[error(transparent)]
    Core(#[from] iot_core::Error),

    /// A store implemented outside this crate failed in its own terms (a database driver's
    /// error, a lost connection). The backend's error stays the `source`, so callers can walk the
    /// chain and the backend keeps its own types; `retryable` is the backend's judgement of
    /// whether the same call may succeed later. Build it with [`Error::backend`].
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend failed (for example `"postgres"`), for logs.
        backend: String,
        /// The backend's own error. It must not carry secrets (credentials are never part of a
        /// key or a query an implementation should echo).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether retrying the same call later may succeed.
        retryable: bool,
    },
}

/// Why a SAS token could not be parsed. Never contains the token or its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedToken {
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// The token is longer than the verifier accepts.
    #[error("the token is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// The token's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token does not start with `SharedAccessSignature `.
    #[error("the token does not start with \"SharedAccessSignature \"")]
    MissingPrefix,
    /// A required field (`sr`, `sig`, `se`) is missing.
    #[error("the field {0} is missing")]
    MissingField(&'static str),
    /// A field appears twice.
    #[error("the field {0} appears more than once")]
    DuplicateField(&'static str),
    /// A field other than `sr`, `sig`, `se`, `skn`.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// A `name=value` pair without `=`, or with an empty value.
    #[error("a field is not of the form name=value")]
    BadField,
    /// Invalid percent-encoding or UTF-8 in a field.
    #[error("the field {0} is not validly percent-encoded UTF-8")]
    BadEncoding(&'static str),
    /// The signature is not base64 of a 32-byte HMAC-SHA256.
    #[error("the signature is not base64 of a 32-byte HMAC-SHA256")]
    BadSignatureEncoding,
    /// The expiry is not a decimal number of seconds.
    #[error("the expiry is not a decimal number")]
    BadExpiry,
    /// The expiry does not fit in 64 bits.
    #[error("the expiry overflows 64 bits")]
    ExpiryOverflow,
    /// The policy name has characters outside `A-Z a-z 0-9 . _ -` or is too long.
    #[error("the policy name is invalid")]
    BadPolicyName,
}

impl From<MalformedToken> for Error {
    fn from(reason: MalformedToken) -> Self {
        Error::MalformedToken { reason }
    }
}

/// The storage kit's errors keep their kind: `Corrupt` stays `Corrupt` with its file and position,
/// `Locked` stays `Locked`, and so on.
impl From<StorageError> for Error {
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
            StorageError::Failed { path } => Error::Failed { path },
            StorageError::Config { reason } => Error::Config { reason },
            too_large @ StorageError::TooLarge { .. } => Error::invalid(too_large.to_string()),
            // `StorageError` is non-exhaustive: a kind added later is at least reported as I/O.
            other => Error::Io {
                operation: "store",
                path: PathBuf::new(),
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

impl Error {
    /// A short, stable name for the kind, for logs and the `sas` example (`"malformed"`,
    /// `"expired"`, `"wrong_scope"`, `"bad_signature"`, `"unknown_policy"`, `"unknown_device"`,
    /// `"disabled_device"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::ModuleNotFound { .. } => "module_not_found",
            Error::ModuleAlreadyExists { .. } => "module_already_exists",
            Error::ModulePreconditionFailed { .. } => "module_precondition_failed",
            Error::ModuleRefused { .. } => "module_refused",
            Error::AlreadyExists { .. } => "already_exists",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::InvalidInput { .. } => "invalid_input",
            Error::UserNotFound { .. } => "user_not_found",
            Error::UserAlreadyExists { .. } => "user_already_exists",
            Error::RoleNotFound { .. } => "role_not_found",
            Error::LoginRefused { .. } => "login_refused",
            Error::SessionRefused { .. } => "session_refused",
            Error::MalformedToken { .. } => "malformed",
            Error::TokenExpired { .. } => "expired",
            Error::WrongScope { .. } => "wrong_scope",
            Error::UnknownPolicy { .. } => "unknown_policy",
            Error::BadSignature => "bad_signature",
            Error::UnknownDevice { .. } => "unknown_device",
            Error::DeviceDisabled { .. } => "disabled_device",
            Error::BadCredential { .. } => "bad_credential",
            Error::WrongCredentialKind { .. } => "wrong_credential_kind",
            Error::Locked { .. } => "locked",
            Error::Corrupt { .. } => "corrupt",
            Error::Failed { .. } => "failed",
            Error::Config { .. } => "config",
            Error::Io { .. } => "io",
            Error::Core(_) => "core",
            Error::Backend { .. } => "backend",
        }
    }

    /// Whether this is an authentication refusal (the device did not prove its identity), as
    /// opposed to a store failure.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Error::MalformedToken { .. }
                | Error::TokenExpired { .. }
                | Error::WrongScope { .. }
                | Error::UnknownPolicy { .. }
                | Error::BadSignature
                | Error::UnknownDevice { .. }
                | Error::DeviceDisabled { .. }
                | Error::BadCredential { .. }
                | Error::WrongCredentialKind { .. }
                | Error::ModuleRefused { .. }
                | Error::LoginRefused { .. }
                | Error::SessionRefused { .. }
        )
    }

    /// Whether retrying the same call later may succeed (I/O trouble, a lock held elsewhere, or a
    /// backend that said so).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Locked { .. } => true,
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
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At most `max` characters of `s`, for echoing untrusted input in errors.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_backend_error_keeps_its_source_and_says_whether_to_retry() {
        let lost = Error::backend(
            "postgres",
            io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"),
            true,
        );
        assert!(lost.is_retryable());
        assert_eq!(lost.kind(), "backend");
        assert_eq!(lost.to_string(), "postgres backend: connection reset");
        let source = lost.source().expect("the backend's error is the source");
        assert_eq!(
            source.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset),
            "the backend's own type survives"
        );
        let schema = Error::backend("postgres", "column \"etag\" does not exist", false);
        assert!(!schema.is_retryable());
        assert!(!schema.is_auth_failure());
    }
}
