//! Positions in the log: partitions and offsets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The position of a record within one partition.
///
/// Offsets start at 0, grow by one per record, are never reused, and survive retention: after the
/// oldest records are removed, the remaining ones keep their offsets. A consumer group's committed
/// offset is the offset of the *next* record it wants (the one after the last it processed).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset before any record.
    pub const ZERO: Offset = Offset(0);

    /// The offset as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The following offset.
    pub fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(v: u64) -> Self {
        Offset(v)
    }
}

/// The index of a partition within a topic, from 0 to the partition count − 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl PartitionId {
    /// The partition as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The partition as an index into per-partition arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u32> for PartitionId {
    fn from(v: u32) -> Self {
        PartitionId(v)
    }
}
