//! The exclusive lock that keeps a second writer out of a log directory.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file_log::fs_util::open_private;

/// Holds an advisory exclusive lock (`flock`) on `DIR/LOCK` while alive.
///
/// The lock belongs to the open file description, so it also keeps out a second `FileLog` opened
/// in the same process, and the kernel releases it when the process dies, even by SIGKILL.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("LOCK");
        let file = open_private(&path, true)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
