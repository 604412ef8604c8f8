//! `FileAccessStore`: the access state in memory, made durable by the storage kit's write-ahead
//! journal with snapshots ([`iot_core::storage::journal`]), like the module store.

use std::path::{Path, PathBuf};

use iot_core::Timestamp;
use iot_core::storage::{Durability, Journal, JournalConfig, Recovery, run_blocking};

use super::grant::Grant;
use super::names::{RoleName, UserName};
use super::role::Role;
use super::session::{Session, SessionDigest};
use super::state::{AccessState, Plan};
use super::user::{NewUser, User};
use super::{UserAccess, access_store_over_state};
use crate::credentials::PassphraseHash;
use crate::error::{Error, Result};

/// The journal's magic (first version).
const MAGIC: &[u8; 8] = b"IOTACC01";

/// How a [`FileAccessStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileAccessStoreConfig {
    /// When writes are acknowledged. Default [`Durability::Fsync`]; [`Durability::Interval`] is
    /// refused.
    pub durability: Durability,
    /// What opening does with damage followed by intact data. Default [`Recovery::Strict`].
    pub recovery: Recovery,
}

impl Default for FileAccessStoreConfig {
    fn default() -> Self {
        FileAccessStoreConfig {
            durability: Durability::Fsync,
            recovery: Recovery::Strict,
        }
    }
}

impl FileAccessStoreConfig {
    /// Sets when writes are acknowledged.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets what opening does with corruption.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

/// A durable [`AccessStore`](super::AccessStore) in a directory of its own: every write is
/// journaled (and, with [`Durability::Fsync`], fsynced; concurrent writers share one) before it is
/// acknowledged, and a crash loses nothing acknowledged. The files hold password hashes and
/// session digests, never a password or a token; keep the directory private all the same.
#[derive(Debug, Clone)]
pub struct FileAccessStore {
    journal: Journal<AccessState>,
    dir: PathBuf,
}

impl FileAccessStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, config: FileAccessStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, config: FileAccessStoreConfig) -> Result<Self> {
        let journal_config =
            JournalConfig::with_durability(config.durability).recovery(config.recovery);
        let journal = Journal::open(dir, MAGIC, AccessState::default(), journal_config)?;
        Ok(FileAccessStore {
            journal,
            dir: dir.to_owned(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn write<T>(&self, plan: impl FnOnce(&AccessState) -> Result<Plan<T>>) -> Result<T>
    where
        T: Send,
    {
        self.journal.write::<_, Error>(plan).await
    }

    async fn read<T>(&self, f: impl FnOnce(&AccessState) -> T) -> Result<T> {
        Ok(self.journal.read(f).await?)
    }
}

access_store_over_state!(FileAccessStore);
