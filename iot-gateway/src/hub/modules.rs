//! The hub's side of module identities: module sessions live beside device sessions under an
//! [`EndpointId`] with a module, authenticate against the [`ModuleStore`], keep their twins in
//! the twin store's module twins, and end when the module is deleted or re-keyed or its device
//! is disabled or deleted.

use std::sync::{Arc, Weak};

use iot_core::{DeviceId, EndpointId, ModuleId};
use iot_identity::{ChangeKind, DeviceStatus, ModuleChangeKind, ModuleChanges, ModuleStore};
use serde_json::Value;
use tracing::warn;

use super::session::SessionShared;
use super::{Hub, HubInner};
use crate::error::{CloseReason, Error, Result};
use crate::sync_util::lock;
use crate::twins::{Section, Twin};

impl Hub {
    /// The module identities the hub authenticates modules against.
    pub fn modules(&self) -> &Arc<dyn ModuleStore> {
        &self.inner.modules
    }
}

impl HubInner {
    /// `ModuleNotFound` unless the module store knows the module (and `DeviceNotFound` unless
    /// its device exists).
    pub(super) async fn require_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
        self.require_device(device).await?;
        match self
            .modules
            .get(device, module)
            .await
            .map_err(Error::Identity)?
        {
            Some(_) => Ok(()),
            None => Err(Error::ModuleNotFound {
                module: EndpointId::module(device.clone(), module.clone()),
            }),
        }
    }

    /// The twin of a device or of a module.
    pub(super) async fn twin_of(&self, key: &EndpointId) -> Result<Twin> {
        match &key.module {
            Some(module) => self.twins.get_module(&key.device, module).await,
            None => self.twins.get(&key.device).await,
        }
    }

    /// Patches a section of the twin of a device or of a module.
    pub(super) async fn patch_twin_of(
        &self,
        key: &EndpointId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        let limits = self.config.twin;
        match &key.module {
            Some(module) => {
                self.twins
                    .patch_module(&key.device, module, section, patch, if_version, limits)
                    .await
            }
            None => {
                self.twins
                    .patch(&key.device, section, patch, if_version, limits)
                    .await
            }
        }
    }

    /// The live module sessions of `device`.
    fn module_sessions(&self, device: &DeviceId) -> Vec<Arc<SessionShared>> {
        lock(&self.sessions)
            .values()
            .filter(|s| s.module.is_some() && &s.device == device)
            .cloned()
            .collect()
    }

    /// Ends the module sessions of a device that was disabled or deleted.
    pub(super) async fn close_module_sessions(&self, device: &DeviceId, kind: &ChangeKind) {
        let reason = match kind {
            ChangeKind::Deleted => CloseReason::Deleted,
            _ => CloseReason::Disabled,
        };
        for s in self.module_sessions(device) {
            self.close_session(&s, reason.clone()).await;
        }
    }

    /// [`recheck`](HubInner::recheck) for a module's session: the module must still be the
    /// same life with the same credentials, and its device enabled.
    pub(super) async fn recheck_module(&self, s: &Arc<SessionShared>) {
        let Some(module) = &s.module else { return };
        let reason = match self.modules.get(&s.device, module).await {
            Ok(None) => Some(CloseReason::Deleted),
            Ok(Some(m)) if m.generation_id != s.generation => Some(CloseReason::Deleted),
            Ok(Some(m)) if m.etag != s.etag => Some(CloseReason::CredentialsReplaced),
            Ok(Some(_)) => match self.identity.get(&s.device).await {
                Ok(None) => Some(CloseReason::Deleted),
                Ok(Some(d)) if matches!(d.status, DeviceStatus::Disabled { .. }) => {
                    Some(CloseReason::Disabled)
                }
                Ok(Some(_)) => None,
                Err(e) => {
                    warn!(module = %s.key, error = %e, "could not re-check a module's device");
                    None
                }
            },
            Err(e) => {
                warn!(module = %s.key, error = %e, "could not re-check a module identity");
                None
            }
        };
        if let Some(reason) = reason {
            self.close_session(s, reason).await;
        }
    }
}

/// Follows the module store's changes: ends the sessions of deleted or re-keyed modules and
/// forgets the twins of deleted ones.
pub(super) async fn watch_modules(hub: Weak<HubInner>, mut changes: ModuleChanges) {
    while let Some(event) = changes.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match event {
            Ok(change) => {
                let Some(module) = &change.id.module else {
                    continue;
                };
                if change.kind == ModuleChangeKind::Deleted
                    && let Err(e) = hub.twins.remove_module(&change.id.device, module).await
                {
                    warn!(module = %change.id, error = %e, "could not remove a deleted module's twin");
                }
                if !change.revokes_sessions() {
                    continue;
                }
                let Some(s) = hub.endpoint_session(&change.id) else {
                    continue;
                };
                let reason = match change.kind {
                    ModuleChangeKind::Deleted => CloseReason::Deleted,
                    _ => CloseReason::CredentialsReplaced,
                };
                hub.close_session(&s, reason).await;
            }
            Err(missed) => {
                warn!(
                    missed,
                    "module changes were missed; re-checking every module session"
                );
                let sessions: Vec<_> = lock(&hub.sessions)
                    .values()
                    .filter(|s| s.module.is_some())
                    .cloned()
                    .collect();
                for s in sessions {
                    hub.recheck_module(&s).await;
                }
            }
        }
    }
}
