//! The access rules shared by the memory and file stores: one in-memory state, changed only by
//! journaled operations (the file store journals them; the memory store applies them at once).
//!
//! # Invariants
//!
//! * Every grant names an existing user and an existing role (built-in or custom): deleting a
//!   user or a role deletes its grants in the same operation, so replay keeps this too.
//! * Every session belongs to an existing user; `by_user` indexes exactly the sessions held.
//! * A password change or disabling a user removes their sessions in the same batch.
//! * No password or token is held: users keep argon2id PHC strings, sessions their token's
//!   SHA-256 digest.

use std::collections::{BTreeMap, BTreeSet};

use iot_core::Timestamp;
use iot_core::storage::Journaled;
use serde::{Deserialize, Serialize};

use super::grant::Grant;
use super::names::{RoleName, UserName};
use super::permission::Permissions;
use super::role::Role;
use super::session::{Session, SessionDigest};
use super::user::{NewUser, User};
use super::{MAX_GRANTS_PER_USER, MAX_SESSIONS_PER_USER, UserAccess};
use crate::credentials::PassphraseHash;
use crate::error::{Error, Result};

/// One change, as journaled: whole records, so replay needs no rules beyond the cascades.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    PutUser(StoredUser),
    /// Removes the user with their grants and sessions.
    RemoveUser(UserName),
    PutRole(Role),
    /// Removes the role with every grant of it.
    RemoveRole(RoleName),
    AddGrant(Grant),
    RemoveGrant(Grant),
    PutSession(StoredSession),
    RemoveSession(String),
}

/// A user in the journal: the password as its PHC string (salted argon2id, never the password).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredUser {
    name: UserName,
    password: String,
    disabled: bool,
    created_us: u64,
    updated_us: u64,
}

impl std::fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl StoredUser {
    fn of(u: &User) -> Self {
        StoredUser {
            name: u.name.clone(),
            password: u.password.expose_phc().to_owned(),
            disabled: u.disabled,
            created_us: u.created_at.as_unix_micros(),
            updated_us: u.updated_at.as_unix_micros(),
        }
    }

    fn record(self) -> Option<User> {
        Some(User {
            password: PassphraseHash::from_phc(&self.password).ok()?,
            name: self.name,
            disabled: self.disabled,
            created_at: Timestamp::from_unix_micros(self.created_us),
            updated_at: Timestamp::from_unix_micros(self.updated_us),
        })
    }
}

/// A session in the journal: the token's digest, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    digest: String,
    user: UserName,
    created_us: u64,
    expires_us: u64,
}

impl StoredSession {
    fn of(s: &Session) -> Self {
        StoredSession {
            digest: s.digest.to_hex(),
            user: s.user.clone(),
            created_us: s.created_at.as_unix_micros(),
            expires_us: s.expires_at.as_unix_micros(),
        }
    }

    fn record(self) -> Option<Session> {
        Some(Session::new(
            SessionDigest::from_hex(&self.digest).ok()?,
            self.user,
            Timestamp::from_unix_micros(self.created_us),
            Timestamp::from_unix_micros(self.expires_us),
        ))
    }
}

/// Users, custom roles, grants and sessions.
#[derive(Debug, Default)]
pub(crate) struct AccessState {
    users: BTreeMap<UserName, User>,
    /// Custom roles only; built-ins are constants.
    roles: BTreeMap<RoleName, Role>,
    grants: BTreeMap<UserName, BTreeSet<Grant>>,
    sessions: BTreeMap<SessionDigest, Session>,
    by_user: BTreeMap<UserName, BTreeSet<SessionDigest>>,
}

/// What a write plans: the operations to journal, and what to return once they are durable.
pub(crate) type Plan<T> = (Vec<Op>, T);

impl AccessState {
    fn user(&self, name: &UserName) -> Result<&User> {
        self.users
            .get(name)
            .ok_or_else(|| Error::UserNotFound { user: name.clone() })
    }

    fn sessions_of(&self, name: &UserName) -> impl Iterator<Item = &Session> {
        self.by_user
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|d| self.sessions.get(d))
    }

    fn remove_sessions_ops(&self, name: &UserName) -> Vec<Op> {
        self.sessions_of(name)
            .map(|s| Op::RemoveSession(s.digest.to_hex()))
            .collect()
    }

    pub(crate) fn get_user(&self, name: &UserName) -> Option<User> {
        self.users.get(name).cloned()
    }

    pub(crate) fn list_users(&self) -> Vec<User> {
        self.users.values().cloned().collect()
    }

    pub(crate) fn get_role(&self, name: &RoleName) -> Option<Role> {
        Role::builtin(name).or_else(|| self.roles.get(name).cloned())
    }

    pub(crate) fn list_roles(&self) -> Vec<Role> {
        let mut roles = Role::builtins();
        roles.extend(self.roles.values().cloned());
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        roles
    }

    pub(crate) fn grants_of(&self, name: &UserName) -> Vec<Grant> {
        self.grants
            .get(name)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn get_session(&self, digest: &SessionDigest) -> Option<Session> {
        self.sessions.get(digest).cloned()
    }

    pub(crate) fn access_of(&self, name: &UserName) -> Option<UserAccess> {
        let user = self.users.get(name)?.clone();
        let grants = self
            .grants
            .get(name)
            .into_iter()
            .flatten()
            .map(|g| {
                let permissions = self
                    .get_role(&g.role)
                    .map_or(Permissions::NONE, |r| r.permissions);
                (g.clone(), permissions)
            })
            .collect();
        Some(UserAccess { user, grants })
    }

    pub(crate) fn plan_create_user(&self, new: NewUser) -> Result<Plan<User>> {
        if self.users.contains_key(&new.name) {
            return Err(Error::UserAlreadyExists { user: new.name });
        }
        let now = Timestamp::now();
        let user = User {
            name: new.name,
            password: new.password,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        Ok((vec![Op::PutUser(StoredUser::of(&user))], user))
    }

    pub(crate) fn plan_set_password(
        &self,
        name: &UserName,
        password: PassphraseHash,
    ) -> Result<Plan<User>> {
        let user = User {
            password,
            updated_at: Timestamp::now(),
            ..self.user(name)?.clone()
        };
        // A new password ends every session opened with the old one.
        let mut ops = self.remove_sessions_ops(name);
        ops.push(Op::PutUser(StoredUser::of(&user)));
        Ok((ops, user))
    }

    pub(crate) fn plan_set_disabled(&self, name: &UserName, disabled: bool) -> Result<Plan<User>> {
        let user = User {
            disabled,
            updated_at: Timestamp::now(),
            ..self.user(name)?.clone()
        };
        let mut ops = if disabled {
            self.remove_sessions_ops(name)
        } else {
            Vec::new()
        };
        ops.push(Op::PutUser(StoredUser::of(&user)));
        Ok((ops, user))
    }

    pub(crate) fn plan_delete_user(&self, name: &UserName) -> Result<Plan<()>> {
        self.user(name)?;
        Ok((vec![Op::RemoveUser(name.clone())], ()))
    }

    pub(crate) fn plan_put_role(&self, role: Role) -> Result<Plan<()>> {
        if Role::is_builtin(&role.name) {
            return Err(Error::invalid(format!(
                "{} is a built-in role and cannot be changed",
                role.name
            )));
        }
        Ok((vec![Op::PutRole(role)], ()))
    }

    pub(crate) fn plan_delete_role(&self, name: &RoleName) -> Result<Plan<()>> {
        if Role::is_builtin(name) {
            return Err(Error::invalid(format!(
                "{name} is a built-in role and cannot be deleted"
            )));
        }
        if !self.roles.contains_key(name) {
            return Err(Error::RoleNotFound { role: name.clone() });
        }
        Ok((vec![Op::RemoveRole(name.clone())], ()))
    }

    pub(crate) fn plan_add_grant(&self, grant: Grant) -> Result<Plan<bool>> {
        grant.devices.validate()?;
        self.user(&grant.user)?;
        if self.get_role(&grant.role).is_none() {
            return Err(Error::RoleNotFound { role: grant.role });
        }
        let held = self.grants.get(&grant.user);
        if held.is_some_and(|g| g.contains(&grant)) {
            return Ok((Vec::new(), false));
        }
        if held.is_some_and(|g| g.len() >= MAX_GRANTS_PER_USER) {
            return Err(Error::invalid(format!(
                "user {} already has {MAX_GRANTS_PER_USER} grants",
                grant.user
            )));
        }
        Ok((vec![Op::AddGrant(grant)], true))
    }

    pub(crate) fn plan_remove_grant(&self, grant: &Grant) -> Result<Plan<bool>> {
        if self
            .grants
            .get(&grant.user)
            .is_some_and(|g| g.contains(grant))
        {
            Ok((vec![Op::RemoveGrant(grant.clone())], true))
        } else {
            Ok((Vec::new(), false))
        }
    }

    pub(crate) fn plan_insert_session(&self, session: Session) -> Result<Plan<()>> {
        let user = self.user(&session.user)?;
        if user.disabled {
            return Err(Error::LoginRefused {
                user: session.user.to_string(),
            });
        }
        if session.expires_at <= session.created_at {
            return Err(Error::invalid("a session must expire after it starts"));
        }
        // Expired sessions of the user go first; if the user still holds the most allowed, the
        // oldest is logged out rather than the new login refused.
        let mut live: Vec<&Session> = Vec::new();
        let mut ops = Vec::new();
        for s in self.sessions_of(&session.user) {
            if s.is_expired(session.created_at) {
                ops.push(Op::RemoveSession(s.digest.to_hex()));
            } else {
                live.push(s);
            }
        }
        live.sort_by_key(|s| s.created_at);
        let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS_PER_USER);
        ops.extend(
            live.iter()
                .take(excess)
                .map(|s| Op::RemoveSession(s.digest.to_hex())),
        );
        ops.push(Op::PutSession(StoredSession::of(&session)));
        Ok((ops, ()))
    }

    pub(crate) fn plan_revoke_session(&self, digest: &SessionDigest) -> Result<Plan<bool>> {
        if self.sessions.contains_key(digest) {
            Ok((vec![Op::RemoveSession(digest.to_hex())], true))
        } else {
            Ok((Vec::new(), false))
        }
    }

    pub(crate) fn plan_revoke_sessions_of(&self, name: &UserName) -> Result<Plan<usize>> {
        let ops = self.remove_sessions_ops(name);
        let count = ops.len();
        Ok((ops, count))
    }

    pub(crate) fn plan_purge_expired(&self, now: Timestamp) -> Result<Plan<usize>> {
        let ops: Vec<Op> = self
            .sessions
            .values()
            .filter(|s| s.is_expired(now))
            .map(|s| Op::RemoveSession(s.digest.to_hex()))
            .collect();
        let count = ops.len();
        Ok((ops, count))
    }

    fn remove_session(&mut self, digest: &SessionDigest) {
        if let Some(s) = self.sessions.remove(digest)
            && let Some(set) = self.by_user.get_mut(&s.user)
        {
            set.remove(digest);
            if set.is_empty() {
                self.by_user.remove(&s.user);
            }
        }
    }
}

impl Journaled for AccessState {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            // A record that does not decode was never written by this store (it checks hashes
            // and digests before journaling them); replay skips it rather than panic.
            Op::PutUser(stored) => {
                if let Some(user) = stored.record() {
                    self.users.insert(user.name.clone(), user);
                }
            }
            Op::RemoveUser(name) => {
                self.users.remove(&name);
                self.grants.remove(&name);
                for digest in self.by_user.remove(&name).unwrap_or_default() {
                    self.sessions.remove(&digest);
                }
            }
            Op::PutRole(role) => {
                self.roles.insert(role.name.clone(), role);
            }
            Op::RemoveRole(name) => {
                self.roles.remove(&name);
                self.grants.retain(|_, held| {
                    held.retain(|g| g.role != name);
                    !held.is_empty()
                });
            }
            Op::AddGrant(grant) => {
                self.grants
                    .entry(grant.user.clone())
                    .or_default()
                    .insert(grant);
            }
            Op::RemoveGrant(grant) => {
                if let Some(held) = self.grants.get_mut(&grant.user) {
                    held.remove(&grant);
                    if held.is_empty() {
                        self.grants.remove(&grant.user);
                    }
                }
            }
            Op::PutSession(stored) => {
                if let Some(session) = stored.record() {
                    self.by_user
                        .entry(session.user.clone())
                        .or_default()
                        .insert(session.digest);
                    self.sessions.insert(session.digest, session);
                }
            }
            Op::RemoveSession(hex) => {
                if let Ok(digest) = SessionDigest::from_hex(&hex) {
                    self.remove_session(&digest);
                }
            }
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        // Roles and users before the grants and sessions that name them.
        let roles = self.roles.values().cloned().map(Op::PutRole);
        let users = self.users.values().map(|u| Op::PutUser(StoredUser::of(u)));
        let grants = self.grants.values().flatten().cloned().map(Op::AddGrant);
        let sessions = self
            .sessions
            .values()
            .map(|s| Op::PutSession(StoredSession::of(s)));
        roles.chain(users).chain(grants).chain(sessions).collect()
    }
}
