//! The gateway twin store's conformance suite against [`PgTwinStore`] on the machine's
//! PostgreSQL (feature `postgres`).
#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::Arc;

use iot_sdk::gateway::testkit::twin_store::{TwinStoreFactory, run_all};
use iot_sdk::gateway::{Result, TwinStore};
use iot_sdk::postgres::{PgPool, PgTwinStore, PgTwinStoreConfig};

struct Factory {
    pool: PgPool,
}

impl Factory {
    async fn open_store(&self) -> Result<Arc<dyn TwinStore>> {
        let store = PgTwinStore::open(self.pool.clone(), PgTwinStoreConfig::default()).await?;
        Ok(Arc::new(store))
    }
}

#[async_trait::async_trait]
impl TwinStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn TwinStore>> {
        self.open_store().await
    }

    async fn reopen(&self, previous: Arc<dyn TwinStore>) -> Option<Result<Arc<dyn TwinStore>>> {
        drop(previous);
        // A new pool too: nothing of the first store's connections carries over.
        let config = self.pool.config().clone();
        let pool = match PgPool::new(config) {
            Ok(pool) => pool,
            Err(e) => panic!("a second pool: {e}"),
        };
        Some(Factory { pool }.open_store().await)
    }
}

#[tokio::test]
async fn pg_twin_store_passes_the_twin_store_suite() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let factory = Factory { pool };
    run_all(&factory).await;
    run_all(&factory).await;
}

/// Patches of one device from many tasks at once serialise on its row: every one is counted,
/// none is lost.
#[tokio::test]
async fn concurrent_patches_of_one_device_all_count() {
    use iot_sdk::gateway::TwinLimits;
    use iot_sdk::gateway::twins::Section;

    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let store = Arc::new(
        PgTwinStore::open(pool, PgTwinStoreConfig::default())
            .await
            .unwrap(),
    );
    let device = iot_sdk::gateway::testkit::fresh_id("pg-twin-race");
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let store = Arc::clone(&store);
            let device = device.clone();
            tokio::spawn(async move {
                let patch = serde_json::json!({ format!("k{n}"): n });
                store
                    .patch(
                        &device,
                        Section::Reported,
                        &patch,
                        None,
                        TwinLimits::default(),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let twin = store.get(&device).await.unwrap();
    assert_eq!(twin.reported.version, 16);
    assert_eq!(twin.reported.properties.as_object().unwrap().len(), 16);
}

/// Text PostgreSQL cannot hold (a NUL character) is the caller's invalid input, not an engine
/// failure, and changes nothing.
#[tokio::test]
async fn a_nul_character_is_invalid_input() {
    use iot_sdk::gateway::twins::Section;
    use iot_sdk::gateway::{Error, TwinLimits};

    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let store = PgTwinStore::open(pool, PgTwinStoreConfig::default())
        .await
        .unwrap();
    let device = iot_sdk::gateway::testkit::fresh_id("pg-twin-nul");
    let r = store
        .patch(
            &device,
            Section::Reported,
            &serde_json::json!({"a": "x\u{0}y"}),
            None,
            TwinLimits::default(),
        )
        .await;
    assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
    assert_eq!(store.get(&device).await.unwrap().reported.version, 0);
}
