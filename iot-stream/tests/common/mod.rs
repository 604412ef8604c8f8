//! What the crash tests share: the file-backed topics they run on, and the kill loop over the
//! storage kit's kill -9 harness ([`iot_core::testkit::crash`]).
//!
//! A crash test's child prints [`STARTED`] once it is running and [`DONE`] when it finished; the
//! parent writes the input to a `FileLog`, kills the child with SIGKILL at random moments many
//! times, then lets a last child run to completion and compares what the crashed runs produced
//! with an uninterrupted run.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::path::Path;

pub use iot_core::testkit::crash::{CrashChild, DONE, ack};
use iot_core::{
    Durability, FileLogConfig, Log, Offset, PartitionId, Producer, ReadLimits, Record,
    StoredRecord, Topics,
};

/// How many times a child is killed.
pub const KILLS: usize = 20;

/// What a child prints once it is running (the harness times the kill from it).
pub const STARTED: &str = "started";

/// The logs every crash test uses: two partitions, buffered (a SIGKILL loses nothing the kernel
/// already has).
pub fn log_config() -> FileLogConfig {
    FileLogConfig::default()
        .partitions(2)
        .durability(Durability::OsBuffered)
}

/// The file-backed topics under `dir`.
pub fn file_topics(dir: &Path) -> Topics {
    Topics::file(dir.join("log"), log_config())
}

/// A multi-threaded runtime, as a processor host runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `child` over `dir` [`KILLS`] times, each time killing it with SIGKILL 20–250 ms after
/// it started working; fails if it always finished before the kill (nothing would have been
/// tested).
pub fn kill_repeatedly(child: &CrashChild, dir: &Path) {
    let mut finished_early = 0;
    for round in 0..KILLS {
        let lines = child.run_and_kill(dir, round, 20..250);
        if lines.iter().any(|l| l == DONE) {
            finished_early += 1;
        }
    }
    assert!(
        finished_early < KILLS,
        "every child finished before being killed: nothing was tested"
    );
}

/// Appends `input` to topic `topic` of the file-backed topics under `dir` and syncs it.
pub async fn write_input(dir: &Path, topic: &str, input: Vec<Record>) {
    let topics = file_topics(dir);
    let log = topics.topic(topic).await.unwrap();
    Producer::new(log.clone()).send_batch(input).await.unwrap();
    log.sync().await.unwrap();
}

/// Every record of `topic`, partition by partition.
pub async fn read_all(topics: &Topics, topic: &str) -> Vec<StoredRecord> {
    let log = topics.topic(topic).await.unwrap();
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let end = log.next_offset(partition).await.unwrap();
        let mut at = Offset(0);
        while at < end {
            let batch = log
                .read(partition, at, ReadLimits::records(1000))
                .await
                .unwrap();
            at = Offset(batch.last().unwrap().offset.0 + 1);
            out.extend(batch);
        }
    }
    out
}
