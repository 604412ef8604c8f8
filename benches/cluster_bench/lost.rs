//! After a run: which acknowledged messages are missing from the shared telemetry log, read
//! back from JetStream with `iot_sdk::nats` as the nodes wrote it; then the run's streams go.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use iot_sdk::core::{Log, Offset, PartitionId, ReadLimits, TopicName};
use iot_sdk::gateway::hub::topic;
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};

use crate::load::seq_of;

/// The node's `--partitions` default: the log must be opened with the count it was created with.
pub(crate) const NODE_PARTITIONS: u32 = 4;

/// Acknowledged messages not in the log. A device's messages are numbered 0…; when it got all
/// its PUBACKs (a run without errors), every one of its numbers must be there. A device whose
/// connection failed counts as many missing as it had acknowledgements beyond what landed.
pub(crate) async fn count(
    nats: &str,
    hub: &str,
    ids: &[String],
    acked_per_device: &[u64],
) -> Result<u64, Box<dyn std::error::Error>> {
    let factory = NatsLogFactory::connect(NatsLogConfig::from_url(nats)?.prefix(hub)).await?;
    let log = factory
        .open(&TopicName::new(topic::TELEMETRY)?, NODE_PARTITIONS)
        .await?;
    let mut landed: HashMap<String, HashSet<u32>> = HashMap::new();
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let end = log.next_offset(partition).await?;
        let mut next = log.earliest_offset(partition).await?;
        while next < end {
            let records = log.read(partition, next, ReadLimits::default()).await?;
            let Some(last) = records.last() else { break };
            next = Offset(last.offset.0 + 1);
            for stored in &records {
                if let Some(seq) = seq_of(&stored.record.payload) {
                    landed
                        .entry(stored.record.key.to_string())
                        .or_default()
                        .insert(seq);
                }
            }
        }
    }
    let mut lost = 0;
    for (id, &acked) in ids.iter().zip(acked_per_device) {
        let found = landed.get(id).map_or(0, |seqs| {
            seqs.iter().filter(|&&s| u64::from(s) < acked).count() as u64
        });
        lost += acked - found;
    }
    Ok(lost)
}

/// Deletes the JetStream streams (and key-value buckets) of hub `prefix`.
pub(crate) async fn delete_streams(
    nats: &str,
    prefix: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(nats).await?;
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await?;
    for name in names {
        if name.starts_with(&format!("{prefix}-")) || name.starts_with(&format!("KV_{prefix}-")) {
            js.delete_stream(&name).await?;
        }
    }
    Ok(())
}
