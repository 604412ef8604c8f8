//! A hub behind the CoAP adapter, devices with SAS tokens, and a raw CoAP client built on the
//! coap-lite codec (the adapter's own codec only encodes the client's datagrams; what the
//! adapter answers is checked byte by byte where it matters).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use iot_core::{DeviceId, Record};
use iot_gateway::coap::{CoapConfig, CoapServer, SAS_QUERY};
use iot_gateway::testkit::{Fixture as _, StoreFixture};
use iot_gateway::{Gateway, Hub};
use iot_identity::{IdentityStore, MemoryIdentityStore};
use tokio::net::UdpSocket;

pub const HOST: &str = "coap.test.local";

/// How long a test waits for an answer that must come.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Fixture {
    pub hub: Arc<Hub>,
    pub store: StoreFixture,
    pub server: CoapServer,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::with_config(CoapConfig::default()).await
    }

    pub async fn with_config(config: CoapConfig) -> Fixture {
        let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
        let hub = Arc::new(
            Hub::builder(identity.clone(), HOST)
                .build()
                .await
                .expect("hub"),
        );
        let store = StoreFixture {
            identity,
            telemetry: hub.telemetry_log().clone(),
            host: HOST.into(),
        };
        let gateway: Arc<dyn Gateway> = hub.clone();
        let server = CoapServer::bind(gateway, config, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        Fixture { hub, store, server }
    }

    /// A new device and a SAS token for it.
    pub async fn device(&self, name: &str) -> (DeviceId, String) {
        self.store.provision(name).await
    }

    pub async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record> {
        self.store.telemetry_of(device).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.server.local_addr()).await
    }
}

/// A raw CoAP client on its own UDP socket.
pub struct Client {
    pub socket: UdpSocket,
    next_id: u16,
}

impl Client {
    pub async fn connect(server: SocketAddr) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        socket.connect(server).await.expect("connect client");
        Client {
            socket,
            next_id: rand::random(),
        }
    }

    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send(bytes).await.expect("send");
    }

    /// The next datagram, if one comes within `wait`.
    pub async fn recv_within(&self, wait: Duration) -> Option<Packet> {
        let mut buf = vec![0u8; 70_000];
        let n = tokio::time::timeout(wait, self.socket.recv(&mut buf))
            .await
            .ok()?
            .expect("recv");
        Some(Packet::from_bytes(&buf[..n]).expect("the adapter sends well-formed CoAP"))
    }

    pub async fn recv(&self) -> Packet {
        self.recv_within(PATIENCE).await.expect("an answer in time")
    }

    /// Sends `request` and returns the response to it (matched by token), sending it again
    /// every second until then, as a CoAP client retransmits a confirmable request (RFC 7252
    /// §4.2; the adapter may drop a request under load and deduplicates the copies).
    pub async fn exchange(&self, request: &Packet) -> Packet {
        let bytes = request.to_bytes().expect("encode");
        let answer = tokio::time::timeout(PATIENCE, async {
            loop {
                self.send_raw(&bytes).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Some(answer) = self
                    .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
                    .await
                {
                    if answer.get_token() == request.get_token() {
                        return answer;
                    }
                }
            }
        })
        .await;
        answer.expect("an answer in time")
    }
}

/// A confirmable request to `path` with `query` options and `payload`.
pub fn request(
    method: RequestType,
    message_id: u16,
    path: &str,
    query: &[String],
    payload: &[u8],
) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = message_id;
    p.set_token(message_id.to_be_bytes().to_vec());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p.payload = payload.to_vec();
    p
}

/// The `sas=…` query option of `token`.
pub fn sas(token: &str) -> String {
    format!("{SAS_QUERY}={token}")
}

pub fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(code) => code,
        other => panic!("not a response: {other:?}"),
    }
}
