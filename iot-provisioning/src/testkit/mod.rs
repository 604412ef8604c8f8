//! The conformance suites for [`Provisioning`] and [`Journal`](crate::Journal)
//! implementations (feature `testkit`), the agreement check, and fault-injecting wrappers for
//! the stores and the journal.
//!
//! An integrator runs [`run_all`] once against their `Provisioning` through a
//! [`ProvisioningFactory`] (which may also hand over the stores, for the agreement check), and
//! [`journal::run_all`] against their `Journal`, and [`run_workflow`] to check that it runs the
//! solution's hooks and audit trail as a [`Workflow`](crate::Workflow) defines them. The checks use fresh random ids, so they run
//! against instances that hold data already, and twice against the same database.
//! [`assert_agreement`] checks the stores after any scenario of one's own.
//!
//! The identity store's wrapper, plan and modes come from `iot_identity::testkit`, the
//! registry's wrapper from `iot_registry::testkit` (all re-exported here), so one [`FaultPlan`]
//! numbers the calls to all three wrapped parts.

pub mod enrollment;
mod fault;
pub mod journal;
mod suite;
pub mod workflow;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::IdentityStore;
use iot_registry::{Query, Registry, RegistryExt};

use crate::error::Result;
use crate::provisioning::Provisioning;

pub use fault::FaultyJournal;
pub use iot_identity::testkit::{FaultMode, FaultPlan, FaultyIdentityStore};
pub use iot_registry::testkit::FaultyRegistry;
pub use suite::*;
pub use workflow::{WorkflowFactory, run_workflow};

/// Opens the [`Provisioning`] implementation under test.
#[async_trait]
pub trait ProvisioningFactory: Send + Sync {
    /// The implementation to run the suite against. Its stores need not be empty.
    async fn open(&self) -> Result<Arc<dyn Provisioning>>;

    /// The host the implementation scopes the tokens it issues to.
    fn host(&self) -> &str;

    /// The identity store and registry the implementation writes, so that the suite can check
    /// that they agree after it ran; `None` (the provided method) skips that check.
    fn stores(&self) -> Option<(Arc<dyn IdentityStore>, Arc<dyn Registry>)> {
        None
    }
}

/// Runs every check ([`run_checks`]) on an implementation from `factory`, then checks that its
/// stores agree (when the factory hands them over).
pub async fn run_all(factory: &dyn ProvisioningFactory) {
    let p = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open the implementation: {e}"));
    run_checks(p.as_ref(), factory.host()).await;
    if let Some((identity, registry)) = factory.stores() {
        assert_agreement(identity.as_ref(), registry.as_ref()).await;
    }
}

/// The ids of every identity and of every registry record.
pub async fn ids_in_both(
    identity: &dyn IdentityStore,
    registry: &dyn Registry,
) -> (BTreeSet<DeviceId>, BTreeSet<DeviceId>) {
    let mut identities = BTreeSet::new();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = identity
            .list(after.as_ref(), iot_identity::MAX_PAGE_SIZE)
            .await
            .expect("list identities");
        identities.extend(page.items.into_iter().map(|i| i.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let query = Query::parse("SELECT * FROM devices").expect("query");
    let records: BTreeSet<DeviceId> = registry
        .query_all(&query)
        .await
        .expect("query registry")
        .into_iter()
        .map(|r| r.device_id)
        .collect();
    (identities, records)
}

/// Asserts that a device has an identity exactly when it has a registry record; returns how
/// many devices there are.
pub async fn assert_agreement(identity: &dyn IdentityStore, registry: &dyn Registry) -> usize {
    let (identities, records) = ids_in_both(identity, registry).await;
    let only_identity: Vec<_> = identities.difference(&records).collect();
    let only_record: Vec<_> = records.difference(&identities).collect();
    assert!(
        only_identity.is_empty() && only_record.is_empty(),
        "the stores disagree: identities without a record {only_identity:?}, records without an identity {only_record:?}"
    );
    identities.len()
}
