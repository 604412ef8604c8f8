//! The listener: accepts TCP (or TLS) connections and serves each in its own task
//! ([`engine`]), so a misbehaving client ends only its own connection. The TLS and AMQP/SASL
//! handshakes share one deadline, so a slow handshake cannot hold a task for long.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::engine;
use super::error::{EventHubsError, Result};
use super::{EventHubsEndpoint, Shared};

impl EventHubsEndpoint {
    /// Listens for plain AMQP (no TLS) on `addr`; returns the bound address. For tests and
    /// loopback use: a client's tokens would cross the network in the clear.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<SocketAddr> {
        self.listen(addr, None).await
    }

    /// Listens for AMQP over TLS (`amqps`, Event Hubs' port 5671) on `addr`.
    pub async fn listen_tls(&self, addr: SocketAddr, tls: Arc<ServerConfig>) -> Result<SocketAddr> {
        self.listen(addr, Some(TlsAcceptor::from(tls))).await
    }

    async fn listen(&self, addr: SocketAddr, tls: Option<TlsAcceptor>) -> Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EventHubsError::Io {
                context: "binding the listener",
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| EventHubsError::Io {
            context: "reading the bound address",
            source,
        })?;
        let shared = self.shared.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        // At the limit the socket is dropped (closed) at once.
                        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "event hubs connection limit reached");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let (shared, tls, stop) = (shared.clone(), tls.clone(), stop.clone());
                        tokio::spawn(async move {
                            let _slot = slot;
                            tokio::select! {
                                _ = handle(shared, stream, tls, stop.clone()) => {}
                                _ = stopped(stop) => {}
                            }
                            tracing::debug!(%peer, "event hubs connection ended");
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(bound)
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    // One deadline for the TLS handshake and the engine's SASL and `open` exchange together.
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    match tls {
        Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => engine::serve(shared, stream, deadline, stop).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "event hubs TLS handshake failed"),
            Err(_) => tracing::debug!("event hubs TLS handshake timed out"),
        },
        None => engine::serve(shared, stream, deadline, stop).await,
    }
}
