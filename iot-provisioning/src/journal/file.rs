//! `FileJournal`: the intent journal as an append-only file of the storage kit's frames.
//!
//! # Format
//! `journal` in the directory is the magic `IOTPJNL2` followed by frames of the storage kit
//! ([`iot_core::storage::frame`]: `[len u32][crc32c u32][crc32c of len+crc u32][body]`), the
//! body JSON: `{"seq": n, "begin": <intent>}` or `{"seq": n, "finish": true}`. `LOCK` is the
//! kit's [`DirLock`].
//!
//! # Invariants
//! * Every append is fsynced before `begin`/`finish` return; `finish_unsynced` appends without
//!   an fsync, and the next fsync of the file (any later append, or `sync`) makes it durable.
//! * A failed append is cut off again; if that or an fsync fails, the journal refuses further
//!   appends until reopened (the page cache can no longer be trusted).
//! * When nothing is pending and the file has grown past [`FileJournal::COMPACT_AFTER`], it is
//!   replaced (atomically) by its magic and one finish entry of the last sequence number given
//!   out: nothing else is needed any more, and numbers keep growing after a reopen. A crash
//!   mid-replacement leaves either file.
//! * The file is created by an atomic rename with its magic, so it always starts with it.
//! * Open follows the kit's torn-tail rule: a bad frame with no intact frame after it (cut short
//!   by a crash, or zero-filled by a power cut) is cut off; damage followed by intact frames is
//!   refused with [`Error::CorruptJournal`], unless [`FileJournalConfig::recovery`] asks for
//!   [`Recovery::Repair`]. An intact frame that does not decode is refused either way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::frame;
use iot_core::storage::{DirLock, Recovery, StorageError, fs, run_blocking};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Intent, Journal};
use crate::error::{Error, Result};

const JOURNAL_FILE: &str = "journal";
const MAGIC: &[u8; 8] = b"IOTPJNL2";
const MAGIC_LEN: u64 = MAGIC.len() as u64;
/// The largest frame body accepted (a bulk batch of registrations is far below it).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// How a [`FileJournal`] is opened.
///
/// ```
/// use iot_provisioning::{FileJournalConfig, Recovery};
///
/// let config = FileJournalConfig::default().recovery(Recovery::Repair);
/// assert_eq!(config.recovery, Recovery::Repair);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileJournalConfig {
    /// What opening does with a damaged journal: [`Recovery::Strict`] (the default) refuses it
    /// with [`Error::CorruptJournal`]; [`Recovery::Repair`] cuts the file at the damage, dropping
    /// the entries from there on (logged). Dropped `begin`s are intents recovery will not see, so
    /// check the stores' agreement after a repair.
    pub recovery: Recovery,
}

impl FileJournalConfig {
    /// Sets what opening does with a damaged journal.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

/// A durable [`Journal`] in a directory; its format is in `docs/provisioning.md`.
///
/// Each `begin` or finish is one frame, fsynced; the directory's `LOCK` keeps a second journal
/// out. Open cuts a torn tail and refuses damage anywhere else ([`Error::CorruptJournal`]) unless
/// asked to repair; a failed append or fsync makes the journal refuse appends until reopened.
/// When nothing is pending and the file is over [`COMPACT_AFTER`](Self::COMPACT_AFTER) it is
/// rewritten to its magic and the last sequence number given out.
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
    buf: Vec<u8>,
    _lock: DirLock,
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

    /// Opens (or creates) the journal in `dir`, reading what a previous run left pending, on
    /// tokio's blocking pool.
    pub async fn open(dir: impl AsRef<Path>, config: FileJournalConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: impl AsRef<Path>, config: FileJournalConfig) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_durably(dir)?;
        let lock = DirLock::acquire(dir)?;
        let path = dir.join(JOURNAL_FILE);
        fs::remove_leftover_temp(&path)?;
        let data = match fs::read_optional(&path)? {
            Some(data) => data,
            None => {
                fs::write_atomically(&path, MAGIC)?;
                MAGIC.to_vec()
            }
        };
        if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(
                StorageError::corrupt(&path, 0, "not a provisioning journal (bad magic)").into(),
            );
        }
        let body = &data[MAGIC.len()..];
        let scan = frame::recover_file(&path, body, MAGIC_LEN, MAX_FRAME, config.recovery)?;
        let mut pending = BTreeMap::new();
        let mut next_seq = 1;
        for (position, range) in scan.frames {
            let entry: Entry = serde_json::from_slice(&body[range]).map_err(|e| {
                StorageError::corrupt(&path, position, format!("undecodable entry: {e}"))
            })?;
            next_seq = next_seq.max(entry.seq.saturating_add(1));
            if let Some(intent) = entry.begin {
                pending.insert(entry.seq, intent);
            } else if entry.finish {
                pending.remove(&entry.seq);
            }
        }
        info!(path = %path.display(), pending = pending.len(), "journal opened");
        Ok(FileJournal {
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                // Appends go to the end of the valid part: recovery cut off anything after it.
                file: fs::open_append(&path, false)?,
                path: path.clone(),
                len: scan.valid_end,
                next_seq,
                pending,
                unsynced: false,
                failed: false,
                buf: Vec::new(),
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
        run_blocking(move || f(&mut inner)).await
    }
}

impl Inner {
    fn refused(&self) -> Error {
        StorageError::Failed {
            path: self.path.clone(),
        }
        .into()
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the journal calls it inside run_blocking"
    )]
    fn append(&mut self, entry: &Entry, sync: bool) -> Result<()> {
        if self.failed {
            return Err(self.refused());
        }
        self.buf.clear();
        let start = frame::begin(&mut self.buf);
        serde_json::to_writer(&mut self.buf, entry)
            .map_err(|e| StorageError::io("encode", &self.path, e.into()))?;
        let size = self.buf.len() - frame::HEADER_LEN;
        // Open refuses frames over the limit, so one must never be written.
        if size > MAX_FRAME {
            return Err(StorageError::TooLarge {
                what: "journal entry",
                size,
                limit: MAX_FRAME,
            }
            .into());
        }
        frame::finish(&mut self.buf, start)?;
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // After a failed fsync the page cache may hold data the disk lost, and a failed
            // write may have left part of a frame: refuse further appends until a reopen reads
            // the file again (and cuts what is torn).
            let _ = self.file.set_len(self.len);
            self.failed = true;
            return Err(StorageError::io("append", &self.path, e).into());
        }
        self.len += self.buf.len() as u64;
        self.unsynced = !sync;
        Ok(())
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the journal calls it inside run_blocking"
    )]
    fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        if self.failed {
            return Err(self.refused());
        }
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(StorageError::io("fsync", &self.path, e).into());
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
            // The finish is durable; a failed compaction only costs disk space until reopen.
            if let Err(e) = self.compact_if_idle() {
                warn!(error = %e, "journal compaction failed");
            }
        }
        Ok(())
    }

    fn compact_if_idle(&mut self) -> Result<()> {
        if !self.pending.is_empty() || self.len <= FileJournal::COMPACT_AFTER {
            return Ok(());
        }
        // The new file keeps one entry: a finish of the last number given out, so that numbers
        // keep growing after a reopen (a bare magic would restart them at 1, below numbers
        // already handed out). It replaces the old file atomically: a crash leaves one or the
        // other, and both hold the high-water mark and nothing pending.
        let mut contents = MAGIC.to_vec();
        let marker = Entry {
            seq: self.next_seq.saturating_sub(1),
            begin: None,
            finish: true,
        };
        let start = frame::begin(&mut contents);
        serde_json::to_writer(&mut contents, &marker)
            .map_err(|e| StorageError::io("encode", &self.path, e.into()))?;
        frame::finish(&mut contents, start)?;
        let replaced = fs::write_atomically(&self.path, &contents)
            .and_then(|()| fs::open_append(&self.path, false));
        match replaced {
            Ok(file) => {
                self.file = file;
                self.len = contents.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The handle may now point at the replaced file: refuse appends until reopened.
                self.failed = true;
                Err(e.into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::DeviceId;

    fn intent(n: u32) -> Intent {
        Intent::Unregister {
            id: DeviceId::new(format!("d{n}")).unwrap_or_else(|_| unreachable!()),
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn pending_survives_reopen() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let (a, b) = {
            let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
            let a = j.begin(&intent(1)).await?;
            let b = j.begin(&intent(2)).await?;
            j.finish(a).await?;
            (a, b)
        };
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        assert_eq!(j.pending().await?, vec![(b, intent(2))]);
        let c = j.begin(&intent(3)).await?;
        assert!(c > b && b > a);
        Ok(())
    }

    #[tokio::test]
    async fn a_second_journal_on_the_directory_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let _j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        assert!(matches!(
            FileJournal::open(dir.path(), FileJournalConfig::default()).await,
            Err(Error::Locked { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_journal_is_compacted_to_its_magic_and_high_water_mark() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        let ids: Vec<DeviceId> = (0..80_000)
            .map(|i| DeviceId::new(format!("device-{i}")).unwrap_or_else(|_| unreachable!()))
            .collect();
        let seq = j.begin(&Intent::Register { ids }).await?;
        assert!(size(j.path()) > FileJournal::COMPACT_AFTER);
        j.finish(seq).await?;
        assert!(size(j.path()) < MAGIC_LEN + 64, "compacted");
        let next = j.begin(&intent(1)).await?;
        assert!(next > seq);
        drop(j);
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        assert_eq!(j.pending().await?, vec![(next, intent(1))]);
        Ok(())
    }

    #[tokio::test]
    async fn a_file_without_the_magic_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let path = dir.path().join(JOURNAL_FILE);
        for bad in [&b""[..], b"IOTPJNL", b"IOTPJNL1 and more"] {
            std::fs::write(&path, bad).map_err(|e| StorageError::io("write", &path, e))?;
            assert!(
                matches!(
                    FileJournal::open(dir.path(), FileJournalConfig::default()).await,
                    Err(Error::CorruptJournal { position: 0, .. })
                ),
                "{bad:?}"
            );
        }
        Ok(())
    }
}
