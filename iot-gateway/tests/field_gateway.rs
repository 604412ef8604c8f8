//! The field gateway's upstream forwarder (`iot_gateway::edge`, feature `edge`): two hubs in this
//! process, a "cloud" hub behind an `MqttServer` over TLS (self-signed CA, loopback) and an
//! "edge" hub on a directory (FileLog telemetry), with leaf devices on the edge hub's `connect`
//! sessions and a `Forwarder` carrying their traffic up as the leaves.
//!
//! `cargo test -p iot-gateway --features edge --test field_gateway`

mod mqtt_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_core::{DeviceId, LogExt, Offset, ReadLimits, StoredRecord};
use iot_gateway::client::{Backoff, ClientOptions};
use iot_gateway::edge::{Forwarder, ForwarderOptions, IdentityFn, IdentityMap};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{
    DeviceSession, Gateway, Hub, HubConfig, MethodCall, MethodResponse, SessionEvent,
    SessionOptions, Subscription, Telemetry,
};
use iot_identity::Presented;
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey};
use mqtt_support::{HOST, PATIENCE};

/// The edge hub's host name (its leaves' tokens would be scoped to it).
const EDGE_HOST: &str = "edge.local";

/// A generous guard for the end-to-end waits (an outage and reconnects with backoff).
const LONG_PATIENCE: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, patience: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(patience, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// The cloud hub: in memory, with an MQTT/TLS listener that the test can stop and start again
/// on the same port.
struct Cloud {
    hub: Hub,
    identity: Arc<MemoryIdentityStore>,
    pair: SelfSigned,
    server: Option<MqttServer>,
    addr: SocketAddr,
}

impl Cloud {
    async fn start() -> Cloud {
        let identity = Arc::new(MemoryIdentityStore::new());
        let hub = Hub::memory(identity.clone(), HOST)
            .await
            .expect("cloud hub");
        let pair = SelfSigned::generate(HOST).expect("certificates");
        let mut cloud = Cloud {
            hub,
            identity,
            pair,
            server: None,
            addr: loopback(),
        };
        cloud.listen().await;
        cloud
    }

    /// Starts the listener (again), on the port it had before.
    async fn listen(&mut self) {
        let gateway: Arc<dyn Gateway> = Arc::new(self.hub.clone());
        let server = MqttServer::new(gateway, MqttConfig::default()).expect("server");
        let tls = self.pair.tls_config(false).expect("tls");
        let addr = self.addr;
        let bound = within("the cloud listener", PATIENCE, async {
            loop {
                match server.listen_tls(addr, tls.clone()).await {
                    Ok(bound) => return bound,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        self.addr = bound;
        self.server = Some(server);
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Provisions `leaf` in the cloud with a fresh key; returns its upstream options.
    async fn provision(&self, leaf: &DeviceId) -> ClientOptions {
        let key = SymmetricKey::generate();
        self.identity
            .create(NewIdentity::new(
                leaf.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("cloud identity");
        ClientOptions::with_key(HOST, leaf.as_str(), key)
            .port(self.addr.port())
            .ca_roots_pem(self.pair.ca_pem.as_bytes())
            .backoff(Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            })
    }

    /// Every telemetry record of the cloud hub, grouped by device, in log order.
    async fn telemetry(&self) -> HashMap<String, Vec<StoredRecord>> {
        let log = self.hub.telemetry_log();
        let mut by_device: HashMap<String, Vec<StoredRecord>> = HashMap::new();
        for partition in log.partitions() {
            let mut from = Offset(0);
            loop {
                let records = log
                    .read(partition, from, ReadLimits::default())
                    .await
                    .expect("read cloud log");
                let Some(last) = records.last() else { break };
                from = last.offset.next();
                for r in records {
                    by_device.entry(r.record.key.clone()).or_default().push(r);
                }
            }
        }
        by_device
    }

    /// Waits until every leaf's messages 1..=`count` have reached the cloud (by message id).
    async fn wait_for(&self, leaves: &[Leaf], count: u32) -> HashMap<String, Vec<StoredRecord>> {
        within("telemetry in the cloud", LONG_PATIENCE, async {
            loop {
                let all = self.telemetry().await;
                let done = leaves.iter().all(|leaf| {
                    first_appearances(all.get(leaf.id.as_str()).map_or(&[][..], |v| v)).len()
                        >= count as usize
                });
                if done {
                    return all;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

/// The sequence numbers of a device's records in the order they first appear (by message id).
fn first_appearances(records: &[StoredRecord]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter_map(|r| {
            let id = r.record.headers.get("message-id")?.to_owned();
            seen.insert(id)
                .then(|| r.record.headers.get("seq")?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The edge hub on `dir`: its telemetry log is a FileLog, so it outlives the forwarder and the
/// hub itself.
async fn open_edge(dir: &Path, identity: Arc<MemoryIdentityStore>) -> Hub {
    // A hub dropped a moment ago may still hold its directories' locks while its tasks wind down.
    within("the edge hub", PATIENCE, async {
        loop {
            match Hub::open_dir(dir, identity.clone(), EDGE_HOST, HubConfig::default()).await {
                Ok(hub) => return hub,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
}

/// A leaf device: its edge identity and its session on the edge hub.
struct Leaf {
    id: DeviceId,
    key: SymmetricKey,
    session: Option<Box<dyn DeviceSession>>,
}

impl Leaf {
    async fn provision(edge_identity: &MemoryIdentityStore, id: &str) -> Leaf {
        let id: DeviceId = id.parse().expect("device id");
        let key = SymmetricKey::generate();
        edge_identity
            .create(NewIdentity::new(
                id.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("edge identity");
        Leaf {
            id,
            key,
            session: None,
        }
    }

    async fn connect(&mut self, edge: &Hub) {
        let key = self.key.expose_base64();
        let session = edge
            .connect(
                &self.id,
                Presented::SymmetricKey(key.as_str()),
                SessionOptions::default(),
            )
            .await
            .expect("leaf session on the edge hub");
        self.session = Some(session);
    }

    fn session(&self) -> &dyn DeviceSession {
        self.session.as_deref().expect("connected")
    }

    /// Sends messages `range` (message id `{leaf}-{n}`, property `seq`); each is acknowledged
    /// once it is in the edge log.
    async fn send(&self, range: std::ops::RangeInclusive<u32>) {
        for n in range {
            let mut message = Telemetry::new(format!(r#"{{"n":{n}}}"#));
            message.system.message_id = Some(format!("{}-{n}", self.id));
            message.system.content_type = Some("application/json".into());
            message.system.component = Some("thermostat1".into());
            message.system.expiry = Some(iot_core::Timestamp::from_unix_millis(
                4_000_000_000_000 + u64::from(n),
            ));
            message.properties = vec![("seq".into(), n.to_string())];
            self.session()
                .send_telemetry(message)
                .await
                .expect("edge accepted the telemetry");
        }
    }
}

/// Checks one leaf's records in the cloud: messages 1..=`count`, first appearances in order,
/// nothing missing; returns how many duplicates there were.
fn check_leaf(all: &HashMap<String, Vec<StoredRecord>>, leaf: &Leaf, count: u32) -> usize {
    let records = all.get(leaf.id.as_str()).expect("the leaf's records");
    let order = first_appearances(records);
    assert_eq!(
        order,
        (1..=count).collect::<Vec<_>>(),
        "{}: every message once, in order",
        leaf.id
    );
    for r in records {
        // The cloud hub stamps the leaf as the sender: the forwarder connected as the leaf.
        assert_eq!(
            r.record.headers.get("iothub-connection-device-id"),
            Some(leaf.id.as_str())
        );
        assert_eq!(
            r.record.headers.get("content-type"),
            Some("application/json")
        );
        assert_eq!(r.record.headers.get("dt-subject"), Some("thermostat1"));
        let seq = r.record.headers.get("seq").expect("seq property");
        let expiry = 4_000_000_000_000 + seq.parse::<u64>().expect("seq");
        assert_eq!(
            r.record.headers.get("expiry-time"),
            Some(expiry.to_string().as_str())
        );
        assert_eq!(
            r.record.payload.as_ref(),
            format!(r#"{{"n":{seq}}}"#).as_bytes()
        );
    }
    records.len() - order.len()
}

const LEAVES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the figures are printed, not asserted
async fn telemetry_reaches_the_cloud_in_order_across_an_outage_and_a_forwarder_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start().await;
    let edge_identity = Arc::new(MemoryIdentityStore::new());
    let edge = open_edge(dir.path(), edge_identity.clone()).await;

    let mut leaves = Vec::new();
    let mut upstream = IdentityMap::new();
    for i in 0..LEAVES {
        let mut leaf = Leaf::provision(&edge_identity, &format!("leaf-{i}")).await;
        leaf.connect(&edge).await;
        upstream.insert(leaf.id.clone(), cloud.provision(&leaf.id).await);
        leaves.push(leaf);
    }
    let upstream = Arc::new(upstream);
    let options = ForwarderOptions::default().read_limits(ReadLimits::records(50));
    let forwarder = Forwarder::start(&edge, upstream.clone(), options.clone())
        .await
        .expect("forwarder");

    // 1. The link is up.
    for leaf in &leaves {
        leaf.send(1..=20).await;
    }
    let all = cloud.wait_for(&leaves, 20).await;
    for leaf in &leaves {
        assert_eq!(
            check_leaf(&all, leaf, 20),
            0,
            "no duplicates without faults"
        );
    }

    // 2. The cloud endpoint goes away for a few seconds while the leaves keep sending: the edge
    //    log holds their messages. Mid-outage the forwarder is dropped with a batch in its
    //    clients' outboxes (sent nowhere, not committed) and a new one starts on the same log.
    //    When the cloud is back everything reaches it, oldest first.
    cloud.stop().await;
    let outage = Instant::now();
    for leaf in &leaves {
        leaf.send(21..=40).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Nothing can be committed while the cloud is away: the whole outage's traffic waits.
    let backlog = forwarder.backlog().await.expect("backlog");
    assert_eq!(backlog, (LEAVES * 20) as u64);
    drop(forwarder);
    for leaf in &leaves {
        leaf.send(41..=60).await;
    }
    let forwarder = Forwarder::start(&edge, upstream.clone(), options.clone())
        .await
        .expect("a new forwarder during the outage");
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "outage: {} records waiting in the edge log after {:?}",
        forwarder.backlog().await.expect("backlog"),
        outage.elapsed()
    );
    let before = cloud.telemetry().await;
    for leaf in &leaves {
        // Nothing past what the cloud had before the outage can have arrived while it was away.
        let got = first_appearances(before.get(leaf.id.as_str()).expect("records"));
        assert_eq!(got, (1..=20).collect::<Vec<_>>());
    }
    cloud.listen().await;
    let drain = Instant::now();
    let all = cloud.wait_for(&leaves, 60).await;
    println!(
        "drain after the outage: {} messages in {:?}",
        LEAVES * 40,
        drain.elapsed()
    );
    let mut duplicates = 0;
    for leaf in &leaves {
        duplicates += check_leaf(&all, leaf, 60);
    }
    // At least once: only messages sent but not acknowledged when the link dropped go twice,
    // which is at most one leaf outbox's worth each.
    assert!(
        duplicates <= LEAVES * options.outbox_capacity,
        "{duplicates} duplicates"
    );
    println!("duplicates after the outage: {duplicates}");

    // 3. The forwarder and the edge hub go away; the leaves' next messages wait in the edge
    //    directory; a new hub and forwarder on it resume after the last committed batch.
    within("an empty backlog", PATIENCE, async {
        while forwarder.backlog().await.expect("backlog") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The second forwarder sent the outage's traffic (21..=60), from the last commit.
    let stats = forwarder.stats();
    assert!(stats.forwarded >= (LEAVES * 40) as u64, "{stats:?}");
    assert_eq!(stats.skipped, 0);
    forwarder.shutdown().await;
    for leaf in &leaves {
        leaf.send(61..=80).await;
    }
    for leaf in &mut leaves {
        leaf.session = None;
    }
    edge.shutdown().await;
    drop(edge);
    let edge = open_edge(dir.path(), edge_identity.clone()).await;
    let forwarder = Forwarder::start(&edge, upstream, options)
        .await
        .expect("forwarder again");
    let all = cloud.wait_for(&leaves, 80).await;
    let mut after_restart = 0;
    for leaf in &leaves {
        after_restart += check_leaf(&all, leaf, 80);
    }
    let stats = forwarder.stats();
    println!("after the restart: {stats:?}, duplicates overall {after_restart}");
    // The new forwarder started from the committed offsets, not from the start of the log.
    assert!(
        stats.forwarded < (LEAVES * 80) as u64,
        "the new forwarder sent everything again: {stats:?}"
    );
    within("an empty backlog", PATIENCE, async {
        while forwarder.backlog().await.expect("backlog") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    forwarder.shutdown().await;
    edge.shutdown().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_methods_and_desired_patches_reach_a_leaf_and_its_reported_properties_go_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = Cloud::start().await;
    let edge_identity = Arc::new(MemoryIdentityStore::new());
    let edge = open_edge(dir.path(), edge_identity.clone()).await;
    let mut leaf = Leaf::provision(&edge_identity, "leaf-down").await;
    leaf.connect(&edge).await;
    for kind in [
        Subscription::C2d,
        Subscription::Methods,
        Subscription::DesiredPatches,
    ] {
        leaf.session().subscribe(kind).await.expect("subscribe");
    }
    let upstream = IdentityMap::new().with(leaf.id.clone(), cloud.provision(&leaf.id).await);
    let forwarder = Forwarder::start(&edge, Arc::new(upstream), ForwarderOptions::default())
        .await
        .expect("forwarder");
    // The leaf is connected upstream before it sent anything (the map names it).
    within("the leaf's upstream connection", PATIENCE, async {
        while !cloud.hub.is_connected(&leaf.id).await.expect("connected?") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(forwarder.leaves(), vec![leaf.id.clone()]);

    // A C2D message sent on the cloud hub.
    let mut message = iot_gateway::C2dMessage::new("open valve");
    message.message_id = Some("c2d-1".into());
    message.properties = vec![("valve".into(), "3".into())];
    cloud
        .hub
        .send_c2d(&leaf.id, message)
        .await
        .expect("send c2d");
    let delivery = within("the C2D message at the leaf", PATIENCE, async {
        match leaf.session().next_event().await.expect("event") {
            SessionEvent::C2d(delivery) => delivery,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(delivery.payload.as_ref(), b"open valve");
    assert_eq!(delivery.message_id, "c2d-1");
    assert_eq!(
        delivery.properties,
        vec![("valve".to_string(), "3".to_string())]
    );
    leaf.session()
        .complete(delivery.lock_token)
        .await
        .expect("complete at the edge");
    // The forwarder completed it upstream once the edge inbox held it.
    within("the cloud's inbox emptied", PATIENCE, async {
        while cloud.hub.pending_c2d(&leaf.id).await.expect("pending") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A direct method invoked on the cloud hub, answered by the leaf.
    let cloud_hub = cloud.hub.clone();
    let leaf_id = leaf.id.clone();
    let invocation = tokio::spawn(async move {
        let mut call = MethodCall::new("reboot", r#"{"delay":1}"#);
        call.connect_timeout = Duration::from_secs(10);
        cloud_hub.invoke_method(&leaf_id, call).await
    });
    let request = within("the method at the leaf", PATIENCE, async {
        match leaf.session().next_event().await.expect("event") {
            SessionEvent::Method(request) => request,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(request.name, "reboot");
    assert_eq!(request.payload.as_ref(), br#"{"delay":1}"#);
    leaf.session()
        .respond_method(MethodResponse {
            request_id: request.request_id,
            status: 202,
            payload: r#"{"rebooting":true}"#.into(),
        })
        .await
        .expect("answer");
    let response = within("the method's answer in the cloud", PATIENCE, invocation)
        .await
        .expect("task")
        .expect("method answered");
    assert_eq!(response.status, 202);
    let body: serde_json::Value = serde_json::from_slice(&response.payload).expect("JSON");
    assert_eq!(body, serde_json::json!({ "rebooting": true }));

    // A desired-properties patch made on the cloud hub reaches the leaf's local twin.
    cloud
        .hub
        .patch_desired(&leaf.id, serde_json::json!({ "interval": 5 }), None)
        .await
        .expect("patch desired");
    let patch = within("the desired patch at the leaf", PATIENCE, async {
        match leaf.session().next_event().await.expect("event") {
            SessionEvent::DesiredPatch(patch) => patch,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    assert_eq!(patch.patch, serde_json::json!({ "interval": 5 }));
    let twin = edge.get_twin(&leaf.id).await.expect("edge twin");
    assert_eq!(
        twin.desired.properties,
        serde_json::json!({ "interval": 5 })
    );

    // The leaf reports properties to the edge hub; the forwarder reports them upstream.
    leaf.session()
        .patch_reported(serde_json::json!({ "firmware": "1.2", "interval": 5 }))
        .await
        .expect("reported at the edge");
    within("the reported properties in the cloud", PATIENCE, async {
        loop {
            let twin = cloud.hub.get_twin(&leaf.id).await.expect("cloud twin");
            if twin.reported.properties == serde_json::json!({ "firmware": "1.2", "interval": 5 }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A method for a leaf that is not connected to the edge hub: the cloud hears 404.
    leaf.session().close().await;
    let mut call = MethodCall::new("reboot", "{}");
    call.connect_timeout = Duration::from_secs(10);
    let response = within(
        "the offline answer",
        PATIENCE,
        cloud.hub.invoke_method(&leaf.id, call),
    )
    .await
    .expect("answered by the forwarder");
    assert_eq!(response.status, 404);

    forwarder.shutdown().await;
    edge.shutdown().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_a_function_connect_leaves_on_first_message_and_skip_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start().await;
    let edge_identity = Arc::new(MemoryIdentityStore::new());
    let edge = open_edge(dir.path(), edge_identity.clone()).await;
    let mut known = Leaf::provision(&edge_identity, "leaf-known").await;
    let mut stranger = Leaf::provision(&edge_identity, "leaf-stranger").await;
    known.connect(&edge).await;
    stranger.connect(&edge).await;
    let known_options = cloud.provision(&known.id).await;
    let known_id = known.id.clone();
    let identities =
        IdentityFn(move |leaf: &DeviceId| (*leaf == known_id).then(|| known_options.clone()));
    let forwarder = Forwarder::start(&edge, Arc::new(identities), ForwarderOptions::default())
        .await
        .expect("forwarder");
    // Nobody is connected upstream before sending: a function names no leaves in advance.
    assert!(forwarder.leaves().is_empty());

    stranger.send(1..=3).await;
    known.send(1..=5).await;
    let all = cloud.wait_for(std::slice::from_ref(&known), 5).await;
    assert_eq!(check_leaf(&all, &known, 5), 0);
    within("the backlog forwarded or skipped", PATIENCE, async {
        while forwarder.backlog().await.expect("backlog") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!all.contains_key(stranger.id.as_str()));
    let stats = forwarder.stats();
    assert_eq!(stats.skipped, 3, "{stats:?}");
    assert_eq!(stats.forwarded, 5, "{stats:?}");
    assert_eq!(forwarder.leaves(), vec![known.id.clone()]);
    forwarder.shutdown().await;
    edge.shutdown().await;
}

/// Edge processing with the cloud's processing model: an `iot-stream` processor on the edge
/// hub's telemetry topic decides what goes upstream (here a router keeps debug messages at the
/// edge), and the forwarder forwards its output topic instead of the raw telemetry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_processor_at_the_edge_decides_what_is_forwarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = Cloud::start().await;
    let edge_identity = Arc::new(MemoryIdentityStore::new());
    // The edge hub's topics, shared with the processor host.
    let topics = Arc::new(iot_core::Topics::file(
        dir.path().join("log"),
        iot_core::FileLogConfig::default().partitions(HubConfig::default().partitions),
    ));
    let edge = Hub::builder_in_dir(
        dir.path(),
        edge_identity.clone(),
        EDGE_HOST,
        HubConfig::default(),
    )
    .await
    .expect("edge builder")
    .topics(topics.clone())
    .build()
    .await
    .expect("edge hub");
    let host = iot_stream::ProcessorHost::new(topics.clone());
    let router = iot_stream::processors::Router::by_header("class")
        .route("debug", "edge-debug")
        .otherwise("to-cloud");
    let routing = host
        .start(
            "telemetry",
            iot_core::GroupName::new("edge-router").expect("group"),
            Arc::new(router),
            iot_stream::HostConfig::default(),
        )
        .await
        .expect("router");

    let mut leaf = Leaf::provision(&edge_identity, "leaf-filtered").await;
    leaf.connect(&edge).await;
    let upstream = IdentityMap::new().with(leaf.id.clone(), cloud.provision(&leaf.id).await);
    let forwarder = Forwarder::start_with(
        topics.topic("to-cloud").await.expect("output topic"),
        Arc::new(edge.clone()),
        Arc::new(upstream),
        ForwarderOptions::default(),
    )
    .await
    .expect("forwarder");

    // Odd messages are debug output, even ones readings.
    for n in 1..=20u32 {
        let class = if n % 2 == 1 { "debug" } else { "reading" };
        let mut message = Telemetry::new(format!(r#"{{"n":{n}}}"#));
        message.system.message_id = Some(format!("{}-{n}", leaf.id));
        message.properties = vec![
            ("seq".into(), n.to_string()),
            ("class".into(), class.into()),
        ];
        leaf.session()
            .send_telemetry(message)
            .await
            .expect("edge accepted the telemetry");
    }
    routing.wait_caught_up().await.expect("router caught up");
    within("the readings in the cloud", LONG_PATIENCE, async {
        loop {
            let all = cloud.telemetry().await;
            if all.get(leaf.id.as_str()).map_or(0, Vec::len) >= 10 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within("an empty backlog", PATIENCE, async {
        while forwarder.backlog().await.expect("backlog") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let all = cloud.telemetry().await;
    let seqs = first_appearances(all.get(leaf.id.as_str()).expect("records"));
    assert_eq!(seqs, (2..=20).step_by(2).collect::<Vec<u32>>());
    let debug = topics.topic("edge-debug").await.expect("debug topic");
    let mut kept = 0;
    for p in debug.partitions() {
        kept += debug.next_offset(p).await.expect("next").get()
            - debug.earliest_offset(p).await.expect("earliest").get();
    }
    assert_eq!(kept, 10, "the debug messages stay at the edge");
    forwarder.shutdown().await;
    routing.shutdown().await.expect("router shutdown");
    edge.shutdown().await;
}
