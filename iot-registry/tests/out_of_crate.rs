//! The `Registry` an integrator would write (`support/btreemap_registry.rs`: outside this crate,
//! over a `Mutex<BTreeMap>`, public API only, queries evaluated through the public query view)
//! must pass the whole conformance suite, twice over the same "database" and across reopens, and
//! behind the fault wrapper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/btreemap_registry.rs"]
mod btreemap_registry;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use btreemap_registry::{BTreeMapRegistry, Db};
use iot_registry::testkit::{self, FaultPlan, FaultyRegistry, RegistryFactory};
use iot_registry::{Registry, Result};

/// Opens handles on one shared database; a reopen is a new handle on the same data.
#[derive(Default)]
struct Factory {
    db: Arc<Mutex<Db>>,
}

#[async_trait]
impl RegistryFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn Registry>> {
        Ok(Arc::new(BTreeMapRegistry::new(
            Arc::clone(&self.db),
            testkit::suite_limits(),
        )))
    }

    async fn reopen(&self, previous: Arc<dyn Registry>) -> Option<Result<Arc<dyn Registry>>> {
        drop(previous);
        Some(self.open().await)
    }
}

fn rows(factory: &Factory) -> usize {
    factory.db.lock().map(|db| db.rows.len()).unwrap_or(0)
}

#[tokio::test]
async fn a_btreemap_registry_passes_the_suite_twice_over_one_database() {
    let factory = Factory::default();
    testkit::run_all(&factory).await;
    let after_one = rows(&factory);
    testkit::run_all(&factory).await;
    let after_two = rows(&factory);
    assert!(after_one > 0 && after_two > after_one, "both runs wrote");
}

#[tokio::test]
async fn a_btreemap_registry_passes_the_suite_behind_the_fault_wrapper() {
    struct Faulty(Factory, Arc<FaultPlan>);

    #[async_trait]
    impl RegistryFactory for Faulty {
        async fn open(&self) -> Result<Arc<dyn Registry>> {
            let inner = BTreeMapRegistry::new(Arc::clone(&self.0.db), testkit::suite_limits());
            Ok(Arc::new(FaultyRegistry::new(inner, Arc::clone(&self.1))))
        }
    }

    let plan = FaultPlan::counting();
    testkit::run_all(&Faulty(Factory::default(), Arc::clone(&plan))).await;
    assert!(plan.calls() > 0, "every call went through the wrapper");
}
