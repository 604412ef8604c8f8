//! The endpoint's own errors (binding, configuration). What goes wrong on a connection is
//! answered on that connection (an AMQP error condition) and logged, never returned here.

use std::net::SocketAddr;

/// An error starting the AMQP endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("binding the AMQP listener to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("AMQP endpoint configuration: {0}")]
    Config(String),
}
