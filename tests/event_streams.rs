//! IoT Hub's event streams: connection state, device lifecycle and twin change events in IoT
//! Hub's shapes on their own topics, and a route over each of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use iot_sdk::core::{GroupName, Log, Offset, PartitionId, ReadLimits, Record, Topics};
use iot_sdk::events::{LIFECYCLE_TOPIC, LifecycleEvents};
use iot_sdk::gateway::events::twin_change_patch;
use iot_sdk::gateway::hub::topic;
use iot_sdk::gateway::{DeviceSession, Gateway, Hub, SessionOptions};
use iot_sdk::identity::{Credentials, IdentityStore, MemoryIdentityStore, Presented};
use iot_sdk::provisioning::{Provisioner, Provisioning, RegisterRequest};
use iot_sdk::registry::MemoryRegistry;
use iot_sdk::stream::routing::{MemoryTwins, Route, RouteSource, RouteTable, RoutingProcessor};
use iot_sdk::stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::{Value, json};

const HOST: &str = "contoso.azure-devices.net";

async fn all(topics: &Topics, name: &str) -> Vec<Record> {
    let log: Arc<dyn Log> = topics.topic(name).await.unwrap();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        let mut from = Offset(0);
        loop {
            let batch = log
                .read(PartitionId(p), from, ReadLimits::default())
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            from = Offset(last.offset.0 + 1);
            out.extend(batch.into_iter().map(|r| r.record));
        }
    }
    out
}

fn h<'a>(r: &'a Record, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn body(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).expect("a JSON body")
}

/// The system and application properties IoT Hub sets on every non-telemetry event.
fn assert_common(r: &Record, device: &str, op: &str, schema: &str, source: &str) {
    assert_eq!(h(r, "content-type"), "application/json");
    assert_eq!(h(r, "content-encoding"), "utf-8");
    assert_eq!(h(r, "user-id"), "contoso");
    assert_eq!(h(r, "hubName"), "contoso");
    assert_eq!(h(r, "deviceId"), device);
    assert_eq!(h(r, "iothub-connection-device-id"), device);
    assert_eq!(h(r, "opType"), op);
    assert_eq!(h(r, "iothub-message-schema"), schema);
    assert_eq!(h(r, "iothub-message-source"), source);
    assert!(!h(r, "correlation-id").is_empty());
    iot_sdk::core::Timestamp::parse_rfc3339(h(r, "operationTimestamp")).expect("RFC 3339");
    assert_eq!(r.key, device);
}

struct Fixture {
    topics: Arc<Topics>,
    hub: Hub,
    provisioner: Provisioner,
}

async fn fixture() -> Fixture {
    let topics = Arc::new(Topics::memory(2));
    let identity = Arc::new(MemoryIdentityStore::new());
    let registry = Arc::new(MemoryRegistry::new());
    let provisioner = Provisioner::builder(identity.clone(), registry)
        .audit_log(topics.topic("audit").await.unwrap())
        .host(HOST)
        .open()
        .await
        .unwrap();
    let hub = Hub::builder(identity as Arc<dyn IdentityStore>, HOST)
        .topics(topics.clone())
        .build()
        .await
        .unwrap();
    Fixture {
        topics,
        hub,
        provisioner,
    }
}

impl Fixture {
    /// Registers `id` and opens a session for it.
    async fn connect(&self, id: &str) -> Box<dyn DeviceSession> {
        let registered = self
            .provisioner
            .register(RegisterRequest::new(id.parse().unwrap(), json!({})))
            .await
            .unwrap();
        let Credentials::SymmetricKeys { primary, .. } = registered.credentials else {
            panic!("keys")
        };
        self.hub
            .connect(
                &id.parse().unwrap(),
                Presented::SymmetricKey(&primary.expose_base64()),
                SessionOptions::default(),
            )
            .await
            .unwrap()
    }

    async fn run(
        &self,
        source: &str,
        group: &str,
        processor: Arc<dyn iot_sdk::stream::ProcessorFactory>,
    ) {
        let running: RunningGroup = ProcessorHost::new(self.topics.clone())
            .start(
                source,
                GroupName::new(group).unwrap(),
                processor,
                HostConfig::default(),
            )
            .await
            .unwrap();
        running.wait_caught_up().await.unwrap();
        running.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn connection_state_events_have_iot_hubs_shape_and_ordered_sequence_numbers() {
    let fx = fixture().await;
    let first = fx.connect("dev-1").await;
    first.close().await;
    let second = fx.connect("dev-2").await;
    drop(second);
    let events = all(&fx.topics, topic::CONNECTION_EVENTS).await;
    let of = |device: &str| -> Vec<&Record> { events.iter().filter(|r| r.key == device).collect() };
    let one = of("dev-1");
    assert_eq!(one.len(), 2);
    let schema = "deviceConnectionStateNotification";
    assert_common(
        one[0],
        "dev-1",
        "deviceConnected",
        schema,
        "deviceConnectionStateEvents",
    );
    assert_common(
        one[1],
        "dev-1",
        "deviceDisconnected",
        schema,
        "deviceConnectionStateEvents",
    );
    let seq = |r: &Record| body(r)["sequenceNumber"].as_str().unwrap().to_owned();
    assert_eq!(seq(one[0]).len(), 64);
    assert!(seq(one[0]) < seq(one[1]), "string order is event order");
    assert_ne!(h(one[0], "correlation-id"), h(one[1], "correlation-id"));
}

#[tokio::test]
async fn twin_change_events_carry_the_patch_version_and_metadata() {
    let fx = fixture().await;
    let session = fx.connect("dev-1").await;
    let id = "dev-1".parse().unwrap();
    fx.hub
        .patch_desired(&id, json!({"fan": {"speed": 3}}), None)
        .await
        .unwrap();
    session.patch_reported(json!({"temp": 21.5})).await.unwrap();
    session.patch_reported(json!({"temp": 22})).await.unwrap();
    let changes = all(&fx.topics, topic::TWIN_CHANGES).await;
    assert_eq!(changes.len(), 3);
    for r in &changes {
        assert_common(
            r,
            "dev-1",
            "updateTwin",
            "twinChangeNotification",
            "twinChangeEvents",
        );
    }
    let desired = body(&changes[0]);
    assert_eq!(desired["version"], 1);
    assert_eq!(desired["properties"]["desired"]["$version"], 1);
    assert_eq!(desired["properties"]["desired"]["fan"], json!({"speed": 3}));
    assert!(desired["properties"]["desired"]["$metadata"]["fan"]["$lastUpdated"].is_string());
    let reported = body(&changes[2]);
    assert_eq!(reported["version"], 2);
    assert_eq!(
        twin_change_patch(&reported, "reported"),
        Some(json!({"temp": 22}))
    );
}

#[tokio::test]
async fn lifecycle_events_come_from_the_audit_trail() {
    let fx = fixture().await;
    let twins = Arc::new(MemoryTwins::new());
    twins.set("dev-1", json!({"floor": 3}), json!({}), json!({}));
    fx.connect("dev-1").await.close().await;
    fx.connect("dev-2").await.close().await;
    // A failed registration (the id exists) leaves an audit record but no event.
    assert!(
        fx.provisioner
            .register(RegisterRequest::new("dev-1".parse().unwrap(), json!({})))
            .await
            .is_err()
    );
    fx.provisioner
        .unregister(&"dev-2".parse().unwrap(), None)
        .await
        .unwrap();
    let lifecycle = LifecycleEvents::new("contoso").with_twins(twins);
    fx.run("audit", "lifecycle", Arc::new(lifecycle)).await;

    let mut events = all(&fx.topics, LIFECYCLE_TOPIC).await;
    events.sort_by(|a, b| {
        (h(a, "deviceId"), h(a, "opType")).cmp(&(h(b, "deviceId"), h(b, "opType")))
    });
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|r| (h(r, "deviceId"), h(r, "opType")))
        .collect();
    assert_eq!(
        summary,
        [
            ("dev-1", "createDeviceIdentity"),
            ("dev-2", "createDeviceIdentity"),
            ("dev-2", "deleteDeviceIdentity"),
        ]
    );
    let schema = "deviceLifecycleNotification";
    for r in &events {
        assert_common(
            r,
            h(r, "deviceId"),
            h(r, "opType"),
            schema,
            "deviceLifecycleEvents",
        );
    }
    let created = body(&events[0]);
    assert_eq!(created["deviceId"], "dev-1");
    assert_eq!(created["tags"], json!({"floor": 3}));
    assert_eq!(created["properties"]["desired"]["$version"], 1);
    assert!(created["properties"]["reported"]["$metadata"]["$lastUpdated"].is_string());
    assert!(
        body(&events[2]).get("tags").is_none(),
        "a deleted device's twin is gone"
    );

    // At-least-once: running the processor again from the start (a new group) writes the same
    // events with the same correlation ids, so a consumer can drop the duplicates.
    let again = LifecycleEvents::new("contoso").to_topic("lifecycle-again");
    fx.run("audit", "lifecycle-again", Arc::new(again)).await;
    let ids = |records: Vec<Record>| {
        let mut ids: Vec<String> = records
            .iter()
            .map(|r| h(r, "correlation-id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let first = ids(all(&fx.topics, LIFECYCLE_TOPIC).await);
    assert_eq!(first, ids(all(&fx.topics, "lifecycle-again").await));
}

/// A routing processor over one event topic, with one route of that source.
async fn route(
    fx: &Fixture,
    source_topic: &str,
    source: RouteSource,
    condition: &str,
    endpoint: &str,
) {
    let table = RouteTable::new().with_fallback("fallback");
    table
        .add(
            Route::new(endpoint, condition, endpoint)
                .unwrap()
                .with_source(source),
        )
        .unwrap();
    // A device-message route is not applied to events.
    table
        .add(Route::new("messages", "true", "messages").unwrap())
        .unwrap();
    let processor = RoutingProcessor::new(table, "contoso").with_source(source);
    fx.run(
        source_topic,
        &format!("route-{endpoint}"),
        Arc::new(processor),
    )
    .await;
}

#[tokio::test]
async fn a_route_over_each_event_source() {
    let fx = fixture().await;
    let session = fx.connect("dev-1").await;
    session.patch_reported(json!({"temp": 35})).await.unwrap();
    session.patch_reported(json!({"temp": 20})).await.unwrap();
    session.close().await;
    fx.connect("dev-2").await.close().await;
    fx.provisioner
        .unregister(&"dev-2".parse().unwrap(), None)
        .await
        .unwrap();
    fx.run(
        "audit",
        "lifecycle",
        Arc::new(LifecycleEvents::new("contoso")),
    )
    .await;

    route(
        &fx,
        topic::CONNECTION_EVENTS,
        RouteSource::DeviceConnectionStateEvents,
        "opType = 'deviceDisconnected' AND $connectionDeviceId = 'dev-1'",
        "disconnects",
    )
    .await;
    route(
        &fx,
        topic::TWIN_CHANGES,
        RouteSource::TwinChangeEvents,
        "$body.properties.reported.temp > 30",
        "hot",
    )
    .await;
    route(
        &fx,
        LIFECYCLE_TOPIC,
        RouteSource::DeviceLifecycleEvents,
        "opType = 'deleteDeviceIdentity' AND hubName = 'contoso'",
        "deleted",
    )
    .await;

    let keys = |records: Vec<Record>| -> Vec<(String, String)> {
        records
            .iter()
            .map(|r| (r.key.to_string(), h(r, "opType").to_owned()))
            .collect()
    };
    assert_eq!(
        keys(all(&fx.topics, "disconnects").await),
        [("dev-1".to_owned(), "deviceDisconnected".to_owned())]
    );
    let hot = all(&fx.topics, "hot").await;
    assert_eq!(hot.len(), 1);
    assert_eq!(
        twin_change_patch(&body(&hot[0]), "reported"),
        Some(json!({"temp": 35}))
    );
    assert_eq!(
        keys(all(&fx.topics, "deleted").await),
        [("dev-2".to_owned(), "deleteDeviceIdentity".to_owned())]
    );
    assert!(all(&fx.topics, "messages").await.is_empty());
    assert!(
        all(&fx.topics, "fallback").await.is_empty(),
        "only device messages have a fallback"
    );
}
