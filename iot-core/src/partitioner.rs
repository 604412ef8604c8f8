//! The stable key → partition mapping.

use crate::offset::PartitionId;

/// The partition of `key` in a topic of `partitions` partitions.
///
/// **The hash is part of the on-disk contract and never changes:** it is CRC32C (Castagnoli,
/// reflected polynomial `0x82F63B78`, initial value and final XOR `0xFFFFFFFF` — the checksum of
/// iSCSI and ext4) of the key's UTF-8 bytes, taken modulo the partition count. The same key always
/// lands in the same partition, across restarts, machines and versions of this crate, as long as
/// the partition count stays the same (which is why a `FileLog` refuses to reopen with another
/// count). CRC32C is hardware-accelerated on x86-64 and aarch64 and spreads device ids evenly.
///
/// ```
/// use iot_core::{partition_for_key, PartitionId};
///
/// assert_eq!(partition_for_key("sensor-17", 8), partition_for_key("sensor-17", 8));
/// assert_eq!(partition_for_key("anything", 1), PartitionId(0));
/// ```
///
/// # Panics
///
/// Never: a partition count of 0 maps everything to partition 0 (logs refuse 0 partitions).
pub fn partition_for_key(key: &str, partitions: u32) -> PartitionId {
    let hash = crc32c::crc32c(key.as_bytes());
    PartitionId(hash.checked_rem(partitions).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if this test fails, the mapping changed and existing logs would be read
    /// with keys in the wrong partitions.
    #[test]
    fn mapping_is_pinned() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(partition_for_key("", 8), PartitionId(0));
        let fixed: Vec<u32> = ["device-0", "device-1", "device-2", "truck-42", "a"]
            .iter()
            .map(|k| partition_for_key(k, 16).0)
            .collect();
        assert_eq!(fixed, PINNED_16);
    }

    const PINNED_16: [u32; 5] = [6, 5, 1, 13, 0];

    #[test]
    fn keys_spread_evenly() {
        let partitions = 8;
        let mut counts = [0u32; 8];
        for i in 0..80_000 {
            counts[partition_for_key(&format!("device-{i}"), partitions).index()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
