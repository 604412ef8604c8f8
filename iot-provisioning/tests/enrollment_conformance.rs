//! The enrollment stores of this crate through the conformance suite, and the file store's
//! files after a reopen.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_provisioning::Result;
use iot_provisioning::enrollment::{EnrollmentStore, FileEnrollmentStore, MemoryEnrollmentStore};
use iot_provisioning::testkit::enrollment::{EnrollmentStoreFactory, run_all};

struct Memory;

#[async_trait]
impl EnrollmentStoreFactory for Memory {
    async fn open(&self) -> Result<Arc<dyn EnrollmentStore>> {
        Ok(Arc::new(MemoryEnrollmentStore::new()))
    }
}

struct File(PathBuf);

#[async_trait]
impl EnrollmentStoreFactory for File {
    async fn open(&self) -> Result<Arc<dyn EnrollmentStore>> {
        Ok(Arc::new(FileEnrollmentStore::open(&self.0).await?))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn EnrollmentStore>,
    ) -> Option<Result<Arc<dyn EnrollmentStore>>> {
        // The suite holds no other handle: dropping this one releases the directory's lock.
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    run_all(&Memory).await;
}

#[tokio::test]
async fn file_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_all(&File(dir.path().join("enrollments"))).await;
}

#[tokio::test]
async fn file_store_passes_the_suite_twice_on_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = File(dir.path().join("enrollments"));
    run_all(&factory).await;
    run_all(&factory).await;
}

#[tokio::test]
async fn a_second_file_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = FileEnrollmentStore::open(dir.path()).await.expect("open");
    match FileEnrollmentStore::open(dir.path()).await {
        Err(iot_provisioning::Error::Locked { .. }) => {}
        other => panic!("a second store on a locked directory: {other:?}"),
    }
}
