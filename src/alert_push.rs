//! Push notifications of alerts (feature `alert-push`): the alerts a rule writes to a topic,
//! posted to the webhooks users subscribed (`iot_identity::access::Subscription`), each alert
//! only to users whose `read` grants cover its device.
//!
//! [`AlertPush`] is a [`Sink`]: run it with [`SinkProcessor`](iot_stream::sinks::SinkProcessor)
//! over the alerts topic, as a consumer group of the [`ProcessorHost`](iot_stream::ProcessorHost),
//! and it inherits the sink framework's batching, retries with backoff, dead-letter topic and
//! checkpoint (a restart re-sends at most the batch in flight). Each subscriber gets, per batch,
//! one request through the signed webhook sink ([`WebhookSink`], [`WebhookMode::Batch`]): a JSON
//! array of the alerts of that batch they may see, with `x-iot-signature` made with the
//! subscription's own secret and `x-iot-event-id` for dropping redeliveries.
//!
//! Subscribers choose their webhook's URL, so by default the push connects only to public
//! addresses ([`AddressPolicy::PublicOnly`]): a user cannot point the hub at a service on its own
//! host or network. A deployment whose subscribers are on its internal network says so with
//! [`AlertPush::addresses`].
//!
//! An alert's device is its payload's `deviceId` (what `SELECT deviceId, … INTO alerts` writes),
//! else the record's key. See `docs/access.md` ("Alert subscriptions").

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, StoredRecord};
use iot_identity::access::{AccessControl, Permission, Subscription, SubscriptionStore};
use iot_stream::sinks::webhook::{AddressPolicy, WebhookMode, WebhookSecret, WebhookSink};
use iot_stream::sinks::{Sink, SinkBatch, SinkError};

/// The sink's name (the `x-sink` header of dead-lettered alerts) and the endpoint part of event
/// ids (`alerts:{partition}:{offset}`).
pub const ALERT_PUSH: &str = "alert-push";

/// Posts each batch of alerts to every subscriber allowed to see some of it. See the module
/// docs.
pub struct AlertPush {
    access: AccessControl,
    subscriptions: Arc<dyn SubscriptionStore>,
    endpoint: String,
    timeout: Duration,
    addresses: AddressPolicy,
    /// One webhook sink (and its kept-alive connections) per subscription, rebuilt when the
    /// subscription is replaced.
    sinks: Mutex<HashMap<String, Arc<WebhookSink>>>,
    /// The subscriptions a batch was already delivered to while another subscriber failed:
    /// the retry of the batch skips them. Keyed by (partition, first offset).
    done: Mutex<HashMap<(u32, u64), HashSet<String>>>,
}

impl fmt::Debug for AlertPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertPush")
            .field("endpoint", &self.endpoint)
            .field("subscriptions", &self.subscriptions)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl AlertPush {
    /// Alerts pushed to the subscriptions of `subscriptions`, checked against `access`.
    pub fn new(access: AccessControl, subscriptions: Arc<dyn SubscriptionStore>) -> Self {
        AlertPush {
            access,
            subscriptions,
            endpoint: "alerts".to_owned(),
            timeout: Duration::from_secs(10),
            addresses: AddressPolicy::PublicOnly,
            sinks: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint name in event ids: the alerts topic's name (default `alerts`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// How long one request to a subscriber may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Which addresses subscribers' webhooks may be at (default [`AddressPolicy::PublicOnly`]:
    /// a subscription whose host resolves only to loopback, private, link-local or other
    /// non-public addresses is refused, logged, and the other subscribers still get the alerts).
    /// [`AddressPolicy::Any`] is for deployments whose subscribers are on the internal network.
    pub fn addresses(mut self, policy: AddressPolicy) -> Self {
        self.addresses = policy;
        self
    }

    fn sink_for(&self, s: &Subscription) -> Result<Arc<WebhookSink>, SinkError> {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sink) = sinks.get(&s.id) {
            return Ok(Arc::clone(sink));
        }
        let rejected = |e: iot_stream::Error| SinkError::Rejected {
            reason: format!("subscription {}: {e}", s.id),
        };
        let secret = WebhookSecret::new(s.secret.expose().as_bytes().to_vec()).map_err(rejected)?;
        let sink = WebhookSink::new(format!("{ALERT_PUSH}-{}", s.id), &s.url, secret)
            .map_err(rejected)?
            .endpoint(self.endpoint.clone())
            .mode(WebhookMode::Batch)
            .timeout(self.timeout)
            .addresses(self.addresses);
        let sink = Arc::new(sink);
        sinks.insert(s.id.clone(), Arc::clone(&sink));
        Ok(sink)
    }

    /// The devices of `devices` that `s`'s user may read and `s` asks for.
    async fn visible(
        &self,
        s: &Subscription,
        devices: &BTreeSet<DeviceId>,
    ) -> Result<HashSet<DeviceId>, SinkError> {
        // A store that cannot answer is a retry, not "nothing visible": no alert is lost to an
        // outage of the access store.
        self.access
            .store()
            .access_of(&s.user)
            .await
            .map_err(|e| SinkError::Unavailable {
                reason: format!("access store: {e}"),
            })?;
        let mut wanted = Vec::new();
        for device in devices {
            if s.wants(device) {
                wanted.push(device.clone());
            }
        }
        Ok(self
            .access
            .allowed_devices(&s.user, Permission::Read, wanted)
            .await
            .into_iter()
            .collect())
    }
}

impl AlertPush {
    /// Posts the alerts of `batch` that `s` may see, if any.
    async fn deliver(
        &self,
        s: &Subscription,
        batch: SinkBatch<'_>,
        devices: &[Option<DeviceId>],
        distinct: &BTreeSet<DeviceId>,
    ) -> Result<(), SinkError> {
        let visible = self.visible(s, distinct).await?;
        let mut records = Vec::new();
        for (record, device) in batch.records.iter().zip(devices) {
            if device.as_ref().is_some_and(|d| visible.contains(d)) {
                records.push(record.clone());
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let sink = self.sink_for(s)?;
        sink.write(SinkBatch {
            partition: batch.partition,
            records: &records,
        })
        .await
    }
}

/// The device an alert is about: the record's key, else the payload's `deviceId`. The key
/// first: a record-by-record rule keeps the sending device's key, which the gateway set from its
/// authentication, while the payload's `deviceId` is whatever the device wrote (a device must
/// not file alerts under another device's name).
pub fn alert_device(record: &StoredRecord) -> Option<DeviceId> {
    DeviceId::new(&record.record.key).ok().or_else(|| {
        serde_json::from_slice::<serde_json::Value>(&record.record.payload)
            .ok()
            .and_then(|v| v.get("deviceId")?.as_str().map(str::to_owned))
            .and_then(|id| DeviceId::new(&id).ok())
    })
}

#[async_trait]
impl Sink for AlertPush {
    fn name(&self) -> &str {
        ALERT_PUSH
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let key = (batch.partition.0, first.offset.0);
        let subscriptions = self
            .subscriptions
            .all()
            .await
            .map_err(|e| SinkError::Unavailable {
                reason: format!("subscription store: {e}"),
            })?;
        let devices: Vec<Option<DeviceId>> = batch.records.iter().map(alert_device).collect();
        let distinct: BTreeSet<DeviceId> = devices.iter().flatten().cloned().collect();
        let already = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let mut failure = None;
        let mut delivered = already.clone();
        for s in &subscriptions {
            if already.contains(&s.id) {
                continue;
            }
            let outcome = self.deliver(s, batch, &devices, &distinct).await;
            match outcome {
                Ok(()) => {
                    delivered.insert(s.id.clone());
                }
                // One subscriber's refusal (a 4xx, a bad URL) is theirs alone: logged, and the
                // others still get the batch.
                Err(SinkError::Rejected { reason }) => {
                    tracing::warn!(subscription = %s.id, user = %s.user, %reason, "alert push refused");
                    delivered.insert(s.id.clone());
                }
                Err(e) => {
                    tracing::debug!(subscription = %s.id, error = %e, "alert push failed; retrying");
                    failure.get_or_insert(e);
                }
            }
        }
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        match failure {
            Some(e) => {
                // The retry skips those already served (within this process; a restart sends the
                // batch to everyone again, as the checkpoint promises at most one batch again).
                done.insert(key, delivered);
                Err(e)
            }
            None => {
                done.remove(&key);
                Ok(())
            }
        }
    }
}
