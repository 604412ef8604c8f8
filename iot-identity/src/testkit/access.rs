//! The conformance suite for [`AccessStore`] implementations: users, roles, grants, sessions,
//! and checks through an [`AccessControl`] over the store.
//!
//! ```
//! use std::sync::Arc;
//! use iot_identity::access::{AccessStore, MemoryAccessStore};
//! use iot_identity::testkit;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async {
//! let store: Arc<dyn AccessStore> = Arc::new(MemoryAccessStore::new());
//! // A persistent store passes a closure that drops it and opens the same storage again.
//! testkit::access::run_access(store, |_| async { None }).await;
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use iot_core::Timestamp;

use crate::access::{
    AccessConfig, AccessControl, AccessStore, Decision, DenyReason, DeviceSet, Grant,
    MAX_SESSIONS_PER_USER, MemoryAuditSink, NewUser, Permission, Role, RoleName, Session,
    SessionDigest, SessionToken, StaticDeviceSets, Target, UserName,
};
use crate::credentials::{PassphraseHash, PassphraseParams};
use crate::error::Error;

use super::{fresh_id, fresh_name};

/// A fresh user name (`label-` and 12 random hex digits).
pub fn fresh_user(label: &str) -> UserName {
    UserName::new(fresh_name(label)).expect("labels of the suite make valid names")
}

fn fresh_role(label: &str) -> RoleName {
    RoleName::new(fresh_name(label)).expect("labels of the suite make valid names")
}

fn role(name: &str) -> RoleName {
    RoleName::new(name).expect("a valid role name")
}

fn hash(password: &str) -> PassphraseHash {
    PassphraseHash::hash(password, &PassphraseParams::INSECURE_FOR_TESTS).expect("hash")
}

fn session_for(user: &UserName, created: Timestamp, ttl: Duration) -> (SessionToken, Session) {
    let token = SessionToken::generate();
    let session = Session::new(
        token.digest(),
        user.clone(),
        created,
        created.saturating_add(ttl),
    );
    (token, session)
}

/// Runs every check on `store`, then, when `reopen` gives the same storage again, what survives
/// it. Every name it writes is fresh, so the store need not be empty.
pub async fn run_access<F, Fut>(store: Arc<dyn AccessStore>, reopen: F)
where
    F: FnOnce(Arc<dyn AccessStore>) -> Fut,
    Fut: Future<Output = Option<Arc<dyn AccessStore>>>,
{
    let s = store.as_ref();
    users_create_get_list_delete(s).await;
    password_and_status_changes_end_sessions(s).await;
    roles_builtin_and_custom(s).await;
    grants_follow_users_and_roles(s).await;
    sessions_expire_are_revoked_and_bounded(s).await;
    access_bad_input(s).await;
    concurrent_creates_of_one_user(Arc::clone(&store)).await;
    checks_through_access_control(Arc::clone(&store)).await;
    checks_fail_closed(Arc::clone(&store)).await;
    access_survives_reopen(store, reopen).await;
}

/// Create, get, list in name order, delete; names are unique; the password hash comes back as
/// given.
pub async fn users_create_get_list_delete(store: &dyn AccessStore) {
    let (a, b) = (fresh_user("acc-b"), fresh_user("acc-a"));
    let password = hash("first password");
    let created = store
        .create_user(NewUser::new(a.clone(), password.clone()))
        .await
        .expect("create");
    assert_eq!(created.name, a);
    assert!(!created.disabled);
    assert_eq!(created.password, password, "the hash is kept as given");
    assert_eq!(created.created_at, created.updated_at);
    assert!(matches!(
        store.create_user(NewUser::new(a.clone(), hash("other"))).await,
        Err(Error::UserAlreadyExists { user }) if user == a
    ));
    let got = store.get_user(&a).await.expect("get").expect("exists");
    assert_eq!(got, created, "a refused create changes nothing");
    assert!(got.password.verify("first password"));
    store
        .create_user(NewUser::new(b.clone(), hash("second")))
        .await
        .expect("create");
    let names: Vec<UserName> = store
        .list_users()
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.name)
        .filter(|n| *n == a || *n == b)
        .collect();
    assert_eq!(names, vec![b.clone(), a.clone()], "listed by name");
    store.delete_user(&a).await.expect("delete");
    assert!(store.get_user(&a).await.expect("get").is_none());
    assert!(matches!(
        store.delete_user(&a).await,
        Err(Error::UserNotFound { .. })
    ));
    assert!(matches!(
        store.set_disabled(&a, true).await,
        Err(Error::UserNotFound { .. })
    ));
    store.delete_user(&b).await.expect("cleanup");
}

/// A new password ends every session of the user (and only theirs); so does disabling, and a
/// disabled user gets no new session; enabling again does not bring old sessions back.
pub async fn password_and_status_changes_end_sessions(store: &dyn AccessStore) {
    let (user, other) = (fresh_user("acc-pw"), fresh_user("acc-pw-other"));
    for name in [&user, &other] {
        store
            .create_user(NewUser::new(name.clone(), hash("old password")))
            .await
            .expect("create");
    }
    let now = Timestamp::now();
    let hour = Duration::from_secs(3600);
    let (_, mine) = session_for(&user, now, hour);
    let (_, theirs) = session_for(&other, now, hour);
    store.insert_session(mine.clone()).await.expect("session");
    store.insert_session(theirs.clone()).await.expect("session");
    let changed = store
        .set_password(&user, hash("new password"))
        .await
        .expect("set password");
    assert!(changed.password.verify("new password"));
    assert!(!changed.password.verify("old password"));
    assert!(changed.updated_at >= changed.created_at);
    assert!(
        store
            .get_session(&mine.digest)
            .await
            .expect("get")
            .is_none(),
        "a new password ends the old sessions"
    );
    assert_eq!(
        store.get_session(&theirs.digest).await.expect("get"),
        Some(theirs.clone()),
        "other users' sessions stay"
    );
    let (_, again) = session_for(&user, now, hour);
    store.insert_session(again.clone()).await.expect("session");
    let disabled = store.set_disabled(&user, true).await.expect("disable");
    assert!(disabled.disabled);
    assert!(
        store
            .get_session(&again.digest)
            .await
            .expect("get")
            .is_none()
    );
    let (_, refused) = session_for(&user, now, hour);
    assert!(matches!(
        store.insert_session(refused).await,
        Err(Error::LoginRefused { .. })
    ));
    let enabled = store.set_disabled(&user, false).await.expect("enable");
    assert!(!enabled.disabled);
    assert!(
        store
            .get_session(&again.digest)
            .await
            .expect("get")
            .is_none()
    );
    for name in [&user, &other] {
        store.delete_user(name).await.expect("cleanup");
    }
    assert!(
        store
            .get_session(&theirs.digest)
            .await
            .expect("get")
            .is_none(),
        "deleting a user ends their sessions"
    );
}

/// The built-in roles exist with their permissions and cannot be changed; custom roles are
/// created, replaced, listed and deleted.
pub async fn roles_builtin_and_custom(store: &dyn AccessStore) {
    let admin = store.get_role(&role("admin")).await.expect("get");
    assert!(admin.is_some_and(|r| Permission::ALL.iter().all(|p| r.permissions.contains(*p))));
    let operator = store
        .get_role(&role("operator"))
        .await
        .expect("get")
        .expect("built in");
    assert!(operator.permissions.contains(Permission::InvokeMethod));
    assert!(!operator.permissions.contains(Permission::ManageUsers));
    let viewer = store
        .get_role(&role("viewer"))
        .await
        .expect("get")
        .expect("built in");
    assert_eq!(
        viewer.permissions.iter().collect::<Vec<_>>(),
        [Permission::Read]
    );
    for name in ["admin", "operator", "viewer"] {
        assert!(matches!(
            store.put_role(Role::new(role(name), [])).await,
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            store.delete_role(&role(name)).await,
            Err(Error::InvalidInput { .. })
        ));
    }
    let custom = fresh_role("acc-role");
    store
        .put_role(Role::new(custom.clone(), [Permission::SendC2d]))
        .await
        .expect("create");
    store
        .put_role(Role::new(
            custom.clone(),
            [Permission::Read, Permission::UpdateTwin],
        ))
        .await
        .expect("replace");
    let got = store.get_role(&custom).await.expect("get").expect("exists");
    assert!(got.permissions.contains(Permission::UpdateTwin));
    assert!(!got.permissions.contains(Permission::SendC2d));
    let listed = store.list_roles().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "listed by name");
    assert!(names.contains(&"viewer") && names.contains(&custom.as_str()));
    store.delete_role(&custom).await.expect("delete");
    assert!(store.get_role(&custom).await.expect("get").is_none());
    assert!(matches!(
        store.delete_role(&custom).await,
        Err(Error::RoleNotFound { .. })
    ));
}

/// Grants name existing users and roles, are idempotent, and go with their user or role.
pub async fn grants_follow_users_and_roles(store: &dyn AccessStore) {
    let user = fresh_user("acc-grant");
    let custom = fresh_role("acc-grant-role");
    store
        .create_user(NewUser::new(user.clone(), hash("pw")))
        .await
        .expect("create");
    store
        .put_role(Role::new(custom.clone(), [Permission::SendC2d]))
        .await
        .expect("role");
    let device = fresh_id("acc-grant-dev");
    let g1 = Grant::new(user.clone(), role("viewer"), DeviceSet::All);
    let g2 = Grant::new(
        user.clone(),
        custom.clone(),
        DeviceSet::Device(device.clone()),
    );
    let g3 = Grant::new(
        user.clone(),
        role("operator"),
        DeviceSet::Node("building=HQ/floor=3".parse().expect("node")),
    );
    for g in [&g1, &g2, &g3] {
        assert!(store.add_grant(g.clone()).await.expect("grant"), "new");
    }
    assert!(
        !store.add_grant(g1.clone()).await.expect("again"),
        "idempotent"
    );
    let mut expected = vec![g1.clone(), g2.clone(), g3.clone()];
    expected.sort();
    assert_eq!(store.grants_of(&user).await.expect("grants"), expected);
    let access = store
        .access_of(&user)
        .await
        .expect("access")
        .expect("user exists");
    assert_eq!(access.user.name, user);
    let of_custom = access.grants.iter().find(|(g, _)| *g == g2);
    assert!(of_custom.is_some_and(|(_, p)| p.contains(Permission::SendC2d)));
    assert!(matches!(
        store
            .add_grant(Grant::new(
                fresh_user("acc-nobody"),
                role("viewer"),
                DeviceSet::All
            ))
            .await,
        Err(Error::UserNotFound { .. })
    ));
    assert!(matches!(
        store
            .add_grant(Grant::new(
                user.clone(),
                fresh_role("acc-norole"),
                DeviceSet::All
            ))
            .await,
        Err(Error::RoleNotFound { .. })
    ));
    assert!(store.remove_grant(&g1).await.expect("remove"));
    assert!(!store.remove_grant(&g1).await.expect("again"));
    store.delete_role(&custom).await.expect("delete role");
    assert_eq!(
        store.grants_of(&user).await.expect("grants"),
        vec![g3.clone()],
        "deleting a role deletes its grants"
    );
    store.delete_user(&user).await.expect("delete user");
    assert!(store.grants_of(&user).await.expect("grants").is_empty());
    assert!(store.access_of(&user).await.expect("access").is_none());
    store
        .create_user(NewUser::new(user.clone(), hash("pw")))
        .await
        .expect("re-create");
    assert!(
        store.grants_of(&user).await.expect("grants").is_empty(),
        "a re-created user starts without grants"
    );
    store.delete_user(&user).await.expect("cleanup");
}

/// Sessions are found by digest until revoked; expired ones are purged; a user holds at most
/// [`MAX_SESSIONS_PER_USER`], the oldest giving way.
pub async fn sessions_expire_are_revoked_and_bounded(store: &dyn AccessStore) {
    let user = fresh_user("acc-sess");
    store
        .create_user(NewUser::new(user.clone(), hash("pw")))
        .await
        .expect("create");
    let now = Timestamp::now();
    let hour = Duration::from_secs(3600);
    let (token, live) = session_for(&user, now, hour);
    store.insert_session(live.clone()).await.expect("insert");
    let found = store
        .get_session(&SessionDigest::of_presented(token.expose()).expect("digest"))
        .await
        .expect("get");
    assert_eq!(found, Some(live.clone()));
    let (_, stale) = session_for(&user, now.saturating_sub(2 * hour), hour);
    store.insert_session(stale.clone()).await.expect("insert");
    assert!(
        store
            .get_session(&stale.digest)
            .await
            .expect("get")
            .is_some_and(|s| s.is_expired(now)),
        "an expired session is returned as such until purged"
    );
    assert!(store.purge_expired_sessions(now).await.expect("purge") >= 1);
    assert!(
        store
            .get_session(&stale.digest)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_session(&live.digest)
            .await
            .expect("get")
            .is_some()
    );
    assert!(store.revoke_session(&live.digest).await.expect("revoke"));
    assert!(!store.revoke_session(&live.digest).await.expect("again"));
    assert!(
        store
            .get_session(&live.digest)
            .await
            .expect("get")
            .is_none()
    );

    // Fill up to the bound with increasing creation times; one more displaces the oldest.
    let mut held = Vec::new();
    for i in 0..MAX_SESSIONS_PER_USER as u64 {
        let created = now.saturating_add(Duration::from_micros(i));
        let (_, s) = session_for(&user, created, hour);
        store.insert_session(s.clone()).await.expect("insert");
        held.push(s);
    }
    let (_, newest) = session_for(&user, now.saturating_add(Duration::from_secs(1)), hour);
    store.insert_session(newest.clone()).await.expect("insert");
    assert!(
        store
            .get_session(&held[0].digest)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_session(&held[1].digest)
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        store
            .get_session(&newest.digest)
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store.revoke_sessions_of(&user).await.expect("revoke all"),
        MAX_SESSIONS_PER_USER
    );
    assert!(
        store
            .get_session(&newest.digest)
            .await
            .expect("get")
            .is_none()
    );
    let (_, orphan) = session_for(&fresh_user("acc-ghost"), now, hour);
    assert!(matches!(
        store.insert_session(orphan).await,
        Err(Error::UserNotFound { .. })
    ));
    store.delete_user(&user).await.expect("cleanup");
}

/// Bad input is refused with a typed error and changes nothing.
pub async fn access_bad_input(store: &dyn AccessStore) {
    let user = fresh_user("acc-bad");
    store
        .create_user(NewUser::new(user.clone(), hash("pw")))
        .await
        .expect("create");
    let now = Timestamp::now();
    let backwards = Session::new(SessionToken::generate().digest(), user.clone(), now, now);
    assert!(matches!(
        store.insert_session(backwards).await,
        Err(Error::InvalidInput { .. })
    ));
    let empty_query = Grant::new(
        user.clone(),
        role("viewer"),
        DeviceSet::Query(String::new()),
    );
    assert!(matches!(
        store.add_grant(empty_query).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(store.grants_of(&user).await.expect("grants").is_empty());
    store.delete_user(&user).await.expect("cleanup");
}

/// Of concurrent creates of one user, exactly one succeeds.
pub async fn concurrent_creates_of_one_user(store: Arc<dyn AccessStore>) {
    let name = fresh_user("acc-race");
    let password = hash("pw");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, name, password) = (Arc::clone(&store), name.clone(), password.clone());
            tokio::spawn(async move { store.create_user(NewUser::new(name, password)).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => created += 1,
            Err(Error::UserAlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(created, 1);
    store.delete_user(&name).await.expect("cleanup");
}

/// A resolver that cannot answer (an unreachable registry).
#[derive(Debug)]
struct Unreachable;

#[async_trait::async_trait]
impl crate::access::DeviceSets for Unreachable {
    async fn matches_query(&self, _: &iot_core::DeviceId, _: &str) -> crate::Result<bool> {
        Err(Error::backend("registry", "connection refused", true))
    }
    async fn under_node(
        &self,
        _: &iot_core::DeviceId,
        _: &crate::access::HierarchyNode,
    ) -> crate::Result<bool> {
        Err(Error::backend("registry", "connection refused", true))
    }
}

/// When the resolver fails, a check that needs it denies (`unavailable`, audited); grants it
/// does not need still allow.
pub async fn checks_fail_closed(store: Arc<dyn AccessStore>) {
    let user = fresh_user("acc-closed");
    let (mine, other) = (fresh_id("acc-closed-mine"), fresh_id("acc-closed-other"));
    store
        .create_user(NewUser::new(user.clone(), hash("pw")))
        .await
        .expect("create");
    for devices in [
        DeviceSet::Device(mine.clone()),
        DeviceSet::Node("building=HQ".parse().expect("node")),
    ] {
        store
            .add_grant(Grant::new(user.clone(), role("operator"), devices))
            .await
            .expect("grant");
    }
    let audit = MemoryAuditSink::new();
    let access = AccessControl::new(Arc::clone(&store), Arc::new(Unreachable))
        .with_audit(Arc::new(audit.clone()));
    let invoke = Permission::InvokeMethod;
    assert_eq!(
        access.check(&user, invoke, &Target::Device(mine)).await,
        Decision::Allow,
        "a device grant needs no resolver"
    );
    assert_eq!(
        access.check(&user, invoke, &Target::Device(other)).await,
        Decision::Deny(DenyReason::Unavailable)
    );
    let records = audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].error, "unavailable");
    store.delete_user(&user).await.expect("cleanup");
}

/// Logins, sessions and checks through an [`AccessControl`] over `store`: every kind of grant,
/// denials audited, sessions ended by logout and by a password change.
pub async fn checks_through_access_control(store: Arc<dyn AccessStore>) {
    let (olga, vera) = (fresh_user("acc-olga"), fresh_user("acc-vera"));
    let (pump, fan, tank) = (
        fresh_id("acc-pump"),
        fresh_id("acc-fan"),
        fresh_id("acc-tank"),
    );
    let query = "SELECT * FROM devices WHERE metadata.kind = 'tank'";
    let sets = StaticDeviceSets::new()
        .with_metadata(pump.clone(), [("building", "HQ"), ("floor", "3")])
        .with_metadata(fan.clone(), [("building", "HQ"), ("floor", "1")])
        .with_query(query, [tank.clone()]);
    let audit = MemoryAuditSink::new();
    let access = AccessControl::new(Arc::clone(&store), Arc::new(sets))
        .with_audit(Arc::new(audit.clone()))
        .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
        .expect("config");
    access
        .create_user(olga.clone(), "olga's password")
        .await
        .expect("create");
    access
        .create_user(vera.clone(), "vera's password")
        .await
        .expect("create");
    let node = DeviceSet::Node("building=HQ/floor=3".parse().expect("node"));
    for grant in [
        Grant::new(olga.clone(), role("operator"), node),
        Grant::new(
            olga.clone(),
            role("operator"),
            DeviceSet::query(query).expect("q"),
        ),
        Grant::new(vera.clone(), role("viewer"), DeviceSet::All),
        Grant::new(
            vera.clone(),
            role("operator"),
            DeviceSet::Device(fan.clone()),
        ),
    ] {
        access.grant(grant).await.expect("grant");
    }
    let on = |d: &iot_core::DeviceId| Target::Device(d.clone());
    let invoke = Permission::InvokeMethod;
    assert_eq!(
        access.check(&olga, invoke, &on(&pump)).await,
        Decision::Allow
    );
    assert_eq!(
        access.check(&olga, invoke, &on(&tank)).await,
        Decision::Allow
    );
    assert_eq!(
        access.check(&olga, invoke, &on(&fan)).await,
        Decision::Deny(DenyReason::NotGranted)
    );
    assert_eq!(
        access.check(&olga, Permission::Read, &Target::Hub).await,
        Decision::Deny(DenyReason::NotGranted),
        "only a grant over all devices covers the hub"
    );
    assert_eq!(
        access
            .check(&olga, Permission::ManageDevices, &on(&pump))
            .await,
        Decision::Deny(DenyReason::NotGranted)
    );
    assert_eq!(
        access.check(&vera, Permission::Read, &Target::Hub).await,
        Decision::Allow
    );
    assert_eq!(
        access.check(&vera, invoke, &on(&fan)).await,
        Decision::Allow
    );
    assert_eq!(
        access.check(&vera, invoke, &on(&pump)).await,
        Decision::Deny(DenyReason::NotGranted)
    );
    let ghost = fresh_user("acc-ghost");
    assert_eq!(
        access.check(&ghost, Permission::Read, &on(&pump)).await,
        Decision::Deny(DenyReason::UnknownUser)
    );
    let denied = audit.records();
    assert_eq!(
        denied.len(),
        5,
        "every denial is audited, nothing else: {denied:?}"
    );
    assert!(denied.iter().all(|r| r.outcome == "denied"));
    assert_eq!(denied[3].actor, vera.as_str());
    assert_eq!(denied[3].operation, "invokeMethod");
    assert_eq!(denied[3].device_id.as_deref(), Some(pump.as_str()));
    assert_eq!(denied[3].error, "not_granted");
    let listed = access
        .allowed_devices(&olga, invoke, [fan.clone(), pump.clone(), tank.clone()])
        .await;
    assert_eq!(
        listed,
        [pump.clone(), tank.clone()],
        "a listing keeps what the user may use"
    );
    assert!(
        access
            .allowed_devices(&ghost, Permission::Read, [pump.clone()])
            .await
            .is_empty()
    );
    assert_eq!(
        audit.records().len(),
        5,
        "filtering a listing audits nothing"
    );

    // Sessions.
    let (token, session) = access
        .login(olga.as_str(), "olga's password")
        .await
        .expect("login");
    assert_eq!(session.user, olga);
    let (seen, decision) = access
        .check_session(token.expose(), invoke, &on(&pump))
        .await
        .expect("session accepted");
    assert_eq!((seen, decision), (session.clone(), Decision::Allow));
    for (user, password) in [
        (olga.as_str(), "wrong"),
        (ghost.as_str(), "olga's password"),
        ("not a name!", "x"),
    ] {
        assert!(matches!(
            access.login(user, password).await,
            Err(Error::LoginRefused { .. })
        ));
    }
    let logins = audit
        .records()
        .into_iter()
        .filter(|r| r.operation == "login")
        .count();
    assert_eq!(logins, 3, "refused logins are audited");
    let long = "x".repeat(10_000);
    for bad in ["", "short", long.as_str()] {
        assert!(matches!(
            access.session(bad).await,
            Err(Error::SessionRefused { .. })
        ));
    }
    let forged = SessionToken::generate();
    assert!(matches!(
        access.session(forged.expose()).await,
        Err(Error::SessionRefused { .. })
    ));
    assert!(access.logout(token.expose()).await.expect("logout"));
    assert!(matches!(
        access
            .check_session(token.expose(), invoke, &on(&pump))
            .await,
        Err(Error::SessionRefused { .. })
    ));
    let (token, _) = access
        .login(olga.as_str(), "olga's password")
        .await
        .expect("login");
    access
        .set_password(&olga, "a new one")
        .await
        .expect("new password");
    assert!(access.session(token.expose()).await.is_err());
    assert!(
        access
            .login(olga.as_str(), "olga's password")
            .await
            .is_err()
    );
    assert!(access.login(olga.as_str(), "a new one").await.is_ok());

    // A disabled user is denied everything.
    store.set_disabled(&vera, true).await.expect("disable");
    assert_eq!(
        access.check(&vera, Permission::Read, &on(&fan)).await,
        Decision::Deny(DenyReason::UserDisabled)
    );
    assert!(
        access
            .login(vera.as_str(), "vera's password")
            .await
            .is_err()
    );
    for user in [&olga, &vera] {
        store.delete_user(user).await.expect("cleanup");
    }
}

/// Users, custom roles, grants and sessions written before a reopen are there after it; what
/// was deleted stays deleted.
pub async fn access_survives_reopen<F, Fut>(store: Arc<dyn AccessStore>, reopen: F)
where
    F: FnOnce(Arc<dyn AccessStore>) -> Fut,
    Fut: Future<Output = Option<Arc<dyn AccessStore>>>,
{
    let (kept, gone) = (fresh_user("acc-kept"), fresh_user("acc-gone"));
    let custom = fresh_role("acc-kept-role");
    let kept_user = store
        .create_user(NewUser::new(kept.clone(), hash("kept")))
        .await
        .expect("create");
    store
        .create_user(NewUser::new(gone.clone(), hash("gone")))
        .await
        .expect("create");
    store
        .put_role(Role::new(custom.clone(), [Permission::UpdateTwin]))
        .await
        .expect("role");
    let grants = [
        Grant::new(kept.clone(), custom.clone(), DeviceSet::All),
        Grant::new(
            kept.clone(),
            role("viewer"),
            DeviceSet::query("SELECT * FROM devices WHERE metadata.x = 1").expect("q"),
        ),
    ];
    for g in &grants {
        store.add_grant(g.clone()).await.expect("grant");
    }
    let (_, session) = session_for(&kept, Timestamp::now(), Duration::from_secs(3600));
    store
        .insert_session(session.clone())
        .await
        .expect("session");
    let rewritten = store.set_disabled(&kept, false).await.expect("write");
    assert_eq!(rewritten.password, kept_user.password);
    store.delete_user(&gone).await.expect("delete");
    let Some(store) = reopen(store).await else {
        return;
    };
    assert_eq!(
        store.get_user(&kept).await.expect("get"),
        Some(rewritten),
        "the user and their password hash survive"
    );
    assert!(store.get_user(&gone).await.expect("get").is_none());
    let mut expected = grants.to_vec();
    expected.sort();
    assert_eq!(store.grants_of(&kept).await.expect("grants"), expected);
    assert!(store.get_role(&custom).await.expect("role").is_some());
    assert_eq!(
        store.get_session(&session.digest).await.expect("get"),
        Some(session.clone())
    );
    store.delete_user(&kept).await.expect("cleanup");
    store.delete_role(&custom).await.expect("cleanup");
}
