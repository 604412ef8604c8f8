//! What carries an accepted connection's AMQP bytes: TCP, TLS, or WebSocket (over TCP or TLS,
//! IoT Hub's `wss://{host}:443/$iothub/websocket` with the subprotocol `AMQPWSB10`). Whichever
//! it is, the connection is then served on a byte stream by [`connection::serve`], which puts
//! the frame guard in front of the decoder: a WebSocket's messages are joined into one stream
//! first, so the guard follows frames across message boundaries as it does across reads.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::connection;
use super::server::Shared;
use crate::mqtt::TlsConfig;
use crate::websocket;

/// What a listener speaks.
#[derive(Clone, Debug)]
pub(super) enum Transport {
    Tcp,
    Tls(TlsConfig),
    WebSocket(Option<TlsConfig>),
}

impl Transport {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls(_) => "tls",
            Transport::WebSocket(None) => "ws",
            Transport::WebSocket(Some(_)) => "wss",
        }
    }
}

/// The largest WebSocket message taken. A client may put several frames (up to the frame size
/// each) into one message, and tungstenite holds a whole message in memory before handing it
/// over: four of the largest messages a link takes is room for any batching seen from the SDKs
/// and still a bound.
fn max_ws_message(shared: &Shared) -> usize {
    usize::try_from(shared.config.max_message_size.saturating_mul(4))
        .unwrap_or(usize::MAX)
        .max(shared.config.max_frame_size as usize)
}

/// Serves one accepted TCP connection over `transport`: the TLS handshake and the WebSocket
/// upgrade (together within the handshake timeout) first, where the transport has them.
pub(super) async fn serve(
    transport: Transport,
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    match transport {
        Transport::Tcp => connection::serve(shared, stream, peer, stop).await,
        Transport::Tls(tls) => {
            let handshake = tls.acceptor().accept(stream);
            if let Some(stream) = within_handshake(&shared, peer, "TLS handshake", handshake).await
            {
                connection::serve(shared, stream, peer, stop).await;
            }
        }
        Transport::WebSocket(None) => {
            let upgrade = websocket::accept(stream, websocket::AMQP, max_ws_message(&shared));
            if let Some(ws) = within_handshake(&shared, peer, "WebSocket upgrade", upgrade).await {
                serve_bridged(shared, ws, peer, stop).await;
            }
        }
        Transport::WebSocket(Some(tls)) => {
            let max_message = max_ws_message(&shared);
            let setup = async {
                let stream = tls.acceptor().accept(stream).await?;
                websocket::accept(stream, websocket::AMQP, max_message)
                    .await
                    .map_err(std::io::Error::other)
            };
            if let Some(ws) =
                within_handshake(&shared, peer, "TLS WebSocket upgrade", Box::pin(setup)).await
            {
                serve_bridged(shared, ws, peer, stop).await;
            }
        }
    }
}

/// Serves a connection whose upgrade to WebSocket an HTTP server has answered (its next bytes
/// are WebSocket frames).
pub(super) async fn serve_upgraded<Io>(
    shared: Arc<Shared>,
    io: Io,
    peer: SocketAddr,
    stop: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = websocket::upgraded(io, max_ws_message(&shared)).await;
    serve_bridged(shared, ws, peer, stop).await;
}

/// Serves AMQP on the byte stream of `ws`'s binary messages.
async fn serve_bridged<S>(
    shared: Arc<Shared>,
    ws: tokio_tungstenite::WebSocketStream<S>,
    peer: SocketAddr,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stream, pump) = websocket::bridge(ws);
    // The pump ends when the connection drops its end of the pipe, and the other way round.
    tokio::join!(pump, connection::serve(shared, stream, peer, stop));
}

/// `step` within the handshake timeout; `None` (logged) if it fails or takes longer.
async fn within_handshake<T, E: std::fmt::Display>(
    shared: &Shared,
    peer: SocketAddr,
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(shared.config.handshake_timeout, step).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "{what} failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "{what} timed out");
            None
        }
    }
}
