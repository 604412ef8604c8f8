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
    /// An HTTPS request to the hub's device API failed before an answer (connection, TLS).
    #[error("HTTPS device API: {0}")]
    Https(String),
    /// The hub's HTTPS device API refused a settlement: 412 means the lock token is not the
    /// message's current lock (settled already, its lock expired, or redelivered since).
    #[error("the hub answered the HTTPS settlement with status {status}")]
    HttpsStatus {
        /// The HTTP status.
        status: u16,
    },
    /// The operation needs something the options do not give (reject and abandon need
    /// [`https_port`](super::ClientOptions::https_port)), or the hub did not send what it
    /// needs (a C2D message without `iothub-locktoken`).
    #[error("not possible here: {0}")]
    Unsupported(&'static str),
    /// A connection failed before the protocol's answer (DPS registration: TCP, TLS, CONNACK).
    #[error("connection: {0}")]
    Connect(String),
    /// DPS refused the registration (`401` bad key or disabled enrollment, `403`, `404`, ...).
    #[error("DPS refused the registration with status {status}: {message}")]
    Dps {
        /// DPS's status.
        status: u16,
        /// DPS's message.
        message: String,
    },
    /// The hub's answer could not be understood.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
}
