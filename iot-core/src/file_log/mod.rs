//! `FileLog`: the partitioned log on local disk.
//!
//! Layout of a log directory:
//!
//! ```text
//! DIR/LOCK                       exclusive lock held by the open log (`storage::DirLock`)
//! DIR/log.json                   format version and partition count
//! DIR/p00000/…0000000000.log     segment: record batches in storage-kit frames (see `frame`)
//! DIR/p00000/…0000000000.idx     sparse offset index of that segment
//! DIR/groups/NAME.json           committed offsets of consumer group NAME
//! ```

mod config;
mod frame;
mod groups;
mod partition;
mod segment;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument, warn};

pub use crate::storage::Durability;
pub use config::FileLogConfig;

use crate::error::{Error, Result};
use crate::limits::ReadLimits;
use crate::log::{Appended, Log, RetentionPolicy, RetentionReport};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::storage::fs::{create_dir_durably, read_optional, write_atomically};
use crate::storage::{DirLock, run_blocking};
use crate::timestamp::Timestamp;
use groups::GroupOffsets;
use partition::{FilePartition, partition_dir};

/// Bytes a batch frame adds to its records on disk (the storage kit's 12-byte frame header and
/// the 21-byte batch header).
pub const BATCH_OVERHEAD_BYTES: usize = frame::FRAME_OVERHEAD;

/// A [`Log`] stored in segment files on local disk, crash-safe to the degree its
/// [`Durability`] promises.
///
/// * Each partition is a directory of segment files holding batches in the storage kit's
///   CRC32C-checked frames ([`crate::storage::frame`]), with a sparse offset index beside each.
/// * Opening runs recovery by the kit's one rule: a torn tail of the active segment (a damaged or
///   incomplete last batch with no intact batch after it) is cut off; damage followed by intact
///   batches, and any damage in a sealed segment, is refused with [`Error::Corrupt`] naming the
///   file and position — unless [`FileLogConfig::recovery`] asks to repair the active segment.
///   No read ever returns a record whose checksum fails.
/// * Consumer-group offsets are files replaced atomically and fsync'ed; a damaged one makes only
///   its group fail.
/// * An exclusive lock keeps a second writer (another process, or another `FileLog` in this one)
///   out of the directory: it gets [`Error::Locked`].
///
/// Positioned reads and writes of the page cache run inline; fsyncs, segment rolls, file removals
/// and recovery run on tokio's blocking pool.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use iot_core::{FileLog, FileLogConfig, Log, PartitionId, ReadLimits, Record};
///
/// let dir = tempfile::tempdir().unwrap();
/// let log = FileLog::open(dir.path(), FileLogConfig::with_partitions(2)).await?;
/// let at = log.append(PartitionId(1), vec![Record::new("dev-1", "21.5")]).await?;
/// drop(log);
///
/// let log = FileLog::open(dir.path(), FileLogConfig::with_partitions(2)).await?;
/// let back = log.read(PartitionId(1), at.first, ReadLimits::default()).await?;
/// assert_eq!(back[0].record.payload, "21.5");
/// # Ok::<(), iot_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct FileLog {
    inner: Arc<Inner>,
    /// The interval durability's background task, stopped when the log is dropped so that the
    /// directory lock is released promptly.
    syncer: Option<tokio::task::AbortHandle>,
}

impl Drop for FileLog {
    fn drop(&mut self) {
        if let Some(task) = &self.syncer {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: Arc<FileLogConfig>,
    partitions: Vec<Arc<FilePartition>>,
    groups: GroupOffsets,
    /// Held for the log's life and by every blocking task still writing its files (the
    /// partitions and groups share it); released by the kernel if the process dies.
    _lock: Arc<DirLock>,
}

/// `log.json`.
#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    format: u32,
    partitions: u32,
}

/// Version 2: batches in storage-kit frames (12-byte header). Version 1 logs are refused.
const FORMAT: u32 = 2;
const META_FILE: &str = "log.json";

impl FileLog {
    /// Opens the log in `dir`, creating it if absent, and recovers it. Needs a tokio runtime
    /// (the interval durability runs a background task).
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub async fn open(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        let inner = run_blocking(move || Inner::open(dir, config)).await?;
        let inner = Arc::new(inner);
        let syncer = match inner.config.durability {
            Durability::Interval(every) => {
                Some(tokio::spawn(sync_periodically(Arc::downgrade(&inner), every)).abort_handle())
            }
            Durability::OsBuffered | Durability::Fsync => None,
        };
        Ok(FileLog { inner, syncer })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &FileLogConfig {
        &self.inner.config
    }

    /// How many fsyncs of segment data the log has issued since it was opened, over all partitions
    /// (not counting those of segment roll and consumer-group commits). Under
    /// [`Durability::Fsync`], appends divided by this is how many appends each fsync served.
    pub fn fsync_count(&self) -> u64 {
        self.inner.partitions.iter().map(|p| p.fsyncs()).sum()
    }

    fn partition(&self, partition: PartitionId) -> Result<&Arc<FilePartition>> {
        self.inner
            .partitions
            .get(partition.index())
            .ok_or(Error::UnknownPartition {
                partition,
                partitions: self.partition_count(),
            })
    }
}

impl Inner {
    fn open(dir: PathBuf, config: FileLogConfig) -> Result<Self> {
        create_dir_durably(&dir)?;
        let lock = Arc::new(DirLock::acquire(&dir)?);
        let meta_path = dir.join(META_FILE);
        match read_optional(&meta_path)? {
            Some(raw) => {
                let meta: LogMeta = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
                    path: meta_path.clone(),
                    position: 0,
                    reason: format!("log metadata does not parse: {e}"),
                })?;
                if meta.format != FORMAT {
                    return Err(Error::Config {
                        reason: format!(
                            "{} holds format {}, this version reads format {FORMAT}",
                            meta_path.display(),
                            meta.format
                        ),
                    });
                }
                if meta.partitions != config.partitions {
                    return Err(Error::Config {
                        reason: format!(
                            "the log at {} has {} partitions but {} were configured; the count \
                             cannot change because keys would move to other partitions",
                            dir.display(),
                            meta.partitions,
                            config.partitions
                        ),
                    });
                }
            }
            None => {
                let meta = LogMeta {
                    format: FORMAT,
                    partitions: config.partitions,
                };
                let raw = serde_json::to_vec(&meta).map_err(|e| Error::Config {
                    reason: format!("cannot encode log metadata: {e}"),
                })?;
                write_atomically(&meta_path, &raw)?;
            }
        }
        let config = Arc::new(config);
        let partitions = (0..config.partitions)
            .map(|p| {
                let id = PartitionId(p);
                FilePartition::open(partition_dir(&dir, id), id, config.clone(), lock.clone())
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let ends: Vec<u64> = partitions.iter().map(|p| p.next_visible()).collect();
        let groups = GroupOffsets::open(dir.join("groups"), &ends, lock.clone())?;
        debug!(lock = %lock.path().display(), "file log open");
        Ok(Inner {
            dir,
            config,
            partitions,
            groups,
            _lock: lock,
        })
    }
}

/// The interval durability's background task; ends when the log is dropped.
async fn sync_periodically(inner: Weak<Inner>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for p in &inner.partitions {
            if let Err(e) = p.sync().await {
                warn!(error = %e, "periodic fsync failed");
            }
        }
    }
}

#[async_trait]
impl Log for FileLog {
    fn partition_count(&self) -> u32 {
        self.inner.config.partitions
    }

    #[instrument(level = "trace", skip_all, fields(partition = %partition, records = records.len()))]
    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended> {
        self.partition(partition)?.append(records).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        self.partition(partition)?.read(from, limits)
    }

    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
        self.partition(partition)?.wait_for(offset).await
    }

    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
        Ok(Offset(self.partition(partition)?.earliest()))
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        Ok(Offset(self.partition(partition)?.next_visible()))
    }

    #[instrument(level = "debug", skip_all, fields(group = %group, partition = %partition, offset = %offset))]
    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        let next = self.partition(partition)?.next_visible();
        if offset.0 > next {
            return Err(Error::OffsetBeyondEnd {
                partition,
                offset,
                next: Offset(next),
            });
        }
        self.inner.groups.commit(group, partition, offset).await
    }

    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>> {
        self.partition(partition)?;
        self.inner.groups.committed(group, partition).await
    }

    #[instrument(level = "debug", skip_all)]
    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for p in &self.inner.partitions {
            p.enforce_retention(policy, now, &mut report).await?;
        }
        Ok(report)
    }

    async fn sync(&self) -> Result<()> {
        for p in &self.inner.partitions {
            p.sync().await?;
        }
        Ok(())
    }
}
