//! File-system helpers: private file modes, directory fsync, atomic replacement.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens (creating if needed, mode 0600 on Unix) `path` for reading and writing.
pub(crate) fn open_private(path: &Path, truncate: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::io("open", path, e))
}

/// Creates `dir` (mode 0700 on Unix) and its parents if needed.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Makes the directory's entries (new names, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `target` with the bytes `write` produces, atomically: a crash leaves either the old
/// file or the complete new one. Temp file (0600), fsync, rename, fsync the directory.
pub(crate) fn replace_atomically(
    dir: &Path,
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<u64> {
    let tmp = target.with_extension("tmp");
    let file = open_private(&tmp, true)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write(&mut out).map_err(|e| Error::io("write", &tmp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", &tmp, e))?
        .len();
    drop(file);
    fs::rename(&tmp, target).map_err(|e| Error::io("rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok(len)
}
