//! `HubConfig`: every limit and default of the hub in one place.

use std::time::Duration;

use iot_core::retention::RetentionSchedule;
use iot_core::storage::Recovery;

use crate::inbox::InboxLimits;
use crate::throttle::ThrottleConfig;
use crate::twins::TwinLimits;

/// Topic names the hub writes to.
pub mod topic {
    /// Device telemetry, partitioned by device id.
    pub const TELEMETRY: &str = "telemetry";
    /// Twin changes: one record per accepted patch.
    pub const TWIN_CHANGES: &str = "twin-changes";
    /// Connect and disconnect events.
    pub const CONNECTION_EVENTS: &str = "connection-events";
    /// C2D delivery feedback (one partition, so its offsets are the feedback stream positions).
    pub const C2D_FEEDBACK: &str = "c2d-feedback";
    /// Dead-lettered C2D messages (rejected, or delivered too often), with their payloads.
    pub const C2D_DEADLETTER: &str = "c2d-deadletter";
}

/// How a [`Hub`](crate::Hub) behaves.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HubConfig {
    /// Partitions of the telemetry topic (and the other per-device topics) when the hub creates
    /// them. Default 8.
    pub partitions: u32,
    /// Largest telemetry or C2D message: payload plus property names and values. Default 256 KiB.
    pub max_message_bytes: usize,
    /// TTL of a C2D message sent without one. Default 1 hour.
    pub c2d_default_ttl: Duration,
    /// Longest TTL accepted. Default 2 days.
    pub c2d_max_ttl: Duration,
    /// Inbox depth, lock duration, maximum delivery count.
    pub inbox: InboxLimits,
    /// Twin section size and depth.
    pub twin: TwinLimits,
    /// Token buckets for connects and telemetry.
    pub throttle: ThrottleConfig,
    /// Method requests waiting in one session before invokers get `QueueFull`. Default 16.
    pub method_queue: usize,
    /// Desired patches waiting in one session before they fold into a full document. Default 16.
    pub desired_queue: usize,
    /// Longest method payload (request or response). Default 128 KiB.
    pub max_method_payload: usize,
    /// Longest method response or connect timeout accepted. Default 5 minutes.
    pub max_method_timeout: Duration,
    /// How often expired C2D messages are purged (and their feedback written) while nobody
    /// reads them. Default 30 s.
    pub sweep_interval: Duration,
    /// Clock skew tolerated on SAS token expiry (sessions end this long after it). Default 60 s.
    pub token_skew: Duration,
    /// What [`Hub::open_dir`](crate::Hub::open_dir) does when the inbox or twin journal is
    /// corrupt (damage followed by intact data). Default [`Recovery::Strict`]: opening fails with
    /// [`Error::Corrupt`](crate::Error::Corrupt) naming the file and position; set
    /// [`Recovery::Repair`] to cut the journal there and drop what follows.
    pub recovery: Recovery,
    /// Retention of the hub's topics, run by a task of the hub every `retention.interval`
    /// (`iot_core::retention`: a rule per topic; records a protected consumer group has not
    /// committed stay unless the rule allows removing them). Default: no rule.
    pub retention: RetentionSchedule,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            partitions: 8,
            max_message_bytes: 256 * 1024,
            c2d_default_ttl: Duration::from_secs(3600),
            c2d_max_ttl: Duration::from_secs(2 * 24 * 3600),
            inbox: InboxLimits::default(),
            twin: TwinLimits::default(),
            throttle: ThrottleConfig::default(),
            method_queue: 16,
            desired_queue: 16,
            max_method_payload: 128 * 1024,
            max_method_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            token_skew: Duration::from_secs(60),
            recovery: Recovery::Strict,
            retention: RetentionSchedule::default(),
        }
    }
}
