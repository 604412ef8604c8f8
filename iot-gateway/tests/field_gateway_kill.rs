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
//! `cargo test -p iot-gateway --features edge --test field_gateway_kill`

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
/// message again (a duplicate where the first copy was stored). Returns the accepted numbers.
async fn leaf(device: Device, addr: SocketAddr, stop: watch::Receiver<bool>) -> Vec<u32> {
    let mut acked = Vec::new();
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
            acked.push(seq);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the figures are printed, not asserted
async fn every_pubacked_message_survives_a_sigkill_and_an_outage() {
    let outage = Duration::from_secs(
        std::env::var("FIELD_GATEWAY_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let group = SymmetricKey::generate();

    // The cloud, with every leaf provisioned under the key derived from the group key.
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
    let edge_addr: SocketAddr = format!("127.0.0.1:{edge_port}").parse().expect("addr");

    let path = dir.path().to_owned();
    let gateway = tokio::task::spawn_blocking(move || FieldGateway::start(&path))
        .await
        .expect("start");
    let (stop_tx, stop) = watch::channel(false);
    let leaves: Vec<_> = devices
        .into_iter()
        .map(|d| tokio::spawn(leaf(d, edge_addr, stop.clone())))
        .collect();

    // SIGKILL the field gateway while the leaves send, and start it again on its directory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    gateway.kill();
    println!("field gateway killed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = dir.path().to_owned();
    let gateway = tokio::task::spawn_blocking(move || FieldGateway::start(&path))
        .await
        .expect("restart");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The cloud's endpoint goes away while the leaves keep sending, then comes back.
    cloud.stop().await;
    println!("cloud stopped for {outage:?}");
    tokio::time::sleep(outage).await;
    cloud.listen().await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).expect("stop");
    let mut acked: Vec<Vec<u32>> = Vec::new();
    for l in leaves {
        acked.push(l.await.expect("leaf"));
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    println!("leaves: {total} messages PUBACKed by the field gateway");

    // Everything PUBACKed reaches the cloud, in order per leaf.
    let deadline = Instant::now() + Duration::from_secs(120);
    let seqs = loop {
        let seqs = cloud.seqs().await;
        let done = acked.iter().enumerate().all(|(i, a)| {
            let got: HashSet<u32> = seqs
                .get(leaf_id(i).as_str())
                .map(|v| v.iter().map(|(_, s)| *s).collect())
                .unwrap_or_default();
            a.iter().all(|s| got.contains(s))
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
    for (i, a) in acked.iter().enumerate() {
        let id = leaf_id(i);
        let records = seqs.get(id.as_str()).expect("records");
        let order = first_appearances(records);
        let last = a.last().copied().unwrap_or(0);
        // 1..=last in order; at most one more: a message stored but whose PUBACK the kill or the
        // stop cut off (the leaf then sent it again, and it counts as accepted).
        let expected: Vec<u32> = (1..=last).collect();
        assert_eq!(
            &order[..expected.len().min(order.len())],
            &expected[..],
            "{id}: first appearances in order, nothing missing"
        );
        assert!(order.len() <= expected.len() + 1, "{id}: {order:?}");
        duplicates += records.len() - order.len();
    }
    println!("duplicates in the cloud log: {duplicates} (at least once)");
    gateway.kill();
    cloud.stop().await;
}
