//! The `Gateway` conformance suite against the `Hub`: memory stores, file stores (FileLog,
//! FileInbox, FileTwinStore, FileIdentityStore), and through `Box<dyn Gateway>`.

use std::sync::Arc;
use std::time::Duration;

use iot_gateway::testkit::{self, Limits, StoreFixture};
use iot_gateway::{Gateway, Hub, HubConfig, InboxLimits};
use iot_identity::{
    FileIdentityStore, FileIdentityStoreConfig, IdentityStore, MemoryIdentityStore,
};

const HOST: &str = "hub.test.local";

fn config() -> HubConfig {
    let mut config = HubConfig::default();
    // Short enough for the lock-expiry check to wait for; small enough a count to exhaust.
    config.inbox = InboxLimits::default()
        .lock_duration(Duration::from_millis(300))
        .max_delivery_count(3);
    config
}

fn limits(config: &HubConfig) -> Limits {
    Limits::from(config)
}

fn fixture(hub: &Hub, identity: Arc<dyn IdentityStore>) -> StoreFixture {
    StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_with_memory_stores() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::builder(identity.clone(), HOST)
        .config(config())
        .build()
        .await
        .expect("hub");
    let fx = fixture(&hub, identity);
    testkit::run_all(&hub, &fx, limits(hub.config())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_with_file_stores() {
    let dir = tempfile::tempdir().expect("dir");
    let identity: Arc<dyn IdentityStore> = Arc::new(
        FileIdentityStore::open(
            dir.path().join("identity"),
            FileIdentityStoreConfig::default(),
        )
        .await
        .expect("identity"),
    );
    let hub = Hub::open_dir(dir.path().join("hub"), identity.clone(), HOST, config())
        .await
        .expect("hub");
    let fx = fixture(&hub, identity);
    testkit::run_all(&hub, &fx, limits(hub.config())).await;
}

#[tokio::test(flavor = "current_thread")]
async fn hub_as_a_boxed_trait_object_on_one_thread() {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::builder(identity.clone(), HOST)
        .config(config())
        .build()
        .await
        .expect("hub");
    let fx = fixture(&hub, identity);
    let limits = limits(hub.config());
    let boxed: Box<dyn Gateway> = Box::new(hub);
    testkit::run_all(&boxed, &fx, limits).await;
}
