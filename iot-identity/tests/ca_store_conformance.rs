//! `testkit::ca::run_all` on both CA stores (the file store twice over one directory).

use std::path::PathBuf;
use std::sync::Arc;

use iot_identity::ca::{CaStore, FileCaStore, MemoryCaStore};
use iot_identity::testkit::ca::{self, CaStoreFactory};

struct Memory;

#[async_trait::async_trait]
impl CaStoreFactory for Memory {
    async fn open(&self) -> Arc<dyn CaStore> {
        Arc::new(MemoryCaStore::new())
    }
}

struct File(PathBuf);

#[async_trait::async_trait]
impl CaStoreFactory for File {
    async fn open(&self) -> Arc<dyn CaStore> {
        FileCaStore::open(&self.0).await.expect("open")
    }
    async fn reopen(&self, previous: Arc<dyn CaStore>) -> Option<Arc<dyn CaStore>> {
        drop(previous);
        Some(FileCaStore::open(&self.0).await.expect("reopen"))
    }
}

#[tokio::test]
async fn memory_store_passes() {
    ca::run_all(&Memory).await;
}

#[tokio::test]
async fn file_store_passes_twice_over_one_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let factory = File(dir.path().join("cas"));
    ca::run_all(&factory).await;
    ca::run_all(&factory).await;
}

#[tokio::test]
async fn a_damaged_file_is_refused_not_emptied() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("cas");
    drop(FileCaStore::open(&path).await.expect("open"));
    std::fs::write(path.join("cas.json"), b"{\"format\": \"something else\"}").expect("write");
    assert!(matches!(
        FileCaStore::open(&path).await,
        Err(iot_identity::CaError::Corrupt { .. })
    ));
    std::fs::write(path.join("cas.json"), b"{ torn").expect("write");
    assert!(FileCaStore::open(&path).await.is_err());
}
