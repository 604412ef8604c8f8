//! The module rules shared by the memory and file stores: one in-memory map, changed only by
//! journaled operations (the file store journals them; the memory store applies them at once).

use std::collections::BTreeMap;
use std::sync::Arc;

use iot_core::storage::Journaled;
use iot_core::{DeviceId, EndpointId, ModuleId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{
    MAX_MANAGED_BY_LEN, MAX_MODULES_PER_DEVICE, ModuleChange, ModuleChangeKind, ModuleIdentity,
    NewModule,
};
use crate::credentials::{Credentials, SymmetricKey, Thumbprint};
use crate::error::{Error, Result};
use crate::identity::{ETag, GenerationId};

/// One change, as journaled: whole records, so replay needs no rules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Put(StoredModule),
    Remove {
        device: DeviceId,
        module: ModuleId,
    },
    /// The highest etag given out, first in a snapshot: a deleted module's etag is never given
    /// out again, even after compaction dropped its records.
    LastEtag(u64),
}

/// A module record in the journal. The keys are there in base64, as the device identity store
/// keeps them in its own files: the directory is as secret as the keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredModule {
    device: DeviceId,
    module: ModuleId,
    generation: u64,
    etag: u64,
    credentials: StoredCredentials,
    managed_by: Option<String>,
    created_us: u64,
    updated_us: u64,
}

#[derive(Clone, Serialize, Deserialize)]
enum StoredCredentials {
    None,
    Keys { primary: String, secondary: String },
    X509 { primary: String, secondary: String },
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredCredentials::None => "None",
            StoredCredentials::Keys { .. } => "Keys(<redacted>)",
            StoredCredentials::X509 { .. } => "X509",
        })
    }
}

fn stored_credentials(c: &Credentials) -> StoredCredentials {
    match c {
        Credentials::SymmetricKeys { primary, secondary } => StoredCredentials::Keys {
            primary: primary.expose_base64().to_string(),
            secondary: secondary.expose_base64().to_string(),
        },
        Credentials::X509 { primary, secondary } => StoredCredentials::X509 {
            primary: primary.to_string(),
            secondary: secondary.to_string(),
        },
        // Refused by `check_new`; never journaled.
        _ => StoredCredentials::None,
    }
}

fn credentials_of(c: &StoredCredentials) -> Option<Credentials> {
    Some(match c {
        StoredCredentials::None => Credentials::None,
        StoredCredentials::Keys { primary, secondary } => Credentials::SymmetricKeys {
            primary: SymmetricKey::from_base64(primary).ok()?,
            secondary: SymmetricKey::from_base64(secondary).ok()?,
        },
        StoredCredentials::X509 { primary, secondary } => Credentials::X509 {
            primary: Thumbprint::from_hex(primary).ok()?,
            secondary: Thumbprint::from_hex(secondary).ok()?,
        },
    })
}

impl StoredModule {
    fn of(m: &ModuleIdentity) -> Self {
        StoredModule {
            device: m.device.clone(),
            module: m.module.clone(),
            generation: m.generation_id.as_u64(),
            etag: m.etag.as_u64(),
            credentials: stored_credentials(&m.credentials),
            managed_by: m.managed_by.clone(),
            created_us: m.created_at.as_unix_micros(),
            updated_us: m.updated_at.as_unix_micros(),
        }
    }

    fn record(self) -> Option<ModuleIdentity> {
        Some(ModuleIdentity {
            credentials: credentials_of(&self.credentials)?,
            device: self.device,
            module: self.module,
            generation_id: GenerationId::from_u64(self.generation),
            etag: ETag::from_u64(self.etag),
            managed_by: self.managed_by,
            created_at: Timestamp::from_unix_micros(self.created_us),
            updated_at: Timestamp::from_unix_micros(self.updated_us),
        })
    }
}

/// Every module, by device then module id (so a device's modules are one range, in order).
#[derive(Debug, Default)]
pub(crate) struct ModuleState {
    modules: BTreeMap<DeviceId, BTreeMap<ModuleId, Arc<ModuleIdentity>>>,
    /// The highest etag ever given out (replay restores it from the records).
    last_etag: u64,
}

/// What a write plans: the operations to journal and the changes to publish once durable.
pub(crate) type Plan<T> = (Vec<Op>, (T, Vec<ModuleChange>));

fn check_new(credentials: &Credentials, managed_by: Option<&str>) -> Result<()> {
    if matches!(credentials, Credentials::Passphrase(_)) {
        return Err(Error::invalid(
            "a module authenticates with symmetric keys or certificate thumbprints, not a passphrase",
        ));
    }
    if managed_by.is_some_and(|m| m.len() > MAX_MANAGED_BY_LEN) {
        return Err(Error::invalid(format!(
            "managedBy is at most {MAX_MANAGED_BY_LEN} bytes"
        )));
    }
    Ok(())
}

fn change(m: &ModuleIdentity, kind: ModuleChangeKind) -> ModuleChange {
    ModuleChange {
        id: m.endpoint(),
        generation_id: m.generation_id,
        kind,
    }
}

impl ModuleState {
    pub(crate) fn get(&self, device: &DeviceId, module: &ModuleId) -> Option<Arc<ModuleIdentity>> {
        self.modules.get(device)?.get(module).cloned()
    }

    pub(crate) fn list(&self, device: &DeviceId) -> Vec<Arc<ModuleIdentity>> {
        self.modules
            .get(device)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn existing(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        if_match: Option<ETag>,
    ) -> Result<Arc<ModuleIdentity>> {
        let id = || EndpointId::module(device.clone(), module.clone());
        let current = self
            .get(device, module)
            .ok_or_else(|| Error::ModuleNotFound { id: id() })?;
        match if_match {
            Some(expected) if expected != current.etag => Err(Error::ModulePreconditionFailed {
                id: id(),
                expected,
                actual: current.etag,
            }),
            _ => Ok(current),
        }
    }

    pub(crate) fn plan_create(&self, new: NewModule) -> Result<Plan<ModuleIdentity>> {
        check_new(&new.credentials, new.managed_by.as_deref())?;
        let siblings = self.modules.get(&new.device);
        if siblings.is_some_and(|m| m.contains_key(&new.module)) {
            return Err(Error::ModuleAlreadyExists {
                id: EndpointId::module(new.device, new.module),
            });
        }
        if siblings.is_some_and(|m| m.len() >= MAX_MODULES_PER_DEVICE) {
            return Err(Error::invalid(format!(
                "device {} already has {MAX_MODULES_PER_DEVICE} modules",
                new.device
            )));
        }
        let now = Timestamp::now();
        let record = ModuleIdentity {
            device: new.device,
            module: new.module,
            generation_id: GenerationId::random(),
            etag: ETag::from_u64(self.last_etag + 1),
            credentials: new.credentials,
            managed_by: new.managed_by,
            created_at: now,
            updated_at: now,
        };
        let changes = vec![change(&record, ModuleChangeKind::Created)];
        Ok((vec![Op::Put(StoredModule::of(&record))], (record, changes)))
    }

    pub(crate) fn plan_replace(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        credentials: Credentials,
        managed_by: Option<String>,
        if_match: Option<ETag>,
    ) -> Result<Plan<ModuleIdentity>> {
        check_new(&credentials, managed_by.as_deref())?;
        let current = self.existing(device, module, if_match)?;
        let rekeyed = current.credentials != credentials;
        let record = ModuleIdentity {
            etag: ETag::from_u64(self.last_etag + 1),
            credentials,
            managed_by,
            updated_at: Timestamp::now(),
            ..(*current).clone()
        };
        // Only new credentials revoke sessions; a `managedBy` change does not.
        let changes = if rekeyed {
            vec![change(&record, ModuleChangeKind::CredentialsReplaced)]
        } else {
            Vec::new()
        };
        Ok((vec![Op::Put(StoredModule::of(&record))], (record, changes)))
    }

    pub(crate) fn plan_delete(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        if_match: Option<ETag>,
    ) -> Result<Plan<()>> {
        let current = self.existing(device, module, if_match)?;
        let ops = vec![Op::Remove {
            device: device.clone(),
            module: module.clone(),
        }];
        Ok((ops, ((), vec![change(&current, ModuleChangeKind::Deleted)])))
    }

    pub(crate) fn plan_delete_device(&self, device: &DeviceId) -> Result<Plan<usize>> {
        let modules = self.list(device);
        let ops = modules
            .iter()
            .map(|m| Op::Remove {
                device: m.device.clone(),
                module: m.module.clone(),
            })
            .collect();
        let changes = modules
            .iter()
            .map(|m| change(m, ModuleChangeKind::Deleted))
            .collect();
        Ok((ops, (modules.len(), changes)))
    }
}

impl Journaled for ModuleState {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            Op::Put(stored) => {
                self.last_etag = self.last_etag.max(stored.etag);
                // A record whose keys do not decode was never written by this store (it
                // validates keys before journaling them); replay skips it rather than panic.
                if let Some(record) = stored.record() {
                    self.modules
                        .entry(record.device.clone())
                        .or_default()
                        .insert(record.module.clone(), Arc::new(record));
                }
            }
            Op::LastEtag(etag) => self.last_etag = self.last_etag.max(etag),
            Op::Remove { device, module } => {
                if let Some(modules) = self.modules.get_mut(&device) {
                    modules.remove(&module);
                    if modules.is_empty() {
                        self.modules.remove(&device);
                    }
                }
            }
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        std::iter::once(Op::LastEtag(self.last_etag))
            .chain(
                self.modules
                    .values()
                    .flat_map(|m| m.values())
                    .map(|m| Op::Put(StoredModule::of(m))),
            )
            .collect()
    }
}
