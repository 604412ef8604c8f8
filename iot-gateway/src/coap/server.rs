//! The UDP loop: the message layer of RFC 7252 (§4) around [`Handler`].
//!
//! * A datagram that is not a CoAP 1 message is dropped; one whose header is readable but whose
//!   rest is malformed is rejected with a Reset if it is confirmable (§4.2), dropped otherwise.
//!   Neither reaches the gateway or affects other exchanges.
//! * A confirmable request is answered by a piggybacked acknowledgement, sent once the request
//!   is carried out (telemetry: once it is in the log). A non-confirmable request gets a
//!   non-confirmable response.
//! * Duplicates (same peer, same message id, within the exchange lifetime) are not processed
//!   again: a duplicate of an answered request gets the same answer, one still being processed
//!   is dropped ([`dedup`](super::dedup)).
//! * An empty confirmable message (a "CoAP ping") is answered with a Reset; acknowledgements and
//!   resets are dropped (the adapter sends no confirmable messages of its own).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::config::CoapConfig;
use super::dedup::{Dedup, Seen};
use super::error::Error;
use super::handler::{Answer, Handler, Observation, c2d_answer};
use super::request::{self, Refusal};
use crate::adapter::TokenSessions;
use crate::gateway::{Gateway, SessionEvent};

/// The largest response encoded (a C2D payload must fit in one datagram).
const MAX_RESPONSE: usize = 65_000;

/// RFC 7252's `ACK_TIMEOUT` and `MAX_RETRANSMIT` for the confirmable notifications this
/// adapter sends (§4.8); the wait doubles with each retransmission.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

/// A running CoAP adapter on one UDP socket.
#[derive(Debug)]
pub struct CoapServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    handler: Arc<Handler>,
}

struct Shared {
    socket: UdpSocket,
    handler: Arc<Handler>,
    dedup: Mutex<Dedup>,
    in_flight: Arc<Semaphore>,
    max_datagram: usize,
    /// Message ids of the messages this adapter originates (non-confirmable responses,
    /// notifications).
    next_id: std::sync::atomic::AtomicU16,
    /// Confirmable notifications waiting for their acknowledgement, by (peer, message id):
    /// `true` for an ACK, `false` for a Reset.
    acks: Mutex<std::collections::HashMap<(SocketAddr, u16), tokio::sync::oneshot::Sender<bool>>>,
    session_idle: std::time::Duration,
}

impl CoapServer {
    /// Binds `addr` and serves CoAP requests for `gateway` until [`shutdown`](Self::shutdown).
    pub async fn bind(
        gateway: Arc<dyn Gateway>,
        config: CoapConfig,
        addr: SocketAddr,
    ) -> Result<CoapServer, Error> {
        if config.max_datagram < 4 || config.max_in_flight == 0 {
            return Err(Error::Config(
                "max_datagram must be at least 4 and max_in_flight at least 1".into(),
            ));
        }
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let handler = Arc::new(Handler::new(
            TokenSessions::new(gateway, config.session_idle),
            config.c2d_wait,
        ));
        let shared = Arc::new(Shared {
            socket,
            handler: handler.clone(),
            dedup: Mutex::new(Dedup::new(config.exchange_lifetime, config.max_remembered)),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_datagram: config.max_datagram,
            next_id: std::sync::atomic::AtomicU16::new(rand::random()),
            acks: Mutex::new(std::collections::HashMap::new()),
            session_idle: config.session_idle,
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(receive(shared, stop));
        tracing::info!(%local_addr, "CoAP adapter listening");
        Ok(CoapServer {
            local_addr,
            shutdown,
            task: Mutex::new(Some(task)),
            handler,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops receiving and closes every device session the adapter holds.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.handler.sessions().close_all().await;
    }
}

async fn receive(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // One byte more than accepted, to tell a datagram that is too large from one that fits.
    let mut buf = vec![0u8; shared.max_datagram + 1];
    loop {
        let (len, peer) = tokio::select! {
            _ = stop.changed() => return,
            received = shared.socket.recv_from(&mut buf) => match received {
                Ok(got) => got,
                // ICMP errors of earlier sends surface here on some systems; they concern one
                // peer, not the socket.
                Err(e) => {
                    tracing::debug!(error = %e, "CoAP receive failed");
                    continue;
                }
            },
        };
        if len > shared.max_datagram {
            tracing::debug!(%peer, "dropping an oversized CoAP datagram");
            continue;
        }
        datagram(&shared, &buf[..len], peer).await;
    }
}

/// Handles one datagram: message-layer checks here, requests in a task of their own.
async fn datagram(shared: &Arc<Shared>, bytes: &[u8], peer: SocketAddr) {
    // Version 1 in the top two bits (§3): anything else is silently ignored.
    if bytes.len() < 4 || bytes[0] >> 6 != 1 {
        tracing::debug!(%peer, "dropping a datagram that is not CoAP 1");
        return;
    }
    let confirmable = (bytes[0] >> 4) & 0b11 == 0;
    let message_id = u16::from_be_bytes([bytes[2], bytes[3]]);
    let packet = match Packet::from_bytes(bytes) {
        Ok(packet) if well_formed(&packet, bytes) => packet,
        _ => {
            tracing::debug!(%peer, "malformed CoAP message");
            if confirmable {
                send(shared, &reset(message_id), peer).await;
            }
            return;
        }
    };
    match (packet.header.get_type(), packet.header.code) {
        (kind @ (MessageType::Acknowledgement | MessageType::Reset), _) => {
            // The answer to a notification of ours, if one waits for it.
            if let Some(waiting) = lock(&shared.acks).remove(&(peer, message_id)) {
                let _ = waiting.send(kind == MessageType::Acknowledgement);
            }
            return;
        }
        (MessageType::Confirmable, MessageClass::Empty) => {
            send(shared, &reset(message_id), peer).await;
            return;
        }
        (_, MessageClass::Request(_)) => {}
        // A response or an empty non-confirmable message: not for a server.
        (MessageType::Confirmable, _) => {
            send(shared, &reset(message_id), peer).await;
            return;
        }
        _ => return,
    }
    let seen = lock(&shared.dedup).check(peer, message_id, Instant::now());
    match seen {
        Seen::New => {}
        Seen::InProgress => {
            tracing::debug!(%peer, message_id, "duplicate of a request in progress");
            return;
        }
        Seen::Answered(answer) => {
            tracing::debug!(%peer, message_id, "duplicate of an answered request");
            send(shared, &answer, peer).await;
            return;
        }
    }
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        // Over the limit: as if lost; the client retransmits.
        lock(&shared.dedup).forget(peer, message_id);
        tracing::debug!(%peer, "dropping a CoAP request: too many in flight");
        return;
    };
    let shared = shared.clone();
    let mut packet = packet;
    tokio::spawn(async move {
        let permit = permit;
        let result = match request::parse(&packet) {
            Ok(request) => {
                let payload = std::mem::take(&mut packet.payload);
                shared.handler.handle(request, payload, peer).await
            }
            Err(refusal) => Err(refusal),
        };
        let (result, observation) = match result {
            Ok(mut answer) => {
                let observation = answer.observe.take();
                (Ok(answer), observation)
            }
            Err(refusal) => (Err(refusal), None),
        };
        let mut response = response(&shared, &packet, result);
        if observation.is_some() {
            response.set_observe_value(1);
        }
        match response.to_bytes_with_limit(MAX_RESPONSE) {
            Ok(bytes) => {
                lock(&shared.dedup).answered(peer, message_id, bytes.clone());
                send(&shared, &bytes, peer).await;
            }
            Err(e) => {
                tracing::warn!(%peer, error = ?e, "a CoAP response could not be encoded");
                lock(&shared.dedup).forget(peer, message_id);
                return;
            }
        }
        // An observation lasts as long as the device wants: it holds no request slot.
        drop(permit);
        if let Some(observation) = observation {
            notify(shared, observation, peer, packet.get_token().to_vec()).await;
        }
    });
}

/// Sends the device's C2D messages to an observer as confirmable notifications (RFC 7641),
/// one at a time: the next is fetched once the last is acknowledged. The device settles them
/// as it settles what a GET returned. A Reset, or no acknowledgement after `MAX_RETRANSMIT`
/// retransmissions, ends the observation and gives the message back; so does a newer
/// registration or a deregistration. A closed session ends it with a 5.03 notification.
async fn notify(shared: Arc<Shared>, observation: Observation, peer: SocketAddr, token: Vec<u8>) {
    let Observation {
        session,
        mut cancelled,
    } = observation;
    let device = session.device_id().clone();
    let mut sequence: u32 = 1;
    let mut keep_alive = tokio::time::interval((shared.session_idle / 2).max(ACK_TIMEOUT));
    loop {
        let poll = shared.handler.poll_lock(&device);
        let event = {
            let _one_at_a_time = tokio::select! {
                _ = &mut cancelled => return,
                guard = poll.lock() => guard,
            };
            loop {
                tokio::select! {
                    _ = &mut cancelled => return,
                    _ = keep_alive.tick() => shared.handler.sessions().keep_alive(&device),
                    event = session.next_event() => break event,
                }
            }
        };
        let delivery = match event {
            Ok(SessionEvent::C2d(delivery)) => delivery,
            Ok(SessionEvent::Closed(_)) | Err(_) => {
                let mut end = notification(&shared, &token, MessageType::NonConfirmable);
                end.header.code = MessageClass::Response(ResponseType::ServiceUnavailable);
                if let Ok(bytes) = end.to_bytes() {
                    send(&shared, &bytes, peer).await;
                }
                return;
            }
            Ok(_) => continue,
        };
        let lock_token = delivery.lock_token;
        let Ok(answer) = c2d_answer(&session, delivery).await else {
            continue; // too large: rejected
        };
        sequence = (sequence + 1) & 0x00FF_FFFF;
        let mut packet = notification(&shared, &token, MessageType::Confirmable);
        packet.header.code = MessageClass::Response(answer.code);
        packet.set_observe_value(sequence);
        for (number, value) in answer.options {
            packet.add_option(CoapOption::Unknown(number), value);
        }
        packet.payload = answer.payload;
        let acknowledged = match packet.to_bytes_with_limit(MAX_RESPONSE) {
            Ok(bytes) => confirm(&shared, &bytes, peer, packet.header.message_id).await,
            Err(_) => false,
        };
        if !acknowledged {
            tracing::debug!(%peer, device = %device, "observation ended by the observer");
            let _ = session.abandon(lock_token).await;
            return;
        }
    }
}

/// A message of ours to `token`'s exchange, with a fresh message id.
fn notification(shared: &Shared, token: &[u8], kind: MessageType) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    packet.header.set_type(kind);
    packet.header.message_id = shared
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    packet.set_token(token.to_vec());
    packet
}

/// Sends a confirmable message until it is acknowledged (`true`), reset or unanswered after
/// `MAX_RETRANSMIT` retransmissions (`false`).
async fn confirm(shared: &Shared, bytes: &[u8], peer: SocketAddr, message_id: u16) -> bool {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    lock(&shared.acks).insert((peer, message_id), tx);
    let mut wait = ACK_TIMEOUT;
    for _ in 0..=MAX_RETRANSMIT {
        send(shared, bytes, peer).await;
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(answer) => return answer.unwrap_or(false),
            Err(_) => wait *= 2,
        }
    }
    lock(&shared.acks).remove(&(peer, message_id));
    false
}

/// Checks coap-lite leaves to the caller. The CoAP encoding of a message is unique (options in
/// order, each length and delta in its shortest form), so a message that encodes back to a
/// different length broke a rule the decoder let through — notably a payload marker with no
/// payload after it, a format error (§3).
fn well_formed(packet: &Packet, bytes: &[u8]) -> bool {
    packet.get_token().len() <= 8
        && packet
            .to_bytes_unlimited()
            .is_ok_and(|again| again.len() == bytes.len())
}

/// The response to `request`: piggybacked on the acknowledgement of a confirmable request,
/// non-confirmable otherwise; the request's token echoed.
fn response(shared: &Shared, request: &Packet, result: Result<Answer, Refusal>) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    if request.header.get_type() == MessageType::Confirmable {
        packet.header.set_type(MessageType::Acknowledgement);
        packet.header.message_id = request.header.message_id;
    } else {
        packet.header.set_type(MessageType::NonConfirmable);
        packet.header.message_id = shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    packet.set_token(request.get_token().to_vec());
    match result {
        Ok(answer) => {
            packet.header.code = MessageClass::Response(answer.code);
            for (number, value) in answer.options {
                packet.add_option(CoapOption::Unknown(number), value);
            }
            packet.payload = answer.payload;
        }
        Err(refusal) => {
            packet.header.code = MessageClass::Response(refusal.code);
            // A diagnostic payload (§5.5.2): UTF-8 text for a human.
            packet.payload = refusal.diagnostic.into_bytes();
            if refusal.code == ResponseType::Unauthorized {
                tracing::debug!("CoAP request refused: unauthorized");
            }
        }
    }
    packet
}

/// A Reset matching `message_id`: four bytes, version 1, type RST, code 0.00.
fn reset(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![0x70, 0x00, hi, lo]
}

async fn send(shared: &Shared, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = shared.socket.send_to(bytes, peer).await {
        tracing::debug!(%peer, error = %e, "CoAP send failed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
