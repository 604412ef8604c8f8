//! Store-and-forward across a SIGKILL of the field gateway and an outage of the cloud hub, with
//! the field gateway in a process of its own.
//!
//! The parent (this test) runs the "cloud" hub (MQTT over TLS on loopback) and `LEAVES` leaf
//! devices (rumqttc, plain MQTT, QoS 1, one message in flight each, numbered). The child — this
//! test binary again, running only `field_gateway_child` — runs the field gateway: an edge hub on
//! a directory, its MQTT endpoint on a fixed loopback port, and a `Forwarder` to the cloud. The
//! parent kills the child with SIGKILL once and starts it again on the same directory, then stops
//! the cloud's endpoint for `FIELD_GATEWAY_OUTAGE_SECS` seconds (default 5; CI sets 30) while
//! the leaves keep sending, then starts it again. Every message the field gateway PUBACKed must
//! reach the cloud hub's log, each leaf's messages in order (first appearances by message id).
//!
//! With the feature `edge-interop` (Python's paho-mqtt in the workspace's `.venv`, or
//! `$MQTT_INTEROP_PYTHON`) two more tests use leaves nobody here wrote: the same scenario with 100
//! paho-mqtt clients in one Python process (`scripts/edge/paho_leaves.py`), and a C2D message and
//! a direct method sent on the cloud hub reaching a paho leaf behind the field gateway process.
//!
//! `cargo test -p iot-gateway --features edge --test field_gateway_kill`
//! `cargo test -p iot-gateway --features edge-interop --test field_gateway_kill -- paho`

mod mqtt_support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_core::{DeviceId, LogExt, Offset, ReadLimits};
use iot_gateway::client::{Backoff, ClientOptions};
use iot_gateway::edge::{Forwarder, ForwarderOptions, IdentityMap};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub, HubConfig};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey};
use mqtt_support::{Device, HOST, PATIENCE};
use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::json;
use tokio::sync::watch;

const LEAVES: usize = 100;
/// Between two messages of one leaf.
const PACE: Duration = Duration::from_millis(100);
const CHILD: &str = "field_gateway_child";
const CHILD_DIR: &str = "FIELD_GATEWAY_CHILD_DIR";

fn leaf_id(i: usize) -> DeviceId {
    format!("leaf-{i:03}").parse().expect("device id")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The child: the field gateway, configured by `DIR/config.json`, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by every_pubacked_message_survives_a_sigkill_and_an_outage as a child process"]
#[allow(clippy::print_stdout)]
async fn field_gateway_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
            .expect("config JSON");
    let group = SymmetricKey::from_base64(config["group"].as_str().expect("group")).expect("key");
    let ca = config["ca"].as_str().expect("ca").to_owned();
    let cloud_port = config["cloud_port"].as_u64().expect("cloud port") as u16;
    let edge_port = config["edge_port"].as_u64().expect("edge port") as u16;

    let identity = Arc::new(MemoryIdentityStore::new());
    let mut upstream = IdentityMap::new();
    for i in 0..LEAVES {
        let leaf = leaf_id(i);
        let key = group.derive_for_device(leaf.as_str());
        identity
            .create(NewIdentity::new(
                leaf.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("edge identity");
        upstream.insert(
            leaf.clone(),
            ClientOptions::with_key(HOST, leaf.as_str(), key)
                .port(cloud_port)
                .ca_roots_pem(ca.as_bytes())
                .backoff(Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                }),
        );
    }
    let edge = Hub::open_dir(dir.join("edge"), identity, HOST, HubConfig::default())
        .await
        .expect("edge hub");
    let gateway: Arc<dyn Gateway> = Arc::new(edge.clone());
    let server = MqttServer::new(gateway, MqttConfig::default()).expect("server");
    let addr: SocketAddr = format!("127.0.0.1:{edge_port}").parse().expect("addr");
    let deadline = Instant::now() + PATIENCE;
    while server.listen_tcp(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the edge port stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _forwarder = Forwarder::start(&edge, Arc::new(upstream), ForwarderOptions::default())
        .await
        .expect("forwarder");
    iot_core::testkit::crash::ack("READY");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// A running child, killed with SIGKILL when dropped.
struct FieldGateway(Child);

impl FieldGateway {
    /// Starts the child on `dir` and waits for its `READY` line.
    fn start(dir: &Path) -> FieldGateway {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                CHILD,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the field gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.ends_with("READY") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the field gateway did not start");
        FieldGateway(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FieldGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One leaf: sends 1, 2, 3, … over QoS 1, one at a time; a message counts as accepted once the
/// field gateway PUBACKed it. After a lost connection it reconnects and sends the unacknowledged
/// message again (a duplicate where the first copy was stored). Returns the last accepted number
/// (all before it were accepted too).
async fn leaf(device: Device, addr: SocketAddr, stop: watch::Receiver<bool>) -> u32 {
    let mut acked = 0;
    let mut seq: u32 = 1;
    'connect: while !*stop.borrow() {
        let mut options = device.options(addr);
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 10);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => break,
                Ok(_) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'connect;
                }
            }
        }
        while !*stop.borrow() {
            let topic = format!(
                "devices/{}/messages/events/$.mid={}-{seq}&seq={seq}",
                device.id, device.id
            );
            if client
                .publish(topic, QoS::AtLeastOnce, false, seq.to_string())
                .await
                .is_err()
            {
                continue 'connect;
            }
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => break,
                    Ok(_) => {}
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'connect;
                    }
                }
            }
            acked = seq;
            seq += 1;
            tokio::time::sleep(PACE).await;
        }
        let _ = client.disconnect().await;
        // Drive the DISCONNECT out; an error just means the connection is already gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
    acked
}

/// The cloud: an in-memory hub with an MQTT/TLS listener that can be stopped and started again.
struct Cloud {
    hub: Hub,
    pair: SelfSigned,
    server: Option<MqttServer>,
    addr: SocketAddr,
}

impl Cloud {
    async fn listen(&mut self) {
        let gateway: Arc<dyn Gateway> = Arc::new(self.hub.clone());
        let server = MqttServer::new(gateway, MqttConfig::default()).expect("server");
        let tls = self.pair.tls_config(false).expect("tls");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match server.listen_tls(self.addr, tls.clone()).await {
                Ok(bound) => {
                    self.addr = bound;
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cloud listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.server = Some(server);
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Each device's sequence numbers in log order (duplicates included).
    async fn seqs(&self) -> HashMap<String, Vec<(String, u32)>> {
        let log = self.hub.telemetry_log();
        let mut out: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        for p in log.partitions() {
            let mut from = Offset(0);
            loop {
                let records = log
                    .read(p, from, ReadLimits::default())
                    .await
                    .expect("read");
                let Some(last) = records.last() else { break };
                from = last.offset.next();
                for r in records {
                    let h = &r.record.headers;
                    let id = h.get("message-id").unwrap_or_default().to_owned();
                    let seq = h.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
                    out.entry(r.record.key.clone()).or_default().push((id, seq));
                }
            }
        }
        out
    }
}

fn first_appearances(records: &[(String, u32)]) -> Vec<u32> {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .map(|(_, seq)| *seq)
        .collect()
}

/// The parent's side of one run: the cloud, the leaves' credentials and the field gateway's
/// directory and port.
struct Run {
    dir: tempfile::TempDir,
    cloud: Cloud,
    devices: Vec<Device>,
    edge_addr: SocketAddr,
}

impl Run {
    /// Provisions every leaf in the cloud under a key derived from a group key and writes the
    /// child's configuration.
    async fn setup() -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = SymmetricKey::generate();
        let identity = Arc::new(MemoryIdentityStore::new());
        let mut devices = Vec::new();
        for i in 0..LEAVES {
            let id = leaf_id(i);
            let key = group.derive_for_device(id.as_str());
            identity
                .create(NewIdentity::new(
                    id.clone(),
                    Credentials::SymmetricKeys {
                        primary: key.clone(),
                        secondary: SymmetricKey::generate(),
                    },
                ))
                .await
                .expect("cloud identity");
            devices.push(Device { id, key });
        }
        let hub = Hub::memory(identity, HOST).await.expect("cloud hub");
        let mut cloud = Cloud {
            hub,
            pair: SelfSigned::generate(HOST).expect("certificates"),
            server: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        cloud.listen().await;
        let edge_port = free_port();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&json!({
                "group": group.expose_base64().as_str(),
                "ca": cloud.pair.ca_pem.clone(),
                "cloud_port": cloud.addr.port(),
                "edge_port": edge_port,
            }))
            .expect("JSON"),
        )
        .expect("config");
        let edge_addr = format!("127.0.0.1:{edge_port}").parse().expect("addr");
        Run {
            dir,
            cloud,
            devices,
            edge_addr,
        }
    }

    async fn start_gateway(&self) -> FieldGateway {
        let path = self.dir.path().to_owned();
        tokio::task::spawn_blocking(move || FieldGateway::start(&path))
            .await
            .expect("start")
    }

    /// While the leaves send: SIGKILL the field gateway and start it again on its directory,
    /// then stop the cloud's endpoint for `outage` and start it again. Returns the running field
    /// gateway and when the cloud came back.
    #[allow(clippy::print_stdout)]
    async fn kill_and_outage(
        &mut self,
        gateway: FieldGateway,
        outage: Duration,
    ) -> (FieldGateway, Instant) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        gateway.kill();
        println!("field gateway killed");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gateway = self.start_gateway().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.cloud.stop().await;
        println!("cloud stopped for {outage:?}");
        tokio::time::sleep(outage).await;
        self.cloud.listen().await;
        let back = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        (gateway, back)
    }

    /// Every message PUBACKed by the field gateway (`acked[i]`: leaf `i`'s last, all before it
    /// too) reaches the cloud, first appearances in order per leaf, at most one more than
    /// acknowledged (stored, but its PUBACK was cut off). Returns the duplicates in the cloud log.
    #[allow(clippy::print_stdout)]
    async fn check(&self, acked: &[u32], back: Instant) -> usize {
        let total: u64 = acked.iter().map(|&n| u64::from(n)).sum();
        println!("leaves: {total} messages PUBACKed by the field gateway");
        assert!(
            acked.iter().all(|&n| n > 0),
            "every leaf had messages accepted"
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let seqs = loop {
            let seqs = self.cloud.seqs().await;
            let done = acked.iter().enumerate().all(|(i, &last)| {
                let got: HashSet<u32> = seqs
                    .get(leaf_id(i).as_str())
                    .map(|v| v.iter().map(|(_, s)| *s).collect())
                    .unwrap_or_default();
                (1..=last).all(|s| got.contains(&s))
            });
            if done {
                break seqs;
            }
            assert!(
                Instant::now() < deadline,
                "not every PUBACKed message reached the cloud"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("drained {:?} after the cloud came back", back.elapsed());
        let mut duplicates = 0;
        for (i, &last) in acked.iter().enumerate() {
            let id = leaf_id(i);
            let records = seqs.get(id.as_str()).expect("records");
            let order = first_appearances(records);
            let expected: Vec<u32> = (1..=last).collect();
            assert_eq!(
                &order[..expected.len().min(order.len())],
                &expected[..],
                "{id}: first appearances in order, nothing missing"
            );
            assert!(order.len() <= expected.len() + 1, "{id}: {order:?}");
            // A duplicate is a repeat of a message id with the same number.
            for (mid, seq) in records {
                assert_eq!(
                    mid,
                    &format!("{id}-{seq}"),
                    "{id}: message id and number agree"
                );
            }
            duplicates += records.len() - order.len();
        }
        println!("duplicates in the cloud log: {duplicates} (at least once)");
        duplicates
    }
}

fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("FIELD_GATEWAY_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pubacked_message_survives_a_sigkill_and_an_outage() {
    let mut run = Run::setup().await;
    let gateway = run.start_gateway().await;
    let (stop_tx, stop) = watch::channel(false);
    let leaves: Vec<_> = run
        .devices
        .iter()
        .cloned()
        .map(|d| tokio::spawn(leaf(d, run.edge_addr, stop.clone())))
        .collect();
    let (gateway, back) = run.kill_and_outage(gateway, outage()).await;
    stop_tx.send(true).expect("stop");
    let mut acked = Vec::new();
    for l in leaves {
        acked.push(l.await.expect("leaf"));
    }
    run.check(&acked, back).await;
    gateway.kill();
    run.cloud.stop().await;
}

/// Leaves nobody here wrote: paho-mqtt in a Python process (`scripts/edge/paho_leaves.py`).
#[cfg(feature = "edge-interop")]
mod paho {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader, Lines};
    use tokio::process::{Child as AsyncChild, ChildStdout, Command as AsyncCommand};

    use super::*;

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf()
    }

    fn python() -> PathBuf {
        std::env::var_os("MQTT_INTEROP_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv/bin/python"))
    }

    /// The script in `mode` for `devices`; stdin stays open until the test closes it.
    struct Leaves {
        child: AsyncChild,
        lines: Lines<AsyncBufReader<ChildStdout>>,
    }

    impl Leaves {
        fn start(run: &Run, devices: &[Device], mode: &str) -> Leaves {
            let leaves: Vec<_> = devices
                .iter()
                .map(|d| json!({ "id": d.id.as_str(), "username": d.username(), "password": d.token() }))
                .collect();
            let config = run.dir.path().join(format!("paho-{mode}.json"));
            std::fs::write(
                &config,
                serde_json::to_vec(&json!({
                    "port": run.edge_addr.port(),
                    "pace_ms": PACE.as_millis() as u64,
                    "leaves": leaves,
                }))
                .expect("JSON"),
            )
            .expect("paho config");
            let mut child = AsyncCommand::new(python())
                .arg(workspace().join("scripts/edge/paho_leaves.py"))
                .arg("--config")
                .arg(&config)
                .args(["--mode", mode])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start the paho leaves (is paho-mqtt in .venv?)");
            let stdout = child.stdout.take().expect("stdout");
            Leaves {
                child,
                lines: AsyncBufReader::new(stdout).lines(),
            }
        }

        async fn line(&mut self, what: &str) -> String {
            tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("paho leaves: no line in time ({what})"))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("paho leaves ended early ({what})"))
        }

        async fn ready(&mut self) {
            let line = self.line("READY").await;
            assert_eq!(line, "READY");
        }

        async fn json(&mut self, what: &str) -> serde_json::Value {
            let line = self.line(what).await;
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {line}: {e}"))
        }

        /// Closes stdin (the script's signal to stop) and waits for it to end.
        async fn close(&mut self) {
            if let Some(mut stdin) = self.child.stdin.take() {
                let _ = stdin.shutdown().await;
            }
        }

        async fn wait(mut self) {
            let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
                .await
                .expect("paho leaves ended in time")
                .expect("wait");
            assert!(status.success(), "paho leaves: {status}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::print_stdout)]
    async fn paho_leaves_every_pubacked_message_survives_a_sigkill_and_an_outage() {
        let mut run = Run::setup().await;
        let gateway = run.start_gateway().await;
        let mut leaves = Leaves::start(&run, &run.devices, "telemetry");
        leaves.ready().await;
        let (gateway, back) = run.kill_and_outage(gateway, outage()).await;
        leaves.close().await;
        let result = leaves.json("acked").await;
        leaves.wait().await;
        println!("paho reconnects: {}", result["reconnects"]);
        let acked: Vec<u32> = (0..LEAVES)
            .map(|i| {
                result["acked"][leaf_id(i).as_str()]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .expect("a count per leaf")
            })
            .collect();
        run.check(&acked, back).await;
        gateway.kill();
        run.cloud.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paho_c2d_and_a_direct_method_from_the_cloud_reach_a_leaf_behind_the_field_gateway() {
        let mut run = Run::setup().await;
        let gateway = run.start_gateway().await;
        let device = run.devices[7].clone();
        let mut leaf = Leaves::start(&run, std::slice::from_ref(&device), "downlink");
        leaf.ready().await;
        // The field gateway connects every leaf of its map upstream at start.
        let deadline = Instant::now() + PATIENCE;
        while !run
            .cloud
            .hub
            .is_connected(&device.id)
            .await
            .expect("connected?")
        {
            assert!(Instant::now() < deadline, "the leaf's upstream connection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut message = iot_gateway::C2dMessage::new("open valve");
        message.message_id = Some("c2d-1".into());
        message.properties = vec![("valve".into(), "3".into())];
        run.cloud
            .hub
            .send_c2d(&device.id, message)
            .await
            .expect("send c2d");
        let c2d = leaf.json("the C2D message").await;
        let topic = c2d["c2d"].as_str().expect("topic");
        assert!(
            topic.starts_with(&format!("devices/{}/messages/devicebound/", device.id)),
            "{topic}"
        );
        assert!(topic.contains("%24.mid=c2d-1"), "{topic}");
        assert!(topic.contains("valve=3"), "{topic}");
        assert_eq!(c2d["payload"], "open valve");
        // Completed upstream once the field gateway's inbox held it.
        while run
            .cloud
            .hub
            .pending_c2d(&device.id)
            .await
            .expect("pending")
            > 0
        {
            assert!(
                Instant::now() < deadline + PATIENCE,
                "the cloud's inbox emptied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut call = iot_gateway::MethodCall::new("reboot", r#"{"delay":1}"#);
        call.connect_timeout = Duration::from_secs(10);
        let response =
            tokio::time::timeout(PATIENCE, run.cloud.hub.invoke_method(&device.id, call))
                .await
                .expect("the method answered in time")
                .expect("method answered");
        let request = leaf.json("the method call").await;
        assert_eq!(request["method"], "reboot");
        assert_eq!(request["payload"], r#"{"delay":1}"#);
        assert_eq!(response.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&response.payload).expect("JSON");
        assert_eq!(body, json!({ "echo": { "delay": 1 } }));

        leaf.close().await;
        leaf.wait().await;
        gateway.kill();
        run.cloud.stop().await;
    }
}
