//! The conformance suite against every store this crate ships, through `Box<dyn>` and `Arc`, and
//! the file store again with OS-buffered durability and after reopening.

use std::sync::Arc;

use iot_identity::testkit;
use iot_identity::{
    Durability, FileIdentityStore, FileStoreOptions, IdentityStore, MemoryIdentityStore,
};
use tempfile::TempDir;

async fn file_store(durability: Durability) -> (TempDir, FileIdentityStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    // A small threshold, so that the suite also runs across compactions.
    let options = FileStoreOptions::with_durability(durability).compact_after_wal_bytes(4096);
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

#[tokio::test]
async fn run_all_on_one_memory_store() {
    testkit::run_all(&MemoryIdentityStore::new()).await;
}

#[tokio::test]
async fn run_all_on_one_file_store_then_reopen_and_compare() {
    let (dir, store) = file_store(Durability::Fsync).await;
    testkit::run_all(&store).await;
    let before = all(&store).await;
    drop(store);
    let reopened = FileIdentityStore::open(dir.path(), FileStoreOptions::default())
        .await
        .expect("reopen");
    assert_eq!(
        all(&reopened).await,
        before,
        "a reopened store holds exactly what was written"
    );
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
async fn authentication_follows_the_memory_store() {
    testkit::authentication_follows_the_store(Arc::new(MemoryIdentityStore::new())).await;
}

#[tokio::test]
async fn authentication_follows_the_file_store() {
    let (_dir, store) = file_store(Durability::Fsync).await;
    testkit::authentication_follows_the_store(Arc::new(store)).await;
}

#[tokio::test]
async fn arc_forwarding() {
    let store: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    testkit::run_all(&store).await;
}
