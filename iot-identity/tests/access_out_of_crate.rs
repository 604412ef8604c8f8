//! An `AccessStore` written outside the crate, with public API only, over one `Mutex`: proof
//! that an integrator can implement the trait (records, errors, limits) and that the suite runs
//! against it. It uses the trait's provided `access_of`, so the suite checks that too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::Timestamp;
use iot_identity::access::{
    AccessStore, Grant, MAX_GRANTS_PER_USER, MAX_SESSIONS_PER_USER, NewUser, Role, RoleName,
    Session, SessionDigest, User, UserName,
};
use iot_identity::{Error, PassphraseHash, Result, testkit};

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<UserName, User>,
    roles: BTreeMap<RoleName, Role>,
    grants: BTreeSet<Grant>,
    /// By the digest's hex (the digest type has no `Ord` promise to lean on here).
    sessions: BTreeMap<String, Session>,
}

#[derive(Debug, Default)]
struct MutexStore(Mutex<State>);

impl MutexStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn invalid(reason: &str) -> Error {
    Error::InvalidInput {
        reason: reason.to_owned(),
    }
}

impl State {
    fn user(&self, name: &UserName) -> Result<&User> {
        self.users
            .get(name)
            .ok_or_else(|| Error::UserNotFound { user: name.clone() })
    }

    fn end_sessions(&mut self, name: &UserName) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.user != *name);
        before - self.sessions.len()
    }

    fn replace_user(&mut self, name: &UserName, f: impl FnOnce(&User) -> User) -> Result<User> {
        let user = f(self.user(name)?);
        self.users.insert(name.clone(), user.clone());
        Ok(user)
    }
}

#[async_trait]
impl AccessStore for MutexStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        let mut s = self.lock();
        if s.users.contains_key(&user.name) {
            return Err(Error::UserAlreadyExists { user: user.name });
        }
        let now = Timestamp::now();
        let record = User::new(user.name.clone(), user.password, false, now, now);
        s.users.insert(user.name, record.clone());
        Ok(record)
    }

    async fn get_user(&self, name: &UserName) -> Result<Option<User>> {
        Ok(self.lock().users.get(name).cloned())
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        Ok(self.lock().users.values().cloned().collect())
    }

    async fn set_password(&self, name: &UserName, password: PassphraseHash) -> Result<User> {
        let mut s = self.lock();
        let user = s.replace_user(name, |u| {
            User::new(
                u.name.clone(),
                password,
                u.disabled,
                u.created_at,
                Timestamp::now(),
            )
        })?;
        s.end_sessions(name);
        Ok(user)
    }

    async fn set_disabled(&self, name: &UserName, disabled: bool) -> Result<User> {
        let mut s = self.lock();
        let user = s.replace_user(name, |u| {
            User::new(
                u.name.clone(),
                u.password.clone(),
                disabled,
                u.created_at,
                Timestamp::now(),
            )
        })?;
        if disabled {
            s.end_sessions(name);
        }
        Ok(user)
    }

    async fn delete_user(&self, name: &UserName) -> Result<()> {
        let mut s = self.lock();
        s.user(name)?;
        s.users.remove(name);
        s.grants.retain(|g| g.user != *name);
        s.end_sessions(name);
        Ok(())
    }

    async fn put_role(&self, role: Role) -> Result<()> {
        if Role::is_builtin(&role.name) {
            return Err(invalid("built-in roles cannot be changed"));
        }
        self.lock().roles.insert(role.name.clone(), role);
        Ok(())
    }

    async fn get_role(&self, name: &RoleName) -> Result<Option<Role>> {
        Ok(Role::builtin(name).or_else(|| self.lock().roles.get(name).cloned()))
    }

    async fn list_roles(&self) -> Result<Vec<Role>> {
        let mut roles = Role::builtins();
        roles.extend(self.lock().roles.values().cloned());
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(roles)
    }

    async fn delete_role(&self, name: &RoleName) -> Result<()> {
        if Role::is_builtin(name) {
            return Err(invalid("built-in roles cannot be deleted"));
        }
        let mut s = self.lock();
        if s.roles.remove(name).is_none() {
            return Err(Error::RoleNotFound { role: name.clone() });
        }
        s.grants.retain(|g| g.role != *name);
        Ok(())
    }

    async fn add_grant(&self, grant: Grant) -> Result<bool> {
        grant.devices.validate()?;
        let mut s = self.lock();
        s.user(&grant.user)?;
        if Role::builtin(&grant.role).is_none() && !s.roles.contains_key(&grant.role) {
            return Err(Error::RoleNotFound { role: grant.role });
        }
        if s.grants.contains(&grant) {
            return Ok(false);
        }
        if s.grants.iter().filter(|g| g.user == grant.user).count() >= MAX_GRANTS_PER_USER {
            return Err(invalid("too many grants"));
        }
        Ok(s.grants.insert(grant))
    }

    async fn remove_grant(&self, grant: &Grant) -> Result<bool> {
        Ok(self.lock().grants.remove(grant))
    }

    async fn grants_of(&self, user: &UserName) -> Result<Vec<Grant>> {
        Ok(self
            .lock()
            .grants
            .iter()
            .filter(|g| g.user == *user)
            .cloned()
            .collect())
    }

    async fn insert_session(&self, session: Session) -> Result<()> {
        let mut s = self.lock();
        if s.user(&session.user)?.disabled {
            return Err(Error::LoginRefused {
                user: session.user.to_string(),
            });
        }
        if session.expires_at <= session.created_at {
            return Err(invalid("a session must expire after it starts"));
        }
        let now = session.created_at;
        s.sessions
            .retain(|_, held| held.user != session.user || !held.is_expired(now));
        let mut live: Vec<(Timestamp, String)> = s
            .sessions
            .iter()
            .filter(|(_, held)| held.user == session.user)
            .map(|(key, held)| (held.created_at, key.clone()))
            .collect();
        live.sort();
        let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
        for (_, key) in live.into_iter().take(excess) {
            s.sessions.remove(&key);
        }
        s.sessions.insert(session.digest.to_hex(), session);
        Ok(())
    }

    async fn get_session(&self, digest: &SessionDigest) -> Result<Option<Session>> {
        Ok(self.lock().sessions.get(&digest.to_hex()).cloned())
    }

    async fn revoke_session(&self, digest: &SessionDigest) -> Result<bool> {
        Ok(self.lock().sessions.remove(&digest.to_hex()).is_some())
    }

    async fn revoke_sessions_of(&self, user: &UserName) -> Result<usize> {
        Ok(self.lock().end_sessions(user))
    }

    async fn purge_expired_sessions(&self, now: Timestamp) -> Result<usize> {
        let mut s = self.lock();
        let before = s.sessions.len();
        s.sessions.retain(|_, held| !held.is_expired(now));
        Ok(before - s.sessions.len())
    }
}

#[tokio::test]
async fn a_store_outside_the_crate_passes_the_suite() {
    let store: Arc<dyn AccessStore> = Arc::new(MutexStore::default());
    testkit::access::run_access(store, |_| async { None }).await;
}
