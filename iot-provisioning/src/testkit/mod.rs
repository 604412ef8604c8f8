//! The conformance suite for [`Provisioning`](crate::Provisioning) implementations (feature
//! `testkit`), the agreement check, and fault-injecting wrappers for the stores and the journal.
//!
//! An integrator runs [`run_all`] against their implementation, and [`assert_agreement`] over
//! its stores after any scenario. The suite functions use fresh random ids, so they can share
//! one instance.

mod fault;
mod suite;

use std::collections::BTreeSet;

use iot_core::DeviceId;
use iot_identity::IdentityStore;
use iot_registry::{Query, Registry, RegistryExt};

pub use fault::{FaultMode, FaultPlan, FaultyIdentityStore, FaultyJournal, FaultyRegistry};
pub use suite::*;

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
