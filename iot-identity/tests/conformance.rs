//! The conformance suite against every store this crate ships, through `Box<dyn>` and `Arc`, the
//! file store again with OS-buffered durability and twice over one directory with reopens, and
//! the fault-injecting wrapper.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::testkit::{self, FaultMode, FaultPlan, FaultyIdentityStore, StoreFactory};
use iot_identity::{
    Credentials, Durability, Error, FileIdentityStore, FileIdentityStoreConfig, IdentityStore,
    MemoryIdentityStore, NewIdentity, Result,
};
use tempfile::TempDir;

async fn file_store(durability: Durability) -> (TempDir, FileIdentityStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    // A small threshold, so that the suite also runs across compactions.
    let options =
        FileIdentityStoreConfig::with_durability(durability).compact_after_wal_bytes(4096);
    let store = FileIdentityStore::open(dir.path(), options)
        .await
        .expect("open");
    (dir, store)
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    testkit::$name(&MemoryIdentityStore::new()).await;
                }
            )*
        }
        mod file {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = file_store(Durability::Fsync).await;
                    testkit::$name(&store).await;
                }
            )*
        }
        mod file_os_buffered {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = file_store(Durability::OsBuffered).await;
                    testkit::$name(&store).await;
                }
            )*
        }
        mod boxed_dyn {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let store: Box<dyn IdentityStore> = Box::new(MemoryIdentityStore::new());
                    testkit::$name(&store).await;
                }
            )*
        }
    };
}

suite!(
    create_get_delete,
    create_is_unique,
    etags_and_preconditions,
    status_changes,
    credentials_round_trip,
    generation_changes_when_an_id_is_reused,
    paged_listing,
    change_stream,
    bad_input,
);

/// Memory stores, plain or behind a fault-injecting wrapper whose plan only counts.
struct Memory {
    counting: Option<Arc<FaultPlan>>,
}

#[async_trait]
impl StoreFactory for Memory {
    async fn open(&self) -> Result<Arc<dyn IdentityStore>> {
        let store = MemoryIdentityStore::new();
        Ok(match &self.counting {
            Some(plan) => Arc::new(FaultyIdentityStore::new(store, Arc::clone(plan))),
            None => Arc::new(store),
        })
    }
}

/// File stores in one directory, reopened in place.
struct File {
    dir: TempDir,
    durability: Durability,
}

impl File {
    fn new(durability: Durability) -> Self {
        File {
            dir: tempfile::tempdir().expect("temp dir"),
            durability,
        }
    }

    async fn open_store(&self) -> Result<FileIdentityStore> {
        let options =
            FileIdentityStoreConfig::with_durability(self.durability).compact_after_wal_bytes(4096);
        FileIdentityStore::open(self.dir.path(), options).await
    }
}

#[async_trait]
impl StoreFactory for File {
    async fn open(&self) -> Result<Arc<dyn IdentityStore>> {
        Ok(Arc::new(self.open_store().await?))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn IdentityStore>,
    ) -> Option<Result<Arc<dyn IdentityStore>>> {
        // The last handle releases the directory's lock.
        drop(previous);
        Some(
            self.open_store()
                .await
                .map(|s| Arc::new(s) as Arc<dyn IdentityStore>),
        )
    }
}

#[tokio::test]
async fn run_all_on_memory_stores() {
    testkit::run_all(&Memory { counting: None }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_a_file_store_twice_with_reopens() {
    let factory = File::new(Durability::Fsync);
    testkit::run_all(&factory).await;
    // A second run over the same directory finds the first run's records and passes again.
    testkit::run_all(&factory).await;
}

#[tokio::test]
async fn run_all_on_an_os_buffered_file_store() {
    testkit::run_all(&File::new(Durability::OsBuffered)).await;
}

#[tokio::test]
async fn run_all_through_the_fault_injecting_wrapper() {
    let plan = FaultPlan::counting();
    testkit::run_all(&Memory {
        counting: Some(Arc::clone(&plan)),
    })
    .await;
    assert!(
        plan.calls() > 100,
        "the wrapper counted {} calls",
        plan.calls()
    );
}

#[tokio::test]
async fn an_injected_fault_before_changes_nothing_and_after_changes_the_store() {
    let id: DeviceId = testkit::fresh_id("fault");
    let new = || NewIdentity::new(id.clone(), Credentials::None);

    let before = FaultyIdentityStore::new(
        MemoryIdentityStore::new(),
        FaultPlan::fail_at(1, FaultMode::Before),
    );
    let e = before.create(new()).await.expect_err("call 1 fails");
    assert!(
        matches!(
            e,
            Error::Backend {
                retryable: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert!(before.inner().get_now(&id).is_none(), "nothing written");
    before.create(new()).await.expect("call 2 is forwarded");

    let after = FaultyIdentityStore::new(
        MemoryIdentityStore::new(),
        FaultPlan::fail_at(1, FaultMode::After),
    );
    after.create(new()).await.expect_err("call 1 fails");
    assert!(after.inner().get_now(&id).is_some(), "written all the same");

    let plan = FaultPlan::fail_at(2, FaultMode::Before);
    let lookups = FaultyIdentityStore::new(MemoryIdentityStore::new(), Arc::clone(&plan));
    lookups.get(&id).await.expect("call 1");
    assert!(lookups.get(&id).await.is_err(), "call 2 fails");
    plan.disarm();
    lookups.sync().await.expect("disarmed");
    assert_eq!(plan.calls(), 3);
}

async fn all(store: &dyn IdentityStore) -> Vec<iot_identity::DeviceIdentity> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after.as_ref(), 100).await.expect("list");
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_reopened_file_store_holds_exactly_what_was_written() {
    let (dir, store) = file_store(Durability::Fsync).await;
    testkit::create_get_delete(&store).await;
    testkit::credentials_round_trip(&store).await;
    testkit::paged_listing(&store).await;
    let before = all(&store).await;
    drop(store);
    let reopened = FileIdentityStore::open(dir.path(), FileIdentityStoreConfig::default())
        .await
        .expect("reopen");
    assert_eq!(all(&reopened).await, before);
}

#[tokio::test]
async fn authentication_follows_the_memory_store() {
    testkit::authentication_follows_the_store(Arc::new(MemoryIdentityStore::new())).await;
}

#[tokio::test]
async fn authentication_follows_the_file_store() {
    let (_dir, store) = file_store(Durability::Fsync).await;
    testkit::authentication_follows_the_store(Arc::new(store)).await;
}

#[tokio::test]
async fn arc_and_box_forwarding() {
    let store: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    testkit::create_get_delete(&store).await;
    let store: Box<dyn IdentityStore> = Box::new(MemoryIdentityStore::new());
    testkit::create_get_delete(&store).await;
    store.sync().await.expect("sync forwards");
}
