//! `FileLog` configuration.

use crate::error::{Error, Result};
use crate::limits::LogLimits;
use crate::storage::{Durability, Recovery};

/// How to open or create a [`FileLog`](crate::FileLog).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileLogConfig {
    /// Partition count. Used when the log is created; when it already exists it must match what is
    /// stored (changing it would move keys to other partitions). Default 4.
    pub partitions: u32,
    /// When appends reach the disk. Default [`Durability::Fsync`]: fsync before acknowledging,
    /// with group commit (appenders that arrive while an fsync runs share the next one), and
    /// readers see a record only once it is durable. [`Durability::Interval`] fsyncs every
    /// partition from a background task; [`Durability::OsBuffered`] leaves writes to the OS
    /// (sealed segments are fsynced when sealed, whatever the mode).
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size. Retention removes whole
    /// segments, so this is also its granularity. Default 128 MiB.
    pub segment_bytes: u64,
    /// Bytes of log between sparse index entries. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// Size limits on appends.
    pub limits: LogLimits,
    /// What opening does with damage in the active segment that a crash cannot have left (a bad
    /// batch followed by intact ones). Default [`Recovery::Strict`]: refuse to open with
    /// [`Error::Corrupt`] naming the file and position. [`Recovery::Repair`] cuts the segment at
    /// the damage, dropping the batches after it (logged as a warning) — for an operator who has
    /// decided to accept the loss. A torn tail is cut off in either mode.
    pub recovery: Recovery,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            partitions: 4,
            durability: Durability::Fsync,
            segment_bytes: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
            limits: LogLimits::default(),
            recovery: Recovery::Strict,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl FileLogConfig {
    /// Sets [`partitions`](Self::partitions).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`durability`](Self::durability).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`segment_bytes`](Self::segment_bytes).
    pub fn segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.segment_bytes = segment_bytes;
        self
    }

    /// Sets [`index_interval_bytes`](Self::index_interval_bytes).
    pub fn index_interval_bytes(mut self, index_interval_bytes: u64) -> Self {
        self.index_interval_bytes = index_interval_bytes;
        self
    }

    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: LogLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`recovery`](Self::recovery).
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
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
                "Durability::Interval needs a positive interval; use Durability::Fsync to fsync every append"
                    .into(),
            );
        }
        self.limits.validate()
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let limits = LogLimits::default().max_record_bytes(10);
        let built = FileLogConfig::default()
            .partitions(7)
            .durability(Durability::OsBuffered)
            .segment_bytes(1 << 20)
            .index_interval_bytes(512)
            .limits(limits)
            .recovery(Recovery::Repair);
        let expected = FileLogConfig {
            partitions: 7,
            durability: Durability::OsBuffered,
            segment_bytes: 1 << 20,
            index_interval_bytes: 512,
            limits,
            recovery: Recovery::Repair,
        };
        assert_eq!(built, expected);
        assert_eq!(
            FileLogConfig::default().partitions(7),
            FileLogConfig::with_partitions(7)
        );
    }
}
