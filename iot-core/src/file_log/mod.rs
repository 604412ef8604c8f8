//! `FileLog`: the partitioned log on local disk.
//!
//! Layout of a log directory:
//!
//! ```text
//! DIR/LOCK                       exclusive lock held by the open log
//! DIR/log.json                   format version and partition count
//! DIR/p00000/…0000000000.log     segment: CRC32C-checked record batches (see `frame`)
//! DIR/p00000/…0000000000.idx     sparse offset index of that segment
//! DIR/groups/NAME.json           committed offsets of consumer group NAME
//! ```

mod config;
mod dir_lock;
mod frame;
mod fs_util;
mod groups;
mod partition;
mod segment;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument, warn};

pub use config::{Durability, FileLogConfig};

use crate::error::{Error, Result};
use crate::limits::ReadLimits;
use crate::log::{Appended, Log, RetentionPolicy, RetentionReport};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::timestamp::Timestamp;
use dir_lock::DirLock;
use fs_util::{create_dir_durably, write_atomically};
use groups::GroupOffsets;
use partition::{FilePartition, partition_dir};

/// Bytes a batch frame adds to its records on disk.
pub const BATCH_OVERHEAD_BYTES: usize = frame::FRAME_OVERHEAD;

/// A [`Log`] stored in segment files on local disk, crash-safe to the degree its
/// [`Durability`] promises.
///
/// * Each partition is a directory of segment files holding length-prefixed, CRC32C-checked
///   batches, with a sparse offset index beside each.
/// * Opening runs recovery: the active segment of each partition is checked batch by batch and a
///   torn or damaged tail is truncated; damage in a sealed segment is reported as
///   [`Error::Corrupt`], never skipped. No read ever returns a record whose checksum fails.
/// * Consumer-group offsets are files replaced atomically and fsync'ed.
/// * An exclusive lock keeps a second writer (another process, or another `FileLog` in this one)
///   out of the directory: it gets [`Error::Locked`].
///
/// Positioned reads and writes of the page cache run inline; fsyncs run on tokio's blocking pool.
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
    partitions: Vec<FilePartition>,
    groups: GroupOffsets,
    /// Held for the log's life; released by the kernel if the process dies.
    _lock: DirLock,
}

/// `log.json`.
#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    format: u32,
    partitions: u32,
}

const FORMAT: u32 = 1;
const META_FILE: &str = "log.json";

impl FileLog {
    /// Opens the log in `dir`, creating it if absent, and recovers it. Needs a tokio runtime
    /// (the interval durability runs a background task).
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub async fn open(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        let inner = tokio::task::spawn_blocking(move || Inner::open(dir, config))
            .await
            .map_err(|_| Error::Closed)??;
        let inner = Arc::new(inner);
        let syncer = match inner.config.durability {
            Durability::Interval(every) => {
                Some(tokio::spawn(sync_periodically(Arc::downgrade(&inner), every)).abort_handle())
            }
            Durability::Buffered | Durability::Ack => None,
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
    /// [`Durability::Ack`], appends divided by this is how many appends each fsync served.
    pub fn fsync_count(&self) -> u64 {
        self.inner
            .partitions
            .iter()
            .map(FilePartition::fsyncs)
            .sum()
    }

    fn partition(&self, partition: PartitionId) -> Result<&FilePartition> {
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
        let lock = DirLock::acquire(&dir)?;
        let meta_path = dir.join(META_FILE);
        match std::fs::read(&meta_path) {
            Ok(raw) => {
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = LogMeta {
                    format: FORMAT,
                    partitions: config.partitions,
                };
                let raw = serde_json::to_vec(&meta).map_err(|e| Error::Config {
                    reason: format!("cannot encode log metadata: {e}"),
                })?;
                write_atomically(&dir, META_FILE, &raw)?;
            }
            Err(e) => return Err(Error::io("read", meta_path, e)),
        }
        let config = Arc::new(config);
        let partitions = (0..config.partitions)
            .map(|p| {
                let id = PartitionId(p);
                FilePartition::open(partition_dir(&dir, id), id, config.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let groups = GroupOffsets::open(dir.join("groups"), config.partitions)?;
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
        Ok(self.inner.groups.committed(group, partition).await)
    }

    #[instrument(level = "debug", skip_all)]
    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for p in &self.inner.partitions {
            p.enforce_retention(policy, now, &mut report)?;
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
