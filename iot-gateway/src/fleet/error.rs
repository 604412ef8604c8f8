//! What fleet operations fail with.

use iot_core::storage::StorageError;

/// A failed fleet operation.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No job or configuration with this id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `job` or `configuration`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A job or configuration with this id exists already.
    #[error("{kind} {id} exists already")]
    Exists {
        /// `job` or `configuration`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// `If-Match` named another etag.
    #[error("configuration {id} changed since etag {etag} was read")]
    PreconditionFailed {
        /// The configuration.
        id: String,
        /// The etag the caller named.
        etag: String,
    },
    /// A request the engine does not accept (missing field, bad id, bad time).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A query or condition the query language does not accept.
    #[error("invalid query: {0}")]
    Query(String),
    /// The gateway refused or failed.
    #[error("gateway: {0}")]
    Gateway(#[from] crate::Error),
    /// Reaching devices failed (a registry or provisioning store).
    #[error("devices: {0}")]
    Devices(String),
    /// The job or configuration store failed.
    #[error("fleet store: {0}")]
    Store(#[from] StorageError),
    /// A stored document could not be read back.
    #[error("fleet store: {what} is not a valid document: {reason}")]
    Corrupt {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
}

impl FleetError {
    /// Whether a retry may succeed (a store or a device backend that failed transiently).
    pub fn is_retryable(&self) -> bool {
        match self {
            FleetError::Store(e) => e.is_retryable(),
            FleetError::Gateway(e) => e.is_retryable(),
            FleetError::Devices(_) => true,
            _ => false,
        }
    }
}

/// Fleet results.
pub type FleetResult<T> = std::result::Result<T, FleetError>;
