//! A window closed by the host clock (late-arrival tolerance on idle input) and a restart: the
//! window must not come out again with only part of its events. It holds the checkpoint at its
//! oldest event until the events' own watermark passes it, so a restart rebuilds it whole and
//! emits it again unchanged (at-least-once); without that, the restart would rebuild it from
//! the records after a checkpoint another open window set, and emit a smaller count.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use iot_core::{GroupName, Offset, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::rules::RuleSet;
use iot_stream::window::{LateAction, OrderingPolicy};
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::{Value, json};

async fn outputs(topics: &Topics, topic: &str) -> Vec<Value> {
    let log = topics.topic(topic).await.unwrap();
    log.read(PartitionId(0), Offset(0), ReadLimits::default())
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.record.payload).unwrap())
        .collect()
}

/// Waits (without a time limit on the outcome: the deadline only stops a hung test) until
/// `topic` holds `n` records.
async fn wait_for_outputs(topics: &Topics, topic: &str, n: usize) -> Vec<Value> {
    for _ in 0..3000 {
        let out = outputs(topics, topic).await;
        if out.len() >= n {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{topic} never held {n} records");
}

async fn start(host: &ProcessorHost, rules: &RuleSet) -> RunningGroup {
    host.start(
        "telemetry",
        GroupName::new("clock").unwrap(),
        Arc::new(rules.processor("telemetry")),
        HostConfig::default().tick_interval(Duration::from_millis(20)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closed_by_the_clock_is_rebuilt_whole_after_a_restart() {
    let topics = Arc::new(Topics::memory(1));
    let host = ProcessorHost::new(topics.clone());
    let rules = RuleSet::new(OrderingPolicy {
        late_arrival: Some(Duration::from_millis(100)),
        out_of_order: Duration::ZERO,
        action: LateAction::Adjust,
    });
    // Event time = enqueued time. The short window is closed by the clock; the long one stays
    // open and holds the checkpoint at offset 5, in the middle of the short window's events.
    rules
        .add(
            "short",
            "SELECT deviceId, COUNT(*) AS n, LAST(seq) AS last, System.Timestamp() AS windowEnd \
             INTO short FROM telemetry GROUP BY deviceId, TumblingWindow(second, 1)",
        )
        .unwrap();
    rules
        .add(
            "long",
            "SELECT deviceId, COUNT(*) AS n INTO long FROM telemetry WHERE seq >= 5 \
             GROUP BY deviceId, TumblingWindow(hour, 1)",
        )
        .unwrap();
    // One append: one enqueued time, so one short window holds all ten records.
    let log = topics.topic("telemetry").await.unwrap();
    Producer::new(log.clone())
        .send_batch(
            (0..10)
                .map(|i| Record::new("dev-1", json!({"deviceId": "dev-1", "seq": i}).to_string()))
                .collect(),
        )
        .await
        .unwrap();

    let group = start(&host, &rules).await;
    let first = wait_for_outputs(&topics, "short", 1).await;
    assert_eq!(first.len(), 1);
    assert_eq!((&first[0]["n"], &first[0]["last"]), (&json!(10), &json!(9)));
    group.wait_caught_up().await.unwrap();
    assert_eq!(
        group.committed(),
        vec![Offset(0)],
        "the window the clock closed holds the checkpoint at its oldest event"
    );
    drop(group); // a crash: the workers are aborted

    let group = start(&host, &rules).await;
    let again = wait_for_outputs(&topics, "short", 2).await;
    assert_eq!(
        again[1], first[0],
        "emitted again whole, not from part of its events"
    );
    group.shutdown().await.unwrap();
}
