//! One MQTT connection: the CONNECT handshake, then a loop that reads the device's packets and
//! writes what the gateway session hands out.
//!
//! Everything a connection holds is bounded: one packet of at most `max_packet_size` being
//! decoded, at most `inflight_window` unacknowledged C2D messages, a few queued twin answers.
//! Backpressure is plain awaiting: while telemetry is being appended the connection reads no
//! more packets (TCP pushes back on the device), and while a write to a slow device is pending
//! it takes no more events from the gateway (the inbox keeps them). A write that stays blocked
//! longer than `write_timeout` closes the connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::client_chain::ClientChain;
use bytes::Bytes;
use bytestring::ByteString;
use futures::StreamExt;
use iot_core::DeviceId;
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Connect, ConnectAck, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};

use super::connect::check_connect;
use super::error::{Error, ProtocolViolation};
use super::shared::Shared;
use super::subscriptions::Subscriptions;
use super::telemetry;
use super::topics::{self, Inbound, Subscription};
use super::transport::{self, Input, Transport, next_input, write_now};
use crate::error::Error as GatewayError;
use crate::gateway::{
    DeviceSession, SessionEvent, SessionOptions, Subscription as GatewaySubscription,
};
use crate::message::{LockToken, Telemetry};
use crate::method::MethodResponse;

/// Twin answers kept for a device that asked before subscribing to `$iothub/twin/res/#`.
const MAX_PENDING_TWIN_ANSWERS: usize = 8;

/// A pending [`DeviceSession::next_event`], kept from one packet to the next.
type NextEvent = Pin<Box<dyn Future<Output = Result<SessionEvent, GatewayError>> + Send>>;

/// How a connection ended, which decides whether the will is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The device sent DISCONNECT: the will is discarded.
    Clean,
    /// The gateway closed the session (takeover, disabled device, ...) or the endpoint shuts
    /// down: the device did not vanish, so no will either.
    ByServer,
    /// The connection broke, timed out or broke the protocol: the will is sent.
    Abnormal,
}

/// Serves one connection to its end. Errors are the reason it ended; the caller logs them.
///
/// `client_cert` is the certificate chain the device presented in the TLS handshake, if any:
/// it authenticates a device that sends no password (by thumbprint, or as CA-signed).
pub(crate) async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    client_cert: Option<ClientChain>,
    peer: Option<std::net::SocketAddr>,
    unauthenticated: Option<super::pending::PendingGuard>,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut transport = transport::framed(io, shared.config.max_packet_size);
    let first = tokio::select! {
        first = timeout(shared.config.connect_timeout, transport.next()) => first,
        () = shared.shutdown.cancelled() => return Ok(()),
    };
    let packet = match first {
        Err(_) => return Err(ProtocolViolation::ConnectTimeout.into()),
        Ok(None) => return Ok(()),
        Ok(Some(Err(Error::Protocol(violation)))) => {
            // The two refusals of a CONNECT that MQTT 3.1.1 answers before closing: an
            // unsupported protocol level [MQTT-3.1.2-2] and an empty client id without clean
            // session [MQTT-3.1.3-8]. Every other violation closes without an answer.
            let code = match violation {
                ProtocolViolation::ProtocolLevel(_) => {
                    Some(ConnectAckReason::UnacceptableProtocolVersion)
                }
                ProtocolViolation::EmptyClientId => Some(ConnectAckReason::IdentifierRejected),
                _ => None,
            };
            if let Some(return_code) = code {
                let refuse = Packet::ConnectAck(ConnectAck {
                    return_code,
                    session_present: false,
                });
                write_now(&mut transport, refuse, shared.config.write_timeout).await?;
            }
            return Err(violation.into());
        }
        Ok(Some(read)) => read?,
    };
    // The framing lets only CONNECT through first; checked again so that this function does not
    // depend on it.
    let Packet::Connect(connect) = packet else {
        return Err(ProtocolViolation::ExpectedConnect(packet.packet_type()).into());
    };
    if super::dps::is_registration(&connect) {
        // Boxed for the same reason as the handshake below.
        return Box::pin(super::dps::serve(
            transport,
            *connect,
            shared,
            client_cert,
            unauthenticated,
        ))
        .await;
    }
    // Boxed: the handshake's state is needed once, and inline it would be part of every
    // connection's task for the connection's whole life.
    let handshaking = Box::pin(handshake(transport, *connect, shared, client_cert, peer));
    let Some(mut connection) = handshaking.await? else {
        return Ok(());
    };
    // Authenticated: the connection no longer counts against its address's handshake cap.
    drop(unauthenticated);
    let result = connection.run().await;
    let ending = match &result {
        Ok(ending) => *ending,
        // The gateway ended the session (takeover, disabled device): the device did not vanish.
        Err(_) if connection.session.close_reason().is_some() => Ending::ByServer,
        Err(_) => Ending::Abnormal,
    };
    connection.finish(ending).await;
    result.map(|_| ())
}

/// Checks CONNECT, authenticates through the gateway and answers CONNACK. `None` when the
/// connection was refused with a CONNACK return code (already sent).
async fn handshake<IO>(
    mut transport: Transport<IO>,
    connect: Connect,
    shared: Arc<Shared>,
    client_cert: Option<ClientChain>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Option<Connection<IO>>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write_timeout = shared.config.write_timeout;
    let refuse = |code: ConnectAckReason| {
        Packet::ConnectAck(ConnectAck {
            return_code: code,
            session_present: false,
        })
    };
    if connect.protocol.0 != 4 {
        // The framing answers other levels before decoding; kept so that the handshake never
        // serves another protocol level.
        write_now(
            &mut transport,
            refuse(ConnectAckReason::UnacceptableProtocolVersion),
            write_timeout,
        )
        .await?;
        return Err(ProtocolViolation::ProtocolLevel(connect.protocol.0).into());
    }
    let checked = match check_connect(&connect, client_cert.as_ref()) {
        Ok(checked) => checked,
        Err((code, why)) => {
            // Debug, not info: a flood of bad CONNECTs must not become a flood of log lines
            // (the throttle's budgets already bound and count them).
            tracing::debug!(client_id = %super::error::shorten(&connect.client_id), %why, "CONNECT refused");
            write_now(&mut transport, refuse(code), write_timeout).await?;
            return Ok(None);
        }
    };
    let options = SessionOptions {
        c2d_window: shared.config.inflight_window,
        // Failed authentications are charged to the address, not to the device named.
        peer: peer.map(|p| p.ip()),
        model_id: checked.model_id,
        ..SessionOptions::default()
    };
    let opened = match &checked.module {
        Some(module) => {
            shared
                .gateway
                .connect_module(&checked.device, module, checked.credential, options)
                .await
        }
        None => {
            shared
                .gateway
                .connect(&checked.device, checked.credential, options)
                .await
        }
    };
    let session = match opened {
        // Shared with the pending `next_event` of the connection's loop.
        Ok(session) => Arc::from(session),
        Err(e) => {
            let code = match e {
                GatewayError::Unauthorized { .. }
                | GatewayError::DeviceNotFound { .. }
                | GatewayError::ModuleNotFound { .. } => ConnectAckReason::NotAuthorized,
                _ => ConnectAckReason::ServiceUnavailable,
            };
            tracing::debug!(device = %checked.device, error = %e, "CONNECT refused by the gateway");
            write_now(&mut transport, refuse(code), write_timeout).await?;
            return Ok(None);
        }
    };
    let device = checked.device;
    let clean_session = connect.clean_session;
    // A persistent session gets back the subscriptions it had; a clean one forgets them.
    // Persistent sessions are kept per device: a module's connection is always clean, so that
    // it never gets (or overwrites) its device's subscriptions.
    let persistent = checked.module.is_none();
    let restored = if persistent {
        shared.persistent.resume(&device, clean_session).await
    } else {
        Subscriptions::default()
    };
    let mut connection = Connection {
        transport,
        idle: shared.config.idle_timeout(connect.keep_alive),
        c2d_to: format!("/devices/{device}/messages/deviceBound"),
        session,
        device,
        owner: checked.owner,
        module: checked.module.is_some(),
        clean_session,
        subscriptions: Subscriptions::default(),
        inflight: HashMap::new(),
        next_packet_id: 1,
        pending_twin: VecDeque::new(),
        will: checked.will,
        shared,
    };
    for (kind, qos) in restored.iter() {
        connection.subscribe(kind, qos).await?;
    }
    let connack = Packet::ConnectAck(ConnectAck {
        return_code: ConnectAckReason::ConnectionAccepted,
        session_present: persistent && !clean_session && !restored.is_empty(),
    });
    if let Err(e) = connection.write(connack).await {
        connection.finish(Ending::ByServer).await;
        return Err(e);
    }
    tracing::debug!(device = %connection.device, clean_session, "MQTT session open");
    Ok(Some(connection))
}

/// What an outbound QoS 1 PUBLISH awaits a PUBACK for.
#[derive(Debug, Clone, Copy)]
enum Inflight {
    /// A C2D message: PUBACK completes it.
    C2d(LockToken),
}

/// An authenticated connection.
struct Connection<IO> {
    transport: Transport<IO>,
    session: Arc<dyn DeviceSession>,
    device: DeviceId,
    /// Whose topics the connection may use: the device id, or `{deviceId}/modules/{moduleId}`.
    owner: String,
    /// Whether a module connected (its subscriptions are not kept for the device).
    module: bool,
    clean_session: bool,
    /// 1.5 × the keep-alive.
    idle: Duration,
    /// The `$.to` property of C2D messages.
    c2d_to: String,
    subscriptions: Subscriptions,
    inflight: HashMap<u16, Inflight>,
    next_packet_id: u16,
    /// Twin answers (topic, body) waiting for the `$iothub/twin/res/#` subscription.
    pending_twin: VecDeque<(String, Bytes)>,
    will: Option<Telemetry>,
    shared: Arc<Shared>,
}

impl<IO> Connection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Reads packets and hands out gateway events until the connection ends.
    ///
    /// What the loop waits on is made once and kept from one packet to the next (the shutdown
    /// signal, the keep-alive timer, a pending `next_event`): made per packet, they would be a
    /// timer armed and cancelled, a waiter registered and removed and an allocation for every
    /// telemetry message. Replies are buffered and written when the device has nothing more
    /// ready to read (see `transport`).
    async fn run(&mut self) -> Result<Ending, Error> {
        let shutdown = self.shared.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut last_packet = Instant::now();
        let keep_alive = sleep_until(last_packet + self.idle);
        tokio::pin!(keep_alive);
        let session = Arc::clone(&self.session);
        let mut event: Option<NextEvent> = None;
        // Packets handled since the write buffer was last written out.
        let mut handled = 0;
        loop {
            let window_open = self.inflight.len() < self.shared.config.inflight_window;
            if !window_open {
                // Not polled until the device acknowledges: dropped (it is cancel safe), so that
                // it holds nothing of the session meanwhile, as no call at all did before.
                event = None;
            }
            tokio::select! {
                () = &mut cancelled => return Ok(Ending::ByServer),
                () = &mut keep_alive => {
                    // Armed for the deadline of an earlier packet: re-armed until no packet
                    // came for a whole idle time.
                    let due = last_packet + self.idle;
                    if Instant::now() >= due {
                        return Err(ProtocolViolation::KeepAliveExpired.into());
                    }
                    keep_alive.as_mut().reset(due);
                }
                input = next_input(&mut self.transport, handled) => match input {
                    Input::Idle => {
                        self.flush().await?;
                        handled = 0;
                    }
                    Input::Closed => return Ok(Ending::Abnormal),
                    Input::Packet(read) => {
                        if !self.handle(read?).await? {
                            return Ok(Ending::Clean);
                        }
                        handled += 1;
                        // Measured from the end of handling: a throttled append is not idleness.
                        last_packet = Instant::now();
                    }
                },
                // In a block: made (and the session called) only when the branch is polled.
                handed = async { event.get_or_insert_with(|| next_event(&session)).await },
                    if window_open =>
                {
                    event = None;
                    if !self.deliver(handed?).await? {
                        return Ok(Ending::ByServer);
                    }
                }
            }
        }
    }

    /// Handles one packet from the device; `false` after DISCONNECT.
    async fn handle(&mut self, packet: Packet) -> Result<bool, Error> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(*publish).await?,
            Packet::PublishAck { packet_id } => self.handle_puback(packet_id).await?,
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => self.handle_subscribe(packet_id, topic_filters).await?,
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                for filter in &topic_filters {
                    if self.module && topics::is_inputs_filter(filter, &self.owner) {
                        continue;
                    }
                    let kind = topics::classify_filter(filter, &self.owner)?;
                    self.unsubscribe(kind).await?;
                }
                self.write(Packet::UnsubscribeAck { packet_id }).await?;
            }
            Packet::PingRequest => self.write(Packet::PingResponse).await?,
            Packet::Disconnect => return Ok(false),
            Packet::Connect(_) => return Err(ProtocolViolation::SecondConnect.into()),
            Packet::PublishReceived { .. }
            | Packet::PublishRelease { .. }
            | Packet::PublishComplete { .. } => return Err(ProtocolViolation::QoS2.into()),
            Packet::ConnectAck(_) => return Err(ProtocolViolation::Unexpected("CONNACK").into()),
            Packet::SubscribeAck { .. } => {
                return Err(ProtocolViolation::Unexpected("SUBACK").into());
            }
            Packet::UnsubscribeAck { .. } => {
                return Err(ProtocolViolation::Unexpected("UNSUBACK").into());
            }
            Packet::PingResponse => return Err(ProtocolViolation::Unexpected("PINGRESP").into()),
        }
        Ok(true)
    }

    async fn handle_publish(&mut self, publish: Publish) -> Result<(), Error> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(ProtocolViolation::QoS2.into());
        }
        match topics::classify_publish(&publish.topic, &self.owner)? {
            Inbound::Telemetry { bag } => {
                // Nothing is stored for later subscribers; a retained message is passed on
                // marked `mqtt-retain: true`, as IoT Hub does.
                let flags = telemetry::Flags {
                    will: false,
                    retain: publish.retain,
                };
                let message = telemetry::from_publish(bag, publish.payload, flags)?;
                self.send_telemetry(message).await?;
            }
            Inbound::TwinGet { rid } => {
                let (status, body) = match self.session.get_twin().await {
                    Ok(twin) => (200, Bytes::from(twin.to_device_json().to_string())),
                    Err(e) => error_answer(&e)?,
                };
                self.answer_twin(topics::twin_response_topic(status, &rid, None), body)
                    .await?;
            }
            Inbound::TwinPatchReported { rid } => {
                let answer = match serde_json::from_slice(&publish.payload) {
                    Err(_) => (400, None, Bytes::from_static(b"{\"message\":\"not JSON\"}")),
                    Ok(patch) => match self.session.patch_reported(patch).await {
                        Ok(version) => (204, Some(version), Bytes::new()),
                        Err(e) => {
                            let (status, body) = error_answer(&e)?;
                            (status, None, body)
                        }
                    },
                };
                let (status, version, body) = answer;
                self.answer_twin(topics::twin_response_topic(status, &rid, version), body)
                    .await?;
            }
            Inbound::MethodResponse { status, rid } => {
                let response = rid.parse::<u64>().map(|request_id| MethodResponse {
                    request_id,
                    status,
                    payload: publish.payload,
                });
                match response {
                    Err(_) => {
                        tracing::debug!(device = %self.device, "method response with an unknown $rid")
                    }
                    Ok(response) => {
                        let request_id = response.request_id;
                        match self.session.respond_method(response).await {
                            Ok(()) => {}
                            Err(e @ GatewayError::UnknownMethodRequest { .. }) => {
                                tracing::debug!(device = %self.device, request_id, error = %e, "late method response");
                            }
                            // A malformed answer fails that one call (the invoker is told at
                            // once); it is no reason to cut the device off. The PUBACK below is
                            // still sent: the answer was received, just not accepted.
                            Err(
                                e @ (GatewayError::InvalidMethodResponse { .. }
                                | GatewayError::InvalidInput { .. }
                                | GatewayError::TooLarge { .. }),
                            ) => {
                                tracing::debug!(device = %self.device, request_id, error = %e, "method response refused");
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
        if let Some(packet_id) = publish.packet_id {
            self.write(Packet::PublishAck { packet_id }).await?;
        }
        Ok(())
    }

    /// Appends telemetry, waiting out throttling (backpressure on the device) a bounded number of
    /// times.
    async fn send_telemetry(&mut self, message: Telemetry) -> Result<(), Error> {
        if self.shared.config.throttle_retries == 0 || !self.session.throttles_telemetry() {
            // Nothing to retry: no copy of the message to keep.
            return Ok(self.session.send_telemetry(message).await?);
        }
        let mut attempts = 0;
        loop {
            match self.session.send_telemetry(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(GatewayError::Throttled { retry_after, .. })
                    if attempts < self.shared.config.throttle_retries =>
                {
                    attempts += 1;
                    tokio::time::sleep(retry_after.max(Duration::from_millis(1))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn handle_puback(&mut self, packet_id: NonZeroU16) -> Result<(), Error> {
        match self.inflight.remove(&packet_id.get()) {
            Some(Inflight::C2d(token)) => match self.session.complete(token).await {
                Ok(()) => Ok(()),
                // The lock lapsed while the device held the message: it will come again.
                Err(e @ GatewayError::LockLost { .. }) => {
                    tracing::debug!(device = %self.device, error = %e, "C2D completed too late");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            None => Err(ProtocolViolation::UnknownPacketId(packet_id.get()).into()),
        }
    }

    async fn handle_subscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS)>,
    ) -> Result<(), Error> {
        let mut status = Vec::with_capacity(filters.len());
        for (filter, asked) in &filters {
            // The device protocol has no QoS 2: grant at most 1.
            let granted = if *asked == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            if self.module && topics::is_inputs_filter(filter, &self.owner) {
                // Granted, as IoT Hub does, but nothing arrives: a module's inputs are fed by
                // IoT Edge's routes between modules, which this hub does not run.
                status.push(SubscribeReturnCode::Success(granted));
                continue;
            }
            let kind = topics::classify_filter(filter, &self.owner)?;
            self.subscribe(kind, granted).await?;
            status.push(SubscribeReturnCode::Success(granted));
        }
        self.write(Packet::SubscribeAck { packet_id, status })
            .await?;
        if self
            .subscriptions
            .get(Subscription::TwinResponses)
            .is_some()
        {
            while let Some((topic, body)) = self.pending_twin.pop_front() {
                self.publish(topic, body, QoS::AtMostOnce, None).await?;
            }
        }
        Ok(())
    }

    /// Records a subscription and tells the gateway to start delivering that kind.
    async fn subscribe(&mut self, kind: Subscription, qos: QoS) -> Result<(), Error> {
        self.subscriptions.insert(kind, qos);
        if let Some(gateway_kind) = delivered_by_gateway(kind) {
            self.session.subscribe(gateway_kind).await?;
        }
        Ok(())
    }

    /// Forgets a subscription and tells the gateway to stop delivering that kind. C2D messages
    /// already in flight stay in `inflight`: a PUBACK after the UNSUBSCRIBE still completes them.
    async fn unsubscribe(&mut self, kind: Subscription) -> Result<(), Error> {
        self.subscriptions.remove(kind);
        if let Some(gateway_kind) = delivered_by_gateway(kind) {
            self.session.unsubscribe(gateway_kind).await?;
        }
        Ok(())
    }

    /// Sends a twin answer now, or keeps it until the device subscribes to twin answers.
    async fn answer_twin(&mut self, topic: String, body: Bytes) -> Result<(), Error> {
        if self
            .subscriptions
            .get(Subscription::TwinResponses)
            .is_some()
        {
            return self.publish(topic, body, QoS::AtMostOnce, None).await;
        }
        if self.pending_twin.len() == MAX_PENDING_TWIN_ANSWERS {
            tracing::debug!(device = %self.device, "dropping the oldest unsubscribed twin answer");
            self.pending_twin.pop_front();
        }
        self.pending_twin.push_back((topic, body));
        Ok(())
    }

    /// Hands one gateway event to the device; `false` when the gateway closed the session.
    async fn deliver(&mut self, event: SessionEvent) -> Result<bool, Error> {
        match event {
            SessionEvent::C2d(delivery) => {
                let qos = self
                    .subscriptions
                    .get(Subscription::C2d)
                    .unwrap_or(QoS::AtLeastOnce);
                let bag = telemetry::c2d_bag(&delivery, &self.c2d_to);
                let topic = topics::c2d_topic(
                    self.device.as_str(),
                    bag.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                );
                let token = delivery.lock_token;
                if qos == QoS::AtMostOnce {
                    // At most once, as the device asked: settled as soon as it is written.
                    self.publish(topic, delivery.payload, qos, None).await?;
                    self.session.complete(token).await?;
                } else {
                    self.publish(topic, delivery.payload, qos, Some(Inflight::C2d(token)))
                        .await?;
                }
            }
            SessionEvent::DesiredPatch(patch) => {
                let body = Bytes::from(patch.to_versioned_json().to_string());
                self.publish(
                    topics::desired_patch_topic(patch.version),
                    body,
                    QoS::AtMostOnce,
                    None,
                )
                .await?;
            }
            SessionEvent::Method(request) => {
                let rid = request.request_id.to_string();
                let topic = topics::method_request_topic(&request.name, &rid);
                self.publish(topic, request.payload, QoS::AtMostOnce, None)
                    .await?;
            }
            SessionEvent::Closed(reason) => {
                tracing::info!(device = %self.device, %reason, "gateway closed the session");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes a PUBLISH; at QoS 1 it takes a packet id and waits in the in-flight window.
    async fn publish(
        &mut self,
        topic: String,
        payload: Bytes,
        qos: QoS,
        inflight: Option<Inflight>,
    ) -> Result<(), Error> {
        let packet_id = match inflight {
            Some(entry) if qos == QoS::AtLeastOnce => {
                let id = self.allocate_packet_id();
                self.inflight.insert(id.get(), entry);
                Some(id)
            }
            _ => None,
        };
        let publish = Publish {
            dup: false,
            retain: false,
            qos: if packet_id.is_some() {
                qos
            } else {
                QoS::AtMostOnce
            },
            topic: ByteString::from(topic),
            packet_id,
            payload,
            properties: None,
        };
        self.write(Packet::Publish(Box::new(publish))).await
    }

    /// The next packet id not in flight (the window is far smaller than the id space).
    fn allocate_packet_id(&mut self) -> NonZeroU16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if let Some(id) = NonZeroU16::new(id)
                && !self.inflight.contains_key(&id.get())
            {
                return id;
            }
        }
    }

    /// Puts a packet in the write buffer; the loop writes the buffer out when the device has
    /// nothing more to read ([`Input::Idle`]), and `finish` when the connection ends.
    async fn write(&mut self, packet: Packet) -> Result<(), Error> {
        transport::buffer(
            &mut self.transport,
            packet,
            self.shared.config.write_timeout,
        )
        .await
    }

    /// Writes out what [`write`](Connection::write) buffered.
    async fn flush(&mut self) -> Result<(), Error> {
        transport::flush(&mut self.transport, self.shared.config.write_timeout).await
    }

    /// Ends the connection: the will if the device vanished, subscriptions kept for a persistent
    /// session, the gateway session closed (its unsettled C2D messages go back to the inbox).
    async fn finish(&mut self, ending: Ending) {
        if ending == Ending::Abnormal
            && let Some(will) = self.will.take()
            && let Err(e) = self.session.send_telemetry(will).await
        {
            tracing::info!(device = %self.device, error = %e, "the will could not be sent");
        }
        if !self.module {
            self.shared
                .persistent
                .keep(&self.device, self.clean_session, self.subscriptions)
                .await;
        }
        self.session.close().await;
        transport::close(&mut self.transport, self.shared.config.write_timeout).await;
        tracing::debug!(device = %self.device, ?ending, "MQTT session closed");
    }
}

/// A `next_event` that owns its session, so that it can wait across packets while the
/// connection handles them.
fn next_event(session: &Arc<dyn DeviceSession>) -> NextEvent {
    let session = Arc::clone(session);
    Box::pin(async move { session.next_event().await })
}

/// The gateway subscription behind an MQTT one; `None` for twin answers, which the endpoint
/// produces itself in reply to the device's own requests.
fn delivered_by_gateway(kind: Subscription) -> Option<GatewaySubscription> {
    match kind {
        Subscription::C2d => Some(GatewaySubscription::C2d),
        Subscription::DesiredPatches => Some(GatewaySubscription::DesiredPatches),
        Subscription::Methods => Some(GatewaySubscription::Methods),
        Subscription::TwinResponses => None,
    }
}

/// A twin request's failure as IoT Hub answers it: a status and a JSON body. Errors that end the
/// session are returned instead.
fn error_answer(e: &GatewayError) -> Result<(u16, Bytes), Error> {
    let status = match e {
        GatewayError::SessionClosed { .. } | GatewayError::Shutdown => {
            return Err(Error::Io(io::Error::other(e.to_string())));
        }
        GatewayError::InvalidInput { .. } | GatewayError::InvalidProperty { .. } => 400,
        GatewayError::TooLarge { .. } => 413,
        GatewayError::Throttled { .. } => 429,
        GatewayError::PreconditionFailed { .. } => 412,
        _ => 500,
    };
    let body = serde_json::json!({ "message": e.to_string() }).to_string();
    Ok((status, Bytes::from(body)))
}
