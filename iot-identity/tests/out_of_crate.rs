//! The `IdentityStore` an integrator would write (`support/btreemap_store.rs`: outside this
//! crate, over a `Mutex<BTreeMap>`, public API only) must pass the whole conformance suite,
//! twice over the same "database" and across reopens, and behind the fault wrapper.

#[path = "support/btreemap_store.rs"]
mod btreemap_store;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use btreemap_store::{BTreeMapStore, Db};
use iot_identity::testkit::{self, FaultPlan, FaultyIdentityStore, StoreFactory};
use iot_identity::{IdentityStore, Result};

/// Opens handles on one shared database; a reopen is a new handle on the same data.
#[derive(Default)]
struct Factory {
    db: Arc<Mutex<Db>>,
}

#[async_trait]
impl StoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn IdentityStore>> {
        Ok(Arc::new(BTreeMapStore::new(Arc::clone(&self.db))))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn IdentityStore>,
    ) -> Option<Result<Arc<dyn IdentityStore>>> {
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn a_btreemap_store_passes_the_suite_twice_over_one_database() {
    let factory = Factory::default();
    testkit::run_all(&factory).await;
    let after_one = factory.db.lock().map(|db| db.rows.len()).unwrap_or(0);
    testkit::run_all(&factory).await;
    let after_two = factory.db.lock().map(|db| db.rows.len()).unwrap_or(0);
    assert!(after_one > 0 && after_two > after_one, "both runs wrote");
}

#[tokio::test]
async fn a_btreemap_store_passes_the_suite_behind_the_fault_wrapper() {
    struct Faulty(Factory, Arc<FaultPlan>);

    #[async_trait]
    impl StoreFactory for Faulty {
        async fn open(&self) -> Result<Arc<dyn IdentityStore>> {
            let store = BTreeMapStore::new(Arc::clone(&self.0.db));
            Ok(Arc::new(FaultyIdentityStore::new(
                store,
                Arc::clone(&self.1),
            )))
        }
    }

    let plan = FaultPlan::counting();
    testkit::run_all(&Faulty(Factory::default(), Arc::clone(&plan))).await;
    assert!(plan.calls() > 0);
}

/// The suite catches a backend that loses its etag counter on restart (a counter kept in
/// memory next to rows kept on disk).
#[tokio::test]
#[should_panic(expected = "was given out before the reopen")]
async fn the_suite_catches_etags_reused_after_a_reopen() {
    let db = Arc::new(Mutex::new(Db::default()));
    let store: Arc<dyn IdentityStore> = Arc::new(BTreeMapStore::new(Arc::clone(&db)));
    testkit::survives_reopen(store, |store| async move {
        drop(store);
        let rows = db.lock().map(|db| db.rows.clone()).unwrap_or_default();
        let forgetful = Db { rows, last_etag: 0 };
        Some(
            Arc::new(BTreeMapStore::new(Arc::new(Mutex::new(forgetful)))) as Arc<dyn IdentityStore>,
        )
    })
    .await;
}
