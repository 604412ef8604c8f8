//! One connection after its handshake: sessions, links, flow control and the event path.
//!
//! | link (client's role) | node | here |
//! | --- | --- | --- |
//! | receiver | `{entity}/ConsumerGroups/{g}/Partitions/{n}` | [`LinkKind::Partition`]: events from the log |
//! | receiver | `$cbs`, `$management` | [`LinkKind::Replies`]: answers to the client's requests |
//! | sender | `$cbs`, `$management` | [`LinkKind::Requests`]: requests, answered at once |
//!
//! A link to anything else, to a partition or consumer group that does not exist, or to a
//! partition before the connection is authorized, is attached and at once detached with an
//! AMQP error (`amqp:not-found`, `amqp:unauthorized-access`, `amqp:not-allowed`), as the spec
//! has a refused link answered. A frame against the protocol closes the connection with an
//! error, and only this connection.
//!
//! Flow control: a partition link sends while the client has given it credit and the session
//! has room in the client's incoming window; each event is one `transfer` (several when it is
//! larger than the client's maximum frame), settled when sent if the client asked for
//! `snd-settle-mode settled`. The client's dispositions need no action (positions are the
//! client's checkpoints), except that an unsettled one is settled for a client that waits for
//! that (`rcv-settle-mode second`). A drain is answered once the queue of read events is empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fe2o3_amqp::types::definitions::{
    AmqpError, Error as AmqpErr, Fields, Handle, Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, TargetArchetype};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, Disposition, End, Flow, MaxFrameSize, Open,
    Performative, Transfer,
};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use iot_core::{Offset, PartitionId, StoredRecord};
use iot_gateway::adapter::{AMQP_FRAME, AmqpWireError, TransferFields, TransferFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::feed::{Fed, Feed};
use super::reader::{FrameReader, RawFrame};
use super::{EngineError, write_body};
use crate::eventhubs::Shared;
use crate::eventhubs::address::{self, Node};
use crate::eventhubs::claims::{Claims, unix_now};
use crate::eventhubs::encode_event;
use crate::eventhubs::management::{self, Request};
use crate::eventhubs::position;

/// The highest channel a client may begin a session on.
const CHANNEL_MAX: u16 = 255;
/// The highest link handle on a session.
const HANDLE_MAX: u32 = 1024;
/// The session windows this endpoint announces (fe2o3-amqp's default, as before).
const SESSION_WINDOW: u32 = 2048;
/// Credit a request link ($cbs, $management) is given, and topped up to.
const REQUEST_CREDIT: u32 = 100;
/// How long the client may stay silent (announced in `open`; heartbeats count).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Events one link sends before the others get their turn.
const TURN: usize = 256;
/// Bytes one pump writes before the buffer is flushed (the links go on in the next round).
const FLUSH_AT: usize = 1024 * 1024;
/// Answers waiting for a reply link's credit; a client that sends requests without reading
/// the answers loses those beyond this.
const MAX_QUEUED_REPLIES: usize = 64;
/// Receive links on partitions one connection may hold (a reader needs one per partition).
const MAX_PARTITION_LINKS: usize = 256;
/// A write that takes longer than this ends the connection (a client that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The smallest maximum frame size AMQP allows.
const MIN_MAX_FRAME_SIZE: u32 = 512;
/// Room for a `transfer` performative with every field this endpoint sets, at its largest.
const TRANSFER_OVERHEAD: usize = 64;

/// The `properties` every `open`, `begin` and `attach` of this endpoint carries.
///
/// Why: AMQP lets a peer leave trailing empty fields out of a performative, and serde_amqp
/// does; but `azure-eventhub`'s own AMQP stack (pyamqp) reads the last field of `open`, `begin`
/// and `attach` by index and fails on a shorter list. Setting the last field makes every field
/// be sent.
pub(crate) fn fields() -> Fields {
    let mut f = Fields::new();
    f.insert(Symbol::from("product"), Value::String("iot-sdk".to_owned()));
    f
}

/// What the client's `open` settled.
#[derive(Debug)]
pub(crate) struct Opened {
    max_frame_size: usize,
    peer_idle: Option<Duration>,
}

/// Reads the client's `open` and answers it.
pub(crate) async fn open<R, W>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    writer: &mut W,
) -> Result<Opened, EngineError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = reader.frame().await?;
    if frame.frame_type != AMQP_FRAME {
        return Err(EngineError::Frame("expected open".into()));
    }
    let Some((Performative::Open(theirs), _)) = frame.performative()? else {
        return Err(EngineError::Protocol("the first frame was not open"));
    };
    let ours = Open {
        container_id: "iot-sdk-eventhubs".to_owned(),
        hostname: None,
        max_frame_size: MaxFrameSize(shared.config.max_frame_size),
        channel_max: ChannelMax(CHANNEL_MAX),
        idle_time_out: Some(IDLE_TIMEOUT.as_millis() as u32),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: Some(fields()),
    };
    let mut out = Vec::new();
    write_body(&mut out, AMQP_FRAME, 0, &ours)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    let max_frame_size = theirs
        .max_frame_size
        .0
        .max(MIN_MAX_FRAME_SIZE)
        .min(shared.config.max_frame_size.max(MIN_MAX_FRAME_SIZE))
        as usize;
    Ok(Opened {
        max_frame_size,
        peer_idle: theirs
            .idle_time_out
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms))),
    })
}

/// A client's session (this endpoint answers on the same channel number).
#[derive(Debug)]
struct Session {
    /// The transfer id of the next frame this endpoint sends.
    next_outgoing_id: u32,
    /// The delivery id of the next delivery this endpoint sends.
    next_delivery_id: u32,
    /// Transfer frames the client will still take.
    remote_incoming_window: u32,
    /// The transfer id of the client's next frame.
    next_incoming_id: u32,
    /// Transfer frames this endpoint will still take.
    incoming_window: u32,
    /// By handle (this endpoint's handle is the client's).
    links: HashMap<u32, Link>,
    /// Reply links by the addresses requests name in `reply-to` (and by node).
    replies: HashMap<String, u32>,
}

#[derive(Debug)]
struct Link {
    kind: LinkKind,
    /// This endpoint's deliveries go out settled.
    settled: bool,
    credit: u32,
    delivery_count: u32,
    drain: bool,
}

#[derive(Debug)]
enum LinkKind {
    /// Events of a partition, read by `feed` into `queue`.
    Partition {
        id: u64,
        feed: Feed,
        queue: VecDeque<StoredRecord>,
        /// A batch was asked for and has not arrived.
        asked: bool,
        /// An event being sent in parts.
        large: Option<LargeDelivery>,
    },
    /// Encoded answers waiting for credit, and one being sent in parts.
    Replies {
        queue: VecDeque<Vec<u8>>,
        large: Option<LargeDelivery>,
    },
    /// Requests to a node, and the delivery being received.
    Requests {
        node: Node,
        partial: Option<(u32, bool, Vec<u8>)>,
    },
    /// Detached by this endpoint; the client's detach is awaited.
    Detached,
}

/// What the loop waits for.
enum Event {
    Stop,
    Frame(Result<RawFrame, EngineError>),
    Fed(Option<Fed>),
    Tick,
    Continue,
}

/// One connection's state.
pub(crate) struct Connection<W> {
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    writer: W,
    out: Vec<u8>,
    max_frame_size: usize,
    peer_idle: Option<Duration>,
    last_write: Instant,
    last_read: Instant,
    sessions: HashMap<u16, Session>,
    fed_tx: mpsc::UnboundedSender<Fed>,
    fed_rx: mpsc::UnboundedReceiver<Fed>,
    /// Partition links by id: where a reader's batch goes.
    partition_links: HashMap<u64, (u16, u32)>,
    next_link_id: u64,
    /// The links in the order of the last pump (kept to reuse its allocation).
    order: Vec<(u16, u32)>,
    /// Pumps so far: where the next one starts in `order`.
    round: usize,
}

impl<W: AsyncWrite + Unpin> Connection<W> {
    pub(crate) fn new(shared: Arc<Shared>, claims: Arc<Claims>, open: Opened, writer: W) -> Self {
        let (fed_tx, fed_rx) = mpsc::unbounded_channel();
        Connection {
            shared,
            claims,
            writer,
            out: Vec::with_capacity(64 * 1024),
            max_frame_size: open.max_frame_size,
            peer_idle: open.peer_idle,
            last_write: Instant::now(),
            last_read: Instant::now(),
            sessions: HashMap::new(),
            fed_tx,
            fed_rx,
            partition_links: HashMap::new(),
            next_link_id: 0,
            order: Vec::new(),
            round: 0,
        }
    }

    /// Serves the connection until the client closes it, it fails, or `stop` turns true.
    pub(crate) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), EngineError> {
        // Often enough to send a heartbeat within half the client's idle timeout.
        let period = self.peer_idle.map_or(Duration::from_secs(1), |idle| {
            (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        });
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let more = self.pump()?;
            self.flush().await?;
            let event = tokio::select! {
                biased;
                _ = stop.changed() => Event::Stop,
                frame = reader.frame() => Event::Frame(frame),
                fed = self.fed_rx.recv() => Event::Fed(fed),
                _ = tick.tick() => Event::Tick,
                _ = std::future::ready(()), if more => Event::Continue,
            };
            match event {
                Event::Stop => return Ok(()),
                Event::Frame(Ok(frame)) => {
                    self.last_read = Instant::now();
                    let handled = self.handle(frame).await;
                    match handled {
                        Ok(true) => {}
                        Ok(false) => {
                            self.flush().await?;
                            return Ok(());
                        }
                        Err(e) => return Err(self.close_with(e).await),
                    }
                }
                Event::Frame(Err(e)) => return Err(self.close_with(e).await),
                // The connection holds a sender: never `None`.
                Event::Fed(fed) => {
                    if let Some(fed) = fed {
                        self.fed(fed);
                    }
                }
                Event::Tick => {
                    if let Err(e) = self.tick() {
                        return Err(self.close_with(e).await);
                    }
                }
                Event::Continue => {}
            }
        }
    }

    /// Sends `close` with the error's condition (best effort) and hands the error back.
    async fn close_with(&mut self, e: EngineError) -> EngineError {
        if !matches!(e, EngineError::Io(_) | EngineError::Closed) {
            let close = Close {
                error: Some(AmqpErr::new(e.condition(), Some(e.to_string()), None)),
            };
            if write_body(&mut self.out, AMQP_FRAME, 0, &close).is_ok() {
                let _ = self.flush().await;
            }
        }
        e
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await
        })
        .await;
        self.out.clear();
        // A burst leaves a large buffer behind: give it back.
        if self.out.capacity() > 4 * 1024 * 1024 {
            self.out.shrink_to(64 * 1024);
        }
        self.last_write = Instant::now();
        match written {
            Ok(result) => Ok(result?),
            Err(_) => Err(EngineError::TimedOut("the client does not read")),
        }
    }

    fn write<T: serde_amqp::serde::Serialize>(
        &mut self,
        channel: u16,
        value: &T,
    ) -> Result<(), EngineError> {
        write_body(&mut self.out, AMQP_FRAME, channel, value)
    }

    /// Heartbeats, the client's silence, and expired claims.
    fn tick(&mut self) -> Result<(), EngineError> {
        if let Some(idle) = self.peer_idle
            && self.last_write.elapsed() >= idle / 2
        {
            // An empty frame: the client's idle timer restarts.
            self.out
                .extend_from_slice(&[0, 0, 0, 8, 2, AMQP_FRAME, 0, 0]);
        }
        if self.last_read.elapsed() > IDLE_TIMEOUT {
            return Err(EngineError::TimedOut("the client was silent too long"));
        }
        if self.claims.valid_until(unix_now()).is_none() {
            let expired: Vec<(u16, u32)> = self
                .sessions
                .iter()
                .flat_map(|(ch, s)| {
                    s.links.iter().filter_map(move |(h, l)| {
                        matches!(l.kind, LinkKind::Partition { .. }).then_some((*ch, *h))
                    })
                })
                .collect();
            for (ch, handle) in expired {
                self.detach_with(
                    ch,
                    handle,
                    AmqpError::UnauthorizedAccess,
                    "the token expired",
                )?;
            }
        }
        Ok(())
    }

    /// A reader's batch arrived.
    fn fed(&mut self, (id, batch): Fed) {
        let Some(&(ch, handle)) = self.partition_links.get(&id) else {
            return; // the link is gone
        };
        let link = self
            .sessions
            .get_mut(&ch)
            .and_then(|s| s.links.get_mut(&handle));
        let Some(Link {
            kind: LinkKind::Partition { queue, asked, .. },
            ..
        }) = link
        else {
            return;
        };
        *asked = false;
        match batch {
            Ok(records) => queue.extend(records),
            Err(e) => {
                tracing::warn!(error = %e, "reading the telemetry log");
                if let Err(e) =
                    self.detach_with(ch, handle, AmqpError::InternalError, "the log failed")
                {
                    tracing::debug!(error = %e, "detaching a link");
                }
            }
        }
    }

    /// Detaches (closes) a link with an error; the client's detach is then awaited.
    fn detach_with(
        &mut self,
        ch: u16,
        handle: u32,
        condition: AmqpError,
        description: &str,
    ) -> Result<(), EngineError> {
        if let Some(link) = self
            .sessions
            .get_mut(&ch)
            .and_then(|s| s.links.get_mut(&handle))
        {
            if let LinkKind::Partition { id, .. } = link.kind {
                self.partition_links.remove(&id);
            }
            link.kind = LinkKind::Detached;
        }
        let detach = Detach {
            handle: Handle(handle),
            closed: true,
            error: Some(AmqpErr::new(condition, Some(description.to_owned()), None)),
        };
        self.write(ch, &detach)
    }

    /// Handles one frame; `Ok(false)` once the connection is closed.
    async fn handle(&mut self, frame: RawFrame) -> Result<bool, EngineError> {
        if frame.frame_type != AMQP_FRAME {
            return Err(EngineError::Frame("a SASL frame after SASL".into()));
        }
        let Some((performative, payload)) = frame.performative()? else {
            return Ok(true); // a heartbeat
        };
        let ch = frame.channel;
        if !matches!(
            performative,
            Performative::Begin(_) | Performative::Close(_) | Performative::Open(_)
        ) && !self.sessions.contains_key(&ch)
        {
            return Err(EngineError::Protocol(
                "a frame on a channel with no session",
            ));
        }
        match performative {
            Performative::Open(_) => return Err(EngineError::Protocol("a second open")),
            Performative::Close(_) => {
                self.write(0, &Close { error: None })?;
                return Ok(false);
            }
            Performative::Begin(begin) => self.begin(ch, begin)?,
            Performative::End(_) => self.end(ch)?,
            Performative::Attach(attach) => self.attach(ch, attach).await?,
            Performative::Flow(flow) => self.flow(ch, flow)?,
            Performative::Transfer(transfer) => self.transfer(ch, transfer, payload).await?,
            Performative::Disposition(disposition) => self.disposition(ch, disposition)?,
            Performative::Detach(detach) => self.detach(ch, detach)?,
        }
        Ok(true)
    }

    fn begin(&mut self, ch: u16, begin: Begin) -> Result<(), EngineError> {
        if begin.remote_channel.is_some() {
            return Err(EngineError::Protocol(
                "begin answering a session never begun",
            ));
        }
        if ch > CHANNEL_MAX || self.sessions.contains_key(&ch) {
            return Err(EngineError::Protocol(
                "begin on a channel in use or over the maximum",
            ));
        }
        self.sessions.insert(
            ch,
            Session {
                next_outgoing_id: 0,
                next_delivery_id: 0,
                remote_incoming_window: begin.incoming_window,
                next_incoming_id: begin.next_outgoing_id,
                incoming_window: SESSION_WINDOW,
                links: HashMap::new(),
                replies: HashMap::new(),
            },
        );
        let ours = Begin {
            remote_channel: Some(ch),
            next_outgoing_id: 0,
            incoming_window: SESSION_WINDOW,
            outgoing_window: SESSION_WINDOW,
            handle_max: Handle(HANDLE_MAX),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(fields()),
        };
        self.write(ch, &ours)
    }

    fn end(&mut self, ch: u16) -> Result<(), EngineError> {
        if let Some(session) = self.sessions.remove(&ch) {
            for link in session.links.values() {
                if let LinkKind::Partition { id, .. } = link.kind {
                    self.partition_links.remove(&id);
                }
            }
        }
        self.write(ch, &End { error: None })
    }

    async fn attach(&mut self, ch: u16, attach: Attach) -> Result<(), EngineError> {
        let handle = attach.handle.0;
        let session = self
            .sessions
            .get(&ch)
            .ok_or(EngineError::Protocol("no session"))?;
        if handle > HANDLE_MAX || session.links.contains_key(&handle) {
            return Err(EngineError::Protocol(
                "attach with a handle in use or over the maximum",
            ));
        }
        // The client's role: a receiver reads from the node named by its source.
        let client_receives = attach.role == Role::Receiver;
        let node_address = if client_receives {
            source_address(&attach)
        } else {
            target_address(&attach)
        };
        let node = node_address.as_deref().and_then(address::parse);
        let ours = Attach {
            name: attach.name.clone(),
            handle: Handle(handle),
            role: if client_receives {
                Role::Sender
            } else {
                Role::Receiver
            },
            snd_settle_mode: attach.snd_settle_mode.clone(),
            rcv_settle_mode: attach.rcv_settle_mode.clone(),
            source: attach.source.clone(),
            target: attach.target.clone(),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(fields()),
        };
        self.write(ch, &ours)?;
        let settled = attach.snd_settle_mode == SenderSettleMode::Settled;
        let link = |kind| Link {
            kind,
            settled,
            credit: 0,
            delivery_count: 0,
            drain: false,
        };
        let refuse = |this: &mut Self, condition, description: &str| {
            this.insert(ch, handle, link(LinkKind::Detached));
            this.detach_with(ch, handle, condition, description)
        };
        match (node, client_receives) {
            (Some(Node::Partition { .. }), true)
                if self.partition_links.len() >= MAX_PARTITION_LINKS =>
            {
                refuse(
                    self,
                    AmqpError::ResourceLimitExceeded,
                    "too many receive links on this connection",
                )
            }
            (
                Some(Node::Partition {
                    entity,
                    group,
                    partition,
                }),
                true,
            ) => {
                match self
                    .partition_start(&entity, &group, &partition, &attach)
                    .await
                {
                    Ok((partition, from)) => {
                        let id = self.next_link_id;
                        self.next_link_id += 1;
                        let feed = Feed::start(
                            self.shared.log.clone(),
                            partition,
                            from,
                            id,
                            self.fed_tx.clone(),
                        );
                        tracing::debug!(
                            partition = partition.0,
                            group,
                            from = from.0,
                            "receive link opened"
                        );
                        self.partition_links.insert(id, (ch, handle));
                        self.insert(
                            ch,
                            handle,
                            link(LinkKind::Partition {
                                id,
                                feed,
                                queue: VecDeque::new(),
                                asked: false,
                                large: None,
                            }),
                        );
                        Ok(())
                    }
                    Err((condition, description)) => refuse(self, condition, description),
                }
            }
            (Some(node @ (Node::Cbs | Node::Management)), true) => {
                // A reply link: answers go to its source and to its target (the client's
                // `reply-to`, when it sets one).
                let key = node_key(&node);
                let reply_address = target_address(&attach);
                if let Some(session) = self.sessions.get_mut(&ch) {
                    session.replies.insert(key.to_owned(), handle);
                    if let Some(address) = reply_address {
                        session.replies.insert(address, handle);
                    }
                }
                self.insert(
                    ch,
                    handle,
                    link(LinkKind::Replies {
                        queue: VecDeque::new(),
                        large: None,
                    }),
                );
                Ok(())
            }
            (Some(node @ (Node::Cbs | Node::Management)), false) => {
                let mut requests = link(LinkKind::Requests {
                    node,
                    partial: None,
                });
                requests.delivery_count = attach.initial_delivery_count.unwrap_or(0);
                requests.credit = REQUEST_CREDIT;
                self.insert(ch, handle, requests);
                self.link_flow(ch, handle, false)
            }
            (_, true) => refuse(self, AmqpError::NotFound, "no such node"),
            (_, false) => refuse(
                self,
                AmqpError::NotAllowed,
                "this endpoint takes no messages there",
            ),
        }
    }

    fn insert(&mut self, ch: u16, handle: u32, link: Link) {
        if let Some(session) = self.sessions.get_mut(&ch) {
            session.links.insert(handle, link);
        }
    }

    /// Where a partition link starts, or why it is refused.
    async fn partition_start(
        &self,
        entity: &str,
        group: &str,
        partition: &str,
        attach: &Attach,
    ) -> Result<(PartitionId, Offset), (AmqpError, &'static str)> {
        let config = &self.shared.config;
        if !entity.eq_ignore_ascii_case(&config.entity) {
            return Err((AmqpError::NotFound, "no such event hub"));
        }
        if !config
            .consumer_groups
            .iter()
            .any(|g| g.eq_ignore_ascii_case(group))
        {
            return Err((AmqpError::NotFound, "no such consumer group"));
        }
        let Some(id) = partition
            .parse::<u32>()
            .ok()
            .filter(|p| *p < self.shared.log.partition_count())
        else {
            return Err((AmqpError::NotFound, "no such partition"));
        };
        if self.claims.valid_until(unix_now()).is_none() {
            return Err((AmqpError::UnauthorizedAccess, "put a token on $cbs first"));
        }
        let start = match selector(attach).as_deref().map(position::parse) {
            None => position::Start::Earliest,
            Some(Some(start)) => start,
            Some(None) => return Err((AmqpError::InvalidField, "unsupported filter")),
        };
        match position::resolve(self.shared.log.as_ref(), PartitionId(id), start).await {
            Ok(from) => Ok((PartitionId(id), from)),
            Err(e) => {
                tracing::warn!(error = %e, "resolving a starting position");
                Err((AmqpError::InternalError, "the log failed"))
            }
        }
    }

    /// Sends a link's flow state.
    fn link_flow(&mut self, ch: u16, handle: u32, drain: bool) -> Result<(), EngineError> {
        let Some(session) = self.sessions.get(&ch) else {
            return Ok(());
        };
        let Some(link) = session.links.get(&handle) else {
            return Ok(());
        };
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: session.incoming_window,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: SESSION_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: None,
            drain,
            echo: false,
            properties: None,
        };
        self.write(ch, &flow)
    }

    /// Sends the session's flow state.
    fn session_flow(&mut self, ch: u16) -> Result<(), EngineError> {
        let Some(session) = self.sessions.get(&ch) else {
            return Ok(());
        };
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: session.incoming_window,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: SESSION_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.write(ch, &flow)
    }

    fn flow(&mut self, ch: u16, flow: Flow) -> Result<(), EngineError> {
        let session = self
            .sessions
            .get_mut(&ch)
            .ok_or(EngineError::Protocol("no session"))?;
        // The client's window, as of the transfers this endpoint has sent since.
        let window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(session.next_outgoing_id);
        session.remote_incoming_window = if window > i32::MAX as u32 { 0 } else { window };
        let Some(handle) = flow.handle.map(|h| h.0) else {
            return if flow.echo {
                self.session_flow(ch)
            } else {
                Ok(())
            };
        };
        // A link this endpoint already detached (or never had): nothing to update.
        let Some(link) = session.links.get_mut(&handle) else {
            return Ok(());
        };
        if matches!(
            link.kind,
            LinkKind::Partition { .. } | LinkKind::Replies { .. }
        ) {
            let credit = flow
                .delivery_count
                .unwrap_or(0)
                .wrapping_add(flow.link_credit.unwrap_or(0))
                .wrapping_sub(link.delivery_count);
            link.credit = if credit > i32::MAX as u32 { 0 } else { credit };
            link.drain = flow.drain;
        }
        if flow.echo {
            self.link_flow(ch, handle, false)?;
        }
        Ok(())
    }

    async fn transfer(
        &mut self,
        ch: u16,
        transfer: Transfer,
        payload: Bytes,
    ) -> Result<(), EngineError> {
        let session = self
            .sessions
            .get_mut(&ch)
            .ok_or(EngineError::Protocol("no session"))?;
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_window = session.incoming_window.saturating_sub(1);
        let replenish = session.incoming_window < SESSION_WINDOW / 2;
        if replenish {
            session.incoming_window = SESSION_WINDOW;
        }
        let handle = transfer.handle.0;
        let link = session.links.get_mut(&handle);
        let complete = match link {
            Some(Link {
                kind: LinkKind::Requests { partial, .. },
                ..
            }) => {
                if transfer.aborted {
                    *partial = None;
                    None
                } else {
                    let (id, settled, mut bytes) = match partial.take() {
                        Some(p) => p,
                        None => (
                            transfer
                                .delivery_id
                                .ok_or(EngineError::Protocol("a delivery without an id"))?,
                            transfer.settled.unwrap_or(false),
                            Vec::new(),
                        ),
                    };
                    bytes.extend_from_slice(&payload);
                    if transfer.more {
                        *partial = Some((id, settled, bytes));
                        None
                    } else {
                        Some((id, settled, bytes))
                    }
                }
            }
            Some(Link {
                kind: LinkKind::Detached,
                ..
            }) => None,
            Some(_) => return Err(EngineError::Protocol("a transfer on a link that sends")),
            None => return Err(EngineError::Protocol("a transfer on an unknown handle")),
        };
        if replenish {
            self.session_flow(ch)?;
        }
        let Some((id, settled, bytes)) = complete else {
            return Ok(());
        };
        // The request counts against the link's credit, topped up at half.
        let node = {
            let Some(link) = self
                .sessions
                .get_mut(&ch)
                .and_then(|s| s.links.get_mut(&handle))
            else {
                return Ok(());
            };
            link.delivery_count = link.delivery_count.wrapping_add(1);
            link.credit = link.credit.saturating_sub(1);
            let LinkKind::Requests { node, .. } = &link.kind else {
                return Ok(());
            };
            let node = node.clone();
            if link.credit < REQUEST_CREDIT / 2 {
                link.credit = REQUEST_CREDIT;
                self.link_flow(ch, handle, false)?;
            }
            node
        };
        if !settled {
            let disposition = Disposition {
                role: Role::Receiver,
                first: id,
                last: None,
                settled: true,
                state: Some(DeliveryState::Accepted(Accepted {})),
                batchable: false,
            };
            self.write(ch, &disposition)?;
        }
        let request: Request = match serde_amqp::from_slice::<Deserializable<Request>>(&bytes) {
            Ok(Deserializable(request)) => request,
            Err(e) => {
                tracing::debug!(error = %e, "a request that is no message");
                return self.detach_with(ch, handle, AmqpError::DecodeError, "not a message");
            }
        };
        let answer = match node {
            Node::Cbs => management::cbs(&self.shared, &self.claims, &request),
            _ => management::management(&self.shared, &self.claims, &request).await,
        };
        let reply_to = request
            .properties
            .as_ref()
            .and_then(|p| p.reply_to.as_ref())
            .map(|a| a.to_string());
        let Some(session) = self.sessions.get_mut(&ch) else {
            return Ok(());
        };
        let target = reply_to
            .and_then(|r| session.replies.get(&r).copied())
            .or_else(|| session.replies.get(node_key(&node)).copied());
        let queue = target.and_then(|h| match session.links.get_mut(&h) {
            Some(Link {
                kind: LinkKind::Replies { queue, .. },
                ..
            }) => Some(queue),
            _ => None,
        });
        match queue {
            Some(queue) if queue.len() >= MAX_QUEUED_REPLIES => {
                tracing::debug!("answers not read: one dropped");
            }
            Some(queue) => {
                let encoded = serde_amqp::to_vec(&Serializable(&answer))
                    .map_err(|e| EngineError::Encode(e.to_string()))?;
                queue.push_back(encoded);
            }
            None => tracing::debug!("a request without a reply link"),
        }
        Ok(())
    }

    /// The client settles this endpoint's deliveries: nothing to do, except to settle in
    /// turn what the client left unsettled (a client with `rcv-settle-mode second` waits
    /// for that).
    fn disposition(&mut self, ch: u16, disposition: Disposition) -> Result<(), EngineError> {
        if disposition.role != Role::Receiver || disposition.settled {
            return Ok(());
        }
        let ours = Disposition {
            role: Role::Sender,
            first: disposition.first,
            last: disposition.last,
            settled: true,
            state: disposition.state,
            batchable: false,
        };
        self.write(ch, &ours)
    }

    fn detach(&mut self, ch: u16, detach: Detach) -> Result<(), EngineError> {
        let handle = detach.handle.0;
        let session = self
            .sessions
            .get_mut(&ch)
            .ok_or(EngineError::Protocol("no session"))?;
        let Some(link) = session.links.remove(&handle) else {
            return Err(EngineError::Protocol("detach of an unknown handle"));
        };
        session.replies.retain(|_, h| *h != handle);
        match link.kind {
            // This endpoint detached it first: the client's detach answers ours.
            LinkKind::Detached => Ok(()),
            kind => {
                if let LinkKind::Partition { id, .. } = kind {
                    self.partition_links.remove(&id);
                }
                let ours = Detach {
                    handle: Handle(handle),
                    closed: detach.closed,
                    error: None,
                };
                self.write(ch, &ours)
            }
        }
    }

    /// Writes what the links may send now into the output buffer. Returns whether more is
    /// ready to go (a link had more than its turn).
    fn pump(&mut self) -> Result<bool, EngineError> {
        let mut more = false;
        let mut drained = Vec::new();
        let max_frame_size = self.max_frame_size;
        // Links take turns in a rotating order, so that none waits behind the others for
        // long: each sends at most `TURN` events, and a pump stops at `FLUSH_AT` bytes.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        for (&ch, session) in &self.sessions {
            order.extend(session.links.keys().map(|&handle| (ch, handle)));
        }
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left(self.round % n);
        }
        self.round = self.round.wrapping_add(1);
        for &(ch, handle) in &order {
            if self.out.len() >= FLUSH_AT {
                more = true;
                break;
            }
            let Some(session) = self.sessions.get_mut(&ch) else {
                continue;
            };
            let Session {
                links,
                next_outgoing_id,
                next_delivery_id,
                remote_incoming_window,
                ..
            } = session;
            let mut window = Window {
                next_outgoing_id,
                remaining: remote_incoming_window,
            };
            let Some(link) = links.get_mut(&handle) else {
                continue;
            };
            let Link {
                kind,
                settled,
                credit,
                delivery_count,
                drain,
            } = link;
            let mut sender = LinkSender {
                out: &mut self.out,
                channel: ch,
                handle,
                settled: *settled,
                credit,
                delivery_count,
                next_delivery_id,
                window: &mut window,
                max_frame_size,
            };
            let drained_now = match kind {
                LinkKind::Partition {
                    queue,
                    feed,
                    asked,
                    large,
                    ..
                } => {
                    more |= sender.send_queued(queue, large, TURN, write_event)?;
                    if queue.is_empty() && !*asked {
                        feed.want();
                        *asked = true;
                    }
                    queue.is_empty() && large.is_none()
                }
                LinkKind::Replies { queue, large } => {
                    sender.send_queued(queue, large, usize::MAX, write_encoded)?;
                    queue.is_empty() && large.is_none()
                }
                LinkKind::Requests { .. } | LinkKind::Detached => false,
            };
            if *drain && *credit > 0 && drained_now {
                drained.push((ch, handle));
            }
        }
        self.order = order;
        // A drain with nothing left to send: the rest of the credit is used up.
        for (ch, handle) in drained {
            if let Some(link) = self
                .sessions
                .get_mut(&ch)
                .and_then(|s| s.links.get_mut(&handle))
            {
                link.delivery_count = link.delivery_count.wrapping_add(link.credit);
                link.credit = 0;
                link.drain = false;
            }
            self.link_flow(ch, handle, true)?;
        }
        Ok(more)
    }
}

/// A session's outgoing transfer ids and the room left in the client's incoming window.
struct Window<'a> {
    next_outgoing_id: &'a mut u32,
    remaining: &'a mut u32,
}

impl Window<'_> {
    /// One transfer frame sent.
    fn take(&mut self) {
        *self.next_outgoing_id = self.next_outgoing_id.wrapping_add(1);
        *self.remaining -= 1;
    }
}

/// A delivery's identity on its link and session.
///
/// Every `transfer` is sent `batchable`, so that it carries all its fields: pyamqp (under
/// `azure-eventhub`) reads them by position and fails on the shorter list (the same reason as
/// [`fields`]).
#[derive(Debug)]
struct Delivery {
    handle: u32,
    /// The session's delivery id (one per delivery, however many frames it takes).
    id: u32,
    tag: u32,
    settled: bool,
}

impl Delivery {
    /// The next delivery on a link (its handle, settle mode, delivery count and credit): the
    /// session's next delivery id, one credit used.
    fn start(
        handle: u32,
        settled: bool,
        delivery_count: &mut u32,
        credit: &mut u32,
        next_delivery_id: &mut u32,
    ) -> Self {
        let delivery = Delivery {
            handle,
            id: *next_delivery_id,
            tag: *delivery_count,
            settled,
        };
        *next_delivery_id = next_delivery_id.wrapping_add(1);
        *delivery_count = delivery_count.wrapping_add(1);
        *credit -= 1;
        delivery
    }

    fn first_fields<'t>(&self, tag: &'t [u8; 4], more: bool) -> TransferFields<'t> {
        TransferFields {
            handle: self.handle,
            delivery_id: Some(self.id),
            delivery_tag: Some(tag),
            message_format: Some(0),
            settled: Some(self.settled),
            more,
            batchable: true,
        }
    }
}

/// One link's sending side for a pump: what it needs of the connection, its session and
/// itself.
struct LinkSender<'a, 'w> {
    out: &'a mut Vec<u8>,
    channel: u16,
    handle: u32,
    /// This endpoint's deliveries go out settled.
    settled: bool,
    credit: &'a mut u32,
    delivery_count: &'a mut u32,
    next_delivery_id: &'a mut u32,
    window: &'a mut Window<'w>,
    max_frame_size: usize,
}

impl LinkSender<'_, '_> {
    /// Sends from `queue` while the link's credit and the client's window allow, at most
    /// `turn` deliveries: first the rest of a delivery being sent in parts (`large`), then one
    /// delivery per item, written by `write` (which hands back the encoded item when it does
    /// not fit one frame: it then goes out frame by frame as the window allows). Returns
    /// whether the turn ran out with more to send.
    fn send_queued<T>(
        &mut self,
        queue: &mut VecDeque<T>,
        large: &mut Option<LargeDelivery>,
        turn: usize,
        write: impl Fn(&mut Vec<u8>, u16, &Delivery, T, usize) -> Result<Option<Vec<u8>>, AmqpWireError>,
    ) -> Result<bool, EngineError> {
        let mut sent = 0;
        loop {
            if sent == turn {
                return Ok(true);
            }
            if *self.window.remaining == 0 {
                return Ok(false);
            }
            if let Some(delivery) = large {
                if !delivery.send(
                    self.out,
                    self.channel,
                    self.handle,
                    self.max_frame_size,
                    self.window,
                )? {
                    return Ok(false); // the window is used up
                }
                *large = None;
                sent += 1;
                continue;
            }
            if *self.credit == 0 {
                return Ok(false);
            }
            let Some(item) = queue.pop_front() else {
                return Ok(false);
            };
            let delivery = Delivery::start(
                self.handle,
                self.settled,
                self.delivery_count,
                self.credit,
                self.next_delivery_id,
            );
            match write(self.out, self.channel, &delivery, item, self.max_frame_size)? {
                None => {
                    self.window.take();
                    sent += 1;
                }
                // Larger than one frame: sent frame by frame, as the client's window allows.
                Some(bytes) => {
                    *large = Some(LargeDelivery {
                        delivery,
                        bytes,
                        sent: 0,
                    })
                }
            }
        }
    }
}

/// A delivery larger than one frame, sent a frame at a time as the client's window allows.
#[derive(Debug)]
struct LargeDelivery {
    delivery: Delivery,
    bytes: Vec<u8>,
    /// Bytes sent so far.
    sent: usize,
}

impl LargeDelivery {
    /// Sends frames while the window has room; `true` once the last one is out.
    fn send(
        &mut self,
        out: &mut Vec<u8>,
        channel: u16,
        handle: u32,
        max_frame_size: usize,
        window: &mut Window<'_>,
    ) -> Result<bool, AmqpWireError> {
        let chunk = max_frame_size - TRANSFER_OVERHEAD;
        let tag = self.delivery.tag.to_be_bytes();
        while self.sent < self.bytes.len() {
            if *window.remaining == 0 {
                return Ok(false);
            }
            let end = (self.sent + chunk).min(self.bytes.len());
            let more = end < self.bytes.len();
            let fields = if self.sent == 0 {
                self.delivery.first_fields(&tag, more)
            } else {
                TransferFields {
                    handle,
                    delivery_id: None,
                    delivery_tag: None,
                    message_format: None,
                    settled: None,
                    more,
                    batchable: true,
                }
            };
            let frame = TransferFrame::begin(out, channel, &fields)?;
            out.extend_from_slice(&self.bytes[self.sent..end]);
            frame.end(out)?;
            window.take();
            self.sent = end;
        }
        Ok(true)
    }
}

/// Appends the `transfer` frame of one event when it fits the client's maximum frame size
/// (`None`); otherwise writes nothing and returns the encoded event, to be sent in parts.
fn write_event(
    out: &mut Vec<u8>,
    channel: u16,
    delivery: &Delivery,
    stored: StoredRecord,
    max_frame_size: usize,
) -> Result<Option<Vec<u8>>, AmqpWireError> {
    let stored = &stored;
    let tag = delivery.tag.to_be_bytes();
    let start = out.len();
    let frame = TransferFrame::begin(out, channel, &delivery.first_fields(&tag, false))?;
    encode_event(stored, out)?;
    if out.len() - start <= max_frame_size {
        frame.end(out)?;
        return Ok(None);
    }
    drop(frame);
    out.truncate(start);
    let mut bytes = Vec::new();
    encode_event(stored, &mut bytes)?;
    Ok(Some(bytes))
}

/// Appends the `transfer` frame of an encoded message (an answer) when it fits the client's
/// maximum frame size (`None`); otherwise writes nothing and hands the message back, to be
/// sent in parts.
fn write_encoded(
    out: &mut Vec<u8>,
    channel: u16,
    delivery: &Delivery,
    message: Vec<u8>,
    max_frame_size: usize,
) -> Result<Option<Vec<u8>>, AmqpWireError> {
    if message.len() + TRANSFER_OVERHEAD > max_frame_size {
        return Ok(Some(message));
    }
    let tag = delivery.tag.to_be_bytes();
    let frame = TransferFrame::begin(out, channel, &delivery.first_fields(&tag, false))?;
    out.extend_from_slice(&message);
    frame.end(out)?;
    Ok(None)
}

fn source_address(attach: &Attach) -> Option<String> {
    attach
        .source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .map(|a| a.to_string())
}

fn target_address(attach: &Attach) -> Option<String> {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(t)) => t.address.as_ref().map(|a| a.to_string()),
        _ => None,
    }
}

/// The selector expression of the source's filter, if any.
fn selector(attach: &Attach) -> Option<String> {
    let filters = attach.source.as_ref()?.filter.as_ref()?;
    filters.iter().find_map(|(_, value)| match value {
        Value::Described(d) => {
            let named = match &d.descriptor {
                serde_amqp::descriptor::Descriptor::Name(n) => {
                    n.as_str() == position::SELECTOR_FILTER
                }
                serde_amqp::descriptor::Descriptor::Code(c) => *c == position::SELECTOR_FILTER_CODE,
            };
            match (&d.value, named) {
                (Value::String(s), true) => Some(s.clone()),
                _ => None,
            }
        }
        _ => None,
    })
}

fn node_key(node: &Node) -> &'static str {
    match node {
        Node::Cbs => "$cbs",
        _ => "$management",
    }
}
