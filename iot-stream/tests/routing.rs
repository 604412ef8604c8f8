//! Message routing in the processor host: routes with conditions over properties and `$body`,
//! enrichments from twin tags, the fallback route, a route that matches nothing, route changes
//! while the processor runs, and restarts that neither lose nor re-send more than one batch.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::Arc;

use iot_core::{GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::routing::{
    Enrichment, MemoryTwins, Route, RouteTable, RoutingProcessor, TwinLookup,
};
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::json;

async fn all(topics: &Topics, topic: &str) -> Vec<Record> {
    let log: Arc<dyn Log> = topics.topic(topic).await.unwrap();
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

/// The `n` header of each record, sorted.
async fn ids(topics: &Topics, topic: &str) -> Vec<String> {
    let mut ids: Vec<String> = all(topics, topic)
        .await
        .iter()
        .map(|r| r.headers.get("n").unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn json_message(n: &str, device: &str, body: serde_json::Value) -> Record {
    Record::new(device, body.to_string())
        .with_header("content-type", "application/json")
        .with_header("content-encoding", "utf-8")
        .with_header("n", n)
}

async fn start(
    topics: &Arc<Topics>,
    processor: RoutingProcessor,
    config: HostConfig,
) -> RunningGroup {
    ProcessorHost::new(topics.clone())
        .start(
            "telemetry",
            GroupName::new("routing").unwrap(),
            Arc::new(processor),
            config,
        )
        .await
        .unwrap()
}

async fn send(topics: &Topics, records: Vec<Record>) {
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for r in records {
        producer.send(r).await.unwrap();
    }
}

#[tokio::test]
async fn routes_by_properties_and_body_with_fallback_and_a_route_that_matches_nothing() {
    let topics = Arc::new(Topics::memory(2));
    let table = RouteTable::new().with_fallback("events");
    table
        .add(Route::new("critical", "level = 'critical'", "alerts").unwrap())
        .unwrap();
    table
        .add(Route::new("hot", "$body.temp > 30", "hot").unwrap())
        .unwrap();
    // Two routes to one endpoint: a message matching both is written there once.
    table
        .add(Route::new("very-hot", "$body.temp > 40", "hot").unwrap())
        .unwrap();
    table
        .add(Route::new("never", "$body.temp > 1000 AND level = 'none'", "never").unwrap())
        .unwrap();
    table
        .add(Route::new("off", "true", "off").unwrap().disabled())
        .unwrap();
    send(
        &topics,
        vec![
            json_message("1", "dev-1", json!({"temp": 20})).with_header("level", "critical"),
            json_message("2", "dev-2", json!({"temp": 35})),
            json_message("3", "dev-1", json!({"temp": 45})).with_header("level", "critical"),
            json_message("4", "dev-2", json!({"temp": 10})).with_header("level", "info"),
            // Not JSON by its content type: `$body` is undefined, the property still routes.
            Record::new("dev-3", "{\"temp\": 99}")
                .with_header("level", "critical")
                .with_header("n", "5"),
            Record::new("dev-3", "binary").with_header("n", "6"),
        ],
    )
    .await;
    let group = start(
        &topics,
        RoutingProcessor::new(table, "hub"),
        HostConfig::default(),
    )
    .await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();

    assert_eq!(ids(&topics, "alerts").await, ["1", "3", "5"]);
    assert_eq!(ids(&topics, "hot").await, ["2", "3"]);
    assert_eq!(
        ids(&topics, "events").await,
        ["4", "6"],
        "the fallback catches the rest"
    );
    assert!(
        all(&topics, "never").await.is_empty(),
        "a route that matches nothing"
    );
    assert!(all(&topics, "off").await.is_empty(), "a disabled route");
    // Records arrive unchanged (no enrichments configured).
    let hot = all(&topics, "hot").await;
    let three = hot
        .iter()
        .find(|r| r.headers.get("n") == Some("3"))
        .unwrap();
    assert_eq!(
        &three.payload[..],
        json!({"temp": 45}).to_string().as_bytes()
    );
    assert_eq!(three.key, "dev-1");
}

#[tokio::test]
async fn without_the_fallback_unmatched_messages_go_nowhere() {
    let topics = Arc::new(Topics::memory(1));
    let table = RouteTable::new().with_fallback("events");
    table.set_fallback(None);
    table
        .add(Route::new("critical", "level = 'critical'", "alerts").unwrap())
        .unwrap();
    send(
        &topics,
        vec![
            Record::new("d", "x")
                .with_header("level", "info")
                .with_header("n", "1"),
            Record::new("d", "x")
                .with_header("level", "critical")
                .with_header("n", "2"),
        ],
    )
    .await;
    let group = start(
        &topics,
        RoutingProcessor::new(table, "hub"),
        HostConfig::default(),
    )
    .await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
    assert_eq!(ids(&topics, "alerts").await, ["2"]);
    assert!(all(&topics, "events").await.is_empty());
}

#[tokio::test]
async fn enrichments_from_twin_tags_desired_properties_the_hub_name_and_static_values() {
    let topics = Arc::new(Topics::memory(2));
    let twins = MemoryTwins::new();
    twins.set(
        "dev-1",
        json!({"deploymentLocation": {"building": "43", "floor": 1}}),
        json!({"telemetryConfig": {"sendFrequency": "5m"}}),
        json!({}),
    );
    let table = RouteTable::new().with_fallback("events");
    table
        .add(
            Route::new(
                "building-43",
                "$twin.tags.deploymentLocation.building = '43'",
                "b43",
            )
            .unwrap(),
        )
        .unwrap();
    for (key, value) in [
        ("building", "$twin.tags.deploymentLocation.building"),
        ("floor", "$twin.tags.deploymentLocation.floor"),
        (
            "frequency",
            "$twin.properties.desired.telemetryConfig.sendFrequency",
        ),
        ("location", "$twin.tags.location"),
        ("hub", "$iothubname"),
        ("customer", "contoso"),
    ] {
        table
            .add_enrichment(Enrichment::new(key, value, &["b43", "events"]).unwrap())
            .unwrap();
    }
    // Only for another endpoint: not stamped on these.
    table
        .add_enrichment(Enrichment::new("other", "x", &["elsewhere"]).unwrap())
        .unwrap();
    send(
        &topics,
        vec![
            json_message("1", "dev-1", json!({"temp": 1})),
            // No twin: the condition is undefined (fallback), twin enrichments stamp their path.
            json_message("2", "dev-2", json!({"temp": 1})),
        ],
    )
    .await;
    let lookup: Arc<dyn TwinLookup> = Arc::new(twins);
    let processor = RoutingProcessor::new(table, "my-hub").with_twins(lookup);
    let group = start(&topics, processor, HostConfig::default()).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();

    let b43 = all(&topics, "b43").await;
    assert_eq!(b43.len(), 1);
    let h = &b43[0].headers;
    assert_eq!(h.get("n"), Some("1"));
    assert_eq!(h.get("building"), Some("43"));
    assert_eq!(h.get("floor"), Some("1"));
    assert_eq!(h.get("frequency"), Some("5m"));
    assert_eq!(
        h.get("location"),
        Some("$twin.tags.location"),
        "a missing path stamps its text"
    );
    assert_eq!(h.get("hub"), Some("my-hub"));
    assert_eq!(h.get("customer"), Some("contoso"));
    assert_eq!(h.get("other"), None);
    assert_eq!(
        h.get("content-type"),
        Some("application/json"),
        "original headers kept"
    );

    let events = all(&topics, "events").await;
    assert_eq!(events.len(), 1);
    let h = &events[0].headers;
    assert_eq!(h.get("n"), Some("2"));
    assert_eq!(
        h.get("building"),
        Some("$twin.tags.deploymentLocation.building")
    );
    assert_eq!(h.get("hub"), Some("my-hub"));
}

#[tokio::test]
async fn routes_change_while_the_processor_runs() {
    let topics = Arc::new(Topics::memory(2));
    let table = RouteTable::new().with_fallback("events");
    let group = start(
        &topics,
        RoutingProcessor::new(table.clone(), "hub"),
        HostConfig::default(),
    )
    .await;
    let batch = |tag: &str| {
        (0..4)
            .map(|i| {
                Record::new(format!("dev-{i}"), "{}")
                    .with_header("level", if i % 2 == 0 { "critical" } else { "info" })
                    .with_header("n", format!("{tag}{i}"))
            })
            .collect::<Vec<_>>()
    };
    send(&topics, batch("a")).await;
    group.wait_caught_up().await.unwrap();
    // Added while running.
    table
        .add(Route::new("critical", "level = 'critical'", "alerts").unwrap())
        .unwrap();
    send(&topics, batch("b")).await;
    group.wait_caught_up().await.unwrap();
    // Replaced while running.
    table
        .replace(Route::new("critical", "level = 'info'", "alerts").unwrap())
        .unwrap();
    send(&topics, batch("c")).await;
    group.wait_caught_up().await.unwrap();
    // Removed, and the fallback disabled.
    table.remove("critical").unwrap();
    table.set_fallback(None);
    send(&topics, batch("d")).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();

    assert_eq!(ids(&topics, "alerts").await, ["b0", "b2", "c1", "c3"]);
    assert_eq!(
        ids(&topics, "events").await,
        ["a0", "a1", "a2", "a3", "b1", "b3", "c0", "c2"]
    );
}

#[tokio::test]
async fn a_restart_loses_nothing_and_re_sends_at_most_one_batch() {
    let topics = Arc::new(Topics::memory(2));
    let table = RouteTable::new().with_fallback("events");
    table
        .add(Route::new("even", "AS_NUMBER(n) % 2 = 0", "even").unwrap())
        .unwrap();
    table
        .add(Route::new("tagged", "$twin.tags.group = 'a'", "tagged").unwrap())
        .unwrap();
    let routing = |table: &RouteTable| RoutingProcessor::new(table.clone(), "hub");
    let batch_size = 10;
    let config = || {
        let mut c = HostConfig::default();
        c.read_limits = ReadLimits {
            max_records: batch_size,
            ..ReadLimits::default()
        };
        c
    };
    let message =
        |i: usize| Record::new(format!("dev-{}", i % 3), "{}").with_header("n", i.to_string());
    let total = 600;

    // A graceful restart: exactly once.
    send(&topics, (0..total / 3).map(message).collect()).await;
    let group = start(&topics, routing(&table), config()).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
    send(&topics, (total / 3..2 * total / 3).map(message).collect()).await;
    let group = start(&topics, routing(&table), config()).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
    let mut routed = ids(&topics, "even").await;
    routed.extend(ids(&topics, "events").await);
    routed.sort_by_key(|n| n.parse::<usize>().unwrap());
    let expected: Vec<String> = (0..2 * total / 3).map(|i| i.to_string()).collect();
    assert_eq!(
        routed, expected,
        "a graceful restart routes each message exactly once"
    );
    // A crash (the handle dropped: workers aborted) in the middle of routing: the twin lookups
    // of the `tagged` route slow each batch down so that the crash lands mid-stream.
    send(&topics, (2 * total / 3..total).map(message).collect()).await;
    let slow = routing(&table).with_twins(Arc::new(SlowTwins(MemoryTwins::new())));
    let group = start(&topics, slow, config()).await;
    let guard = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let routed = all(&topics, "even").await.len() + all(&topics, "events").await.len();
        if routed > 2 * total / 3 + 3 * batch_size {
            eprintln!("crash after {routed} of {total} messages were routed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < guard,
            "routing made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    drop(group);
    let group = start(&topics, routing(&table), config()).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();

    let mut counts: HashMap<usize, usize> = HashMap::new();
    for topic in ["even", "events"] {
        for r in all(&topics, topic).await {
            let n: usize = r.headers.get("n").unwrap().parse().unwrap();
            assert_eq!(
                n.is_multiple_of(2),
                topic == "even",
                "message {n} on {topic}"
            );
            *counts.entry(n).or_default() += 1;
        }
    }
    let missing: Vec<usize> = (0..total).filter(|n| !counts.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let resent: usize = counts.values().map(|c| c - 1).sum();
    // At most the batch in flight in each partition's worker at the crash comes again.
    assert!(
        resent <= batch_size * 2,
        "{resent} messages re-sent, more than one batch per partition"
    );
    eprintln!(
        "re-sent after the crash: {resent} (bound {})",
        batch_size * 2
    );
}

/// Twins looked up slowly (2 ms each), to stretch a batch.
#[derive(Debug)]
struct SlowTwins(MemoryTwins);

#[async_trait::async_trait]
impl TwinLookup for SlowTwins {
    async fn twin(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> iot_stream::Result<Option<serde_json::Value>> {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        self.0.twin(device, module).await
    }
}

/// Twins whose store fails its first `failures` lookups with a retryable error.
#[derive(Debug)]
struct FlakyTwins {
    twins: MemoryTwins,
    failures: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl TwinLookup for FlakyTwins {
    async fn twin(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> iot_stream::Result<Option<serde_json::Value>> {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(iot_stream::Error::External {
                what: "twin store",
                reason: "unavailable".into(),
            });
        }
        self.twins.twin(device, module).await
    }
}

#[tokio::test]
async fn a_failing_twin_store_is_retried_and_the_message_routed_once() {
    let topics = Arc::new(Topics::memory(1));
    let twins = MemoryTwins::new();
    twins.set("dev-1", json!({"site": "north"}), json!({}), json!({}));
    let table = RouteTable::new();
    table
        .add(Route::new("north", "$twin.tags.site = 'north'", "north").unwrap())
        .unwrap();
    table
        .add_enrichment(Enrichment::new("site", "$twin.tags.site", &["north"]).unwrap())
        .unwrap();
    send(&topics, vec![json_message("1", "dev-1", json!({}))]).await;
    let flaky = FlakyTwins {
        twins,
        failures: std::sync::atomic::AtomicUsize::new(2),
    };
    let processor = RoutingProcessor::new(table, "hub").with_twins(Arc::new(flaky));
    let mut config = HostConfig::default();
    config.initial_backoff = std::time::Duration::from_millis(1);
    let group = start(&topics, processor, config).await;
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
    let north = all(&topics, "north").await;
    assert_eq!(north.len(), 1, "routed once after two failed lookups");
    assert_eq!(north[0].headers.get("site"), Some("north"));
    assert!(all(&topics, "deadletter").await.is_empty());
}
