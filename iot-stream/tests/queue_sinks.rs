//! The NATS and RabbitMQ endpoints against the real brokers on this machine (NATS with JetStream
//! on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672, guest/guest; `NATS_URL` and `AMQP_URL`
//! override), read back by real consumers: an async-nats subscriber and a lapin consumer. Every
//! routed message arrives, each device's in order; a sink aborted mid-run and restarted re-sends
//! at most the batch each partition was writing; JetStream stores each message once.
#![cfg(any(feature = "nats", feature = "rabbitmq"))]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_core::{GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::routing::{Route, RouteTable, RoutingProcessor};
use iot_stream::sinks::{BatchPolicy, Sink, SinkConfig, SinkProcessor};
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::{Value, json};

const DEVICES: usize = 7;
const BATCH: usize = 10;

/// A name no earlier run used (brokers keep streams and queues).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}x{}", std::process::id(), nanos % 1_000_000_000)
}

/// Sends telemetry `range` from `DEVICES` devices and routes the `line` kind (three in four) to
/// the endpoint `lob`.
async fn route(topics: &Arc<Topics>, range: std::ops::Range<usize>) {
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for n in range {
        let kind = if n % 4 == 3 { "other" } else { "line" };
        let device = format!("dev-{}", n % DEVICES);
        producer
            .send(
                Record::new(
                    device.clone(),
                    json!({"kind": kind, "n": n, "device": device}).to_string(),
                )
                .with_header("content-type", "application/json")
                .with_header("content-encoding", "utf-8")
                .with_header("site", "plant-1"),
            )
            .await
            .unwrap();
    }
    let table = RouteTable::new();
    table
        .add(Route::new("lob", "$body.kind = 'line'", "lob").unwrap())
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

async fn start(topics: &Arc<Topics>, sink: Arc<dyn Sink>) -> RunningGroup {
    let config = SinkConfig::default()
        .batch(BatchPolicy {
            max_records: BATCH,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
        })
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(200));
    let factory = SinkProcessor::factory(sink, config).unwrap();
    ProcessorHost::new(topics.clone())
        .start(
            "lob",
            GroupName::new("lob-sink").unwrap(),
            Arc::new(factory),
            // Reads smaller than a batch: each read closes at most one batch per partition, so
            // the checkpoint is committed after every batch written.
            HostConfig::default()
                .read_limits(ReadLimits::records(BATCH - 1))
                .tick_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap()
}

async fn wait_delivered(topics: &Topics, group: &RunningGroup) {
    let log = topics.topic("lob").await.unwrap();
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
            "the sink never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The endpoint's records, all partitions.
async fn routed(topics: &Topics) -> Vec<iot_core::StoredRecord> {
    let log: Arc<dyn Log> = topics.topic("lob").await.unwrap();
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

/// What a consumer received: (event id, where it was sent, body), in arrival order.
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn wait_received(received: &Received, at_least: usize) {
    // Distinct event ids: copies sent again after the restart must not count towards the
    // total, or the wait ends before the last messages arrive.
    let distinct = || {
        let received = received.lock().unwrap();
        received
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    while distinct() < at_least {
        assert!(
            tokio::time::Instant::now() < guard,
            "the consumer got {} of {at_least}",
            distinct()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks what the consumer got against what was routed: every event, each device's in order
/// (by first arrival), the destination from the device id; returns the number of copies.
fn check(
    received: &Received,
    routed: &[iot_core::StoredRecord],
    destination: impl Fn(&str) -> String,
) -> usize {
    let received = received.lock().unwrap();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut per_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut copies = 0;
    for (id, to, body) in received.iter() {
        let device = body["device"].as_str().unwrap();
        assert_eq!(*to, destination(device));
        if first.insert(id.as_str(), 0).is_some() {
            copies += 1;
            continue;
        }
        per_device
            .entry(device.to_owned())
            .or_default()
            .push(body["n"].as_u64().unwrap());
    }
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in routed {
        let body: Value = serde_json::from_slice(&record.record.payload).unwrap();
        expected
            .entry(record.record.key.clone())
            .or_default()
            .push(body["n"].as_u64().unwrap());
    }
    for ns in expected.values_mut() {
        ns.sort_unstable();
    }
    assert_eq!(
        per_device, expected,
        "every message, each device's in order"
    );
    assert_eq!(first.len(), routed.len());
    copies
}

/// Sends the first half, starts the sink, aborts it once the consumer has some of it (a crash:
/// no shutdown), routes the second half, restarts the sink and waits until all is delivered.
/// Returns the number of routed records.
async fn crash_and_restart(
    topics: &Arc<Topics>,
    sink: Arc<dyn Sink>,
    received: &Received,
) -> Vec<iot_core::StoredRecord> {
    route(topics, 0..800).await;
    let group = start(topics, sink.clone()).await;
    wait_received(received, 150).await;
    drop(group);
    let before = received.lock().unwrap().len();
    route(topics, 800..1200).await;
    let group = start(topics, sink).await;
    wait_delivered(topics, &group).await;
    group.shutdown().await.unwrap();
    let routed = routed(topics).await;
    assert_eq!(routed.len(), 900, "three in four routed");
    eprintln!("aborted after {before} deliveries; {} routed", routed.len());
    routed
}

#[cfg(feature = "nats")]
mod nats {
    use futures::StreamExt;
    use iot_stream::sinks::nats::{NatsSink, NatsTarget};

    use super::*;

    fn url() -> String {
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    }

    /// A subscriber on `subjects`, collecting (Nats-Msg-Id, subject, body).
    async fn subscribe(client: &async_nats::Client, subjects: String) -> Received {
        let mut subscriber = client.subscribe(subjects).await.unwrap();
        client.flush().await.unwrap();
        let received: Received = Arc::default();
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap();
                let body: Value = serde_json::from_slice(&message.payload).unwrap();
                sink.lock()
                    .unwrap()
                    .push((id, message.subject.to_string(), body));
            }
        });
        received
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_core_subscriber_gets_every_routed_message_in_device_order() {
        let run = run_id();
        let topics = Arc::new(Topics::memory(2));
        let client = async_nats::connect(url()).await.unwrap();
        let received = subscribe(&client, format!("lob.{run}.>")).await;
        route(&topics, 0..300).await;
        let sink = NatsSink::new(
            "lob",
            client.clone(),
            &format!("lob.{run}.{{property:site}}.{{deviceId}}"),
            NatsTarget::Core,
        )
        .unwrap();
        let group = start(&topics, Arc::new(sink)).await;
        wait_delivered(&topics, &group).await;
        group.shutdown().await.unwrap();
        let routed = routed(&topics).await;
        assert_eq!(routed.len(), 225, "three in four routed");
        wait_received(&received, routed.len()).await;
        let copies = check(&received, &routed, |device| {
            format!("lob.{run}.plant-1.{device}")
        });
        assert_eq!(copies, 0, "no fault, no copy");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_stores_each_message_once_and_a_restart_resends_at_most_a_batch() {
        let run = run_id();
        let topics = Arc::new(Topics::memory(2));
        let client = async_nats::connect(url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client.clone());
        let stream_name = format!("IOT_SINK_TEST_{run}");
        let mut stream = jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("lobjs.{run}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
        // A core subscriber on the stream's subjects sees every publish, copies included.
        let received = subscribe(&client, format!("lobjs.{run}.>")).await;
        let sink = NatsSink::new(
            "lob",
            client.clone(),
            &format!("lobjs.{run}.{{deviceId}}"),
            NatsTarget::JetStream,
        )
        .unwrap();
        let routed = crash_and_restart(&topics, Arc::new(sink), &received).await;
        wait_received(&received, routed.len()).await;
        let copies = check(&received, &routed, |device| format!("lobjs.{run}.{device}"));
        eprintln!("{copies} messages sent again after the restart");
        assert!(
            copies <= 2 * BATCH,
            "{copies} copies: more than one batch per partition sent again"
        );
        let stored = stream.info().await.unwrap().state.messages;
        assert_eq!(
            stored as usize,
            routed.len(),
            "JetStream dropped the copies by Nats-Msg-Id"
        );
        jetstream.delete_stream(&stream_name).await.unwrap();
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use futures::StreamExt;
    use iot_stream::sinks::rabbitmq::RabbitMqSink;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    use super::*;

    fn url() -> String {
        std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    /// A durable queue bound to a topic exchange by `devices.#`, and a consumer on it collecting
    /// (message_id, routing key, body).
    async fn consumer(run: &str) -> (Connection, Received) {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exchange = format!("iot-sink-test-{run}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                exchange.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                exchange.as_str().into(),
                exchange.as_str().into(),
                "devices.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                exchange.as_str().into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let received: Received = Arc::default();
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string();
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                sink.lock()
                    .unwrap()
                    .push((id, delivery.routing_key.to_string(), body));
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
        });
        (connection, received)
    }

    async fn cleanup(connection: &Connection, run: &str) {
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_delete(
                format!("iot-sink-test-{run}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lapin_consumer_gets_every_routed_message_in_device_order_across_a_restart() {
        let run = run_id();
        let topics = Arc::new(Topics::memory(2));
        let (connection, received) = consumer(&run).await;
        let sink = RabbitMqSink::new(
            "lob",
            url(),
            &format!("iot-sink-test-{run}"),
            "devices.{deviceId}",
        )
        .unwrap();
        assert!(
            !format!("{sink:?}").contains("guest:guest"),
            "no password in Debug"
        );
        let routed = crash_and_restart(&topics, Arc::new(sink), &received).await;
        wait_received(&received, routed.len()).await;
        let copies = check(&received, &routed, |device| format!("devices.{device}"));
        eprintln!("{copies} messages sent again after the restart");
        assert!(
            copies <= 2 * BATCH,
            "{copies} copies: more than one batch per partition sent again"
        );
        cleanup(&connection, &run).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unroutable_batch_is_dead_lettered_and_a_wrong_password_is_not_shown() {
        let run = run_id();
        let topics = Arc::new(Topics::memory(1));
        let (connection, _received) = consumer(&run).await;
        route(&topics, 0..20).await;
        // No queue is bound to `nowhere.…`: the broker returns the mandatory messages.
        let sink = RabbitMqSink::new(
            "lob",
            url(),
            &format!("iot-sink-test-{run}"),
            "nowhere.{deviceId}",
        )
        .unwrap();
        let group = start(&topics, Arc::new(sink)).await;
        wait_delivered(&topics, &group).await;
        group.shutdown().await.unwrap();
        let log: Arc<dyn Log> = topics.topic("deadletter").await.unwrap();
        let dead = log
            .read(PartitionId(0), Offset(0), ReadLimits::default())
            .await
            .unwrap();
        assert_eq!(dead.len(), routed(&topics).await.len());
        let reason = dead[0].record.headers.get("x-dead-letter-reason").unwrap();
        assert!(reason.contains("no queue took"), "{reason}");

        let wrong = RabbitMqSink::queue(
            "lob",
            "amqp://guest:hunter2-secret@127.0.0.1:5672/%2f",
            "anything",
        )
        .unwrap()
        .timeout(Duration::from_secs(5));
        let records = routed(&topics).await;
        let error = wrong
            .write(iot_stream::sinks::SinkBatch {
                partition: PartitionId(0),
                records: &records[..1],
            })
            .await
            .unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        cleanup(&connection, &run).await;
    }
}
