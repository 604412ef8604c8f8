//! Property test: random sequences of user, role and grant changes against the memory and file
//! access stores, and every check (user × permission × target) compared with a model of grants
//! → decisions. The file store is reopened before the checks, so the model also checks what
//! survives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use iot_core::DeviceId;
use iot_identity::access::{
    AccessControl, AccessStore, Decision, DenyReason, DeviceSet, FileAccessStore,
    FileAccessStoreConfig, Grant, MemoryAccessStore, NewUser, Permission, Permissions, Role,
    RoleName, StaticDeviceSets, Target, UserName,
};
use iot_identity::{Durability, Error, PassphraseHash, PassphraseParams};
use proptest::prelude::*;

const USERS: u8 = 3;
const DEVICES: u8 = 4;
const QUERY: &str = "SELECT * FROM devices WHERE metadata.kind = 'pump'";

#[derive(Clone, Debug)]
enum Set {
    All,
    Device(u8),
    Query,
    /// Floor 0 or 1 (device d lies on floor d % 2).
    Floor(u8),
}

#[derive(Clone, Debug)]
enum Op {
    CreateUser(u8),
    DeleteUser(u8),
    Disable(u8, bool),
    PutCustom(u8),
    DeleteCustom,
    AddGrant(u8, u8, Set),
    RemoveGrant(u8, u8, Set),
}

fn set() -> impl Strategy<Value = Set> {
    prop_oneof![
        Just(Set::All),
        (0..DEVICES).prop_map(Set::Device),
        Just(Set::Query),
        (0u8..2).prop_map(Set::Floor),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    // Roles: 0 admin, 1 operator, 2 viewer, 3 the custom role.
    let role = 0u8..4;
    prop_oneof![
        3 => user.clone().prop_map(Op::CreateUser),
        1 => user.clone().prop_map(Op::DeleteUser),
        1 => (user.clone(), any::<bool>()).prop_map(|(u, d)| Op::Disable(u, d)),
        1 => any::<u8>().prop_map(Op::PutCustom),
        1 => Just(Op::DeleteCustom),
        5 => (user.clone(), role.clone(), set()).prop_map(|(u, r, s)| Op::AddGrant(u, r, s)),
        2 => (user, role, set()).prop_map(|(u, r, s)| Op::RemoveGrant(u, r, s)),
    ]
}

fn user(i: u8) -> UserName {
    format!("user-{i}").parse().expect("name")
}

fn device(i: u8) -> DeviceId {
    format!("dev-{i}").parse().expect("id")
}

fn role_name(i: u8) -> RoleName {
    ["admin", "operator", "viewer", "custom"][usize::from(i % 4)]
        .parse()
        .expect("role")
}

fn device_set(s: &Set) -> DeviceSet {
    match s {
        Set::All => DeviceSet::All,
        Set::Device(d) => DeviceSet::Device(device(*d)),
        Set::Query => DeviceSet::query(QUERY).expect("query"),
        Set::Floor(f) => DeviceSet::Node(format!("floor={f}").parse().expect("node")),
    }
}

fn custom_permissions(bits: u8) -> Permissions {
    Permission::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, p)| p)
        .collect()
}

/// The model: who exists, who is disabled, the custom role's permissions, the grants.
#[derive(Default, Debug)]
struct Model {
    users: BTreeMap<u8, bool>,
    custom: Option<Permissions>,
    grants: BTreeSet<(u8, u8, String)>,
}

impl Model {
    fn permissions(&self, role: u8) -> Option<Permissions> {
        match role {
            0 => Some(Permissions::all()),
            1 => Some(
                [
                    Permission::Read,
                    Permission::InvokeMethod,
                    Permission::SendC2d,
                    Permission::UpdateTwin,
                ]
                .into_iter()
                .collect(),
            ),
            2 => Some([Permission::Read].into_iter().collect()),
            _ => self.custom,
        }
    }

    fn covers(set: &str, target: Option<u8>, pumps: &BTreeSet<u8>) -> bool {
        match (set, target) {
            ("all", _) => true,
            (_, None) => false,
            ("query", Some(d)) => pumps.contains(&d),
            (s, Some(d)) if s.starts_with("floor") => s == format!("floor{}", d % 2),
            (s, Some(d)) => s == format!("device{d}"),
        }
    }

    fn decide(&self, u: u8, p: Permission, target: Option<u8>, pumps: &BTreeSet<u8>) -> Decision {
        match self.users.get(&u) {
            None => Decision::Deny(DenyReason::UnknownUser),
            Some(true) => Decision::Deny(DenyReason::UserDisabled),
            Some(false) => {
                let allowed = self.grants.iter().any(|(gu, role, set)| {
                    *gu == u
                        && self.permissions(*role).is_some_and(|ps| ps.contains(p))
                        && Self::covers(set, target, pumps)
                });
                if allowed {
                    Decision::Allow
                } else {
                    Decision::Deny(DenyReason::NotGranted)
                }
            }
        }
    }
}

fn set_key(s: &Set) -> String {
    match s {
        Set::All => "all".into(),
        Set::Device(d) => format!("device{d}"),
        Set::Query => "query".into(),
        Set::Floor(f) => format!("floor{f}"),
    }
}

/// Applies `op` to the store and the model; the store's answer must be the model's.
async fn apply(store: &dyn AccessStore, model: &mut Model, op: &Op, hash: &PassphraseHash) {
    match op {
        Op::CreateUser(u) => {
            let r = store
                .create_user(NewUser::new(user(*u), hash.clone()))
                .await;
            if model.users.contains_key(u) {
                assert!(matches!(r, Err(Error::UserAlreadyExists { .. })), "{r:?}");
            } else {
                r.expect("create");
                model.users.insert(*u, false);
            }
        }
        Op::DeleteUser(u) => {
            let r = store.delete_user(&user(*u)).await;
            if model.users.remove(u).is_some() {
                r.expect("delete");
                model.grants.retain(|(gu, _, _)| gu != u);
            } else {
                assert!(matches!(r, Err(Error::UserNotFound { .. })), "{r:?}");
            }
        }
        Op::Disable(u, disabled) => {
            let r = store.set_disabled(&user(*u), *disabled).await;
            match model.users.get_mut(u) {
                Some(state) => {
                    r.expect("set disabled");
                    *state = *disabled;
                }
                None => assert!(matches!(r, Err(Error::UserNotFound { .. })), "{r:?}"),
            }
        }
        Op::PutCustom(bits) => {
            let permissions = custom_permissions(*bits);
            store
                .put_role(Role::new(role_name(3), permissions.iter()))
                .await
                .expect("put role");
            model.custom = Some(permissions);
        }
        Op::DeleteCustom => {
            let r = store.delete_role(&role_name(3)).await;
            if model.custom.take().is_some() {
                r.expect("delete role");
                model.grants.retain(|(_, role, _)| *role != 3);
            } else {
                assert!(matches!(r, Err(Error::RoleNotFound { .. })), "{r:?}");
            }
        }
        Op::AddGrant(u, role, s) => {
            let r = store
                .add_grant(Grant::new(user(*u), role_name(*role), device_set(s)))
                .await;
            if !model.users.contains_key(u) {
                assert!(matches!(r, Err(Error::UserNotFound { .. })), "{r:?}");
            } else if model.permissions(*role).is_none() {
                assert!(matches!(r, Err(Error::RoleNotFound { .. })), "{r:?}");
            } else {
                let added = model.grants.insert((*u, *role, set_key(s)));
                assert_eq!(r.expect("grant"), added);
            }
        }
        Op::RemoveGrant(u, role, s) => {
            let removed = store
                .remove_grant(&Grant::new(user(*u), role_name(*role), device_set(s)))
                .await
                .expect("remove");
            assert_eq!(removed, model.grants.remove(&(*u, *role, set_key(s))));
        }
    }
}

async fn check_all(store: Arc<dyn AccessStore>, model: &Model, pumps: &BTreeSet<u8>) {
    let mut sets = StaticDeviceSets::new().with_query(QUERY, pumps.iter().map(|d| device(*d)));
    for d in 0..DEVICES {
        sets = sets.with_metadata(device(d), [("floor", (d % 2).to_string())]);
    }
    let access = AccessControl::new(store, Arc::new(sets));
    for u in 0..USERS {
        for p in Permission::ALL {
            for target in (0..DEVICES).map(Some).chain([None]) {
                let t = target.map_or(Target::Hub, |d| Target::Device(device(d)));
                assert_eq!(
                    access.check(&user(u), p, &t).await,
                    model.decide(u, p, target, pumps),
                    "user {u}, {p} on {t}; model {model:?}"
                );
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn test_hash() -> PassphraseHash {
    PassphraseHash::hash("pw", &PassphraseParams::INSECURE_FOR_TESTS).expect("hash")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn memory_store_decides_as_the_model(
        ops in prop::collection::vec(op(), 0..40),
        pumps in prop::collection::btree_set(0..DEVICES, 0..=DEVICES as usize),
    ) {
        runtime().block_on(async {
            let store = Arc::new(MemoryAccessStore::new());
            let mut model = Model::default();
            let hash = test_hash();
            for op in &ops {
                apply(store.as_ref(), &mut model, op, &hash).await;
            }
            check_all(store, &model, &pumps).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn file_store_decides_as_the_model_after_a_reopen(
        ops in prop::collection::vec(op(), 0..40),
        pumps in prop::collection::btree_set(0..DEVICES, 0..=DEVICES as usize),
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().expect("dir");
            let config = FileAccessStoreConfig::default().durability(Durability::OsBuffered);
            let store = FileAccessStore::open(dir.path(), config).await.expect("open");
            let mut model = Model::default();
            let hash = test_hash();
            for op in &ops {
                apply(&store, &mut model, op, &hash).await;
            }
            drop(store);
            let store = FileAccessStore::open(dir.path(), config).await.expect("reopen");
            check_all(Arc::new(store), &model, &pumps).await;
        });
    }
}
