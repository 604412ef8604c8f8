//! Quickstart: a tour of the partitioned log on embedded defaults.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! It opens named topics backed by `FileLog` in a temporary directory, produces telemetry for a few
//! devices (each device's records stay in one partition, in order), tails them with a consumer
//! group, runs the last-known-values projection of `iot-stream` as a second consumer group, then
//! reopens the log from disk and shows that both the records and the group's position survived.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;

use iot_sdk::core::{
    DeviceId, FileLogConfig, GroupConsumer, GroupName, Log, LogExt, Producer, Record, StartFrom,
    Timestamp, TopicName, Topics, headers,
};
use iot_sdk::stream::processors::LastKnownValues;
use iot_sdk::stream::{HostConfig, MemoryStateStore, ProcessorHost, StateStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let data = tempfile::tempdir()?;
    println!("data directory: {}", data.path().display());

    // 1. Named topics from one root; each topic is a FileLog with 4 partitions that fsyncs before
    //    acknowledging (group commit), the default durability.
    let topics = Arc::new(Topics::file(data.path(), FileLogConfig::with_partitions(4)));
    let telemetry = topics.topic(TopicName::TELEMETRY).await?;
    let producer = Producer::new(telemetry.clone());

    // 2. Devices send telemetry; the key (the device id) picks the partition.
    let devices: Vec<DeviceId> = ["thermostat-1", "thermostat-2", "door-7"]
        .iter()
        .map(DeviceId::new)
        .collect::<Result<_, _>>()?;
    let mut batch = Vec::new();
    for round in 0..3 {
        for device in &devices {
            let reading = format!(r#"{{"temperature":{}}}"#, 20 + round);
            batch.push(
                Record::new(device.as_str(), reading)
                    .with_header(headers::SUBJECT, "temperature")
                    .with_header(headers::CONTENT_TYPE, "application/json")
                    .with_device_time(Timestamp::now()),
            );
        }
    }
    let placed = producer.send_batch(batch).await?;
    println!("\nappended {} records:", placed.len());
    for device in &devices {
        println!(
            "  {device:<14} -> partition {}",
            producer.partition_for(device.as_str())
        );
    }

    // 3. A consumer group tails every partition, then commits what it processed.
    let group = GroupName::new("dashboard")?;
    let mut consumer =
        GroupConsumer::new(telemetry.clone(), group.clone(), StartFrom::Earliest).await?;
    let records = consumer.next_batch().await?;
    println!("\nconsumer group {group} read {} records:", records.len());
    for r in records.iter().take(4) {
        println!(
            "  p{} @{:<3} {:<14} {}",
            r.partition,
            r.offset,
            r.record.key,
            String::from_utf8_lossy(&r.record.payload)
        );
    }
    consumer.commit().await?;

    // 4. Stream processing: the last-known-values projection runs as its own consumer group and
    //    merges each device's readings (JSON merge patch) into one record per device.
    let host = ProcessorHost::new(topics.clone());
    let state = Arc::new(MemoryStateStore::new());
    let projection = host
        .start(
            TopicName::TELEMETRY,
            GroupName::new("last-known-values")?,
            Arc::new(LastKnownValues::new(state.clone())),
            HostConfig::default(),
        )
        .await?;
    projection.wait_caught_up().await?;
    projection.shutdown().await?;
    println!();
    for device in &devices {
        if let Some(values) = state.last_known(device).await? {
            println!("last known values of {device}: {}", values.values());
        }
    }

    // 5. Close everything and reopen from disk: records and the group's position are still there.
    drop((consumer, producer, telemetry, host, topics));
    let topics = Topics::file(data.path(), FileLogConfig::with_partitions(4));
    let telemetry: Arc<dyn Log> = topics.topic(TopicName::TELEMETRY).await?;
    let mut total = 0;
    for p in telemetry.partitions() {
        total += telemetry.next_offset(p).await?.get() - telemetry.earliest_offset(p).await?.get();
    }
    let mut resumed = GroupConsumer::new(telemetry.clone(), group, StartFrom::Earliest).await?;
    println!(
        "\nafter reopening: {total} records on disk; the group has {} unread",
        resumed.try_next_batch().await?.len()
    );
    println!("\nnext: docs/log.md (the log), docs/stream.md (processors, windows, rules).");
    Ok(())
}
