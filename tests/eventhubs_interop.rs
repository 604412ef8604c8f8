//! Issue 21: Microsoft's Python `azure-eventhub` `EventHubConsumerClient`, unmodified, reads the
//! hub's telemetry through the Event Hubs-compatible endpoint (TLS, `$cbs` with a connection
//! string of the `service` policy, `$management`), and resumes from a checkpoint offset after
//! the hub and the endpoint restart.
//!
//! 100 devices are in-process `Gateway` sessions of a file-backed `Hub` (the telemetry path MQTT
//! and HTTP devices take from `DeviceSession::send_telemetry` on); the reader is the real
//! client. Needs `.venv` with azure-eventhub (`scripts/eventhubs/interop.sh` installs it).
//! `cargo test -p iot-sdk --features eventhubs-interop --test eventhubs_interop`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iot_gateway::http::{PolicyStore, Rights, SharedAccessPolicy};
use iot_gateway::mqtt::SelfSigned;
use iot_gateway::{
    DeviceSession, Gateway, Hub, HubConfig, SessionOptions, Telemetry, ThrottleConfig,
};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Presented, SymmetricKey,
};
use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint, tls_config_from_pem};
use serde_json::Value;

const DEVICES: usize = 100;
const FIRST: usize = 5;
const SECOND: usize = 3;
const HOST: &str = "localhost";
const ENTITY: &str = "interop-hub";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn hub(dir: &Path, identity: Arc<dyn IdentityStore>) -> Hub {
    let mut config = HubConfig::default();
    config.partitions = 4;
    config.throttle = ThrottleConfig::unlimited();
    Hub::open_dir(dir, identity, HOST, config)
        .await
        .expect("hub")
}

/// Every device sends `count` messages numbered from `from`, with application properties.
async fn send(hub: &Hub, keys: &[(String, String)], from: usize, count: usize) {
    let mut tasks = Vec::new();
    for (id, key) in keys {
        let session: Arc<dyn DeviceSession> = hub
            .connect(
                &id.parse().expect("id"),
                Presented::SymmetricKey(key),
                SessionOptions::default(),
            )
            .await
            .expect("connect")
            .into();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for n in from..from + count {
                let mut t = Telemetry::new(format!("{{\"device\":\"{id}\",\"n\":{n}}}"));
                t.properties.push(("n".into(), n.to_string()));
                t.properties.push(("sensor".into(), format!("{id}-temp")));
                session.send_telemetry(t).await.expect("telemetry");
            }
            session.close().await;
        }));
    }
    for t in tasks {
        t.await.expect("device task");
    }
}

struct Endpoint {
    endpoint: EventHubsEndpoint,
    address: String,
}

async fn endpoint(hub: &Hub, policies: Arc<PolicyStore>, pair: &SelfSigned) -> Endpoint {
    let endpoint = EventHubsEndpoint::new(
        hub.telemetry_log().clone(),
        policies,
        EventHubsConfig::new(HOST, ENTITY),
    );
    let tls = tls_config_from_pem(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes()).expect("tls");
    let bound = endpoint
        .listen_tls("127.0.0.1:0".parse().expect("addr"), tls)
        .await
        .expect("listen");
    Endpoint {
        endpoint,
        address: format!("sb://{HOST}:{}", bound.port()),
    }
}

/// Runs consume.py; returns the event lines (and checks the management lines).
fn consume(
    connection_string: &str,
    endpoint: &str,
    ca: &Path,
    expect: usize,
    start: Option<String>,
) -> Vec<Value> {
    let mut cmd = std::process::Command::new(root().join(".venv/bin/python"));
    cmd.arg(root().join("scripts/eventhubs/consume.py"))
        .args([
            "--connection-string",
            connection_string,
            "--endpoint",
            endpoint,
        ])
        .arg("--ca")
        .arg(ca)
        .args([
            "--expect",
            &expect.to_string(),
            "--timeout",
            "180",
            "--linger",
            "3",
        ]);
    if let Some(start) = start {
        cmd.args(["--start", &start]);
    }
    let out = cmd
        .output()
        .expect("run .venv/bin/python (scripts/eventhubs/interop.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "consume.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let eventhub = lines
        .iter()
        .find_map(|l| l.get("eventhub"))
        .expect("eventhub properties");
    assert_eq!(eventhub["name"], ENTITY);
    assert_eq!(eventhub["partition_ids"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.get("partition_properties").is_some())
            .count(),
        4
    );
    lines
        .into_iter()
        .filter(|l| l.get("partition").is_some())
        .collect()
}

/// (device, n) of an event, checking that the device id annotation, the properties and the
/// body agree.
fn identify(event: &Value) -> (String, usize) {
    let device = event["device"]
        .as_str()
        .expect("device id annotation")
        .to_owned();
    let n: usize = event["properties"]["n"]
        .as_str()
        .expect("n")
        .parse()
        .expect("n number");
    assert_eq!(event["properties"]["sensor"], format!("{device}-temp"));
    let body: Value =
        serde_json::from_str(event["body"].as_str().expect("body")).expect("body json");
    assert_eq!(body["device"], device.as_str());
    assert_eq!(body["n"], n);
    assert_eq!(
        event["offset"],
        event["sequence_number"].to_string().as_str()
    );
    (device, n)
}

/// Checks per-partition order (sequence numbers increase, each device's `n` increases) and
/// returns every event's (device, n).
fn check_order(events: &[Value]) -> Vec<(String, usize)> {
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut last_n: HashMap<String, usize> = HashMap::new();
    let mut device_partition: HashMap<String, String> = HashMap::new();
    let mut all = Vec::new();
    for e in events {
        let partition = e["partition"].as_str().expect("partition").to_owned();
        let seq = e["sequence_number"].as_i64().expect("seq");
        if let Some(prev) = last_seq.insert(partition.clone(), seq) {
            assert!(seq > prev, "partition {partition}: {seq} after {prev}");
        }
        let (device, n) = identify(e);
        if let Some(prev) = last_n.insert(device.clone(), n) {
            assert!(n > prev, "{device}: {n} after {prev}");
        }
        let p = device_partition
            .entry(device.clone())
            .or_insert(partition.clone());
        assert_eq!(*p, partition, "{device} in two partitions");
        all.push((device, n));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_eventhub_reads_every_message_and_resumes_from_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let mut keys = Vec::new();
    for i in 0..DEVICES {
        let id = format!("eh-device-{i:03}");
        let key = SymmetricKey::generate();
        identity
            .create(NewIdentity::new(
                id.parse().expect("id"),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create");
        keys.push((id, key.expose_base64().to_string()));
    }
    let service = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
    let policies = Arc::new(PolicyStore::memory(vec![service.clone()]));
    let pair = SelfSigned::generate(HOST).expect("certificates");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &pair.ca_pem).expect("ca");
    let data = tmp.path().join("hub");

    // First life: 100 devices × FIRST messages, all read from the start.
    let first = hub(&data, identity.clone()).await;
    send(&first, &keys, 0, FIRST).await;
    let ep = endpoint(&first, policies.clone(), &pair).await;
    let conn = ep.endpoint.config().connection_string(&service);
    assert!(conn.starts_with("Endpoint=sb://localhost/;SharedAccessKeyName=service;"));
    let events = tokio::task::spawn_blocking({
        let (conn, address, ca) = (conn.clone(), ep.address.clone(), ca.clone());
        move || consume(&conn, &address, &ca, DEVICES * FIRST, None)
    })
    .await
    .expect("consume");
    let got = check_order(&events);
    assert_eq!(got.len(), DEVICES * FIRST, "no duplicates");
    let distinct: HashSet<_> = got.iter().cloned().collect();
    let wanted: HashSet<_> = keys
        .iter()
        .flat_map(|(id, _)| (0..FIRST).map(move |n| (id.clone(), n)))
        .collect();
    assert_eq!(distinct, wanted, "every message of every device");

    // A checkpoint per partition: the offset of the event in the middle of what was read.
    let mut by_partition: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        by_partition
            .entry(e["partition"].as_str().expect("p").to_owned())
            .or_default()
            .push(e);
    }
    let mut checkpoint = serde_json::Map::new();
    let mut after_checkpoint: HashSet<(String, usize)> = HashSet::new();
    for (p, list) in &by_partition {
        let mid = list.len() / 2;
        checkpoint.insert(p.clone(), list[mid]["offset"].clone());
        after_checkpoint.extend(list[mid + 1..].iter().map(|e| identify(e)));
    }

    // Restart: the endpoint and the hub stop; a new hub opens the same files.
    ep.endpoint.stop();
    drop(ep);
    first.shutdown().await;
    drop(first);
    let second = hub(&data, identity.clone()).await;
    send(&second, &keys, FIRST, SECOND).await;
    let ep = endpoint(&second, policies.clone(), &pair).await;
    let expected: HashSet<_> = after_checkpoint
        .into_iter()
        .chain(
            keys.iter()
                .flat_map(|(id, _)| (FIRST..FIRST + SECOND).map(move |n| (id.clone(), n))),
        )
        .collect();
    let start = Value::Object(checkpoint).to_string();
    let resumed = tokio::task::spawn_blocking({
        let (conn, address, ca, n) = (conn.clone(), ep.address.clone(), ca.clone(), expected.len());
        move || consume(&conn, &address, &ca, n, Some(start))
    })
    .await
    .expect("consume");
    let got = check_order(&resumed);
    assert_eq!(
        got.len(),
        expected.len(),
        "nothing twice, nothing from before the checkpoint"
    );
    assert_eq!(
        got.into_iter().collect::<HashSet<_>>(),
        expected,
        "exactly what followed the checkpoint"
    );
    second.shutdown().await;
}
