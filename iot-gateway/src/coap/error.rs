//! The CoAP adapter's errors: only starting it can fail; what devices send is answered with
//! CoAP response codes, never an error here.

use std::net::SocketAddr;

/// Why the CoAP adapter could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The UDP socket could not be bound.
    #[error("binding the CoAP socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid CoAP configuration: {0}")]
    Config(String),
}
