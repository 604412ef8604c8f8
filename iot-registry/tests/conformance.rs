//! The conformance suite against every registry this crate ships, a registry without indexes,
//! `Box<dyn Registry>`, `Arc<dyn Registry>` and the fault-injecting wrapper; `run_all` through
//! factories, twice over one directory, and check by check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use iot_registry::testkit::{self, FaultPlan, FaultyRegistry, RegistryFactory};
use iot_registry::{
    Durability, FileRegistry, FileRegistryConfig, MemoryRegistry, Registry, RegistryConfig, Result,
};

/// A limit below 1 MB so the 1 MB document check applies.
fn config() -> RegistryConfig {
    RegistryConfig::default().limits(testkit::suite_limits())
}

/// Memory registries, optionally behind a fault wrapper whose plan only counts.
struct Memory {
    faulty: bool,
}

#[async_trait]
impl RegistryFactory for Memory {
    async fn open(&self) -> Result<Arc<dyn Registry>> {
        let inner = MemoryRegistry::with_config(config())?;
        Ok(if self.faulty {
            Arc::new(FaultyRegistry::new(inner, FaultPlan::counting()))
        } else {
            Arc::new(inner)
        })
    }
}

/// File registries in one directory, reopened for the durability check.
struct File {
    dir: PathBuf,
    durability: Durability,
}

impl File {
    fn config(&self) -> FileRegistryConfig {
        FileRegistryConfig::default()
            .registry(config())
            .durability(self.durability)
            .compact_after_bytes(16 * 1024)
    }
}

#[async_trait]
impl RegistryFactory for File {
    async fn open(&self) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(
            FileRegistry::open(&self.dir, self.config()).await?,
        ))
    }

    async fn reopen(&self, previous: Arc<dyn Registry>) -> Option<Result<Arc<dyn Registry>>> {
        // The suite holds no other handle, so this releases the directory's lock.
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn run_all_memory_and_behind_the_fault_wrapper() {
    testkit::run_all(&Memory { faulty: false }).await;
    testkit::run_all(&Memory { faulty: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_file_twice_over_one_directory() {
    for durability in [Durability::OsBuffered, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let factory = File {
            dir: dir.path().to_owned(),
            durability,
        };
        testkit::run_all(&factory).await;
        testkit::run_all(&factory).await;
    }
}

fn unindexed() -> RegistryConfig {
    config().unindexed_paths(
        ["deviceId", "stateRef", "metadata", "tags"]
            .map(String::from)
            .to_vec(),
    )
}

/// Named registries under test.
type Named = Vec<(&'static str, Box<dyn Registry>)>;

/// Every kind of registry under test, fresh and empty; the temp dirs live as long as the list.
fn registries() -> (Named, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let file = |dir: &tempfile::TempDir, durability, compact_after_bytes| {
        FileRegistry::open_blocking(
            dir.path(),
            FileRegistryConfig::default()
                .registry(config())
                .durability(durability)
                .compact_after_bytes(compact_after_bytes),
        )
        .unwrap()
    };
    let list: Named = vec![
        (
            "memory",
            Box::new(MemoryRegistry::with_config(config()).unwrap()),
        ),
        (
            "memory without indexes",
            Box::new(MemoryRegistry::with_config(unindexed()).unwrap()),
        ),
        (
            "Arc<dyn Registry>",
            Box::new(Arc::new(MemoryRegistry::with_config(config()).unwrap()) as Arc<dyn Registry>),
        ),
        (
            "file fsync",
            Box::new(file(&dirs[0], Durability::Fsync, 64 << 20)),
        ),
        (
            "file buffered, compacting",
            Box::new(file(&dirs[1], Durability::OsBuffered, 4096)),
        ),
        (
            "Box<dyn Registry> of file",
            Box::new(
                Box::new(file(&dirs[2], Durability::OsBuffered, 64 << 20)) as Box<dyn Registry>
            ),
        ),
    ];
    (list, dirs)
}

#[tokio::test]
async fn records_and_etags() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::records_and_etags(r.as_ref()).await;
    }
}

#[tokio::test]
async fn concurrent_if_match() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::concurrent_if_match(r.as_ref()).await;
    }
}

#[tokio::test]
async fn merge_patch_rfc7396() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::merge_patch_rfc7396(r.as_ref()).await;
    }
}

#[tokio::test]
async fn document_limits() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::document_limits(r.as_ref(), config().limits).await;
    }
}

#[tokio::test]
async fn queries_match_brute_force() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::queries_match_brute_force(r.as_ref()).await;
    }
}

#[tokio::test]
async fn query_misuse() {
    let (list, _dirs) = registries();
    for (name, r) in &list {
        eprintln!("{name}");
        testkit::query_misuse(r.as_ref()).await;
    }
}

/// The wrapper's injected failures are retryable backend errors; `Before` changes nothing and
/// `After` forwards the write first (the ambiguous failure of a lost reply).
#[tokio::test]
async fn fault_wrapper_fails_the_chosen_call() {
    use iot_core::DeviceId;
    use iot_registry::{DeviceDocument, Error};
    use testkit::FaultMode;

    let id = DeviceId::new("faulty").unwrap();
    let before = FaultyRegistry::new(
        MemoryRegistry::new(),
        FaultPlan::fail_at(1, FaultMode::Before),
    );
    match before.create(&id, DeviceDocument::default()).await {
        Err(e @ Error::Backend { .. }) => assert!(e.is_retryable()),
        other => panic!("expected an injected backend error, got {other:?}"),
    }
    assert!(before.get(&id).await.unwrap().is_none());
    before.sync().await.unwrap();

    let after = FaultyRegistry::new(
        MemoryRegistry::new(),
        FaultPlan::fail_at(1, FaultMode::After),
    );
    assert!(after.create(&id, DeviceDocument::default()).await.is_err());
    assert!(after.inner().get(&id).await.unwrap().is_some());
}
