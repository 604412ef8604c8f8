//! What a role allows: a small set of permissions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, shorten};

/// One thing a user may do. Device-scoped permissions are checked against the device a call
/// targets; [`ManageUsers`](Permission::ManageUsers) and fleet-wide calls are checked against the
/// hub as a whole (see [`Target`](super::Target)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Permission {
    /// Read the fleet: registry records, twins, last known values, telemetry.
    Read,
    /// Invoke a direct method.
    InvokeMethod,
    /// Send a cloud-to-device message.
    SendC2d,
    /// Update a twin's desired properties or tags.
    UpdateTwin,
    /// Register, change, disable and delete devices (registry and provisioning).
    ManageDevices,
    /// Create and change users, roles and grants.
    ManageUsers,
}

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: [Permission; 6] = [
        Permission::Read,
        Permission::InvokeMethod,
        Permission::SendC2d,
        Permission::UpdateTwin,
        Permission::ManageDevices,
        Permission::ManageUsers,
    ];

    /// The stable name used in JSON, audit records and the docs (`"read"`, `"invokeMethod"`,
    /// `"sendC2d"`, `"updateTwin"`, `"manageDevices"`, `"manageUsers"`).
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::InvokeMethod => "invokeMethod",
            Permission::SendC2d => "sendC2d",
            Permission::UpdateTwin => "updateTwin",
            Permission::ManageDevices => "manageDevices",
            Permission::ManageUsers => "manageUsers",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Permission {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Permission::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::invalid(format!("unknown permission {:?}", shorten(s, 64))))
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of [`Permission`]s (a bit set; serialized as a list of names).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);

    /// Every permission.
    pub fn all() -> Self {
        Permission::ALL.into_iter().collect()
    }

    /// Whether `permission` is in the set.
    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// The set with `permission` added.
    pub fn with(self, permission: Permission) -> Self {
        Permissions(self.0 | permission.bit())
    }

    /// The permissions in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        iter.into_iter().fold(Permissions::NONE, Permissions::with)
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Permissions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Vec::<Permission>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_was_added() {
        for p in Permission::ALL {
            assert_eq!(p.name().parse::<Permission>().ok(), Some(p));
        }
        assert!("delete".parse::<Permission>().is_err());
        let set: Permissions = [Permission::Read, Permission::SendC2d]
            .into_iter()
            .collect();
        assert!(set.contains(Permission::Read) && set.contains(Permission::SendC2d));
        assert!(!set.contains(Permission::InvokeMethod));
        let json = serde_json::to_string(&set).ok();
        assert_eq!(json.as_deref(), Some(r#"["read","sendC2d"]"#));
        let back: Option<Permissions> = json.and_then(|j| serde_json::from_str(&j).ok());
        assert_eq!(back, Some(set));
        assert_eq!(Permissions::all().iter().count(), Permission::ALL.len());
    }
}
