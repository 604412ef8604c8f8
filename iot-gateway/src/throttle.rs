//! Token buckets: per device and hub-wide, for connects and for telemetry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iot_core::DeviceId;

use crate::error::{Error, Result, ThrottleScope, ThrottledOperation};
use crate::sync_util::lock;

/// A rate: `per_second` tokens refill a bucket of `burst` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// The bucket's capacity (and its content when it is created).
    pub burst: f64,
}

impl Rate {
    /// `per_second` tokens per second with a bucket of `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Rate { per_second, burst }
    }
}

/// Throttling limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleConfig {
    /// Connects of one device.
    pub device_connects: Option<Rate>,
    /// Connects of all devices together.
    pub hub_connects: Option<Rate>,
    /// Telemetry messages of one device.
    pub device_telemetry: Option<Rate>,
    /// Telemetry messages of all devices together.
    pub hub_telemetry: Option<Rate>,
}

impl Default for ThrottleConfig {
    /// A device may connect about once a second (burst 10) and send 100 messages a second
    /// (burst 1000); the hub takes 1000 connects and 100 000 messages a second.
    fn default() -> Self {
        ThrottleConfig {
            device_connects: Some(Rate::new(1.0, 10.0)),
            hub_connects: Some(Rate::new(1000.0, 10_000.0)),
            device_telemetry: Some(Rate::new(100.0, 1000.0)),
            hub_telemetry: Some(Rate::new(100_000.0, 200_000.0)),
        }
    }
}

impl ThrottleConfig {
    /// No limits at all.
    pub fn unlimited() -> Self {
        ThrottleConfig {
            device_connects: None,
            hub_connects: None,
            device_telemetry: None,
            hub_telemetry: None,
        }
    }
}

/// One token bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate.per_second).min(86_400.0),
            ))
        } else {
            Err(Duration::from_secs(86_400))
        }
    }

    /// Gives back a token taken for an operation that was then refused elsewhere.
    pub(crate) fn refund(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(rate.burst);
    }

    /// Whether the bucket is full again (so forgetting it changes nothing).
    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// The hub's connect throttle: a hub-wide bucket and one bucket per device that connected
/// recently (full buckets are forgotten, so memory follows the active devices).
#[derive(Debug)]
pub(crate) struct ConnectThrottle {
    config: ThrottleConfig,
    hub: Mutex<Option<Bucket>>,
    devices: Mutex<DeviceBuckets>,
}

/// Fewest per-device buckets before full ones are swept out.
const SWEEP_FLOOR: usize = 10_000;

/// Per-device connect buckets. Full buckets are swept out when the map reaches `sweep_at`,
/// which is then set to twice what survived (at least `SWEEP_FLOOR`): a storm of connects from
/// many devices costs amortised O(1) per connect, where sweeping at a fixed size would scan the
/// whole map on every connect once more devices than that were active.
#[derive(Debug)]
struct DeviceBuckets {
    buckets: HashMap<DeviceId, Bucket>,
    sweep_at: usize,
}

impl DeviceBuckets {
    fn new() -> Self {
        DeviceBuckets {
            buckets: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// The bucket of `device`, made full if it has none, sweeping first when it is time.
    fn bucket(&mut self, device: &DeviceId, rate: Rate, now: Instant) -> &mut Bucket {
        if self.buckets.len() >= self.sweep_at && !self.buckets.contains_key(device) {
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            self.sweep_at = (self.buckets.len() * 2).max(SWEEP_FLOOR);
        }
        self.buckets
            .entry(device.clone())
            .or_insert_with(|| Bucket::full(rate, now))
    }
}

impl ConnectThrottle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        let now = Instant::now();
        ConnectThrottle {
            config,
            hub: Mutex::new(config.hub_connects.map(|r| Bucket::full(r, now))),
            devices: Mutex::new(DeviceBuckets::new()),
        }
    }

    /// Takes a connect token for `device` from both buckets.
    pub(crate) fn take(&self, device: &DeviceId) -> Result<()> {
        let now = Instant::now();
        let refuse = |scope, retry_after| Error::Throttled {
            device: device.clone(),
            operation: ThrottledOperation::Connect,
            scope,
            retry_after,
        };
        if let Some(rate) = self.config.device_connects {
            lock(&self.devices)
                .bucket(device, rate, now)
                .take(rate, now)
                .map_err(|wait| refuse(ThrottleScope::Device, wait))?;
        }
        let hub = match (self.config.hub_connects, &mut *lock(&self.hub)) {
            (Some(rate), Some(bucket)) => bucket.take(rate, now),
            _ => Ok(()),
        };
        if let Err(wait) = hub {
            // The device's token was not used: give it back.
            if let (Some(rate), Some(b)) = (
                self.config.device_connects,
                lock(&self.devices).buckets.get_mut(device),
            ) {
                b.refund(rate);
            }
            return Err(refuse(ThrottleScope::Hub, wait));
        }
        Ok(())
    }
}

/// The telemetry throttle: the hub-wide bucket lives here, each session holds its device's.
#[derive(Debug)]
pub(crate) struct TelemetryThrottle {
    config: ThrottleConfig,
    hub: Mutex<Option<Bucket>>,
}

impl TelemetryThrottle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        TelemetryThrottle {
            config,
            hub: Mutex::new(
                config
                    .hub_telemetry
                    .map(|r| Bucket::full(r, Instant::now())),
            ),
        }
    }

    /// A fresh per-device bucket for a new session.
    pub(crate) fn device_bucket(&self) -> Option<Bucket> {
        self.config
            .device_telemetry
            .map(|r| Bucket::full(r, Instant::now()))
    }

    /// Takes a telemetry token from the device's bucket and the hub's.
    pub(crate) fn take(&self, device: &DeviceId, bucket: &Mutex<Option<Bucket>>) -> Result<()> {
        let now = Instant::now();
        let refuse = |scope, retry_after| Error::Throttled {
            device: device.clone(),
            operation: ThrottledOperation::Telemetry,
            scope,
            retry_after,
        };
        if let (Some(rate), Some(b)) = (self.config.device_telemetry, &mut *lock(bucket)) {
            b.take(rate, now)
                .map_err(|wait| refuse(ThrottleScope::Device, wait))?;
        }
        let hub = match (self.config.hub_telemetry, &mut *lock(&self.hub)) {
            (Some(rate), Some(b)) => b.take(rate, now),
            _ => Ok(()),
        };
        if let Err(wait) = hub {
            if let (Some(rate), Some(b)) = (self.config.device_telemetry, &mut *lock(bucket)) {
                b.refund(rate);
            }
            return Err(refuse(ThrottleScope::Hub, wait));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let rate = Rate::new(10.0, 3.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        for _ in 0..3 {
            assert!(b.take(rate, t0).is_ok());
        }
        let wait = b.take(rate, t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(100));
        assert!(b.take(rate, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(rate, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn device_limit_is_per_device() {
        let t = ConnectThrottle::new(ThrottleConfig {
            device_connects: Some(Rate::new(0.0, 2.0)),
            hub_connects: None,
            ..ThrottleConfig::unlimited()
        });
        let a: DeviceId = "a".parse().expect("id");
        let b: DeviceId = "b".parse().expect("id");
        assert!(t.take(&a).is_ok());
        assert!(t.take(&a).is_ok());
        assert!(matches!(
            t.take(&a),
            Err(Error::Throttled {
                scope: ThrottleScope::Device,
                ..
            })
        ));
        assert!(t.take(&b).is_ok());
    }

    #[test]
    fn device_buckets_sweep_full_ones_and_double_the_threshold() {
        let now = Instant::now();
        // Never refills: no bucket that lost a token is ever full again, so nothing is swept.
        let stuck = Rate::new(0.0, 2.0);
        let mut map = DeviceBuckets::new();
        for i in 0..3 * SWEEP_FLOOR {
            let id: DeviceId = format!("d{i}").parse().expect("id");
            assert!(map.bucket(&id, stuck, now).take(stuck, now).is_ok());
        }
        assert_eq!(map.buckets.len(), 3 * SWEEP_FLOOR);
        // Each sweep that kept everything doubled the threshold instead of sweeping again on the
        // next connect.
        assert_eq!(map.sweep_at, 4 * SWEEP_FLOOR);

        // Refills at once: every bucket is full again, so the next sweep empties the map.
        let quick = Rate::new(1e12, 2.0);
        let later = now + Duration::from_millis(1);
        // The map reaches the threshold (40 000) on the last but one of these; the last sweeps.
        for i in 0..=SWEEP_FLOOR {
            let id: DeviceId = format!("e{i}").parse().expect("id");
            map.bucket(&id, quick, later);
        }
        assert!(map.buckets.len() <= SWEEP_FLOOR, "{}", map.buckets.len());
        assert_eq!(map.sweep_at, SWEEP_FLOOR);
    }

    #[test]
    fn hub_limit_is_shared() {
        let t = ConnectThrottle::new(ThrottleConfig {
            hub_connects: Some(Rate::new(0.0, 2.0)),
            ..ThrottleConfig::unlimited()
        });
        for d in ["a", "b"] {
            assert!(t.take(&d.parse().expect("id")).is_ok());
        }
        assert!(matches!(
            t.take(&"c".parse().expect("id")),
            Err(Error::Throttled {
                scope: ThrottleScope::Hub,
                ..
            })
        ));
    }
}
