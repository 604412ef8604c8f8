//! What an enrollment is: who may register, how they prove it, and what they start with.

use std::fmt;

use iot_core::DeviceId;
use iot_identity::{SymmetricKey, Thumbprint};
use serde_json::Value;

use crate::error::{Error, Result};

/// Whether devices may register through an enrollment (DPS's `provisioningStatus`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EnrollmentStatus {
    /// Registration is allowed.
    #[default]
    Enabled,
    /// Registration is refused; devices already registered keep their identity.
    Disabled,
}

/// What a registration of a device that registered before does (DPS's `reprovisionPolicy`).
/// The default is DPS's: both `true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReprovisionPolicy {
    /// Assign the device again (to the hub the enrollment names now). When `false`, a device
    /// that registers again keeps its earlier assignment.
    pub update_hub_assignment: bool,
    /// When re-assigned, carry the device's twin and registry record over; when `false`, it
    /// starts again from the enrollment's initial twin and tags.
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// What every enrollment carries besides its id and attestation.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrollmentSettings {
    /// Whether registration is allowed.
    pub status: EnrollmentStatus,
    /// The desired properties a newly registered device's twin starts with (a JSON object).
    pub initial_twin: Value,
    /// The registry metadata (tags) a newly registered device starts with (a JSON object).
    pub tags: Value,
    /// What registering again does.
    pub reprovision: ReprovisionPolicy,
}

impl Default for EnrollmentSettings {
    fn default() -> Self {
        EnrollmentSettings {
            status: EnrollmentStatus::Enabled,
            initial_twin: Value::Object(Default::default()),
            tags: Value::Object(Default::default()),
            reprovision: ReprovisionPolicy::default(),
        }
    }
}

impl EnrollmentSettings {
    /// Refuses an initial twin or tags that are not JSON objects.
    pub(crate) fn validate(&self, id: &str) -> Result<()> {
        for (name, value) in [("initial twin", &self.initial_twin), ("tags", &self.tags)] {
            if !value.is_object() {
                return Err(Error::invalid(format!(
                    "the {name} of enrollment {id} must be a JSON object, got {}",
                    crate::error::json_type(value)
                )));
            }
        }
        Ok(())
    }
}

/// How the device of an individual enrollment proves who it is. `Debug` redacts keys.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attestation {
    /// Two keys; the device signs its registration with either.
    SymmetricKey {
        /// The primary key.
        primary: SymmetricKey,
        /// The secondary key.
        secondary: SymmetricKey,
    },
    /// The device's own certificate, by the SHA-256 thumbprint of one or two certificates.
    X509 {
        /// Thumbprint of the primary certificate.
        primary: Thumbprint,
        /// Thumbprint of the secondary certificate, if any.
        secondary: Option<Thumbprint>,
    },
}

/// How devices prove they belong to an enrollment group. `Debug` redacts keys.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupAttestation {
    /// Two group keys. A device never holds them: it holds its own key, derived from a group key
    /// and its registration id as DPS derives it ([`SymmetricKey::derive_for_device`]).
    SymmetricKey {
        /// The primary group key.
        primary: SymmetricKey,
        /// The secondary group key.
        secondary: SymmetricKey,
    },
    /// Devices present a certificate chain that ends in one of these CA (root or intermediate)
    /// certificates, PEM-encoded.
    X509Ca {
        /// The signing certificates, one or two (to roll a CA over).
        certificates: Vec<String>,
    },
}

impl GroupAttestation {
    /// The key a device of this group registers with: the primary group key derived for
    /// `registration_id`. `None` for an X.509 group.
    pub fn device_key(&self, registration_id: &str) -> Option<SymmetricKey> {
        match self {
            GroupAttestation::SymmetricKey { primary, .. } => {
                Some(primary.derive_for_device(registration_id))
            }
            GroupAttestation::X509Ca { .. } => None,
        }
    }

    pub(crate) fn validate(&self, id: &str) -> Result<()> {
        if let GroupAttestation::X509Ca { certificates } = self {
            if certificates.is_empty() || certificates.len() > 2 {
                return Err(Error::invalid(format!(
                    "enrollment group {id} needs one or two CA certificates, got {}",
                    certificates.len()
                )));
            }
            if let Some(bad) = certificates
                .iter()
                .position(|pem| !pem.trim_start().starts_with("-----BEGIN CERTIFICATE-----"))
            {
                return Err(Error::invalid(format!(
                    "CA certificate {bad} of enrollment group {id} is not a PEM certificate"
                )));
            }
        }
        Ok(())
    }
}

/// One device that may register, by its registration id. The device id it gets is
/// [`device_id`](Self::device_id), or the registration id when that is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct IndividualEnrollment {
    /// The id the device registers with (DPS's `registrationId`).
    pub registration_id: DeviceId,
    /// The device id to assign, when it differs from the registration id.
    pub device_id: Option<DeviceId>,
    /// How the device proves who it is.
    pub attestation: Attestation,
    /// Status, initial twin, tags and reprovisioning.
    pub settings: EnrollmentSettings,
    /// The store's version of this enrollment: 0 before it is stored, then 1, 2, … with each
    /// write. A write conditioned on it ([`Precondition::Version`](super::Precondition)) fails
    /// if the enrollment changed since it was read.
    pub version: u64,
}

impl IndividualEnrollment {
    /// An enabled enrollment with empty initial twin and tags.
    pub fn new(registration_id: DeviceId, attestation: Attestation) -> Self {
        IndividualEnrollment {
            registration_id,
            device_id: None,
            attestation,
            settings: EnrollmentSettings::default(),
            version: 0,
        }
    }

    /// The device id a registration through this enrollment gets.
    pub fn assigned_device_id(&self) -> &DeviceId {
        self.device_id.as_ref().unwrap_or(&self.registration_id)
    }
}

/// An enrollment group's id: 1 to 128 characters of ASCII letters, digits and `-._:`, as DPS
/// accepts.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId(String);

impl GroupId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(valid_char) {
            return Err(Error::invalid(format!(
                "enrollment group id {id:?} must be 1 to {} characters of letters, digits and -._:",
                Self::MAX_LEN
            )));
        }
        Ok(GroupId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({:?})", self.0)
    }
}

impl TryFrom<String> for GroupId {
    type Error = Error;
    fn try_from(id: String) -> Result<Self> {
        GroupId::new(id)
    }
}

impl From<GroupId> for String {
    fn from(id: GroupId) -> Self {
        id.0
    }
}

impl std::str::FromStr for GroupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GroupId::new(s)
    }
}

/// Many devices that may register, proving membership by a group key or a CA. Each gets the
/// device id it registers with.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrollmentGroup {
    /// The group's id.
    pub group_id: GroupId,
    /// How devices prove they belong.
    pub attestation: GroupAttestation,
    /// Status, initial twin, tags and reprovisioning, for every device of the group.
    pub settings: EnrollmentSettings,
    /// The store's version, as for [`IndividualEnrollment::version`].
    pub version: u64,
}

impl EnrollmentGroup {
    /// An enabled group with empty initial twin and tags.
    pub fn new(group_id: GroupId, attestation: GroupAttestation) -> Self {
        EnrollmentGroup {
            group_id,
            attestation,
            settings: EnrollmentSettings::default(),
            version: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_follow_dps_rules() {
        assert!(GroupId::new("factory-7.line:2_a").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(129)] {
            assert!(GroupId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_symmetric_key_group_derives_each_device_key_from_its_primary_key() {
        let primary = SymmetricKey::generate();
        let group = GroupAttestation::SymmetricKey {
            primary: primary.clone(),
            secondary: SymmetricKey::generate(),
        };
        let key = group.device_key("dev-1").expect("a key group");
        assert_eq!(key, primary.derive_for_device("dev-1"));
        assert_ne!(key, primary.derive_for_device("dev-2"));
        let ca = GroupAttestation::X509Ca {
            certificates: vec!["-----BEGIN CERTIFICATE-----\n".into()],
        };
        assert!(ca.device_key("dev-1").is_none());
    }

    #[test]
    fn debug_output_holds_no_key() {
        let primary = SymmetricKey::generate();
        let enrollment = IndividualEnrollment::new(
            "dev-1".parse().expect("id"),
            Attestation::SymmetricKey {
                primary: primary.clone(),
                secondary: SymmetricKey::generate(),
            },
        );
        let debug = format!("{enrollment:?}");
        assert!(!debug.contains(primary.expose_base64().as_str()), "{debug}");
    }
}
