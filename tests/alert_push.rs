//! Push notifications of alerts (feature `alert-push`) to real HTTP receivers
//! (tests/alert_push/receiver.py, one per user, each checking signatures with its user's own
//! subscription secret): two users with different grants get exactly the alerts of the devices
//! their grants cover (and their subscription's filter asks for), a user without grants gets
//! nothing, every signature verifies, and a crash (the group dropped mid-stream) followed by a
//! restart re-sends at most one batch. By default the push refuses subscribers on non-public
//! addresses (these receivers are on loopback): the last test checks that refusal.
#![cfg(feature = "alert-push")]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use iot_sdk::alert_push::AlertPush;
use iot_sdk::core::{GroupName, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_sdk::identity::PassphraseParams;
use iot_sdk::identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemorySubscriptionStore,
    StaticDeviceSets, Subscription, SubscriptionSecret, SubscriptionStore,
};
use iot_sdk::stream::sinks::webhook::AddressPolicy;
use iot_sdk::stream::sinks::{BatchPolicy, SinkConfig, SinkProcessor};
use iot_sdk::stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Alerts per batch (and per read, so a crash re-sends at most one batch).
const BATCH: usize = 4;

struct Receiver {
    child: Child,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(secret: &str) -> Receiver {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alert_push/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .env("WEBHOOK_SECRET", secret)
            .env("DELAY_MS", "40")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (or $PYTHON) for the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Receiver {
            port: line.trim().parse().expect("the receiver prints its port"),
            child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/alerts", self.port)
    }

    /// Every request it got, over a plain socket (HTTP/1.0: the answer ends at close).
    async fn requests(&self) -> Vec<Value> {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        socket
            .write_all(b"GET /state HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        serde_json::from_str::<Value>(body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// What a receiver got: (event id, device) of every alert, in arrival order, and the request
/// ids, after checking every signature verified.
async fn received(rx: &Receiver) -> (Vec<(String, String)>, Vec<String>) {
    let mut events = Vec::new();
    let mut requests = Vec::new();
    for request in rx.requests().await {
        assert_eq!(request["signatureOk"], true, "{request}");
        requests.push(request["eventId"].as_str().unwrap().to_owned());
        for event in request["events"].as_array().unwrap() {
            events.push((
                event["id"].as_str().unwrap().to_owned(),
                event["deviceId"].as_str().unwrap().to_owned(),
            ));
        }
    }
    (events, requests)
}

async fn send_alerts(topics: &Topics, from: usize, n: usize) {
    let producer = Producer::new(topics.topic("alerts").await.unwrap());
    for i in from..from + n {
        // As `SELECT deviceId, AVG(temperature) AS t INTO alerts … GROUP BY deviceId` writes
        // them: keyed by the device, its id in the payload.
        let device = format!("dev-{}", i % 4 + 1);
        let body = json!({"deviceId": device, "t": 80 + i}).to_string();
        producer.send(Record::new(device, body)).await.unwrap();
    }
}

async fn start(topics: &Arc<Topics>, push: Arc<AlertPush>) -> RunningGroup {
    let config = SinkConfig::default()
        .batch(BatchPolicy {
            max_records: BATCH,
            ..BatchPolicy::default()
        })
        .max_attempts(30)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(40));
    let factory = SinkProcessor::factory(push, config).unwrap();
    ProcessorHost::new(topics.clone())
        .start(
            "alerts",
            GroupName::new("alert-push").unwrap(),
            Arc::new(factory),
            HostConfig::default()
                .read_limits(ReadLimits::records(BATCH))
                .tick_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap()
}

/// An access matrix over `sets` with `users`, each grant making its user a viewer of a set.
async fn access_with(
    sets: StaticDeviceSets,
    users: &[&str],
    grants: impl IntoIterator<Item = (&str, DeviceSet)>,
) -> AccessControl {
    let access = AccessControl::new(Arc::new(MemoryAccessStore::new()), Arc::new(sets))
        .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
        .unwrap();
    for user in users {
        access
            .create_user(user.parse().unwrap(), "a password")
            .await
            .unwrap();
    }
    for (user, set) in grants {
        access
            .grant(Grant::new(
                user.parse().unwrap(),
                "viewer".parse().unwrap(),
                set,
            ))
            .await
            .unwrap();
    }
    access
}

/// Waits until the group's checkpoint reaches the end of the alerts topic.
async fn wait_delivered(topics: &Topics, group: &RunningGroup) {
    let log = topics.topic("alerts").await.unwrap();
    let end = log.next_offset(PartitionId(0)).await.unwrap();
    let guard = tokio::time::Instant::now() + Duration::from_secs(60);
    while group.committed() != [end] {
        assert!(
            tokio::time::Instant::now() < guard,
            "the push never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_gets_exactly_the_alerts_of_their_devices_signed_and_once_per_restart() {
    let id = |s: &str| s.parse::<iot_sdk::core::DeviceId>().unwrap();
    let sets = StaticDeviceSets::new()
        .with_metadata(id("dev-1"), [("building", "HQ")])
        .with_metadata(id("dev-2"), [("building", "HQ")])
        .with_metadata(id("dev-3"), [("building", "Depot")])
        .with_metadata(id("dev-4"), [("building", "Annex")]);
    // Olga reads the HQ building, Vera one device of the depot; Nina nothing.
    let access = access_with(
        sets,
        &["olga", "vera", "nina"],
        [
            ("olga", DeviceSet::Node("building=HQ".parse().unwrap())),
            ("vera", DeviceSet::Device(id("dev-3"))),
        ],
    )
    .await;

    let secrets = BTreeMap::from([
        ("olga", "olga's secret, 32 bytes at least"),
        ("vera", "vera's own secret for webhooks!!"),
        ("nina", "nina's secret that signs nothing"),
    ]);
    let receivers: BTreeMap<&str, Receiver> = secrets
        .iter()
        .map(|(u, s)| (*u, Receiver::start(s)))
        .collect();
    let subscriptions = Arc::new(MemorySubscriptionStore::new());
    for (user, filter) in [
        ("olga", None),
        // Vera asks for dev-1 too, but may not read it: her grants decide.
        ("vera", Some(BTreeSet::from([id("dev-3"), id("dev-1")]))),
        ("nina", None),
    ] {
        let s = Subscription::new(
            user.parse().unwrap(),
            receivers[user].url(),
            filter,
            SubscriptionSecret::new(secrets[user]).unwrap(),
        )
        .unwrap();
        subscriptions.add(s).await.unwrap();
    }
    let topics = Arc::new(Topics::memory(1));
    // The receivers are on loopback, which the default policy refuses.
    let push = Arc::new(
        AlertPush::new(access.clone(), subscriptions.clone()).addresses(AddressPolicy::Any),
    );

    // A first run over 12 alerts, shut down gracefully.
    send_alerts(&topics, 0, 12).await;
    let group = start(&topics, push.clone()).await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();
    let expect = |n: usize, devices: &[&str]| -> BTreeSet<(String, String)> {
        (0..n)
            .map(|i| (format!("alerts:0:{i}"), format!("dev-{}", i % 4 + 1)))
            .filter(|(_, d)| devices.contains(&d.as_str()))
            .collect()
    };
    let (olga, _) = received(&receivers["olga"]).await;
    assert_eq!(olga.len(), 6, "no copies after a graceful stop: {olga:?}");
    assert_eq!(
        olga.into_iter().collect::<BTreeSet<_>>(),
        expect(12, &["dev-1", "dev-2"])
    );
    let (vera, _) = received(&receivers["vera"]).await;
    assert_eq!(
        vera.into_iter().collect::<BTreeSet<_>>(),
        expect(12, &["dev-3"])
    );
    assert!(
        receivers["nina"].requests().await.is_empty(),
        "no grant, no alert"
    );

    // A crash: the group is dropped while it posts the next 24 alerts, then started again.
    send_alerts(&topics, 12, 24).await;
    let seen = receivers["olga"].requests().await.len();
    let group = start(&topics, push.clone()).await;
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    while receivers["olga"].requests().await.len() < seen + 2 {
        assert!(tokio::time::Instant::now() < guard, "nothing was posted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(group);
    let fresh = Arc::new(
        AlertPush::new(access.clone(), subscriptions.clone()).addresses(AddressPolicy::Any),
    );
    let group = start(&topics, fresh).await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();

    for (user, devices) in [("olga", &["dev-1", "dev-2"][..]), ("vera", &["dev-3"][..])] {
        let (events, requests) = received(&receivers[user]).await;
        let distinct: BTreeSet<_> = events.iter().cloned().collect();
        assert_eq!(
            distinct,
            expect(36, devices),
            "{user} gets exactly their alerts"
        );
        let copies = events.len() - distinct.len();
        assert!(
            copies <= BATCH,
            "{user}: {copies} alerts sent twice, more than a batch"
        );
        let repeated = requests.len() - requests.iter().collect::<BTreeSet<_>>().len();
        assert!(
            repeated <= 1,
            "{user}: {repeated} requests sent again, more than one batch"
        );
    }
    assert!(receivers["nina"].requests().await.is_empty());
}

/// A subscriber whose webhook is on the hub's own host gets nothing under the default policy,
/// and the push goes on (its alerts are not retried forever nor dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_subscriber_on_a_loopback_address_is_refused() {
    let id = |s: &str| s.parse::<iot_sdk::core::DeviceId>().unwrap();
    let sets = StaticDeviceSets::new().with_metadata(id("dev-1"), [("building", "HQ")]);
    let access = access_with(
        sets,
        &["olga"],
        [("olga", DeviceSet::Node("building=HQ".parse().unwrap()))],
    )
    .await;
    let secret = "olga's secret, 32 bytes at least";
    let receiver = Receiver::start(secret);
    let subscriptions = Arc::new(MemorySubscriptionStore::new());
    for url in [
        receiver.url(),
        receiver.url().replace("127.0.0.1", "localhost"),
    ] {
        let s = Subscription::new(
            "olga".parse().unwrap(),
            url,
            None,
            SubscriptionSecret::new(secret).unwrap(),
        )
        .unwrap();
        subscriptions.add(s).await.unwrap();
    }
    let topics = Arc::new(Topics::memory(1));
    send_alerts(&topics, 0, 8).await;
    let push = Arc::new(AlertPush::new(access, subscriptions));
    let group = start(&topics, push).await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();
    assert!(
        receiver.requests().await.is_empty(),
        "a loopback webhook was called"
    );
}
