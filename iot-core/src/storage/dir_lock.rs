//! The exclusive lock that keeps a second writer out of a store's directory.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::storage::error::{StorageError, StorageResult};
use crate::storage::fs::open_private;

/// The name of the lock file in a store's directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds an advisory exclusive lock (`flock`) on `DIR/LOCK` while alive.
///
/// The lock belongs to the open file description, so it also keeps out a second store opened on
/// the same directory in the same process, and the kernel releases it when the process dies, even
/// by SIGKILL: a crashed writer never leaves a stale lock behind.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist), or fails with [`StorageError::Locked`] at once
    /// if another writer holds it.
    pub fn acquire(dir: &Path) -> StorageResult<Self> {
        let path = dir.join(LOCK_FILE);
        let file = open_private(&path, true)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
            Err(TryLockError::Error(e)) => Err(StorageError::io("lock", path, e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("dir");
        let first = DirLock::acquire(dir.path()).expect("first");
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(StorageError::Locked { .. })
        ));
        drop(first);
        DirLock::acquire(dir.path()).expect("after release");
    }
}
