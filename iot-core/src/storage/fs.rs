//! File-system steps every store takes the same way: private files, durable directories, atomic
//! replacement.
//!
//! These are blocking calls; async code runs them through [`run_blocking`](super::run_blocking).
//! Files are created with mode 0600 and directories with 0700: a store holds device keys, hashes and
//! messages that other users of the machine have no business reading.

#![allow(
    clippy::disallowed_methods,
    reason = "the kit's blocking primitives; async callers reach them through run_blocking"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use crate::storage::error::{StorageError, StorageResult};

/// Opens `path` for reading and writing, creating it (mode 0600) if `create`.
pub fn open_private(path: &Path, create: bool) -> StorageResult<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))
}

/// Opens `path` for appending (and reading), creating it (mode 0600) if `create`.
pub fn open_append(path: &Path, create: bool) -> StorageResult<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))
}

/// Makes the entries of `dir` durable (files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> StorageResult<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` (mode 0700) and its missing parents, making each new entry durable, so that a
/// power cut cannot take away a store whose writes were acknowledged.
pub fn create_dir_durably(dir: &Path) -> StorageResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => {}
        // Created by someone else meanwhile.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(StorageError::io("create directory", dir, e)),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Replaces `target` so that a crash leaves either the old or the new file, never a mix: write a
/// temporary file beside it, fsync it, rename it over `target`, fsync the directory. Returns the
/// new file's length.
pub fn replace_atomically(
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> StorageResult<u64> {
    let dir = parent_of(target);
    let tmp = temp_path(target);
    let file = open_private(&tmp, true)?;
    file.set_len(0)
        .map_err(|e| StorageError::io("truncate", &tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out).map_err(|e| StorageError::io("write", &tmp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| StorageError::io("write", &tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", &tmp, e))?
        .len();
    drop(file);
    fs::rename(&tmp, target).map_err(|e| StorageError::io("rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok(len)
}

/// [`replace_atomically`] with the whole new contents at hand.
pub fn write_atomically(target: &Path, contents: &[u8]) -> StorageResult<()> {
    replace_atomically(target, |out| out.write_all(contents)).map(|_| ())
}

/// The temporary file [`replace_atomically`] writes before renaming; a crash can leave it behind,
/// and [`remove_leftover_temp`] takes it away on open.
pub fn temp_path(target: &Path) -> std::path::PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(target).join(format!(".{name}.tmp"))
}

/// Removes what an interrupted [`replace_atomically`] of `target` left behind, if anything.
pub fn remove_leftover_temp(target: &Path) -> StorageResult<()> {
    let tmp = temp_path(target);
    match fs::remove_file(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", &tmp, e)),
    }
}

/// Reads a whole file, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> StorageResult<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", path, e)),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| StorageError::io("read", path, e))?;
    Ok(Some(data))
}

/// Cuts `path` to `len` bytes and makes the cut durable (recovery of a torn tail, or a repair).
pub fn truncate_durably(path: &Path, len: u64) -> StorageResult<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io("truncate", path, e))
}

/// Removes `path` (absent is fine) and makes the removal durable.
pub fn remove_durably(path: &Path) -> StorageResult<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_replacement_is_private_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("a/b/state");
        create_dir_durably(target.parent().expect("parent")).expect("mkdir");
        write_atomically(&target, b"one").expect("write");
        write_atomically(&target, b"two").expect("rewrite");
        assert_eq!(read_optional(&target).expect("read"), Some(b"two".to_vec()));
        assert!(!temp_path(&target).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&target).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.path().join("a"))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert_eq!(read_optional(&dir.path().join("none")).expect("read"), None);
    }
}
