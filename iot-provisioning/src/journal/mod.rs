//! The intent journal: what the provisioner is about to do to both stores, written durably before
//! the first store write and marked done once both stores agree again.
//!
//! An intent names devices and what must happen to them, never a secret: a registration is
//! undone rather than redone at recovery, so its keys never need to be written here.

mod file;
mod memory;

use std::fmt::Debug;

use async_trait::async_trait;
use iot_core::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;

pub use file::{FileJournal, FileJournalConfig};
pub use memory::MemoryJournal;

/// A change to both stores that recovery must finish or undo if it was interrupted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
#[non_exhaustive]
pub enum Intent {
    /// New devices (one, or a bulk batch) none of which existed in either store. Recovery rolls
    /// back: the call never returned their keys, so it removes them from both stores.
    Register {
        /// The devices being created.
        ids: Vec<DeviceId>,
    },
    /// A device being removed. Recovery rolls forward: removes it from both stores.
    Unregister {
        /// The device.
        id: DeviceId,
    },
    /// A status change together with a metadata merge. Recovery rolls forward: merges the patch
    /// (a merge patch applied twice gives the result of once) and sets the status.
    SetStatus {
        /// The device.
        id: DeviceId,
        /// Enabled or not.
        enabled: bool,
        /// The disable reason (when not enabled).
        reason: String,
        /// The merge patch for the registry record (`{"metadata": {...}}`).
        patch: Value,
    },
}

/// Durable storage of [`Intent`]s.
///
/// # Contract
///
/// `testkit::journal::run_all` (feature `testkit`) checks these on any implementation; an
/// implementation outside this crate reports its own failures as
/// [`Error::Backend`](crate::Error::Backend).
///
/// * [`begin`](Journal::begin) returns only once the intent will survive a crash, with a sequence
///   number larger than every earlier one (also those given out before a restart).
/// * [`finish`](Journal::finish) returns only once the intent's completion will survive a crash;
///   after it, [`pending`](Journal::pending) never returns the intent again.
/// * [`finish_unsynced`](Journal::finish_unsynced) records the finish like `finish`, but it may
///   be lost in a crash until the next `begin`, `finish` or [`sync`](Journal::sync) returns.
///   (The default implementations are `finish` and a no-op: always durable.)
/// * [`pending`](Journal::pending) returns the begun but unfinished intents in `begin` order,
///   including those of earlier runs (after a crash).
#[async_trait]
pub trait Journal: Send + Sync + Debug + 'static {
    /// Records `intent` durably; returns its sequence number.
    async fn begin(&self, intent: &Intent) -> Result<u64>;
    /// Records durably that intent `seq` needs no recovery.
    async fn finish(&self, seq: u64) -> Result<()>;
    /// Records that intent `seq` needs no recovery; durable from the next `begin`, `finish` or
    /// `sync` on. Lets a bulk request pay one sync per batch instead of two.
    async fn finish_unsynced(&self, seq: u64) -> Result<()> {
        self.finish(seq).await
    }
    /// Makes every earlier `finish_unsynced` durable.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// The unfinished intents, oldest first.
    async fn pending(&self) -> Result<Vec<(u64, Intent)>>;
}

macro_rules! forward_journal {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Journal + ?Sized> Journal for std::sync::$ptr<T> {
            async fn begin(&self, intent: &Intent) -> Result<u64> {
                (**self).begin(intent).await
            }
            async fn finish(&self, seq: u64) -> Result<()> {
                (**self).finish(seq).await
            }
            async fn finish_unsynced(&self, seq: u64) -> Result<()> {
                (**self).finish_unsynced(seq).await
            }
            async fn sync(&self) -> Result<()> {
                (**self).sync().await
            }
            async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
                (**self).pending().await
            }
        }
    };
}

forward_journal!(Arc);
