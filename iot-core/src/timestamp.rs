//! Wall-clock instants as stored in records.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An instant as microseconds since the Unix epoch (UTC).
///
/// Records store enqueued and device times this way: a fixed-size integer that sorts, serialises and
/// compares cheaply.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The current time of the system clock (the epoch if the clock is set before 1970).
    pub fn now() -> Self {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(Self::from_duration_since_epoch)
            .unwrap_or(Self::EPOCH)
    }

    /// From microseconds since the epoch.
    pub const fn from_unix_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// From milliseconds since the epoch (saturating).
    pub const fn from_unix_millis(millis: u64) -> Self {
        Timestamp(millis.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_unix_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0 / 1000
    }

    /// This instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// `self - d`, stopping at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }

    /// `self + d`, stopping at the largest representable instant.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    fn from_duration_since_epoch(d: Duration) -> Self {
        Timestamp(duration_micros(d))
    }
}

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        t.duration_since(UNIX_EPOCH)
            .map(Self::from_duration_since_epoch)
            .unwrap_or(Self::EPOCH)
    }
}
