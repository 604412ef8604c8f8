//! `FileLog` configuration.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::LogLimits;

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Leave writes in the OS page cache; the kernel writes them back. Survives the process
    /// crashing, not the machine. Fastest. Sealed segments are still fsync'ed when they are sealed.
    Buffered,
    /// Fsync every partition on this interval from a background task: a machine crash loses at
    /// most about one interval of acknowledged records.
    Interval(Duration),
    /// Fsync before acknowledging an append, with group commit: appenders that arrive while an
    /// fsync runs share the next one. Nothing acknowledged is lost. Readers see a record only once
    /// it is durable. The default.
    #[default]
    Ack,
}

/// How to open or create a [`FileLog`](crate::FileLog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLogConfig {
    /// Partition count. Used when the log is created; when it already exists it must match what is
    /// stored (changing it would move keys to other partitions). Default 4.
    pub partitions: u32,
    /// When writes reach the disk. Default [`Durability::Ack`].
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size. Retention removes whole
    /// segments, so this is also its granularity. Default 128 MiB.
    pub segment_bytes: u64,
    /// Bytes of log between sparse index entries. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// Size limits on appends.
    pub limits: LogLimits,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            partitions: 4,
            durability: Durability::Ack,
            segment_bytes: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
            limits: LogLimits::default(),
        }
    }
}

impl FileLogConfig {
    /// The defaults with `partitions` partitions.
    pub fn with_partitions(partitions: u32) -> Self {
        FileLogConfig {
            partitions,
            ..Self::default()
        }
    }

    /// Refuses a configuration that cannot work, saying which value to change.
    pub fn validate(&self) -> Result<()> {
        let refuse = |reason: String| Err(Error::Config { reason });
        if self.partitions == 0 {
            return refuse("FileLogConfig.partitions must be at least 1".into());
        }
        if self.segment_bytes == 0 {
            return refuse("FileLogConfig.segment_bytes must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return refuse("FileLogConfig.index_interval_bytes must be positive".into());
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return refuse(
                "Durability::Interval needs a positive interval; use Durability::Ack to fsync every append"
                    .into(),
            );
        }
        self.limits.validate()
    }
}
