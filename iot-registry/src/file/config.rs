//! The settings of a [`FileRegistry`](super::FileRegistry).

use iot_core::storage::{Durability, Recovery};

use crate::engine::RegistryConfig;
use crate::error::{Error, Result};

/// Settings of a [`FileRegistry`](super::FileRegistry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    /// Limits, unindexed paths, page size.
    pub registry: RegistryConfig,
    /// When writes are acknowledged: [`Durability::Fsync`] (default) or
    /// [`Durability::OsBuffered`]. [`Durability::Interval`] is refused at open: the registry has
    /// no background sync task.
    pub durability: Durability,
    /// Write a new snapshot when the log passes this many bytes (and half the snapshot's size).
    /// Default 64 MiB.
    pub compact_after_bytes: u64,
    /// What open does with corruption (damage followed by intact data): refuse with
    /// [`Error::Corrupt`] ([`Recovery::Strict`], the default), or cut the log at the damage and
    /// load a snapshot's records up to it ([`Recovery::Repair`], logged). A torn tail of the log
    /// is always cut.
    pub recovery: Recovery,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            registry: RegistryConfig::default(),
            durability: Durability::default(),
            compact_after_bytes: 64 * 1024 * 1024,
            recovery: Recovery::default(),
        }
    }
}

impl FileConfig {
    pub(super) fn validate(&self) -> Result<()> {
        self.registry.validate()?;
        match self.durability {
            Durability::Fsync | Durability::OsBuffered => Ok(()),
            other => Err(Error::Config {
                reason: format!(
                    "FileRegistry does not support {other:?} (it has no background sync task); \
                     use Durability::Fsync or Durability::OsBuffered"
                ),
            }),
        }
    }
}
