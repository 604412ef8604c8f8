//! A rough routing throughput figure (printed, not asserted; run it in release):
//! `cargo test --release -p iot-stream --test routing_throughput -- --ignored --nocapture`.
//! 10 routes with conditions over properties and the body, 2 enrichments, against a plain
//! consumer of the same topic that forwards every record (the `Router` with only a default).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Instant;

use iot_core::{GroupName, Producer, Record, Topics};
use iot_stream::processors::Router;
use iot_stream::routing::{Enrichment, Route, RouteTable, RoutingProcessor};
use iot_stream::{HostConfig, ProcessorFactory, ProcessorHost};

const MESSAGES: usize = 100_000;

async fn run(topics: &Arc<Topics>, group: &str, factory: Arc<dyn ProcessorFactory>) -> f64 {
    let started = Instant::now();
    let g = ProcessorHost::new(topics.clone())
        .start(
            "telemetry",
            GroupName::new(group).unwrap(),
            factory,
            HostConfig::default(),
        )
        .await
        .unwrap();
    g.wait_caught_up().await.unwrap();
    g.shutdown().await.unwrap();
    MESSAGES as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run in release"]
async fn routing_throughput() {
    let topics = Arc::new(Topics::memory(4));
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for i in 0..MESSAGES {
        let body = format!(
            r#"{{"temperature": {}, "humidity": {}, "site": "s{}", "ok": true}}"#,
            i % 100,
            i % 60,
            i % 7
        );
        producer
            .send(
                Record::new(format!("dev-{}", i % 500), body)
                    .with_header("content-type", "application/json")
                    .with_header("content-encoding", "utf-8")
                    .with_header("level", if i % 10 == 0 { "critical" } else { "info" }),
            )
            .await
            .unwrap();
    }
    let table = RouteTable::new().with_fallback("events");
    let conditions = [
        "level = 'critical'",
        "$body.temperature > 90",
        "$body.humidity < 5 AND level = 'info'",
        "$body.site = 's3'",
        "STARTS_WITH($connectionDeviceId, 'dev-49')",
        "$body.temperature % 50 = 0 OR $body.humidity = 59",
        "NOT $body.ok",
        "$contentType = 'application/json' AND $body.temperature = 42",
        "LOWER(level) = 'never'",
        "IS_DEFINED($body.pressure)",
    ];
    for (i, c) in conditions.iter().enumerate() {
        table
            .add(Route::new(&format!("r{i}"), c, &format!("out-{i}")).unwrap())
            .unwrap();
    }
    let endpoints: Vec<String> = (0..10)
        .map(|i| format!("out-{i}"))
        .chain(["events".into()])
        .collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    table
        .add_enrichment(Enrichment::new("customer", "contoso", &endpoints).unwrap())
        .unwrap();
    table
        .add_enrichment(Enrichment::new("hub", "$iothubname", &endpoints).unwrap())
        .unwrap();

    let plain = run(
        &topics,
        "plain",
        Arc::new(Router::by_header("none").otherwise("copy")),
    )
    .await;
    let routing = run(
        &topics,
        "routing",
        Arc::new(RoutingProcessor::new(table, "hub")),
    )
    .await;
    eprintln!(
        "{{\"messages\": {MESSAGES}, \"plain_msgs_per_s\": {plain:.0}, \"routing_msgs_per_s\": {routing:.0}, \"routing_vs_plain\": {:.2}}}",
        routing / plain
    );
}
