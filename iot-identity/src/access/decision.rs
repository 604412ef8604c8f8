//! What a check is about and what it answers.

use std::fmt;

use iot_core::DeviceId;

/// What a call acts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The hub as a whole: fleet-wide listings and queries, registering new devices, managing
    /// users. Only a grant over [`DeviceSet::All`](super::DeviceSet::All) covers it.
    Hub,
    /// One device: any grant whose set holds the device covers it.
    Device(DeviceId),
}

impl Target {
    /// The device, if the target is one.
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Target::Hub => None,
            Target::Device(id) => Some(id),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Hub => f.write_str("the hub"),
            Target::Device(id) => write!(f, "device {id}"),
        }
    }
}

/// Why a check was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No such user.
    UnknownUser,
    /// The user is disabled.
    UserDisabled,
    /// No grant of the user gives the permission over the target.
    NotGranted,
    /// The store or the device-set resolver failed; access control fails closed.
    Unavailable,
}

impl DenyReason {
    /// A short, stable name (`"unknown_user"`, `"user_disabled"`, `"not_granted"`,
    /// `"unavailable"`), for audit records and logs.
    pub fn kind(self) -> &'static str {
        match self {
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::UserDisabled => "user_disabled",
            DenyReason::NotGranted => "not_granted",
            DenyReason::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::UnknownUser => "no such user",
            DenyReason::UserDisabled => "the user is disabled",
            DenyReason::NotGranted => "no grant gives this permission over the target",
            DenyReason::Unavailable => "access could not be checked",
        })
    }
}

/// The answer of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use = "a check that is not looked at allows nothing"]
pub enum Decision {
    /// The call may go ahead.
    Allow,
    /// It may not (and the denial was audited).
    Deny(DenyReason),
}

impl Decision {
    /// Whether the call may go ahead.
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}
