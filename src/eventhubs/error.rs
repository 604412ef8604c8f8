//! Why the Event Hubs endpoint refused or failed.

use std::io;

/// An error of the Event Hubs endpoint. Tokens and keys never appear in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventHubsError {
    /// Binding or accepting on the listening socket failed.
    #[error("event hubs endpoint: {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The configuration cannot be used (an entity name, a certificate).
    #[error("event hubs endpoint configuration: {0}")]
    Config(String),
    /// A SAS token was refused (malformed, expired, wrong signature, wrong scope or rights).
    #[error("token refused: {0}")]
    Unauthorized(&'static str),
    /// The hub's log failed.
    #[error("reading the telemetry log: {0}")]
    Log(#[from] iot_core::Error),
}

/// Results of this module.
pub type Result<T, E = EventHubsError> = std::result::Result<T, E>;
