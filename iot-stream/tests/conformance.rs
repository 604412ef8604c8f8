//! The `StateStore` conformance suite against every implementation and `Box<dyn>`/`Arc` wrappers.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::Durability;
use iot_core::{DeviceId, Timestamp};

use iot_stream::testkit::run_all;
use iot_stream::{
    Event, FileStateStore, FileStateStoreConfig, LastKnown, LkvUpdate, MemoryStateStore, Result,
    StateStore,
};

#[tokio::test]
async fn memory_store() {
    run_all(&|| Box::pin(async { Box::new(MemoryStateStore::new()) as Box<dyn StateStore> })).await;
}

#[tokio::test]
async fn memory_store_in_arc() {
    run_all(&|| {
        Box::pin(async {
            Box::new(Arc::new(MemoryStateStore::new()) as Arc<dyn StateStore>)
                as Box<dyn StateStore>
        })
    })
    .await;
}

/// A file store that owns its temporary directory, which is removed when the store is dropped.
#[derive(Debug)]
struct TempFileStore {
    store: FileStateStore,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl StateStore for TempFileStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        self.store.append_events(device, events).await
    }
    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.store.read_events(device, from, to, limit).await
    }
    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        self.store.enforce_retention(before).await
    }
    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        self.store.last_known(device).await
    }
    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        self.store.merge_last_known(device, update).await
    }
    async fn devices(&self) -> Result<Vec<DeviceId>> {
        self.store.devices().await
    }
}

async fn file_store(config: FileStateStoreConfig) -> Box<dyn StateStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStateStore::open(dir.path(), config)
        .await
        .expect("open file store");
    Box::new(TempFileStore { store, _dir: dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_fsync() {
    run_all(&|| Box::pin(file_store(FileStateStoreConfig::default()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_buffered_compacting_every_write() {
    // A tiny compaction threshold makes every write go through a snapshot.
    run_all(&|| {
        Box::pin(file_store(FileStateStoreConfig {
            durability: Durability::OsBuffered,
            compact_after_bytes: 1,
            ..FileStateStoreConfig::default()
        }))
    })
    .await;
}
