//! The conformance suite against every registry this crate ships, a registry without indexes,
//! `Box<dyn Registry>` and `Arc<dyn Registry>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;

use iot_registry::testkit;
use iot_registry::{
    DocumentLimits, Durability, FileConfig, FileRegistry, MemoryRegistry, Registry, RegistryConfig,
};

/// A limit below 1 MB so the 1 MB document check applies.
fn config() -> RegistryConfig {
    RegistryConfig {
        limits: DocumentLimits {
            max_document_bytes: 256 * 1024,
            ..DocumentLimits::default()
        },
        ..RegistryConfig::default()
    }
}

fn unindexed() -> RegistryConfig {
    RegistryConfig {
        unindexed_paths: ["deviceId", "stateRef", "metadata", "tags"]
            .map(String::from)
            .to_vec(),
        ..config()
    }
}

/// Named registries under test.
type Named = Vec<(&'static str, Box<dyn Registry>)>;

/// Every kind of registry under test, fresh and empty; the temp dirs live as long as the list.
fn registries() -> (Named, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let file = |dir: &tempfile::TempDir, durability, compact_after_bytes| {
        FileRegistry::open(
            dir.path(),
            FileConfig {
                registry: config(),
                durability,
                compact_after_bytes,
                ..FileConfig::default()
            },
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
