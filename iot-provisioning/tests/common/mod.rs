//! Stores for the provisioning tests: in-memory identity store, registry and journal behind the
//! testkit's fault-injecting wrappers, all three counting calls on one shared plan.

use std::sync::Arc;

use iot_identity::{IdentityStore, MemoryIdentityStore};
use iot_provisioning::testkit::{FaultPlan, FaultyIdentityStore, FaultyJournal, FaultyRegistry};
use iot_provisioning::{Journal, MemoryJournal};
use iot_registry::{MemoryRegistry, Registry};

/// One run's stores and the plan their wrappers share.
pub(crate) struct Stores {
    pub(crate) identity: Arc<dyn IdentityStore>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) plan: Arc<FaultPlan>,
}

/// Fresh in-memory stores failing as `plan` says.
pub(crate) fn faulty(plan: Arc<FaultPlan>) -> Stores {
    Stores {
        identity: Arc::new(FaultyIdentityStore::new(
            MemoryIdentityStore::new(),
            plan.clone(),
        )),
        registry: Arc::new(FaultyRegistry::new(MemoryRegistry::new(), plan.clone())),
        journal: Arc::new(FaultyJournal::new(MemoryJournal::new(), plan.clone())),
        plan,
    }
}
