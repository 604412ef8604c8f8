//! The listener side: accepting connections, bounding how many are served, shutting down.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::FutureExt;
use iot_provisioning::onboarding::Onboarding;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client_chain::ClientChain;
use super::config::MqttConfig;
use super::error::Error;
use super::pending::{PendingGuard, PendingPeers};
use super::persistent::PersistentSessions;
use super::session;
use super::shared::Shared;
use super::tls::TlsConfig;
use crate::gateway::Gateway;
use crate::websocket;

/// An MQTT 3.1.1 server speaking IoT Hub's device protocol over any [`Gateway`].
///
/// Cloning is cheap; clones share the connections, the limits and the shutdown.
#[derive(Debug, Clone)]
pub struct MqttServer {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
}

impl MqttServer {
    /// A server over `gateway` with `config`'s limits.
    pub fn new(gateway: Arc<dyn Gateway>, config: MqttConfig) -> Result<Self, Error> {
        MqttServer::build(gateway, config, None)
    }

    /// A server over `gateway` that also serves DPS's device protocol: devices whose CONNECT
    /// username is `{idScope}/registrations/{registrationId}/…` register through `onboarding`
    /// on the same listeners (see `docs/mqtt.md`, "Device provisioning (DPS)"). A server made
    /// with [`new`](Self::new) refuses such connections.
    pub fn with_onboarding(
        gateway: Arc<dyn Gateway>,
        config: MqttConfig,
        onboarding: Arc<Onboarding>,
    ) -> Result<Self, Error> {
        MqttServer::build(gateway, config, Some(onboarding))
    }

    fn build(
        gateway: Arc<dyn Gateway>,
        config: MqttConfig,
        onboarding: Option<Arc<Onboarding>>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let config_unauthenticated = config.max_unauthenticated_per_peer;
        let persistent =
            PersistentSessions::open(config.state_dir.as_deref(), config.state_recovery)?;
        Ok(MqttServer {
            shared: Arc::new(Shared {
                gateway,
                config,
                shutdown: CancellationToken::new(),
                persistent,
                unauthenticated: PendingPeers::new(config_unauthenticated),
                onboarding,
                dps_refusal_logged: Default::default(),
            }),
            tasks: TaskTracker::new(),
            permits,
        })
    }

    /// The limits in force.
    pub fn config(&self) -> &MqttConfig {
        &self.shared.config
    }

    /// Binds `addr` and serves MQTT over plain TCP on it until [`shutdown`](Self::shutdown).
    /// Returns the bound address (useful with port 0).
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        self.listen(addr, None).await
    }

    /// Binds `addr` and serves MQTT over TLS on it until [`shutdown`](Self::shutdown). The TLS
    /// handshake must finish within the connect timeout.
    pub async fn listen_tls(&self, addr: SocketAddr, tls: TlsConfig) -> Result<SocketAddr, Error> {
        self.listen(addr, Some(tls)).await
    }

    /// Binds `addr` and serves MQTT over WebSocket (path `/$iothub/websocket`, subprotocol
    /// `mqtt`) on it, inside TLS when `tls` is given. The upgrade (and TLS handshake) must finish
    /// within the connect timeout.
    pub async fn listen_websocket(
        &self,
        addr: SocketAddr,
        tls: Option<TlsConfig>,
    ) -> Result<SocketAddr, Error> {
        self.bind(addr, Listener::WebSocket(tls)).await
    }

    async fn listen(&self, addr: SocketAddr, tls: Option<TlsConfig>) -> Result<SocketAddr, Error> {
        let kind = match tls {
            None => Listener::Tcp,
            Some(tls) => Listener::Tls(tls),
        };
        self.bind(addr, kind).await
    }

    async fn bind(&self, addr: SocketAddr, kind: Listener) -> Result<SocketAddr, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local = listener.local_addr()?;
        tracing::info!(%local, transport = kind.name(), "MQTT listening");
        let server = self.clone();
        self.tasks
            .spawn(async move { server.accept_loop(listener, kind).await });
        Ok(local)
    }

    async fn accept_loop(self, listener: TcpListener, kind: Listener) {
        loop {
            // Waiting for a permit before accepting leaves extra connections in the backlog.
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit,
                () = self.shared.shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.shared.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Checked before any TLS or WebSocket work is spent on the connection.
                    let Some(unauthenticated) = self.shared.unauthenticated.enter(peer.ip()) else {
                        tracing::debug!(%peer, "too many unauthenticated connections from this address");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = self.shared.clone();
                    // One task type per transport, so that a plain TCP connection does not
                    // reserve room for the TLS and WebSocket states (the task is most of what
                    // an idle connection costs).
                    match &kind {
                        Listener::Tcp => {
                            let serve = serve_logged(stream, peer, shared, None, unauthenticated);
                            self.tasks.spawn(holding(permit, serve));
                        }
                        Listener::Tls(tls) => {
                            let serve =
                                serve_tls(tls.clone(), stream, peer, shared, unauthenticated);
                            self.tasks.spawn(holding(permit, serve));
                        }
                        Listener::WebSocket(tls) => {
                            let tasks = self.tasks.clone();
                            let serve = serve_websocket(
                                tls.clone(),
                                stream,
                                peer,
                                shared,
                                tasks,
                                unauthenticated,
                            );
                            self.tasks.spawn(holding(permit, serve));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one already-accepted connection (a TLS stream, a WebSocket adapter, a test pipe)
    /// to its end, within the connection limit. The error says why it ended, if not cleanly.
    /// Such a connection has no peer address: its failed authentications count against the
    /// hub-wide failure budget only, and no per-address cap applies.
    pub async fn serve<IO>(&self, io: IO) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let _token = self.tasks.token();
        session::serve(io, self.shared.clone(), None, None, None).await
    }

    /// Serves MQTT over WebSocket on `io`, a connection from `peer` on which an HTTP server has
    /// answered the upgrade on `/$iothub/websocket` with the subprotocol `mqtt` already (its
    /// next bytes are WebSocket frames), as [`http::WebSocketUpgrades`] does on an HTTPS
    /// listener. Runs until the session ends, within the connection limit and the per-address
    /// cap on unauthenticated connections (it is refused at once past either).
    ///
    /// [`http::WebSocketUpgrades`]: crate::http::WebSocketUpgrades
    pub async fn serve_upgraded<IO>(&self, io: IO, peer: SocketAddr)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_upgraded_with(io, peer, None).await;
    }

    /// [`serve_upgraded`](Self::serve_upgraded) with the client certificate chain of the TLS
    /// connection the upgrade came on (X.509 devices over `wss://`).
    pub(crate) async fn serve_upgraded_with<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
        client_cert: Option<ClientChain>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "MQTT over WebSocket refused: too many connections");
            return;
        };
        let Some(unauthenticated) = self.shared.unauthenticated.enter(peer.ip()) else {
            tracing::debug!(%peer, "too many unauthenticated connections from this address");
            return;
        };
        let _token = self.tasks.token();
        let max_message = self.shared.config.max_packet_size as usize + 8;
        let (session_end, pump) = websocket::bridge(websocket::upgraded(io, max_message).await);
        let serve = serve_logged(
            session_end,
            peer,
            self.shared.clone(),
            client_cert,
            unauthenticated,
        );
        // The pump ends when the session drops its end of the pipe, and the other way round.
        tokio::join!(pump, serve);
    }

    /// Stops accepting, asks every session to end (each closes its gateway session, which
    /// releases unsettled C2D messages), and waits up to `shutdown_grace` for them.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.shared.config.shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("MQTT sessions still running after the shutdown grace period");
        }
    }

    /// How many connections are being served now.
    pub fn connections(&self) -> usize {
        self.shared.config.max_connections - self.permits.available_permits()
    }
}

/// What a listener speaks.
#[derive(Debug, Clone)]
enum Listener {
    Tcp,
    Tls(TlsConfig),
    WebSocket(Option<TlsConfig>),
}

impl Listener {
    fn name(&self) -> &'static str {
        match self {
            Listener::Tcp => "tcp",
            Listener::Tls(_) => "tls",
            Listener::WebSocket(None) => "ws",
            Listener::WebSocket(Some(_)) => "wss",
        }
    }
}

/// Serves a connection while holding its place in the connection limit.
///
/// A combinator rather than an `async fn`: an `async fn` keeps its future argument and the
/// future it awaits as two separate fields, which doubled the size of every connection's task
/// (most of what an idle connection costs).
fn holding(
    permit: OwnedSemaphorePermit,
    serve: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    serve.map(move |()| drop(permit))
}

/// Runs `step` within the connect timeout, unless the server shuts down first.
async fn within_connect_timeout<T, E: std::fmt::Display>(
    shared: &Shared,
    peer: SocketAddr,
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(shared.config.connect_timeout, step) => outcome,
        () = shared.shutdown.cancelled() => return None,
    };
    match outcome {
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

/// Completes the TLS handshake (bounded by the connect timeout), then serves MQTT inside it.
async fn serve_tls(
    tls: TlsConfig,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    unauthenticated: PendingGuard,
) {
    // Boxed: the handshake's state (rustls' connection, twice over in the timeout wrapper) is
    // large and needed only until the handshake ends; inline, every connection's task would
    // reserve room for it for its whole life.
    let accept = Box::pin(tls.acceptor().accept(stream));
    let Some(stream) = within_connect_timeout(&shared, peer, "TLS handshake", accept).await else {
        return;
    };
    let client_cert = ClientChain::of(&stream);
    // The TLS state (about 1 KiB) lives on the heap once instead of being moved through every
    // stage of the session's future.
    serve_logged(Box::new(stream), peer, shared, client_cert, unauthenticated).await;
}

/// Completes the TLS handshake if any and the WebSocket upgrade (together bounded by the
/// connect timeout), then serves MQTT over the bridged byte stream.
async fn serve_websocket(
    tls: Option<TlsConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    unauthenticated: PendingGuard,
) {
    let max_message = shared.config.max_packet_size as usize + 8;
    let started = tokio::time::Instant::now();
    let (session_end, client_cert) = match tls {
        None => {
            // Boxed: the handshake's state is large and needed only until the upgrade.
            let upgrade = Box::pin(websocket::accept(stream, websocket::MQTT, max_message));
            let Some(ws) =
                within_connect_timeout(&shared, peer, "WebSocket upgrade", upgrade).await
            else {
                return;
            };
            let (end, pump) = websocket::bridge(ws);
            tasks.spawn(pump);
            (end, None)
        }
        Some(tls) => {
            let setup = Box::pin(async {
                let stream = tls.acceptor().accept(stream).await?;
                let client_cert = ClientChain::of(&stream);
                let ws = websocket::accept(stream, websocket::MQTT, max_message)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>((ws, client_cert))
            });
            let Some((ws, client_cert)) =
                within_connect_timeout(&shared, peer, "TLS WebSocket upgrade", setup).await
            else {
                return;
            };
            let (end, pump) = websocket::bridge(ws);
            tasks.spawn(pump);
            (end, client_cert)
        }
    };
    tracing::trace!(%peer, elapsed = ?started.elapsed(), "WebSocket upgraded");
    serve_logged(session_end, peer, shared, client_cert, unauthenticated).await;
}

async fn serve_logged<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    client_cert: Option<ClientChain>,
    unauthenticated: PendingGuard,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Err(e) = session::serve(io, shared, client_cert, Some(peer), Some(unauthenticated)).await
    {
        match e {
            Error::Io(e) => tracing::debug!(%peer, error = %e, "MQTT connection ended"),
            e => tracing::info!(%peer, error = %e, "MQTT connection closed"),
        }
    }
}
