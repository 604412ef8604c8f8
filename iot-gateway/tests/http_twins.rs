//! Twins over REST, beyond the basics of `http_service.rs`: connection and activity times, and
//! twin writes that touch both stores (tags in the registry, desired in the twin store) without
//! leaving half of a refused change behind.
#![cfg(feature = "http")]

mod http_support;

use http_support::{API, HOST, Stack};
use iot_core::{DeviceId, Timestamp};
use iot_gateway::http::HttpConfig;
use iot_gateway::{
    DeviceSession, Gateway, HubConfig, Rate, SessionOptions, Telemetry, ThrottleConfig,
};
use iot_identity::{Presented, SymmetricKey, sas};
use serde_json::{Value, json};

const NEVER: &str = "0001-01-01T00:00:00Z";

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// Creates `device` over REST; its primary key.
async fn create(stack: &Stack, device: &str) -> String {
    let reply = stack
        .owner(
            "PUT",
            &format!("/devices/{device}?{API}"),
            Some(&json!({"deviceId": device})),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_owned()
}

async fn connect(stack: &Stack, device: &str, key: &str) -> Box<dyn DeviceSession> {
    let key = SymmetricKey::from_base64(key).expect("key");
    let token = sas::generate(
        &format!("{HOST}/devices/{device}"),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    stack
        .hub
        .connect(
            &id(device),
            Presented::SasToken(token.as_str()),
            SessionOptions::default(),
        )
        .await
        .expect("connect")
}

/// The RFC 3339 time in `value`, as microseconds (IoT Hub's "never" is 0).
fn micros(value: &Value) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    if text == NEVER {
        return 0;
    }
    Timestamp::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("RFC 3339 ({e}): {text}"))
        .as_unix_micros()
}

async fn twin(stack: &Stack, device: &str) -> Value {
    let reply = stack
        .owner("GET", &format!("/twins/{device}?{API}"), None)
        .await;
    assert_eq!(reply.status, 200);
    reply.json()
}

async fn device(stack: &Stack, device: &str) -> Value {
    let reply = stack
        .owner("GET", &format!("/devices/{device}?{API}"), None)
        .await;
    assert_eq!(reply.status, 200);
    reply.json()
}

#[tokio::test]
async fn connection_and_activity_times_follow_the_device() {
    let stack = Stack::start().await;
    let key = create(&stack, "a1").await;
    // Never connected: IoT Hub's "never".
    assert_eq!(twin(&stack, "a1").await["lastActivityTime"], NEVER);
    let d = device(&stack, "a1").await;
    assert_eq!(d["lastActivityTime"], NEVER);
    assert_eq!(d["connectionStateUpdatedTime"], NEVER);

    let before_connect = Timestamp::now().as_unix_micros();
    let session = connect(&stack, "a1", &key).await;
    let d = device(&stack, "a1").await;
    assert_eq!(d["connectionState"], "Connected");
    let connected_at = micros(&d["connectionStateUpdatedTime"]);
    assert!(connected_at >= before_connect, "{d}");
    assert!(micros(&d["lastActivityTime"]) >= connected_at, "{d}");

    // Telemetry is activity; it does not change the connection state's time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let before_send = Timestamp::now().as_unix_micros();
    session
        .send_telemetry(Telemetry::new("21.5"))
        .await
        .expect("telemetry");
    let t = twin(&stack, "a1").await;
    let active_at = micros(&t["lastActivityTime"]);
    assert!(active_at >= before_send, "{t}");
    let d = device(&stack, "a1").await;
    assert_eq!(micros(&d["lastActivityTime"]), active_at);
    assert_eq!(micros(&d["connectionStateUpdatedTime"]), connected_at);

    // A disconnect moves the connection state's time and keeps the last activity.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let before_close = Timestamp::now().as_unix_micros();
    session.close().await;
    let d = device(&stack, "a1").await;
    assert_eq!(d["connectionState"], "Disconnected");
    assert!(
        micros(&d["connectionStateUpdatedTime"]) >= before_close,
        "{d}"
    );
    assert_eq!(micros(&d["lastActivityTime"]), active_at);

    // The gateway API says the same.
    let activity = stack.hub.activity(&id("a1")).await.expect("activity");
    assert_eq!(
        activity.last_activity.map(Timestamp::as_unix_micros),
        Some(active_at)
    );
}

#[tokio::test]
async fn a_deleted_device_forgets_its_times() {
    let stack = Stack::start().await;
    let key = create(&stack, "a2").await;
    let session = connect(&stack, "a2", &key).await;
    session.close().await;
    assert_ne!(device(&stack, "a2").await["lastActivityTime"], NEVER);
    let deleted = stack
        .owner("DELETE", &format!("/devices/a2?{API}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    create(&stack, "a2").await;
    // The hub follows deletions through the identity store's change stream.
    let mut times = Value::Null;
    for _ in 0..200 {
        times = device(&stack, "a2").await;
        if times["lastActivityTime"] == NEVER {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(times["lastActivityTime"], NEVER, "{times}");
    assert_eq!(times["connectionStateUpdatedTime"], NEVER, "{times}");
}

/// A desired section nested one level deeper than the twin limits allow (10).
fn too_deep() -> Value {
    let mut v = json!(1);
    for _ in 0..11 {
        v = json!({ "n": v });
    }
    v
}

#[tokio::test]
async fn a_twin_write_whose_desired_part_is_refused_writes_no_tags() {
    let stack = Stack::start().await;
    create(&stack, "w1").await;
    let path = format!("/twins/w1?{API}");
    let first = stack
        .owner("PATCH", &path, Some(&json!({"tags": {"site": "s1"}})))
        .await;
    assert_eq!(first.status, 200);
    let before = twin(&stack, "w1").await;

    let big = "x".repeat(40 * 1024);
    let refused = [
        (
            json!({"tags": {"site": "s2"}, "properties": {"desired": {"blob": big}}}),
            413,
        ),
        (
            json!({"tags": {"site": "s2"}, "properties": {"desired": too_deep()}}),
            400,
        ),
    ];
    for (body, status) in &refused {
        for method in ["PATCH", "PUT"] {
            let reply = stack.owner(method, &path, Some(body)).await;
            assert_eq!(reply.status, *status, "{method}: {}", reply.json());
            reply.error_code();
            let record = stack.registry.get(&id("w1")).await.unwrap().unwrap();
            assert_eq!(
                record.metadata["site"], "s1",
                "{method}: no tag was written"
            );
            let after = twin(&stack, "w1").await;
            assert_eq!(after["etag"], before["etag"], "{method}");
            assert_eq!(after["properties"]["desired"]["$version"], 0, "{method}");
        }
    }
    // A stale If-Match on the desired version is caught before the tags are written too.
    let stale = stack
        .call_with(
            "PATCH",
            &path,
            "iothubowner",
            Some(&json!({"tags": {"site": "s3"}, "properties": {"desired": {"a": 1}}})),
            &[("If-Match", "\"not-the-etag\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(
        stack
            .registry
            .get(&id("w1"))
            .await
            .unwrap()
            .unwrap()
            .metadata["site"],
        "s1"
    );
}

#[tokio::test]
async fn a_twin_write_whose_tags_are_refused_writes_no_desired_properties() {
    let stack = Stack::start().await;
    create(&stack, "w2").await;
    let path = format!("/twins/w2?{API}");
    // Over the registry's 64 KiB document limit.
    let big = "y".repeat(70 * 1024);
    let reply = stack
        .owner(
            "PATCH",
            &path,
            Some(&json!({"tags": {"blob": big}, "properties": {"desired": {"a": 1}}})),
        )
        .await;
    assert_eq!(reply.status, 413, "{}", reply.json());
    let after = twin(&stack, "w2").await;
    assert_eq!(after["properties"]["desired"]["$version"], 0);
    assert!(after["properties"]["desired"].get("a").is_none());
    assert_eq!(after["tags"], json!({}));
}

#[tokio::test]
async fn a_desired_write_that_fails_after_the_tags_says_so_and_the_twin_shows_it() {
    // A hub-wide twin budget of one operation, refilled only after hours: the write's twin read
    // spends it (the pre-check spends nothing), so the desired write is throttled after the
    // tags are written — a failure no check can foresee.
    let mut throttle = ThrottleConfig::unlimited();
    throttle.hub_twin = Some(Rate::new(0.0001, 1.0));
    let mut hub_config = HubConfig::default();
    hub_config.throttle = throttle;
    let stack = Stack::start_with_hub(HttpConfig::default(), hub_config).await;
    create(&stack, "w3").await;
    let reply = stack
        .owner(
            "PATCH",
            &format!("/twins/w3?{API}"),
            Some(&json!({"tags": {"site": "s9"}, "properties": {"desired": {"a": 1}}})),
        )
        .await;
    assert_eq!(reply.status, 429, "{}", reply.json());
    let message = reply.json()["Message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("the tags were written, the desired properties were not"),
        "{message}"
    );
    // The tags are there for the client to see (and a retry without If-Match converges).
    let record = stack.registry.get(&id("w3")).await.unwrap().unwrap();
    assert_eq!(record.metadata["site"], "s9");
}

/// The twin change events on the hub's topic, oldest first (one device: one partition).
async fn twin_changes(stack: &Stack) -> Vec<iot_core::Record> {
    let log = stack.hub.twin_changes_log();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        let read = log
            .read(
                iot_core::PartitionId(p),
                iot_core::Offset(0),
                iot_core::ReadLimits::default(),
            )
            .await
            .expect("read twin changes");
        out.extend(read.into_iter().map(|r| r.record));
    }
    out
}

#[tokio::test]
async fn a_put_of_the_twin_is_a_replace_twin_event_and_a_patch_an_update_twin_event() {
    let stack = Stack::start().await;
    create(&stack, "r1").await;
    let path = format!("/twins/r1?{API}");
    let patched = stack
        .owner(
            "PATCH",
            &path,
            Some(&json!({"properties": {"desired": {"a": 1, "b": 2}}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.json());
    let replaced = stack
        .owner(
            "PUT",
            &path,
            Some(&json!({"properties": {"desired": {"a": 5}}})),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.json());

    let changes = twin_changes(&stack).await;
    assert_eq!(changes.len(), 2);
    let op = |r: &iot_core::Record| r.headers.get("opType").map(str::to_owned);
    let body = |r: &iot_core::Record| -> Value {
        serde_json::from_slice(&r.payload).expect("a JSON body")
    };
    assert_eq!(op(&changes[0]).as_deref(), Some("updateTwin"));
    assert_eq!(body(&changes[0])["properties"]["desired"]["b"], 2);
    assert_eq!(op(&changes[1]).as_deref(), Some("replaceTwin"));
    assert_eq!(
        changes[1].headers.get("iothub-message-schema"),
        Some("twinChangeNotification")
    );
    // A replace shows the desired properties as the replace left them: `b` is gone, not null.
    let desired = &body(&changes[1])["properties"]["desired"];
    assert_eq!(desired["a"], 5);
    assert!(desired.get("b").is_none(), "{desired}");
    assert_eq!(desired["$version"], 2);
    assert_eq!(body(&changes[1])["version"], 2);
}
