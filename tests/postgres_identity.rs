//! `PgIdentityStore` against the machine's PostgreSQL (feature `postgres`): the identity
//! conformance suite, and changes crossing between two independent stores (two pools, as two
//! processes would have): a device disabled through one is seen by the other's change stream and
//! lookups. Each run works in a namespace of its own.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use iot_identity::testkit::{self, StoreFactory};
use iot_identity::{
    ChangeEvent, ChangeKind, Credentials, DeviceStatus, IdentityStore, NewIdentity,
};
use iot_sdk::postgres::{PgConfig, PgIdentityConfig, PgIdentityStore, PgPool};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("IOT_TEST_POSTGRES_URL").unwrap_or_else(|_| URL.to_owned())
}

/// A pool of its own on the shared server, or `None` (with the reason printed) when it is
/// unreachable outside CI.
// The skip reason goes to the test's own output, where `cargo test` shows it.
#[allow(clippy::print_stderr)]
async fn own_pool() -> Option<PgPool> {
    let url = url();
    let pool = PgPool::new(PgConfig::from_url(&url).expect("valid URL")).expect("pool");
    match pool.get().await {
        Ok(_) => Some(pool),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: PostgreSQL at {url} is unreachable ({e}); CI runs this test");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable under CI: {e}"),
    }
}

struct Factory {
    pool: PgPool,
    config: PgIdentityConfig,
}

#[async_trait::async_trait]
impl StoreFactory for Factory {
    async fn open(&self) -> iot_identity::Result<Arc<dyn IdentityStore>> {
        Ok(Arc::new(
            PgIdentityStore::open(self.pool.clone(), self.config.clone()).await?,
        ))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn IdentityStore>,
    ) -> Option<iot_identity::Result<Arc<dyn IdentityStore>>> {
        drop(previous);
        let pool = PgPool::new(self.pool.config().clone()).expect("pool");
        Some(
            PgIdentityStore::open(pool, self.config.clone())
                .await
                .map(|s| Arc::new(s) as Arc<dyn IdentityStore>),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes() {
    let Some(pool) = own_pool().await else {
        return;
    };
    let config = PgIdentityConfig::default().namespace(testkit::fresh_name("conformance"));
    testkit::run_all(&Factory { pool, config }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_without_the_cache() {
    let Some(pool) = own_pool().await else {
        return;
    };
    let config = PgIdentityConfig::default()
        .namespace(testkit::fresh_name("uncached"))
        .cache_capacity(0);
    testkit::run_all(&Factory { pool, config }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_disabled_in_one_process_is_seen_by_another() {
    let (Some(pool_a), Some(pool_b)) = (own_pool().await, own_pool().await) else {
        return;
    };
    let config = PgIdentityConfig::default().namespace(testkit::fresh_name("cross"));
    let a = PgIdentityStore::open(pool_a, config.clone())
        .await
        .expect("open a");
    let b = PgIdentityStore::open(pool_b, config).await.expect("open b");
    let mut stream = b.subscribe();
    let id = testkit::fresh_id("cross");
    a.create(NewIdentity::new(
        id.clone(),
        Credentials::generate_symmetric_keys(),
    ))
    .await
    .expect("create");
    // B looks the device up (and caches it) before A disables it.
    let seen = b.get(&id).await.expect("get").expect("present");
    assert!(seen.status.is_enabled());
    let disabled = a
        .set_status(&id, DeviceStatus::disabled("stolen"), None)
        .await
        .expect("disable");

    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.recv().await.expect("the stream is open") {
                ChangeEvent::Changed(c)
                    if c.id == id && c.kind == (ChangeKind::StatusChanged { enabled: false }) =>
                {
                    return c;
                }
                ChangeEvent::Changed(_) => continue,
                ChangeEvent::Lagged { missed } => panic!("lagged by {missed}"),
            }
        }
    })
    .await
    .expect("the disable reaches the other store's stream");
    assert_eq!(change.etag, disabled.etag);
    assert!(change.revokes_sessions());
    // Once the change arrived, B's lookups (cached or not) show the device disabled.
    let now = b.get(&id).await.expect("get").expect("present");
    assert_eq!(now.status, DeviceStatus::disabled("stolen"));
    assert_eq!(now.etag, disabled.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_cached_and_secrets_stay_out_of_debug_output() {
    let Some(pool) = own_pool().await else {
        return;
    };
    let config = PgIdentityConfig::default().namespace(testkit::fresh_name("cache"));
    let store = PgIdentityStore::open(pool, config).await.expect("open");
    let id = testkit::fresh_id("cached");
    let credentials = Credentials::generate_symmetric_keys();
    let Credentials::SymmetricKeys { primary, .. } = &credentials else {
        unreachable!("symmetric keys were generated");
    };
    let secret = primary.expose_base64().to_string();
    store
        .create(NewIdentity::new(id.clone(), credentials.clone()))
        .await
        .expect("create");
    // A lookup fills the cache unless a change of the device arrives meanwhile (the create's
    // own notification may): retry until one sticks, then the next lookup is a hit.
    let cached = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let first = store.get(&id).await.expect("get").expect("present");
            let second = store.get(&id).await.expect("get").expect("present");
            if Arc::ptr_eq(&first, &second) {
                return second;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a lookup is cached");
    assert!(cached.status.is_enabled());
    assert!(store.cached() >= 1);
    // A write of this process is seen at once.
    store
        .set_status(&id, DeviceStatus::disabled("parked"), None)
        .await
        .expect("disable");
    let third = store.get(&id).await.expect("get").expect("present");
    assert!(!third.status.is_enabled());
    for text in [format!("{store:?}"), format!("{third:?}")] {
        assert!(!text.contains(&secret), "a key in Debug output: {text}");
    }
}

/// Waits (up to 10 s) for a change of `id` of `kind` on `stream`.
async fn change_of(
    stream: &mut iot_identity::ChangeStream,
    id: &iot_core::DeviceId,
    kind: ChangeKind,
) -> iot_identity::IdentityChange {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.recv().await.expect("the stream is open") {
                ChangeEvent::Changed(c) if &c.id == id && c.kind == kind => return c,
                ChangeEvent::Changed(_) => continue,
                ChangeEvent::Lagged { missed } => panic!("lagged by {missed}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} of {id} within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_reconnects_and_catches_up_after_its_connections_are_killed() {
    let Some(pool_b) = own_pool().await else {
        return;
    };
    // Store A's connections carry an application name of their own, so that the test can kill
    // exactly them (the feed's LISTEN connection and the pool's) on the shared server.
    let app = testkit::fresh_name("iot-feed-test");
    let separator = if url().contains('?') { '&' } else { '?' };
    let url_a = format!("{}{separator}application_name={app}", url());
    let pool_a = PgPool::from_url(&url_a).expect("pool a");
    let config = PgIdentityConfig::default().namespace(testkit::fresh_name("feed"));
    let a = PgIdentityStore::open(pool_a, config.clone())
        .await
        .expect("open a");
    let b = PgIdentityStore::open(pool_b.clone(), config)
        .await
        .expect("open b");
    let mut stream = a.subscribe();
    let x = testkit::fresh_id("feed-x");
    b.create(NewIdentity::new(x.clone(), Credentials::None))
        .await
        .expect("create x");
    change_of(&mut stream, &x, ChangeKind::Created).await;
    assert!(a.get(&x).await.expect("get").is_some());

    let killer = pool_b.get().await.expect("connection");
    let killed: i64 = killer
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 1, "store a's connections were found");
    // Written while A's feed is down or reconnecting: they reach A live or by the catch-up.
    b.set_status(&x, DeviceStatus::disabled("during the outage"), None)
        .await
        .expect("disable x");
    let y = testkit::fresh_id("feed-y");
    b.create(NewIdentity::new(y.clone(), Credentials::None))
        .await
        .expect("create y");
    change_of(
        &mut stream,
        &x,
        ChangeKind::StatusChanged { enabled: false },
    )
    .await;
    change_of(&mut stream, &y, ChangeKind::Created).await;

    // A's lookups carry on without a restart (a pooled connection killed under it may fail
    // one call with a retryable error) and show the change.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a.get(&x).await {
                Ok(Some(found)) if !found.status.is_enabled() => return found,
                Ok(_) => {}
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("store a reads again after the outage");
    assert_eq!(seen.status, DeviceStatus::disabled("during the outage"));
}
