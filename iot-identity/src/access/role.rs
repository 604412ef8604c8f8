//! Roles: named sets of permissions. Three are built in and cannot be changed; others are the
//! store's to keep.

use serde::{Deserialize, Serialize};

use super::names::RoleName;
use super::permission::{Permission, Permissions};

/// A named set of permissions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Role {
    /// The role's name.
    pub name: RoleName,
    /// What it allows.
    pub permissions: Permissions,
}

/// The built-in role that may do everything.
pub const ADMIN: &str = "admin";
/// The built-in role that reads the fleet and sends commands (methods, C2D, twin updates), but
/// does not manage devices or users.
pub const OPERATOR: &str = "operator";
/// The built-in role that only reads.
pub const VIEWER: &str = "viewer";

impl Role {
    /// A role named `name` allowing `permissions`.
    pub fn new(name: RoleName, permissions: impl IntoIterator<Item = Permission>) -> Self {
        Role {
            name,
            permissions: permissions.into_iter().collect(),
        }
    }

    /// The built-in role called `name`, if there is one.
    pub fn builtin(name: &RoleName) -> Option<Role> {
        use Permission::*;
        let permissions: Permissions = match name.as_str() {
            ADMIN => Permissions::all(),
            OPERATOR => [Read, InvokeMethod, SendC2d, UpdateTwin]
                .into_iter()
                .collect(),
            VIEWER => [Read].into_iter().collect(),
            _ => return None,
        };
        Some(Role {
            name: name.clone(),
            permissions,
        })
    }

    /// The three built-in roles.
    pub fn builtins() -> Vec<Role> {
        [ADMIN, OPERATOR, VIEWER]
            .into_iter()
            .filter_map(|n| RoleName::new(n).ok())
            .filter_map(|n| Role::builtin(&n))
            .collect()
    }

    /// Whether `name` is a built-in role.
    pub fn is_builtin(name: &RoleName) -> bool {
        matches!(name.as_str(), ADMIN | OPERATOR | VIEWER)
    }
}
