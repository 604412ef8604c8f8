//! The `Log` conformance suite against every implementation this crate ships, every durability
//! mode, and the `Arc`/`Box` forwarding impls.

use std::sync::Arc;
use std::time::Duration;

use iot_core::{Durability, FileLog, FileLogConfig, Log, LogLimits, MemoryLog, testkit};
use tempfile::TempDir;

/// Small segments so that retention, roll and multi-segment reads are exercised.
const SEGMENT_BYTES: u64 = 8 * 1024;

async fn file_log(durability: Durability, dirs: &mut Vec<TempDir>) -> Arc<dyn Log> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FileLogConfig {
        partitions: 3,
        durability,
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 512,
        limits: LogLimits::default(),
        ..FileLogConfig::default()
    };
    let log = FileLog::open(dir.path(), config).await.expect("open");
    dirs.push(dir);
    Arc::new(log)
}

/// A segment plus one 1 KiB batch: what a segment-granular retention may keep beyond the policy.
const FILE_GRANULARITY: u64 = SEGMENT_BYTES + 2048;

#[tokio::test]
async fn memory_log() {
    testkit::run_all(
        || async { Arc::new(MemoryLog::new(3).expect("log")) as Arc<dyn Log> },
        LogLimits::default(),
        0,
    )
    .await;
}

#[tokio::test]
async fn memory_log_with_small_limits() {
    let limits = LogLimits {
        max_record_bytes: 4096,
        max_batch_bytes: 16 * 1024,
        max_batch_records: 50,
    };
    let log = MemoryLog::with_limits(2, limits).expect("log");
    testkit::invalid_input(&log, &limits).await;
}

#[tokio::test]
async fn boxed_memory_log() {
    testkit::run_all(
        || async {
            let boxed: Box<dyn Log> = Box::new(MemoryLog::new(2).expect("log"));
            Arc::new(boxed) as Arc<dyn Log>
        },
        LogLimits::default(),
        0,
    )
    .await;
}

async fn run_file(durability: Durability) {
    let mut dirs = Vec::new();
    let dirs_cell = std::sync::Mutex::new(&mut dirs);
    testkit::run_all(
        || async {
            let mut local = Vec::new();
            let log = file_log(durability, &mut local).await;
            dirs_cell.lock().expect("lock").extend(local);
            log
        },
        LogLimits::default(),
        FILE_GRANULARITY,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_fsync_before_ack() {
    run_file(Durability::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_buffered() {
    run_file(Durability::OsBuffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_interval() {
    run_file(Durability::Interval(Duration::from_millis(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_with_small_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = LogLimits {
        max_record_bytes: 4096,
        max_batch_bytes: 16 * 1024,
        max_batch_records: 50,
    };
    let config = FileLogConfig {
        limits,
        ..FileLogConfig::with_partitions(2)
    };
    let log = FileLog::open(dir.path(), config).await.expect("open");
    testkit::invalid_input(&log, &limits).await;
}
