//! The provisioning journal's conformance suite against [`PgJournal`] on the machine's
//! PostgreSQL (feature `postgres`).
#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::Arc;

use iot_sdk::postgres::{PgJournal, PgJournalConfig, PgPool};
use iot_sdk::provisioning::testkit::journal::{JournalFactory, run_all};
use iot_sdk::provisioning::{Journal, Result};

/// One provisioner instance whose name no other run uses; a reopen is that instance restarting.
struct Factory {
    pool: PgPool,
    instance: String,
}

impl Factory {
    async fn open_journal(&self, pool: PgPool) -> Result<Arc<dyn Journal>> {
        let config = PgJournalConfig::default().instance(&self.instance);
        Ok(Arc::new(PgJournal::open(pool, config).await?))
    }
}

#[async_trait::async_trait]
impl JournalFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn Journal>> {
        self.open_journal(self.pool.clone()).await
    }

    async fn reopen(&self, previous: Arc<dyn Journal>) -> Option<Result<Arc<dyn Journal>>> {
        drop(previous);
        // A pool of its own: nothing of the first journal's connections carries over.
        let pool = PgPool::new(self.pool.config().clone()).expect("a second pool");
        Some(self.open_journal(pool).await)
    }
}

#[tokio::test]
async fn pg_journal_passes_the_journal_suite() {
    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let factory = Factory {
        pool,
        instance: pg_support::unique("tk-journal"),
    };
    run_all(&factory).await;
    run_all(&factory).await;
}

/// Two provisioners sharing the table each recover only their own unfinished intents.
#[tokio::test]
async fn instances_recover_only_their_own_intents() {
    use iot_sdk::provisioning::Intent;

    let Some(pool) = pg_support::shared_pool().await else {
        return;
    };
    let open = |name: String| {
        let pool = pool.clone();
        async move {
            PgJournal::open(pool, PgJournalConfig::default().instance(name))
                .await
                .unwrap()
        }
    };
    let a = open(pg_support::unique("pg-journal-a")).await;
    let b = open(pg_support::unique("pg-journal-b")).await;
    let intent = |label| Intent::Unregister {
        id: iot_sdk::identity::testkit::fresh_id(label),
    };
    let (ia, ib) = (intent("pg-journal-a"), intent("pg-journal-b"));
    let sa = a.begin(&ia).await.unwrap();
    let sb = b.begin(&ib).await.unwrap();
    assert_eq!(a.pending().await.unwrap(), vec![(sa, ia)]);
    assert_eq!(b.pending().await.unwrap(), vec![(sb, ib)]);
    a.finish(sa).await.unwrap();
    b.finish(sb).await.unwrap();
    assert!(a.pending().await.unwrap().is_empty());
}
