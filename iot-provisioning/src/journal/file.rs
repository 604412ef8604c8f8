//! `FileJournal`: the intent journal as a journal of the storage kit ([`iot_core::storage::journal`]).
//!
//! # Format
//! The directory holds the kit's `LOCK`, `wal` and `snapshot` files with the magic `IOTPJNL3`.
//! Each WAL operation is JSON: `{"kind": "begin", "seq": n, "intent": …}`,
//! `{"kind": "finish", "seq": n}`, or — in a snapshot — `{"kind": "nextSeq", "seq": n}`, the
//! number the next `begin` gets, so numbers keep growing after the WAL is emptied.
//!
//! # Invariants
//! * `begin` and `finish` return once their operation is fsynced. Concurrent callers share one
//!   fsync through the kit's group commit: the operation is staged and applied to the in-memory
//!   state under the journal's state lock, then acknowledged once its batch is durable.
//! * `finish_unsynced` stages and applies its operation without waiting; the group's flusher
//!   fsyncs it in the background, and any later `begin`, `finish`, `sync` or `pending` returns only
//!   once it is durable (the kit waits for every earlier ticket).
//! * `pending` answers from memory once every operation it may have seen is durable, so it never
//!   reports an intent (or the absence of one) that a crash could take back.
//! * Staging and applying happen together with no `.await` between them, so a caller's dropped
//!   future either staged its operation (which is then written and seen by recovery) or did not.
//! * When the WAL passes [`FileJournal::COMPACT_AFTER`] (and the last snapshot's size) the kit
//!   writes a snapshot — the next sequence number and the pending intents — and empties the WAL.
//! * Open follows the kit's torn-tail rule: a bad last frame (cut short by a crash, or zero-filled
//!   by a power cut) is cut off; damage followed by intact frames is refused with
//!   [`Error::CorruptJournal`], unless [`FileJournalConfig::recovery`] asks for
//!   [`Recovery::Repair`]. An intact frame that does not decode is refused either way.
//! * A failed write or fsync makes the journal refuse further operations until reopened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use iot_core::storage::journal::{Journal as KitJournal, JournalConfig, Journaled};
use iot_core::storage::{Durability, Recovery, run_blocking};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Intent, Journal};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"IOTPJNL3";
/// The largest operation accepted (a bulk batch of registrations is far below it).
const MAX_OP: usize = 64 * 1024 * 1024;

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
/// Each `begin` or `finish` returns once fsynced, and concurrent ones share the fsync (group
/// commit); the directory's `LOCK` keeps a second journal out. Open cuts a torn tail and refuses
/// damage anywhere else ([`Error::CorruptJournal`]) unless asked to repair; a failed write or
/// fsync makes the journal refuse operations until reopened. Cloning shares the journal.
#[derive(Debug, Clone)]
pub struct FileJournal {
    journal: KitJournal<Intents>,
}

/// The journal's state: what recovery must still look at, and the next number to give out.
#[derive(Debug)]
struct Intents {
    next_seq: u64,
    pending: BTreeMap<u64, Intent>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
enum Op {
    Begin { seq: u64, intent: Intent },
    Finish { seq: u64 },
    NextSeq { seq: u64 },
}

impl Journaled for Intents {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            Op::Begin { seq, intent } => {
                self.pending.insert(seq, intent);
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
            }
            Op::Finish { seq } => {
                self.pending.remove(&seq);
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
            }
            Op::NextSeq { seq } => self.next_seq = self.next_seq.max(seq),
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        std::iter::once(Op::NextSeq { seq: self.next_seq })
            .chain(self.pending.iter().map(|(seq, intent)| Op::Begin {
                seq: *seq,
                intent: intent.clone(),
            }))
            .collect()
    }
}

impl FileJournal {
    /// The WAL is compacted into a snapshot once it is larger than this (1 MiB) and than the
    /// last snapshot.
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
        let kit_config = JournalConfig::with_durability(Durability::Fsync)
            .compact_after_bytes(Self::COMPACT_AFTER)
            .max_op_bytes(MAX_OP)
            .recovery(config.recovery);
        let empty = Intents {
            next_seq: 1,
            pending: BTreeMap::new(),
        };
        let journal = KitJournal::open(dir, MAGIC, empty, kit_config)?;
        let pending = journal.read_blocking(|s| s.pending.len())?;
        info!(dir = %dir.display(), pending, "journal opened");
        Ok(FileJournal { journal })
    }

    /// The journal's write-ahead file (its snapshot sits beside it).
    pub fn path(&self) -> PathBuf {
        self.journal.wal_path()
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        self.journal.dir()
    }

    /// How many batches (fsyncs) the journal has written since it was opened.
    pub fn batches(&self) -> u64 {
        self.journal.batches()
    }
}

fn plan_finish(state: &Intents, seq: u64) -> Result<(Vec<Op>, ())> {
    // Finishing a number never given out would move the high-water mark past numbers not yet
    // handed out; it is a caller's mistake, not something to write down.
    if seq >= state.next_seq {
        return Err(Error::invalid(format!(
            "journal intent {seq} was never begun"
        )));
    }
    Ok((vec![Op::Finish { seq }], ()))
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl Journal for FileJournal {
    async fn begin(&self, intent: &Intent) -> Result<u64> {
        self.journal
            .write(|state| {
                let seq = state.next_seq;
                // A damaged (or crafted) journal could hold a sequence number at the very top.
                seq.checked_add(1).ok_or_else(|| {
                    Error::invalid("the journal's sequence numbers are exhausted")
                })?;
                let op = Op::Begin {
                    seq,
                    intent: intent.clone(),
                };
                Ok((vec![op], seq))
            })
            .await
    }

    async fn finish(&self, seq: u64) -> Result<()> {
        self.journal.write(|state| plan_finish(state, seq)).await
    }

    async fn finish_unsynced(&self, seq: u64) -> Result<()> {
        self.journal.write_deferred(|state| plan_finish(state, seq))
    }

    async fn sync(&self) -> Result<()> {
        // A read returns once everything staged before it is durable.
        Ok(self.journal.read(|_| ()).await?)
    }

    async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
        Ok(self
            .journal
            .read(|state| {
                state
                    .pending
                    .iter()
                    .map(|(seq, intent)| (*seq, intent.clone()))
                    .collect()
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::DeviceId;
    use iot_core::storage::StorageError;

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
    async fn finishing_a_number_never_given_out_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        let seq = j.begin(&intent(1)).await?;
        assert!(matches!(
            j.finish(seq + 1).await,
            Err(Error::InvalidInput { .. })
        ));
        assert_eq!(j.begin(&intent(2)).await?, seq + 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_large_journal_is_compacted_and_keeps_its_pending_intents_and_numbers() -> Result<()>
    {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        let kept = j.begin(&intent(7)).await?;
        let ids: Vec<DeviceId> = (0..80_000)
            .map(|i| DeviceId::new(format!("device-{i}")).unwrap_or_else(|_| unreachable!()))
            .collect();
        let big = j.begin(&Intent::Register { ids }).await?;
        j.finish(big).await?;
        // The finish pushed the WAL past the threshold: it was emptied into a snapshot.
        assert!(size(&j.path()) < 64, "compacted: {}", size(&j.path()));
        let next = j.begin(&intent(1)).await?;
        assert!(next > big);
        drop(j);
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        assert_eq!(
            j.pending().await?,
            vec![(kept, intent(7)), (next, intent(1))]
        );
        assert!(j.begin(&intent(2)).await? > next);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_begins_share_fsyncs() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let j = FileJournal::open(dir.path(), FileJournalConfig::default()).await?;
        let tasks: Vec<_> = (0..32u32)
            .map(|w| {
                let j = j.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        let seq = j.begin(&intent(w * 100 + i)).await?;
                        j.finish(seq).await?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| Error::invalid(e.to_string()))??;
        }
        assert!(j.pending().await?.is_empty());
        // 1 280 acknowledged operations; one fsync each would be 1 280 batches.
        assert!(j.batches() < 1_280, "batches: {}", j.batches());
        Ok(())
    }

    #[tokio::test]
    async fn a_file_without_the_magic_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", ".", e))?;
        let path = dir.path().join("wal");
        for bad in [
            &b"IOTPJNL2 and more"[..],
            b"IOTPJNL3SNAP",
            b"something else",
        ] {
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
