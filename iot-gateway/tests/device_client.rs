//! The device client (`iot_gateway::client`, feature `client`) against the project's own hub:
//! a `Hub` with an `MqttServer` over TLS (self-signed CA) and WebSocket/TLS, in this process.
//!
//! `cargo test -p iot-gateway --features client-tests --test device_client`

mod dps_support;
mod mqtt_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_support::{Dps, SCOPE};
use iot_core::storage::Durability;
use iot_gateway::client::DpsOptions;
use iot_gateway::client::{
    Backoff, ClientError, ClientOptions, ConnectionState, DeviceClient, Message, OutboxConfig,
    Transport, WhenFull,
};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned, TlsConfig};
use iot_gateway::{AckRequest, FeedbackStatus, Gateway, Hub, HubConfig, MethodCall};
use iot_identity::SymmetricKey;
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Thumbprint};
use iot_provisioning::enrollment::EnrollmentStatus;
use mqtt_support::{Device, Fixture, HOST, PATIENCE};
use serde_json::json;

/// A hub with a TLS listener and a WebSocket/TLS listener, both with a fresh self-signed CA.
struct TlsHub {
    fx: Fixture,
    pair: SelfSigned,
    tls: SocketAddr,
    wss: SocketAddr,
}

impl TlsHub {
    async fn start() -> TlsHub {
        TlsHub::start_with(HubConfig::default()).await
    }

    async fn start_with(config: HubConfig) -> TlsHub {
        let identity = Arc::new(MemoryIdentityStore::new());
        let hub = Hub::builder(identity.clone(), HOST)
            .config(config)
            .build()
            .await
            .expect("hub");
        let gateway: Arc<dyn Gateway> = Arc::new(hub.clone());
        let server = MqttServer::new(gateway.clone(), MqttConfig::default()).expect("server");
        let addr = server.listen_tcp(loopback()).await.expect("listen");
        let fx = Fixture {
            hub,
            gateway,
            identity,
            server,
            addr,
        };
        let pair = SelfSigned::generate(HOST).expect("certificates");
        let tls = fx
            .server
            .listen_tls(loopback(), pair.tls_config(false).expect("tls"))
            .await
            .expect("listen tls");
        let wss = fx
            .server
            .listen_websocket(loopback(), Some(pair.tls_config(false).expect("tls")))
            .await
            .expect("listen wss");
        TlsHub { fx, pair, tls, wss }
    }

    fn tls_config(&self) -> TlsConfig {
        self.pair.tls_config(false).expect("tls")
    }

    /// Options for `device` over MQTT/TLS: the test CA, the listener's port, quick retries.
    fn options(&self, device: &Device, port: u16) -> ClientOptions {
        ClientOptions::with_key(HOST, device.id.as_str(), device.key.clone())
            .port(port)
            .ca_roots_pem(self.pair.ca_pem.as_bytes())
            .backoff(Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            })
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A loopback port nobody listens on (a hub that is down).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

async fn telemetry_arrives_with_properties(transport: Transport) {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-telemetry").await;
    let port = match transport {
        Transport::Mqtt => hub.tls.port(),
        Transport::WebSocket => hub.wss.port(),
    };
    let client = DeviceClient::connect(hub.options(&device, port).transport(transport))
        .await
        .expect("client");
    within("the PUBACK", async {
        client
            .send_telemetry(
                Message::new(r#"{"t":21.5}"#)
                    .message_id("m-1")
                    .content("application/json", "utf-8")
                    .property("unit", "°C")
                    .property("path", "a/b&c=d"),
            )
            .await
            .expect("telemetry acknowledged")
    })
    .await;
    let records = hub.fx.telemetry(&device.id, 1).await;
    let r = &records[0].record;
    assert_eq!(r.payload.as_ref(), br#"{"t":21.5}"#);
    assert_eq!(r.headers.get("message-id"), Some("m-1"));
    assert_eq!(r.headers.get("content-type"), Some("application/json"));
    assert_eq!(r.headers.get("unit"), Some("°C"));
    assert_eq!(r.headers.get("path"), Some("a/b&c=d"));
    assert_eq!(
        r.headers.get("iothub-connection-device-id"),
        Some("dc-telemetry")
    );
    client.close().await;
}

#[tokio::test]
async fn telemetry_over_tls_arrives_in_the_log_with_its_properties() {
    telemetry_arrives_with_properties(Transport::Mqtt).await;
}

#[tokio::test]
async fn telemetry_over_websocket_arrives_in_the_log_with_its_properties() {
    telemetry_arrives_with_properties(Transport::WebSocket).await;
}

#[tokio::test]
async fn a_connection_string_client_connects() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-string").await;
    let cs = format!(
        "HostName={HOST};DeviceId={};SharedAccessKey={}",
        device.id,
        device.key.expose_base64().as_str()
    );
    let options = ClientOptions::from_connection_string(&cs)
        .expect("connection string")
        .port(hub.tls.port())
        .ca_roots_pem(hub.pair.ca_pem.as_bytes());
    let client = DeviceClient::connect(options).await.expect("client");
    within("connected", client.connected())
        .await
        .expect("connected");
    within("the PUBACK", client.send_telemetry(Message::new("x")))
        .await
        .expect("sent");
    hub.fx.telemetry(&device.id, 1).await;
}

#[tokio::test]
async fn c2d_is_delivered_and_completed() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-c2d").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()))
        .await
        .expect("client");
    let mut c2d = within("the C2D subscription", client.c2d_messages())
        .await
        .expect("subscribed");
    let mut message = iot_gateway::C2dMessage::new("open valve");
    message.message_id = Some("c-1".into());
    message.ack = AckRequest::Full;
    message.properties = vec![("valve".into(), "a/b 1".into())];
    hub.fx
        .gateway
        .send_c2d(&device.id, message)
        .await
        .expect("send c2d");

    let received = within("the C2D message", c2d.recv())
        .await
        .expect("message");
    assert_eq!(received.payload.as_ref(), b"open valve");
    assert_eq!(received.message_id(), Some("c-1"));
    assert_eq!(received.property("valve"), Some("a/b 1"));
    received.complete().expect("complete");

    let feedback = within("the completion feedback", async {
        loop {
            let f = hub.fx.gateway.read_feedback(0, 10).await.expect("feedback");
            if !f.is_empty() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(feedback[0].status, FeedbackStatus::Success);
    assert_eq!(feedback[0].message_id, "c-1");
    assert_eq!(
        hub.fx
            .gateway
            .pending_c2d(&device.id)
            .await
            .expect("pending"),
        0
    );
}

#[tokio::test]
async fn twin_get_reported_patch_and_desired_patches() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-twin").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()))
        .await
        .expect("client");
    let version = within(
        "the reported patch",
        client.patch_reported(&json!({"fw": "1.2"})),
    )
    .await
    .expect("patched");
    let twin = within("the twin", client.twin()).await.expect("twin");
    assert_eq!(twin.reported["fw"], "1.2");
    assert_eq!(twin.reported["$version"], json!(version));

    let mut desired = within("the desired subscription", client.desired_patches())
        .await
        .expect("subscribed");
    hub.fx
        .gateway
        .patch_desired(&device.id, json!({"interval": 5}), None)
        .await
        .expect("patch desired");
    let patch = within("the desired patch", desired.recv())
        .await
        .expect("patch");
    assert_eq!(patch.patch["interval"], 5);
    assert!(patch.version.is_some());
    let twin = within("the twin", client.twin()).await.expect("twin");
    assert_eq!(twin.desired["interval"], 5);
}

#[tokio::test]
async fn a_direct_method_is_answered() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-method").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()))
        .await
        .expect("client");
    within(
        "the method subscription",
        client.handle_methods(|name, payload| async move {
            let asked: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            (200, json!({"method": name, "delay": asked["delay"]}))
        }),
    )
    .await
    .expect("handler");
    let response = within(
        "the method response",
        hub.fx
            .gateway
            .invoke_method(&device.id, MethodCall::new("reboot", &b"{\"delay\":3}"[..])),
    )
    .await
    .expect("invoked");
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&response.payload).expect("json");
    assert_eq!(body, json!({"method": "reboot", "delay": 3}));
}

/// Tokens live 10 s and the hub tolerates no clock skew, so it ends a session when its token
/// expires and refuses an expired token; the client reconnects with a fresh one every 8 s. It
/// must connect four times (three renewals, the later ones long after the first token expired)
/// and every message sent meanwhile must be acknowledged and in the log, in order.
#[tokio::test]
#[allow(clippy::print_stdout)] // the figure is printed, not asserted
async fn tokens_are_renewed_by_reconnecting() {
    let mut config = HubConfig::default();
    config.token_skew = Duration::ZERO;
    let hub = TlsHub::start_with(config).await;
    let device = hub.fx.device("dc-renew").await;
    let client = DeviceClient::connect(
        hub.options(&device, hub.tls.port())
            .token_lifetime(Duration::from_secs(10)),
    )
    .await
    .expect("client");
    let mut c2d = within("the C2D subscription", client.c2d_messages())
        .await
        .expect("subscribed");
    let state = client.connection_state();
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let ConnectionState::Connected { generation } = *state.borrow()
                && generation >= 4
            {
                break;
            }
            client
                .send_telemetry(Message::new(sent.to_string()))
                .await
                .expect("sent");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("three renewals within 40 s");
    println!(
        "three renewals after {:?}, {sent} messages",
        started.elapsed()
    );
    let records = hub.fx.telemetry(&device.id, sent).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..sent).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    // The subscription was restored on the latest connection.
    hub.fx
        .gateway
        .send_c2d(&device.id, iot_gateway::C2dMessage::new("after renewals"))
        .await
        .expect("c2d");
    let m = within("C2D after renewals", c2d.recv())
        .await
        .expect("message");
    assert_eq!(m.payload.as_ref(), b"after renewals");
    m.complete().expect("complete");
}

/// The MQTT endpoint is shut down and a new one started on the same port (the hub, and so its
/// log, stays: an in-process restart of the endpoint). Messages enqueued while it is down are
/// delivered, in order, once it is back; the C2D subscription is restored.
#[tokio::test]
async fn reconnects_after_the_endpoint_restarts_and_delivers_the_outbox_in_order() {
    restart_and_deliver(Transport::Mqtt).await;
}

#[tokio::test]
async fn reconnects_over_websocket_after_the_endpoint_restarts() {
    restart_and_deliver(Transport::WebSocket).await;
}

async fn restart_and_deliver(transport: Transport) {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-restart").await;
    let addr = match transport {
        Transport::Mqtt => hub.tls,
        Transport::WebSocket => hub.wss,
    };
    let client = DeviceClient::connect(hub.options(&device, addr.port()).transport(transport))
        .await
        .expect("client");
    let mut c2d = within("the C2D subscription", client.c2d_messages())
        .await
        .expect("subscribed");
    within("the first PUBACK", client.send_telemetry(Message::new("0")))
        .await
        .expect("sent");

    hub.fx.server.shutdown().await;
    let mut state = client.connection_state();
    within(
        "the client noticing",
        state.wait_for(|s| {
            matches!(
                s,
                ConnectionState::Disconnected { .. } | ConnectionState::Connecting
            )
        }),
    )
    .await
    .expect("state");

    let mut deliveries = Vec::new();
    for i in 1..=20 {
        deliveries.push(
            client
                .enqueue_telemetry(Message::new(i.to_string()))
                .await
                .expect("enqueued"),
        );
    }
    assert!(client.outbox_len().await >= 20);

    let server = MqttServer::new(hub.fx.gateway.clone(), MqttConfig::default()).expect("server");
    let bound = within("the listener on the old port", async {
        loop {
            let listening = match transport {
                Transport::Mqtt => server.listen_tls(addr, hub.tls_config()).await,
                Transport::WebSocket => server.listen_websocket(addr, Some(hub.tls_config())).await,
            };
            match listening {
                Ok(addr) => return addr,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(bound, addr);

    for d in deliveries {
        within("an outbox PUBACK", d.acknowledged())
            .await
            .expect("acknowledged");
    }
    let records = hub.fx.telemetry(&device.id, 21).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect();
    // At least once: a message in flight when the endpoint went away may appear twice, but the
    // first appearances are in order and none is missing.
    let mut first = Vec::new();
    for p in &payloads {
        if !first.contains(p) {
            first.push(p.clone());
        }
    }
    let expected: Vec<String> = (0..=20).map(|i| i.to_string()).collect();
    assert_eq!(first, expected, "{payloads:?}");
    assert_eq!(client.outbox_len().await, 0);

    hub.fx
        .gateway
        .send_c2d(&device.id, iot_gateway::C2dMessage::new("after restart"))
        .await
        .expect("c2d");
    let m = within("C2D after the restart", c2d.recv())
        .await
        .expect("message");
    assert_eq!(m.payload.as_ref(), b"after restart");
    m.complete().expect("complete");
    server.shutdown().await;
}

/// A file outbox: messages enqueued while the hub is unreachable survive dropping the client; a
/// new client on the same directory delivers them in order, and a third finds it empty.
#[tokio::test]
async fn the_file_outbox_survives_a_new_client() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-file").await;
    let dir = tempfile::tempdir().expect("dir");
    let outbox = OutboxConfig::File {
        dir: dir.path().join("outbox"),
        capacity: 100,
        when_full: WhenFull::Error,
        durability: Durability::Fsync,
    };
    let offline = DeviceClient::connect(hub.options(&device, dead_port()).outbox(outbox.clone()))
        .await
        .expect("client");
    for i in 0..10 {
        offline
            .enqueue_telemetry(Message::new(format!("stored-{i}")))
            .await
            .expect("enqueued");
    }
    assert_eq!(offline.outbox_len().await, 10);
    drop(offline);

    let online = within(
        "opening the outbox again",
        DeviceClient::connect(hub.options(&device, hub.tls.port()).outbox(outbox.clone())),
    )
    .await
    .expect("client");
    let records = hub.fx.telemetry(&device.id, 10).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("stored-{i}")).collect();
    assert_eq!(payloads, expected);
    within("the outbox draining", async {
        while online.outbox_len().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    online.close().await;

    let again = DeviceClient::connect(hub.options(&device, dead_port()).outbox(outbox))
        .await
        .expect("client");
    assert_eq!(
        again.outbox_len().await,
        0,
        "delivered messages are not sent again"
    );
}

#[tokio::test]
async fn a_full_outbox_is_a_typed_error() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-full").await;
    let client = DeviceClient::connect(hub.options(&device, dead_port()).outbox(
        OutboxConfig::Memory {
            capacity: 3,
            when_full: WhenFull::Error,
        },
    ))
    .await
    .expect("client");
    for i in 0..3 {
        client
            .enqueue_telemetry(Message::new(i.to_string()))
            .await
            .expect("room");
    }
    let err = client
        .enqueue_telemetry(Message::new("one too many"))
        .await
        .expect_err("full");
    assert!(
        matches!(err, ClientError::OutboxFull { capacity: 3 }),
        "{err:?}"
    );
    assert_eq!(client.outbox_len().await, 3);
}

#[tokio::test]
async fn refused_credentials_are_reported_as_connection_state() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-refused").await;
    let wrong = Device {
        id: device.id.clone(),
        key: iot_identity::SymmetricKey::generate(),
    };
    let client = DeviceClient::connect(hub.options(&wrong, hub.tls.port()))
        .await
        .expect("client");
    let mut state = client.connection_state();
    let seen = within(
        "a refusal",
        state.wait_for(|s| matches!(s, ConnectionState::Disconnected { .. })),
    )
    .await
    .expect("state")
    .clone();
    match seen {
        ConnectionState::Disconnected { reason, .. } => {
            assert!(reason.contains("CONNACK refused"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_full_outbox_that_waits_lets_every_message_through() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-wait").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()).outbox(
        OutboxConfig::Memory {
            capacity: 2,
            when_full: WhenFull::Wait,
        },
    ))
    .await
    .expect("client");
    let mut deliveries = Vec::new();
    for i in 0..10 {
        let d = within(
            "room in the outbox",
            client.enqueue_telemetry(Message::new(i.to_string())),
        )
        .await
        .expect("enqueued");
        deliveries.push(d);
        assert!(client.outbox_len().await <= 2);
    }
    for d in deliveries {
        within("a PUBACK", d.acknowledged())
            .await
            .expect("acknowledged");
    }
    let records = hub.fx.telemetry(&device.id, 10).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect();
    assert_eq!(payloads, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// A device authenticated by its certificate's thumbprint (no password).
#[tokio::test]
async fn an_x509_device_connects_with_its_certificate() {
    let hub = TlsHub::start().await;
    let addr = hub
        .fx
        .server
        .listen_tls(loopback(), hub.pair.tls_config(true).expect("tls"))
        .await
        .expect("listen tls with client certificates");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["dc-x509".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    hub.fx
        .identity
        .create(NewIdentity::new(
            "dc-x509".parse().expect("id"),
            Credentials::X509 {
                primary: Thumbprint::of_der_certificate(cert.der()),
                secondary: Thumbprint::of_der_certificate(cert.der()),
            },
        ))
        .await
        .expect("identity");
    let options = ClientOptions::with_x509(
        HOST,
        "dc-x509",
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .port(addr.port())
    .ca_roots_pem(hub.pair.ca_pem.as_bytes());
    let client = DeviceClient::connect(options).await.expect("client");
    within(
        "the PUBACK",
        client.send_telemetry(Message::new("by certificate")),
    )
    .await
    .expect("sent");
    let id = "dc-x509".parse().expect("id");
    let records = hub.fx.telemetry(&id, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"by certificate");
}

/// A thousand messages through the in-flight window at once: all acknowledged, in the log in order.
/// Prints the rate (debug build, one process: a smoke figure, not a benchmark).
#[tokio::test]
#[allow(clippy::print_stdout)] // the figure is printed, not asserted
async fn a_burst_through_the_window_arrives_in_order() {
    // At most one read of the fixture's log reader (1000 records).
    const N: usize = 1000;
    // The hub's per-device telemetry throttle (100/s) would set the pace otherwise.
    let mut config = HubConfig::default();
    config.throttle = config.throttle.device_telemetry(None);
    let hub = TlsHub::start_with(config).await;
    let device = hub.fx.device("dc-burst").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()).outbox(
        OutboxConfig::Memory {
            capacity: N,
            when_full: WhenFull::Error,
        },
    ))
    .await
    .expect("client");
    within("connected", client.connected())
        .await
        .expect("connected");
    let started = std::time::Instant::now();
    let mut deliveries = Vec::with_capacity(N);
    for i in 0..N {
        deliveries.push(
            client
                .enqueue_telemetry(Message::new(i.to_string()))
                .await
                .expect("enqueued"),
        );
    }
    for d in deliveries {
        within("a PUBACK", d.acknowledged())
            .await
            .expect("acknowledged");
    }
    let elapsed = started.elapsed();
    println!(
        "{N} messages acknowledged in {elapsed:?}: {:.0} msg/s",
        N as f64 / elapsed.as_secs_f64()
    );
    let records = hub.fx.telemetry(&device.id, N).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect();
    assert_eq!(payloads, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// A message the hub would refuse (and answer by closing the connection) is refused before it
/// enters the outbox, where it would block every message behind it.
#[tokio::test]
async fn a_message_the_hub_would_refuse_never_enters_the_outbox() {
    let hub = TlsHub::start().await;
    let device = hub.fx.device("dc-invalid").await;
    let client = DeviceClient::connect(hub.options(&device, hub.tls.port()))
        .await
        .expect("client");
    for bad in [
        Message::new("x").property("iothub-forged", "1"),
        Message::new("x").property("a=b", "1"),
        Message::new("x").property("ok", "line\nbreak"),
        Message::new(vec![0u8; iot_gateway::client::MAX_MESSAGE_BYTES + 1]),
    ] {
        let err = client.enqueue_telemetry(bad).await.expect_err("refused");
        assert!(matches!(err, ClientError::InvalidMessage(_)), "{err:?}");
    }
    assert_eq!(client.outbox_len().await, 0);
    within("the PUBACK", client.send_telemetry(Message::new("fine")))
        .await
        .expect("a valid message still goes through");
    let records = hub.fx.telemetry(&device.id, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.payload.as_ref(), b"fine");
}

/// A hub whose MQTT/TLS listener serves DPS's device protocol too, with a symmetric-key group
/// enrollment `fleet-a` (initial twin `{"interval": 15}`); the group key and the CA.
async fn dps_hub(status: EnrollmentStatus) -> (Fixture, Dps, SymmetricKey, SelfSigned) {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub.clone(), identity.clone(), HOST).await;
    let group_key = dps
        .group("fleet-a", |g| {
            g.settings.initial_twin = json!({"interval": 15});
            g.settings.status = status;
        })
        .await;
    let server = dps.server(MqttConfig::default());
    let pair = SelfSigned::generate(HOST).expect("certificates");
    let addr = server
        .listen_tls(loopback(), pair.tls_config(false).expect("tls"))
        .await
        .expect("listen tls");
    let fx = Fixture {
        gateway: Arc::new(hub.clone()),
        hub,
        identity,
        server,
        addr,
    };
    (fx, dps, group_key, pair)
}

fn dps_options(
    fx: &Fixture,
    pair: &SelfSigned,
    registration_id: &str,
    group_key: &SymmetricKey,
) -> ClientOptions {
    let ca = pair.ca_pem.as_bytes();
    let dps = DpsOptions::group_key(HOST, SCOPE, registration_id, group_key)
        .port(fx.addr.port())
        .ca_roots_pem(ca);
    ClientOptions::with_dps(dps)
        .port(fx.addr.port())
        .ca_roots_pem(ca)
}

#[tokio::test]
async fn a_group_device_registers_through_dps_then_connects_as_the_assigned_device() {
    let (fx, dps, group_key, pair) = dps_hub(EnrollmentStatus::Enabled).await;
    let client = within(
        "the registration",
        DeviceClient::connect(dps_options(&fx, &pair, "sensor-9", &group_key)),
    )
    .await
    .expect("registered");
    let registration = client.registration().expect("a registration");
    assert_eq!(registration.assigned_hub, HOST);
    assert_eq!(registration.device_id, "sensor-9");
    assert_eq!(registration.state["status"], "assigned");
    assert_eq!(dps.registers().await.get("sensor-9"), Some(&1));

    // Connected to the hub as the assigned device, with the key derived from the group's.
    within(
        "the PUBACK",
        client.send_telemetry(Message::new("after dps")),
    )
    .await
    .expect("sent");
    let device: iot_core::DeviceId = "sensor-9".parse().expect("id");
    let records = fx.telemetry(&device, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"after dps");
    assert_eq!(
        records[0].record.headers.get("iothub-connection-device-id"),
        Some("sensor-9")
    );
    // The enrollment's initial twin reached the device's twin.
    let twin = within("the twin", client.twin()).await.expect("twin");
    assert_eq!(twin.desired["interval"], 15);
    client.close().await;
}

#[tokio::test]
async fn dps_refusals_are_errors_of_connect() {
    // A key that is not the group's: no enrollment accepts the token, CONNACK refused.
    let (fx, _dps, _group_key, pair) = dps_hub(EnrollmentStatus::Enabled).await;
    let wrong = SymmetricKey::generate();
    let err = within(
        "the refusal",
        DeviceClient::connect(dps_options(&fx, &pair, "sensor-x", &wrong)),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&err, ClientError::Connect(reason) if reason.contains("refused")),
        "{err:?}"
    );

    // A disabled enrollment: DPS answers the registration 401.
    let (fx, _dps, group_key, pair) = dps_hub(EnrollmentStatus::Disabled).await;
    let err = within(
        "the refusal",
        DeviceClient::connect(dps_options(&fx, &pair, "sensor-y", &group_key)),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(err, ClientError::Dps { status: 401, .. }),
        "{err:?}"
    );
}
