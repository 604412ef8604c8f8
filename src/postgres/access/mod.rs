//! [`PgAccessStore`]: the access matrix's users, roles, grants and sessions
//! ([`AccessStore`]) in PostgreSQL, shared by every process on the database.
//!
//! The rules are the trait's contract (and the memory store's): each write is one transaction,
//! and the cascades (a user's grants and sessions, a role's grants) are foreign keys, so they
//! happen in the statement that deletes. Writes that must count what a user holds (grants,
//! sessions) lock the user's row first, so two processes adding to one user serialise there.

mod rows;
mod schema;
mod subscriptions;

pub use subscriptions::PgSubscriptionStore;

use std::time::Duration;

use async_trait::async_trait;
use iot_core::Timestamp;
use iot_identity::access::{
    AccessStore, Grant, MAX_GRANTS_PER_USER, MAX_SESSIONS_PER_USER, NewUser, Role, RoleName,
    Session, SessionDigest, User, UserAccess, UserName,
};
use iot_identity::{Error, PassphraseHash, Result};

use crate::postgres::call::{Work, bounded};
use crate::postgres::values::to_micros;
use crate::postgres::{PgClient, PgError, PgPool, errors, migrate};

/// How a [`PgAccessStore`] is opened.
///
/// ```
/// use std::time::Duration;
/// use iot_sdk::postgres::PgAccessStoreConfig;
///
/// let config = PgAccessStoreConfig::default().call_timeout(Duration::from_secs(5));
/// assert_eq!(config.call_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgAccessStoreConfig {
    /// How long one call may work on its connection before it fails with a retryable error (the
    /// wait for a connection is bounded by the pool's own timeouts). Default 30 s.
    pub call_timeout: Duration,
}

impl Default for PgAccessStoreConfig {
    fn default() -> Self {
        PgAccessStoreConfig {
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl PgAccessStoreConfig {
    /// Sets [`call_timeout`](Self::call_timeout).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// An [`AccessStore`] in PostgreSQL. Every acknowledged write is committed before the call
/// returns; a session created through one process's store is found by every other's at once
/// (there is no cache: a check reads the user and grants in one statement).
///
/// The tables (`iot_access_*`) are described in `docs/postgres.md`; no password or session
/// token is stored, only the argon2id PHC string and the token's SHA-256 digest.
#[derive(Clone, Debug)]
pub struct PgAccessStore {
    pool: PgPool,
    config: PgAccessStoreConfig,
}

const USER_COLUMNS: &str = "name, password, disabled, created_us, updated_us";
const CREATE_USER: &str = "INSERT INTO iot_access_users \
     (name, password, disabled, created_us, updated_us) VALUES ($1, $2, false, $3, $3) \
     ON CONFLICT (name) DO NOTHING";
const SET_PASSWORD: &str = "UPDATE iot_access_users SET password = $2, updated_us = $3 \
     WHERE name = $1 RETURNING name, password, disabled, created_us, updated_us";
const SET_DISABLED: &str = "UPDATE iot_access_users SET disabled = $2, updated_us = $3 \
     WHERE name = $1 RETURNING name, password, disabled, created_us, updated_us";
const DELETE_USER: &str = "DELETE FROM iot_access_users WHERE name = $1";
const LOCK_USER: &str = "SELECT disabled FROM iot_access_users WHERE name = $1 FOR UPDATE";
const PUT_ROLE: &str = "INSERT INTO iot_access_roles (name, builtin, permissions) \
     VALUES ($1, false, $2) \
     ON CONFLICT (name) DO UPDATE SET permissions = excluded.permissions \
     WHERE NOT iot_access_roles.builtin";
const GET_ROLE: &str = "SELECT name, builtin, permissions FROM iot_access_roles WHERE name = $1";
const LIST_ROLES: &str = "SELECT name, builtin, permissions FROM iot_access_roles ORDER BY name";
const DELETE_ROLE: &str = "DELETE FROM iot_access_roles WHERE name = $1 AND NOT builtin";
const LOCK_ROLE: &str = "SELECT 1 FROM iot_access_roles WHERE name = $1 FOR SHARE";
const COUNT_GRANTS: &str = "SELECT count(*) FROM iot_access_grants WHERE user_name = $1";
const ADD_GRANT: &str = "INSERT INTO iot_access_grants (user_name, role, devices) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
const REMOVE_GRANT: &str =
    "DELETE FROM iot_access_grants WHERE user_name = $1 AND role = $2 AND devices = $3";
const GRANTS_OF: &str = "SELECT user_name, role, devices FROM iot_access_grants \
     WHERE user_name = $1";
/// The user, and each grant with its role, in one statement: one consistent snapshot.
const ACCESS_OF: &str = "SELECT u.name, u.password, u.disabled, u.created_us, u.updated_us, \
     g.role, g.devices, r.builtin, r.permissions \
     FROM iot_access_users u \
     LEFT JOIN iot_access_grants g ON g.user_name = u.name \
     LEFT JOIN iot_access_roles r ON r.name = g.role \
     WHERE u.name = $1";
const SESSION_COLUMNS: &str = "digest, user_name, created_us, expires_us";
const EXPIRE_SESSIONS_OF: &str =
    "DELETE FROM iot_access_sessions WHERE user_name = $1 AND expires_us <= $2";
/// A user's live sessions beyond the `$2` newest are logged out, oldest first.
const TRIM_SESSIONS_OF: &str = "DELETE FROM iot_access_sessions WHERE digest IN ( \
     SELECT digest FROM iot_access_sessions WHERE user_name = $1 \
     ORDER BY created_us DESC, digest DESC OFFSET $2)";
const INSERT_SESSION: &str = "INSERT INTO iot_access_sessions \
     (digest, user_name, created_us, expires_us) VALUES ($1, $2, $3, $4)";
const REVOKE_SESSION: &str = "DELETE FROM iot_access_sessions WHERE digest = $1";
const REVOKE_SESSIONS_OF: &str = "DELETE FROM iot_access_sessions WHERE user_name = $1";
const PURGE_SESSIONS: &str = "DELETE FROM iot_access_sessions WHERE expires_us <= $1";

fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::identity(PgError::query(context, e))
}

fn not_found(user: &UserName) -> Error {
    Error::UserNotFound { user: user.clone() }
}

fn builtin_refused(name: &RoleName, what: &str) -> Error {
    Error::InvalidInput {
        reason: format!("{name} is a built-in role and cannot be {what}"),
    }
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl PgAccessStore {
    /// Brings the schema up to date (safe when several processes open at once).
    pub async fn open(pool: PgPool, config: PgAccessStoreConfig) -> Result<Self> {
        tokio::time::timeout(
            config.call_timeout,
            migrate(&pool, schema::COMPONENT, schema::MIGRATIONS),
        )
        .await
        .map_err(|_| {
            errors::identity(PgError::Unreachable {
                target: pool.config().target(),
                reason: "the schema migration did not finish in time".into(),
            })
        })?
        .map_err(errors::identity)?;
        tracing::info!(target = %pool.config().target(), "PostgreSQL access store opened");
        Ok(PgAccessStore { pool, config })
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn call<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, Error>,
    ) -> Result<T> {
        bounded(&self.pool, self.config.call_timeout, errors::identity, work).await
    }

    /// Sets a user's column and, when `end_sessions`, ends their sessions, in one transaction.
    async fn update_user(
        &self,
        name: &UserName,
        sql: &'static str,
        value: UserValue,
        end_sessions: bool,
    ) -> Result<User> {
        let name = name.clone();
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(query("begin user update"))?;
                let now = to_micros(Timestamp::now());
                let row = match &value {
                    UserValue::Password(hash) => {
                        tx.query_opt(sql, &[&name.as_str(), &hash.expose_phc(), &now])
                            .await
                    }
                    UserValue::Disabled(disabled) => {
                        tx.query_opt(sql, &[&name.as_str(), disabled, &now]).await
                    }
                }
                .map_err(query("update a user"))?
                .ok_or_else(|| not_found(&name))?;
                if end_sessions {
                    tx.execute(REVOKE_SESSIONS_OF, &[&name.as_str()])
                        .await
                        .map_err(query("end a user's sessions"))?;
                }
                let user = rows::user(&row, 0)?;
                tx.commit().await.map_err(query("commit user update"))?;
                Ok(user)
            })
        })
        .await
    }
}

/// What [`PgAccessStore::update_user`] writes.
enum UserValue {
    Password(PassphraseHash),
    Disabled(bool),
}

#[async_trait]
impl AccessStore for PgAccessStore {
    async fn create_user(&self, user: NewUser) -> Result<User> {
        self.call(move |c| {
            Box::pin(async move {
                let now = Timestamp::now();
                let inserted = c
                    .execute(
                        CREATE_USER,
                        &[
                            &user.name.as_str(),
                            &user.password.expose_phc(),
                            &to_micros(now),
                        ],
                    )
                    .await
                    .map_err(query("create a user"))?;
                if inserted == 0 {
                    return Err(Error::UserAlreadyExists { user: user.name });
                }
                // Read back what was stored, so the timestamps are the stored microseconds.
                let sql = format!("SELECT {USER_COLUMNS} FROM iot_access_users WHERE name = $1");
                let row = c
                    .query_opt(&sql, &[&user.name.as_str()])
                    .await
                    .map_err(query("read a created user"))?
                    .ok_or_else(|| not_found(&user.name))?;
                rows::user(&row, 0)
            })
        })
        .await
    }

    async fn get_user(&self, name: &UserName) -> Result<Option<User>> {
        let name = name.clone();
        self.call(move |c| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM iot_access_users WHERE name = $1");
                let row = c
                    .query_opt(&sql, &[&name.as_str()])
                    .await
                    .map_err(query("get a user"))?;
                row.map(|r| rows::user(&r, 0)).transpose()
            })
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.call(move |c| {
            Box::pin(async move {
                let sql = format!("SELECT {USER_COLUMNS} FROM iot_access_users ORDER BY name");
                let found = c.query(&sql, &[]).await.map_err(query("list users"))?;
                found.iter().map(|r| rows::user(r, 0)).collect()
            })
        })
        .await
    }

    async fn set_password(&self, name: &UserName, password: PassphraseHash) -> Result<User> {
        // A new password ends every session opened with the old one.
        self.update_user(name, SET_PASSWORD, UserValue::Password(password), true)
            .await
    }

    async fn set_disabled(&self, name: &UserName, disabled: bool) -> Result<User> {
        self.update_user(name, SET_DISABLED, UserValue::Disabled(disabled), disabled)
            .await
    }

    async fn delete_user(&self, name: &UserName) -> Result<()> {
        let name = name.clone();
        self.call(move |c| {
            Box::pin(async move {
                // Grants and sessions go with the row (ON DELETE CASCADE).
                let deleted = c
                    .execute(DELETE_USER, &[&name.as_str()])
                    .await
                    .map_err(query("delete a user"))?;
                if deleted == 0 {
                    return Err(not_found(&name));
                }
                Ok(())
            })
        })
        .await
    }

    async fn put_role(&self, role: Role) -> Result<()> {
        if Role::is_builtin(&role.name) {
            return Err(builtin_refused(&role.name, "changed"));
        }
        let permissions = rows::permissions_text(&role)?;
        self.call(move |c| {
            Box::pin(async move {
                c.execute(PUT_ROLE, &[&role.name.as_str(), &permissions])
                    .await
                    .map_err(query("put a role"))?;
                Ok(())
            })
        })
        .await
    }

    async fn get_role(&self, name: &RoleName) -> Result<Option<Role>> {
        if let Some(role) = Role::builtin(name) {
            return Ok(Some(role));
        }
        let name = name.clone();
        self.call(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(GET_ROLE, &[&name.as_str()])
                    .await
                    .map_err(query("get a role"))?;
                row.map(|r| rows::role(r.get(0), r.get(1), r.get(2)))
                    .transpose()
            })
        })
        .await
    }

    async fn list_roles(&self) -> Result<Vec<Role>> {
        self.call(move |c| {
            Box::pin(async move {
                let found = c
                    .query(LIST_ROLES, &[])
                    .await
                    .map_err(query("list roles"))?;
                found
                    .iter()
                    .map(|r| rows::role(r.get(0), r.get(1), r.get(2)))
                    .collect()
            })
        })
        .await
    }

    async fn delete_role(&self, name: &RoleName) -> Result<()> {
        if Role::is_builtin(name) {
            return Err(builtin_refused(name, "deleted"));
        }
        let name = name.clone();
        self.call(move |c| {
            Box::pin(async move {
                // Its grants go with the row (ON DELETE CASCADE).
                let deleted = c
                    .execute(DELETE_ROLE, &[&name.as_str()])
                    .await
                    .map_err(query("delete a role"))?;
                if deleted == 0 {
                    return Err(Error::RoleNotFound { role: name });
                }
                Ok(())
            })
        })
        .await
    }

    async fn add_grant(&self, grant: Grant) -> Result<bool> {
        grant.devices.validate()?;
        let devices = rows::devices_text(&grant.devices)?;
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(query("begin grant"))?;
                let user = grant.user.as_str();
                // The user's row is the lock under which their grants are counted.
                tx.query_opt(LOCK_USER, &[&user])
                    .await
                    .map_err(query("lock a user"))?
                    .ok_or_else(|| not_found(&grant.user))?;
                // The role may not be deleted before this grant commits.
                if tx
                    .query_opt(LOCK_ROLE, &[&grant.role.as_str()])
                    .await
                    .map_err(query("lock a role"))?
                    .is_none()
                {
                    return Err(Error::RoleNotFound { role: grant.role });
                }
                let held: i64 = tx
                    .query_one(COUNT_GRANTS, &[&user])
                    .await
                    .map_err(query("count grants"))?
                    .get(0);
                let added = tx
                    .execute(ADD_GRANT, &[&user, &grant.role.as_str(), &devices])
                    .await
                    .map_err(query("add a grant"))?;
                if added == 0 {
                    return Ok(false);
                }
                if held >= i64::try_from(MAX_GRANTS_PER_USER).unwrap_or(i64::MAX) {
                    // Dropping the transaction undoes the insert.
                    return Err(Error::InvalidInput {
                        reason: format!(
                            "user {} already has {MAX_GRANTS_PER_USER} grants",
                            grant.user
                        ),
                    });
                }
                tx.commit().await.map_err(query("commit grant"))?;
                Ok(true)
            })
        })
        .await
    }

    async fn remove_grant(&self, grant: &Grant) -> Result<bool> {
        let grant = grant.clone();
        let devices = rows::devices_text(&grant.devices)?;
        self.call(move |c| {
            Box::pin(async move {
                let removed = c
                    .execute(
                        REMOVE_GRANT,
                        &[&grant.user.as_str(), &grant.role.as_str(), &devices],
                    )
                    .await
                    .map_err(query("remove a grant"))?;
                Ok(removed > 0)
            })
        })
        .await
    }

    async fn grants_of(&self, user: &UserName) -> Result<Vec<Grant>> {
        let user = user.clone();
        self.call(move |c| {
            Box::pin(async move {
                let found = c
                    .query(GRANTS_OF, &[&user.as_str()])
                    .await
                    .map_err(query("list grants"))?;
                let mut grants = found
                    .iter()
                    .map(|r| rows::grant(r.get(0), r.get(1), r.get(2)))
                    .collect::<Result<Vec<_>>>()?;
                // The crate's order (device sets by kind, then content), not the JSON's.
                grants.sort();
                Ok(grants)
            })
        })
        .await
    }

    async fn insert_session(&self, session: Session) -> Result<()> {
        self.call(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(query("begin session"))?;
                let user = session.user.as_str();
                // The user's row is the lock under which their sessions are counted.
                let disabled: bool = tx
                    .query_opt(LOCK_USER, &[&user])
                    .await
                    .map_err(query("lock a user"))?
                    .ok_or_else(|| not_found(&session.user))?
                    .get(0);
                if disabled {
                    return Err(Error::LoginRefused {
                        user: user.to_owned(),
                    });
                }
                if session.expires_at <= session.created_at {
                    return Err(Error::InvalidInput {
                        reason: "a session must expire after it starts".into(),
                    });
                }
                let created = to_micros(session.created_at);
                // Expired sessions go first; of the live ones the newest MAX - 1 stay, so that
                // a login beyond the bound logs out the oldest rather than being refused.
                tx.execute(EXPIRE_SESSIONS_OF, &[&user, &created])
                    .await
                    .map_err(query("end expired sessions"))?;
                let keep = i64::try_from(MAX_SESSIONS_PER_USER - 1).unwrap_or(i64::MAX);
                tx.execute(TRIM_SESSIONS_OF, &[&user, &keep])
                    .await
                    .map_err(query("end the oldest sessions"))?;
                tx.execute(
                    INSERT_SESSION,
                    &[
                        &session.digest.as_bytes().as_slice(),
                        &user,
                        &created,
                        &to_micros(session.expires_at),
                    ],
                )
                .await
                .map_err(query("insert a session"))?;
                tx.commit().await.map_err(query("commit session"))?;
                Ok(())
            })
        })
        .await
    }

    async fn get_session(&self, digest: &SessionDigest) -> Result<Option<Session>> {
        let digest = *digest;
        self.call(move |c| {
            Box::pin(async move {
                let sql =
                    format!("SELECT {SESSION_COLUMNS} FROM iot_access_sessions WHERE digest = $1");
                let row = c
                    .query_opt(&sql, &[&digest.as_bytes().as_slice()])
                    .await
                    .map_err(query("get a session"))?;
                row.map(|r| rows::session(&r)).transpose()
            })
        })
        .await
    }

    async fn revoke_session(&self, digest: &SessionDigest) -> Result<bool> {
        let digest = *digest;
        self.call(move |c| {
            Box::pin(async move {
                let removed = c
                    .execute(REVOKE_SESSION, &[&digest.as_bytes().as_slice()])
                    .await
                    .map_err(query("revoke a session"))?;
                Ok(removed > 0)
            })
        })
        .await
    }

    async fn revoke_sessions_of(&self, user: &UserName) -> Result<usize> {
        let user = user.clone();
        self.call(move |c| {
            Box::pin(async move {
                let removed = c
                    .execute(REVOKE_SESSIONS_OF, &[&user.as_str()])
                    .await
                    .map_err(query("revoke a user's sessions"))?;
                Ok(count(removed))
            })
        })
        .await
    }

    async fn purge_expired_sessions(&self, now: Timestamp) -> Result<usize> {
        self.call(move |c| {
            Box::pin(async move {
                let removed = c
                    .execute(PURGE_SESSIONS, &[&to_micros(now)])
                    .await
                    .map_err(query("purge expired sessions"))?;
                Ok(count(removed))
            })
        })
        .await
    }

    async fn access_of(&self, user: &UserName) -> Result<Option<UserAccess>> {
        let user = user.clone();
        self.call(move |c| {
            Box::pin(async move {
                let found = c
                    .query(ACCESS_OF, &[&user.as_str()])
                    .await
                    .map_err(query("read a user's access"))?;
                let Some(first) = found.first() else {
                    return Ok(None);
                };
                let record = rows::user(first, 0)?;
                let mut grants = Vec::new();
                for row in &found {
                    // A user without grants is one row of NULLs on the grant side.
                    let (Some(role), Some(devices)) =
                        (row.get::<_, Option<&str>>(5), row.get::<_, Option<&str>>(6))
                    else {
                        continue;
                    };
                    let grant = rows::grant(user.as_str(), role, devices)?;
                    let builtin: bool = row.get(7);
                    let permissions = rows::role(role, builtin, row.get(8))?.permissions;
                    grants.push((grant, permissions));
                }
                grants.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(Some(UserAccess::new(record, grants)))
            })
        })
        .await
    }
}
