//! An arbitrary byte stream fed to a real session of the MQTT endpoint (`MqttServer::serve`
//! over an in-memory pipe) in front of a `Hub` with in-memory stores: the same path a TCP, TLS
//! or WebSocket connection takes once accepted.
//!
//! Input layout: if byte 0 is even, a valid CONNECT of the provisioned device `fuzz` goes
//! first, so the fuzzer explores the connected state machine (publishes, subscriptions, twin
//! and method topics, acknowledgements) rather than stopping at authentication; if it is odd,
//! the stream is sent as it is (the pre-CONNECT state). The rest of the input follows.
//!
//! Checked: the session ends when its input ends (a hang of 30 s fails), and nothing panics.
//! `MqttServer::serve` runs on this thread (not in a spawned task), so a panic in the session
//! reaches libFuzzer as a crash.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use iot_core::DeviceId;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{Gateway, Hub};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const HOST: &str = "localhost";
const DEVICE: &str = "fuzz";
/// The in-memory telemetry log grows with every accepted publish: start a fresh hub now and
/// then so that a long run does not measure memory growth.
const RUNS_PER_HUB: u32 = 20_000;
/// Far beyond what one input takes; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

struct Fixture {
    runtime: Runtime,
    server: MqttServer,
    connect: Vec<u8>,
    runs: u32,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    FIXTURE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|f| f.runs >= RUNS_PER_HUB) {
            *slot = Some(Fixture::start());
        }
        let Some(fx) = slot.as_mut() else {
            return;
        };
        fx.runs += 1;
        let mut input = Vec::with_capacity(fx.connect.len() + stream.len());
        if mode % 2 == 0 {
            input.extend_from_slice(&fx.connect);
        }
        input.extend_from_slice(stream);
        fx.runtime.block_on(feed(&fx.server, input));
    });
});

/// Runs one connection fed with `input` until the session has ended; returns what the server
/// wrote.
async fn feed(server: &MqttServer, input: Vec<u8>) -> Vec<u8> {
    let (mut client, server_end) = tokio::io::duplex(1 << 16);
    let mut output = Vec::new();
    let drive = async {
        // The server may close before taking everything: that is fine.
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let _ = client.read_to_end(&mut output).await;
    };
    let session = async {
        // An error is the reason the connection closed (malformed, ACL, ...): expected here.
        let _ = server.serve(server_end).await;
    };
    tokio::time::timeout(PATIENCE, async { tokio::join!(drive, session) })
        .await
        .expect("the session ends when its input ends");
    output
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (server, connect) = runtime.block_on(async {
            let identity = Arc::new(MemoryIdentityStore::new());
            let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
            let gateway: Arc<dyn Gateway> = Arc::new(hub);
            let server = MqttServer::new(gateway, MqttConfig::default()).expect("server");
            let device: DeviceId = DEVICE.parse().expect("device id");
            let key = SymmetricKey::generate();
            identity
                .create(NewIdentity::new(
                    device.clone(),
                    Credentials::SymmetricKeys {
                        primary: key.clone(),
                        secondary: SymmetricKey::generate(),
                    },
                ))
                .await
                .expect("create identity");
            let resource = format!("{HOST}/devices/{device}");
            let token =
                sas::generate(&resource, &key, sas::unix_now() + 86_400, None).expect("token");
            let username = format!("{HOST}/{device}/?api-version=2021-04-12");
            let connect = connect_packet(&device, &username, token.as_str());
            // If the CONNECT stopped being accepted (say the username format changed), the
            // fuzzer would only ever see refusals: make that loud instead.
            let mut probe = connect.clone();
            probe.extend_from_slice(&[0xE0, 0x00]);
            let answer = feed(&server, probe).await;
            assert_eq!(
                answer.get(..4),
                Some(&[0x20, 0x02, 0x00, 0x00][..]),
                "the fuzz device's CONNECT must be accepted"
            );
            (server, connect)
        });
        Fixture {
            runtime,
            server,
            connect,
            runs: 0,
        }
    }
}

/// A CONNECT with client id, username and SAS password, clean session, keep-alive 30 s.
fn connect_packet(device: &DeviceId, username: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&30u16.to_be_bytes());
    string(device.as_str().as_bytes(), &mut body);
    string(username.as_bytes(), &mut body);
    string(password.as_bytes(), &mut body);
    let mut packet = vec![0x10];
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if n == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}
