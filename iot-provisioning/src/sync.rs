//! Making both stores' acknowledged writes durable before an intent is marked finished.

use std::fmt::Debug;

use async_trait::async_trait;
use iot_identity::FileIdentityStore;
use iot_registry::FileRegistry;

use crate::error::{Error, Result};

/// Makes every acknowledged write of both stores durable (see
/// [`ProvisionerBuilder::sync_stores`](crate::ProvisionerBuilder::sync_stores)).
#[async_trait]
pub trait SyncStores: Send + Sync + Debug + 'static {
    /// Returns once every write acknowledged so far by either store survives a power cut.
    async fn sync(&self) -> Result<()>;
}

/// [`SyncStores`] for the file-backed identity store and registry.
#[derive(Debug, Clone)]
pub struct FileStoresSync {
    identity: FileIdentityStore,
    registry: FileRegistry,
}

impl FileStoresSync {
    /// Syncs `identity` and `registry` (handles to the stores the provisioner writes).
    pub fn new(identity: FileIdentityStore, registry: FileRegistry) -> Self {
        FileStoresSync { identity, registry }
    }
}

#[async_trait]
impl SyncStores for FileStoresSync {
    async fn sync(&self) -> Result<()> {
        let (identity, registry) =
            futures::future::join(self.identity.sync(), self.registry.sync()).await;
        identity.map_err(Error::Identity)?;
        registry.map_err(Error::Registry)
    }
}
