//! Crash test for the stateful alerting processors: a child process runs a threshold alert (a
//! tumbling average per device) and spike-and-dip detection (a history per device) as two
//! consumer groups from a `FileLog`; the parent kills it with SIGKILL at random moments and
//! restarts it. Their state lives only in memory and is rebuilt by replaying the log from the
//! checkpoint they hold back, so every alert of an uninterrupted run must come out again with the
//! same content (more than once is allowed: at-least-once), and no other alert may appear (a
//! history or window rebuilt from part of its records would raise different alerts).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::CrashChild;
use iot_core::{GroupName, Producer, ReadLimits, Record, Timestamp, Topics};
use iot_stream::processors::{AnomalyDetector, AnomalyMode, SpikeAndDip, ThresholdAlert};
use iot_stream::window::{OrderingPolicy, WindowSpec};
use iot_stream::{HostConfig, ProcessorHost};
use rand::{Rng, SeedableRng};

const CHILD: CrashChild = CrashChild::new("alert_crash_child", "IOT_STREAM_ALERT_CRASH_CHILD_DIR");
const DEVICES: usize = 6;
const RECORDS: usize = 1500;
const OUTPUTS: [&str; 2] = ["threshold", "anomalies"];

fn host_config() -> HostConfig {
    HostConfig::default()
        .read_limits(ReadLimits::records(5))
        .tick_interval(Duration::from_millis(20))
}

/// Readings 53 ms apart (device time), mostly around 25, with a spike or a dip now and then.
fn records() -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    (0..RECORDS)
        .map(|i| {
            let device = format!("dev-{}", rng.random_range(0..DEVICES));
            let v: f64 = match rng.random_range(0..40) {
                0 => 500.0,
                1 => -400.0,
                _ => rng.random_range(0.0..50.0),
            };
            Record::new(device, serde_json::json!({"v": v, "seq": i}).to_string()).with_device_time(
                Timestamp::from_unix_millis(1_700_000_000_000 + 53 * i as u64),
            )
        })
        .collect()
}

async fn run_alerts(topics: Arc<Topics>) {
    let host = ProcessorHost::new(topics);
    let threshold = ThresholdAlert::new(
        "v",
        WindowSpec::Tumbling {
            size: Duration::from_secs(2),
        },
        30.0,
    )
    .unwrap()
    .ordering(OrderingPolicy::replay())
    .topic("threshold");
    let anomalies = AnomalyDetector::new(
        "v",
        SpikeAndDip::new(99.0, 30, AnomalyMode::SpikesAndDips).unwrap(),
    )
    .topic("anomalies");
    let mut groups = Vec::new();
    for (name, factory) in [
        (
            "threshold",
            Arc::new(threshold) as Arc<dyn iot_stream::ProcessorFactory>,
        ),
        ("anomalies", Arc::new(anomalies)),
    ] {
        groups.push(
            host.start(
                "telemetry",
                GroupName::new(name).unwrap(),
                factory,
                host_config(),
            )
            .await
            .unwrap(),
        );
    }
    for g in &groups {
        g.wait_caught_up().await.unwrap();
    }
    for g in groups {
        g.shutdown().await.unwrap();
    }
}

/// Every alert: (output, device, window end or event time) → the payloads emitted for it.
type Alerts = BTreeMap<(String, String, String), Vec<serde_json::Value>>;

async fn alerts(topics: &Topics) -> Alerts {
    let mut out = Alerts::new();
    for name in OUTPUTS {
        for r in common::read_all(topics, name).await {
            let v: serde_json::Value = serde_json::from_slice(&r.record.payload).unwrap();
            let at = if name == "threshold" {
                v["windowEnd"].to_string()
            } else {
                v["time"].to_string()
            };
            out.entry((name.to_owned(), r.record.key.clone(), at))
                .or_default()
                .push(v);
        }
    }
    out
}

/// The child: runs the processors until caught up (or killed).
#[test]
#[ignore = "started by kill_9_keeps_every_alert as a child process"]
fn alert_crash_child() {
    let Some(dir) = CHILD.dir() else {
        return;
    };
    common::ack(common::STARTED);
    common::runtime().block_on(async move {
        run_alerts(Arc::new(common::file_topics(&dir))).await;
        common::ack(common::DONE);
    });
}

#[test]
fn kill_9_keeps_every_alert() {
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let input = records();

    // The uninterrupted run, in memory: each alert exactly once.
    let expected = rt.block_on(async {
        let topics = Arc::new(Topics::memory(2));
        Producer::new(topics.topic("telemetry").await.unwrap())
            .send_batch(input.clone())
            .await
            .unwrap();
        run_alerts(topics.clone()).await;
        alerts(&topics).await
    });
    assert!(
        expected.values().all(|e| e.len() == 1),
        "an uninterrupted run raises each alert once"
    );
    for name in OUTPUTS {
        let n = expected.keys().filter(|k| k.0 == name).count();
        assert!(n > 10, "too few {name} alerts: {n}");
    }

    rt.block_on(common::write_input(dir.path(), "telemetry", input));
    common::kill_repeatedly(&CHILD, dir.path());
    CHILD.run_to_completion(dir.path(), common::KILLS);

    rt.block_on(async {
        let got = alerts(&common::file_topics(dir.path())).await;
        for (alert, want) in &expected {
            let emitted = got
                .get(alert)
                .unwrap_or_else(|| panic!("alert {alert:?} never raised"));
            for e in emitted {
                assert_eq!(e, &want[0], "alert {alert:?} differs");
            }
        }
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
        assert!(
            extra.is_empty(),
            "alerts an uninterrupted run does not raise: {extra:?}"
        );
    });
}
