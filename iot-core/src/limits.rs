//! Size limits on appends and reads.

use crate::error::{Error, Result};
use crate::record::Record;

/// Limits every `Log` enforces on appends. The defaults suit device telemetry and leave room for
/// bulk uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLimits {
    /// Largest single record ([`Record::size_bytes`]). Default 1 MiB.
    pub max_record_bytes: usize,
    /// Largest batch, in bytes. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Most records in one batch. Default 100 000.
    pub max_batch_records: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_record_bytes: 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_records: 100_000,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl LogLimits {
    /// Sets [`max_record_bytes`](Self::max_record_bytes).
    pub fn max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// Sets [`max_batch_bytes`](Self::max_batch_bytes).
    pub fn max_batch_bytes(mut self, max_batch_bytes: usize) -> Self {
        self.max_batch_bytes = max_batch_bytes;
        self
    }

    /// Sets [`max_batch_records`](Self::max_batch_records).
    pub fn max_batch_records(mut self, max_batch_records: usize) -> Self {
        self.max_batch_records = max_batch_records;
        self
    }
}

impl LogLimits {
    /// Refuses a nonsensical configuration with a message that says which value is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.max_record_bytes == 0 || self.max_batch_bytes == 0 || self.max_batch_records == 0 {
            return Err(Error::Config {
                reason: format!("log limits must be positive, got {self:?}"),
            });
        }
        // FileLog frames carry 32-bit lengths.
        if self.max_batch_bytes > u32::MAX as usize / 2 {
            return Err(Error::Config {
                reason: format!(
                    "max_batch_bytes {} is above the supported 2 GiB",
                    self.max_batch_bytes
                ),
            });
        }
        if self.max_record_bytes > self.max_batch_bytes {
            return Err(Error::Config {
                reason: format!(
                    "max_record_bytes {} exceeds max_batch_bytes {}",
                    self.max_record_bytes, self.max_batch_bytes
                ),
            });
        }
        Ok(())
    }

    /// Checks a batch against the limits and returns its size in bytes.
    pub fn check_batch(&self, records: &[Record]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::InvalidInput {
                reason: "cannot append an empty batch".into(),
            });
        }
        let mut total = 0usize;
        for record in records {
            let size = record.size_bytes();
            if size > self.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    size,
                    limit: self.max_record_bytes,
                });
            }
            total = total.saturating_add(size);
        }
        if total > self.max_batch_bytes || records.len() > self.max_batch_records {
            return Err(Error::BatchTooLarge {
                records: records.len(),
                size: total,
                limit_records: self.max_batch_records,
                limit: self.max_batch_bytes,
            });
        }
        Ok(total)
    }
}

/// How much one [`read`](crate::Log::read) may return.
///
/// A read returns at most `max_records` records and stops before the record that would take the
/// total past `max_bytes` — except that the first record is always returned, however large, so that
/// a reader can never get stuck behind one big record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most records to return. Must be positive.
    pub max_records: usize,
    /// Byte budget ([`Record::size_bytes`] summed). Must be positive.
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    /// 1 000 records or 1 MiB.
    fn default() -> Self {
        ReadLimits {
            max_records: 1000,
            max_bytes: 1024 * 1024,
        }
    }
}

impl ReadLimits {
    /// At most `max_records` records, with a 64 MiB byte budget.
    pub fn records(max_records: usize) -> Self {
        ReadLimits {
            max_records,
            max_bytes: 64 * 1024 * 1024,
        }
    }

    /// Refuses zero limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_records == 0 || self.max_bytes == 0 {
            return Err(Error::InvalidInput {
                reason: format!("read limits must be positive, got {self:?}"),
            });
        }
        Ok(())
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_log_limits_setter_sets_its_own_field() {
        let built = LogLimits::default()
            .max_record_bytes(1)
            .max_batch_bytes(2)
            .max_batch_records(3);
        let expected = LogLimits {
            max_record_bytes: 1,
            max_batch_bytes: 2,
            max_batch_records: 3,
        };
        assert_eq!(built, expected);
    }
}
