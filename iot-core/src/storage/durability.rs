//! When a store acknowledges a write: one type for every file-backed store of the SDK.

use std::time::Duration;

/// When an acknowledged write reaches the disk.
///
/// Every file-backed store takes this type. [`Durability::Interval`] needs a background task and is
/// offered by the stores that document it (the `FileLog`); the others refuse it when opened, with a
/// message naming the alternatives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Fsync before acknowledging (concurrent writers share one fsync where the store supports
    /// group commit). Nothing acknowledged is lost, even by a power cut. The default.
    #[default]
    Fsync,
    /// Fsync on this interval from a background task: a machine crash loses at most about one
    /// interval of acknowledged writes; a process crash loses nothing.
    Interval(Duration),
    /// Leave writes in the OS page cache: survives a crash of the process (`kill -9`), not of the
    /// machine. Fastest.
    OsBuffered,
}

impl Durability {
    /// Whether a write is fsynced before it is acknowledged.
    pub fn syncs_each_write(self) -> bool {
        self == Durability::Fsync
    }
}
