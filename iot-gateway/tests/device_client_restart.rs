//! The device client across a SIGKILL of the hub's process: the hub runs in a process of its
//! own (this test binary again, running only `hub_child`) over file-backed stores (identity,
//! log, inbox, twins) in a directory, with MQTT over TLS on a fixed loopback port. The test
//! kills it with SIGKILL while telemetry is in flight, queues a C2D message into its durable
//! inbox while it is down (a second child, `hub_child` in `c2d` mode, standing in for a back-end
//! tool over the same stores), and starts it again on the same port and directory. The client
//! must reconnect by itself; every message sent before, during and after the outage must be in
//! the restarted hub's log, in order of first appearance (QoS 1 in-flight messages resent), and
//! the queued C2D message must reach it.
//!
//! `cargo test -p iot-gateway --features client-tests --test device_client_restart`

mod mqtt_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use iot_core::{DeviceId, Offset, ReadLimits};
use iot_gateway::client::{Backoff, ClientOptions, ConnectionState, DeviceClient, Message};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned, TlsConfig};
use iot_gateway::{C2dMessage, Gateway, Hub, HubConfig};
use iot_identity::{
    Credentials, FileIdentityStore, FileIdentityStoreConfig, IdentityStore, NewIdentity,
    SymmetricKey,
};
use mqtt_support::{HOST, PATIENCE};

const CHILD: &str = "hub_child";
const CHILD_DIR: &str = "DEVICE_CLIENT_HUB_DIR";
const CHILD_MODE: &str = "DEVICE_CLIENT_HUB_MODE";
const DEVICE: &str = "dev-restart";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The child: the hub on `DIR` (mode `hub`: serving MQTT/TLS and printing `telemetry {id}` for
/// every record of its telemetry log, until killed; mode `c2d`: queueing one C2D message and
/// exiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by the_client_rides_out_a_sigkill_of_the_hub_process as a child process"]
#[allow(clippy::print_stdout)]
async fn hub_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
            .expect("config JSON");
    let device: DeviceId = DEVICE.parse().expect("device id");
    let key = SymmetricKey::from_base64(config["key"].as_str().expect("key")).expect("key");
    let identity = Arc::new(
        FileIdentityStore::open(dir.join("identity"), FileIdentityStoreConfig::default())
            .await
            .expect("identity store"),
    );
    if identity.get(&device).await.expect("identity").is_none() {
        identity
            .create(NewIdentity::new(
                device.clone(),
                Credentials::SymmetricKeys {
                    primary: key,
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create identity");
    }
    let hub = Hub::open_dir(dir.join("hub"), identity, HOST, HubConfig::default())
        .await
        .expect("hub");
    if std::env::var(CHILD_MODE).as_deref() == Ok("c2d") {
        let mut message = C2dMessage::new("queued while the hub was down");
        message.message_id = Some("c2d-outage".into());
        hub.send_c2d(&device, message).await.expect("queue C2D");
        hub.shutdown().await;
        println!("QUEUED");
        return;
    }
    let port = config["port"].as_u64().expect("port") as u16;
    let tls = TlsConfig::from_pem_files(
        &dir.join("tls/server.pem"),
        &dir.join("tls/server-key.pem"),
        false,
    )
    .expect("TLS files");
    let server = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default()).expect("server");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + PATIENCE;
    while server.listen_tls(addr, tls.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "the hub's port stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("READY");
    // Every record of the telemetry log, from the start: what this run's hub holds.
    let log = hub.telemetry_log().clone();
    let mut next = vec![Offset(0); log.partition_count() as usize];
    loop {
        for (p, offset) in next.iter_mut().enumerate() {
            let partition = iot_core::PartitionId(p as u32);
            let batch = log
                .read(partition, *offset, ReadLimits::default())
                .await
                .expect("read telemetry");
            for r in &batch {
                println!(
                    "telemetry {}",
                    r.record.headers.get("message-id").unwrap_or("-")
                );
                *offset = Offset(r.offset.0 + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running hub child, killed with SIGKILL when dropped; its stdout lines on a channel.
struct HubProcess {
    child: Child,
    lines: Receiver<String>,
}

impl HubProcess {
    fn spawn(dir: &Path, mode: &str) -> HubProcess {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                CHILD,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the hub process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        HubProcess { child, lines }
    }

    /// Waits for a line ending with `marker`.
    fn wait_for(&self, marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.ends_with(marker) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("the hub process never printed {marker}")
                }
            }
        }
    }

    fn start(dir: &Path) -> HubProcess {
        let hub = HubProcess::spawn(dir, "hub");
        hub.wait_for("READY");
        hub
    }

    /// The message ids of the telemetry this hub printed, in the order it printed them, until
    /// every id of `expected` is among them.
    fn telemetry_until(&self, expected: &[String]) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        let mut missing: HashSet<&String> = expected.iter().collect();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(id) = line.strip_prefix("telemetry ") {
                        missing.remove(&id.to_string());
                        seen.push(id.to_string());
                    }
                }
                Err(_) => panic!("telemetry never arrived: {missing:?}"),
            }
        }
        seen
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rides_out_a_sigkill_of_the_hub_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = SelfSigned::generate(HOST).expect("certificates");
    pair.write_to(&dir.path().join("tls"))
        .expect("write TLS files");
    let key = SymmetricKey::generate();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({"port": port, "key": key.expose_base64().as_str()}).to_string(),
    )
    .expect("config");

    let hub = HubProcess::start(dir.path());
    let options = ClientOptions::with_key(HOST, DEVICE, key)
        .port(port)
        .ca_roots_pem(pair.ca_pem.as_bytes())
        .backoff(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        });
    let client = DeviceClient::connect(options).await.expect("client");
    let mut c2d = within("the C2D subscription", client.c2d_messages())
        .await
        .expect("subscribed");
    for id in ids(0..10) {
        within(
            "the PUBACK",
            client.send_telemetry(Message::new("before").message_id(id)),
        )
        .await
        .expect("acknowledged");
    }

    // In flight when the process dies: queued, some sent, few or none acknowledged.
    let mut deliveries = Vec::new();
    for id in ids(10..30) {
        let message = Message::new("in flight").message_id(id);
        deliveries.push(client.enqueue_telemetry(message).await.expect("queued"));
    }
    hub.kill();
    let mut state = client.connection_state();
    within("the client to notice", async {
        state
            .wait_for(|s| matches!(s, ConnectionState::Disconnected { .. }))
            .await
            .map(|_| ())
    })
    .await
    .expect("state");

    // During the outage: more telemetry waits in the outbox, and a C2D message is queued in
    // the hub's durable inbox.
    for id in ids(30..40) {
        let message = Message::new("during the outage").message_id(id);
        deliveries.push(client.enqueue_telemetry(message).await.expect("queued"));
    }
    let queue = HubProcess::spawn(dir.path(), "c2d");
    queue.wait_for("QUEUED");
    drop(queue);

    let hub = HubProcess::start(dir.path());
    let message = within("the C2D message queued during the outage", c2d.recv())
        .await
        .expect("message");
    assert_eq!(message.message_id(), Some("c2d-outage"));
    assert_eq!(message.payload.as_ref(), b"queued while the hub was down");
    message.complete().expect("complete");
    for delivery in deliveries {
        within("every PUBACK", delivery.acknowledged())
            .await
            .expect("acknowledged");
    }
    within(
        "the PUBACK after the restart",
        client.send_telemetry(Message::new("after").message_id("m-40")),
    )
    .await
    .expect("acknowledged");
    assert!(
        matches!(
            *client.connection_state().borrow(),
            ConnectionState::Connected { generation } if generation >= 2
        ),
        "reconnected by itself"
    );

    // The restarted hub's log holds every message, first appearances in the order sent
    // (a message resent after the kill may also appear twice: at least once).
    let expected = ids(0..41);
    let seen = hub.telemetry_until(&expected);
    let mut first = Vec::new();
    let mut known = HashSet::new();
    for id in seen {
        if known.insert(id.clone()) {
            first.push(id);
        }
    }
    assert_eq!(first, expected);
    client.close().await;
    hub.kill();
}
