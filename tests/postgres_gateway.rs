//! The `Gateway` conformance suite against a `Hub` whose inbox and twins live in PostgreSQL
//! ([`PgInbox`], [`PgTwinStore`]) on the machine's server: the same suite the hub passes with
//! memory and file stores (feature `postgres`).
#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::Arc;
use std::time::Duration;

use iot_sdk::gateway::testkit::{self, Limits, StoreFixture};
use iot_sdk::gateway::{Hub, HubConfig, InboxLimits};
use iot_sdk::identity::{IdentityStore, MemoryIdentityStore};
use iot_sdk::postgres::{PgInbox, PgInboxConfig, PgTwinStore, PgTwinStoreConfig};

const HOST: &str = "hub.test.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_with_postgres_inbox_and_twins_passes_the_gateway_suite() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let inbox = PgInbox::open(
        pool.clone(),
        PgInboxConfig::default().instance(pg_support::unique("tk-gateway")),
    )
    .await
    .expect("inbox");
    let twins = PgTwinStore::open(pool, PgTwinStoreConfig::default())
        .await
        .expect("twins");
    let mut config = HubConfig::default();
    // As the hub's own conformance test: a lock short enough to wait for, a count to exhaust.
    config.inbox = InboxLimits::default()
        .lock_duration(Duration::from_millis(300))
        .max_delivery_count(3);
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::builder(identity.clone(), HOST)
        .inbox(Arc::new(inbox))
        .twins(Arc::new(twins))
        .config(config)
        .build()
        .await
        .expect("hub");
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    let limits = Limits::from(hub.config());
    testkit::run_all(&hub, &fx, limits).await;
}
