//! The hub's metrics in the Prometheus text exposition format (feature `metrics`).
//!
//! [`HubMetrics::render`] reads, when scraped, the hub's counters ([`Hub::stats`]), its open
//! sessions, the C2D inbox depth of watched devices, the size of every topic, the lag of the
//! consumer groups that route and sink those topics, and IoT Hub–style daily metering, and
//! renders them with the `prometheus` crate's text encoder. Nothing is registered globally: two
//! hubs in one process have their own metrics. `examples/hub.rs --metrics-listen ADDR` serves
//! them at `GET /metrics`; docs/metrics.md lists every metric.
//!
//! ```no_run
//! # async fn run(hub: iot_sdk::gateway::Hub) -> Result<(), Box<dyn std::error::Error>> {
//! use iot_sdk::metrics::HubMetrics;
//! let metrics = HubMetrics::new(hub).lag_of("telemetry", "routing")?;
//! let text = metrics.render().await?;
//! assert!(text.contains("iothub_messages_in_total"));
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use iot_core::{DeviceId, GroupName, Log, PartitionId};
use iot_gateway::Hub;
use iot_gateway::hub::stats::throttled_label;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Why metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A metric could not be defined or encoded.
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The log could not be read (a topic's offsets, a group's commit).
    #[error("metrics: reading topic {topic}: {source}")]
    Log {
        /// The topic.
        topic: String,
        /// The log's error.
        source: iot_core::Error,
    },
    /// The inbox could not be read.
    #[error("metrics: reading the inbox of {device}: {source}")]
    Inbox {
        /// The device.
        device: DeviceId,
        /// The hub's error.
        source: iot_gateway::Error,
    },
    /// A name that is not a valid consumer group name.
    #[error("metrics: {0}")]
    Name(#[from] iot_core::Error),
}

/// Renders a hub's metrics (see the [module docs](self)); cheap to clone.
#[derive(Clone, Debug)]
pub struct HubMetrics {
    hub: Hub,
    /// (topic, group) pairs whose lag is reported.
    lag: Vec<(String, GroupName)>,
    /// Devices whose inbox depth is reported even without a session.
    watched: Arc<Mutex<BTreeSet<DeviceId>>>,
}

impl HubMetrics {
    /// Metrics of `hub`.
    pub fn new(hub: Hub) -> Self {
        HubMetrics {
            hub,
            lag: Vec::new(),
            watched: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// Also reports the lag of consumer group `group` on `topic` (a routing processor, a sink).
    pub fn lag_of(mut self, topic: &str, group: &str) -> Result<Self, MetricsError> {
        self.lag.push((topic.to_owned(), GroupName::new(group)?));
        Ok(self)
    }

    /// Also reports the inbox depth of `device` while it has no session (devices with a
    /// session always are).
    pub fn watch_inbox(&self, device: DeviceId) {
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(device);
    }

    /// The metrics now, in the Prometheus text format (version 0.0.4).
    pub async fn render(&self) -> Result<String, MetricsError> {
        let registry = Registry::new();
        self.counters(&registry)?;
        self.inboxes(&registry).await?;
        self.logs(&registry).await?;
        self.metering(&registry)?;
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn counters(&self, registry: &Registry) -> Result<(), MetricsError> {
        let stats = self.hub.stats();
        let sessions = IntGauge::new("iothub_sessions", "Devices with an open session.")?;
        sessions.set(gauge(self.hub.session_devices().len() as u64));
        registry.register(Box::new(sessions))?;
        let opened = counter_vec(
            registry,
            "iothub_sessions_opened_total",
            "Sessions opened since start.",
            &[],
        )?;
        opened
            .with_label_values::<&str>(&[])
            .inc_by(stats.sessions_opened);
        let closed = counter_vec(
            registry,
            "iothub_sessions_closed_total",
            "Sessions closed since start.",
            &[],
        )?;
        closed
            .with_label_values::<&str>(&[])
            .inc_by(stats.sessions_closed);
        let messages_in = counter_vec(
            registry,
            "iothub_messages_in_total",
            "Messages accepted by the hub, by kind.",
            &["kind"],
        )?;
        let bytes_in = counter_vec(
            registry,
            "iothub_message_bytes_in_total",
            "Payload bytes of the messages accepted, by kind.",
            &["kind"],
        )?;
        for (kind, count, bytes) in &stats.messages_in {
            messages_in
                .with_label_values(&[kind.label()])
                .inc_by(*count);
            bytes_in.with_label_values(&[kind.label()]).inc_by(*bytes);
        }
        let messages_out = counter_vec(
            registry,
            "iothub_messages_out_total",
            "Messages handed to devices, by kind (C2D redeliveries count again).",
            &["kind"],
        )?;
        for (kind, count) in &stats.messages_out {
            messages_out
                .with_label_values(&[kind.label()])
                .inc_by(*count);
        }
        let throttled = counter_vec(
            registry,
            "iothub_throttled_total",
            "Operations refused by throttling, by operation.",
            &["operation"],
        )?;
        for (op, count) in &stats.throttled {
            throttled
                .with_label_values(&[throttled_label(*op)])
                .inc_by(*count);
        }
        Ok(())
    }

    async fn inboxes(&self, registry: &Registry) -> Result<(), MetricsError> {
        let mut devices: BTreeSet<DeviceId> = self.hub.session_devices().into_iter().collect();
        devices.extend(
            self.watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        let depth = IntGaugeVec::new(
            Opts::new(
                "iothub_inbox_depth",
                "C2D messages waiting in a device's inbox (devices with a session, and watched ones).",
            ),
            &["device"],
        )?;
        registry.register(Box::new(depth.clone()))?;
        for device in devices {
            let n =
                self.hub
                    .inbox()
                    .depth(&device)
                    .await
                    .map_err(|source| MetricsError::Inbox {
                        device: device.clone(),
                        source,
                    })?;
            depth
                .with_label_values(&[device.as_str()])
                .set(gauge(n as u64));
        }
        Ok(())
    }

    async fn logs(&self, registry: &Registry) -> Result<(), MetricsError> {
        let records = IntGaugeVec::new(
            Opts::new(
                "iothub_log_records",
                "Records held by a topic (all partitions).",
            ),
            &["topic"],
        )?;
        let appended = IntGaugeVec::new(
            Opts::new(
                "iothub_log_next_offset",
                "Records ever appended to a topic (the sum of its partitions' next offsets).",
            ),
            &["topic"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "iothub_consumer_lag",
                "Records of a topic a consumer group has not committed (routes, sinks).",
            ),
            &["topic", "group"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(appended.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        let topics = self.hub.topics();
        for name in topics.open_topics().await {
            let log = topics
                .topic(name.as_str())
                .await
                .map_err(|source| log_error(name.as_str(), source))?;
            let (held, next) = sizes(log.as_ref())
                .await
                .map_err(|source| log_error(name.as_str(), source))?;
            records.with_label_values(&[name.as_str()]).set(gauge(held));
            appended
                .with_label_values(&[name.as_str()])
                .set(gauge(next));
        }
        for (topic, group) in &self.lag {
            let log = topics
                .topic(topic)
                .await
                .map_err(|source| log_error(topic, source))?;
            let behind = group_lag(log.as_ref(), group)
                .await
                .map_err(|source| log_error(topic, source))?;
            lag.with_label_values(&[topic.as_str(), group.as_str()])
                .set(gauge(behind));
        }
        Ok(())
    }

    fn metering(&self, registry: &Registry) -> Result<(), MetricsError> {
        let stats = self.hub.stats();
        let hub = IntGaugeVec::new(
            Opts::new(
                "iothub_daily_messages",
                "Metered messages (4 KB units) of the whole hub for a UTC day.",
            ),
            &["day"],
        )?;
        let devices = IntGaugeVec::new(
            Opts::new(
                "iothub_daily_device_messages",
                "Metered messages (4 KB units) of a device for a UTC day.",
            ),
            &["day", "device"],
        )?;
        registry.register(Box::new(hub.clone()))?;
        registry.register(Box::new(devices.clone()))?;
        for day in [&stats.yesterday, &stats.today] {
            if day.hub == 0 {
                continue;
            }
            let date = day_label(day.day);
            hub.with_label_values(&[date.as_str()]).set(gauge(day.hub));
            for (device, units) in &day.devices {
                devices
                    .with_label_values(&[date.as_str(), device.as_str()])
                    .set(gauge(*units));
            }
        }
        Ok(())
    }
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn log_error(topic: &str, source: iot_core::Error) -> MetricsError {
    MetricsError::Log {
        topic: topic.to_owned(),
        source,
    }
}

/// Records held and records ever appended, over all partitions.
async fn sizes(log: &dyn Log) -> iot_core::Result<(u64, u64)> {
    let (mut held, mut next) = (0, 0);
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let n = log.next_offset(partition).await?.0;
        held += n - log.earliest_offset(partition).await?.0.min(n);
        next += n;
    }
    Ok((held, next))
}

/// Records the group has not committed, over all partitions (from the earliest record when it
/// never committed).
async fn group_lag(log: &dyn Log, group: &GroupName) -> iot_core::Result<u64> {
    let mut lag = 0;
    for p in 0..log.partition_count() {
        let partition = PartitionId(p);
        let next = log.next_offset(partition).await?.0;
        let from = match log.committed(group, partition).await? {
            Some(c) => c.0,
            None => log.earliest_offset(partition).await?.0,
        };
        lag += next.saturating_sub(from);
    }
    Ok(lag)
}

/// `YYYY-MM-DD` of a day counted from the Unix epoch.
fn day_label(day: u64) -> String {
    let micros = i64::try_from(day * 86_400_000_000).unwrap_or(0);
    iot_core::time::format_rfc3339(micros)
        .get(..10)
        .unwrap_or_default()
        .to_owned()
}
