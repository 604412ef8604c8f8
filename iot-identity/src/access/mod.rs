#![doc = include_str!("../../../docs/access.md")]

mod audit;
mod control;
mod decision;
mod device_sets;
mod file;
mod grant;
mod memory;
mod names;
mod permission;
mod role;
mod session;
mod state;
mod subscription;
mod subscription_file;
mod user;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::Timestamp;

use crate::credentials::PassphraseHash;
use crate::error::Result;

pub use audit::{AccessAuditRecord, AuditSink, LogAuditSink, MemoryAuditSink, TracingAuditSink};
pub use control::{AccessConfig, AccessControl};
pub use decision::{Decision, DenyReason, Target};
pub use device_sets::{DeviceSets, StaticDeviceSets};
pub use file::{FileAccessStore, FileAccessStoreConfig};
pub use grant::{DeviceSet, Grant, HierarchyNode, MAX_NODE_DEPTH, MAX_NODE_LEN, MAX_QUERY_LEN};
pub use memory::MemoryAccessStore;
pub use names::{MAX_ROLE_NAME_LEN, MAX_USER_NAME_LEN, RoleName, UserName};
pub use permission::{Permission, Permissions};
pub use role::{ADMIN, OPERATOR, Role, VIEWER};
pub use session::{Session, SessionDigest, SessionToken, TOKEN_LEN};
pub use subscription::{
    MAX_SUBSCRIPTION_DEVICES, MAX_SUBSCRIPTIONS_PER_USER, MAX_WEBHOOK_URL_LEN,
    MemorySubscriptionStore, Subscription, SubscriptionSecret, SubscriptionStore, SubscriptionView,
    WEBHOOK_SECRET_LEN,
};
pub use subscription_file::FileSubscriptionStore;
pub use user::{NewUser, User};

/// The most grants one user may hold.
pub const MAX_GRANTS_PER_USER: usize = 1000;
/// The most live sessions one user may hold; a login beyond it logs out their oldest session.
pub const MAX_SESSIONS_PER_USER: usize = 100;

/// A user with their grants, each with the permissions of its role (none if the role is gone):
/// everything a check needs, read at once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserAccess {
    /// The user.
    pub user: User,
    /// Their grants and what each allows.
    pub grants: Vec<(Grant, Permissions)>,
}

impl UserAccess {
    /// A user and their grants (for stores outside this crate).
    pub fn new(user: User, grants: Vec<(Grant, Permissions)>) -> Self {
        UserAccess { user, grants }
    }
}

/// Where users, roles, grants and sessions live.
///
/// # Contract
///
/// [`testkit::access`](crate::testkit) (feature `testkit`) checks these against any
/// implementation.
///
/// * **Users** are unique by name ([`Error::UserAlreadyExists`](crate::Error::UserAlreadyExists));
///   writes to a missing user fail with [`Error::UserNotFound`](crate::Error::UserNotFound).
///   A store keeps the password's hash only, and gives it back unchanged.
/// * **Sessions end** when their user's password changes, when the user is disabled or deleted,
///   when revoked, and (for [`get_session`](AccessStore::get_session) callers) at expiry; a user
///   holds at most [`MAX_SESSIONS_PER_USER`], a new one displacing the oldest. A disabled or
///   missing user gets no new session.
/// * **Roles**: `admin`, `operator` and `viewer` always exist and cannot be replaced or deleted
///   ([`Error::InvalidInput`](crate::Error::InvalidInput)); custom roles are created or replaced by
///   [`put_role`](AccessStore::put_role). Listing is by name.
/// * **Grants** name an existing user and role (else `UserNotFound` / `RoleNotFound`); adding one
///   twice is a no-op that returns `false`. Deleting a user or a role deletes its grants.
///   A user holds at most [`MAX_GRANTS_PER_USER`].
/// * **Durability**: a persistent store keeps every acknowledged write across a reopen.
#[async_trait]
pub trait AccessStore: Send + Sync + Debug + 'static {
    /// Creates a user (enabled).
    async fn create_user(&self, user: NewUser) -> Result<User>;
    /// The user called `name`, or `None`.
    async fn get_user(&self, name: &UserName) -> Result<Option<User>>;
    /// Every user, by name.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Replaces a user's password hash and ends their sessions.
    async fn set_password(&self, name: &UserName, password: PassphraseHash) -> Result<User>;
    /// Disables (ending their sessions) or enables a user.
    async fn set_disabled(&self, name: &UserName, disabled: bool) -> Result<User>;
    /// Deletes a user with their grants and sessions.
    async fn delete_user(&self, name: &UserName) -> Result<()>;
    /// Creates or replaces a custom role.
    async fn put_role(&self, role: Role) -> Result<()>;
    /// The role called `name` (built-in or custom), or `None`.
    async fn get_role(&self, name: &RoleName) -> Result<Option<Role>>;
    /// Every role, built-in and custom, by name.
    async fn list_roles(&self) -> Result<Vec<Role>>;
    /// Deletes a custom role with every grant of it.
    async fn delete_role(&self, name: &RoleName) -> Result<()>;
    /// Adds a grant; `false` if the user held it already.
    async fn add_grant(&self, grant: Grant) -> Result<bool>;
    /// Removes a grant; `false` if the user did not hold it.
    async fn remove_grant(&self, grant: &Grant) -> Result<bool>;
    /// The grants of `user`, in order.
    async fn grants_of(&self, user: &UserName) -> Result<Vec<Grant>>;
    /// Stores a new session.
    async fn insert_session(&self, session: Session) -> Result<()>;
    /// The session whose token has `digest`, expired or not, or `None`.
    async fn get_session(&self, digest: &SessionDigest) -> Result<Option<Session>>;
    /// Ends one session; `false` if there was none.
    async fn revoke_session(&self, digest: &SessionDigest) -> Result<bool>;
    /// Ends every session of `user`; returns how many.
    async fn revoke_sessions_of(&self, user: &UserName) -> Result<usize>;
    /// Deletes the sessions expired at `now`; returns how many.
    async fn purge_expired_sessions(&self, now: Timestamp) -> Result<usize>;

    /// The user with their grants and the permissions of each grant's role. The provided method
    /// reads them one by one; the stores here read them in one consistent step.
    async fn access_of(&self, user: &UserName) -> Result<Option<UserAccess>> {
        let Some(found) = self.get_user(user).await? else {
            return Ok(None);
        };
        let mut grants = Vec::new();
        for grant in self.grants_of(user).await? {
            let permissions = self
                .get_role(&grant.role)
                .await?
                .map_or(Permissions::NONE, |r| r.permissions);
            grants.push((grant, permissions));
        }
        Ok(Some(UserAccess::new(found, grants)))
    }
}

macro_rules! forward_access {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: AccessStore + ?Sized> AccessStore for $ptr<T> {
            async fn create_user(&self, user: NewUser) -> Result<User> {
                (**self).create_user(user).await
            }
            async fn get_user(&self, name: &UserName) -> Result<Option<User>> {
                (**self).get_user(name).await
            }
            async fn list_users(&self) -> Result<Vec<User>> {
                (**self).list_users().await
            }
            async fn set_password(
                &self,
                name: &UserName,
                password: PassphraseHash,
            ) -> Result<User> {
                (**self).set_password(name, password).await
            }
            async fn set_disabled(&self, name: &UserName, disabled: bool) -> Result<User> {
                (**self).set_disabled(name, disabled).await
            }
            async fn delete_user(&self, name: &UserName) -> Result<()> {
                (**self).delete_user(name).await
            }
            async fn put_role(&self, role: Role) -> Result<()> {
                (**self).put_role(role).await
            }
            async fn get_role(&self, name: &RoleName) -> Result<Option<Role>> {
                (**self).get_role(name).await
            }
            async fn list_roles(&self) -> Result<Vec<Role>> {
                (**self).list_roles().await
            }
            async fn delete_role(&self, name: &RoleName) -> Result<()> {
                (**self).delete_role(name).await
            }
            async fn add_grant(&self, grant: Grant) -> Result<bool> {
                (**self).add_grant(grant).await
            }
            async fn remove_grant(&self, grant: &Grant) -> Result<bool> {
                (**self).remove_grant(grant).await
            }
            async fn grants_of(&self, user: &UserName) -> Result<Vec<Grant>> {
                (**self).grants_of(user).await
            }
            async fn insert_session(&self, session: Session) -> Result<()> {
                (**self).insert_session(session).await
            }
            async fn get_session(&self, digest: &SessionDigest) -> Result<Option<Session>> {
                (**self).get_session(digest).await
            }
            async fn revoke_session(&self, digest: &SessionDigest) -> Result<bool> {
                (**self).revoke_session(digest).await
            }
            async fn revoke_sessions_of(&self, user: &UserName) -> Result<usize> {
                (**self).revoke_sessions_of(user).await
            }
            async fn purge_expired_sessions(&self, now: Timestamp) -> Result<usize> {
                (**self).purge_expired_sessions(now).await
            }
            async fn access_of(&self, user: &UserName) -> Result<Option<UserAccess>> {
                (**self).access_of(user).await
            }
        }
    };
}

forward_access!(Arc);
forward_access!(Box);

/// Implements [`AccessStore`] for a store with `async fn write(plan)` and `async fn read(f)` over
/// [`state::AccessState`]: the memory and file stores differ only in those two.
macro_rules! access_store_over_state {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::access::AccessStore for $store {
            async fn create_user(&self, user: NewUser) -> Result<User> {
                self.write(|s| s.plan_create_user(user)).await
            }
            async fn get_user(&self, name: &UserName) -> Result<Option<User>> {
                self.read(|s| s.get_user(name)).await
            }
            async fn list_users(&self) -> Result<Vec<User>> {
                self.read(|s| s.list_users()).await
            }
            async fn set_password(
                &self,
                name: &UserName,
                password: PassphraseHash,
            ) -> Result<User> {
                self.write(|s| s.plan_set_password(name, password)).await
            }
            async fn set_disabled(&self, name: &UserName, disabled: bool) -> Result<User> {
                self.write(|s| s.plan_set_disabled(name, disabled)).await
            }
            async fn delete_user(&self, name: &UserName) -> Result<()> {
                self.write(|s| s.plan_delete_user(name)).await
            }
            async fn put_role(&self, role: Role) -> Result<()> {
                self.write(|s| s.plan_put_role(role)).await
            }
            async fn get_role(&self, name: &RoleName) -> Result<Option<Role>> {
                self.read(|s| s.get_role(name)).await
            }
            async fn list_roles(&self) -> Result<Vec<Role>> {
                self.read(|s| s.list_roles()).await
            }
            async fn delete_role(&self, name: &RoleName) -> Result<()> {
                self.write(|s| s.plan_delete_role(name)).await
            }
            async fn add_grant(&self, grant: Grant) -> Result<bool> {
                self.write(|s| s.plan_add_grant(grant)).await
            }
            async fn remove_grant(&self, grant: &Grant) -> Result<bool> {
                self.write(|s| s.plan_remove_grant(grant)).await
            }
            async fn grants_of(&self, user: &UserName) -> Result<Vec<Grant>> {
                self.read(|s| s.grants_of(user)).await
            }
            async fn insert_session(&self, session: Session) -> Result<()> {
                self.write(|s| s.plan_insert_session(session)).await
            }
            async fn get_session(&self, digest: &SessionDigest) -> Result<Option<Session>> {
                self.read(|s| s.get_session(digest)).await
            }
            async fn revoke_session(&self, digest: &SessionDigest) -> Result<bool> {
                self.write(|s| s.plan_revoke_session(digest)).await
            }
            async fn revoke_sessions_of(&self, user: &UserName) -> Result<usize> {
                self.write(|s| s.plan_revoke_sessions_of(user)).await
            }
            async fn purge_expired_sessions(&self, now: Timestamp) -> Result<usize> {
                self.write(|s| s.plan_purge_expired(now)).await
            }
            async fn access_of(&self, user: &UserName) -> Result<Option<UserAccess>> {
                self.read(|s| s.access_of(user)).await
            }
        }
    };
}

pub(crate) use access_store_over_state;
