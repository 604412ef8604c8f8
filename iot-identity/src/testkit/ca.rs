//! The conformance suite for [`CaStore`] implementations (feature `testkit`).
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::ca::{CaStore, MemoryCaStore};
//! use iot_identity::testkit::ca::{self, CaStoreFactory};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl CaStoreFactory for Memory {
//!     async fn open(&self) -> Arc<dyn CaStore> {
//!         Arc::new(MemoryCaStore::new())
//!     }
//! }
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
//! # rt.block_on(async {
//! ca::run_all(&Memory).await;
//! # });
//! ```
//!
//! Names are drawn fresh, so the suite runs against a store that holds data already.

use std::sync::Arc;

use async_trait::async_trait;

use crate::ca::{CaCertificate, CaCondition, CaError, CaStore};

/// A CA certificate (P-256, `CN=testkit CA a`, valid until 2126) for suites and examples.
pub const CA_A_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBlTCCATugAwIBAgIUXGZxrN9PVtL9pjIaofonsVsP6z0wCgYIKoZIzj0EAwIw\nFzEVMBMGA1UEAwwMdGVzdGtpdCBDQSBhMCAXDTI2MTIwNjA3MDYzM1oYDzIxMjYx\nMTEyMDcwNjMzWjAXMRUwEwYDVQQDDAx0ZXN0a2l0IENBIGEwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAATq+xZRemNzWUw8P80j3B/UdgT/u3Ry+XJE7RiLDU1zsQq8\npGafBDZYWHHsDrQ7H0zsxmU85vHu4rxgYWlwwVIwo2MwYTAdBgNVHQ4EFgQUW1L0\nVyZO3z6lIlxWOwNoXbuIHTcwHwYDVR0jBBgwFoAUW1L0VyZO3z6lIlxWOwNoXbuI\nHTcwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwID\nSAAwRQIhAI7QpALJgZpKbtQdNNMzrSCSH6nn/rHABR0zkV3XP0U9AiAukg/LLk18\n6FmgioD7fnZadlF6+8D3yj0sIR6gO1EU7w==\n-----END CERTIFICATE-----\n";
/// Another one (`CN=testkit CA b`).
pub const CA_B_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBlTCCATugAwIBAgIUPUCrdKmV+ObZj/eMTXsMOGuCGIYwCgYIKoZIzj0EAwIw\nFzEVMBMGA1UEAwwMdGVzdGtpdCBDQSBiMCAXDTI2MTIwNjA3MDYzM1oYDzIxMjYx\nMTEyMDcwNjMzWjAXMRUwEwYDVQQDDAx0ZXN0a2l0IENBIGIwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAQyKQP52kiqB3LTPlpuet0FdfXVSCcAxhdkR4pzHqWvEaWQ\nUtulb6o5KiEvLxI7jVdmkjN+ef4bz2lSdhqETTggo2MwYTAdBgNVHQ4EFgQUvyew\n9nMCE/WGH9v4dOTv+M6ZGWEwHwYDVR0jBBgwFoAUvyew9nMCE/WGH9v4dOTv+M6Z\nGWEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwID\nSAAwRQIhAMyuizsYP730OY+GmaP2zA6DkBL4YiFaxqwNEjbREvC+AiB9XyNbX3NY\ndhwimqtmpssGNR20l15+CDMZJ8MZr3dk5w==\n-----END CERTIFICATE-----\n";

/// Opens the store under test, and again for the durability check.
#[async_trait]
pub trait CaStoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Arc<dyn CaStore>;

    /// Drops `previous` and opens the same storage again; `None` when nothing survives.
    async fn reopen(&self, previous: Arc<dyn CaStore>) -> Option<Arc<dyn CaStore>> {
        drop(previous);
        None
    }
}

/// Runs every check, then the reopen check.
pub async fn run_all(factory: &dyn CaStoreFactory) {
    let store = factory.open().await;
    round_trip(store.as_ref()).await;
    conditions(store.as_ref()).await;
    versions_never_repeat(store.as_ref()).await;
    listing_in_name_order(store.as_ref()).await;
    invalid_names_are_refused(store.as_ref()).await;
    racing_writers_one_wins(Arc::clone(&store)).await;
    survives_reopen(factory, store).await;
}

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn cert(name: &str, pem: &str) -> CaCertificate {
    CaCertificate::from_pem(name, pem, 1_700_000_000).expect("testkit CA parses")
}

/// Every field comes back as written.
pub async fn round_trip(store: &dyn CaStore) {
    let name = fresh("tk-rt");
    let mut c = cert(&name, CA_A_PEM);
    c.verification_code = Some("ABC123".into());
    c.updated = 1_700_000_100;
    let put = store
        .put(c.clone(), CaCondition::Absent)
        .await
        .expect("put");
    assert_eq!(put.certificate, c);
    let got = store.get(&name).await.expect("get").expect("stored");
    assert_eq!(got, put);
    assert_eq!(got.certificate.pem().trim(), CA_A_PEM.trim());
    c.verified = true;
    c.verification_code = None;
    let put = store
        .put(c.clone(), CaCondition::Version(got.version))
        .await
        .expect("replace");
    assert!(put.version > got.version);
    assert_eq!(store.get(&name).await.expect("get"), Some(put));
    store.delete(&name, CaCondition::Any).await.expect("delete");
    assert_eq!(store.get(&name).await.expect("get"), None);
}

/// `Absent`, `Version` and `Any` on put and delete.
pub async fn conditions(store: &dyn CaStore) {
    let name = fresh("tk-cond");
    let first = store
        .put(cert(&name, CA_A_PEM), CaCondition::Absent)
        .await
        .expect("create");
    assert!(matches!(
        store.put(cert(&name, CA_B_PEM), CaCondition::Absent).await,
        Err(CaError::Exists { .. })
    ));
    match store
        .put(
            cert(&name, CA_B_PEM),
            CaCondition::Version(first.version + 1000),
        )
        .await
    {
        Err(CaError::Changed {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (first.version + 1000, first.version));
        }
        other => panic!("a stale version must be refused, got {other:?}"),
    }
    assert_eq!(
        store.get(&name).await.expect("get").map(|s| s.certificate),
        Some(first.certificate.clone()),
        "refused writes change nothing"
    );
    let second = store
        .put(cert(&name, CA_B_PEM), CaCondition::Any)
        .await
        .expect("replace");
    assert!(matches!(
        store
            .delete(&name, CaCondition::Version(first.version))
            .await,
        Err(CaError::Changed { .. })
    ));
    store
        .delete(&name, CaCondition::Version(second.version))
        .await
        .expect("delete");
    assert!(matches!(
        store.delete(&name, CaCondition::Any).await,
        Err(CaError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .put(cert(&name, CA_A_PEM), CaCondition::Version(second.version))
            .await,
        Err(CaError::NotFound { .. })
    ));
}

/// A name deleted and created again gets a version never seen before.
pub async fn versions_never_repeat(store: &dyn CaStore) {
    let name = fresh("tk-ver");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s = store
            .put(cert(&name, CA_A_PEM), CaCondition::Absent)
            .await
            .expect("create");
        assert!(!seen.contains(&s.version), "{seen:?} {}", s.version);
        seen.push(s.version);
        store.delete(&name, CaCondition::Any).await.expect("delete");
    }
}

/// `list` is in name order and holds what was written.
pub async fn listing_in_name_order(store: &dyn CaStore) {
    let prefix = fresh("tk-list");
    for n in ["c", "a", "b"] {
        store
            .put(
                cert(&format!("{prefix}-{n}"), CA_A_PEM),
                CaCondition::Absent,
            )
            .await
            .expect("create");
    }
    let names: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.certificate.name().to_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"].map(|n| format!("{prefix}-{n}")).to_vec()
    );
    let all: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.certificate.name().to_owned())
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
}

/// Bad names and non-CA certificates never reach the store.
pub async fn invalid_names_are_refused(_store: &dyn CaStore) {
    for bad in ["", "a/b", "with space", &"x".repeat(129), "é"] {
        assert!(
            CaCertificate::from_pem(bad, CA_A_PEM, 0).is_err(),
            "{bad:?}"
        );
    }
    assert!(CaCertificate::from_pem("ok", "not pem", 0).is_err());
    let two = format!("{CA_A_PEM}{CA_B_PEM}");
    assert!(CaCertificate::from_pem("ok", &two, 0).is_err());
}

/// Eight writers conditioned on one version: exactly one wins.
pub async fn racing_writers_one_wins(store: Arc<dyn CaStore>) {
    let name = fresh("tk-race");
    let base = store
        .put(cert(&name, CA_A_PEM), CaCondition::Absent)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let store = Arc::clone(&store);
        let mut c = cert(&name, CA_A_PEM);
        c.updated = i;
        tasks.push(tokio::spawn(async move {
            store.put(c, CaCondition::Version(base.version)).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(CaError::Changed { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
}

/// What was written is there after a reopen, and versions keep growing.
pub async fn survives_reopen(factory: &dyn CaStoreFactory, store: Arc<dyn CaStore>) {
    let name = fresh("tk-durable");
    let mut c = cert(&name, CA_B_PEM);
    c.verified = true;
    let put = store.put(c, CaCondition::Absent).await.expect("create");
    let Some(reopened) = factory.reopen(store).await else {
        return;
    };
    assert_eq!(reopened.get(&name).await.expect("get"), Some(put.clone()));
    let again = reopened
        .put(cert(&fresh("tk-after"), CA_A_PEM), CaCondition::Absent)
        .await
        .expect("create after reopen");
    assert!(again.version > put.version);
}
