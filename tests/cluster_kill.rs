//! kill -9 of the cluster instance that holds 100 devices (issue 16; docs/cluster.md, "When an
//! instance dies"): three `iot-cluster-node` processes over the machine's NATS and PostgreSQL,
//! and 100 rumqttc devices in this process, all connected to `gw0` on plain MQTT and sending
//! numbered QoS 1 telemetry, one message in flight at a time.
//!
//! Before the kill, ten of them get a C2D message (queued through gw2's REST API) that they
//! receive on gw0 and do not acknowledge, so gw0 holds its lock. Then gw0 gets SIGKILL, and the
//! test checks what the issue asks:
//!
//! * every device reconnects to gw1 or gw2 (by its index, alternating, as a load balancer
//!   would) and its telemetry goes on there;
//! * every message whose PUBACK a device received is in the hub's telemetry log (the NATS
//!   JetStream streams the nodes share), duplicates allowed (QoS 1 is at least once: a message
//!   gw0 wrote but did not acknowledge before it died is sent again);
//! * the ten devices are held back from reconnecting until the test has seen a direct method to
//!   them answered 404 `DeviceNotOnline` (while gw0's lease runs and after it lapsed); once
//!   reconnected, a method through the *other* live node reaches them and they answer it;
//! * each of the ten receives its withheld C2D message again on its new instance once gw0's
//!   lock lapsed, not before (the lock is 8 s, and the device is connected there seconds before
//!   that).
//!
//! The figures (messages, duplicates, reconnect times, kill to "offline", redelivery delay) are
//! printed; only the behaviour is asserted, with generous guards against hanging.
//!
//! `cargo test --features cluster-node --test cluster_kill -- --nocapture`. Outside CI a missing
//! NATS or PostgreSQL skips the test (it says so); under CI (`CI` set) it fails.
#![cfg(feature = "cluster-node")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "a failed unwrap is a failed test; the test prints its figures and why it skips"
)]

mod cluster_support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_support::http::ServiceClient;
use cluster_support::{NodeOptions, ProcessCluster, unique_name};
use iot_sdk::core::{Log, Offset, PartitionId, ReadLimits, Topics};
use iot_sdk::identity::{SymmetricKey, sas};
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, MqttOptions, QoS, SubscribeFilter};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Devices on the instance that is killed.
const DEVICES: usize = 100;
/// Devices `0..HELD_BACK` get a C2D message they leave locked on gw0, and reconnect only after
/// the test saw methods to them answered "offline".
const HELD_BACK: usize = 10;
/// The C2D lock duration of every node: long enough that a held-back device is connected to its
/// new instance well before gw0's lock lapses, so "redelivered not before the lapse" is a real
/// check.
const LOCK: Duration = Duration::from_secs(8);
/// How early a redelivery may come, measured from the device's first receipt, and still count
/// as "after the lock lapsed": the node took the lock a moment before the device received the
/// message.
const LOCK_SLACK: Duration = Duration::from_secs(1);
/// Pause between a device's PUBACK and its next message.
const SEND_INTERVAL: Duration = Duration::from_millis(100);
/// Guard against hanging for things that take milliseconds to a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);
/// The hub host in tokens (the nodes' default `--host`).
const HOST: &str = "localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_instance_holding_100_devices() {
    let options = NodeOptions {
        lock: LOCK,
        // `KILL_NODE_LOG=info` (a `RUST_LOG` for the nodes) prints what they logged at the end.
        log: std::env::var("KILL_NODE_LOG").ok(),
        ..NodeOptions::default()
    };
    if !services_reachable(&options).await {
        return;
    }
    let name = unique_name("kill");
    let mut cluster =
        tokio::task::block_in_place(|| ProcessCluster::start(&name, 3, options.clone(), &[]));
    let mqtt: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addrs.mqtt).collect();
    let service: Vec<ServiceClient> = cluster
        .nodes
        .iter()
        .map(|n| ServiceClient::owner(n.addrs.http, HOST, &cluster.service_key))
        .collect();

    // The fleet, created through gw1's REST API in one bulk request.
    let devices: Vec<Device> = (0..DEVICES)
        .map(|index| Device {
            index,
            id: format!("{name}-d{index:03}"),
            key: SymmetricKey::generate(),
        })
        .collect();
    let items: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "importMode": "create",
                "authentication": {"type": "sas", "symmetricKey": {
                    "primaryKey": d.key.expose_base64().as_str(),
                    "secondaryKey": SymmetricKey::generate().expose_base64().as_str(),
                }},
            })
        })
        .collect();
    let created = service[1]
        .json("POST", "/devices", Some(&Value::Array(items)))
        .await
        .unwrap();
    assert_eq!(created.status, 200, "{}", created.describe());
    assert_eq!(
        created.json()["isSuccessful"],
        true,
        "{}",
        created.describe()
    );

    // Every device on gw0; after losing it, device i goes to gw1 (i even) or gw2 (i odd).
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (gate, gate_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for device in &devices {
        let fallback = 1 + device.index % 2;
        tasks.push(tokio::spawn(run_device(
            device.clone(),
            (0, mqtt[0]),
            (fallback, mqtt[fallback]),
            device.index < HELD_BACK,
            seen_tx.clone(),
            gate_rx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(seen_tx);
    let mut seen = Seen::new(seen_rx);
    let started = Instant::now();
    seen.until("every device is connected to gw0", 2 * PATIENCE, |s| {
        (0..DEVICES).all(|d| s.up_on(d, |n| n == 0).is_some())
    })
    .await;
    let connect_all = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // C2D messages for the held-back devices, queued through gw2; the devices receive them on
    // gw0 and leave them unacknowledged (locked by gw0).
    for d in &devices[..HELD_BACK] {
        let queued = service[2]
            .raw(
                "POST",
                &format!("/devices/{}/messages/cloudToDevice", d.id),
                &[("iothub-messageid", &c2d_id(d.index))],
                c2d_payload(d.index).as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(queued.status, 200, "{}", queued.describe());
    }
    seen.until(
        "the held-back devices receive their C2D messages on gw0",
        PATIENCE,
        |s| (0..HELD_BACK).all(|d| s.c2d_on(d, |n| n == 0).is_some()),
    )
    .await;
    for d in 0..HELD_BACK {
        let first = seen.c2d_on(d, |n| n == 0).unwrap();
        assert_eq!(first.message_id, c2d_id(d));
        assert_eq!(first.payload, c2d_payload(d).as_bytes());
    }
    // Before the kill a method through gw1 reaches device 0 on gw0: what "offline" is compared
    // with.
    let before = invoke(&service[1], &devices[0].id).await;
    assert_eq!(before.status, 200, "{}", before.describe());
    assert_eq!(before.json()["payload"]["device"], devices[0].id.as_str());

    // kill -9.
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.node_mut("gw0").kill9());

    // Methods to a held-back device answer "offline": while gw0's lease runs (the directory
    // still names it; NATS has no responder) and after it lapsed.
    let mut offline_calls = 0;
    let mut first_offline = None;
    let watch_until = killed + options.lease + Duration::from_secs(1);
    while Instant::now() < watch_until {
        let reply = invoke(&service[1], &devices[0].id).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (404, Some("DeviceNotOnline")),
            "a method to a device whose instance was killed and that has not reconnected: {}",
            reply.describe()
        );
        first_offline.get_or_insert_with(|| killed.elapsed());
        offline_calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in &devices[..HELD_BACK] {
        let reply = invoke(&service[2], &d.id).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (404, Some("DeviceNotOnline")),
            "{}: {}",
            d.id,
            reply.describe()
        );
    }
    let first_offline = first_offline.unwrap();

    // The others are back already, each on its instance.
    seen.until(
        "every device not held back reconnects to gw1/gw2",
        PATIENCE,
        |s| (HELD_BACK..DEVICES).all(|d| s.up_on(d, |n| n != 0).is_some()),
    )
    .await;
    for d in 0..HELD_BACK {
        assert!(
            seen.up_on(d, |n| n != 0).is_none(),
            "held-back device {d} reconnected before it was let go"
        );
    }
    gate.send(true).unwrap();
    let let_go = Instant::now();
    seen.until("the held-back devices reconnect", PATIENCE, |s| {
        (0..HELD_BACK).all(|d| s.up_on(d, |n| n != 0).is_some())
    })
    .await;
    for d in 0..DEVICES {
        let nodes = seen.nodes(d);
        assert_eq!(nodes[0], 0, "device {d}");
        assert!(
            nodes[1..].iter().all(|n| *n == 1 + d % 2),
            "device {d} connected to {nodes:?}: gw0, then only gw{}",
            1 + d % 2
        );
    }

    // Once reconnected, a method through the other live node reaches each held-back device: it
    // may still be "offline" for a moment (the new session's announcement is on its way), then
    // the device answers.
    let mut method_after_up = Vec::new();
    for d in &devices[..HELD_BACK] {
        let up = seen.up_on(d.index, |n| n != 0).unwrap();
        let via = &service[if up.node == 1 { 2 } else { 1 }];
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = invoke(via, &d.id).await;
            if reply.status == 200 {
                assert_eq!(reply.json()["status"], 200, "{}", reply.describe());
                assert_eq!(reply.json()["payload"]["device"], d.id.as_str());
                method_after_up.push(up.at.elapsed());
                seen.until("the device reports the method it answered", PATIENCE, |s| {
                    s.methods
                        .get(&d.index)
                        .is_some_and(|m| m.iter().any(|m| m.node == up.node))
                })
                .await;
                break;
            }
            assert_eq!(
                (reply.status, reply.error_code()),
                (404, Some("DeviceNotOnline")),
                "{}: {}",
                d.id,
                reply.describe()
            );
            assert!(
                Instant::now() < deadline,
                "{}: the method never reached it after it reconnected",
                d.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The withheld C2D messages come again on the new instances once gw0's locks lapse.
    seen.until(
        "every withheld C2D message is delivered again on the new instance",
        LOCK + PATIENCE,
        |s| (0..HELD_BACK).all(|d| s.c2d_on(d, |n| n != 0).is_some()),
    )
    .await;
    let mut redelivery_gaps = Vec::new();
    let mut waited_connected = Vec::new();
    for d in 0..HELD_BACK {
        let first = seen.c2d_on(d, |n| n == 0).unwrap();
        let again = seen.c2d_on(d, |n| n != 0).unwrap();
        let up = seen.up_on(d, |n| n != 0).unwrap();
        assert_eq!(again.message_id, first.message_id, "device {d}");
        assert_eq!(again.payload, first.payload, "device {d}");
        let gap = again.at - first.at;
        assert!(
            gap + LOCK_SLACK >= LOCK,
            "device {d}: redelivered {gap:?} after the first delivery, before the {LOCK:?} lock lapsed"
        );
        assert!(again.at > up.at);
        redelivery_gaps.push(gap);
        // How long the device sat on its new instance before the message came again.
        waited_connected.push(again.at - up.at);
    }

    // More telemetry on the new instances, then stop and count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(true).unwrap();
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("a device stops in time")
                .unwrap(),
        );
    }
    seen.drain();
    for s in &sent {
        assert!(
            s.acked.len() as u64 > s.acked_after_reconnect,
            "device {}: no telemetry acknowledged on gw0 before the kill",
            s.device
        );
        assert!(
            s.acked_after_reconnect > 0,
            "device {}: no telemetry acknowledged on its new instance",
            s.device
        );
    }

    // Every acknowledged (device, seq) is in the hub's telemetry log.
    let logged = read_telemetry(&options.nats, &name, &devices).await;
    let mut missing = Vec::new();
    for s in &sent {
        for seq in &s.acked {
            if !logged.contains_key(&(s.device, *seq)) {
                missing.push((s.device, *seq));
            }
        }
    }
    let published: u64 = sent.iter().map(|s| s.published).sum();
    let acked: usize = sent.iter().map(|s| s.acked.len()).sum();
    let records: u64 = logged.values().sum();
    let duplicates = records - logged.len() as u64;
    let unacked_in_log = logged
        .keys()
        .filter(|(d, seq)| !sent[*d].acked.contains(seq))
        .count();

    let mut reconnect: Vec<Duration> = (HELD_BACK..DEVICES)
        .map(|d| seen.up_on(d, |n| n != 0).unwrap().at - killed)
        .collect();
    reconnect.sort();
    let held_reconnect: Vec<Duration> = (0..HELD_BACK)
        .map(|d| seen.up_on(d, |n| n != 0).unwrap().at - let_go)
        .collect();
    let on = |node: usize| {
        (0..DEVICES)
            .filter(|d| seen.up_on(*d, |n| n == node).is_some())
            .count()
    };
    eprintln!(
        "cluster {name}: 3 nodes, lease {:?}, lock {LOCK:?}",
        options.lease
    );
    eprintln!("  {DEVICES} devices connected to gw0 in {connect_all:.2?}");
    eprintln!(
        "  telemetry: {published} published, {acked} PUBACKed, {records} records in the log \
         ({} distinct), {} PUBACKed missing, {duplicates} duplicates, {unacked_in_log} logged \
         without a PUBACK",
        logged.len(),
        missing.len()
    );
    eprintln!(
        "  reconnect after kill -9 ({} devices not held back): min {:.2?}, median {:.2?}, max {:.2?}; gw1 {}, gw2 {}",
        reconnect.len(),
        reconnect[0],
        reconnect[reconnect.len() / 2],
        reconnect[reconnect.len() - 1],
        on(1),
        on(2)
    );
    eprintln!(
        "  after the kill: {} connections to gw1/gw2 dropped while up, {} connects refused \
         (each device then connected again to the same instance)",
        sent.iter().map(|s| s.dropped).sum::<u64>(),
        sent.iter().map(|s| s.refused).sum::<u64>()
    );
    eprintln!(
        "  held-back devices, let go to reconnected: max {:.2?}",
        held_reconnect.iter().max().unwrap()
    );
    eprintln!(
        "  kill to first DeviceNotOnline: {first_offline:.2?} ({offline_calls} calls through gw1 \
         until {:.2?} after the kill, all 404)",
        options.lease + Duration::from_secs(1)
    );
    eprintln!(
        "  method answered through the other live node, after the device's SUBACK: max {:.2?}",
        method_after_up.iter().max().unwrap()
    );
    eprintln!(
        "  C2D redelivered after the first delivery: min {:.2?}, max {:.2?} (lock {LOCK:?}); \
         the device sat connected on its new instance {:.2?} to {:.2?} before it came",
        redelivery_gaps.iter().min().unwrap(),
        redelivery_gaps.iter().max().unwrap(),
        waited_connected.iter().min().unwrap(),
        waited_connected.iter().max().unwrap()
    );
    if options.log.is_some() {
        for node in &cluster.nodes {
            eprintln!("==== {}\n{}", node.instance, node.output());
        }
    }
    assert!(
        missing.is_empty(),
        "{} PUBACKed messages are not in the log, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(acked > 0);

    delete_streams(&options.nats, &name).await;
}

/// One device of the fleet.
#[derive(Debug, Clone)]
struct Device {
    index: usize,
    id: String,
    key: SymmetricKey,
}

fn c2d_id(device: usize) -> String {
    format!("c2d-{device}")
}

fn c2d_payload(device: usize) -> String {
    format!("for device {device}")
}

/// What a device reports to the test, as it happens.
#[derive(Debug)]
enum Report {
    /// Connected and subscribed on node `node`.
    Up(Mark),
    /// A C2D message arrived on node `node`.
    C2d(Mark, C2dSeen),
    /// The device answered a direct method on node `node`.
    Method(Mark),
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    device: usize,
    node: usize,
    at: Instant,
}

#[derive(Debug, Clone)]
struct C2dSeen {
    node: usize,
    message_id: String,
    payload: Vec<u8>,
    at: Instant,
}

/// What one device sent.
#[derive(Debug)]
struct Sent {
    device: usize,
    /// PUBLISH packets written (a message resent after a lost connection counts again).
    published: u64,
    /// The sequence numbers whose PUBACK arrived.
    acked: Vec<u64>,
    /// How many of those arrived on a connection after the first.
    acked_after_reconnect: u64,
    /// Connections to the new instance that ended while the device was up (the device then
    /// connects there again).
    dropped: u64,
    /// Connects to the new instance refused (the CONNACK's code) or cut before the SUBACK.
    refused: u64,
}

/// The devices' reports, gathered as the test waits for them.
struct Seen {
    rx: mpsc::UnboundedReceiver<Report>,
    up: HashMap<usize, Vec<Mark>>,
    c2d: HashMap<usize, Vec<C2dSeen>>,
    methods: HashMap<usize, Vec<Mark>>,
}

impl Seen {
    fn new(rx: mpsc::UnboundedReceiver<Report>) -> Self {
        Seen {
            rx,
            up: HashMap::new(),
            c2d: HashMap::new(),
            methods: HashMap::new(),
        }
    }

    fn apply(&mut self, event: Report) {
        match event {
            Report::Up(m) => self.up.entry(m.device).or_default().push(m),
            Report::C2d(m, c) => self.c2d.entry(m.device).or_default().push(c),
            Report::Method(m) => self.methods.entry(m.device).or_default().push(m),
        }
    }

    /// Takes every report that arrived so far.
    fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.apply(event);
        }
    }

    /// Takes reports until `done` holds; fails the test after `guard`.
    async fn until(&mut self, what: &str, guard: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + guard;
        self.drain();
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => panic!("the devices stopped before: {what}"),
                Err(_) => panic!("not within {guard:?}: {what}"),
            }
        }
    }

    /// The device's first connect on a node `node` satisfies.
    fn up_on(&self, device: usize, node: impl Fn(usize) -> bool) -> Option<Mark> {
        self.up.get(&device)?.iter().find(|m| node(m.node)).copied()
    }

    /// The nodes the device connected and subscribed to, in order.
    fn nodes(&self, device: usize) -> Vec<usize> {
        self.up
            .get(&device)
            .map(|ups| ups.iter().map(|m| m.node).collect())
            .unwrap_or_default()
    }

    /// The device's first C2D delivery on a node `node` satisfies.
    fn c2d_on(&self, device: usize, node: impl Fn(usize) -> bool) -> Option<C2dSeen> {
        self.c2d
            .get(&device)?
            .iter()
            .find(|c| node(c.node))
            .cloned()
    }
}

/// `POST /twins/{id}/methods` (`ping`, 5 s to answer, the device must be connected now).
async fn invoke(node: &ServiceClient, device: &str) -> cluster_support::http::Reply {
    let body = json!({
        "methodName": "ping",
        "payload": {"n": 1},
        "responseTimeoutInSeconds": 5,
        "connectTimeoutInSeconds": 0,
    });
    node.json("POST", &format!("/twins/{device}/methods"), Some(&body))
        .await
        .unwrap()
}

/// One device: connects to `first`, and after losing a connection it had, to `fallback`
/// (after `may_reconnect` when `held_back`). While connected it sends telemetry `0, 1, 2, …`
/// one at a time (the next after the PUBACK of the last; a message whose PUBACK never came is
/// sent again on the next connection), answers methods, and acknowledges C2D messages except
/// on `first`. Runs until `stop`.
async fn run_device(
    device: Device,
    first: (usize, SocketAddr),
    fallback: (usize, SocketAddr),
    held_back: bool,
    seen: mpsc::UnboundedSender<Report>,
    mut may_reconnect: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Sent {
    let mut sent = Sent {
        device: device.index,
        published: 0,
        acked: Vec::new(),
        acked_after_reconnect: 0,
        dropped: 0,
        refused: 0,
    };
    let mut next_seq = 0u64;
    let mut unacked: Option<u64> = None;
    let mut was_up = false;
    loop {
        if *stop.borrow() {
            return sent;
        }
        let (node, addr) = if was_up { fallback } else { first };
        if was_up && held_back {
            tokio::select! {
                () = raised(&mut may_reconnect) => {}
                () = raised(&mut stop) => return sent,
            }
        }
        let (client, mut events, poller) = connect(&device, addr);
        let mut up = false;
        // A telemetry message waits for its PUBACK on this connection.
        let mut waiting = false;
        let mut next_send = tokio::time::Instant::now();
        let stopped = loop {
            tokio::select! {
                () = raised(&mut stop) => break true,
                event = events.recv() => match event {
                    Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                        if client.try_subscribe_many(filters(&device.id)).is_err() {
                            break false;
                        }
                    }
                    Some(Ok(Event::Incoming(Incoming::SubAck(_)))) if !up => {
                        up = true;
                        let _ = seen.send(Report::Up(Mark { device: device.index, node, at: Instant::now() }));
                        next_send = tokio::time::Instant::now();
                    }
                    Some(Ok(Event::Incoming(Incoming::PubAck(_)))) => {
                        if let Some(seq) = unacked.take() {
                            sent.acked.push(seq);
                            if node != first.0 {
                                sent.acked_after_reconnect += 1;
                            }
                        }
                        waiting = false;
                        next_send = tokio::time::Instant::now() + SEND_INTERVAL;
                    }
                    Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                        let mark = Mark { device: device.index, node, at: Instant::now() };
                        if !on_publish(&device, &client, &publish, mark, node != first.0, &seen) {
                            break false;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break false,
                },
                () = tokio::time::sleep_until(next_send), if up && !waiting => {
                    let seq = *unacked.get_or_insert_with(|| {
                        next_seq += 1;
                        next_seq - 1
                    });
                    let topic = format!("devices/{}/messages/events/", device.id);
                    if client.try_publish(topic, QoS::AtLeastOnce, false, seq.to_string()).is_err() {
                        break false;
                    }
                    waiting = true;
                    sent.published += 1;
                }
            }
        };
        poller.abort();
        if stopped {
            let _ = client.try_disconnect();
            return sent;
        }
        if node != first.0 {
            if up {
                sent.dropped += 1;
            } else {
                sent.refused += 1;
            }
        }
        was_up |= up;
        if !up {
            // Refused or cut before it was up (a throttled connect, say): try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Returns once `flag` is set (or the test is gone).
async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Handles a PUBLISH from the hub: answers a method, records a C2D message and acknowledges it
/// only when `settle_c2d`. `false` when the connection is gone.
fn on_publish(
    device: &Device,
    client: &AsyncClient,
    publish: &rumqttc::Publish,
    mark: Mark,
    settle_c2d: bool,
    seen: &mpsc::UnboundedSender<Report>,
) -> bool {
    let c2d_prefix = format!("devices/{}/messages/devicebound/", device.id);
    if let Some(rest) = publish.topic.strip_prefix("$iothub/methods/POST/") {
        let rid = rest.split_once("?$rid=").map(|(_, r)| r).unwrap_or("");
        let answer = json!({"device": device.id}).to_string();
        let topic = format!("$iothub/methods/res/200/?$rid={rid}");
        let _ = seen.send(Report::Method(mark));
        client.try_ack(publish).is_ok()
            && client
                .try_publish(topic, QoS::AtMostOnce, false, answer)
                .is_ok()
    } else if let Some(bag) = publish.topic.strip_prefix(&c2d_prefix) {
        let message_id = bag
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "%24.mid" || *k == "$.mid")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let _ = seen.send(Report::C2d(
            mark,
            C2dSeen {
                node: mark.node,
                message_id,
                payload: publish.payload.to_vec(),
                at: mark.at,
            },
        ));
        // Unacknowledged, a QoS 1 C2D message stays locked by the instance that sent it.
        !settle_c2d || client.try_ack(publish).is_ok()
    } else {
        client.try_ack(publish).is_ok()
    }
}

/// What the Azure device SDKs subscribe to.
fn filters(device: &str) -> Vec<SubscribeFilter> {
    [
        format!("devices/{device}/messages/devicebound/#"),
        "$iothub/methods/POST/#".to_owned(),
    ]
    .into_iter()
    .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce))
    .collect()
}

type Polled = Result<Event, ConnectionError>;

/// A fresh rumqttc client of `addr` (clean session, manual acks) and a task that polls its
/// event loop into a channel until the connection fails, so that waiting for an event can be
/// cancelled safely.
fn connect(
    device: &Device,
    addr: SocketAddr,
) -> (AsyncClient, mpsc::UnboundedReceiver<Polled>, JoinHandle<()>) {
    let token = sas::generate(
        &format!("{HOST}/devices/{}", device.id),
        &device.key,
        sas::unix_now() + 3600,
        None,
    )
    .unwrap();
    let mut options = MqttOptions::new(&device.id, addr.ip().to_string(), addr.port());
    options
        .set_credentials(
            format!("{HOST}/{}/?api-version=2021-04-12", device.id),
            token.as_str(),
        )
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    (client, rx, poller)
}

/// Every record of the hub's telemetry topic, counted per (device index, sequence number).
async fn read_telemetry(nats: &str, name: &str, devices: &[Device]) -> HashMap<(usize, u64), u64> {
    let index: HashMap<&str, usize> = devices.iter().map(|d| (d.id.as_str(), d.index)).collect();
    let factory = NatsLogFactory::connect(NatsLogConfig::from_url(nats).unwrap().prefix(name))
        .await
        .unwrap();
    // The nodes' partition count (`--partitions`, default 4); the topic keeps the one it was
    // created with.
    let log = Topics::new(factory, 4).topic("telemetry").await.unwrap();
    let mut counts = HashMap::new();
    let mut strangers = HashSet::new();
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let end = log.next_offset(partition).await.unwrap();
        let mut next = log.earliest_offset(partition).await.unwrap();
        while next < end {
            let records = log
                .read(partition, next, ReadLimits::default())
                .await
                .unwrap();
            assert!(!records.is_empty(), "no record at {next:?} before {end:?}");
            for stored in records {
                next = Offset(stored.offset.0 + 1);
                let key = stored.record.key.as_str();
                let seq = std::str::from_utf8(&stored.record.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                match (index.get(key), seq) {
                    (Some(d), Some(seq)) => *counts.entry((*d, seq)).or_insert(0) += 1,
                    _ => {
                        strangers.insert(key.to_owned());
                    }
                }
            }
        }
    }
    assert!(strangers.is_empty(), "records nobody sent: {strangers:?}");
    counts
}

/// Deletes the run's JetStream streams (`{name}-…`).
async fn delete_streams(nats: &str, name: &str) {
    use futures::TryStreamExt;
    let client = async_nats::connect(nats).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    for stream in names {
        if stream.starts_with(&format!("{name}-")) {
            js.delete_stream(&stream).await.unwrap();
        }
    }
}

/// NATS and PostgreSQL answer; outside CI a missing one skips the test, under CI it fails.
async fn services_reachable(options: &NodeOptions) -> bool {
    let guard = Duration::from_secs(5);
    let nats = match tokio::time::timeout(guard, async_nats::connect(&options.nats)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("NATS at {}: {e}", options.nats)),
        Err(_) => Some(format!("NATS at {}: no answer", options.nats)),
    };
    let pg = match tokio::time::timeout(
        guard,
        tokio_postgres::connect(&options.postgres, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("PostgreSQL at {}: {e}", options.postgres)),
        Err(_) => Some(format!("PostgreSQL at {}: no answer", options.postgres)),
    };
    let problems: Vec<String> = nats.into_iter().chain(pg).collect();
    if problems.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "unreachable under CI: {problems:?}"
    );
    eprintln!("skipped: {problems:?}; CI runs this test");
    false
}
