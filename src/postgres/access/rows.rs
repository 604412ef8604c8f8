//! Access rows to records and back. Nothing here formats a password hash or a digest in full.

use iot_identity::access::{
    DeviceSet, Grant, Permissions, Role, RoleName, Session, SessionDigest, User, UserName,
};
use iot_identity::{Error, PassphraseHash, Result};
use tokio_postgres::Row;

use crate::postgres::values::from_micros;

/// A row the adapter cannot read back: written by something else, or damaged.
pub(super) fn corrupt(what: String) -> Error {
    Error::backend(
        "postgres",
        format!("the access tables hold a row this adapter cannot read: {what}"),
        false,
    )
}

fn user_name(text: &str) -> Result<UserName> {
    UserName::new(text).map_err(|_| corrupt(format!("user name {text:?}")))
}

fn role_name(text: &str) -> Result<RoleName> {
    RoleName::new(text).map_err(|_| corrupt(format!("role name {text:?}")))
}

/// A user from `name, password, disabled, created_us, updated_us` starting at column `at`.
pub(super) fn user(row: &Row, at: usize) -> Result<User> {
    let name: &str = row.get(at);
    let phc: &str = row.get(at + 1);
    let password = PassphraseHash::from_phc(phc)
        .map_err(|_| corrupt(format!("the password hash of user {name:?}")))?;
    Ok(User::new(
        user_name(name)?,
        password,
        row.get(at + 2),
        from_micros(row.get(at + 3)),
        from_micros(row.get(at + 4)),
    ))
}

/// A role from `name, builtin, permissions`: a built-in's permissions are the crate's constants.
pub(super) fn role(name: &str, builtin: bool, permissions: &str) -> Result<Role> {
    let name = role_name(name)?;
    if builtin && let Some(role) = Role::builtin(&name) {
        return Ok(role);
    }
    let permissions: Permissions = serde_json::from_str(permissions)
        .map_err(|e| corrupt(format!("the permissions of role {name}: {e}")))?;
    Ok(Role::new(name, permissions.iter()))
}

/// A role's permissions as stored.
pub(super) fn permissions_text(role: &Role) -> Result<String> {
    serde_json::to_string(&role.permissions).map_err(|e| Error::InvalidInput {
        reason: format!("role {}: {e}", role.name),
    })
}

/// A device set as stored: its JSON, which is also part of the grant's key.
pub(super) fn devices_text(devices: &DeviceSet) -> Result<String> {
    serde_json::to_string(devices).map_err(|e| Error::InvalidInput {
        reason: format!("device set {devices}: {e}"),
    })
}

/// A grant from its user, role and stored device set.
pub(super) fn grant(user: &str, role: &str, devices: &str) -> Result<Grant> {
    let set: DeviceSet = serde_json::from_str(devices)
        .map_err(|e| corrupt(format!("a device set of user {user:?}: {e}")))?;
    Ok(Grant::new(user_name(user)?, role_name(role)?, set))
}

/// A session from `digest, user_name, created_us, expires_us`.
pub(super) fn session(row: &Row) -> Result<Session> {
    let digest: &[u8] = row.get(0);
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| corrupt(format!("a session digest of {} bytes", digest.len())))?;
    Ok(Session::new(
        SessionDigest::from_bytes(digest),
        user_name(row.get(1))?,
        from_micros(row.get(2)),
        from_micros(row.get(3)),
    ))
}
