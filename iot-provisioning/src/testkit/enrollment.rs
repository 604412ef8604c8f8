//! The conformance suite for [`EnrollmentStore`] implementations.
//!
//! An integrator with a store of their own runs [`run_all`] once through an
//! [`EnrollmentStoreFactory`]. Every check uses fresh random ids and looks only at its own
//! enrollments, so the suite runs against a store that already holds some, and twice against the
//! same database.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::testkit::{fresh_id, fresh_name};
use iot_identity::{SymmetricKey, Thumbprint};
use serde_json::json;

use crate::enrollment::{
    Attestation, EnrollmentGroup, EnrollmentStatus, EnrollmentStore, GroupAttestation, GroupId,
    IndividualEnrollment, Precondition, ReprovisionPolicy,
};
use crate::error::{Error, Result};

/// Opens the store under test, and opens it again for the durability check.
#[async_trait]
pub trait EnrollmentStoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn EnrollmentStore>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the store keeps nothing across a reopen.
    /// The provided method is for such stores: it drops `previous` and returns `None`.
    async fn reopen(
        &self,
        previous: Arc<dyn EnrollmentStore>,
    ) -> Option<Result<Arc<dyn EnrollmentStore>>> {
        drop(previous);
        None
    }
}

/// Runs every check on one store from `factory`, then [`survives_reopen`].
pub async fn run_all(factory: &dyn EnrollmentStoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a store: {e}"));
    let s = store.as_ref();
    individuals_round_trip(s).await;
    groups_round_trip(s).await;
    preconditions_guard_writes(s).await;
    deletes_never_reuse_versions(s).await;
    invalid_enrollments_are_refused(s).await;
    lists_page_in_id_order(s).await;
    concurrent_conditional_writes_have_one_winner(store.clone()).await;
    let (individual, group) = written_for_reopen(s).await;
    survives_reopen(factory, store, individual, group).await;
}

fn keys() -> Attestation {
    Attestation::SymmetricKey {
        primary: SymmetricKey::generate(),
        secondary: SymmetricKey::generate(),
    }
}

fn key_group() -> GroupAttestation {
    GroupAttestation::SymmetricKey {
        primary: SymmetricKey::generate(),
        secondary: SymmetricKey::generate(),
    }
}

fn fresh_group(label: &str) -> GroupId {
    GroupId::new(fresh_name(label)).expect("labels of the suite make valid group ids")
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// Every field of an individual enrollment comes back as written, with a version.
pub async fn individuals_round_trip(store: &dyn EnrollmentStore) {
    let mut with_keys = IndividualEnrollment::new(fresh_id("ek-trip-key"), keys());
    with_keys.device_id = Some(fresh_id("ek-trip-dev"));
    with_keys.settings.initial_twin = json!({"interval": 30, "mode": {"eco": true}});
    with_keys.settings.tags = json!({"site": "B7", "floor": 3, "note": "«quoted» \"x\"\n"});
    with_keys.settings.reprovision = ReprovisionPolicy {
        update_hub_assignment: false,
        migrate_device_data: true,
    };
    let mut with_certs = IndividualEnrollment::new(
        fresh_id("ek-trip-x509"),
        Attestation::X509 {
            primary: Thumbprint::from_bytes([7; 32]),
            secondary: None,
        },
    );
    with_certs.settings.status = EnrollmentStatus::Disabled;
    for enrollment in [with_keys, with_certs] {
        let stored = store
            .put_individual(enrollment.clone(), Precondition::Absent)
            .await
            .unwrap_or_else(|e| panic!("put {}: {e}", enrollment.registration_id));
        assert!(stored.version > 0, "a stored enrollment has a version");
        let mut expected = enrollment.clone();
        expected.version = stored.version;
        assert_eq!(stored, expected, "put returns what it stored");
        let read = store
            .individual(&enrollment.registration_id)
            .await
            .expect("get");
        assert_eq!(read, Some(expected), "get returns what was put");
    }
    assert_eq!(
        store
            .individual(&fresh_id("ek-trip-none"))
            .await
            .expect("get"),
        None
    );
}

/// Both kinds of group come back as written.
pub async fn groups_round_trip(store: &dyn EnrollmentStore) {
    let mut keyed = EnrollmentGroup::new(fresh_group("ek-group-key"), key_group());
    keyed.settings.initial_twin = json!({"firmware": "1.2.3"});
    let mut ca = EnrollmentGroup::new(
        fresh_group("ek-group-ca"),
        GroupAttestation::X509Ca {
            certificates: vec![PEM.into(), PEM.replace("MIIB", "MIIC")],
        },
    );
    ca.settings.tags = json!({"line": 2});
    for group in [keyed, ca] {
        let stored = store
            .put_group(group.clone(), Precondition::Absent)
            .await
            .unwrap_or_else(|e| panic!("put group {}: {e}", group.group_id));
        let mut expected = group.clone();
        expected.version = stored.version;
        assert!(stored.version > 0);
        assert_eq!(stored, expected);
        assert_eq!(
            store.group(&group.group_id).await.expect("get group"),
            Some(expected)
        );
    }
}

/// `Absent` only creates, `Version` only replaces that version, `Any` does either; each new
/// version is larger than the last.
pub async fn preconditions_guard_writes(store: &dyn EnrollmentStore) {
    let id = fresh_id("ek-cond");
    let enrollment = IndividualEnrollment::new(id.clone(), keys());
    match store
        .put_individual(enrollment.clone(), Precondition::Version(1))
        .await
    {
        Err(Error::EnrollmentNotFound { .. }) => {}
        other => panic!("a conditional put of a missing enrollment: {other:?}"),
    }
    let v1 = store
        .put_individual(enrollment.clone(), Precondition::Any)
        .await
        .expect("create with Any")
        .version;
    match store
        .put_individual(enrollment.clone(), Precondition::Absent)
        .await
    {
        Err(Error::EnrollmentExists { .. }) => {}
        other => panic!("create-only over an existing enrollment: {other:?}"),
    }
    let mut changed = enrollment.clone();
    changed.settings.status = EnrollmentStatus::Disabled;
    let v2 = store
        .put_individual(changed.clone(), Precondition::Version(v1))
        .await
        .expect("replace the version read")
        .version;
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    match store
        .put_individual(enrollment.clone(), Precondition::Version(v1))
        .await
    {
        Err(Error::EnrollmentChanged {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (v1, v2)),
        other => panic!("a put conditioned on an old version: {other:?}"),
    }
    let read = store.individual(&id).await.expect("get").expect("stored");
    assert_eq!(
        read.settings.status,
        EnrollmentStatus::Disabled,
        "the refused put changed nothing"
    );
    let v3 = store
        .put_individual(enrollment, Precondition::Any)
        .await
        .expect("replace with Any")
        .version;
    assert!(v3 > v2);

    let group = EnrollmentGroup::new(fresh_group("ek-cond-group"), key_group());
    let g1 = store
        .put_group(group.clone(), Precondition::Absent)
        .await
        .expect("create group")
        .version;
    let g2 = store
        .put_group(group.clone(), Precondition::Version(g1))
        .await
        .expect("replace group")
        .version;
    assert!(g2 > g1);
    assert!(matches!(
        store
            .put_group(group.clone(), Precondition::Version(g1))
            .await,
        Err(Error::EnrollmentChanged { .. })
    ));
    assert!(matches!(
        store
            .delete_group(&group.group_id, Precondition::Version(g1))
            .await,
        Err(Error::EnrollmentChanged { .. })
    ));
    store
        .delete_group(&group.group_id, Precondition::Version(g2))
        .await
        .expect("delete the version read");
    assert_eq!(store.group(&group.group_id).await.expect("get"), None);
}

/// A deleted enrollment is gone, deleting it again is `EnrollmentNotFound`, and one created
/// again under the same id gets a version larger than any the old one had (so a writer holding
/// the old version cannot overwrite the new one).
pub async fn deletes_never_reuse_versions(store: &dyn EnrollmentStore) {
    let id = fresh_id("ek-delete");
    let old = store
        .put_individual(
            IndividualEnrollment::new(id.clone(), keys()),
            Precondition::Absent,
        )
        .await
        .expect("create")
        .version;
    store
        .delete_individual(&id, Precondition::Version(old))
        .await
        .expect("delete");
    assert_eq!(store.individual(&id).await.expect("get"), None);
    assert!(matches!(
        store.delete_individual(&id, Precondition::Any).await,
        Err(Error::EnrollmentNotFound { .. })
    ));
    let new = store
        .put_individual(
            IndividualEnrollment::new(id.clone(), keys()),
            Precondition::Absent,
        )
        .await
        .expect("create again")
        .version;
    assert!(new > old, "version {new} after a deleted {old}");
    assert!(matches!(
        store
            .put_individual(
                IndividualEnrollment::new(id.clone(), keys()),
                Precondition::Version(old)
            )
            .await,
        Err(Error::EnrollmentChanged { .. })
    ));
    store
        .delete_individual(&id, Precondition::Any)
        .await
        .expect("clean up");
}

/// Initial twins and tags must be JSON objects, X.509 groups need one or two PEM certificates;
/// a refused write stores nothing.
pub async fn invalid_enrollments_are_refused(store: &dyn EnrollmentStore) {
    let mut bad_twin = IndividualEnrollment::new(fresh_id("ek-bad-twin"), keys());
    bad_twin.settings.initial_twin = json!([1, 2]);
    let mut bad_tags = IndividualEnrollment::new(fresh_id("ek-bad-tags"), keys());
    bad_tags.settings.tags = json!("site");
    for bad in [bad_twin, bad_tags] {
        assert!(
            matches!(
                store.put_individual(bad.clone(), Precondition::Any).await,
                Err(Error::InvalidInput { .. })
            ),
            "{} accepted",
            bad.registration_id
        );
        assert_eq!(
            store.individual(&bad.registration_id).await.expect("get"),
            None
        );
    }
    for certificates in [
        vec![],
        vec![PEM.into(); 3],
        vec!["not a certificate".into()],
    ] {
        let group = EnrollmentGroup::new(
            fresh_group("ek-bad-ca"),
            GroupAttestation::X509Ca { certificates },
        );
        assert!(matches!(
            store.put_group(group.clone(), Precondition::Any).await,
            Err(Error::InvalidInput { .. })
        ));
        assert_eq!(store.group(&group.group_id).await.expect("get"), None);
    }
}

/// Paging through the whole store returns every enrollment once, in id order.
pub async fn lists_page_in_id_order(store: &dyn EnrollmentStore) {
    let prefix = fresh_name("ek-list");
    let mut ours: Vec<DeviceId> = Vec::new();
    for i in [3, 0, 4, 1, 2] {
        let id = DeviceId::new(format!("{prefix}-{i}")).expect("id");
        store
            .put_individual(
                IndividualEnrollment::new(id.clone(), keys()),
                Precondition::Absent,
            )
            .await
            .expect("put");
        ours.push(id);
    }
    ours.sort();
    let mut seen = Vec::new();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = store.individuals(after.as_ref(), 2).await.expect("list");
        assert!(page.len() <= 2, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = Some(last.registration_id.clone());
        seen.extend(page.into_iter().map(|e| e.registration_id));
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "pages in id order, no repeats"
    );
    let found: Vec<DeviceId> = seen
        .into_iter()
        .filter(|id| id.as_str().starts_with(&prefix))
        .collect();
    assert_eq!(found, ours);

    let group_prefix = fresh_name("ek-glist");
    let mut groups = Vec::new();
    for i in [1, 0, 2] {
        let id = GroupId::new(format!("{group_prefix}-{i}")).expect("group id");
        store
            .put_group(
                EnrollmentGroup::new(id.clone(), key_group()),
                Precondition::Absent,
            )
            .await
            .expect("put group");
        groups.push(id);
    }
    groups.sort();
    let mut seen = Vec::new();
    let mut after: Option<GroupId> = None;
    loop {
        let page = store.groups(after.as_ref(), 2).await.expect("list groups");
        let Some(last) = page.last() else { break };
        after = Some(last.group_id.clone());
        seen.extend(page.into_iter().map(|g| g.group_id));
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let found: Vec<GroupId> = seen
        .into_iter()
        .filter(|id| id.as_str().starts_with(&group_prefix))
        .collect();
    assert_eq!(found, groups);
    for id in ours {
        store
            .delete_individual(&id, Precondition::Any)
            .await
            .expect("clean up");
    }
    for id in groups {
        store
            .delete_group(&id, Precondition::Any)
            .await
            .expect("clean up");
    }
}

/// Eight writers conditioned on the same version: exactly one wins, the others see
/// `EnrollmentChanged`.
pub async fn concurrent_conditional_writes_have_one_winner(store: Arc<dyn EnrollmentStore>) {
    let id = fresh_id("ek-race");
    let v = store
        .put_individual(
            IndividualEnrollment::new(id.clone(), keys()),
            Precondition::Absent,
        )
        .await
        .expect("create")
        .version;
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut enrollment = IndividualEnrollment::new(id.clone(), keys());
            enrollment.settings.tags = json!({"writer": i});
            tokio::spawn(async move {
                store
                    .put_individual(enrollment, Precondition::Version(v))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for writer in writers {
        match writer.await.expect("writer task") {
            Ok(_) => won += 1,
            Err(Error::EnrollmentChanged { .. }) => {}
            Err(e) => panic!("a racing writer: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one conditional writer wins");
    store
        .delete_individual(&id, Precondition::Any)
        .await
        .expect("clean up");
}

async fn written_for_reopen(
    store: &dyn EnrollmentStore,
) -> (IndividualEnrollment, EnrollmentGroup) {
    let mut individual = IndividualEnrollment::new(fresh_id("ek-reopen"), keys());
    individual.settings.tags = json!({"kept": true});
    let individual = store
        .put_individual(individual, Precondition::Absent)
        .await
        .expect("put");
    let deleted = fresh_id("ek-reopen-gone");
    store
        .put_individual(
            IndividualEnrollment::new(deleted.clone(), keys()),
            Precondition::Absent,
        )
        .await
        .expect("put");
    store
        .delete_individual(&deleted, Precondition::Any)
        .await
        .expect("delete");
    let group = store
        .put_group(
            EnrollmentGroup::new(fresh_group("ek-reopen-group"), key_group()),
            Precondition::Absent,
        )
        .await
        .expect("put group");
    store.sync().await.expect("sync");
    (individual, group)
}

/// What was written before a reopen is there after it, keys included; new versions are larger
/// than the old ones.
pub async fn survives_reopen(
    factory: &dyn EnrollmentStoreFactory,
    store: Arc<dyn EnrollmentStore>,
    individual: IndividualEnrollment,
    group: EnrollmentGroup,
) {
    let Some(reopened) = factory.reopen(store).await else {
        return;
    };
    let store = reopened.unwrap_or_else(|e| panic!("the factory could not reopen the store: {e}"));
    assert_eq!(
        store
            .individual(&individual.registration_id)
            .await
            .expect("get"),
        Some(individual.clone()),
        "an enrollment survives a reopen"
    );
    assert_eq!(
        store.group(&group.group_id).await.expect("get group"),
        Some(group.clone())
    );
    let next = store
        .put_individual(
            individual.clone(),
            Precondition::Version(individual.version),
        )
        .await
        .expect("a write after the reopen");
    assert!(next.version > group.version.max(individual.version));
    store
        .delete_individual(&individual.registration_id, Precondition::Any)
        .await
        .expect("clean up");
    store
        .delete_group(&group.group_id, Precondition::Any)
        .await
        .expect("clean up");
}
