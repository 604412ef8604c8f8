//! The `InboxStore` and `TwinStore` conformance suites against the memory and file stores (the
//! file stores twice over one directory, reopened in between), through `Arc<dyn>`/`Box<dyn>`, and
//! behind the fault wrappers.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_gateway::testkit::inbox_store::{self, InboxStoreFactory};
use iot_gateway::testkit::twin_store::{self, TwinStoreFactory};
use iot_gateway::testkit::{FaultPlan, FaultyInboxStore, FaultyTwinStore};
use iot_gateway::{
    Durability, FileInbox, FileInboxConfig, FileTwinStore, FileTwinStoreConfig, InboxStore,
    MemoryInbox, MemoryTwinStore, Result, TwinStore,
};

struct MemoryStores;

#[async_trait]
impl InboxStoreFactory for MemoryStores {
    async fn open(&self) -> Result<Arc<dyn InboxStore>> {
        Ok(Arc::new(MemoryInbox::new()))
    }
}

#[async_trait]
impl TwinStoreFactory for MemoryStores {
    async fn open(&self) -> Result<Arc<dyn TwinStore>> {
        Ok(Arc::new(MemoryTwinStore::new()))
    }
}

#[tokio::test]
async fn memory_inbox() {
    inbox_store::run_all(&MemoryStores).await;
}

#[tokio::test]
async fn memory_twin_store() {
    twin_store::run_all(&MemoryStores).await;
}

/// The memory stores boxed inside an `Arc`, behind fault wrappers whose plan only counts.
struct WrappedMemory(Arc<FaultPlan>);

#[async_trait]
impl InboxStoreFactory for WrappedMemory {
    async fn open(&self) -> Result<Arc<dyn InboxStore>> {
        let inner: Box<dyn InboxStore> = Box::new(MemoryInbox::new());
        Ok(Arc::new(FaultyInboxStore::new(inner, Arc::clone(&self.0))))
    }
}

#[async_trait]
impl TwinStoreFactory for WrappedMemory {
    async fn open(&self) -> Result<Arc<dyn TwinStore>> {
        let inner: Box<dyn TwinStore> = Box::new(MemoryTwinStore::new());
        Ok(Arc::new(FaultyTwinStore::new(inner, Arc::clone(&self.0))))
    }
}

#[tokio::test]
async fn memory_stores_boxed_behind_the_fault_wrappers() {
    let plan = FaultPlan::counting();
    let factory = WrappedMemory(Arc::clone(&plan));
    inbox_store::run_all(&factory).await;
    let inbox_calls = plan.calls();
    assert!(
        inbox_calls > 20,
        "every inbox call went through the wrapper"
    );
    twin_store::run_all(&factory).await;
    assert!(
        plan.calls() > inbox_calls + 10,
        "every twin call went through the wrapper"
    );
}

/// File stores in one directory, reopened from it.
struct Files {
    dir: PathBuf,
    durability: Durability,
    compact_after_bytes: u64,
}

impl Files {
    fn new(dir: &tempfile::TempDir, durability: Durability, compact_after_bytes: u64) -> Self {
        Files {
            dir: dir.path().to_path_buf(),
            durability,
            compact_after_bytes,
        }
    }
}

#[async_trait]
impl InboxStoreFactory for Files {
    async fn open(&self) -> Result<Arc<dyn InboxStore>> {
        let config = FileInboxConfig::default()
            .durability(self.durability)
            .compact_after_bytes(self.compact_after_bytes);
        Ok(Arc::new(
            FileInbox::open(self.dir.join("inbox"), config).await?,
        ))
    }

    async fn reopen(&self, previous: Arc<dyn InboxStore>) -> Option<Result<Arc<dyn InboxStore>>> {
        // The directory lock goes with the last handle.
        drop(previous);
        Some(InboxStoreFactory::open(self).await)
    }
}

#[async_trait]
impl TwinStoreFactory for Files {
    async fn open(&self) -> Result<Arc<dyn TwinStore>> {
        let config = FileTwinStoreConfig::default()
            .durability(self.durability)
            .compact_after_bytes(self.compact_after_bytes);
        Ok(Arc::new(
            FileTwinStore::open(self.dir.join("twins"), config).await?,
        ))
    }

    async fn reopen(&self, previous: Arc<dyn TwinStore>) -> Option<Result<Arc<dyn TwinStore>>> {
        drop(previous);
        Some(TwinStoreFactory::open(self).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_fsync_twice_over_one_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files::new(&dir, Durability::Fsync, 1 << 20);
    for _ in 0..2 {
        inbox_store::run_all(&files).await;
        twin_store::run_all(&files).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_buffered_compacting_often() {
    // A tiny compaction threshold makes nearly every write go through a snapshot.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Files::new(&dir, Durability::OsBuffered, 1);
    inbox_store::run_all(&files).await;
    twin_store::run_all(&files).await;
}

#[tokio::test]
async fn memory_module_twins() {
    twin_store::run_module_twins(&MemoryStores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_module_twins_fsync_and_compacting() {
    let dir = tempfile::tempdir().expect("tempdir");
    twin_store::run_module_twins(&Files::new(&dir, Durability::Fsync, 1 << 20)).await;
    // Nearly every write through a snapshot: module twins are in the snapshot too.
    let dir = tempfile::tempdir().expect("tempdir");
    twin_store::run_module_twins(&Files::new(&dir, Durability::OsBuffered, 1)).await;
}
