//! Simulated devices → the log → a rule in the Azure Stream Analytics SQL subset → alerts; and
//! the last-known-values projection of the same telemetry.
//!
//! ```sh
//! cargo run --example rules
//! ```
//!
//! Five devices report temperature once a (simulated) second for 30 s; `dev-3` overheats between
//! seconds 10 and 20. The rule averages each device's temperature over 10 s tumbling windows and
//! writes an alert when the average exceeds 80. Because the clock is simulated (event times are
//! in the recent past, not now), the rule set uses `OrderingPolicy::replay()`: no late-arrival
//! adjustment against the real arrival time.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use iot_sdk::core::{
    DeviceId, GroupConsumer, GroupName, Producer, Record, StartFrom, Timestamp, Topics,
};
use iot_sdk::stream::processors::LastKnownValues;
use iot_sdk::stream::rules::RuleSet;
use iot_sdk::stream::window::OrderingPolicy;
use iot_sdk::stream::{HostConfig, MemoryStateStore, ProcessorHost, StateStore};

const RULE: &str = "SELECT deviceId, AVG(temperature) AS t, System.Timestamp() AS windowEnd \
    INTO alerts FROM telemetry TIMESTAMP BY time \
    GROUP BY deviceId, TumblingWindow(second, 10) HAVING t > 80";

/// Simulated devices -> the log -> a windowed rule in the Azure Stream Analytics SQL subset ->
/// alerts; and the last-known-values projection of the same telemetry. Takes no flags.
#[derive(Debug, clap::Parser)]
struct Cli {}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No flags; parsing still answers --help and refuses anything else (exit status 2).
    let Cli {} = clap::Parser::parse();
    let topics = Arc::new(Topics::memory(4));
    let host = ProcessorHost::new(topics.clone());

    // The rule, compiled and started as consumer group "rules" over `telemetry`.
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules.add("overheat", RULE)?;
    println!("rule 'overheat': {RULE}");
    let rule_group = host
        .start(
            "telemetry",
            GroupName::new("rules")?,
            Arc::new(rules.processor("telemetry")),
            HostConfig::default(),
        )
        .await?;

    // The last-known-values projection, as a second, independent group.
    let store = Arc::new(MemoryStateStore::new());
    let lkv_group = host
        .start(
            "telemetry",
            GroupName::new("lkv")?,
            Arc::new(LastKnownValues::new(store.clone())),
            HostConfig::default(),
        )
        .await?;

    // Simulated devices: a reading per simulated second, starting at a 10 s boundary a minute ago.
    let start = (Timestamp::now().as_unix_millis() / 1000 - 60) / 10 * 10;
    let producer = Producer::new(topics.topic("telemetry").await?);
    for second in 0..30u64 {
        for d in 0..5u64 {
            let overheating = d == 3 && (10..20).contains(&second);
            let temperature = if overheating {
                85.0 + (second % 3) as f64
            } else {
                20.0 + d as f64
            };
            let time = start + second + 1;
            let body = serde_json::json!({
                "deviceId": format!("dev-{d}"),
                "temperature": temperature,
                "firmware": "1.4.2",
                "time": Timestamp::from_unix_millis(time * 1000).to_rfc3339(),
            });
            let record = Record::new(format!("dev-{d}"), body.to_string())
                .with_header("subject", "telemetry")
                .with_device_time(Timestamp::from_unix_millis(time * 1000));
            producer.send(record).await?;
        }
    }
    rule_group.wait_caught_up().await?;
    lkv_group.wait_caught_up().await?;

    // Read the alerts the rule wrote.
    let alerts = topics.topic("alerts").await?;
    let mut reader =
        GroupConsumer::new(alerts, GroupName::new("printer")?, StartFrom::Earliest).await?;
    let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch()).await??;
    for alert in &batch {
        println!(
            "ALERT key={} payload={}",
            alert.record.key,
            String::from_utf8_lossy(&alert.record.payload)
        );
    }
    assert!(!batch.is_empty(), "the overheating device raised no alert");

    // Rules can be managed while they run.
    rules.disable("overheat")?;
    for rule in rules.list() {
        println!(
            "rule {:?} enabled={} {} -> {}",
            rule.name, rule.enabled, rule.input, rule.output
        );
    }

    let dev3 = store.last_known(&DeviceId::new("dev-3")?).await?.unwrap();
    println!("last known values of dev-3: {}", dev3.values());
    for (pointer, time) in dev3.source_times() {
        println!("  {pointer} set at {time}");
    }

    rule_group.shutdown().await?;
    lkv_group.shutdown().await?;
    Ok(())
}
