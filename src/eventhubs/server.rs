//! The listener: accepts TCP (or TLS) connections and serves each in its own task, so a
//! misbehaving client ends only its own connection. The TLS and AMQP/SASL handshakes share
//! one deadline, so a slow handshake cannot hold a task for long.

use std::net::SocketAddr;
use std::sync::Arc;

use fe2o3_amqp::acceptor::ConnectionAcceptor;
use iot_gateway::adapter::{AmqpFrameGuard, AmqpFrameLimits, CoalescedWrites};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::claims::Claims;
use super::connection;
use super::error::{EventHubsError, Result};
use super::sasl::Sasl;
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
    let sasl = Sasl::new(
        shared.policies.clone(),
        shared.config.host.as_str().into(),
        shared.config.entity.as_str().into(),
    );
    let granted = sasl.granted.clone();
    let acceptor = ConnectionAcceptor::builder()
        .container_id("iot-sdk-eventhubs")
        .max_frame_size(shared.config.max_frame_size)
        .idle_time_out(120_000u32)
        .properties(connection::fields())
        .sasl_acceptor(sasl)
        .build();
    let deadline = shared.config.handshake_timeout;
    let limits = AmqpFrameLimits::new(shared.config.max_frame_size, 1024 * 1024);
    let opened = tokio::time::timeout(deadline, async {
        match tls {
            // The guard first: fe2o3-amqp's decoder panics on a frame smaller than its header and
            // allocates declared lengths before reading them (iot_gateway::adapter::AmqpFrameGuard).
            // Requests ($cbs, $management) are small: 1 MiB messages, Event Hubs' own limit.
            // Under the guard, the frames fe2o3-amqp writes one by one (each event a frame) go
            // out together (iot_gateway::adapter::CoalescedWrites).
            Some(tls) => {
                let stream = tls.accept(stream).await.map_err(|e| e.to_string())?;
                acceptor
                    .accept(AmqpFrameGuard::with_limits(
                        CoalescedWrites::new(stream),
                        limits,
                    ))
                    .await
                    .map_err(|e| e.to_string())
            }
            None => acceptor
                .accept(AmqpFrameGuard::with_limits(
                    CoalescedWrites::new(stream),
                    limits,
                ))
                .await
                .map_err(|e| e.to_string()),
        }
    })
    .await;
    let connection = match opened {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "event hubs handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("event hubs handshake timed out");
            return;
        }
    };
    let claims = Arc::new(Claims::default());
    let plain = *granted.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(until) = plain {
        claims.grant(until);
    }
    connection::serve(shared, claims, connection, stop).await;
}
