//! The device client's errors.

use super::connection_string::ConnectionStringError;

/// What a [`DeviceClient`](super::DeviceClient) call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection string did not parse.
    #[error(transparent)]
    ConnectionString(#[from] ConnectionStringError),
    /// The options cannot work (unreadable PEM, a certificate without key, ...).
    #[error("client configuration: {0}")]
    Config(String),
    /// The outbox holds `capacity` unacknowledged messages and its policy is to refuse more.
    #[error("the outbox is full ({capacity} messages wait for the hub)")]
    OutboxFull {
        /// The outbox's bound.
        capacity: usize,
    },
    /// The message would be refused by the hub (a property name or value, their number, the
    /// size); it was not queued. (Queued, it would close the connection at every attempt.)
    #[error("the hub would refuse this message: {0}")]
    InvalidMessage(String),
    /// The file-backed outbox could not be read or written.
    #[error("outbox storage: {0}")]
    Outbox(#[source] iot_core::Error),
    /// The client was closed (or its connection task ended) before the operation finished.
    #[error("the client is closed")]
    Closed,
    /// The hub did not answer in time (the operation's own time-out, not the connection's).
    #[error("no answer from the hub within {0:?}")]
    Timeout(std::time::Duration),
    /// The hub answered a twin request with an error status.
    #[error("the hub answered the twin request with status {status}")]
    TwinStatus {
        /// The HTTP-like status of `$iothub/twin/res/{status}`.
        status: u16,
    },
    /// The hub's answer could not be understood.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
}
