//! The object-storage endpoint behind routing: JSON lines and Parquet objects under IoT Hub's
//! names; pyarrow reads every Parquet file and counts exactly the telemetry sent, also after the
//! archiving process is killed with SIGKILL in the middle of a batch.
#![cfg(feature = "object-store")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{GroupName, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::routing::{Route, RouteTable, RoutingProcessor};
use iot_stream::sinks::object::{BatchEncoder, JsonLines, ObjectNaming, ObjectSink};
use iot_stream::sinks::{BatchPolicy, SinkConfig, SinkProcessor};
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};
use serde_json::json;

/// Telemetry `n` (JSON body `{"kind":"telemetry","n":n,…}`, header `n`), or a status message
/// that the routes send to the fallback endpoint, not to the archive.
fn message(n: usize) -> Record {
    let kind = if n % 10 == 9 { "status" } else { "telemetry" };
    Record::new(
        format!("dev-{}", n % 7),
        json!({"kind": kind, "n": n, "temp": n % 80}).to_string(),
    )
    .with_header("content-type", "application/json")
    .with_header("content-encoding", "utf-8")
    .with_header("n", n.to_string())
}

fn telemetry_count(sent: usize) -> usize {
    (0..sent).filter(|n| n % 10 != 9).count()
}

/// Sends `range` to `telemetry` and routes it to `archive` (telemetry) and `events` (the rest),
/// until routed; the routing group is shut down gracefully.
async fn route(topics: &Arc<Topics>, range: std::ops::Range<usize>) {
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for n in range {
        producer.send(message(n)).await.unwrap();
    }
    let table = RouteTable::new().with_fallback("events");
    table
        .add(Route::new("telemetry", "$body.kind = 'telemetry'", "archive").unwrap())
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

fn sink_config(max_records: usize) -> SinkConfig {
    SinkConfig::default().batch(BatchPolicy {
        max_records,
        max_bytes: 1 << 20,
        max_age: Duration::from_millis(300),
    })
}

async fn archive(
    topics: &Arc<Topics>,
    root: &Path,
    encoder: Arc<dyn BatchEncoder>,
    max_records: usize,
) -> RunningGroup {
    let sink = ObjectSink::local(
        "archive",
        root,
        ObjectNaming::new("my-hub").unwrap(),
        encoder,
    )
    .unwrap();
    let factory = SinkProcessor::factory(Arc::new(sink), sink_config(max_records)).unwrap();
    ProcessorHost::new(topics.clone())
        .start(
            "archive",
            GroupName::new("archiver").unwrap(),
            Arc::new(factory),
            HostConfig::default()
                .read_limits(ReadLimits::records(16))
                .tick_interval(Duration::from_millis(20)),
        )
        .await
        .unwrap()
}

/// Waits until the archive group's checkpoint is at the end of every partition: every record is
/// in an object.
async fn wait_archived(topics: &Topics, group: &RunningGroup) {
    let log = topics.topic("archive").await.unwrap();
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
            "the archive never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn files(root: &Path, ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, ext, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn json_lines_objects_hold_every_routed_telemetry_message_under_iot_hub_names() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Arc::new(Topics::memory(2));
    route(&topics, 0..300).await;
    let group = archive(&topics, dir.path(), Arc::new(JsonLines), 50).await;
    wait_archived(&topics, &group).await;
    group.shutdown().await.unwrap();

    let objects = files(dir.path(), "json");
    let mut numbers = Vec::new();
    for path in &objects {
        let name = path.strip_prefix(dir.path()).unwrap().to_str().unwrap();
        // my-hub/<partition>/YYYY/MM/DD/HH/mm_<20-digit first offset>.json
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!(parts.len(), 7, "{name}");
        assert_eq!(parts[0], "my-hub");
        assert!(parts[1] == "0" || parts[1] == "1", "{name}");
        assert_eq!(parts[2].len(), 4, "{name}");
        let (minute, rest) = parts[6].split_once('_').unwrap();
        assert_eq!(minute.len(), 2);
        assert_eq!(rest.len(), "00000000000000000000.json".len(), "{name}");
        let text = std::fs::read_to_string(path).unwrap();
        let mut first = true;
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            if first {
                let offset = value["offset"].as_u64().unwrap();
                assert_eq!(
                    rest,
                    format!("{offset:020}.json"),
                    "named after its first offset"
                );
                first = false;
            }
            assert_eq!(value["properties"]["content-type"], "application/json");
            let body: serde_json::Value =
                serde_json::from_str(value["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["kind"], "telemetry");
            numbers.push(body["n"].as_u64().unwrap() as usize);
        }
    }
    numbers.sort_unstable();
    let expected: Vec<usize> = (0..300).filter(|n| n % 10 != 9).collect();
    assert_eq!(numbers, expected);
}

#[cfg(feature = "parquet")]
mod parquet {
    use std::process::{Command, Stdio};

    use iot_core::FileLogConfig;
    use iot_stream::sinks::object::Parquet;

    use super::*;

    /// The venv's Python (CI installs pyarrow there), or `$PYTHON`.
    fn python() -> PathBuf {
        std::env::var_os("PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
            })
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Counted {
        files: usize,
        rows: usize,
        distinct: usize,
        numbers: usize,
        sum: usize,
    }

    /// What pyarrow reads in every Parquet file under `root`.
    fn pyarrow_count(root: &Path) -> Counted {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/object_sink/count_parquet.py");
        let out = Command::new(python())
            .arg(script)
            .arg(root)
            .stderr(Stdio::inherit())
            .output()
            .expect("python with pyarrow (.venv/bin/python, or $PYTHON)");
        assert!(out.status.success(), "pyarrow failed to read the archive");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn expected(sent: usize) -> (usize, usize) {
        let count = telemetry_count(sent);
        let sum = (0..sent).filter(|n| n % 10 != 9).sum();
        (count, sum)
    }

    #[tokio::test]
    async fn pyarrow_reads_every_parquet_file_and_counts_exactly_the_telemetry_sent() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Arc::new(Topics::memory(4));
        route(&topics, 0..2_000).await;
        let group = archive(&topics, dir.path(), Arc::new(Parquet), 100).await;
        wait_archived(&topics, &group).await;
        group.shutdown().await.unwrap();
        let counted = pyarrow_count(dir.path());
        let (count, sum) = expected(2_000);
        assert_eq!(counted.rows, count, "{counted:?}");
        assert_eq!(counted.distinct, count);
        assert_eq!(counted.numbers, count);
        assert_eq!(counted.sum, sum);
        assert!(counted.files >= count / 100, "{counted:?}");
    }

    const CHILD_ENV: &str = "IOT_STREAM_ARCHIVE_CHILD";

    /// The archiving process of the SIGKILL test (run by it; does nothing on its own): archives
    /// the `archive` topic of the file log under `$CHILD_ENV` to `<dir>/objects` in batches of 40,
    /// each write slowed down, and exits once every record is in an object.
    #[test]
    #[ignore = "the SIGKILL test's child process"]
    fn archiver_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let topics = Arc::new(Topics::file(dir.join("log"), FileLogConfig::default()));
            let group = archive(&topics, &dir.join("objects"), Arc::new(SlowParquet), 40).await;
            wait_archived(&topics, &group).await;
            group.shutdown().await.unwrap();
        });
    }

    /// Parquet, 30 ms per batch: the parent kills the child while batches are open and writes
    /// are under way.
    #[derive(Debug)]
    struct SlowParquet;

    impl BatchEncoder for SlowParquet {
        fn extension(&self) -> &str {
            Parquet.extension()
        }
        fn encode(
            &self,
            records: &[iot_core::StoredRecord],
        ) -> Result<Vec<u8>, iot_stream::sinks::SinkError> {
            std::thread::sleep(Duration::from_millis(30));
            Parquet.encode(records)
        }
    }

    fn child(dir: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "parquet::archiver_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn a_sigkill_mid_batch_loses_no_telemetry_and_stores_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        let sent = 3_000;
        {
            let topics = Arc::new(Topics::file(
                dir.path().join("log"),
                FileLogConfig::default(),
            ));
            route(&topics, 0..sent).await;
        } // the log closes (its directory lock is released) before the child opens it
        std::fs::create_dir_all(dir.path().join("objects")).unwrap();
        let objects = dir.path().join("objects");

        let mut first = child(dir.path());
        let guard = std::time::Instant::now() + Duration::from_secs(60);
        while files(&objects, "parquet").len() < 8 {
            assert!(
                std::time::Instant::now() < guard,
                "the archiver made no progress"
            );
            assert!(
                first.try_wait().unwrap().is_none(),
                "the archiver ended early"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        let at_kill = files(&objects, "parquet").len();
        let (count, sum) = expected(sent);
        assert!(
            pyarrow_count(&objects).rows < count,
            "killed after it finished"
        );

        let status = child(dir.path()).wait().unwrap();
        assert!(status.success(), "the restarted archiver failed");
        let counted = pyarrow_count(&objects);
        eprintln!("killed with {at_kill} objects written; after the restart: {counted:?}");
        assert_eq!(counted.rows, count, "{counted:?}");
        assert_eq!(counted.distinct, count, "a record in two objects");
        assert_eq!(counted.numbers, count);
        assert_eq!(counted.sum, sum);
    }
}
