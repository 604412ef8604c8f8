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

fn at(ms: u64) -> iot_sdk::core::Timestamp {
    iot_sdk::core::Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

/// Many tasks queueing for one device at once never push it past its depth limit, and many
/// tasks locking at once never hand out one message twice.
#[tokio::test]
async fn concurrent_calls_respect_depth_and_locks() {
    use iot_sdk::gateway::inbox::InboxMessage;
    use iot_sdk::gateway::{Error, InboxLimits};
    use std::time::Duration;

    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let config = PgInboxConfig::default().instance(pg_support::unique("pg-inbox-race"));
    let inbox = Arc::new(PgInbox::open(pool, config).await.unwrap());
    let device = iot_sdk::gateway::testkit::fresh_id("pg-inbox-race");
    let limits = InboxLimits::default().max_depth(10);
    let enqueues: Vec<_> = (0..25)
        .map(|n| {
            let inbox = Arc::clone(&inbox);
            let device = device.clone();
            tokio::spawn(async move {
                let m = InboxMessage::new(format!("m{n}"), "x", at(0), Duration::from_secs(3600));
                inbox.enqueue(&device, m, at(0), limits).await
            })
        })
        .collect();
    let mut accepted = 0;
    for t in enqueues {
        match t.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(Error::QueueFull { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(inbox.depth(&device).await.unwrap(), 10);

    let locks: Vec<_> = (0..12)
        .map(|_| {
            let inbox = Arc::clone(&inbox);
            let device = device.clone();
            tokio::spawn(async move { inbox.lock_next(&device, at(1), limits).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in locks {
        if let Some(l) = t.await.unwrap().unwrap().locked {
            ids.push(l.message.message_id);
        }
    }
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!((before, ids.len()), (10, 10), "each message locked once");
}
