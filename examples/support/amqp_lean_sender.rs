//! A lean AMQP device sender for `amqp_bench`, built on the adapter kit's public AMQP pieces
//! (`TransferFrame`, `AmqpEncoder`, `AmqpDecoder`, through `amqp_lean_conn.rs`) and
//! fe2o3-amqp's performative types for the set-up frames: SASL PLAIN with the device's SAS
//! token, `open`, `begin`, one sender link to `/devices/{id}/messages/events`, then each
//! message as one unsettled transfer (a `properties` section with the message id and a `data`
//! section), at most `window` awaiting their disposition, within the link credit and the
//! session window the endpoint grants.
//!
//! Why: fe2o3-amqp's client builds every message as a `Message` of owned values, serializes it
//! through serde and passes it through three tasks (link, session, connection) each way; on the
//! benchmark machine that costs more per message than the endpoint itself, on the same two
//! cores, so a benchmark sending through it measures the client. This sender writes each
//! message in place and reads dispositions in place, as rumqttc, the MQTT phase's client, does
//! for MQTT. Every disposition is checked: a message the endpoint did not accept fails the run.
//! The benchmark prints fe2o3-amqp's figure too.
// A benchmark's set-up: a failure there is a bug of the benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;

use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{Attach, Close, Detach, End};
use iot_sdk::gateway::adapter::{
    AMQP_FRAME, AmqpDecoder, AmqpEncoder, TransferFields, TransferFrame,
};

use super::eventhubs_read::amqp_lean_conn::Conn;

/// The sender link's handle.
const LINK: u32 = 0;
// Descriptor codes (AMQP 1.0 part 2, 2.7; part 3, 3.2 and 3.4).
const BEGIN: u64 = 0x11;
const FLOW: u64 = 0x13;
const DISPOSITION: u64 = 0x15;
const DETACH: u64 = 0x16;
const END: u64 = 0x17;
const CLOSE: u64 = 0x18;
const ACCEPTED: u64 = 0x24;
const PROPERTIES: u64 = 0x73;
const DATA: u64 = 0x75;

pub(crate) struct LeanSender {
    c: Conn,
    id: String,
    /// Transfers the endpoint's session takes before it widens its window.
    remote_window: u32,
    /// Deliveries the link may still send.
    credit: u32,
    /// Deliveries sent (each one transfer): the next delivery id, transfer id and the link's
    /// delivery count.
    sent: u32,
    /// Deliveries the endpoint accepted.
    accepted: u32,
}

/// An unsigned field that may be `null`.
fn optional_uint(d: &mut AmqpDecoder<'_>) -> Option<u32> {
    if d.null() {
        None
    } else {
        Some(d.uint().unwrap())
    }
}

/// What is left of a grant of `granted` counted from `from` once `used` is reached (none if
/// the grant is already used up).
fn room(from: u32, granted: u32, used: u32) -> u32 {
    let left = i64::from(from) + i64::from(granted) - i64::from(used);
    u32::try_from(left.max(0)).unwrap_or(u32::MAX)
}

impl LeanSender {
    /// Connects device `id` of `hub` with its SAS `token` and attaches its telemetry link;
    /// returns once the endpoint granted credit.
    pub(crate) async fn connect(addr: SocketAddr, hub: &str, id: &str, token: &str) -> Self {
        let mut c = Conn::connect_plain(addr, &format!("{id}@sas.{hub}"), token).await;
        c.open_session(id, LINK);
        c.frame(
            AMQP_FRAME,
            &Attach {
                name: "events".into(),
                handle: Handle(LINK),
                role: Role::Sender,
                snd_settle_mode: SenderSettleMode::Unsettled,
                rcv_settle_mode: ReceiverSettleMode::First,
                source: Some(Box::new(Source::builder().address(id).build())),
                target: Some(Box::new(TargetArchetype::Target(
                    Target::builder()
                        .address(format!("/devices/{id}/messages/events"))
                        .build(),
                ))),
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: Some(0),
                max_message_size: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            },
        );
        c.flush().await;
        assert_eq!(c.bytes(8).await, b"AMQP\x00\x01\x00\x00");
        let mut sender = LeanSender {
            c,
            id: id.to_owned(),
            remote_window: 0,
            credit: 0,
            sent: 0,
            accepted: 0,
        };
        while sender.credit == 0 {
            sender.next_frame().await;
        }
        sender
    }

    /// Sends `messages` messages of `payload` bytes, at most `window` awaiting their
    /// disposition; returns once the endpoint accepted them all.
    pub(crate) async fn send(&mut self, messages: u32, payload: usize, window: u32) {
        let body = vec![7u8; payload];
        let mut message_id = String::new();
        while self.accepted < messages {
            while self.sent < messages
                && self.sent - self.accepted < window
                && self.credit > 0
                && self.remote_window > 0
            {
                message_id.clear();
                write!(message_id, "{}-{}", self.id, self.sent).unwrap();
                self.transfer(&message_id, &body);
                // One system call per transfer, as rumqttc writes each PUBLISH of the MQTT
                // phase: gathering them would make the endpoint's reads cheaper than the MQTT
                // endpoint's and the comparison unfair (docs/performance.md).
                self.c.flush().await;
            }
            self.next_frame().await;
        }
    }

    /// Appends the next delivery: one transfer holding the message.
    fn transfer(&mut self, message_id: &str, body: &[u8]) {
        let tag = self.sent.to_be_bytes();
        let out = &mut self.c.out;
        let frame = TransferFrame::begin(
            out,
            0,
            &TransferFields {
                handle: LINK,
                delivery_id: Some(self.sent),
                delivery_tag: Some(&tag),
                message_format: Some(0),
                settled: Some(false),
                more: false,
                batchable: true,
            },
        )
        .unwrap();
        let mut e = AmqpEncoder::new(out);
        e.descriptor(PROPERTIES);
        let list = e.begin_compound();
        e.string(message_id).unwrap();
        e.end_list(list, 1).unwrap();
        e.descriptor(DATA);
        e.binary(body).unwrap();
        frame.end(out).unwrap();
        self.sent += 1;
        self.credit -= 1;
        self.remote_window -= 1;
    }

    /// Reads one frame and takes from it what the sender needs: the session window (`begin`,
    /// `flow`), the link's credit (`flow`) and the outcomes (`disposition`). A `detach`, `end` or
    /// `close` ends the run: the endpoint refused something.
    async fn next_frame(&mut self) {
        let (body, end) = self.c.next_frame().await;
        if body == end {
            return; // a heartbeat
        }
        let frame = &self.c.buf[body..end];
        let mut d = AmqpDecoder::new(frame);
        match d.descriptor().unwrap() {
            BEGIN => {
                // remote-channel, next-outgoing-id, incoming-window.
                d.list().unwrap();
                d.skip().unwrap();
                d.skip().unwrap();
                self.remote_window = d.uint().unwrap();
            }
            FLOW => {
                let list = d.list().unwrap();
                let next_incoming = optional_uint(&mut d).unwrap_or(0);
                let incoming_window = d.uint().unwrap();
                self.remote_window = room(next_incoming, incoming_window, self.sent);
                d.skip().unwrap(); // next-outgoing-id
                d.skip().unwrap(); // outgoing-window
                if list.count > 6 && optional_uint(&mut d) == Some(LINK) {
                    let delivery_count = optional_uint(&mut d).unwrap_or(0);
                    let link_credit = optional_uint(&mut d).unwrap_or(0);
                    self.credit = room(delivery_count, link_credit, self.sent);
                }
            }
            DISPOSITION => {
                // role, first, last, settled, state.
                d.list().unwrap();
                d.skip().unwrap();
                let first = d.uint().unwrap();
                let last = optional_uint(&mut d).unwrap_or(first);
                d.skip().unwrap();
                let state = d.descriptor().unwrap();
                assert_eq!(
                    state, ACCEPTED,
                    "{}: deliveries {first}..={last} not accepted",
                    self.id
                );
                assert!(
                    last < self.sent,
                    "{}: a disposition for unsent deliveries",
                    self.id
                );
                self.accepted += last - first + 1;
            }
            code @ (DETACH | END | CLOSE) => {
                panic!(
                    "{}: the endpoint ended the run (performative {code:#x}): {frame:?}",
                    self.id
                )
            }
            _ => {}
        }
    }

    /// Detaches the link and closes the connection.
    pub(crate) async fn close(mut self) {
        self.c.frame(
            AMQP_FRAME,
            &Detach {
                handle: Handle(LINK),
                closed: true,
                error: None,
            },
        );
        self.c.frame(AMQP_FRAME, &End { error: None });
        self.c.frame(AMQP_FRAME, &Close { error: None });
        self.c.flush().await;
    }
}
