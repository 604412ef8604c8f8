//! When a store acknowledges a write: one type for every file-backed store of the SDK.

use std::time::Duration;

use crate::storage::error::{StorageError, StorageResult};

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
    /// For a store that fsyncs in the writer's own call and has no background task: `Ok` for
    /// [`Fsync`](Durability::Fsync) and [`OsBuffered`](Durability::OsBuffered), and a
    /// [`StorageError::Config`] naming `store` and the alternatives for anything else.
    pub fn require_no_background_sync(self, store: &str) -> StorageResult<()> {
        match self {
            Durability::Fsync | Durability::OsBuffered => Ok(()),
            other => Err(StorageError::Config {
                reason: format!(
                    "{store} does not offer {other:?} (it has no background sync task); use \
                     Durability::Fsync (nothing acknowledged is lost) or Durability::OsBuffered \
                     (survives a process crash, not a power cut)"
                ),
            }),
        }
    }

    /// Whether a write is fsynced before it is acknowledged.
    pub fn syncs_each_write(self) -> bool {
        self == Durability::Fsync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_without_a_background_task_refuse_interval_by_name() {
        assert!(Durability::Fsync.require_no_background_sync("s").is_ok());
        assert!(
            Durability::OsBuffered
                .require_no_background_sync("s")
                .is_ok()
        );
        let refused = Durability::Interval(Duration::from_secs(1))
            .require_no_background_sync("the inbox")
            .expect_err("refused");
        let text = refused.to_string();
        assert!(
            text.contains("the inbox") && text.contains("Durability::Fsync"),
            "{text}"
        );
    }
}
