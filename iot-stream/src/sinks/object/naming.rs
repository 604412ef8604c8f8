//! Object names: IoT Hub's file name format, made unique per batch.

use iot_core::StoredRecord;
use iot_core::time::Rfc3339;

use crate::error::{Error, Result};

/// The tokens IoT Hub's storage endpoints require in a file name format, all of them.
const TOKENS: [&str; 7] = [
    "{iothub}",
    "{partition}",
    "{YYYY}",
    "{MM}",
    "{DD}",
    "{HH}",
    "{mm}",
];

/// How batches are named: IoT Hub's *file name format* followed by `_`, the batch's first offset
/// (20 digits, so names sort as offsets do) and the format's extension.
///
/// The default format is IoT Hub's, `{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}`, so batch
/// `1234` of partition 3 of hub `my-hub` enqueued at 2024-02-29T10:15 UTC is
/// `my-hub/3/2024/02/29/10/15_00000000000000001234.parquet`. The time is the first record's
/// enqueued time (UTC). Since the name depends only on the batch's first record, writing a
/// batch again after a crash replaces the object rather than adding one.
#[derive(Clone, Debug)]
pub struct ObjectNaming {
    hub: String,
    format: String,
}

impl ObjectNaming {
    /// IoT Hub's default format for hub `hub`.
    pub fn new(hub: impl Into<String>) -> Result<Self> {
        Self::with_format(hub, "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}")
    }

    /// A custom file name format. As in IoT Hub, every token must appear (in any order, with any
    /// delimiters), so that no two partitions or minutes share a name.
    pub fn with_format(hub: impl Into<String>, format: impl Into<String>) -> Result<Self> {
        let (hub, format) = (hub.into(), format.into());
        if let Some(missing) = TOKENS.iter().find(|t| !format.contains(*t)) {
            return Err(Error::invalid(format!(
                "object name format {format:?} lacks {missing}"
            )));
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(&hub) {
            return Err(Error::invalid(format!(
                "hub name {hub:?} for object names: letters, digits, '-', '_', '.' only"
            )));
        }
        Ok(ObjectNaming { hub, format })
    }

    /// The name of the batch that starts with `first`, with extension `ext`.
    pub fn name(&self, first: &StoredRecord, ext: &str) -> String {
        let micros = i64::try_from(first.enqueued_time.as_unix_micros()).unwrap_or(i64::MAX);
        // `YYYY-MM-DDTHH:MM:SS.ffffffZ`; years past 9999 have more digits, so count from the end.
        let time = Rfc3339(micros).to_string();
        let n = time.len();
        let part = |from_end: usize, len: usize| {
            time.get(n - from_end..n - from_end + len).unwrap_or("00")
        };
        let name = self
            .format
            .replace("{iothub}", &self.hub)
            .replace("{partition}", &first.partition.0.to_string())
            .replace("{YYYY}", time.get(..n.saturating_sub(23)).unwrap_or("0000"))
            .replace("{MM}", part(22, 2))
            .replace("{DD}", part(19, 2))
            .replace("{HH}", part(16, 2))
            .replace("{mm}", part(13, 2));
        format!("{name}_{:020}.{ext}", first.offset.0)
    }
}

#[cfg(test)]
mod tests {
    use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};

    use super::*;

    fn at(micros: u64, offset: u64) -> StoredRecord {
        StoredRecord::new(
            PartitionId(3),
            Offset(offset),
            Timestamp::from_unix_micros(micros),
            Record::new("d", "x"),
        )
    }

    #[test]
    fn names_follow_iot_hubs_default_format() {
        let naming = ObjectNaming::new("my-hub").unwrap();
        assert_eq!(
            naming.name(&at(1_709_201_730_500_000, 1234), "parquet"),
            "my-hub/3/2024/02/29/10/15_00000000000000001234.parquet"
        );
        let custom =
            ObjectNaming::with_format("h", "{YYYY}{MM}{DD}-{HH}{mm}/{iothub}-{partition}").unwrap();
        assert_eq!(
            custom.name(&at(0, 7), "json"),
            "19700101-0000/h-3_00000000000000000007.json"
        );
    }

    #[test]
    fn every_token_is_required_and_the_hub_name_is_checked() {
        assert!(ObjectNaming::with_format("h", "{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}").is_err());
        assert!(ObjectNaming::new("a/b").is_err());
        assert!(ObjectNaming::new("").is_err());
    }
}
