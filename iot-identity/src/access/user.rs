//! Users: a name, an argon2id password hash, and whether they may log in.

use iot_core::Timestamp;

use super::names::UserName;
use crate::credentials::PassphraseHash;

/// A user of the solution (a person or a back-end service), as the store keeps them. `Debug`
/// shows no secret: the password hash is redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// The user's name.
    pub name: UserName,
    /// The argon2id hash of their password (the password itself is never stored).
    pub password: PassphraseHash,
    /// A disabled user cannot log in, and every check for them is denied.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl User {
    /// A user record as a store keeps it (for stores outside this crate: the times are the
    /// store's to keep; `create_user` sets both to now, every write sets `updated_at`).
    pub fn new(
        name: UserName,
        password: PassphraseHash,
        disabled: bool,
        created_at: Timestamp,
        updated_at: Timestamp,
    ) -> Self {
        User {
            name,
            password,
            disabled,
            created_at,
            updated_at,
        }
    }
}

/// What [`AccessStore::create_user`](super::AccessStore::create_user) needs: the password is
/// already hashed ([`AccessControl::create_user`](super::AccessControl::create_user) hashes it),
/// so a store never sees one.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewUser {
    /// The name; must not exist yet.
    pub name: UserName,
    /// The password's hash.
    pub password: PassphraseHash,
}

impl NewUser {
    /// User `name` with password hash `password`.
    pub fn new(name: UserName, password: PassphraseHash) -> Self {
        NewUser { name, password }
    }
}
