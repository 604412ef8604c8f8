//! The Event Hubs endpoint's connection engine at the frame level, where fe2o3-amqp's client
//! cannot go: a drain answered, delivery ids one per delivery, and frames against the
//! protocol closing the connection with an error. Frames are written with the adapter kit and
//! serde_amqp (fe2o3-amqp's types), and read with the kit's `FrameHeader`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Flow, MaxFrameSize, Open, Performative, Transfer,
};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::types::sasl::{SaslInit, SaslOutcome};
use iot_core::{Log, MemoryLog, PartitionId, Record};
use iot_gateway::adapter::{
    AMQP_FRAME, DEFAULT_MAX_DEPTH, FrameHeader, FrameWriter, SASL_FRAME, amqp_value_end,
};
use iot_gateway::http::{PolicyStore, Rights, SharedAccessPolicy};
use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn send<T: serde_amqp::serde::Serialize>(
        &mut self,
        frame_type: u8,
        channel: u16,
        value: &T,
    ) {
        let mut out = Vec::new();
        let frame = FrameWriter::begin(&mut out, frame_type, channel);
        out.extend(serde_amqp::to_vec(value).expect("encode"));
        frame.end(&mut out).expect("frame");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(read > 0, "the endpoint closed the connection");
            self.buf.extend_from_slice(&chunk[..read]);
        }
        self.buf.drain(..n).collect()
    }

    /// The next frame's body (performative and payload).
    async fn frame(&mut self) -> Vec<u8> {
        let header = self.bytes(8).await;
        let h = FrameHeader::parse(&header, u32::MAX)
            .expect("header")
            .expect("8 bytes");
        let rest = self.bytes(h.size as usize - 8).await;
        rest[h.body_offset - 8..].to_vec()
    }

    /// The next AMQP performative, skipping heartbeats.
    async fn performative(&mut self) -> (Performative, Vec<u8>) {
        loop {
            let body = self.frame().await;
            if body.is_empty() {
                continue;
            }
            let end = amqp_value_end(&body, DEFAULT_MAX_DEPTH).expect("a value");
            let p = serde_amqp::from_slice(&body[..end]).expect("a performative");
            return (p, body[end..].to_vec());
        }
    }

    /// Reads until the endpoint closes the socket; returns the performatives it sent.
    async fn until_closed(&mut self) -> Vec<Performative> {
        let mut seen = Vec::new();
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open");
        while self.buf.len() >= 8 {
            let Ok(Some(h)) = FrameHeader::parse(&self.buf, u32::MAX) else {
                break;
            };
            if self.buf.len() < h.size as usize {
                break;
            }
            let frame: Vec<u8> = self.buf.drain(..h.size as usize).collect();
            let body = &frame[h.body_offset..];
            if !body.is_empty() {
                let end = amqp_value_end(body, DEFAULT_MAX_DEPTH).expect("a value");
                seen.push(serde_amqp::from_slice(&body[..end]).expect("a performative"));
            }
        }
        seen
    }
}

/// An endpoint over a log with `records` records in partition 0, and a client that has done
/// SASL PLAIN with the `service` policy, `open` and `begin` on channel 0.
async fn opened(records: usize) -> (Raw, Arc<MemoryLog>, EventHubsEndpoint) {
    let log = Arc::new(MemoryLog::new(2).expect("log"));
    if records > 0 {
        let batch = (0..records)
            .map(|n| Record::new("dev", format!("{n}")).with_header("n", n.to_string()))
            .collect();
        log.append(PartitionId(0), batch).await.expect("append");
    }
    let service = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
    let key = service.primary.expose_base64().to_string();
    let endpoint = EventHubsEndpoint::new(
        log.clone() as Arc<dyn Log>,
        Arc::new(PolicyStore::memory(vec![service])),
        EventHubsConfig::new("hub.local", "hub"),
    );
    let addr: SocketAddr = endpoint
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
    };
    raw.stream
        .write_all(b"AMQP\x03\x01\x00\x00")
        .await
        .expect("write");
    assert_eq!(raw.bytes(8).await, b"AMQP\x03\x01\x00\x00");
    let _mechanisms = raw.frame().await;
    let mut response = b"\0service\0".to_vec();
    response.extend_from_slice(key.as_bytes());
    let init = SaslInit {
        mechanism: "PLAIN".into(),
        initial_response: Some(Binary::from(response)),
        hostname: None,
    };
    raw.send(SASL_FRAME, 0, &init).await;
    let outcome: SaslOutcome = serde_amqp::from_slice(&raw.frame().await).expect("outcome");
    assert!(matches!(
        outcome.code,
        fe2o3_amqp::types::sasl::SaslCode::Ok
    ));
    raw.stream
        .write_all(b"AMQP\x00\x01\x00\x00")
        .await
        .expect("write");
    assert_eq!(raw.bytes(8).await, b"AMQP\x00\x01\x00\x00");
    let open = Open {
        container_id: "raw".into(),
        hostname: None,
        max_frame_size: MaxFrameSize(512),
        channel_max: ChannelMax(0),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    raw.send(AMQP_FRAME, 0, &open).await;
    assert!(matches!(raw.performative().await.0, Performative::Open(_)));
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 10_000,
        outgoing_window: 10_000,
        handle_max: Handle(10),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    raw.send(AMQP_FRAME, 0, &begin).await;
    assert!(matches!(raw.performative().await.0, Performative::Begin(_)));
    (raw, log, endpoint)
}

fn receive_attach(handle: u32) -> Attach {
    Attach {
        name: format!("p{handle}"),
        handle: Handle(handle),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Settled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(
            Source::builder()
                .address("hub/ConsumerGroups/$Default/Partitions/0")
                .build(),
        )),
        target: Some(Box::new(TargetArchetype::Target(
            Target::builder().address("raw").build(),
        ))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn credit(handle: u32, delivery_count: u32, credit: u32, drain: bool) -> Flow {
    Flow {
        next_incoming_id: Some(0),
        incoming_window: 10_000,
        next_outgoing_id: 0,
        outgoing_window: 10_000,
        handle: Some(Handle(handle)),
        delivery_count: Some(delivery_count),
        link_credit: Some(credit),
        available: None,
        drain,
        echo: false,
        properties: None,
    }
}

#[tokio::test]
async fn a_drain_sends_what_there_is_then_gives_the_rest_of_the_credit_back() {
    let (mut raw, _log, _endpoint) = opened(3).await;
    raw.send(AMQP_FRAME, 0, &receive_attach(0)).await;
    assert!(matches!(
        raw.performative().await.0,
        Performative::Attach(_)
    ));
    raw.send(AMQP_FRAME, 0, &credit(0, 0, 10, true)).await;
    // The three events, each a delivery of its own id, then the drained flow.
    for want in 0..3u32 {
        match raw.performative().await.0 {
            Performative::Transfer(t) => {
                assert_eq!(t.delivery_id, Some(want));
                assert_eq!(t.settled, Some(true));
            }
            other => panic!("expected a transfer, got {other:?}"),
        }
    }
    match raw.performative().await.0 {
        Performative::Flow(f) => {
            assert!(f.drain);
            assert_eq!(f.handle, Some(Handle(0)));
            assert_eq!(f.link_credit, Some(0));
            assert_eq!(f.delivery_count, Some(10));
        }
        other => panic!("expected the drained flow, got {other:?}"),
    }
}

#[tokio::test]
async fn a_large_event_takes_several_frames_but_one_delivery_id() {
    let (mut raw, log, _endpoint) = opened(0).await;
    let big = Record::new("dev", vec![b'x'; 2_000]);
    log.append(PartitionId(0), vec![big, Record::new("dev", "small")])
        .await
        .expect("append");
    raw.send(AMQP_FRAME, 0, &receive_attach(0)).await;
    assert!(matches!(
        raw.performative().await.0,
        Performative::Attach(_)
    ));
    raw.send(AMQP_FRAME, 0, &credit(0, 0, 10, false)).await;
    let mut frames = 0;
    let mut payload = Vec::new();
    loop {
        let (p, bytes) = raw.performative().await;
        let Performative::Transfer(t) = p else {
            panic!("expected a transfer, got {p:?}")
        };
        frames += 1;
        payload.extend(bytes);
        if frames == 1 {
            assert_eq!(t.delivery_id, Some(0));
        }
        if !t.more {
            break;
        }
    }
    assert!(frames >= 4, "2 000 bytes in frames of 512: {frames} frames");
    assert!(payload.windows(2_000).any(|w| w.iter().all(|b| *b == b'x')));
    // The next delivery's id is the next number, not the next transfer id.
    match raw.performative().await.0 {
        Performative::Transfer(t) => assert_eq!(t.delivery_id, Some(1)),
        other => panic!("expected a transfer, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_against_the_protocol_close_the_connection_with_an_error() {
    let transfer = Transfer {
        handle: Handle(7),
        delivery_id: Some(0),
        delivery_tag: Some(Binary::from(vec![0])),
        message_format: Some(0),
        settled: Some(true),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    // A transfer on a handle never attached; a second attach on a handle in use; a frame on a
    // channel with no session.
    let (mut raw, _log, _endpoint) = opened(0).await;
    raw.send(AMQP_FRAME, 0, &transfer).await;
    let (mut twice, _log2, _endpoint2) = opened(0).await;
    twice.send(AMQP_FRAME, 0, &receive_attach(1)).await;
    twice.send(AMQP_FRAME, 0, &receive_attach(1)).await;
    let (mut elsewhere, _log3, _endpoint3) = opened(0).await;
    elsewhere.send(AMQP_FRAME, 5, &credit(0, 0, 1, false)).await;
    for client in [&mut raw, &mut twice, &mut elsewhere] {
        let seen = client.until_closed().await;
        let close = seen.iter().find_map(|p| match p {
            Performative::Close(c) => Some(c),
            _ => None,
        });
        assert!(
            close.is_some_and(|c| c.error.is_some()),
            "a close with an error before the socket closed: {seen:?}"
        );
    }
}
