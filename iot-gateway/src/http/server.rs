//! The listener side: accepting TCP or TLS connections, serving HTTP/1.1 on each with hyper,
//! bounding how many are served, shutting down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use super::config::HttpConfig;
use crate::mqtt::TlsConfig;
use crate::mqtt::client_chain::ClientChain;

/// The address a request came from, put into every request's extensions (handlers read it
/// with `Extension<PeerAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// An HTTP/1.1 server for a router (built with [`super::router`]), over plain TCP and TLS.
///
/// Cloning is cheap; clones share the connections, the limits and the shutdown.
#[derive(Clone, Debug)]
pub struct HttpServer {
    router: Router,
    config: Arc<HttpConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
}

impl HttpServer {
    /// A server for `router` with `config`'s timeouts and limits.
    pub fn new(router: Router, config: HttpConfig) -> Self {
        HttpServer {
            router,
            permits: Arc::new(Semaphore::new(config.max_connections.max(1))),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Binds `addr` and serves plain HTTP until [`shutdown`](Self::shutdown). Returns the bound
    /// address (useful with port 0).
    pub async fn listen_tcp(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        self.listen(addr, None).await
    }

    /// Binds `addr` and serves HTTPS until [`shutdown`](Self::shutdown). The TLS handshake must
    /// finish within [`HttpConfig::handshake_timeout`].
    ///
    /// With a `tls` that asks for client certificates
    /// ([`TlsConfig::from_pem`]'s `client_certificates`; asked, never required), the chain a
    /// client presents is kept with each request of its connection, and the device API
    /// authenticates a request without an `Authorization` header by it (see [`Caller`]).
    ///
    /// [`Caller`]: super::Caller
    pub async fn listen_tls(
        &self,
        addr: SocketAddr,
        tls: TlsConfig,
    ) -> std::io::Result<SocketAddr> {
        self.listen(addr, Some(tls)).await
    }

    async fn listen(
        &self,
        addr: SocketAddr,
        tls: Option<TlsConfig>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tracing::info!(%bound, tls = tls.is_some(), "HTTP endpoint listening");
        let server = self.clone();
        self.tasks
            .spawn(async move { server.accept_loop(listener, tls).await });
        Ok(bound)
    }

    async fn accept_loop(self, listener: TcpListener, tls: Option<TlsConfig>) {
        loop {
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    let tls = tls.clone();
                    self.tasks.spawn(async move {
                        let _permit = permit;
                        match tls {
                            None => server.serve_io(stream, peer, None).await,
                            Some(tls) => {
                                let handshake = tokio::time::timeout(
                                    server.config.handshake_timeout,
                                    tls.acceptor().accept(stream),
                                );
                                match handshake.await {
                                    Ok(Ok(stream)) => {
                                        // Kept for the device API: a device may authenticate
                                        // with the certificate chain of its handshake.
                                        let chain = ClientChain::of(&stream);
                                        server.serve_io(stream, peer, chain).await;
                                    }
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    }
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves HTTP/1.1 on one connection until the client closes it, a timeout ends it, or the
    /// server shuts down (then the request in flight is finished first).
    async fn serve_io<IO>(&self, io: IO, peer: SocketAddr, chain: Option<ClientChain>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(PeerAddr(peer));
            if let Some(chain) = &chain {
                request.extensions_mut().insert(chain.clone());
            }
            let mut router = router.clone();
            async move { Ok::<_, Infallible>(router.call(request).await.into_ok_response()) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            // Header limits: hyper answers 431 past either and closes the connection. Its
            // buffer cannot be smaller than 8 KiB (it panics below that).
            .max_headers(self.config.max_headers.max(1))
            .max_buf_size(self.config.max_header_bytes.max(8 * 1024))
            .keep_alive(true);
        // With upgrades: `/$iothub/websocket` hands the connection to an endpoint
        // (`WebSocketUpgrades`).
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            }
            () = self.shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.as_mut().await;
            }
        }
    }

    /// Stops accepting, lets each connection finish the request in flight, and waits up to
    /// [`HttpConfig::shutdown_grace`] for them.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after the shutdown grace period");
        }
    }

    /// How many connections are being served now.
    pub fn connections(&self) -> usize {
        self.config.max_connections.max(1) - self.permits.available_permits()
    }
}

/// A router's call cannot fail (its error type is `Infallible`).
trait IntoOkResponse {
    fn into_ok_response(self) -> axum::response::Response;
}

impl IntoOkResponse for Result<axum::response::Response, Infallible> {
    fn into_ok_response(self) -> axum::response::Response {
        match self {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}
