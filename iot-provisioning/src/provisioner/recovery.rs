//! Recovery: bringing both stores to what an unfinished intent's rule defines.

use iot_core::DeviceId;
use tracing::warn;

use super::{Provisioner, Writer, registry_refusal, status_of};
use crate::error::{Error, Result};
use crate::journal::Intent;

impl Provisioner {
    /// Finishes or undoes every intent the journal holds unfinished. Runs on open and before the
    /// next write after a failure; callable at any time.
    pub async fn recover(&self) -> Result<()> {
        let mut writer = self.inner.writer.lock().await;
        writer.needs_recovery = true;
        self.recover_locked(&mut writer).await
    }

    pub(super) async fn recover_locked(&self, writer: &mut Writer<'_>) -> Result<()> {
        if !writer.needs_recovery {
            return Ok(());
        }
        for (seq, intent) in self.inner.journal.pending().await? {
            warn!(seq, ?intent, "resolving an unfinished provisioning intent");
            self.resolve(&intent).await?;
            self.finish(seq).await?;
        }
        writer.needs_recovery = false;
        Ok(())
    }

    /// The write lock, after resolving anything a failure left behind.
    pub(super) async fn lock(&self) -> Result<Writer<'_>> {
        let mut writer = self.inner.writer.lock().await;
        self.recover_locked(&mut writer).await?;
        Ok(writer)
    }

    /// Marks intent `seq` finished, after making the stores' writes durable if so configured.
    pub(super) async fn finish(&self, seq: u64) -> Result<()> {
        self.sync_stores_if_configured().await?;
        self.inner.journal.finish(seq).await
    }

    /// [`finish`](Self::finish) without waiting for the journal's sync (bulk batches).
    pub(super) async fn finish_unsynced(&self, seq: u64) -> Result<()> {
        self.sync_stores_if_configured().await?;
        self.inner.journal.finish_unsynced(seq).await
    }

    /// Syncs both stores, at once, when the builder asked for it.
    async fn sync_stores_if_configured(&self) -> Result<()> {
        if !self.inner.sync {
            return Ok(());
        }
        let (identity, registry) =
            futures::future::join(self.inner.identity.sync(), self.inner.registry.sync()).await;
        identity.map_err(Error::Identity)?;
        registry.map_err(Error::Registry)
    }

    /// Brings both stores to the state the intent's recovery rule defines (idempotent).
    pub(super) async fn resolve(&self, intent: &Intent) -> Result<()> {
        match intent {
            Intent::Register { ids } => {
                for id in ids {
                    self.delete_record(id).await?;
                    self.delete_identity(id).await?;
                }
            }
            Intent::Unregister { id } => {
                self.delete_identity(id).await?;
                self.delete_record(id).await?;
            }
            Intent::SetStatus {
                id,
                enabled,
                reason,
                patch,
            } => match self.inner.registry.merge(id, patch, None).await {
                Ok(_) => {
                    let status = status_of(*enabled, reason);
                    match self.inner.identity.set_status(id, status, None).await {
                        Ok(_) | Err(iot_identity::Error::NotFound { .. }) => {}
                        Err(e) => return Err(Error::Identity(e)),
                    }
                }
                // A refused patch means the operation could never have got past its first
                // write: it did not happen.
                Err(e) if registry_refusal(&e) => {}
                Err(e) => return Err(Error::Registry(e)),
            },
        }
        Ok(())
    }

    pub(super) async fn delete_record(&self, id: &DeviceId) -> Result<()> {
        match self.inner.registry.delete(id, None).await {
            Ok(()) | Err(iot_registry::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Registry(e)),
        }
    }

    pub(super) async fn delete_identity(&self, id: &DeviceId) -> Result<()> {
        match self.inner.identity.delete(id, None).await {
            Ok(()) | Err(iot_identity::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Identity(e)),
        }
    }

    /// After a store call failed with `error` once intent `seq` was recorded: resolve it now and
    /// finish it. Returns `Ok` when the stores agree again and the intent is finished; otherwise
    /// recovery stays pending.
    pub(super) async fn settle(
        &self,
        writer: &mut Writer<'_>,
        seq: u64,
        intent: &Intent,
        id: &DeviceId,
    ) -> Result<()> {
        let settled = match self.resolve(intent).await {
            Ok(()) => self.finish(seq).await,
            Err(e) => Err(e),
        };
        settled.map_err(|e| {
            writer.needs_recovery = true;
            Error::RecoveryPending {
                id: id.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// Records `intent`. Recovery is marked as needed before the intent is written and stays so:
    /// if the caller drops this operation's future (a timeout, a disconnected client) between
    /// here and the intent's finish, the write lock is released with the intent unfinished, and
    /// the next write must resolve it before touching the stores, not a later restart (which
    /// could undo a registration that later calls had built upon). When every intent was
    /// finished, that recovery is one `pending()` call.
    pub(super) async fn begin(&self, writer: &mut Writer<'_>, intent: &Intent) -> Result<u64> {
        writer.needs_recovery = true;
        self.inner.journal.begin(intent).await
    }
}
