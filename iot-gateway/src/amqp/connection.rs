//! One AMQP connection: TLS, SASL (or none: the header says) and `open` within the handshake timeout, the PLAIN token
//! checked before any session, then each session's links served until the connection ends.
//! Whatever goes wrong here (a malformed or oversized frame, a bad performative, a timeout)
//! ends this connection only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::{ConnectionAcceptor, ListenerSessionHandle};
use fe2o3_amqp::connection::OpenError;
use fe2o3_amqp::types::definitions::AmqpError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claims::Claims;
use super::conn::{Conn, amqp_error};
use super::links;
use super::replay::Replay;
use super::sasl::{Offered, Sasl};
use super::server::Shared;
use crate::adapter::{AmqpFrameGuard, AmqpFrameLimits, CoalescedWrites};

/// The `$cbs` replies a connection may have waiting for its reply link.
const CBS_QUEUE: usize = 16;

/// Serves one connection on `stream` (TLS done already, or plain TCP).
pub(super) async fn serve<Io>(
    shared: Arc<Shared>,
    stream: Io,
    peer: SocketAddr,
    stop: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let sasl = Sasl::default();
    let handshake = async {
        // The protocol header says whether SASL comes first (id 3) or not (id 0); anything
        // else is answered by the acceptor with the header it supports, then closed.
        let mut stream = stream;
        let mut header = [0u8; 8];
        stream
            .read_exact(&mut header)
            .await
            .map_err(OpenError::Io)?;
        let limits =
            AmqpFrameLimits::new(shared.config.max_frame_size, shared.config.max_message_size);
        // The frames fe2o3-amqp writes one by one go out together (`CoalescedWrites`), under the
        // guard, which only looks at what is read.
        let stream = AmqpFrameGuard::with_limits(
            CoalescedWrites::new(Replay::new(header.to_vec(), stream)),
            limits,
        );
        if header[4] == 0 {
            ConnectionAcceptor {
                local_open: shared.open.clone(),
                tls_acceptor: (),
                sasl_acceptor: (),
                buffer_size: shared.buffer_size,
            }
            .accept(stream)
            .await
        } else {
            ConnectionAcceptor {
                local_open: shared.open.clone(),
                tls_acceptor: (),
                sasl_acceptor: sasl.clone(),
                buffer_size: shared.buffer_size,
            }
            .accept(stream)
            .await
        }
    };
    let mut connection = tokio::select! {
        opened = tokio::time::timeout(shared.config.handshake_timeout, handshake) => match opened {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "AMQP handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "AMQP handshake timed out");
                return;
            }
        },
        () = stop.cancelled() => return,
    };
    let (cbs_tx, cbs_rx) = mpsc::channel(CBS_QUEUE);
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        claims: Claims::new(
            shared.gateway.clone(),
            shared.service_auth.clone(),
            peer.ip(),
        ),
        cbs_tx,
        cbs_rx: Mutex::new(Some(cbs_rx)),
        closed: stop.child_token(),
        routers: Mutex::new(std::collections::HashMap::new()),
        links: Arc::new(tokio::sync::Semaphore::new(shared.config.max_links)),
    });
    if let Offered::Plain(token) = sasl.take()
        && let Err(refused) = conn.claims.put_token(&token).await
    {
        tracing::debug!(%peer, reason = %refused.description, "SASL PLAIN token refused");
        let _ = connection
            .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "unauthorized"))
            .await;
        return;
    }
    let sessions = fe2o3_amqp::acceptor::SessionAcceptor::new();
    // A connection that has opened but presents no valid token holds a socket and a task for
    // nothing: it gets `auth_timeout` to present one.
    let auth_deadline = tokio::time::sleep(shared.config.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut auth_checked = false;
    loop {
        let incoming = tokio::select! {
            incoming = connection.next_incoming_session() => incoming,
            () = &mut auth_deadline, if !auth_checked => {
                auth_checked = true;
                if conn.claims.holds_any() {
                    continue;
                }
                tracing::debug!(%peer, "AMQP connection presented no token in time");
                conn.closed.cancel();
                let _ = connection
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, "no valid token presented in time"))
                    .await;
                conn.claims.close_all().await;
                return;
            }
            () = conn.closed.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        match sessions
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                tokio::spawn(serve_session(conn.clone(), session));
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "AMQP begin failed");
                break;
            }
        }
    }
    conn.closed.cancel();
    let _ = connection.close().await;
    conn.claims.close_all().await;
    tracing::debug!(%peer, "AMQP connection ended");
}

async fn serve_session(conn: Arc<Conn>, mut session: ListenerSessionHandle) {
    let acceptor = conn.shared.links.clone();
    loop {
        let attach = tokio::select! {
            attach = session.next_incoming_attach() => attach,
            () = conn.closed.cancelled() => break,
        };
        let Some(attach) = attach else { break };
        links::attach(&conn, &acceptor, &mut session, attach).await;
    }
    let _ = session.end().await;
}
