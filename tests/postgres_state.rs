//! The stream state store's conformance suite against [`PgStateStore`] on the machine's
//! PostgreSQL (feature `postgres`).
#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::Arc;

use iot_sdk::postgres::{PgPool, PgStateStore, PgStateStoreConfig};
use iot_sdk::stream::Result;
use iot_sdk::stream::state::StateStore;
use iot_sdk::stream::testkit::{StateStoreFactory, run_all};

struct Factory {
    pool: PgPool,
}

impl Factory {
    async fn open_store(pool: PgPool) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(
            PgStateStore::open(pool, PgStateStoreConfig::default()).await?,
        ))
    }
}

#[async_trait::async_trait]
impl StateStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        Self::open_store(self.pool.clone()).await
    }

    async fn reopen(&self, previous: Arc<dyn StateStore>) -> Option<Result<Arc<dyn StateStore>>> {
        drop(previous);
        // A pool of its own: nothing of the first store's connections carries over.
        let pool = PgPool::new(self.pool.config().clone()).expect("a second pool");
        Some(Self::open_store(pool).await)
    }
}

#[tokio::test]
async fn pg_state_store_passes_the_state_store_suite() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let factory = Factory { pool };
    run_all(&factory).await;
    run_all(&factory).await;
}
