//! The `InboxStore` and `TwinStore` an integrator would write (`support/btreemap_stores.rs`:
//! outside this crate, over a `Mutex<BTreeMap>`, public API only) must pass the conformance
//! suites, twice over the same "database" and across reopens, and behind the fault wrappers.

#[path = "support/btreemap_stores.rs"]
mod btreemap_stores;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use btreemap_stores::{BTreeMapInbox, BTreeMapTwins, InboxDb, TwinDb};
use iot_core::Timestamp;
use iot_gateway::inbox::InboxMessage;
use iot_gateway::testkit::inbox_store::{self, InboxStoreFactory};
use iot_gateway::testkit::twin_store::{self, TwinStoreFactory};
use iot_gateway::testkit::{FaultMode, FaultPlan, FaultyInboxStore, FaultyTwinStore, fresh_id};
use iot_gateway::twins::{Section, TwinLimits};
use iot_gateway::{Error, InboxLimits, InboxStore, Result, TwinStore};
use serde_json::json;

/// Opens handles on one shared database; a reopen is a new handle on the same data.
#[derive(Default)]
struct Factory {
    inbox: Arc<Mutex<InboxDb>>,
    twins: Arc<Mutex<TwinDb>>,
}

#[async_trait]
impl InboxStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn InboxStore>> {
        Ok(Arc::new(BTreeMapInbox::open(Arc::clone(&self.inbox))))
    }

    async fn reopen(&self, previous: Arc<dyn InboxStore>) -> Option<Result<Arc<dyn InboxStore>>> {
        drop(previous);
        Some(InboxStoreFactory::open(self).await)
    }
}

#[async_trait]
impl TwinStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn TwinStore>> {
        Ok(Arc::new(BTreeMapTwins {
            db: Arc::clone(&self.twins),
        }))
    }

    async fn reopen(&self, previous: Arc<dyn TwinStore>) -> Option<Result<Arc<dyn TwinStore>>> {
        drop(previous);
        Some(TwinStoreFactory::open(self).await)
    }
}

#[tokio::test]
async fn btreemap_stores_pass_the_suites_twice_over_one_database() {
    let factory = Factory::default();
    inbox_store::run_all(&factory).await;
    twin_store::run_all(&factory).await;
    let rows = |f: &Factory| {
        (
            f.inbox.lock().map(|db| db.rows.len()).unwrap_or(0),
            f.twins.lock().map(|db| db.rows.len()).unwrap_or(0),
        )
    };
    let after_one = rows(&factory);
    inbox_store::run_all(&factory).await;
    twin_store::run_all(&factory).await;
    let after_two = rows(&factory);
    assert!(
        after_one.0 > 0 && after_two.0 > after_one.0,
        "both inbox runs wrote"
    );
    assert!(
        after_one.1 > 0 && after_two.1 > after_one.1,
        "both twin runs wrote"
    );
}

#[tokio::test]
async fn btreemap_stores_pass_the_suites_behind_the_fault_wrappers() {
    struct Faulty(Factory, Arc<FaultPlan>);

    #[async_trait]
    impl InboxStoreFactory for Faulty {
        async fn open(&self) -> Result<Arc<dyn InboxStore>> {
            let store = BTreeMapInbox::open(Arc::clone(&self.0.inbox));
            Ok(Arc::new(FaultyInboxStore::new(store, Arc::clone(&self.1))))
        }
    }

    #[async_trait]
    impl TwinStoreFactory for Faulty {
        async fn open(&self) -> Result<Arc<dyn TwinStore>> {
            let store = BTreeMapTwins {
                db: Arc::clone(&self.0.twins),
            };
            Ok(Arc::new(FaultyTwinStore::new(store, Arc::clone(&self.1))))
        }
    }

    let plan = FaultPlan::counting();
    let faulty = Faulty(Factory::default(), Arc::clone(&plan));
    inbox_store::run_all(&faulty).await;
    twin_store::run_all(&faulty).await;
    assert!(plan.calls() > 0);
}

/// An injected fault is a retryable backend error; before forwarding it changes nothing, after
/// forwarding the write took effect although the caller saw a failure.
#[tokio::test]
async fn injected_faults_are_retryable_and_before_or_after_the_write() {
    let device = fresh_id("tk-oc-fault");
    let now = Timestamp::from_unix_millis(1_000);
    for (mode, applied) in [(FaultMode::Before, 0), (FaultMode::After, 1)] {
        let factory = Factory::default();
        let inbox = FaultyInboxStore::new(
            BTreeMapInbox::open(Arc::clone(&factory.inbox)),
            FaultPlan::fail_at(1, mode),
        );
        let message = InboxMessage::new("m", "x", now, Duration::from_secs(60));
        let err = inbox
            .enqueue(&device, message, now, InboxLimits::default())
            .await
            .expect_err("call 1 fails");
        assert!(
            matches!(err, Error::Backend { .. }) && err.is_retryable(),
            "{err:?}"
        );
        assert_eq!(inbox.inner().depth(&device).await.expect("depth"), applied);

        let twins = FaultyTwinStore::new(
            BTreeMapTwins {
                db: Arc::clone(&factory.twins),
            },
            FaultPlan::fail_at(1, mode),
        );
        let err = twins
            .patch(
                &device,
                Section::Desired,
                &json!({"a": 1}),
                None,
                TwinLimits::default(),
            )
            .await
            .expect_err("call 1 fails");
        assert!(err.is_retryable(), "{err:?}");
        let version = twins
            .inner()
            .get(&device)
            .await
            .expect("get")
            .desired
            .version;
        assert_eq!(version, u64::try_from(applied).expect("small"), "{mode:?}");
    }
}

/// The suite catches an inbox that keeps locks across a reopen (a lock column that outlives the
/// sessions it belonged to): the held message would never be delivered again.
#[tokio::test]
#[should_panic(expected = "a lock does not survive a reopen")]
async fn the_suite_catches_locks_kept_across_a_reopen() {
    struct KeepsLocks(Factory);

    #[async_trait]
    impl InboxStoreFactory for KeepsLocks {
        async fn open(&self) -> Result<Arc<dyn InboxStore>> {
            InboxStoreFactory::open(&self.0).await
        }

        async fn reopen(
            &self,
            previous: Arc<dyn InboxStore>,
        ) -> Option<Result<Arc<dyn InboxStore>>> {
            // The same handle again: nothing released.
            Some(Ok(previous))
        }
    }

    inbox_store::run_all(&KeepsLocks(Factory::default())).await;
}

/// The suite catches a twin store that loses writes on reopen (rows kept only in a cache).
#[tokio::test]
#[should_panic(expected = "twins survive a reopen")]
async fn the_suite_catches_twins_lost_on_reopen() {
    struct Forgetful(Factory);

    #[async_trait]
    impl TwinStoreFactory for Forgetful {
        async fn open(&self) -> Result<Arc<dyn TwinStore>> {
            TwinStoreFactory::open(&self.0).await
        }

        async fn reopen(&self, previous: Arc<dyn TwinStore>) -> Option<Result<Arc<dyn TwinStore>>> {
            drop(previous);
            Some(Ok(Arc::new(BTreeMapTwins {
                db: Arc::new(Mutex::new(TwinDb::default())),
            })))
        }
    }

    twin_store::run_all(&Forgetful(Factory::default())).await;
}
