//! Token buckets: per device and hub-wide, for connects, telemetry, twin operations and direct
//! methods; per peer address and hub-wide for failed authentications.
//!
//! Only an authenticated device spends its own budgets. A failed authentication is charged to
//! the address it came from and to a hub-wide failed-attempt budget, never to the device it
//! named: otherwise anyone who knows a device id (often printed on the device) could keep that
//! device offline by presenting bad credentials in its name.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

    /// This rate times `share` (refill and capacity both).
    fn scaled(self, share: f64) -> Self {
        if share >= 1.0 {
            return self;
        }
        Rate {
            per_second: self.per_second * share,
            burst: self.burst * share,
        }
    }
}

/// The part of each hub-wide quota this hub enforces: 1 alone, less when several hubs serve one
/// fleet and split the quotas between them (`Hub::set_hub_quota_share`). Per-device, per-peer
/// budgets are not split: a device is served by one hub at a time.
#[derive(Debug)]
pub(crate) struct HubShare(AtomicU64);

impl HubShare {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(HubShare(AtomicU64::new(1.0f64.to_bits())))
    }

    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Sets the share; the caller checked that it is in (0, 1].
    pub(crate) fn set(&self, share: f64) {
        self.0.store(share.to_bits(), Ordering::Relaxed);
    }

    /// `rate`, scaled by the share.
    fn of(&self, rate: Option<Rate>) -> Option<Rate> {
        rate.map(|r| r.scaled(self.get()))
    }
}

/// Throttling limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ThrottleConfig {
    /// Successful connects of one device.
    pub device_connects: Option<Rate>,
    /// Successful connects of all devices together.
    pub hub_connects: Option<Rate>,
    /// Failed authentications from one peer address (an IPv4 address, or an IPv6 /64 prefix).
    /// Once spent, further connects from that address are refused before authentication.
    pub peer_failed_connects: Option<Rate>,
    /// Failed authentications from every address together. Once spent, addresses with recent
    /// failures are refused before authentication; addresses without any still authenticate, so
    /// a flood from many addresses cannot keep well-behaved devices out.
    pub hub_failed_connects: Option<Rate>,
    /// Telemetry messages of one device.
    pub device_telemetry: Option<Rate>,
    /// Telemetry messages of all devices together.
    pub hub_telemetry: Option<Rate>,
    /// Twin reads and reported-property updates made by one device.
    pub device_twin: Option<Rate>,
    /// Twin reads and updates of all devices and the back end together.
    pub hub_twin: Option<Rate>,
    /// Direct-method invocations of one device.
    pub device_methods: Option<Rate>,
    /// Direct-method invocations of all devices together.
    pub hub_methods: Option<Rate>,
}

impl Default for ThrottleConfig {
    /// A device may connect about once a second (burst 10), send 100 messages a second (burst
    /// 1000), make 10 twin operations and receive 10 method calls a second (burst 100 each); the
    /// hub takes 1000 connects, 100 000 messages, 1000 twin operations and 1000 method calls a
    /// second. An address may fail to authenticate once every 5 s (burst 20); the hub
    /// authenticates 100 failures a second (burst 1000) before it turns away repeat offenders.
    fn default() -> Self {
        ThrottleConfig {
            device_connects: Some(Rate::new(1.0, 10.0)),
            hub_connects: Some(Rate::new(1000.0, 10_000.0)),
            peer_failed_connects: Some(Rate::new(0.2, 20.0)),
            hub_failed_connects: Some(Rate::new(100.0, 1000.0)),
            device_telemetry: Some(Rate::new(100.0, 1000.0)),
            hub_telemetry: Some(Rate::new(100_000.0, 200_000.0)),
            device_twin: Some(Rate::new(10.0, 100.0)),
            hub_twin: Some(Rate::new(1000.0, 10_000.0)),
            device_methods: Some(Rate::new(10.0, 100.0)),
            hub_methods: Some(Rate::new(1000.0, 10_000.0)),
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl ThrottleConfig {
    /// Sets [`device_connects`](Self::device_connects).
    pub fn device_connects(mut self, device_connects: Option<Rate>) -> Self {
        self.device_connects = device_connects;
        self
    }

    /// Sets [`hub_connects`](Self::hub_connects).
    pub fn hub_connects(mut self, hub_connects: Option<Rate>) -> Self {
        self.hub_connects = hub_connects;
        self
    }

    /// Sets [`peer_failed_connects`](Self::peer_failed_connects).
    pub fn peer_failed_connects(mut self, peer_failed_connects: Option<Rate>) -> Self {
        self.peer_failed_connects = peer_failed_connects;
        self
    }

    /// Sets [`hub_failed_connects`](Self::hub_failed_connects).
    pub fn hub_failed_connects(mut self, hub_failed_connects: Option<Rate>) -> Self {
        self.hub_failed_connects = hub_failed_connects;
        self
    }

    /// Sets [`device_telemetry`](Self::device_telemetry).
    pub fn device_telemetry(mut self, device_telemetry: Option<Rate>) -> Self {
        self.device_telemetry = device_telemetry;
        self
    }

    /// Sets [`hub_telemetry`](Self::hub_telemetry).
    pub fn hub_telemetry(mut self, hub_telemetry: Option<Rate>) -> Self {
        self.hub_telemetry = hub_telemetry;
        self
    }

    /// Sets [`device_twin`](Self::device_twin).
    pub fn device_twin(mut self, device_twin: Option<Rate>) -> Self {
        self.device_twin = device_twin;
        self
    }

    /// Sets [`hub_twin`](Self::hub_twin).
    pub fn hub_twin(mut self, hub_twin: Option<Rate>) -> Self {
        self.hub_twin = hub_twin;
        self
    }

    /// Sets [`device_methods`](Self::device_methods).
    pub fn device_methods(mut self, device_methods: Option<Rate>) -> Self {
        self.device_methods = device_methods;
        self
    }

    /// Sets [`hub_methods`](Self::hub_methods).
    pub fn hub_methods(mut self, hub_methods: Option<Rate>) -> Self {
        self.hub_methods = hub_methods;
        self
    }
}

impl ThrottleConfig {
    /// No limits at all.
    pub fn unlimited() -> Self {
        ThrottleConfig {
            device_connects: None,
            hub_connects: None,
            peer_failed_connects: None,
            hub_failed_connects: None,
            device_telemetry: None,
            hub_telemetry: None,
            device_twin: None,
            hub_twin: None,
            device_methods: None,
            hub_methods: None,
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

    /// How long until a token is there, if none is now (takes nothing).
    fn wait(&mut self, rate: Rate, now: Instant) -> Option<Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            None
        } else if rate.per_second > 0.0 {
            Some(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate.per_second).min(86_400.0),
            ))
        } else {
            Some(Duration::from_secs(86_400))
        }
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        match self.wait(rate, now) {
            Some(wait) => Err(wait),
            None => {
                self.tokens -= 1.0;
                Ok(())
            }
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

/// Fewest keyed buckets before full ones are swept out.
const SWEEP_FLOOR: usize = 10_000;

/// Buckets by key (device or peer address) for the keys used recently. Full buckets are swept
/// out when the map reaches `sweep_at`, which is then set to twice what survived (at least
/// `SWEEP_FLOOR`): a storm from many keys costs amortised O(1) per operation, where sweeping at
/// a fixed size would scan the whole map every time once more keys than that were active.
/// Memory follows the keys with a bucket that is not full: those active within one refill time.
#[derive(Debug)]
pub(crate) struct KeyedBuckets<K> {
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub(crate) fn new() -> Self {
        KeyedBuckets {
            buckets: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// The bucket of `key`, made full if it has none, sweeping first when it is time.
    pub(crate) fn bucket(&mut self, key: &K, rate: Rate, now: Instant) -> &mut Bucket {
        if self.buckets.len() >= self.sweep_at && !self.buckets.contains_key(key) {
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            self.sweep_at = (self.buckets.len() * 2).max(SWEEP_FLOOR);
        }
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(rate, now))
    }

    /// Gives `key` back a token taken for an operation that then did not count (a successful
    /// log-in, the one user: feature `http`).
    #[cfg(feature = "http")]
    pub(crate) fn refund(&mut self, key: &K, rate: Rate) {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.refund(rate);
        }
    }
}

/// A budget of one operation: a bucket per device and one for the hub. Both must have a token;
/// a device refused by the hub's bucket gets its own token back.
#[derive(Debug)]
pub(crate) struct DeviceThrottle {
    operation: ThrottledOperation,
    device_rate: Option<Rate>,
    hub_rate: Option<Rate>,
    share: Arc<HubShare>,
    devices: Mutex<KeyedBuckets<DeviceId>>,
    hub: Mutex<Option<Bucket>>,
}

impl DeviceThrottle {
    pub(crate) fn new(
        operation: ThrottledOperation,
        device_rate: Option<Rate>,
        hub_rate: Option<Rate>,
        share: Arc<HubShare>,
    ) -> Self {
        DeviceThrottle {
            operation,
            device_rate,
            hub_rate,
            share,
            devices: Mutex::new(KeyedBuckets::new()),
            hub: Mutex::new(hub_rate.map(|r| Bucket::full(r, Instant::now()))),
        }
    }

    /// Takes a token for `device` from both buckets.
    pub(crate) fn take(&self, device: &DeviceId) -> Result<()> {
        let now = Instant::now();
        let refuse = |scope, retry_after| Error::Throttled {
            device: device.clone(),
            operation: self.operation,
            scope,
            retry_after,
        };
        if let Some(rate) = self.device_rate {
            lock(&self.devices)
                .bucket(device, rate, now)
                .take(rate, now)
                .map_err(|wait| refuse(ThrottleScope::Device, wait))?;
        }
        let hub = match (self.share.of(self.hub_rate), &mut *lock(&self.hub)) {
            (Some(rate), Some(bucket)) => bucket.take(rate, now),
            _ => Ok(()),
        };
        if let Err(wait) = hub {
            // The device's token was not used: give it back.
            if let (Some(rate), Some(b)) = (
                self.device_rate,
                lock(&self.devices).buckets.get_mut(device),
            ) {
                b.refund(rate);
            }
            return Err(refuse(ThrottleScope::Hub, wait));
        }
        Ok(())
    }

    /// Takes a token from the hub's bucket only: for the back end's operations on `device`,
    /// which must not spend the device's own budget.
    pub(crate) fn take_hub(&self, device: &DeviceId) -> Result<()> {
        let now = Instant::now();
        match (self.share.of(self.hub_rate), &mut *lock(&self.hub)) {
            (Some(rate), Some(bucket)) => {
                bucket
                    .take(rate, now)
                    .map_err(|retry_after| Error::Throttled {
                        device: device.clone(),
                        operation: self.operation,
                        scope: ThrottleScope::Hub,
                        retry_after,
                    })
            }
            _ => Ok(()),
        }
    }
}

/// Where a connect comes from, as failed authentications are counted: an IPv4 address, or the
/// /64 prefix of an IPv6 one (one host commonly holds a whole /64, so counting single IPv6
/// addresses would give an attacker 2^64 fresh budgets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    PeerKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

/// The failed-authentication budgets: one bucket per peer address and one for the hub.
#[derive(Debug)]
struct FailureThrottle {
    peer_rate: Option<Rate>,
    hub_rate: Option<Rate>,
    share: Arc<HubShare>,
    peers: Mutex<KeyedBuckets<PeerKey>>,
    hub: Mutex<Option<Bucket>>,
}

impl FailureThrottle {
    fn new(peer_rate: Option<Rate>, hub_rate: Option<Rate>, share: Arc<HubShare>) -> Self {
        FailureThrottle {
            peer_rate,
            hub_rate,
            share,
            peers: Mutex::new(KeyedBuckets::new()),
            hub: Mutex::new(hub_rate.map(|r| Bucket::full(r, Instant::now()))),
        }
    }

    /// Whether `peer` may try to authenticate: refused with the scope and wait when its own
    /// failure budget is spent, or when it failed recently and the hub's is spent. An address
    /// that has not failed recently is always let through (unknown addresses have no bucket).
    fn admit(&self, peer: PeerKey, now: Instant) -> Option<(ThrottleScope, Duration)> {
        let rate = self.peer_rate?;
        let mut peers = lock(&self.peers);
        let bucket = peers.buckets.get_mut(&peer)?;
        if let Some(wait) = bucket.wait(rate, now) {
            return Some((ThrottleScope::Peer, wait));
        }
        if bucket.is_full(rate, now) {
            return None;
        }
        drop(peers);
        match (self.share.of(self.hub_rate), &mut *lock(&self.hub)) {
            (Some(hub_rate), Some(hub)) => hub
                .wait(hub_rate, now)
                .map(|wait| (ThrottleScope::Hub, wait)),
            _ => None,
        }
    }

    /// Charges a failed authentication to `peer` (if known) and to the hub. A spent bucket stays
    /// at zero; the failure is refused no harder for it.
    fn charge(&self, peer: Option<PeerKey>, now: Instant) {
        if let (Some(rate), Some(peer)) = (self.peer_rate, peer) {
            let _ = lock(&self.peers).bucket(&peer, rate, now).take(rate, now);
        }
        if let (Some(rate), Some(hub)) = (self.share.of(self.hub_rate), &mut *lock(&self.hub)) {
            let _ = hub.take(rate, now);
        }
    }
}

/// The hub's connect throttle. Before authentication only the failure budgets of the peer
/// address are consulted ([`admit`](Self::admit)); a failed authentication is charged to them
/// ([`failed`](Self::failed)); only an authenticated device takes a connect token from its own
/// bucket and the hub's ([`take`](Self::take)).
#[derive(Debug)]
pub(crate) struct ConnectThrottle {
    succeeded: DeviceThrottle,
    failed: FailureThrottle,
}

impl ConnectThrottle {
    pub(crate) fn new(config: ThrottleConfig, share: &Arc<HubShare>) -> Self {
        ConnectThrottle {
            succeeded: DeviceThrottle::new(
                ThrottledOperation::Connect,
                config.device_connects,
                config.hub_connects,
                Arc::clone(share),
            ),
            failed: FailureThrottle::new(
                config.peer_failed_connects,
                config.hub_failed_connects,
                Arc::clone(share),
            ),
        }
    }

    /// Whether a connect naming `device` from `peer` may be authenticated at all. The answer
    /// depends on the address only, never on the device, so it reveals nothing about it.
    pub(crate) fn admit(&self, device: &DeviceId, peer: Option<IpAddr>) -> Result<()> {
        let Some(peer) = peer else { return Ok(()) };
        match self.failed.admit(PeerKey::of(peer), Instant::now()) {
            None => Ok(()),
            Some((scope, retry_after)) => Err(Error::Throttled {
                device: device.clone(),
                operation: ThrottledOperation::Connect,
                scope,
                retry_after,
            }),
        }
    }

    /// Counts a failed authentication from `peer`.
    pub(crate) fn failed(&self, peer: Option<IpAddr>) {
        self.failed.charge(peer.map(PeerKey::of), Instant::now());
    }

    /// Takes a connect token for the authenticated `device` from its bucket and the hub's.
    pub(crate) fn take(&self, device: &DeviceId) -> Result<()> {
        self.succeeded.take(device)
    }
}

/// The telemetry throttle: the hub-wide bucket lives here, each session holds its device's.
#[derive(Debug)]
pub(crate) struct TelemetryThrottle {
    config: ThrottleConfig,
    share: Arc<HubShare>,
    hub: Mutex<Option<Bucket>>,
}

impl TelemetryThrottle {
    pub(crate) fn new(config: ThrottleConfig, share: Arc<HubShare>) -> Self {
        TelemetryThrottle {
            config,
            share,
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

    /// Whether either rate is set: if not, [`take`](TelemetryThrottle::take) refuses nothing.
    pub(crate) fn limits(&self) -> bool {
        self.config.device_telemetry.is_some() || self.config.hub_telemetry.is_some()
    }

    /// Takes a telemetry token from the device's bucket and the hub's.
    pub(crate) fn take(&self, device: &DeviceId, bucket: &Mutex<Option<Bucket>>) -> Result<()> {
        if !self.limits() {
            // Neither the clock nor the two locks for nothing to count.
            return Ok(());
        }
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
        let hub = match (
            self.share.of(self.config.hub_telemetry),
            &mut *lock(&self.hub),
        ) {
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

    // The setters are the only way other crates can build a ThrottleConfig (`non_exhaustive`):
    // each must set its own field. Every value differs from the defaults and from the others.
    #[test]
    fn each_throttle_setter_sets_its_own_field() {
        let r = |n: f64| Some(Rate::new(n, n + 0.5));
        let built = ThrottleConfig::default()
            .device_connects(r(1.5))
            .hub_connects(r(2.5))
            .peer_failed_connects(r(3.5))
            .hub_failed_connects(r(4.5))
            .device_telemetry(r(5.5))
            .hub_telemetry(r(6.5))
            .device_twin(r(7.5))
            .hub_twin(r(8.5))
            .device_methods(r(9.5))
            .hub_methods(None);
        let expected = ThrottleConfig {
            device_connects: r(1.5),
            hub_connects: r(2.5),
            peer_failed_connects: r(3.5),
            hub_failed_connects: r(4.5),
            device_telemetry: r(5.5),
            hub_telemetry: r(6.5),
            device_twin: r(7.5),
            hub_twin: r(8.5),
            device_methods: r(9.5),
            hub_methods: None,
        };
        assert_eq!(built, expected);
    }

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
        let t = ConnectThrottle::new(
            ThrottleConfig {
                device_connects: Some(Rate::new(0.0, 2.0)),
                hub_connects: None,
                ..ThrottleConfig::unlimited()
            },
            &HubShare::new(),
        );
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
        let mut map = KeyedBuckets::new();
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
    fn peers_are_keyed_by_ipv4_address_and_ipv6_prefix() {
        let key = |s: &str| PeerKey::of(s.parse().expect("ip"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn failures_count_per_peer_and_refuse_only_recent_offenders_hub_wide() {
        let t = ConnectThrottle::new(
            ThrottleConfig {
                peer_failed_connects: Some(Rate::new(0.0, 2.0)),
                hub_failed_connects: Some(Rate::new(0.0, 1.0)),
                ..ThrottleConfig::unlimited()
            },
            &HubShare::new(),
        );
        let d: DeviceId = "d".parse().expect("id");
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
            "192.0.2.3".parse().expect("ip"),
        );
        assert!(t.admit(&d, Some(a)).is_ok());
        t.failed(Some(a));
        // The hub's single failure token is spent: a, which failed, is refused...
        let refused = t.admit(&d, Some(a));
        assert!(
            matches!(
                refused,
                Err(Error::Throttled {
                    scope: ThrottleScope::Hub,
                    ..
                })
            ),
            "{refused:?}"
        );
        // ...b, which never did, is not; nor is a caller without an address.
        assert!(t.admit(&d, Some(b)).is_ok());
        assert!(t.admit(&d, None).is_ok());
        t.failed(Some(c));
        t.failed(Some(c));
        let spent = t.admit(&d, Some(c));
        assert!(
            matches!(
                spent,
                Err(Error::Throttled {
                    scope: ThrottleScope::Peer,
                    ..
                })
            ),
            "{spent:?}"
        );
        // Failures never touch the device's connect budget.
        assert!(t.take(&d).is_ok());
    }

    #[test]
    fn hub_limit_is_shared() {
        let t = ConnectThrottle::new(
            ThrottleConfig {
                hub_connects: Some(Rate::new(0.0, 2.0)),
                ..ThrottleConfig::unlimited()
            },
            &HubShare::new(),
        );
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
