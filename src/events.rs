//! IoT Hub's device lifecycle events (`createDeviceIdentity`, `deleteDeviceIdentity`) from the
//! provisioning audit trail.
//!
//! Devices are created and deleted only through `iot_provisioning` (the service REST API, DPS
//! registrations and bulk imports all go through a `Provisioning`), which appends one record per
//! operation to the `audit` topic. [`LifecycleEvents`] is a stream processor over that topic: for
//! each successful `register` it writes a `createDeviceIdentity` event and for each successful
//! `unregister` a `deleteDeviceIdentity` event, in IoT Hub's shape
//! ([`iot_gateway::events`]), to [`LIFECYCLE_TOPIC`] (`device-lifecycle-events`). Run it in the
//! `ProcessorHost` as a consumer group: it is at-least-once like every processor there, and an
//! event written twice after a crash carries the same `correlation-id` (derived from the audit
//! record's position), so a consumer can drop the duplicate.
//!
//! ```no_run
//! # async fn run(host: iot_stream::ProcessorHost, hub_twins: iot_sdk::routing::HubTwins) -> iot_stream::Result<()> {
//! use std::sync::Arc;
//! use iot_sdk::events::LifecycleEvents;
//! let lifecycle = LifecycleEvents::new("contoso").with_twins(Arc::new(hub_twins));
//! let group = iot_core::GroupName::new("lifecycle-events").expect("group name");
//! host.start("audit", group, Arc::new(lifecycle), iot_stream::HostConfig::default()).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord, Timestamp};
use iot_gateway::events::{self, EventKind};
use iot_provisioning::AuditRecord;
use iot_stream::routing::TwinLookup;
use iot_stream::{Context, ProcessorFactory, Result, StreamProcessor};

/// The topic lifecycle events are written to.
pub const LIFECYCLE_TOPIC: &str = "device-lifecycle-events";

/// Turns audit records into device lifecycle events (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct LifecycleEvents {
    hub: String,
    topic: String,
    twins: Option<Arc<dyn TwinLookup>>,
}

impl LifecycleEvents {
    /// Events of the hub named `hub` (`hubName`), to [`LIFECYCLE_TOPIC`].
    pub fn new(hub: &str) -> Self {
        LifecycleEvents {
            hub: hub.to_owned(),
            topic: LIFECYCLE_TOPIC.to_owned(),
            twins: None,
        }
    }

    /// Writes to `topic` instead.
    pub fn to_topic(mut self, topic: &str) -> Self {
        self.topic = topic.to_owned();
        self
    }

    /// Puts the device's twin as it is when the event is written (tags from the registry,
    /// properties from the twin store: [`HubTwins`](crate::routing::HubTwins)) in
    /// `createDeviceIdentity` bodies. Without it, and for deletions (whose twin is gone), the
    /// body is the empty twin.
    pub fn with_twins(mut self, twins: Arc<dyn TwinLookup>) -> Self {
        self.twins = Some(twins);
        self
    }
}

#[async_trait]
impl StreamProcessor for LifecycleEvents {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        for stored in batch {
            let Some(audit) = AuditRecord::from_payload(&stored.record.payload) else {
                continue;
            };
            if audit.outcome != "ok" {
                continue;
            }
            let kind = match audit.operation.as_str() {
                "register" => EventKind::CreateDeviceIdentity,
                "unregister" => EventKind::DeleteDeviceIdentity,
                _ => continue,
            };
            let twin = match (kind, &self.twins) {
                (EventKind::CreateDeviceIdentity, Some(twins)) => {
                    twins.twin(&audit.device_id, None).await?
                }
                _ => None,
            };
            let at = Timestamp::from_unix_millis(audit.time);
            let body = events::lifecycle_body(&audit.device_id, twin.as_ref(), at);
            // The audit record's position: the same event written again has the same id.
            let id = format!("audit-{}-{}", stored.partition.0, stored.offset.0);
            let record = events::event_record(kind, &self.hub, &audit.device_id, at, id, &body);
            ctx.emit(&self.topic, record);
        }
        Ok(())
    }
}

impl ProcessorFactory for LifecycleEvents {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
