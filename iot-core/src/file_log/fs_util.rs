//! File-system helpers: atomic replacement, directory fsync, private file creation.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens (creating if absent) a file readable and writable by its owner only.
pub(crate) fn open_private(path: &Path, create: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::io("open", path, e))
}

/// Makes the directory entries of `dir` durable (new, renamed or removed files).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Replaces `dir/name` with `contents` so that a crash leaves either the old or the new file, never
/// a mix: write a temporary file, fsync it, rename it over the target, fsync the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = open_private(&tmp, true)?;
    file.set_len(0)
        .map_err(|e| Error::io("truncate", &tmp, e))?;
    file.write_all(contents)
        .map_err(|e| Error::io("write", &tmp, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(|e| Error::io("rename", &target, e))?;
    sync_dir(dir)
}

/// Creates `dir` and its parents, making the new entries durable.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}
