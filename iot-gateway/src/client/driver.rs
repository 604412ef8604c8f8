//! The connection task: connects, restores subscriptions, sends the outbox, answers and
//! dispatches what the hub sends, renews the SAS token by reconnecting, and reconnects with
//! backoff when the connection is lost.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use iot_identity::sas;
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Connect, ConnectAckReason, Packet, QoS};
use rustls::ClientConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use super::link::{self, Link};
use super::message::{Ack, C2dMessage, DesiredPatch, MethodCall, TwinReply};
use super::options::{Auth, ClientOptions};
use super::outbox::Outbox;
use super::topics::{self, Incoming};

/// The connection as the application sees it (see [`DeviceClient::connection_state`](super::DeviceClient::connection_state)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection (first time, after a loss, or to renew the token).
    Connecting,
    /// CONNACK accepted; `generation` counts connections since the client started.
    Connected {
        /// 1 for the first connection, then one more per reconnect or renewal.
        generation: u64,
    },
    /// The last attempt failed or the connection was lost; the next attempt is in `retry_in`.
    Disconnected {
        /// Why (without secrets).
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The client was closed.
    Closed,
}

/// How long a token renewal waits for the in-flight telemetry to be acknowledged before it
/// reconnects anyway (well inside the fifth of the token's life left at that point).
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// How long a connection must last for the backoff to start again from its first delay.
const STABLE: Duration = Duration::from_secs(10);

/// Requests from the client handles to the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Keep `filter` subscribed (now and after every reconnect); `done` once SUBACKed.
    Subscribe {
        filter: String,
        qos: QoS,
        done: oneshot::Sender<()>,
    },
    /// A twin request: `topic` gets `?$rid=…` appended; resent after a reconnect until answered.
    Twin {
        topic: String,
        body: Bytes,
        reply: TwinReply,
    },
    /// A QoS 0 PUBLISH (method answers), dropped while disconnected.
    Publish { topic: String, payload: Bytes },
    /// Completes a C2D message received on connection `epoch`.
    PubAck { epoch: u64, packet_id: NonZeroU16 },
    /// Disconnect and stop.
    Close { done: oneshot::Sender<()> },
}

/// Where the connection task hands what the hub sends.
#[derive(Debug)]
pub(crate) struct Sinks {
    pub(crate) c2d: mpsc::UnboundedSender<C2dMessage>,
    pub(crate) desired: mpsc::UnboundedSender<DesiredPatch>,
    pub(crate) methods: mpsc::UnboundedSender<MethodCall>,
}

pub(crate) struct Driver {
    pub(crate) options: Arc<ClientOptions>,
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// Handed to C2D messages and method calls so that they can answer.
    pub(crate) command_tx: mpsc::UnboundedSender<Command>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) sinks: Sinks,
    subscriptions: BTreeSet<(String, u8)>,
    /// Subscribe requests waiting for a SUBACK (of the next SUBSCRIBE, when disconnected).
    sub_waiters: Vec<oneshot::Sender<()>>,
    twins: HashMap<u64, (String, Bytes, TwinReply)>,
    next_rid: u64,
    epoch: u64,
    packet_id: u16,
    /// One past the highest sequence number ever sent: lower ones sent again carry DUP.
    high_water: u64,
    /// Handed to C2D messages so that they can be rejected and abandoned over HTTPS.
    #[cfg(feature = "client-https")]
    https: Option<super::https::HttpsSettler>,
}

/// How a connection ended.
enum End {
    Lost(String),
    Renew,
    Closed(Option<oneshot::Sender<()>>),
}

impl Driver {
    pub(crate) fn new(
        options: Arc<ClientOptions>,
        tls: Arc<ClientConfig>,
        outbox: Arc<Outbox>,
        commands: mpsc::UnboundedReceiver<Command>,
        command_tx: mpsc::UnboundedSender<Command>,
        state: watch::Sender<ConnectionState>,
        sinks: Sinks,
    ) -> Self {
        Driver {
            #[cfg(feature = "client-https")]
            https: super::https::HttpsSettler::new(&options, &tls),
            options,
            tls,
            outbox,
            commands,
            command_tx,
            state,
            sinks,
            subscriptions: BTreeSet::new(),
            sub_waiters: Vec::new(),
            twins: HashMap::new(),
            next_rid: 1,
            epoch: 0,
            packet_id: 0,
            high_water: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            self.state.send_replace(ConnectionState::Connecting);
            let connected =
                match tokio::time::timeout(self.options.connect_timeout, self.connect()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "no CONNACK within {:?}",
                        self.options.connect_timeout
                    )),
                };
            let reason = match connected {
                Ok((link, token_expiry)) => {
                    let since = Instant::now();
                    match self.connected(link, token_expiry).await {
                        End::Renew => {
                            attempt = 0;
                            continue;
                        }
                        End::Closed(done) => {
                            self.finish(done);
                            return;
                        }
                        End::Lost(reason) => {
                            // Only a connection that held counts as recovered: one the hub
                            // accepts and then drops at once must not be retried at the
                            // shortest delay forever.
                            if since.elapsed() >= STABLE {
                                attempt = 0;
                            }
                            reason
                        }
                    }
                }
                Err(reason) => reason,
            };
            let delay = self.options.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tracing::info!(%reason, retry_in = ?delay, device = %self.options.device_id, "device client disconnected");
            self.state.send_replace(ConnectionState::Disconnected {
                reason,
                retry_in: delay,
            });
            if let Some(done) = self.wait_disconnected(delay).await {
                self.finish(done);
                return;
            }
        }
    }

    fn finish(&mut self, done: Option<oneshot::Sender<()>>) {
        self.state.send_replace(ConnectionState::Closed);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Sleeps `delay` while taking commands; `Some` if the client is closing.
    async fn wait_disconnected(&mut self, delay: Duration) -> Option<Option<oneshot::Sender<()>>> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return None,
                command = self.commands.recv() => match command {
                    None => return Some(None),
                    Some(Command::Close { done }) => return Some(Some(done)),
                    Some(Command::Subscribe { filter, qos, done }) => {
                        self.subscriptions.insert((filter, qos_u8(qos)));
                        self.sub_waiters.push(done);
                    }
                    Some(Command::Twin { topic, body, reply }) => {
                        let rid = self.next_rid;
                        self.next_rid += 1;
                        self.twins.insert(rid, (topic, body, reply));
                    }
                    // Method answers and C2D completions belong to a connection that is gone:
                    // the hub has timed the call out or will deliver the message again.
                    Some(Command::Publish { .. } | Command::PubAck { .. }) => {}
                },
            }
        }
    }

    fn next_packet_id(&mut self, in_use: &HashMap<NonZeroU16, u64>) -> NonZeroU16 {
        loop {
            self.packet_id = self.packet_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.packet_id)
                && !in_use.contains_key(&id)
            {
                return id;
            }
        }
    }

    /// Opens a link and does the CONNECT handshake; returns the token's expiry (when signed here).
    async fn connect(&mut self) -> Result<(Link, Option<Instant>), String> {
        let mut link = link::open(&self.options, &self.tls).await?;
        let (password, renew_at) = match &self.options.auth {
            Auth::Key(key) => {
                let lifetime = self.options.token_lifetime.as_secs().max(1);
                let token = sas::generate(
                    &self.options.sas_resource(),
                    key,
                    sas::unix_now() + lifetime,
                    None,
                )
                .map_err(|e| format!("signing the SAS token: {e}"))?;
                (
                    Some(Bytes::copy_from_slice(token.as_str().as_bytes())),
                    Some(Instant::now() + self.options.renew_after()),
                )
            }
            Auth::Token(token) => (Some(Bytes::copy_from_slice(token.as_bytes())), None),
            Auth::X509 { .. } => (None, None),
        };
        let connect = Connect {
            clean_session: true,
            keep_alive: u16::try_from(self.options.keep_alive.as_secs()).unwrap_or(u16::MAX),
            client_id: ByteString::from(self.options.client_id()),
            username: Some(ByteString::from(self.options.username())),
            password,
            ..Connect::default()
        };
        link.writer.send(Packet::Connect(Box::new(connect))).await?;
        match link.packets.recv().await {
            Some(Ok(Packet::ConnectAck(ack))) => match ack.return_code {
                ConnectAckReason::ConnectionAccepted => Ok((link, renew_at)),
                refused => Err(format!("CONNACK refused: {}", refused.reason())),
            },
            Some(Ok(other)) => Err(format!("expected CONNACK, got {other:?}")),
            Some(Err(reason)) => Err(reason),
            None => Err("connection closed before CONNACK".into()),
        }
    }

    async fn connected(&mut self, mut link: Link, renew_at: Option<Instant>) -> End {
        self.epoch += 1;
        let generation = self.epoch;
        self.state
            .send_replace(ConnectionState::Connected { generation });
        tracing::debug!(generation, device = %self.options.device_id, "device client connected");
        match self.serve(&mut link, renew_at).await {
            Ok(end) => end,
            Err(reason) => End::Lost(reason),
        }
    }

    /// The connected loop. `Err` is a lost connection.
    async fn serve(&mut self, link: &mut Link, renew_at: Option<Instant>) -> Result<End, String> {
        // Packet id -> outbox sequence number of each telemetry message in flight.
        let mut in_flight: HashMap<NonZeroU16, u64> = HashMap::new();
        // Packet id of the SUBSCRIBE whose SUBACK releases `sub_waiters`.
        let mut subscribe_id: Option<NonZeroU16> = None;
        // Sending starts over from the oldest unacknowledged message: the ones in flight on the
        // lost connection are sent again (marked DUP), in order, before newer ones.
        let mut next_seq = self.outbox.oldest().await;

        if !self.subscriptions.is_empty() {
            let id = self.next_packet_id(&in_flight);
            self.send_subscribe(link, id).await?;
            subscribe_id = Some(id);
        }
        // Requests whose caller gave up are not sent again.
        self.twins.retain(|_, (_, _, reply)| !reply.is_closed());
        let pending: Vec<u64> = self.twins.keys().copied().collect();
        for rid in pending {
            self.send_twin(link, rid).await?;
        }

        let keep_alive = self.options.keep_alive.max(Duration::from_secs(1));
        let mut ping_at = Instant::now() + keep_alive;
        let mut awaiting_pong = false;
        let mut draining = false;
        let mut renew_at =
            renew_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));

        loop {
            // Renewing: the window is drained before reconnecting, so that a renewal does not
            // turn in-flight messages into duplicates.
            if draining && in_flight.is_empty() {
                tracing::debug!(device = %self.options.device_id, "renewing the SAS token: reconnecting");
                let _ = link.writer.send(Packet::Disconnect).await;
                return Ok(End::Renew);
            }
            // Fill the in-flight window from the outbox, oldest first.
            let room = if draining {
                0
            } else {
                self.options.max_in_flight.saturating_sub(in_flight.len())
            };
            if room > 0 {
                let entries = self.outbox.entries_from(next_seq, room).await;
                let mut publishes = Vec::with_capacity(entries.len());
                for entry in entries {
                    let id = self.next_packet_id(&in_flight);
                    in_flight.insert(id, entry.seq);
                    next_seq = entry.seq + 1;
                    let dup = entry.seq < self.high_water;
                    self.high_water = self.high_water.max(next_seq);
                    let publish = Publish {
                        dup,
                        retain: false,
                        qos: QoS::AtLeastOnce,
                        topic: entry.topic,
                        packet_id: Some(id),
                        payload: entry.payload,
                        properties: None,
                    };
                    publishes.push(Packet::Publish(Box::new(publish)));
                }
                // The whole refill in one write.
                link.writer.send_all(publishes).await?;
            }

            tokio::select! {
                first = link.packets.recv() => {
                    // Every packet already decoded is handled before the window is refilled,
                    // so that a run of PUBACKs refills it in one write, not one per PUBACK, and
                    // is recorded in the outbox at once.
                    let mut received = first;
                    let mut acked = Vec::new();
                    let handled = loop {
                    let packet = match received {
                        Some(Ok(p)) => p,
                        Some(Err(reason)) => break Err(reason),
                        None => break Err("connection closed".into()),
                    };
                    awaiting_pong = false;
                    match packet {
                        Packet::PublishAck { packet_id } => {
                            if let Some(seq) = in_flight.remove(&packet_id) {
                                acked.push(seq);
                            }
                        }
                        Packet::SubscribeAck { packet_id, .. } => {
                            if subscribe_id == Some(packet_id) {
                                subscribe_id = None;
                                for done in self.sub_waiters.drain(..) {
                                    let _ = done.send(());
                                }
                            }
                        }
                        Packet::Publish(publish) => {
                            if let Err(e) = self.dispatch(link, *publish).await {
                                break Err(e);
                            }
                        }
                        Packet::PingResponse | Packet::UnsubscribeAck { .. } => {}
                        other => break Err(format!("unexpected packet from the hub: {other:?}")),
                    }
                    received = match link.packets.try_recv() {
                        Ok(next) => Some(next),
                        Err(mpsc::error::TryRecvError::Empty) => break Ok(()),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                    };
                    // Recorded even when the connection just ended: those need no resend.
                    if let Err(e) = self.outbox.acknowledge_all(&acked).await {
                        tracing::warn!(error = %e, "outbox: recording acknowledgements failed");
                    }
                    handled?;
                }
                command = self.commands.recv() => match command {
                    None => {
                        let _ = link.writer.send(Packet::Disconnect).await;
                        return Ok(End::Closed(None));
                    }
                    Some(Command::Close { done }) => {
                        let _ = link.writer.send(Packet::Disconnect).await;
                        return Ok(End::Closed(Some(done)));
                    }
                    Some(Command::Subscribe { filter, qos, done }) => {
                        if self.subscriptions.insert((filter, qos_u8(qos))) {
                            // A new filter: SUBSCRIBE the whole set (re-subscribing the others
                            // is harmless) and answer every waiter with its SUBACK.
                            self.sub_waiters.push(done);
                            let id = self.next_packet_id(&in_flight);
                            self.send_subscribe(link, id).await?;
                            subscribe_id = Some(id);
                        } else if subscribe_id.is_some() {
                            self.sub_waiters.push(done);
                        } else {
                            // Already acknowledged on this connection.
                            let _ = done.send(());
                        }
                    }
                    Some(Command::Twin { topic, body, reply }) => {
                        let rid = self.next_rid;
                        self.next_rid += 1;
                        self.twins.insert(rid, (topic, body, reply));
                        self.send_twin(link, rid).await?;
                    }
                    Some(Command::Publish { topic, payload }) => {
                        let publish = Publish {
                            dup: false,
                            retain: false,
                            qos: QoS::AtMostOnce,
                            topic: ByteString::from(topic),
                            packet_id: None,
                            payload,
                            properties: None,
                        };
                        link.writer.send(Packet::Publish(Box::new(publish))).await?;
                    }
                    Some(Command::PubAck { epoch, packet_id }) => {
                        if epoch == self.epoch {
                            link.writer.send(Packet::PublishAck { packet_id }).await?;
                        }
                    }
                },
                _ = self.outbox.queued.notified() => {}
                _ = sleep_until(ping_at) => {
                    if awaiting_pong {
                        return Err("no PINGRESP within the keep-alive".into());
                    }
                    link.writer.send(Packet::PingRequest).await?;
                    awaiting_pong = true;
                    ping_at = Instant::now() + keep_alive;
                }
                _ = sleep_until(renew_at) => {
                    if draining {
                        // The window did not drain in time: reconnect anyway (what is still in
                        // flight is sent again, marked DUP).
                        let _ = link.writer.send(Packet::Disconnect).await;
                        return Ok(End::Renew);
                    }
                    draining = true;
                    renew_at = Instant::now() + DRAIN_PATIENCE;
                }
            }
        }
    }

    async fn send_subscribe(
        &mut self,
        link: &mut Link,
        packet_id: NonZeroU16,
    ) -> Result<(), String> {
        let topic_filters = self
            .subscriptions
            .iter()
            .map(|(filter, qos)| {
                let qos = if *qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                (ByteString::from(filter.as_str()), qos)
            })
            .collect();
        link.writer
            .send(Packet::Subscribe {
                packet_id,
                topic_filters,
            })
            .await
    }

    async fn send_twin(&mut self, link: &mut Link, rid: u64) -> Result<(), String> {
        let Some((topic, body, _)) = self.twins.get(&rid) else {
            return Ok(());
        };
        let publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: ByteString::from(format!("{topic}?$rid={rid}")),
            packet_id: None,
            payload: body.clone(),
            properties: None,
        };
        link.writer.send(Packet::Publish(Box::new(publish))).await
    }

    /// Hands a PUBLISH from the hub to its stream.
    async fn dispatch(&mut self, link: &mut Link, publish: Publish) -> Result<(), String> {
        let c2d_prefix = format!(
            "{}/messages/devicebound/",
            topics::identity_prefix(&self.options.device_id, self.options.module_id.as_deref())
        );
        let mut ack_now = publish.packet_id;
        match topics::classify(&publish.topic, &c2d_prefix) {
            Incoming::C2d { bag } => {
                // The application completes it (or does not).
                ack_now = None;
                let message = C2dMessage {
                    payload: publish.payload.clone(),
                    properties: topics::decode_bag(bag),
                    ack: publish.packet_id.map(|packet_id| Ack {
                        epoch: self.epoch,
                        packet_id,
                        commands: self.command_tx.clone(),
                    }),
                    #[cfg(feature = "client-https")]
                    https: self.https.clone(),
                };
                if self.sinks.c2d.send(message).is_err() {
                    tracing::debug!("C2D message with nobody listening; left to the hub");
                }
            }
            Incoming::TwinResponse { status, bag } => {
                let rid = topics::bag_value(bag, "$rid").and_then(|r| r.parse::<u64>().ok());
                if let Some((_, _, reply)) = rid.and_then(|rid| self.twins.remove(&rid)) {
                    let _ = reply.send((status, bag.to_string(), publish.payload.clone()));
                }
            }
            Incoming::DesiredPatch => {
                match serde_json::from_slice::<serde_json::Value>(&publish.payload) {
                    Ok(patch) => {
                        let version = patch.get("$version").and_then(serde_json::Value::as_u64);
                        let _ = self.sinks.desired.send(DesiredPatch { patch, version });
                    }
                    Err(e) => tracing::warn!(error = %e, "desired patch that is not JSON ignored"),
                }
            }
            Incoming::Method { name, bag } => {
                if let Some(rid) = topics::bag_value(bag, "$rid") {
                    let call = MethodCall {
                        name: name.to_string(),
                        payload: publish.payload.clone(),
                        rid,
                        commands: self.command_tx.clone(),
                    };
                    if self.sinks.methods.send(call).is_err() {
                        tracing::debug!(method = name, "method call with no handler");
                    }
                }
            }
            Incoming::Unknown => {
                tracing::debug!(topic = %publish.topic, "PUBLISH on an unknown topic ignored");
            }
        }
        if let Some(packet_id) = ack_now {
            link.writer.send(Packet::PublishAck { packet_id }).await?;
        }
        Ok(())
    }
}

fn qos_u8(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}
