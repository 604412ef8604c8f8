//! What the hub counts for operators: sessions opened and closed, messages in and out by kind,
//! throttled operations, and IoT Hub–style daily message metering.
//!
//! The counters are plain atomics owned by the hub (two hubs in one process never share them),
//! read with [`Hub::stats`](crate::Hub::stats); an exporter (the root package's `metrics`
//! module renders them in the Prometheus text format) reads a snapshot when scraped. They start
//! at zero with the process, as Prometheus counters do.
//!
//! **Metering** follows IoT Hub's billing unit: a device-to-cloud message, a cloud-to-device
//! message, a direct-method request and its response each count as one message per started
//! 4 KB (4 096 bytes) of payload plus application properties (an empty message is one). Counts
//! are kept per device and for the whole hub, for the current UTC day; they start again at zero
//! at midnight UTC (the previous day's totals are kept until the next midnight).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use iot_core::{DeviceId, Timestamp};

use crate::error::{Error, ThrottledOperation};
use crate::sync_util::lock;

/// IoT Hub's metering unit.
pub const METER_UNIT_BYTES: usize = 4096;

/// Messages of a size, in metering units: one per started 4 KB, at least one.
pub fn meter_units(bytes: usize) -> u64 {
    bytes.div_ceil(METER_UNIT_BYTES).max(1) as u64
}

/// Kinds of message that reach the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InKind {
    /// Device telemetry (device-to-cloud).
    Telemetry,
    /// A reported-properties patch from a device.
    ReportedPatch,
    /// A desired-properties patch from the back end.
    DesiredPatch,
    /// A C2D message queued by the back end.
    C2d,
    /// A direct-method invocation by the back end.
    MethodInvoke,
    /// A device's answer to a direct method.
    MethodResponse,
}

/// Kinds of message the hub hands to devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutKind {
    /// A C2D message delivered (each delivery, redeliveries included).
    C2d,
    /// A desired-properties patch (or a full desired document after an overflow).
    DesiredPatch,
    /// A direct-method request.
    MethodRequest,
}

impl InKind {
    /// Every kind, in a fixed order.
    pub const ALL: [InKind; 6] = [
        InKind::Telemetry,
        InKind::ReportedPatch,
        InKind::DesiredPatch,
        InKind::C2d,
        InKind::MethodInvoke,
        InKind::MethodResponse,
    ];

    /// A short label (`telemetry`, `reported_patch`, …).
    pub fn label(self) -> &'static str {
        match self {
            InKind::Telemetry => "telemetry",
            InKind::ReportedPatch => "reported_patch",
            InKind::DesiredPatch => "desired_patch",
            InKind::C2d => "c2d",
            InKind::MethodInvoke => "method_invoke",
            InKind::MethodResponse => "method_response",
        }
    }
}

impl OutKind {
    /// Every kind, in a fixed order.
    pub const ALL: [OutKind; 3] = [OutKind::C2d, OutKind::DesiredPatch, OutKind::MethodRequest];

    /// A short label (`c2d`, `desired_patch`, `method_request`).
    pub fn label(self) -> &'static str {
        match self {
            OutKind::C2d => "c2d",
            OutKind::DesiredPatch => "desired_patch",
            OutKind::MethodRequest => "method_request",
        }
    }
}

/// The label of a throttled operation (`connect`, `telemetry`, `twin`, `method`).
pub fn throttled_label(op: ThrottledOperation) -> &'static str {
    match op {
        ThrottledOperation::Connect => "connect",
        ThrottledOperation::Telemetry => "telemetry",
        ThrottledOperation::Twin => "twin",
        ThrottledOperation::Method => "method",
    }
}

const THROTTLED: [ThrottledOperation; 4] = [
    ThrottledOperation::Connect,
    ThrottledOperation::Telemetry,
    ThrottledOperation::Twin,
    ThrottledOperation::Method,
];

/// The hub's counters (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct HubStats {
    opened: AtomicU64,
    closed: AtomicU64,
    messages_in: [AtomicU64; InKind::ALL.len()],
    bytes_in: [AtomicU64; InKind::ALL.len()],
    messages_out: [AtomicU64; OutKind::ALL.len()],
    throttled: [AtomicU64; THROTTLED.len()],
    meter: Mutex<Meter>,
}

#[derive(Debug, Default)]
struct Meter {
    /// Days since the Unix epoch (UTC) of `today`.
    day: u64,
    today: DayMeter,
    yesterday: DayMeter,
}

/// One UTC day's metered messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DayMeter {
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    /// Metered messages of the whole hub.
    pub hub: u64,
    /// Metered messages per device.
    pub devices: HashMap<DeviceId, u64>,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Sessions opened since start.
    pub sessions_opened: u64,
    /// Sessions closed since start.
    pub sessions_closed: u64,
    /// Messages in, by kind, with their payload bytes.
    pub messages_in: Vec<(InKind, u64, u64)>,
    /// Messages out, by kind.
    pub messages_out: Vec<(OutKind, u64)>,
    /// Refused operations, by what was throttled.
    pub throttled: Vec<(ThrottledOperation, u64)>,
    /// Today's metering (UTC).
    pub today: DayMeter,
    /// Yesterday's metering, once a day has passed since start.
    pub yesterday: DayMeter,
}

fn index_in(kind: InKind) -> usize {
    InKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl HubStats {
    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message in of `bytes`; `meter` names the device it is metered to, if metered.
    pub(crate) fn message_in(&self, kind: InKind, bytes: usize, meter: Option<&DeviceId>) {
        let i = index_in(kind);
        self.messages_in[i].fetch_add(1, Ordering::Relaxed);
        self.bytes_in[i].fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(device) = meter {
            self.meter(device, bytes, Timestamp::now());
        }
    }

    pub(crate) fn message_out(&self, kind: OutKind) {
        let i = OutKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.messages_out[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `result`'s error if it is a throttling refusal; returns `result`.
    pub(crate) fn throttled<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Throttled { operation, .. }) = &result
            && let Some(i) = THROTTLED.iter().position(|o| o == operation)
        {
            self.throttled[i].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Meters a message of `bytes` to `device` at `at`.
    pub(crate) fn meter(&self, device: &DeviceId, bytes: usize, at: Timestamp) {
        let units = meter_units(bytes);
        let day = at.as_unix_micros() / 86_400_000_000;
        let mut meter = lock(&self.meter);
        if day != meter.day {
            let today = std::mem::take(&mut meter.today);
            meter.yesterday = if day == meter.day + 1 {
                today
            } else {
                DayMeter::default()
            };
            meter.day = day;
            meter.today.day = day;
        }
        meter.today.hub += units;
        *meter.today.devices.entry(device.clone()).or_default() += units;
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let meter = lock(&self.meter);
        StatsSnapshot {
            sessions_opened: load(&self.opened),
            sessions_closed: load(&self.closed),
            messages_in: InKind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| (*k, load(&self.messages_in[i]), load(&self.bytes_in[i])))
                .collect(),
            messages_out: OutKind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| (*k, load(&self.messages_out[i])))
                .collect(),
            throttled: THROTTLED
                .iter()
                .enumerate()
                .map(|(i, o)| (*o, load(&self.throttled[i])))
                .collect(),
            today: meter.today.clone(),
            yesterday: meter.yesterday.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metering_counts_started_4_kb_blocks_per_device_and_day() {
        assert_eq!(meter_units(0), 1);
        assert_eq!(meter_units(4096), 1);
        assert_eq!(meter_units(4097), 2);
        assert_eq!(meter_units(10_000), 3);
        let stats = HubStats::default();
        let a: DeviceId = "a".parse().expect("id");
        let b: DeviceId = "b".parse().expect("id");
        let day = |d: u64, secs: u64| Timestamp::from_unix_micros((d * 86_400 + secs) * 1_000_000);
        stats.meter(&a, 100, day(20_000, 10));
        stats.meter(&a, 5000, day(20_000, 20));
        stats.meter(&b, 0, day(20_000, 86_399));
        let s = stats.snapshot();
        assert_eq!((s.today.day, s.today.hub), (20_000, 4));
        assert_eq!(s.today.devices[&a], 3);
        assert_eq!(s.today.devices[&b], 1);
        // Midnight UTC: a new day starts at zero, the last one is kept.
        stats.meter(&b, 1, day(20_001, 0));
        let s = stats.snapshot();
        assert_eq!((s.today.day, s.today.hub), (20_001, 1));
        assert_eq!(s.yesterday.hub, 4);
        assert!(!s.today.devices.contains_key(&a));
        // A day without messages in between: yesterday is empty.
        stats.meter(&b, 1, day(20_003, 0));
        assert_eq!(stats.snapshot().yesterday, DayMeter::default());
    }
}
