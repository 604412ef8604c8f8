//! The webhook endpoint against a receiver written in Python from the docs alone
//! (tests/webhook/receiver.py): it checks every HMAC signature, fails its first answers and some
//! later ones (one of them after processing the event), refuses poison with 400, and dedupes by
//! event id. Every routed event reaches it exactly once after dedupe; poison and events signed
//! with the wrong secret are dead-lettered, and the receiver saw the bad signatures.
#![cfg(feature = "webhook")]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::routing::{Route, RouteTable, RoutingProcessor};
use iot_stream::sinks::webhook::{WebhookMode, WebhookSecret, WebhookSink};
use iot_stream::sinks::{BatchPolicy, SinkConfig, SinkProcessor, event_id};
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"whsec-test-0123456789abcdef";

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

fn receiver(fail_first: usize) -> Receiver {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook/receiver.py");
    let mut child = Command::new(python)
        .arg(script)
        .env("WEBHOOK_SECRET", std::str::from_utf8(SECRET).unwrap())
        .env("FAIL_FIRST", fail_first.to_string())
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

/// The receiver's `GET /state`, over a plain socket (HTTP/1.0: the answer ends at close).
async fn receiver_state(port: u16) -> Value {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
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
    serde_json::from_str(body).unwrap()
}

/// Alerts `0..n` from five devices; every 9th carries the `poison` property the receiver refuses.
async fn route_alerts(topics: &Arc<Topics>, n: usize) {
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for i in 0..n {
        let kind = if i % 4 == 3 { "status" } else { "alert" };
        let mut record = Record::new(
            format!("dev-{}", i % 5),
            json!({"kind": kind, "n": i}).to_string(),
        )
        .with_header("content-type", "application/json")
        .with_header("content-encoding", "utf-8");
        if i % 9 == 4 {
            record = record.with_header("poison", "yes");
        }
        producer.send(record).await.unwrap();
    }
    let table = RouteTable::new();
    table
        .add(Route::new("alerts", "$body.kind = 'alert'", "hooks").unwrap())
        .unwrap();
    let group = ProcessorHost::new(topics.clone())
        .start(
            "telemetry",
            GroupName::new("routing").unwrap(),
            Arc::new(RoutingProcessor::new(table, "my-hub")),
            HostConfig::default(),
        )
        .await
        .unwrap();
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
}

async fn start(
    topics: &Arc<Topics>,
    sink: WebhookSink,
    group: &str,
    batch: BatchPolicy,
) -> RunningGroup {
    let config = SinkConfig::default()
        .batch(batch)
        .max_attempts(30)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(40));
    let factory = SinkProcessor::factory(Arc::new(sink), config).unwrap();
    ProcessorHost::new(topics.clone())
        .start(
            "hooks",
            GroupName::new(group).unwrap(),
            Arc::new(factory),
            HostConfig::default()
                .read_limits(ReadLimits::records(16))
                .tick_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap()
}

async fn wait_delivered(topics: &Topics, group: &RunningGroup) {
    let log = topics.topic("hooks").await.unwrap();
    let guard = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut ends = Vec::new();
        for p in 0..log.partition_count() {
            ends.push(log.next_offset(PartitionId(p)).await.unwrap());
        }
        if group.committed() == ends {
            return;
        }
        assert!(
            tokio::time::Instant::now() < guard,
            "the webhook never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every record of `topic`, all partitions.
async fn records(topics: &Topics, topic: &str) -> Vec<iot_core::StoredRecord> {
    let log: Arc<dyn Log> = topics.topic(topic).await.unwrap();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        out.extend(
            log.read(PartitionId(p), Offset(0), ReadLimits::default())
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_every_routed_event_once_after_dedupe_and_refusals_are_dead_lettered()
 {
    let topics = Arc::new(Topics::memory(2));
    route_alerts(&topics, 120).await;
    let receiver = receiver(3);
    let url = format!(
        "http://127.0.0.1:{}/hooks/iot?token=not-in-logs",
        receiver.port
    );
    let sink = WebhookSink::new("hooks", &url, WebhookSecret::new(SECRET).unwrap()).unwrap();
    let group = start(&topics, sink, "webhook", BatchPolicy::per_record()).await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();

    let routed = records(&topics, "hooks").await;
    let (poison, good): (Vec<_>, Vec<_>) = routed
        .iter()
        .partition(|r| r.record.headers.get("poison").is_some());
    assert_eq!(routed.len(), 90, "the alerts were routed");
    let state = receiver_state(receiver.port).await;
    let mut accepted: Vec<String> = state["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    accepted.sort();
    let mut expected: Vec<String> = good.iter().map(|r| event_id("hooks", r)).collect();
    expected.sort();
    assert_eq!(accepted, expected, "every good event accepted, once");
    assert_eq!(state["bad_signatures"], 0);
    assert!(
        state["duplicates"].as_u64().unwrap() > 0,
        "answers lost after processing made the sink send again: {state}"
    );
    // The events' content, and each device's events accepted in offset order.
    let mut per_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for id in state["accepted"].as_array().unwrap() {
        let event = &state["events"][id.as_str().unwrap()][0];
        assert_eq!(event["id"], *id);
        let body: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["kind"], "alert");
        let device = event["device"].as_str().unwrap().to_owned();
        per_device.entry(device).or_default().push(
            id.as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    for (device, offsets) in &per_device {
        assert!(offsets.is_sorted(), "{device}: {offsets:?}");
    }
    // Poison was refused with 400 and dead-lettered at once, not retried into the ground.
    let dead = records(&topics, "deadletter").await;
    assert_eq!(dead.len(), poison.len());
    for record in &dead {
        assert_eq!(record.record.headers.get("x-sink"), Some("hooks"));
        let reason = record.record.headers.get("x-dead-letter-reason").unwrap();
        assert!(reason.contains("400"), "{reason}");
        assert!(
            !reason.contains("not-in-logs"),
            "the URL's query stays out: {reason}"
        );
    }
    assert_eq!(state["refused"].as_u64().unwrap() as usize, poison.len());

    // A sender with the wrong secret: the receiver detects every bad signature and answers 401,
    // which the sink does not retry.
    let before = state["accepted"].as_array().unwrap().len();
    let wrong = WebhookSink::new(
        "hooks",
        &url,
        WebhookSecret::new(*b"not-the-shared-secret").unwrap(),
    )
    .unwrap()
    .mode(WebhookMode::Batch);
    let group = start(
        &topics,
        wrong,
        "impostor",
        BatchPolicy {
            max_records: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(100),
        },
    )
    .await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();
    let after = receiver_state(receiver.port).await;
    assert_eq!(after["accepted"].as_array().unwrap().len(), before);
    let bad = after["bad_signatures"].as_u64().unwrap();
    assert!(
        (9..=90).contains(&bad),
        "one refused request per batch of up to 10: {bad}"
    );
    let dead = records(&topics, "deadletter").await;
    assert_eq!(dead.len(), poison.len() + 90);
    assert!(
        dead.iter()
            .filter_map(|r| r.record.headers.get("x-dead-letter-reason"))
            .any(|reason| reason.contains("401"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_carry_every_event_with_its_own_id() {
    let topics = Arc::new(Topics::memory(1));
    route_alerts(&topics, 40).await;
    let receiver = receiver(1);
    let url = format!("http://127.0.0.1:{}/batch", receiver.port);
    let sink = WebhookSink::new("hooks", &url, WebhookSecret::new(SECRET).unwrap())
        .unwrap()
        .mode(WebhookMode::Batch);
    // 30 alerts in one partition: five full batches (the age limit never cuts one).
    let batch = BatchPolicy {
        max_records: 6,
        ..BatchPolicy::default()
    };
    let group = start(&topics, sink, "batched", batch).await;
    wait_delivered(&topics, &group).await;
    group.shutdown().await.unwrap();

    let routed = records(&topics, "hooks").await;
    let state = receiver_state(receiver.port).await;
    let mut ids = Vec::new();
    let mut poisoned = 0;
    for batch in routed.chunks(6) {
        let batch_id = format!("{}+{}", event_id("hooks", &batch[0]), batch.len());
        if batch
            .iter()
            .any(|r| r.record.headers.get("poison").is_some())
        {
            poisoned += batch.len();
            assert!(state["events"].get(&batch_id).is_none());
            continue;
        }
        let events = state["events"][&batch_id].as_array().unwrap();
        for (event, record) in events.iter().zip(batch) {
            assert_eq!(event["id"].as_str().unwrap(), event_id("hooks", record));
            ids.push(event["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len() + poisoned, routed.len());
    assert_eq!(records(&topics, "deadletter").await.len(), poisoned);
}
