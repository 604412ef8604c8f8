//! The listener: accepts TCP connections (TLS and/or the WebSocket upgrade first, by the
//! listener's transport), at most `max_connections` at once, each served by a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use fe2o3_amqp::acceptor::LinkAcceptor;
use fe2o3_amqp::acceptor::SupportedReceiverSettleModes;
use fe2o3_amqp::types::definitions::ReceiverSettleMode;
use fe2o3_amqp::types::performatives::Open;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::AmqpConfig;
use super::error::Error;
use super::links::Links;
use super::transport::Transport;
use crate::gateway::Gateway;
use crate::http::HttpState;
use crate::mqtt::TlsConfig;

/// What every connection of the endpoint shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) gateway: Arc<dyn Gateway>,
    pub(super) service_auth: Option<HttpState>,
    pub(super) config: AmqpConfig,
    pub(super) open: Open,
    pub(super) links: Links,
    pub(super) buffer_size: usize,
}

/// IoT Hub's AMQP 1.0 endpoint over a [`Gateway`]; see the [module docs](super).
///
/// Cloning is cheap; clones share the connections, the limits and the shutdown.
#[derive(Clone, Debug)]
pub struct AmqpServer {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

impl AmqpServer {
    /// An endpoint for `gateway`. Without [`with_service_auth`](Self::with_service_auth) it
    /// takes device tokens only (the service links are refused).
    pub fn new(gateway: Arc<dyn Gateway>, config: AmqpConfig) -> Result<Self, Error> {
        if config.max_frame_size < 512 || config.max_connections == 0 || config.feedback_batch == 0
        {
            return Err(Error::Config(
                "max_frame_size must be at least 512 (AMQP's minimum), max_connections and feedback_batch at least 1".into(),
            ));
        }
        let acceptor = fe2o3_amqp::acceptor::ConnectionAcceptor::builder()
            .container_id(config.container_id.clone())
            .max_frame_size(config.max_frame_size)
            .idle_time_out(u32::try_from(config.idle_timeout.as_millis()).unwrap_or(u32::MAX))
            .build();
        // Deliveries are settled at once when accepted (receiver settle mode `first`), as IoT
        // Hub does: uamqp asks for `second` but waits for a settled disposition.
        let links = LinkAcceptor::builder()
            .max_message_size(config.max_message_size)
            .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
            .fallback_receiver_settle_mode(ReceiverSettleMode::First)
            .build();
        let slots = Arc::new(Semaphore::new(config.max_connections));
        Ok(AmqpServer {
            shared: Arc::new(Shared {
                gateway,
                service_auth: None,
                open: acceptor.local_open,
                links,
                buffer_size: acceptor.buffer_size,
                config,
            }),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            slots,
        })
    }

    /// Takes service SAS tokens (shared access policies) the way the HTTP service API does,
    /// which opens `/messages/devicebound` and `/messages/serviceBound/feedback` to back ends
    /// whose policy has `ServiceConnect`. Call before listening.
    pub fn with_service_auth(mut self, state: HttpState) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.service_auth = Some(state);
        }
        self
    }

    /// Serves AMQP over TLS (IoT Hub's `amqps`, port 5671) on `addr`; returns the bound address.
    pub async fn listen_tls(&self, addr: SocketAddr, tls: TlsConfig) -> Result<SocketAddr, Error> {
        self.listen(addr, Transport::Tls(tls)).await
    }

    /// Serves AMQP over plain TCP on `addr` (no TLS: tokens travel in the clear; for tests and
    /// trusted networks). Returns the bound address.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        self.listen(addr, Transport::Tcp).await
    }

    /// Serves AMQP over WebSocket inside TLS on `addr`, as IoT Hub does on
    /// `wss://{host}:443/$iothub/websocket`: the HTTP upgrade on the path `/$iothub/websocket`
    /// with the subprotocol `AMQPWSB10` (or the OASIS binding's `amqp`; the answer names the
    /// one asked for), then the AMQP byte stream in binary messages (a frame may span messages
    /// and a message may hold several). The TLS handshake and the upgrade must finish within
    /// the handshake timeout. Returns the bound address.
    ///
    /// To serve it beside the HTTPS API on one port, as IoT Hub's port 443 does, hand the
    /// upgraded connections of an HTTP server to [`serve_upgraded`](Self::serve_upgraded)
    /// instead ([`http::WebSocketUpgrades`](crate::http::WebSocketUpgrades) does it).
    pub async fn listen_wss(&self, addr: SocketAddr, tls: TlsConfig) -> Result<SocketAddr, Error> {
        self.listen(addr, Transport::WebSocket(Some(tls))).await
    }

    /// [`listen_wss`](Self::listen_wss) without TLS (`ws://`; tokens travel in the clear; for
    /// tests and trusted networks). Returns the bound address.
    pub async fn listen_ws(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        self.listen(addr, Transport::WebSocket(None)).await
    }

    /// Serves AMQP over WebSocket on `io`, a connection from `peer` on which an HTTP server has
    /// answered the upgrade already (`101 Switching Protocols` with the subprotocol
    /// `AMQPWSB10` or `amqp`; its next bytes are WebSocket frames). Returns when the connection
    /// ends; it counts against `max_connections` (refused at once past it) and is closed by
    /// [`shutdown`](Self::shutdown).
    ///
    /// ```no_run
    /// # async fn run(server: iot_gateway::amqp::AmqpServer, upgraded: tokio::io::DuplexStream, peer: std::net::SocketAddr) {
    /// // `upgraded`: e.g. hyper's `Upgraded` in `hyper_util::rt::TokioIo`, after the 101.
    /// tokio::spawn(async move { server.serve_upgraded(upgraded, peer).await });
    /// # }
    /// ```
    pub async fn serve_upgraded<Io>(&self, io: Io, peer: SocketAddr)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "AMQP connection refused: too many connections");
            return;
        };
        if self.stop.is_cancelled() {
            return;
        }
        let _token = self.tasks.token();
        super::transport::serve_upgraded(self.shared.clone(), io, peer, self.stop.clone()).await;
    }

    async fn listen(&self, addr: SocketAddr, transport: Transport) -> Result<SocketAddr, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        let tasks = self.tasks.clone();
        let slots = self.slots.clone();
        tracing::info!(%bound, transport = transport.name(), "AMQP endpoint listening");
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "AMQP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "AMQP connection refused: too many connections");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let stop = stop.clone();
                let transport = transport.clone();
                tasks.spawn(async move {
                    let _slot = slot;
                    super::transport::serve(transport, shared, stream, peer, stop).await;
                });
            }
        });
        Ok(bound)
    }

    /// Stops listening, closes every connection and ends their device sessions.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
