//! Grants: a role given to a user over a set of devices.

use std::fmt;
use std::str::FromStr;

use iot_core::DeviceId;
use serde::{Deserialize, Serialize};

use super::names::{RoleName, UserName};
use crate::error::{Error, Result, shorten};

/// The longest registry query a grant may name, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// The deepest hierarchy node a grant may name.
pub const MAX_NODE_DEPTH: usize = 8;
/// The longest text of a hierarchy node, in bytes.
pub const MAX_NODE_LEN: usize = 512;

/// The devices a grant covers.
///
/// [`All`](DeviceSet::All) and [`Device`](DeviceSet::Device) are decided here; a
/// [`Query`](DeviceSet::Query) or a [`Node`](DeviceSet::Node) is decided by the
/// [`DeviceSets`](super::DeviceSets) the caller plugs in (for example the registry's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum DeviceSet {
    /// Every device, and the hub as a whole (fleet-wide calls, user management).
    All,
    /// One device.
    Device(DeviceId),
    /// The devices a registry query's `WHERE` clause matches, e.g.
    /// `SELECT * FROM devices WHERE metadata.site = 'plant-2'`. Kept as text: the identity
    /// store does not depend on the registry.
    Query(String),
    /// The devices under a node of the hierarchy, e.g. `building=HQ/floor=3`.
    Node(HierarchyNode),
}

impl DeviceSet {
    /// A query set; refuses empty or over-long text (the query's syntax is the resolver's to
    /// check).
    pub fn query(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        if text.trim().is_empty() || text.len() > MAX_QUERY_LEN {
            return Err(Error::invalid(format!(
                "a grant's query is 1 to {MAX_QUERY_LEN} bytes"
            )));
        }
        Ok(DeviceSet::Query(text))
    }

    /// Checks a set built by hand or read from JSON.
    pub fn validate(&self) -> Result<()> {
        match self {
            DeviceSet::Query(text) => DeviceSet::query(text.clone()).map(drop),
            DeviceSet::Node(node) => HierarchyNode::new(node.levels.clone()).map(drop),
            DeviceSet::All | DeviceSet::Device(_) => Ok(()),
        }
    }
}

impl fmt::Display for DeviceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSet::All => f.write_str("all devices"),
            DeviceSet::Device(id) => write!(f, "device {id}"),
            DeviceSet::Query(q) => write!(f, "query {:?}", shorten(q, 80)),
            DeviceSet::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// A node of the device hierarchy: metadata keys and the values a device must have for each,
/// from the top down (`building=HQ/floor=3` is floor 3 of building HQ and everything under it).
/// Keys are registry metadata paths (letters, digits, `_`, `.` for nested keys); values are
/// compared with the metadata value's text (`floor=3` matches the number 3 and the string `"3"`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HierarchyNode {
    levels: Vec<(String, String)>,
}

impl HierarchyNode {
    /// A node from `(key, value)` levels, top first.
    pub fn new(levels: Vec<(String, String)>) -> Result<Self> {
        if levels.is_empty() || levels.len() > MAX_NODE_DEPTH {
            return Err(Error::invalid(format!(
                "a hierarchy node has 1 to {MAX_NODE_DEPTH} levels"
            )));
        }
        let mut len = 0;
        for (key, value) in &levels {
            let key_ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !key_ok {
                return Err(Error::invalid(format!(
                    "a hierarchy key is letters, digits, _ and ., not {:?}",
                    shorten(key, 64)
                )));
            }
            if value.is_empty() || value.contains('/') {
                return Err(Error::invalid(format!(
                    "the value of hierarchy key {key} must be non-empty and hold no '/'"
                )));
            }
            len += key.len() + value.len() + 2;
        }
        if len > MAX_NODE_LEN {
            return Err(Error::invalid(format!(
                "a hierarchy node is at most {MAX_NODE_LEN} bytes"
            )));
        }
        Ok(HierarchyNode { levels })
    }

    /// The levels, top first.
    pub fn levels(&self) -> &[(String, String)] {
        &self.levels
    }
}

impl FromStr for HierarchyNode {
    type Err = Error;
    /// Parses `key=value/key=value` (top first).
    fn from_str(s: &str) -> Result<Self> {
        if s.len() > MAX_NODE_LEN {
            return Err(Error::invalid(format!(
                "a hierarchy node is at most {MAX_NODE_LEN} bytes"
            )));
        }
        let levels = s
            .split('/')
            .map(|level| {
                level
                    .split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "a hierarchy level is key=value, not {:?}",
                            shorten(level, 64)
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        HierarchyNode::new(levels)
    }
}

impl TryFrom<String> for HierarchyNode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<HierarchyNode> for String {
    fn from(n: HierarchyNode) -> String {
        n.to_string()
    }
}

impl fmt::Display for HierarchyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// A role given to a user over a set of devices. A user's permissions on a device are the union
/// of the roles of every grant whose set holds the device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Grant {
    /// Who.
    pub user: UserName,
    /// Which role.
    pub role: RoleName,
    /// Over which devices.
    pub devices: DeviceSet,
}

impl Grant {
    /// `role` to `user` over `devices`.
    pub fn new(user: UserName, role: RoleName, devices: DeviceSet) -> Self {
        Grant {
            user,
            role,
            devices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_and_print() {
        let node: Option<HierarchyNode> = "building=HQ/floor=3".parse().ok();
        assert_eq!(
            node.as_ref().map(|n| n.levels().len()),
            Some(2),
            "two levels"
        );
        assert_eq!(
            node.map(|n| n.to_string()).as_deref(),
            Some("building=HQ/floor=3")
        );
        assert!("building".parse::<HierarchyNode>().is_err());
        assert!("".parse::<HierarchyNode>().is_err());
        assert!("building=".parse::<HierarchyNode>().is_err());
        assert!("bad key=1".parse::<HierarchyNode>().is_err());
        assert!(
            ["a=1"; MAX_NODE_DEPTH + 1]
                .join("/")
                .parse::<HierarchyNode>()
                .is_err()
        );
        assert!(DeviceSet::query("").is_err());
        assert!(DeviceSet::query("x".repeat(MAX_QUERY_LEN + 1)).is_err());
        let set = DeviceSet::Node("site=plant.2".parse().expect("node"));
        let json = serde_json::to_string(&set).expect("json");
        assert_eq!(json, r#"{"node":"site=plant.2"}"#);
        assert_eq!(serde_json::from_str::<DeviceSet>(&json).ok(), Some(set));
        assert!(serde_json::from_str::<DeviceSet>(r#"{"node":"x"}"#).is_err());
    }
}
