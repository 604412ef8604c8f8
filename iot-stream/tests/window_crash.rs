//! Crash test for window state: a child process runs windowed rules (a tumbling and a hopping
//! aggregate per device) as a consumer group from a `FileLog`; the parent kills it with SIGKILL at
//! random moments, while windows are open, and restarts it. Window state lives only in memory, so
//! this passes only because the host checkpoints at the oldest offset the open windows still
//! hold and rebuilds them by replay: every window must come out with the same aggregate as in an
//! uninterrupted run (emitted more than once is allowed, at-least-once; a different value is not).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{
    Durability, FileLogConfig, GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record,
    Topics,
};
use iot_stream::rules::RuleSet;
use iot_stream::window::OrderingPolicy;
use iot_stream::{HostConfig, PROCESSED_SUFFIX, ProcessorHost};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "IOT_STREAM_WINDOW_CRASH_CHILD_DIR";
const DEVICES: usize = 8;
const RECORDS: usize = 1500;
const KILLS: usize = 20;
const GROUP: &str = "windows";
const OUTPUTS: [&str; 2] = ["tumbling", "hopping"];

fn log_config() -> FileLogConfig {
    FileLogConfig {
        partitions: 2,
        durability: Durability::Buffered,
        ..FileLogConfig::default()
    }
}

fn host_config() -> HostConfig {
    HostConfig {
        read_limits: ReadLimits::records(5),
        tick_interval: Duration::from_millis(20),
        ..HostConfig::default()
    }
}

/// Readings of a few devices, in event-time order, 53 ms apart: a 5 s window holds about 94
/// records, so the child is almost always killed with windows open.
fn records() -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..RECORDS)
        .map(|i| {
            let device = format!("dev-{}", rng.random_range(0..DEVICES));
            let v: i64 = rng.random_range(-50..100);
            let time = 1_700_000_000_000_u64 + 53 * i as u64;
            Record::new(
                device.clone(),
                serde_json::json!({"deviceId": device, "v": v, "time": time, "seq": i}).to_string(),
            )
        })
        .collect()
}

fn rules() -> RuleSet {
    let rules = RuleSet::new(OrderingPolicy::replay());
    for (name, window) in [
        ("tumbling", "TumblingWindow(second, 5)"),
        ("hopping", "HoppingWindow(second, 10, 5)"),
    ] {
        rules
            .add(
                name,
                &format!(
                    "SELECT deviceId, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi, \
                     LAST(seq) AS last, System.Timestamp() AS windowEnd INTO {name} \
                     FROM telemetry TIMESTAMP BY time GROUP BY deviceId, {window}"
                ),
            )
            .unwrap();
    }
    rules
}

async fn run_rules(topics: Arc<Topics>) {
    let host = ProcessorHost::new(topics);
    let group = host
        .start(
            "telemetry",
            GroupName::new(GROUP).unwrap(),
            Arc::new(rules().processor("telemetry")),
            host_config(),
        )
        .await
        .unwrap();
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
}

/// Every window emission: (output, device, window end) → the payloads emitted for it.
type Emissions = BTreeMap<(String, String, String), Vec<serde_json::Value>>;

async fn emissions(topics: &Topics) -> Emissions {
    let mut out = Emissions::new();
    for name in OUTPUTS {
        let log = topics.topic(name).await.unwrap();
        for p in 0..log.partition_count() {
            let partition = PartitionId(p);
            let end = log.next_offset(partition).await.unwrap();
            let mut at = Offset(0);
            while at < end {
                let batch = log
                    .read(partition, at, ReadLimits::records(1000))
                    .await
                    .unwrap();
                for r in &batch {
                    let v: serde_json::Value = serde_json::from_slice(&r.record.payload).unwrap();
                    let key = (
                        name.to_owned(),
                        r.record.key.clone(),
                        v["windowEnd"].to_string(),
                    );
                    out.entry(key).or_default().push(v);
                }
                at = Offset(batch.last().unwrap().offset.0 + 1);
            }
        }
    }
    out
}

/// The child: runs the rules until caught up (or killed).
#[test]
#[ignore = "started by kill_9_with_open_windows_keeps_every_aggregate as a child process"]
fn window_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let topics = Arc::new(Topics::file(
            std::path::PathBuf::from(dir).join("log"),
            log_config(),
        ));
        run_rules(topics).await;
        println!("DONE");
    });
}

fn spawn_child(dir: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "window_crash_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_with_open_windows_keeps_every_aggregate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = records();

    // The uninterrupted run, in memory: each window exactly once.
    let expected = rt.block_on(async {
        let topics = Arc::new(Topics::memory(2));
        Producer::new(topics.topic("telemetry").await.unwrap())
            .send_batch(input.clone())
            .await
            .unwrap();
        run_rules(topics.clone()).await;
        emissions(&topics).await
    });
    assert!(
        expected.values().all(|e| e.len() == 1),
        "an uninterrupted run emits each window once"
    );
    assert!(
        expected.len() > 2 * DEVICES * 10,
        "too few windows: {}",
        expected.len()
    );

    rt.block_on(async {
        let topics = Topics::file(dir.path().join("log"), log_config());
        let log = topics.topic("telemetry").await.unwrap();
        Producer::new(log.clone())
            .send_batch(input.clone())
            .await
            .unwrap();
        log.sync().await.unwrap();
    });

    let mut rng = rand::rng();
    let mut finished_early = 0;
    for _ in 0..KILLS {
        let mut child = spawn_child(dir.path());
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
        if child.try_wait().unwrap().is_some() {
            finished_early += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    assert!(
        finished_early < KILLS,
        "every child finished before being killed: nothing was tested"
    );
    let out = spawn_child(dir.path()).wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DONE"),
        "final run did not finish"
    );

    rt.block_on(async {
        let topics = Topics::file(dir.path().join("log"), log_config());
        let got = emissions(&topics).await;
        for (window, want) in &expected {
            let emitted = got
                .get(window)
                .unwrap_or_else(|| panic!("window {window:?} never emitted"));
            for e in emitted {
                assert_eq!(e, &want[0], "window {window:?}: aggregate differs");
            }
        }
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
        assert!(
            extra.is_empty(),
            "windows an uninterrupted run does not emit: {extra:?}"
        );
        // The checkpoint stays at the open windows' oldest record; the companion group records
        // that everything was processed.
        let log = topics.topic("telemetry").await.unwrap();
        let group = GroupName::new(GROUP).unwrap();
        let mark = GroupName::new(format!("{GROUP}{PROCESSED_SUFFIX}")).unwrap();
        for p in 0..2 {
            let partition = PartitionId(p);
            let next = log.next_offset(partition).await.unwrap();
            let committed = log.committed(&group, partition).await.unwrap().unwrap();
            assert!(committed < next, "open windows hold the checkpoint back");
            assert_eq!(log.committed(&mark, partition).await.unwrap(), Some(next));
        }
    });
}
