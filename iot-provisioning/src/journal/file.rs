//! `FileJournal`: the intent journal as an append-only file of checksummed frames.
//!
//! # Format
//! `journal` in the directory is a sequence of frames `[len u32 LE][crc32c u32 LE][body]`, the
//! body JSON: `{"seq": n, "begin": <intent>}` or `{"seq": n, "finish": true}`. `LOCK` is held
//! with an exclusive advisory lock while a journal is open.
//!
//! # Invariants
//! * Every append is fsynced before `begin`/`finish` return; `finish_unsynced` appends without
//!   an fsync, and the next fsync of the file (any later append, or `sync`) makes it durable.
//! * A failed append is cut off again; if that or an fsync fails, the journal refuses further
//!   appends until reopened (the page cache can no longer be trusted).
//! * When nothing is pending and the file has grown past [`FileJournal::COMPACT_AFTER`], it is
//!   truncated to zero: nothing in it is needed any more, and a crash mid-truncation leaves
//!   either the old file (all finished) or an empty one.
//! * Open drops a torn last frame (one running past the end of the file, or a bad last frame)
//!   and refuses damage anywhere else.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Intent, Journal};
use crate::error::{Error, Result};

const JOURNAL_FILE: &str = "journal";
const LOCK_FILE: &str = "LOCK";
/// The largest frame body accepted (a bulk batch of registrations is far below it).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A durable [`Journal`] in a directory.
///
/// The file `journal` holds frames `[len u32 LE][crc32c u32 LE][JSON body]`, one per `begin` or
/// finish; `LOCK` is held with an exclusive advisory lock while the journal is open. Open drops
/// a torn last frame and refuses damage anywhere else ([`Error::CorruptJournal`]); a failed
/// append or fsync makes the journal refuse appends until reopened. When nothing is pending and
/// the file is over [`COMPACT_AFTER`](Self::COMPACT_AFTER) it is truncated to zero.
#[derive(Debug, Clone)]
pub struct FileJournal {
    /// A fair async lock, taken before the blocking work is spawned: see `blocking`.
    inner: Arc<tokio::sync::Mutex<Inner>>,
    path: PathBuf,
}

#[derive(Debug)]
struct Inner {
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    pending: BTreeMap<u64, Intent>,
    /// An append since the last fsync (a `finish_unsynced`).
    unsynced: bool,
    failed: bool,
    _lock: File,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    begin: Option<Intent>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    finish: bool,
}

impl FileJournal {
    /// Truncate the file once nothing is pending and it is larger than this (1 MiB).
    pub const COMPACT_AFTER: u64 = 1024 * 1024;

    /// Opens (or creates) the journal in `dir`, reading what a previous run left pending.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path, e)),
        }
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("read", &path, e))?;
        let (entries, valid_len) = parse(&path, &bytes)?;
        if valid_len < bytes.len() as u64 {
            warn!(path = %path.display(), position = valid_len, "cutting off a torn journal tail");
            file.set_len(valid_len)
                .map_err(|e| io_err("truncate", &path, e))?;
            file.sync_all().map_err(|e| io_err("fsync", &path, e))?;
        }
        let mut pending = BTreeMap::new();
        let mut next_seq = 1;
        for entry in entries {
            next_seq = next_seq.max(entry.seq.saturating_add(1));
            if let Some(intent) = entry.begin {
                pending.insert(entry.seq, intent);
            } else if entry.finish {
                pending.remove(&entry.seq);
            }
        }
        // Appends go to the end of the valid part.
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        sync_dir(dir)?;
        Ok(FileJournal {
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                file,
                path: path.clone(),
                len: valid_len,
                next_seq,
                pending,
                unsynced: false,
                failed: false,
                _lock: lock,
            })),
            path,
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The lock is taken here, in call order (tokio's mutex is fair), and moves into the
        // blocking task. So when a caller's future is dropped, its append either never started
        // or completes before any later call (such as the `pending` of the next recovery)
        // looks at the journal: an intent cannot appear after recovery has looked.
        let mut inner = Arc::clone(&self.inner).lock_owned().await;
        let path = self.path.clone();
        let work = move || f(&mut inner);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(work)
                .await
                .map_err(|e| io_err("run blocking task", &path, io::Error::other(e.to_string())))?,
            Err(_) => work(),
        }
    }
}

impl Inner {
    fn append(&mut self, entry: &Entry, sync: bool) -> Result<()> {
        if self.failed {
            return Err(io_err(
                "append",
                &self.path,
                io::Error::other("an earlier append failed; reopen the journal"),
            ));
        }
        let body = serde_json::to_vec(entry).map_err(|e| io_err("encode", &self.path, e.into()))?;
        if body.len() > MAX_FRAME {
            return Err(Error::invalid(format!(
                "a journal entry of {} bytes is over the limit of {MAX_FRAME}",
                body.len()
            )));
        }
        let mut frame = Vec::with_capacity(body.len() + 8);
        // The length fits: it was checked against MAX_FRAME above.
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let written = self
            .file
            .write_all(&frame)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            if self.file.set_len(self.len).is_err() {
                self.failed = true;
            }
            // After a failed fsync the page cache may hold data the disk lost; refuse further
            // appends until a reopen reads the file again.
            self.failed = true;
            return Err(io_err("append", &self.path, e));
        }
        self.len += frame.len() as u64;
        self.unsynced = !sync;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        if self.failed {
            return Err(io_err(
                "fsync",
                &self.path,
                io::Error::other("an earlier append failed; reopen the journal"),
            ));
        }
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(io_err("fsync", &self.path, e));
        }
        self.unsynced = false;
        Ok(())
    }

    fn finish(&mut self, seq: u64, sync: bool) -> Result<()> {
        self.append(
            &Entry {
                seq,
                begin: None,
                finish: true,
            },
            sync,
        )?;
        self.pending.remove(&seq);
        if sync {
            // The finish is durable; a failed truncation only costs disk space until reopen.
            if let Err(e) = self.compact_if_idle() {
                warn!(error = %e, "journal truncation failed");
            }
        }
        Ok(())
    }

    fn compact_if_idle(&mut self) -> Result<()> {
        if !self.pending.is_empty() || self.len <= FileJournal::COMPACT_AFTER {
            return Ok(());
        }
        let truncated = self.file.set_len(0).and_then(|()| self.file.sync_all());
        match truncated {
            Ok(()) => {
                self.len = 0;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(io_err("truncate", &self.path, e))
            }
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl Journal for FileJournal {
    async fn begin(&self, intent: &Intent) -> Result<u64> {
        let intent = intent.clone();
        self.blocking(move |inner| {
            let seq = inner.next_seq;
            // A damaged (or crafted) journal could hold a sequence number at the very top.
            let next = seq
                .checked_add(1)
                .ok_or_else(|| Error::invalid("the journal's sequence numbers are exhausted"))?;
            let entry = Entry {
                seq,
                begin: Some(intent),
                finish: false,
            };
            inner.append(&entry, true)?;
            inner.next_seq = next;
            if let Some(intent) = entry.begin {
                inner.pending.insert(seq, intent);
            }
            Ok(seq)
        })
        .await
    }

    async fn finish(&self, seq: u64) -> Result<()> {
        self.blocking(move |inner| inner.finish(seq, true)).await
    }

    async fn finish_unsynced(&self, seq: u64) -> Result<()> {
        self.blocking(move |inner| inner.finish(seq, false)).await
    }

    async fn sync(&self) -> Result<()> {
        self.blocking(Inner::sync).await
    }

    async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
        self.blocking(|inner| {
            Ok(inner
                .pending
                .iter()
                .map(|(seq, intent)| (*seq, intent.clone()))
                .collect())
        })
        .await
    }
}

/// The entries of a journal file and the length of its valid part (a torn tail excluded).
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Entry>, u64)> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let corrupt = |position: usize, reason: String| Error::CorruptJournal {
        path: path.to_owned(),
        position: position as u64,
        reason,
    };
    while pos < bytes.len() {
        let rest = bytes.get(pos..).unwrap_or_default();
        let Some((header, after)) = rest.split_first_chunk::<8>() else {
            // A header cut short can only be the torn last append.
            return Ok((entries, pos as u64));
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if len == 0 || len > MAX_FRAME {
            if rest.iter().all(|b| *b == 0) {
                return Ok((entries, pos as u64));
            }
            return Err(corrupt(pos, format!("frame length {len} is invalid")));
        }
        let Some(body) = after.get(..len) else {
            return Ok((entries, pos as u64));
        };
        let last = after.len() == len;
        if crc32c::crc32c(body) != crc {
            if last {
                return Ok((entries, pos as u64));
            }
            return Err(corrupt(pos, "checksum mismatch".into()));
        }
        let entry: Entry = serde_json::from_slice(body)
            .map_err(|e| corrupt(pos, format!("undecodable entry: {e}")))?;
        entries.push(entry);
        pos += 8 + len;
    }
    Ok((entries, pos as u64))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))
}

fn io_err(operation: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Journal {
        operation,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::DeviceId;

    fn intent(n: u32) -> Intent {
        Intent::Unregister {
            id: DeviceId::new(format!("d{n}")).unwrap_or_else(|_| unreachable!()),
        }
    }

    #[tokio::test]
    async fn pending_survives_reopen_and_torn_tails_are_cut() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| io_err("tempdir", Path::new("."), e))?;
        let (a, b) = {
            let j = FileJournal::open(dir.path())?;
            let a = j.begin(&intent(1)).await?;
            let b = j.begin(&intent(2)).await?;
            j.finish(a).await?;
            (a, b)
        };
        let j = FileJournal::open(dir.path())?;
        assert_eq!(j.pending().await?, vec![(b, intent(2))]);
        let c = j.begin(&intent(3)).await?;
        assert!(c > b && b > a);
        drop(j);
        // Cut the last frame at every byte: the journal opens with the frame gone, never fails.
        let path = dir.path().join(JOURNAL_FILE);
        let full = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        let (entries, _) = parse(&path, &full)?;
        assert_eq!(entries.len(), 4);
        let last_start = full.len() - {
            let (first_three, end) = parse(&path, &full[..full.len() - 1])?;
            assert_eq!(first_three.len(), 3);
            full.len() - end as usize
        };
        for cut in last_start..full.len() {
            fs::write(&path, &full[..cut]).map_err(|e| io_err("write", &path, e))?;
            let j = FileJournal::open(dir.path())?;
            assert_eq!(j.pending().await?, vec![(b, intent(2))], "cut at {cut}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn damage_in_the_middle_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| io_err("tempdir", Path::new("."), e))?;
        {
            let j = FileJournal::open(dir.path())?;
            j.begin(&intent(1)).await?;
            j.begin(&intent(2)).await?;
        }
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        bytes[10] ^= 0xff;
        fs::write(&path, &bytes).map_err(|e| io_err("write", &path, e))?;
        assert!(matches!(
            FileJournal::open(dir.path()),
            Err(Error::CorruptJournal { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_second_journal_on_the_directory_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| io_err("tempdir", Path::new("."), e))?;
        let _j = FileJournal::open(dir.path())?;
        assert!(matches!(
            FileJournal::open(dir.path()),
            Err(Error::Locked { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_journal_is_truncated() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| io_err("tempdir", Path::new("."), e))?;
        let j = FileJournal::open(dir.path())?;
        let ids: Vec<DeviceId> = (0..80_000)
            .map(|i| DeviceId::new(format!("device-{i}")).unwrap_or_else(|_| unreachable!()))
            .collect();
        let seq = j.begin(&Intent::Register { ids }).await?;
        let len = fs::metadata(j.path())
            .map_err(|e| io_err("stat", j.path(), e))?
            .len();
        assert!(len > FileJournal::COMPACT_AFTER);
        j.finish(seq).await?;
        let len = fs::metadata(j.path())
            .map_err(|e| io_err("stat", j.path(), e))?
            .len();
        assert_eq!(len, 0);
        drop(j);
        let j = FileJournal::open(dir.path())?;
        assert!(j.pending().await?.is_empty());
        Ok(())
    }
}
