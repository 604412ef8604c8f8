//! The `Journal` conformance suite against the journals this crate ships: memory, file (reopened
//! in place, twice over one directory) and the fault-injecting wrapper with no fault planned.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_provisioning::testkit::journal::{self, JournalFactory};
use iot_provisioning::testkit::{FaultPlan, FaultyJournal};
use iot_provisioning::{FileJournal, FileJournalConfig, Intent, Journal, MemoryJournal, Result};
use tempfile::TempDir;

struct Memory;

#[async_trait]
impl JournalFactory for Memory {
    async fn open(&self) -> Result<Arc<dyn Journal>> {
        Ok(Arc::new(MemoryJournal::new()))
    }
}

struct File {
    dir: TempDir,
}

impl File {
    fn new() -> Self {
        File {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("journal")
    }
}

#[async_trait]
impl JournalFactory for File {
    async fn open(&self) -> Result<Arc<dyn Journal>> {
        Ok(Arc::new(
            FileJournal::open(self.path(), FileJournalConfig::default()).await?,
        ))
    }

    async fn reopen(&self, previous: Arc<dyn Journal>) -> Option<Result<Arc<dyn Journal>>> {
        // The last handle releases the directory's lock.
        drop(previous);
        Some(self.open().await)
    }
}

struct Counted(Arc<FaultPlan>);

#[async_trait]
impl JournalFactory for Counted {
    async fn open(&self) -> Result<Arc<dyn Journal>> {
        Ok(Arc::new(FaultyJournal::new(
            MemoryJournal::new(),
            Arc::clone(&self.0),
        )))
    }
}

#[tokio::test]
async fn memory_journal() {
    journal::run_all(&Memory).await;
}

#[tokio::test]
async fn file_journal_twice_over_one_directory() {
    let factory = File::new();
    journal::run_all(&factory).await;
    journal::run_all(&factory).await;
}

#[tokio::test]
async fn fault_wrapper_without_faults() {
    let plan = FaultPlan::counting();
    journal::run_all(&Counted(Arc::clone(&plan))).await;
    assert!(plan.calls() > 20, "{} calls counted", plan.calls());
}

/// Compaction empties the WAL into a snapshot; the numbers given out before must still
/// bound the next ones after a reopen (the contract: every `begin` numbers above every earlier).
#[tokio::test]
async fn file_journal_numbers_keep_growing_across_compaction_and_reopen() {
    let factory = File::new();
    let first = factory.open().await.expect("open");
    // Large intents, so that a few of them pass the compaction threshold.
    let ids = (0..4000)
        .map(|i| format!("compaction-{i:05}-{}", "x".repeat(100)).parse())
        .collect::<std::result::Result<Vec<_>, _>>()
        .expect("ids");
    let big = Intent::Register { ids };
    let mut highest = 0;
    let mut compacted = false;
    let mut previous_len = 0;
    for _ in 0..8 {
        let seq = first.begin(&big).await.expect("begin");
        first.finish(seq).await.expect("finish");
        highest = seq;
        let len = std::fs::metadata(factory.path().join("wal"))
            .expect("journal file")
            .len();
        if len < previous_len {
            compacted = true;
            break;
        }
        previous_len = len;
    }
    assert!(compacted, "the journal was compacted");
    let reopened = factory.reopen(first).await.expect("reopens").expect("open");
    let next = reopened
        .begin(&Intent::Unregister {
            id: "compaction-after".parse().expect("id"),
        })
        .await
        .expect("begin");
    assert!(
        next > highest,
        "numbered {next} after {highest} was given out"
    );
}
