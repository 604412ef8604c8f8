//! The kill -9 harness shared by the crash tests.
//!
//! A crash test is two `#[test]`s in one test binary: the parent, and an `#[ignore]`d child that
//! the parent starts as a separate process (the test binary itself, running only the child test
//! with a directory in an environment variable). The parent writes the input to a `FileLog` in
//! that directory, starts the child, kills it with SIGKILL after a random delay, many times, then
//! lets a last child run to completion and compares what the crashed runs produced with an
//! uninterrupted run.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use iot_core::{
    Durability, FileLogConfig, Log, Offset, PartitionId, Producer, ReadLimits, Record,
    StoredRecord, Topics,
};
use rand::Rng;

/// How many times a child is killed.
pub const KILLS: usize = 20;

/// What a child prints when it finished its work.
pub const DONE: &str = "DONE";

/// The logs every crash test uses: two partitions, buffered (a SIGKILL loses nothing the kernel
/// already has).
pub fn log_config() -> FileLogConfig {
    FileLogConfig {
        partitions: 2,
        durability: Durability::OsBuffered,
        ..FileLogConfig::default()
    }
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

/// A crash test's child: the name of its `#[test]` and the variable that passes it the directory.
#[derive(Clone, Copy, Debug)]
pub struct Child {
    /// The child test's function name.
    pub test: &'static str,
    /// The environment variable holding the directory.
    pub env: &'static str,
}

impl Child {
    /// The directory the child should work in, or `None` when the test runs as a plain test (the
    /// child then does nothing).
    pub fn dir(&self) -> Option<PathBuf> {
        std::env::var(self.env).ok().map(PathBuf::from)
    }

    fn spawn(&self, dir: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", self.test, "--nocapture", "--include-ignored"])
            .env(self.env, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts the child `KILLS` times, each time killing it with SIGKILL after 20–250 ms; fails
    /// if it always finished before the kill (nothing would have been tested).
    pub fn kill_repeatedly(&self, dir: &Path) {
        let mut rng = rand::rng();
        let mut finished_early = 0;
        for _ in 0..KILLS {
            let mut child = self.spawn(dir);
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
    }

    /// Runs the child to completion; fails if it did not print [`DONE`].
    pub fn run_to_completion(&self, dir: &Path) {
        let out = self.spawn(dir).wait_with_output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(DONE),
            "final run of {} did not finish",
            self.test
        );
    }
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
