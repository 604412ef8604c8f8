//! What can stop a forwarder.

use crate::client::ClientError;

/// Why a [`Forwarder`](super::Forwarder) could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// The local telemetry log could not be read or its position committed.
    #[error("edge log: {0}")]
    Log(#[from] iot_core::Error),
    /// An upstream device client could not be created (its options cannot work).
    #[error("upstream client: {0}")]
    Client(#[from] ClientError),
    /// The forwarder's options cannot work.
    #[error("forwarder configuration: {0}")]
    Config(String),
}
