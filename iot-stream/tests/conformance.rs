//! The `StateStore` conformance suite against every implementation, `Arc<dyn>`, and the fault
//! wrapper.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::Durability;

use iot_stream::testkit::{FaultPlan, FaultyStateStore, StateStoreFactory, run_all};
use iot_stream::{FileStateStore, FileStateStoreConfig, MemoryStateStore, Result, StateStore};

struct Memory;

#[async_trait]
impl StateStoreFactory for Memory {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(MemoryStateStore::new()))
    }
}

#[tokio::test]
async fn memory_store() {
    run_all(&Memory).await;
}

struct MemoryInArc;

#[async_trait]
impl StateStoreFactory for MemoryInArc {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        let inner: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        Ok(Arc::new(Box::new(inner) as Box<dyn StateStore>))
    }
}

#[tokio::test]
async fn memory_store_in_arc_and_box() {
    run_all(&MemoryInArc).await;
}

/// The memory store behind a fault wrapper whose plan only counts: the wrapper forwards faithfully.
struct FaultyMemory(Arc<FaultPlan>);

#[async_trait]
impl StateStoreFactory for FaultyMemory {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(FaultyStateStore::new(
            MemoryStateStore::new(),
            Arc::clone(&self.0),
        )))
    }
}

#[tokio::test]
async fn memory_store_behind_the_fault_wrapper() {
    let plan = FaultPlan::counting();
    run_all(&FaultyMemory(Arc::clone(&plan))).await;
    assert!(plan.calls() > 20, "every call went through the wrapper");
}

/// File stores in one directory, reopened from it.
struct Files {
    dir: PathBuf,
    config: FileStateStoreConfig,
}

#[async_trait]
impl StateStoreFactory for Files {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(
            FileStateStore::open(&self.dir, self.config.clone()).await?,
        ))
    }

    async fn reopen(&self, previous: Arc<dyn StateStore>) -> Option<Result<Arc<dyn StateStore>>> {
        // The directory lock is released when the last handle goes.
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_fsync_twice_over_one_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files {
        dir: dir.path().to_path_buf(),
        config: FileStateStoreConfig::default(),
    };
    run_all(&files).await;
    // Again over what the first run left: fresh ids keep the runs apart.
    run_all(&files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_buffered_compacting_every_write() {
    // A tiny compaction threshold makes every write go through a snapshot.
    let dir = tempfile::tempdir().expect("tempdir");
    run_all(&Files {
        dir: dir.path().to_path_buf(),
        config: FileStateStoreConfig::default()
            .durability(Durability::OsBuffered)
            .compact_after_bytes(1),
    })
    .await;
}
