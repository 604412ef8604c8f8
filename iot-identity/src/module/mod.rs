//! Module identities: IoT Hub's `devices/{id}/modules/{moduleId}`, each with credentials of its
//! own, kept by a [`ModuleStore`] beside the device identities of an
//! [`IdentityStore`](crate::IdentityStore).
//!
//! A module belongs to one device and is addressed by an [`EndpointId`] with a module. It
//! authenticates with its own keys (SAS tokens scoped to `{host}/devices/{id}/modules/{moduleId}`)
//! or certificate thumbprints, never with its device's, and a device's credentials never
//! authenticate one of its modules ([`authenticate_module`]). Modules have no status of their
//! own: a module may connect while its device is enabled (the caller checks the device, as
//! [`authenticate_module`] does).
//!
//! The store is separate from the device identity store so that the device record, its codecs
//! and every existing backend stay as they are; the writer (the service API) keeps the two in
//! agreement: a module is created only for an existing device, and deleting a device deletes its
//! modules ([`ModuleStore::delete_device`]).

mod auth;
mod file;
mod memory;
mod state;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, EndpointId, ModuleId, Timestamp};
use tokio::sync::broadcast;

use crate::credentials::Credentials;
use crate::error::Result;
use crate::identity::{ETag, GenerationId};

pub use auth::authenticate_module;
pub use file::{FileModuleStore, FileModuleStoreConfig};
pub use memory::MemoryModuleStore;

/// The most modules one device may have (IoT Hub allows 50 per device on its standard tiers;
/// we allow more, but bound it so one device cannot fill the store).
pub const MAX_MODULES_PER_DEVICE: usize = 1000;

/// The longest `managed_by` value accepted, in bytes.
pub const MAX_MANAGED_BY_LEN: usize = 128;

/// A module identity: system attributes only. `Debug` never shows secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModuleIdentity {
    /// The device the module belongs to.
    pub device: DeviceId,
    /// The module id (unique within the device).
    pub module: ModuleId,
    /// Which life of this module id the record belongs to.
    pub generation_id: GenerationId,
    /// Changes on every write.
    pub etag: ETag,
    /// How the module authenticates: [`Credentials::SymmetricKeys`], [`Credentials::X509`] or
    /// [`Credentials::None`].
    pub credentials: Credentials,
    /// Who manages the module (IoT Hub's `managedBy`, e.g. `iotEdge`), if anyone.
    pub managed_by: Option<String>,
    /// When this life of the module was created.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl ModuleIdentity {
    /// The module's key: its device and its id.
    pub fn endpoint(&self) -> EndpointId {
        EndpointId::module(self.device.clone(), self.module.clone())
    }
}

/// What [`ModuleStore::create`] needs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewModule {
    /// The device; the caller has checked that it exists.
    pub device: DeviceId,
    /// The module id; must not exist on the device yet.
    pub module: ModuleId,
    /// Initial credentials (symmetric keys, thumbprints or none; passphrases are refused).
    pub credentials: Credentials,
    /// IoT Hub's `managedBy`.
    pub managed_by: Option<String>,
}

impl NewModule {
    /// Module `module` of `device` with `credentials`, managed by no one.
    pub fn new(device: DeviceId, module: ModuleId, credentials: Credentials) -> Self {
        NewModule {
            device,
            module,
            credentials,
            managed_by: None,
        }
    }

    /// Sets [`managed_by`](Self::managed_by).
    pub fn managed_by(mut self, managed_by: Option<String>) -> Self {
        self.managed_by = managed_by;
        self
    }
}

/// What happened to a module; published after the write is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleChangeKind {
    /// The module was created.
    Created,
    /// Its credentials were replaced: sessions authenticated with the old ones should end.
    CredentialsReplaced,
    /// The module was deleted (on its own or with its device).
    Deleted,
}

/// A change to one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleChange {
    /// The module (`device/module`).
    pub id: EndpointId,
    /// The generation the change applies to.
    pub generation_id: GenerationId,
    /// What happened.
    pub kind: ModuleChangeKind,
}

impl ModuleChange {
    /// Whether sessions of the module must end.
    pub fn revokes_sessions(&self) -> bool {
        matches!(
            self.kind,
            ModuleChangeKind::CredentialsReplaced | ModuleChangeKind::Deleted
        )
    }
}

/// A subscription to a module store's changes: `Err(missed)` when the subscriber fell behind
/// (it must re-check the modules it cares about).
#[derive(Debug)]
pub struct ModuleChanges(broadcast::Receiver<ModuleChange>);

impl ModuleChanges {
    /// The next change, `Some(Err(missed))` after a lag, `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<std::result::Result<ModuleChange, u64>> {
        match self.0.recv().await {
            Ok(change) => Some(Ok(change)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Err(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The sending side of [`ModuleChanges`], for stores (also outside this crate).
#[derive(Debug, Clone)]
pub struct ModuleChangeSender(broadcast::Sender<ModuleChange>);

impl ModuleChangeSender {
    /// A sender whose subscribers may fall `capacity` changes behind before they lag.
    pub fn new(capacity: usize) -> Self {
        ModuleChangeSender(broadcast::channel(capacity.max(1)).0)
    }

    /// Publishes `change` (a no-op without subscribers).
    pub fn send(&self, change: ModuleChange) {
        // An error only means nobody listens right now.
        let _ = self.0.send(change);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> ModuleChanges {
        ModuleChanges(self.0.subscribe())
    }
}

impl Default for ModuleChangeSender {
    fn default() -> Self {
        ModuleChangeSender::new(4096)
    }
}

/// Where module identities live.
///
/// # Contract
///
/// [`testkit::modules`](crate::testkit) (feature `testkit`) checks these against any
/// implementation.
///
/// * **Unique per device.** `create` of a module the device already has fails with
///   [`Error::ModuleAlreadyExists`](crate::Error::ModuleAlreadyExists); the same module id on
///   another device is another module. A device has at most [`MAX_MODULES_PER_DEVICE`].
/// * **Etags and generations** as in [`IdentityStore`](crate::IdentityStore): every write gives a
///   new etag; `if_match` that is not current fails with
///   [`Error::ModulePreconditionFailed`](crate::Error::ModulePreconditionFailed); a re-created
///   module has a new generation. Writes to a missing module fail with
///   [`Error::ModuleNotFound`](crate::Error::ModuleNotFound).
/// * **Input.** Passphrase credentials and a `managed_by` over [`MAX_MANAGED_BY_LEN`] bytes are
///   [`Error::InvalidInput`](crate::Error::InvalidInput).
/// * **Listing** of a device's modules is in module id order.
/// * **Changes** are published after the write is durable, one per module (so
///   [`delete_device`](ModuleStore::delete_device) publishes one `Deleted` per module).
#[async_trait]
pub trait ModuleStore: Send + Sync + Debug + 'static {
    /// Creates a module and returns the stored record.
    async fn create(&self, module: NewModule) -> Result<ModuleIdentity>;

    /// Module `module` of `device`, or `None`.
    async fn get(
        &self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<Arc<ModuleIdentity>>>;

    /// Every module of `device`, in module id order.
    async fn list(&self, device: &DeviceId) -> Result<Vec<Arc<ModuleIdentity>>>;

    /// Replaces a module's credentials (and its `managed_by`), as IoT Hub's module PUT does.
    async fn replace(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        credentials: Credentials,
        managed_by: Option<String>,
        if_match: Option<ETag>,
    ) -> Result<ModuleIdentity>;

    /// Deletes a module.
    async fn delete(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        if_match: Option<ETag>,
    ) -> Result<()>;

    /// Deletes every module of `device` (the device was deleted); returns how many.
    async fn delete_device(&self, device: &DeviceId) -> Result<usize>;

    /// A stream of the changes made from now on.
    fn subscribe(&self) -> ModuleChanges;
}

macro_rules! forward_modules {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: ModuleStore + ?Sized> ModuleStore for $ptr<T> {
            async fn create(&self, module: NewModule) -> Result<ModuleIdentity> {
                (**self).create(module).await
            }
            async fn get(
                &self,
                device: &DeviceId,
                module: &ModuleId,
            ) -> Result<Option<Arc<ModuleIdentity>>> {
                (**self).get(device, module).await
            }
            async fn list(&self, device: &DeviceId) -> Result<Vec<Arc<ModuleIdentity>>> {
                (**self).list(device).await
            }
            async fn replace(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                credentials: Credentials,
                managed_by: Option<String>,
                if_match: Option<ETag>,
            ) -> Result<ModuleIdentity> {
                (**self)
                    .replace(device, module, credentials, managed_by, if_match)
                    .await
            }
            async fn delete(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                if_match: Option<ETag>,
            ) -> Result<()> {
                (**self).delete(device, module, if_match).await
            }
            async fn delete_device(&self, device: &DeviceId) -> Result<usize> {
                (**self).delete_device(device).await
            }
            fn subscribe(&self) -> ModuleChanges {
                (**self).subscribe()
            }
        }
    };
}

forward_modules!(Arc);
forward_modules!(Box);
