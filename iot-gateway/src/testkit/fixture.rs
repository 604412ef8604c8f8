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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages queued per device before `QueueFull`.
    pub max_inbox_depth: usize,
    /// Deliveries before dead-lettering.
    pub max_delivery_count: u32,
    /// The C2D lock duration.
    pub lock_duration: Duration,
}

/// Waits for `f`, failing the check if it hangs (not a timing assertion: the guard is minutes).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the gateway hung for 60 s")
}
