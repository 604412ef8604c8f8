//! The gateway inbox's conformance suite against [`PgInbox`] on the machine's PostgreSQL
//! (feature `postgres`).
#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::Arc;

use iot_sdk::gateway::testkit::inbox_store::{InboxStoreFactory, run_all};
use iot_sdk::gateway::{InboxStore, Result};
use iot_sdk::postgres::{PgInbox, PgInboxConfig, PgPool};

/// Opens the inbox as one gateway instance whose name no other run uses, so parallel runs never
/// release each other's locks; a reopen is that instance restarting, a peer another instance.
struct Factory {
    pool: PgPool,
    instance: String,
}

impl Factory {
    async fn open_as(&self, instance: &str) -> Result<Arc<dyn InboxStore>> {
        let config = PgInboxConfig::default().instance(instance);
        Ok(Arc::new(PgInbox::open(self.pool.clone(), config).await?))
    }
}

#[async_trait::async_trait]
impl InboxStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn InboxStore>> {
        self.open_as(&self.instance).await
    }

    async fn reopen(&self, previous: Arc<dyn InboxStore>) -> Option<Result<Arc<dyn InboxStore>>> {
        drop(previous);
        Some(self.open_as(&self.instance).await)
    }

    /// A second gateway instance on the same tables.
    async fn open_peer(&self) -> Option<Result<Arc<dyn InboxStore>>> {
        Some(self.open_as(&format!("{}-peer", self.instance)).await)
    }
}

#[tokio::test]
async fn pg_inbox_passes_the_inbox_suite() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let factory = Factory {
        pool,
        instance: pg_support::unique("tk-inbox-gw"),
    };
    run_all(&factory).await;
    // Twice against the same database: the suite draws fresh devices.
    run_all(&factory).await;
}
