//! The module store conformance suite against the memory store and the file store (with fsync
//! and OS-buffered durability, reopened over the same directory).

use std::sync::Arc;

use iot_identity::testkit;
use iot_identity::{
    Durability, FileModuleStore, FileModuleStoreConfig, MemoryModuleStore, ModuleStore,
};

#[tokio::test]
async fn memory_store() {
    let store: Arc<dyn ModuleStore> = Arc::new(MemoryModuleStore::new());
    testkit::run_modules(store, |_| async { None }).await;
}

async fn file_store(durability: Durability) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = FileModuleStoreConfig::default().durability(durability);
    let store: Arc<dyn ModuleStore> = Arc::new(
        FileModuleStore::open(dir.path(), config)
            .await
            .expect("open"),
    );
    let path = dir.path().to_owned();
    testkit::run_modules(store, |store| async move {
        // The journal holds its directory until the last handle is dropped.
        drop(store);
        let reopened = FileModuleStore::open(&path, config).await.expect("reopen");
        Some(Arc::new(reopened) as Arc<dyn ModuleStore>)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_fsync() {
    file_store(Durability::Fsync).await;
}

#[tokio::test]
async fn file_store_os_buffered() {
    file_store(Durability::OsBuffered).await;
}

#[tokio::test]
async fn boxed_and_arc_forward() {
    let store: Arc<dyn ModuleStore> =
        Arc::new(Box::new(MemoryModuleStore::new()) as Box<dyn ModuleStore>);
    testkit::run_modules(store, |_| async { None }).await;
}
