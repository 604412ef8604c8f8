//! What a registration through an enrollment establishes and answers.

use std::fmt;

use iot_core::{DeviceId, Timestamp};
use iot_identity::{Credentials, KeySlot};
use iot_registry::ETag;
use serde_json::Value;

use crate::enrollment::{EnrollmentSettings, GroupId};

/// Which enrollment admitted a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrollmentRef {
    /// The individual enrollment of this registration id.
    Individual(DeviceId),
    /// This enrollment group.
    Group(GroupId),
}

impl fmt::Display for EnrollmentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollmentRef::Individual(id) => write!(f, "individual enrollment {id}"),
            EnrollmentRef::Group(id) => write!(f, "enrollment group {id}"),
        }
    }
}

/// A device that proved it belongs to an enabled enrollment. `Debug` redacts its keys.
#[derive(Clone)]
pub struct Attested {
    /// The id the device registers with.
    pub registration_id: DeviceId,
    /// The device id it gets.
    pub device_id: DeviceId,
    /// The enrollment that admitted it.
    pub enrollment: EnrollmentRef,
    /// That enrollment's settings (initial twin, tags, reprovisioning).
    pub settings: EnrollmentSettings,
    /// Which of the device's two keys signed the token (or which certificate matched; the
    /// primary for a CA-signed chain).
    pub key: KeySlot,
    /// When the token (or the leaf certificate) expires, Unix seconds.
    pub expiry: u64,
    /// What the device's identity is registered with: its two keys (the enrollment's own, or
    /// the group keys derived for it), its certificates' thumbprints, or CA-signed.
    pub(crate) credentials: Credentials,
}

impl fmt::Debug for Attested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attested")
            .field("registration_id", &self.registration_id)
            .field("device_id", &self.device_id)
            .field("enrollment", &self.enrollment)
            .field("key", &self.key)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// How a registration left the device's assignment (DPS's `substatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Substatus {
    /// The device was registered now and assigned for the first time; or it registered
    /// before and its enrollment does not update assignments (it keeps the one it has).
    InitialAssignment,
    /// The device registered before; it stays assigned to the (one) hub with its twin and
    /// registry record as they are.
    DeviceDataMigrated,
    /// The device registered before; its registry tags and twin were set again from the
    /// enrollment (the policy's `migrate_device_data` is `false`).
    DeviceDataReset,
}

impl Substatus {
    /// DPS's name: `"initialAssignment"`, `"deviceDataMigrated"`, `"deviceDataReset"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Substatus::InitialAssignment => "initialAssignment",
            Substatus::DeviceDataMigrated => "deviceDataMigrated",
            Substatus::DeviceDataReset => "deviceDataReset",
        }
    }
}

/// A successful registration: where the device goes and what it starts with.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Assignment {
    /// The id the device registered with.
    pub registration_id: DeviceId,
    /// The device id assigned.
    pub device_id: DeviceId,
    /// The hub, a bare host name (the configured one).
    pub assigned_hub: String,
    /// How the assignment came about.
    pub substatus: Substatus,
    /// The enrollment that admitted the device.
    pub enrollment: EnrollmentRef,
    /// When the device's registry record was created.
    pub created: Timestamp,
    /// When it was last written.
    pub updated: Timestamp,
    /// The registry record's etag.
    pub etag: ETag,
    /// The enrollment's initial twin (desired properties, a JSON object).
    pub initial_twin: Value,
    /// Whether the device's twin must now be given the initial twin's desired properties: the
    /// device was registered by this call, or its data was reset. Provisioning does not hold
    /// twins; the endpoint that answers the device writes them through the hub.
    pub apply_initial_twin: bool,
}
