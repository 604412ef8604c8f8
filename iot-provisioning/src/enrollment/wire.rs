//! Enrollments as JSON, for stores that keep them as documents (the file store's journal). Keys
//! are written in base64: a store of enrollments holds secrets, as the identity store does, and
//! its files are created private (mode 0600) by the storage kit.
//!
//! ```text
//! individual = {"registrationId", "deviceId"?, "attestation", "settings", "version"}
//! group      = {"groupId", "attestation", "settings", "version"}
//! attestation = {"type": "symmetricKey", "primaryKey", "secondaryKey"}
//!             | {"type": "x509", "primaryThumbprint", "secondaryThumbprint"?}
//!             | {"type": "x509Ca", "certificates": [PEM, …]}
//! settings   = {"status": "enabled"|"disabled", "initialTwin", "tags",
//!               "updateHubAssignment", "migrateDeviceData"}
//! ```

use iot_core::DeviceId;
use iot_identity::{SymmetricKey, Thumbprint};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{
    Attestation, EnrollmentGroup, EnrollmentSettings, EnrollmentStatus, GroupAttestation, GroupId,
    IndividualEnrollment, ReprovisionPolicy,
};
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndividualDoc {
    registration_id: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<DeviceId>,
    attestation: AttestationDoc,
    settings: SettingsDoc,
    version: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupDoc {
    group_id: String,
    attestation: AttestationDoc,
    settings: SettingsDoc,
    version: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
enum AttestationDoc {
    #[serde(rename_all = "camelCase")]
    SymmetricKey {
        // Plain strings: the encoded operation holds the keys anyway on its way to the file.
        primary_key: String,
        secondary_key: String,
    },
    #[serde(rename_all = "camelCase")]
    X509 {
        primary_thumbprint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secondary_thumbprint: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    X509Ca { certificates: Vec<String> },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettingsDoc {
    status: StatusDoc,
    initial_twin: Value,
    tags: Value,
    update_hub_assignment: bool,
    migrate_device_data: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum StatusDoc {
    Enabled,
    Disabled,
}

impl From<&IndividualEnrollment> for IndividualDoc {
    fn from(e: &IndividualEnrollment) -> Self {
        IndividualDoc {
            registration_id: e.registration_id.clone(),
            device_id: e.device_id.clone(),
            attestation: match &e.attestation {
                Attestation::SymmetricKey { primary, secondary } => keys_doc(primary, secondary),
                Attestation::X509 { primary, secondary } => AttestationDoc::X509 {
                    primary_thumbprint: primary.to_string(),
                    secondary_thumbprint: secondary.as_ref().map(Thumbprint::to_string),
                },
            },
            settings: SettingsDoc::from(&e.settings),
            version: e.version,
        }
    }
}

impl TryFrom<IndividualDoc> for IndividualEnrollment {
    type Error = Error;
    fn try_from(doc: IndividualDoc) -> Result<Self> {
        let attestation = match doc.attestation {
            AttestationDoc::SymmetricKey {
                primary_key,
                secondary_key,
            } => Attestation::SymmetricKey {
                primary: key(&primary_key)?,
                secondary: key(&secondary_key)?,
            },
            AttestationDoc::X509 {
                primary_thumbprint,
                secondary_thumbprint,
            } => Attestation::X509 {
                primary: thumbprint(&primary_thumbprint)?,
                secondary: secondary_thumbprint
                    .as_deref()
                    .map(thumbprint)
                    .transpose()?,
            },
            AttestationDoc::X509Ca { .. } => {
                return Err(Error::invalid(format!(
                    "individual enrollment {} has a group attestation (x509Ca)",
                    doc.registration_id
                )));
            }
        };
        Ok(IndividualEnrollment {
            registration_id: doc.registration_id,
            device_id: doc.device_id,
            attestation,
            settings: doc.settings.into(),
            version: doc.version,
        })
    }
}

impl From<&EnrollmentGroup> for GroupDoc {
    fn from(g: &EnrollmentGroup) -> Self {
        GroupDoc {
            group_id: g.group_id.as_str().to_owned(),
            attestation: match &g.attestation {
                GroupAttestation::SymmetricKey { primary, secondary } => {
                    keys_doc(primary, secondary)
                }
                GroupAttestation::X509Ca { certificates } => AttestationDoc::X509Ca {
                    certificates: certificates.clone(),
                },
            },
            settings: SettingsDoc::from(&g.settings),
            version: g.version,
        }
    }
}

impl TryFrom<GroupDoc> for EnrollmentGroup {
    type Error = Error;
    fn try_from(doc: GroupDoc) -> Result<Self> {
        let group_id = GroupId::new(doc.group_id)?;
        let attestation = match doc.attestation {
            AttestationDoc::SymmetricKey {
                primary_key,
                secondary_key,
            } => GroupAttestation::SymmetricKey {
                primary: key(&primary_key)?,
                secondary: key(&secondary_key)?,
            },
            AttestationDoc::X509Ca { certificates } => GroupAttestation::X509Ca { certificates },
            AttestationDoc::X509 { .. } => {
                return Err(Error::invalid(format!(
                    "enrollment group {group_id} has a device's attestation (x509 thumbprints)"
                )));
            }
        };
        Ok(EnrollmentGroup {
            group_id,
            attestation,
            settings: doc.settings.into(),
            version: doc.version,
        })
    }
}

fn keys_doc(primary: &SymmetricKey, secondary: &SymmetricKey) -> AttestationDoc {
    AttestationDoc::SymmetricKey {
        primary_key: primary.expose_base64().to_string(),
        secondary_key: secondary.expose_base64().to_string(),
    }
}

fn key(encoded: &str) -> Result<SymmetricKey> {
    // The identity error for a bad key names no key material.
    SymmetricKey::from_base64(encoded).map_err(|e| Error::invalid(e.to_string()))
}

fn thumbprint(hex: &str) -> Result<Thumbprint> {
    Thumbprint::from_hex(hex).map_err(|e| Error::invalid(e.to_string()))
}

impl From<&EnrollmentSettings> for SettingsDoc {
    fn from(s: &EnrollmentSettings) -> Self {
        SettingsDoc {
            status: match s.status {
                EnrollmentStatus::Enabled => StatusDoc::Enabled,
                EnrollmentStatus::Disabled => StatusDoc::Disabled,
            },
            initial_twin: s.initial_twin.clone(),
            tags: s.tags.clone(),
            update_hub_assignment: s.reprovision.update_hub_assignment,
            migrate_device_data: s.reprovision.migrate_device_data,
        }
    }
}

impl From<SettingsDoc> for EnrollmentSettings {
    fn from(doc: SettingsDoc) -> Self {
        EnrollmentSettings {
            status: match doc.status {
                StatusDoc::Enabled => EnrollmentStatus::Enabled,
                StatusDoc::Disabled => EnrollmentStatus::Disabled,
            },
            initial_twin: doc.initial_twin,
            tags: doc.tags,
            reprovision: ReprovisionPolicy {
                update_hub_assignment: doc.update_hub_assignment,
                migrate_device_data: doc.migrate_device_data,
            },
        }
    }
}
