//! The object-storage endpoint behind routing: JSON lines and Parquet objects under IoT Hub's
//! names; pyarrow reads every Parquet file and counts exactly the telemetry sent, also after the
//! archiving process is killed with SIGKILL in the middle of a batch. The Parquet scenarios run
//! on the local file system and (features `s3`, `azure`) on S3 and Azure Blob emulators that
//! `scripts/object_store_emulators.sh` starts (moto, Azurite); their objects are read back with
//! each service's own Python client (boto3, azure-storage-blob) before pyarrow counts them.
#![cfg(feature = "object-store")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{GroupName, PartitionId, Producer, ReadLimits, Record, Topics};
use iot_stream::routing::{Route, RouteTable, RoutingProcessor};
use iot_stream::sinks::object::{BatchEncoder, JsonLines, ObjectNaming, ObjectSink, StoreConfig};
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
    store: &StoreConfig,
    encoder: Arc<dyn BatchEncoder>,
    max_records: usize,
) -> RunningGroup {
    let sink = ObjectSink::from_config(
        "archive",
        store,
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

/// `file://` URL of `dir`.
fn local(dir: &Path) -> StoreConfig {
    StoreConfig::new(format!("file://{}", dir.display()))
}

/// Checks that `path` below `root` has IoT Hub's default name
/// `my-hub/<partition>/YYYY/MM/DD/HH/mm` and the sink's `_<20-digit first offset>.<ext>`, and
/// returns that last part.
fn check_name(root: &Path, path: &Path, partitions: u32) -> String {
    let name = path.strip_prefix(root).unwrap().to_str().unwrap();
    let parts: Vec<&str> = name.split('/').collect();
    assert_eq!(parts.len(), 7, "{name}");
    assert_eq!(parts[0], "my-hub");
    assert!(parts[1].parse::<u32>().unwrap() < partitions, "{name}");
    assert_eq!(parts[2].len(), 4, "{name}");
    for part in &parts[3..6] {
        assert_eq!(part.len(), 2, "{name}");
        part.parse::<u32>().unwrap();
    }
    let (minute, rest) = parts[6].split_once('_').unwrap();
    assert_eq!(minute.len(), 2);
    let ext = path.extension().unwrap().to_str().unwrap();
    assert_eq!(rest.len(), 21 + ext.len(), "{name}");
    rest.to_owned()
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
    let group = archive(&topics, &local(dir.path()), Arc::new(JsonLines), 50).await;
    wait_archived(&topics, &group).await;
    group.shutdown().await.unwrap();

    let objects = files(dir.path(), "json");
    let mut numbers = Vec::new();
    for path in &objects {
        let rest = check_name(dir.path(), path, 2);
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

    use futures::TryStreamExt;
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

    fn script(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/object_sink")
            .join(name)
    }

    /// Where a scenario archives to: the local file system, or a bucket (container) of an
    /// emulator. The sink's side is a [`StoreConfig`]; reading back is the backend's own client.
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub(super) struct Target {
        /// `local`, `s3` or `az`.
        kind: String,
        /// The directory (local) or the emulator's endpoint.
        endpoint: String,
        bucket: String,
        prefix: String,
    }

    /// Azurite's well-known development account (public, in its documentation).
    #[cfg(feature = "azure")]
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    impl Target {
        pub(super) fn local(dir: &Path) -> Target {
            Target {
                kind: "local".into(),
                endpoint: dir.display().to_string(),
                bucket: String::new(),
                prefix: String::new(),
            }
        }

        /// A fresh bucket (container) on the emulator whose endpoint is in `$var`.
        #[cfg(any(feature = "s3", feature = "azure"))]
        pub(super) fn emulator(kind: &str, var: &str) -> Target {
            let endpoint = std::env::var(var).unwrap_or_else(|_| {
                panic!("${var} is unset: run scripts/object_store_emulators.sh, which starts the emulator and these tests")
            });
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let bucket = format!("t{}-{}", std::process::id(), nanos % 1_000_000_000_000);
            let target = Target {
                kind: kind.into(),
                endpoint,
                bucket,
                prefix: "archive/telemetry".into(),
            };
            target.cloud(&["create", &target.bucket]);
            target
        }

        #[cfg(any(feature = "s3", feature = "azure"))]
        fn cloud(&self, args: &[&str]) -> String {
            let out = Command::new(python())
                .arg(script("cloud.py"))
                .args([&self.kind, &self.endpoint])
                .args(args)
                .stderr(Stdio::inherit())
                .output()
                .expect("python with boto3 / azure-storage-blob (.venv/bin/python, or $PYTHON)");
            assert!(out.status.success(), "cloud.py {args:?} failed");
            String::from_utf8(out.stdout).unwrap()
        }

        pub(super) fn config(&self) -> StoreConfig {
            match self.kind.as_str() {
                "local" => local(Path::new(&self.endpoint)),
                #[cfg(feature = "s3")]
                "s3" => StoreConfig::new(format!("s3://{}/{}", self.bucket, self.prefix))
                    .with_options([
                        ("endpoint", self.endpoint.as_str()),
                        ("allow_http", "true"),
                        ("region", "us-east-1"),
                        ("access_key_id", "testing"),
                        ("secret_access_key", "testing"),
                    ]),
                #[cfg(feature = "azure")]
                "az" => StoreConfig::new(format!("az://{}/{}", self.bucket, self.prefix))
                    .with_options([
                        ("endpoint", self.endpoint.as_str()),
                        ("allow_http", "true"),
                        ("account_name", "devstoreaccount1"),
                        ("access_key", AZURITE_KEY),
                    ]),
                other => panic!("target {other} needs its feature"),
            }
        }

        /// Objects with extension `ext` in the store now (through object_store: only to see
        /// progress, never to count the result).
        async fn objects(&self, ext: &str) -> usize {
            let store = self.config().build().unwrap();
            let all: Vec<_> = store.list(None).try_collect().await.unwrap();
            all.iter()
                .filter(|m| m.location.extension() == Some(ext))
                .count()
        }

        /// Every object in a local directory: the directory itself, or a fresh download below
        /// `scratch` with the service's own client.
        fn read_back(&self, scratch: &Path) -> PathBuf {
            if self.kind == "local" {
                return PathBuf::from(&self.endpoint);
            }
            #[cfg(any(feature = "s3", feature = "azure"))]
            {
                let dest = scratch.join("download");
                let _ = std::fs::remove_dir_all(&dest);
                std::fs::create_dir_all(&dest).unwrap();
                let dest_str = dest.to_str().unwrap();
                self.cloud(&["download", &self.bucket, &self.prefix, dest_str]);
                dest
            }
            #[cfg(not(any(feature = "s3", feature = "azure")))]
            unreachable!("{scratch:?}")
        }
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
        let out = Command::new(python())
            .arg(script("count_parquet.py"))
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

    /// Routes 2000 messages, archives the telemetry to `target` in batches of 100, reads every
    /// object back and counts it with pyarrow.
    pub(super) async fn every_telemetry_message_once(target: &Target, scratch: &Path) {
        let topics = Arc::new(Topics::memory(4));
        route(&topics, 0..2_000).await;
        let group = archive(&topics, &target.config(), Arc::new(Parquet), 100).await;
        wait_archived(&topics, &group).await;
        group.shutdown().await.unwrap();
        let root = target.read_back(scratch);
        for path in files(&root, "parquet") {
            check_name(&root, &path, 4);
        }
        let counted = pyarrow_count(&root);
        let (count, sum) = expected(2_000);
        assert_eq!(counted.rows, count, "{counted:?}");
        assert_eq!(counted.distinct, count);
        assert_eq!(counted.numbers, count);
        assert_eq!(counted.sum, sum);
        assert!(counted.files >= count / 100, "{counted:?}");
    }

    #[tokio::test]
    async fn pyarrow_reads_every_parquet_file_and_counts_exactly_the_telemetry_sent() {
        let dir = tempfile::tempdir().unwrap();
        every_telemetry_message_once(&Target::local(dir.path()), dir.path()).await;
    }

    const CHILD_ENV: &str = "IOT_STREAM_ARCHIVE_CHILD";
    const TARGET_ENV: &str = "IOT_STREAM_ARCHIVE_TARGET";

    /// The archiving process of the SIGKILL tests (run by them; does nothing on its own):
    /// archives the `archive` topic of the file log under `$CHILD_ENV` to the target in
    /// `$TARGET_ENV` in batches of 40, each write slowed down, and exits once every record is in
    /// an object.
    #[test]
    #[ignore = "the SIGKILL tests' child process"]
    fn archiver_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
            return;
        };
        let target: Target = serde_json::from_str(&std::env::var(TARGET_ENV).unwrap()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let topics = Arc::new(Topics::file(dir.join("log"), FileLogConfig::default()));
            let group = archive(&topics, &target.config(), Arc::new(SlowParquet), 40).await;
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

    fn child(dir: &Path, target: &Target) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "parquet::archiver_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir)
            .env(TARGET_ENV, serde_json::to_string(target).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Routes 3000 messages into a file log, starts the archiving process, kills it with
    /// SIGKILL once 8 objects are in `target`, restarts it to the end, and counts with pyarrow.
    pub(super) async fn sigkill_mid_batch(target: &Target, dir: &Path) {
        let sent = 3_000;
        {
            let topics = Arc::new(Topics::file(dir.join("log"), FileLogConfig::default()));
            route(&topics, 0..sent).await;
        } // the log closes (its directory lock is released) before the child opens it

        let mut first = child(dir, target);
        let guard = std::time::Instant::now() + Duration::from_secs(60);
        while target.objects("parquet").await < 8 {
            assert!(
                std::time::Instant::now() < guard,
                "the archiver made no progress"
            );
            assert!(
                first.try_wait().unwrap().is_none(),
                "the archiver ended early"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        let at_kill = target.objects("parquet").await;
        let (count, sum) = expected(sent);
        assert!(
            pyarrow_count(&target.read_back(dir)).rows < count,
            "killed after it finished"
        );

        let status = child(dir, target).wait().unwrap();
        assert!(status.success(), "the restarted archiver failed");
        let counted = pyarrow_count(&target.read_back(dir));
        eprintln!(
            "{}: killed with {at_kill} objects written; after the restart: {counted:?}",
            target.kind
        );
        assert_eq!(counted.rows, count, "{counted:?}");
        assert_eq!(counted.distinct, count, "a record in two objects");
        assert_eq!(counted.numbers, count);
        assert_eq!(counted.sum, sum);
    }

    #[tokio::test]
    async fn a_sigkill_mid_batch_loses_no_telemetry_and_stores_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        sigkill_mid_batch(&Target::local(&objects), dir.path()).await;
    }
}

/// The Parquet scenarios on S3 (moto in server mode, started by
/// `scripts/object_store_emulators.sh`; `$IOT_STREAM_S3_ENDPOINT`).
#[cfg(all(feature = "parquet", feature = "s3"))]
mod s3 {
    use iot_stream::sinks::object::StoreConfigError;

    use super::parquet::{Target, every_telemetry_message_once, sigkill_mid_batch};
    use super::*;

    const ENDPOINT: &str = "IOT_STREAM_S3_ENDPOINT";

    #[tokio::test]
    async fn s3_holds_every_telemetry_message_once() {
        let dir = tempfile::tempdir().unwrap();
        every_telemetry_message_once(&Target::emulator("s3", ENDPOINT), dir.path()).await;
    }

    #[tokio::test]
    async fn s3_a_sigkill_mid_batch_loses_no_telemetry_and_stores_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        sigkill_mid_batch(&Target::emulator("s3", ENDPOINT), dir.path()).await;
    }

    #[tokio::test]
    async fn s3_a_missing_bucket_is_a_typed_error_at_connect() {
        let endpoint = std::env::var(ENDPOINT).unwrap();
        let e = StoreConfig::new("s3://no-such-bucket-here/p")
            .with_options([
                ("endpoint", endpoint.as_str()),
                ("allow_http", "true"),
                ("access_key_id", "testing"),
                ("secret_access_key", "SECRETTESTINGVALUE"),
            ])
            .connect()
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StoreConfigError::NotFound { .. }), "{e}");
        assert!(!e.to_string().contains("SECRETTESTINGVALUE"), "{e}");
    }
}

/// The Parquet scenarios on Azure Blob Storage (Azurite, started by
/// `scripts/object_store_emulators.sh`; `$IOT_STREAM_AZURITE_ENDPOINT`).
#[cfg(all(feature = "parquet", feature = "azure"))]
mod azure {
    use iot_stream::sinks::object::StoreConfigError;

    use super::parquet::{Target, every_telemetry_message_once, sigkill_mid_batch};

    const ENDPOINT: &str = "IOT_STREAM_AZURITE_ENDPOINT";

    #[tokio::test]
    async fn azure_holds_every_telemetry_message_once() {
        let dir = tempfile::tempdir().unwrap();
        every_telemetry_message_once(&Target::emulator("az", ENDPOINT), dir.path()).await;
    }

    #[tokio::test]
    async fn azure_a_sigkill_mid_batch_loses_no_telemetry_and_stores_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        sigkill_mid_batch(&Target::emulator("az", ENDPOINT), dir.path()).await;
    }

    #[tokio::test]
    async fn azure_a_wrong_account_key_is_a_credentials_error_without_the_key() {
        let target = Target::emulator("az", ENDPOINT);
        // A well-formed key that is not the account's: Azurite checks every signature.
        let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
        let e = target
            .config()
            .with_option("access_key", wrong)
            .connect()
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StoreConfigError::Credentials { .. }), "{e}");
        assert!(!e.to_string().contains(wrong), "{e}");
        assert!(target.config().connect().await.is_ok());
    }
}
