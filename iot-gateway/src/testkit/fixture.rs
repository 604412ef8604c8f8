//! What the gateway checks run against: a [`Fixture`] that provisions devices and reads the
//! log, and the [`Limits`] the gateway under test was configured with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Log, ReadLimits, Record, partition_for_key};
use iot_identity::{Credentials, DeviceStatus, IdentityStore, NewIdentity, SymmetricKey, sas};

/// Provisions devices for the checks and reads back what reached the log.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// Creates a new enabled device (the name is a hint; make it unique) and returns its id and
    /// a SAS token valid for an hour.
    async fn provision(&self, name: &str) -> (DeviceId, String);
    /// Disables the device in the identity store.
    async fn disable(&self, device: &DeviceId);
    /// The telemetry records of `device` in the log, in log order.
    async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record>;
}

/// A [`Fixture`] over an identity store and the telemetry topic (what a `Hub` is built on).
#[derive(Debug, Clone)]
pub struct StoreFixture {
    /// The identity store the gateway authenticates against.
    pub identity: Arc<dyn IdentityStore>,
    /// The telemetry topic.
    pub telemetry: Arc<dyn Log>,
    /// The host SAS tokens are scoped to.
    pub host: String,
}

#[async_trait]
impl Fixture for StoreFixture {
    async fn provision(&self, name: &str) -> (DeviceId, String) {
        let id: DeviceId = format!("{name}-{:08x}", rand::random::<u32>())
            .parse()
            .expect("device id");
        let key = SymmetricKey::generate();
        self.identity
            .create(NewIdentity::new(
                id.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create identity");
        let resource = sas::device_resource(&self.host, &id);
        let token = sas::generate(&resource, &key, sas::unix_now() + 3600, None).expect("token");
        (id, token.as_str().to_owned())
    }

    async fn disable(&self, device: &DeviceId) {
        self.identity
            .set_status(device, DeviceStatus::disabled("testkit"), None)
            .await
            .expect("disable");
    }

    async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record> {
        let p = partition_for_key(device.as_str(), self.telemetry.partition_count());
        let mut out = Vec::new();
        let mut from = self.telemetry.earliest_offset(p).await.expect("earliest");
        loop {
            let batch = self
                .telemetry
                .read(p, from, ReadLimits::default())
                .await
                .expect("read");
            let Some(last) = batch.last() else { break };
            from = last.offset.next();
            out.extend(
                batch
                    .into_iter()
                    .filter(|r| r.record.key == device.as_str())
                    .map(|r| r.record),
            );
        }
        out
    }
}

/// The limits the gateway under test was configured with; checks that need a short lock or a
/// small delivery count are skipped when the gateway's are too long to wait for.
///
/// The default is a [`Hub`](crate::Hub)'s default configuration; a gateway configured otherwise
/// (or one outside this crate) states its own with the setters:
///
/// ```
/// use std::time::Duration;
/// use iot_gateway::testkit::Limits;
///
/// let limits = Limits::default()
///     .lock_duration(Duration::from_millis(300))
///     .max_delivery_count(3);
/// assert_eq!(limits.max_inbox_depth, 50);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Messages queued per device before `QueueFull`. Default 50.
    pub max_inbox_depth: usize,
    /// Deliveries before dead-lettering. Default 10 (checks skip above 20).
    pub max_delivery_count: u32,
    /// The C2D lock duration. Default 60 s (checks skip above 5 s).
    pub lock_duration: Duration,
    /// The largest telemetry message accepted (payload plus property names and values); one
    /// byte more must be `TooLarge`. Default 256 KiB.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inbox_depth: 50,
            max_delivery_count: 10,
            lock_duration: Duration::from_secs(60),
            max_message_bytes: 256 * 1024,
        }
    }
}

impl Limits {
    /// Sets [`max_inbox_depth`](Self::max_inbox_depth).
    pub fn max_inbox_depth(mut self, max_inbox_depth: usize) -> Self {
        self.max_inbox_depth = max_inbox_depth;
        self
    }

    /// Sets [`max_delivery_count`](Self::max_delivery_count).
    pub fn max_delivery_count(mut self, max_delivery_count: u32) -> Self {
        self.max_delivery_count = max_delivery_count;
        self
    }

    /// Sets [`lock_duration`](Self::lock_duration).
    pub fn lock_duration(mut self, lock_duration: Duration) -> Self {
        self.lock_duration = lock_duration;
        self
    }

    /// Sets [`max_message_bytes`](Self::max_message_bytes).
    pub fn max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }
}

/// A hub's limits, as its configuration states them.
impl From<&crate::HubConfig> for Limits {
    fn from(config: &crate::HubConfig) -> Self {
        Limits {
            max_inbox_depth: config.inbox.max_depth,
            max_delivery_count: config.inbox.max_delivery_count,
            lock_duration: config.inbox.lock_duration,
            max_message_bytes: config.max_message_bytes,
        }
    }
}

/// Waits for `f`, failing the check if it hangs (not a timing assertion: the guard is minutes).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the gateway hung for 60 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The setters are the only way other crates can build `Limits` (`non_exhaustive`): each must
    // set its own field and nothing else.
    #[test]
    fn each_setter_sets_its_own_field() {
        let built = Limits::default()
            .max_inbox_depth(7)
            .max_delivery_count(2)
            .lock_duration(Duration::from_millis(5))
            .max_message_bytes(99);
        let expected = Limits {
            max_inbox_depth: 7,
            max_delivery_count: 2,
            lock_duration: Duration::from_millis(5),
            max_message_bytes: 99,
        };
        assert_eq!(built, expected);
    }

    #[test]
    fn the_default_is_a_default_hubs() {
        assert_eq!(
            Limits::default(),
            Limits::from(&crate::HubConfig::default())
        );
    }
}
