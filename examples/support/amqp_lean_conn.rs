//! The connection half the benchmarks' lean AMQP clients share (`eventhubs_lean_client.rs`,
//! `amqp_lean_sender.rs`): a buffered TCP stream that writes frames (performatives encoded by
//! serde_amqp from fe2o3-amqp's types) and reads whole frames in place with the adapter kit's
//! `FrameHeader`, and the SASL PLAIN exchange both start with.
// A benchmark's set-up: a failure there is a bug of the benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use fe2o3_amqp::types::definitions::Handle;
use fe2o3_amqp::types::performatives::{Begin, ChannelMax, MaxFrameSize, Open};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::SaslInit;
use iot_sdk::gateway::adapter::{AMQP_FRAME, AmqpDecoder, FrameHeader, FrameWriter, SASL_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The session windows both clients offer: as good as unbounded.
pub(crate) const WINDOW: u32 = 1 << 30;
/// What one read asks the socket for at least.
const READ_AHEAD: usize = 256 * 1024;
/// The `sasl-outcome` performative's descriptor code.
const SASL_OUTCOME: u64 = 0x44;

pub(crate) struct Conn {
    stream: TcpStream,
    pub(crate) buf: Vec<u8>,
    start: usize,
    pub(crate) out: Vec<u8>,
}

impl Conn {
    /// Connects and completes SASL PLAIN as `user` with `password`; the AMQP header is next.
    pub(crate) async fn connect_plain(addr: SocketAddr, user: &str, password: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = Conn {
            stream,
            buf: Vec::with_capacity(512 * 1024),
            start: 0,
            out: Vec::new(),
        };
        c.out.extend_from_slice(b"AMQP\x03\x01\x00\x00");
        c.flush().await;
        assert_eq!(c.bytes(8).await, b"AMQP\x03\x01\x00\x00");
        c.next_frame().await; // sasl-mechanisms
        let mut response = format!("\0{user}\0").into_bytes();
        response.extend_from_slice(password.as_bytes());
        c.frame(
            SASL_FRAME,
            &SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: Some(Binary::from(response)),
                hostname: None,
            },
        );
        c.flush().await;
        let (body, end) = c.next_frame().await;
        // sasl-outcome: a list whose first field is the code (0 = ok).
        let mut d = AmqpDecoder::new(&c.buf[body..end]);
        assert_eq!(d.descriptor().unwrap(), SASL_OUTCOME);
        d.list().unwrap();
        assert_eq!(d.uint().unwrap(), 0, "SASL PLAIN accepted");
        c
    }

    /// Appends the AMQP protocol header, `open` (256 KiB frames) and `begin` (channel 0, links
    /// up to `handle_max`); the endpoint's answers are read with the frames that follow.
    pub(crate) fn open_session(&mut self, container_id: &str, handle_max: u32) {
        self.out.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        self.frame(
            AMQP_FRAME,
            &Open {
                container_id: container_id.into(),
                hostname: None,
                max_frame_size: MaxFrameSize(256 * 1024),
                channel_max: ChannelMax(0),
                idle_time_out: None,
                outgoing_locales: None,
                incoming_locales: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            },
        );
        self.frame(
            AMQP_FRAME,
            &Begin {
                remote_channel: None,
                next_outgoing_id: 0,
                incoming_window: WINDOW,
                outgoing_window: WINDOW,
                handle_max: Handle(handle_max),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            },
        );
    }

    /// Appends a frame of `frame_type` on channel 0 holding `value`.
    pub(crate) fn frame<T: serde_amqp::serde::Serialize>(&mut self, frame_type: u8, value: &T) {
        let frame = FrameWriter::begin(&mut self.out, frame_type, 0);
        self.out.extend(serde_amqp::to_vec(value).unwrap());
        frame.end(&mut self.out).unwrap();
    }

    pub(crate) async fn flush(&mut self) {
        self.stream.write_all(&self.out).await.unwrap();
        self.out.clear();
    }

    /// Reads what the socket has into `buf`'s spare capacity (never zeroed: a read costs what
    /// it brings, not the buffer's size), first dropping the frames already taken once they
    /// are most of the buffer.
    async fn fill(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_AHEAD {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_AHEAD);
        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "the endpoint closed the connection");
    }

    /// The next `n` bytes (a protocol header).
    pub(crate) async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() - self.start < n {
            self.fill().await;
        }
        self.start += n;
        self.buf[self.start - n..self.start].to_vec()
    }

    /// The next frame's (start, end) of its body in `buf`, once it is all there.
    pub(crate) async fn next_frame(&mut self) -> (usize, usize) {
        loop {
            if let Some(h) = FrameHeader::parse(&self.buf[self.start..], u32::MAX).unwrap()
                && self.buf.len() - self.start >= h.size as usize
            {
                let body = self.start + h.body_offset;
                self.start += h.size as usize;
                return (body, self.start);
            }
            self.fill().await;
        }
    }
}
