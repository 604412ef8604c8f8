//! The enrollment stores against a simple model: random sequences of conditional puts and
//! deletes (and, for the file store, reopens), every answer and the final contents compared.

use std::collections::BTreeMap;

use iot_core::DeviceId;
use iot_identity::SymmetricKey;
use iot_provisioning::Error;
use iot_provisioning::enrollment::{
    Attestation, EnrollmentGroup, EnrollmentStatus, EnrollmentStore, FileEnrollmentStore,
    GroupAttestation, GroupId, IndividualEnrollment, MemoryEnrollmentStore, Precondition,
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Cond {
    Any,
    Absent,
    /// The version the model holds for the id (or a stale one, when `stale`).
    Current {
        stale: bool,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Put {
        id: usize,
        group: bool,
        cond: Cond,
        tag: u8,
        disabled: bool,
    },
    Delete {
        id: usize,
        group: bool,
        cond: Cond,
    },
    Reopen,
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        Just(Cond::Any),
        Just(Cond::Absent),
        any::<bool>().prop_map(|stale| Cond::Current { stale }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..4usize, any::<bool>(), cond(), any::<u8>(), any::<bool>())
            .prop_map(|(id, group, cond, tag, disabled)| Step::Put { id, group, cond, tag, disabled }),
        3 => (0..4usize, any::<bool>(), cond()).prop_map(|(id, group, cond)| Step::Delete { id, group, cond }),
        1 => Just(Step::Reopen),
    ]
}

/// What the model holds per id: (version, tag, disabled). Versions only grow, store-wide.
#[derive(Default)]
struct Model {
    entries: BTreeMap<(bool, usize), (u64, u8, bool)>,
    last_version: u64,
    /// Versions an id had before (for stale preconditions).
    old: BTreeMap<(bool, usize), u64>,
}

fn precondition(model: &Model, key: (bool, usize), cond: &Cond) -> Precondition {
    match cond {
        Cond::Any => Precondition::Any,
        Cond::Absent => Precondition::Absent,
        Cond::Current { stale: false } => {
            Precondition::Version(model.entries.get(&key).map_or(1, |e| e.0))
        }
        Cond::Current { stale: true } => {
            Precondition::Version(model.old.get(&key).copied().unwrap_or(0))
        }
    }
}

fn device(id: usize) -> DeviceId {
    DeviceId::new(format!("dev-{id}")).expect("id")
}

fn group_id(id: usize) -> GroupId {
    GroupId::new(format!("group-{id}")).expect("group id")
}

fn key() -> SymmetricKey {
    SymmetricKey::from_bytes(&[9; 32]).expect("key")
}

async fn run(steps: Vec<Step>, file: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || async {
        if file {
            Box::new(FileEnrollmentStore::open(dir.path()).await.expect("open"))
                as Box<dyn EnrollmentStore>
        } else {
            Box::new(MemoryEnrollmentStore::new()) as Box<dyn EnrollmentStore>
        }
    };
    let mut store = open().await;
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::Reopen => {
                if file {
                    drop(store);
                    store = open().await;
                }
            }
            Step::Put {
                id,
                group,
                cond,
                tag,
                disabled,
            } => {
                let key_ = (group, id);
                let p = precondition(&model, key_, &cond);
                let current = model.entries.get(&key_).map(|e| e.0);
                let expected_ok = match p {
                    Precondition::Any => true,
                    Precondition::Absent => current.is_none(),
                    Precondition::Version(v) => current == Some(v),
                };
                let status = if disabled {
                    EnrollmentStatus::Disabled
                } else {
                    EnrollmentStatus::Enabled
                };
                let result = if group {
                    let mut g = EnrollmentGroup::new(
                        group_id(id),
                        GroupAttestation::SymmetricKey {
                            primary: key(),
                            secondary: key(),
                        },
                    );
                    g.settings.tags = json!({"tag": tag});
                    g.settings.status = status;
                    store.put_group(g, p).await.map(|g| g.version)
                } else {
                    let mut e = IndividualEnrollment::new(
                        device(id),
                        Attestation::SymmetricKey {
                            primary: key(),
                            secondary: key(),
                        },
                    );
                    e.settings.tags = json!({"tag": tag});
                    e.settings.status = status;
                    store.put_individual(e, p).await.map(|e| e.version)
                };
                match (expected_ok, result) {
                    (true, Ok(version)) => {
                        assert!(
                            version > model.last_version,
                            "version {version} after {}",
                            model.last_version
                        );
                        model.last_version = version;
                        if let Some(old) = current {
                            model.old.insert(key_, old);
                        }
                        model.entries.insert(key_, (version, tag, disabled));
                    }
                    (
                        false,
                        Err(
                            Error::EnrollmentExists { .. }
                            | Error::EnrollmentNotFound { .. }
                            | Error::EnrollmentChanged { .. },
                        ),
                    ) => {}
                    (expected, got) => {
                        panic!("put {key_:?} {p:?}: model says ok={expected}, store {got:?}")
                    }
                }
            }
            Step::Delete { id, group, cond } => {
                let key_ = (group, id);
                let p = precondition(&model, key_, &cond);
                let current = model.entries.get(&key_).map(|e| e.0);
                let expected_ok = match (p, current) {
                    (_, None) | (Precondition::Absent, _) => false,
                    (Precondition::Any, Some(_)) => true,
                    (Precondition::Version(v), Some(c)) => v == c,
                };
                let result = if group {
                    store.delete_group(&group_id(id), p).await
                } else {
                    store.delete_individual(&device(id), p).await
                };
                match (expected_ok, result) {
                    (true, Ok(())) => {
                        if let Some(old) = current {
                            model.old.insert(key_, old);
                        }
                        model.entries.remove(&key_);
                    }
                    (
                        false,
                        Err(
                            Error::EnrollmentNotFound { .. }
                            | Error::EnrollmentChanged { .. }
                            | Error::InvalidInput { .. },
                        ),
                    ) => {}
                    (expected, got) => {
                        panic!("delete {key_:?} {p:?}: model says ok={expected}, store {got:?}")
                    }
                }
            }
        }
    }
    // The contents, through the lists.
    let individuals = store.individuals(None, 100).await.expect("list");
    let groups = store.groups(None, 100).await.expect("groups");
    let mut found: BTreeMap<(bool, usize), (u64, u8, bool)> = BTreeMap::new();
    for e in individuals {
        let id: usize = e.registration_id.as_str()["dev-".len()..]
            .parse()
            .expect("n");
        let tag = u8::try_from(e.settings.tags["tag"].as_u64().expect("tag")).expect("u8");
        found.insert(
            (false, id),
            (
                e.version,
                tag,
                e.settings.status == EnrollmentStatus::Disabled,
            ),
        );
    }
    for g in groups {
        let id: usize = g.group_id.as_str()["group-".len()..].parse().expect("n");
        let tag = u8::try_from(g.settings.tags["tag"].as_u64().expect("tag")).expect("u8");
        found.insert(
            (true, id),
            (
                g.version,
                tag,
                g.settings.status == EnrollmentStatus::Disabled,
            ),
        );
    }
    assert_eq!(found, model.entries);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_store_follows_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt")
            .block_on(run(steps, false));
    }

    #[test]
    fn file_store_follows_the_model_across_reopens(steps in proptest::collection::vec(step(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt")
            .block_on(run(steps, true));
    }
}
