//! The settings of a [`FileRegistry`](super::FileRegistry).

use iot_core::storage::{Durability, Recovery};

use crate::engine::RegistryConfig;
use crate::error::Result;

/// Settings of a [`FileRegistry`](super::FileRegistry).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileRegistryConfig {
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

impl Default for FileRegistryConfig {
    fn default() -> Self {
        FileRegistryConfig {
            registry: RegistryConfig::default(),
            durability: Durability::default(),
            compact_after_bytes: 64 * 1024 * 1024,
            recovery: Recovery::default(),
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl FileRegistryConfig {
    /// Sets [`registry`](Self::registry).
    pub fn registry(mut self, registry: RegistryConfig) -> Self {
        self.registry = registry;
        self
    }

    /// Sets [`durability`](Self::durability).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`compact_after_bytes`](Self::compact_after_bytes).
    pub fn compact_after_bytes(mut self, compact_after_bytes: u64) -> Self {
        self.compact_after_bytes = compact_after_bytes;
        self
    }

    /// Sets [`recovery`](Self::recovery).
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

impl FileRegistryConfig {
    pub(super) fn validate(&self) -> Result<()> {
        self.registry.validate()?;
        Ok(self.durability.require_no_background_sync("FileRegistry")?)
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let registry = RegistryConfig::default().max_page_size(5);
        let built = FileRegistryConfig::default()
            .registry(registry.clone())
            .durability(Durability::OsBuffered)
            .compact_after_bytes(100)
            .recovery(Recovery::Repair);
        let expected = FileRegistryConfig {
            registry,
            durability: Durability::OsBuffered,
            compact_after_bytes: 100,
            recovery: Recovery::Repair,
        };
        assert_eq!(built, expected);
    }
}
