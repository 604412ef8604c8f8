//! Recovery: bringing both stores to what an unfinished intent's rule defines.

use iot_core::DeviceId;
use tracing::warn;

use super::{Provisioner, Writer, registry_refusal, status_of};
use crate::error::{Error, Result};
use crate::journal::Intent;

impl Provisioner {
    /// Finishes or undoes every intent the journal holds unfinished. Runs on open and before the
    /// next write after a failure; callable at any time (it waits for the writes in flight).
    pub async fn recover(&self) -> Result<()> {
        self.inner.gate.require_recovery();
        let mut writer = self.inner.gate.exclusive().await;
        self.recover_locked(&mut writer).await
    }

    /// Resolves the journal's unfinished intents if a writer left any. Only under the exclusive
    /// lock: then no intent in the journal belongs to an operation still running.
    pub(super) async fn recover_locked(&self, writer: &mut Writer<'_>) -> Result<()> {
        if !writer.recovery_needed() {
            return Ok(());
        }
        if !writer.is_exclusive() {
            return Err(Error::invalid(
                "internal error: recovery without the exclusive write lock",
            ));
        }
        for (seq, intent) in self.inner.journal.pending().await? {
            warn!(seq, ?intent, "resolving an unfinished provisioning intent");
            self.resolve(&intent).await?;
            self.finish(writer, seq).await?;
        }
        writer.recovered();
        Ok(())
    }

    /// Permission to write device `id`, after resolving anything a failure left behind.
    pub(super) async fn lock(&self, id: &DeviceId) -> Result<Writer<'_>> {
        loop {
            if let Some(writer) = self.inner.gate.device(id).await {
                return Ok(writer);
            }
            let mut writer = self.inner.gate.exclusive().await;
            self.recover_locked(&mut writer).await?;
        }
    }

    /// Permission to write anything (a bulk batch), after resolving anything a failure left
    /// behind.
    pub(super) async fn lock_exclusive(&self) -> Result<Writer<'_>> {
        let mut writer = self.inner.gate.exclusive().await;
        self.recover_locked(&mut writer).await?;
        Ok(writer)
    }

    /// Marks intent `seq` finished, after making the stores' writes durable if so configured.
    pub(super) async fn finish(&self, writer: &mut Writer<'_>, seq: u64) -> Result<()> {
        self.sync_stores_if_configured().await?;
        self.inner.journal.finish(seq).await?;
        writer.finished();
        Ok(())
    }

    /// [`finish`](Self::finish) without waiting for the journal's sync (bulk batches).
    pub(super) async fn finish_unsynced(&self, writer: &mut Writer<'_>, seq: u64) -> Result<()> {
        self.sync_stores_if_configured().await?;
        self.inner.journal.finish_unsynced(seq).await?;
        writer.finished();
        Ok(())
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
            Ok(()) => self.finish(writer, seq).await,
            Err(e) => Err(e),
        };
        settled.map_err(|e| {
            writer.need_recovery();
            Error::RecoveryPending {
                id: id.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// Records `intent`. The writer counts it unfinished from before it is written until its
    /// finish: if the caller drops this operation's future (a timeout, a disconnected client) in
    /// between, the writer raises the recovery flag as it is dropped, and the next write resolves
    /// the intent before touching the stores — not a later restart, which could undo a
    /// registration that later calls had built upon.
    pub(super) async fn begin(&self, writer: &mut Writer<'_>, intent: &Intent) -> Result<u64> {
        writer.begun();
        self.inner.journal.begin(intent).await
    }
}
