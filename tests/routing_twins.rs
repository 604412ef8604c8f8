//! Routing reads twins from the hub's own stores: registry tags and the gateway's twin store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iot_sdk::core::{DeviceId, Offset, PartitionId, Record, StoredRecord, Timestamp};
use iot_sdk::gateway::twins::Section;
use iot_sdk::gateway::{MemoryTwinStore, TwinLimits, TwinStore};
use iot_sdk::registry::{MemoryRegistry, Registry};
use iot_sdk::routing::HubTwins;
use iot_sdk::stream::routing::{Condition, MessageView, TwinLookup};
use serde_json::json;

#[tokio::test]
async fn hub_twins_join_registry_tags_and_twin_store_properties() {
    let registry = Arc::new(MemoryRegistry::new());
    let twins = Arc::new(MemoryTwinStore::new());
    let device = DeviceId::new("dev-1").unwrap();
    registry
        .create(
            &device,
            serde_json::from_value(json!({"tags": {"deploymentLocation": {"building": "43"}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    twins
        .patch(
            &device,
            Section::Desired,
            &json!({"telemetryConfig": {"sendFrequency": "5m"}}),
            None,
            TwinLimits::default(),
        )
        .await
        .unwrap();
    let lookup = HubTwins::new(registry, twins);
    let twin = lookup.twin("dev-1", None).await.unwrap().unwrap();
    assert_eq!(twin["tags"]["deploymentLocation"]["building"], "43");
    assert_eq!(twin["properties"]["reported"], json!({}));

    let record = StoredRecord::new(
        PartitionId(0),
        Offset(0),
        Timestamp::from_unix_millis(0),
        Record::new("dev-1", "{}"),
    );
    let condition = Condition::parse(
        "$twin.tags.deploymentLocation.building = '43' \
         AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
    )
    .unwrap();
    assert_eq!(
        condition.evaluate(&MessageView::new(&record), Some(&twin)),
        Some(true)
    );

    // Unknown devices and module messages have no twin.
    assert_eq!(lookup.twin("dev-2", None).await.unwrap(), None);
    assert_eq!(lookup.twin("dev-1", Some("m")).await.unwrap(), None);
}
