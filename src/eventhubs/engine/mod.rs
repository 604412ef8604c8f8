//! The endpoint's own AMQP 1.0 connection engine: one task per connection that reads frames,
//! keeps the sessions' and links' state, and writes events straight from the log's records
//! into `transfer` frames.
//!
//! Why not fe2o3-amqp's engine (which served this endpoint until 2026-12-07): there, each
//! event went from the link's task to the session's to the connection's, and was built as a
//! `Message`, serialized, wrapped in a `Transfer` and serialized again, each into a new buffer
//! (docs/performance.md, issue 21). Here an event is encoded once
//! ([`encode_event`](super::encode_event)), into the connection's output buffer, and many go
//! out in one write. fe2o3-amqp's *types* are still used for the performatives (decoded and
//! encoded with serde_amqp), and its requests' messages ($cbs, $management) are still its
//! `Message`s: they are few.
//!
//! * [`handshake`] — SASL (ANONYMOUS, PLAIN) and the protocol headers.
//! * [`reader`] — frames read and checked (the adapter kit's `AmqpFrameChecker`).
//! * [`connection`] — `open`/`close`, sessions (`begin`/`end`, windows), links (`attach`,
//!   `flow`, `transfer`, `disposition`, `detach`) and heartbeats.
//! * [`feed`] — one task per receive link reading the log ahead of the link's credit.

mod connection;
mod feed;
mod handshake;
mod reader;

use std::sync::Arc;

use fe2o3_amqp::types::definitions::AmqpError;
use iot_gateway::adapter::{AmqpFrameLimits, FrameWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::Shared;
use super::claims::Claims;
use super::sasl::Sasl;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    /// Bytes that are not the frame expected: the connection is closed.
    #[error("bad frame: {0}")]
    Frame(String),
    /// A frame against the protocol's rules (an unknown channel, a handle in use …).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("encoding a frame: {0}")]
    Encode(String),
    #[error("timed out: {0}")]
    TimedOut(&'static str),
}

impl From<iot_gateway::adapter::AmqpWireError> for EngineError {
    fn from(e: iot_gateway::adapter::AmqpWireError) -> Self {
        EngineError::Encode(e.to_string())
    }
}

impl EngineError {
    /// The AMQP error condition a `close` reports for it.
    fn condition(&self) -> AmqpError {
        match self {
            EngineError::Frame(_) => AmqpError::DecodeError,
            EngineError::Protocol(_) => AmqpError::NotAllowed,
            EngineError::TimedOut(_) => AmqpError::ResourceLimitExceeded,
            _ => AmqpError::InternalError,
        }
    }
}

/// Appends a frame of `frame_type` on `channel` whose body is `value` (a performative or a
/// SASL frame) encoded by serde_amqp.
pub(crate) fn write_body<T: serde_amqp::serde::Serialize>(
    out: &mut Vec<u8>,
    frame_type: u8,
    channel: u16,
    value: &T,
) -> Result<(), EngineError> {
    let frame = FrameWriter::begin(out, frame_type, channel);
    value
        .serialize(&mut serde_amqp::ser::Serializer::new(&mut *out))
        .map_err(|e| EngineError::Encode(e.to_string()))?;
    frame
        .end(out)
        .map_err(|e| EngineError::Encode(e.to_string()))
}

/// Serves one connection (after TLS, when there is TLS) until it ends or the endpoint stops.
///
/// The handshake (SASL, the protocol headers, `open`) must be done by `deadline`.
pub(crate) async fn serve<Io>(
    shared: Arc<Shared>,
    io: Io,
    deadline: tokio::time::Instant,
    stop: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    // Requests ($cbs, $management) are small: 1 MiB messages, Event Hubs' own limit.
    let limits = AmqpFrameLimits::new(shared.config.max_frame_size, 1024 * 1024);
    let mut reader = reader::FrameReader::new(read, limits);
    let mut sasl = Sasl::new(
        shared.policies.clone(),
        shared.config.host.as_str().into(),
        shared.config.entity.as_str().into(),
    );
    let claims = Arc::new(Claims::default());
    let opened = tokio::time::timeout_at(deadline, async {
        handshake::negotiate(&mut reader, &mut write, &mut sasl).await?;
        connection::open(&shared, &mut reader, &mut write).await
    })
    .await;
    let open = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "event hubs handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("event hubs handshake timed out");
            return;
        }
    };
    if let Some(until) = *sasl.granted.lock().unwrap_or_else(|e| e.into_inner()) {
        claims.grant(until);
    }
    let mut connection = connection::Connection::new(shared, claims, open, write);
    if let Err(e) = connection.run(&mut reader, stop).await {
        tracing::debug!(error = %e, "event hubs connection ended");
    }
}
