//! How a forwarder behaves.

use std::time::Duration;

use iot_core::{ReadLimits, RetentionPolicy};

/// A [`Forwarder`](super::Forwarder)'s settings. Start from [`Default`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ForwarderOptions {
    /// The consumer group whose committed offsets say what was forwarded (default `upstream`).
    /// Two forwarders with different groups each forward everything. A consumer-group name
    /// (checked when the forwarder starts).
    pub group: String,
    /// How much one batch reads per partition of the local log (default 500 records, 1 MiB). A
    /// batch is committed once all of it is acknowledged upstream, so this bounds what a
    /// restart may send twice.
    pub read_limits: ReadLimits,
    /// How many batches may be sent upstream and not yet committed (default 4). The forwarder
    /// reads the next batch while earlier ones wait for their acknowledgements, so the upstream
    /// connections never idle between batches; after an interruption up to this many batches'
    /// worth per partition (`batches_in_flight` × `read_limits`) may be sent again. 1 forwards
    /// one batch at a time.
    pub batches_in_flight: usize,
    /// Each leaf's upstream outbox, in messages (default 1000; the forwarder waits when full).
    /// Memory only: the local log is the durable store.
    pub outbox_capacity: usize,
    /// What the local telemetry log keeps (default: 7 days and 1 GiB per partition). Records
    /// past it are removed whether forwarded or not: the bound on an outage the field gateway
    /// survives without loss. `None` for both leaves the log unbounded (disk is the bound).
    pub retention: RetentionPolicy,
    /// How often the retention policy is applied (default 60 s).
    pub retention_interval: Duration,
    /// How long a direct method from the cloud waits for the leaf to be connected to the local
    /// hub (default 5 s) ...
    pub method_connect_timeout: Duration,
    /// ... and then for its answer (default 30 s; IoT Hub's own default).
    pub method_response_timeout: Duration,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        ForwarderOptions {
            group: "upstream".into(),
            read_limits: ReadLimits {
                max_records: 500,
                max_bytes: 1024 * 1024,
            },
            batches_in_flight: 4,
            outbox_capacity: 1000,
            retention: RetentionPolicy {
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                max_bytes: Some(1024 * 1024 * 1024),
            },
            retention_interval: Duration::from_secs(60),
            method_connect_timeout: Duration::from_secs(5),
            method_response_timeout: Duration::from_secs(30),
        }
    }
}

impl ForwarderOptions {
    /// Sets [`group`](Self::group).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets [`read_limits`](Self::read_limits).
    pub fn read_limits(mut self, limits: ReadLimits) -> Self {
        self.read_limits = limits;
        self
    }

    /// Sets [`batches_in_flight`](Self::batches_in_flight).
    pub fn batches_in_flight(mut self, batches: usize) -> Self {
        self.batches_in_flight = batches;
        self
    }

    /// Sets [`outbox_capacity`](Self::outbox_capacity).
    pub fn outbox_capacity(mut self, capacity: usize) -> Self {
        self.outbox_capacity = capacity;
        self
    }

    /// Sets [`retention`](Self::retention) and [`retention_interval`](Self::retention_interval).
    pub fn retention(mut self, policy: RetentionPolicy, interval: Duration) -> Self {
        self.retention = policy;
        self.retention_interval = interval;
        self
    }

    /// Sets the two method time-outs.
    pub fn method_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.method_connect_timeout = connect;
        self.method_response_timeout = response;
        self
    }
}
