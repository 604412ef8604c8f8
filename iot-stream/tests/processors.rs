//! Built-in processors in the host: pump, router, threshold alert, anomaly detection.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use iot_core::{
    DeviceId, GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, Timestamp, Topics,
};
use iot_stream::processors::{
    AnomalyDetector, AnomalyMode, Crossing, Pump, Router, SpikeAndDip, ThresholdAlert,
};
use iot_stream::window::{OrderingPolicy, WindowSpec};
use iot_stream::{HostConfig, MemoryStateStore, ProcessorFactory, ProcessorHost, StateStore};
use serde_json::{Value, json};

async fn all(log: &Arc<dyn Log>) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..log.partition_count() {
        for r in log
            .read(PartitionId(p), Offset(0), ReadLimits::default())
            .await
            .unwrap()
        {
            out.push(r.record);
        }
    }
    out
}

async fn run(topics: &Arc<Topics>, name: &str, factory: Arc<dyn ProcessorFactory>) {
    let host = ProcessorHost::new(topics.clone());
    let g = host
        .start(
            "telemetry",
            GroupName::new(name).unwrap(),
            factory,
            HostConfig::default(),
        )
        .await
        .unwrap();
    g.wait_caught_up().await.unwrap();
    g.shutdown().await.unwrap();
}

#[tokio::test]
async fn pump_stores_history_by_device_time_once() {
    let topics = Arc::new(Topics::memory(2));
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for i in 0..10u64 {
        let r = Record::new(format!("dev-{}", i % 2), format!("{i}"))
            .with_device_time(Timestamp::from_unix_millis(100 - i));
        producer.send(r).await.unwrap();
    }
    let store = Arc::new(MemoryStateStore::new());
    run(&topics, "pump", Arc::new(Pump::to_store(store.clone()))).await;
    // A second group over the same records into the same store stores nothing twice.
    run(&topics, "pump2", Arc::new(Pump::to_store(store.clone()))).await;
    let events = store
        .read_events(
            &DeviceId::new("dev-0").unwrap(),
            Timestamp::EPOCH,
            Timestamp::from_unix_millis(1000),
            100,
        )
        .await
        .unwrap();
    let payloads: Vec<_> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        ["8", "6", "4", "2", "0"],
        "ordered by device time"
    );
}

#[tokio::test]
async fn router_by_header_and_payload_field() {
    let topics = Arc::new(Topics::memory(2));
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    producer
        .send(Record::new("d", r#"{"kind":"gps"}"#).with_header("subject", "temperature"))
        .await
        .unwrap();
    producer
        .send(Record::new("d", r#"{"kind":"gps"}"#).with_header("subject", "alarm"))
        .await
        .unwrap();
    producer
        .send(Record::new("d", r#"{"kind":"other"}"#))
        .await
        .unwrap();
    producer
        .send(Record::new("d", "not json").with_header("$version", "2"))
        .await
        .unwrap();
    let by_subject = Router::by_header("subject")
        .route("temperature", "temps")
        .route("alarm", "alarms");
    run(&topics, "r1", Arc::new(by_subject)).await;
    let by_field = Router::by_payload_field("kind")
        .route("gps", "positions")
        .otherwise("rest");
    run(&topics, "r2", Arc::new(by_field)).await;
    let by_version = Router::by_header("$version").route("2", "v2");
    run(&topics, "r3", Arc::new(by_version)).await;
    assert_eq!(all(&topics.topic("temps").await.unwrap()).await.len(), 1);
    assert_eq!(all(&topics.topic("alarms").await.unwrap()).await.len(), 1);
    assert_eq!(
        all(&topics.topic("positions").await.unwrap()).await.len(),
        2
    );
    assert_eq!(all(&topics.topic("rest").await.unwrap()).await.len(), 2);
    let v2 = all(&topics.topic("v2").await.unwrap()).await;
    assert_eq!(v2[0].payload, "not json", "records are routed unchanged");
}

#[tokio::test]
async fn threshold_alert_on_window_average() {
    let topics = Arc::new(Topics::memory(1));
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    // Tumbling 10 s: (0,10] averages 85 (alert), (10,20] averages 75 (no alert); the event at 25
    // closes them.
    for (t, temp) in [(1, 80), (5, 90), (12, 70), (15, 80), (25, 10)] {
        let r = Record::new("dev-1", json!({"temperature": temp}).to_string())
            .with_device_time(Timestamp::from_unix_millis(t * 1000));
        producer.send(r).await.unwrap();
    }
    let alert = ThresholdAlert::new(
        "temperature",
        WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        },
        80.0,
    )
    .unwrap()
    .ordering(OrderingPolicy::replay());
    run(&topics, "alerts", Arc::new(alert)).await;
    let alerts = all(&topics.topic("alerts").await.unwrap()).await;
    assert_eq!(alerts.len(), 1);
    let body: Value = serde_json::from_slice(&alerts[0].payload).unwrap();
    assert_eq!(body["value"], json!(85.0));
    assert_eq!(body["windowEnd"], json!(10_000_000));
    assert_eq!(alerts[0].headers.get("subject"), Some("alert"));

    let below = ThresholdAlert::new(
        "temperature",
        WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        },
        80.0,
    )
    .unwrap()
    .crossing(Crossing::Below)
    .ordering(OrderingPolicy::replay())
    .topic("cold");
    run(&topics, "cold", Arc::new(below)).await;
    assert_eq!(all(&topics.topic("cold").await.unwrap()).await.len(), 1);
}

#[tokio::test]
async fn anomaly_detector_flags_a_spike() {
    let topics = Arc::new(Topics::memory(1));
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    for i in 0..60 {
        let v = if i == 50 {
            60.0
        } else {
            20.0 + f64::from(i % 3) * 0.2
        };
        producer
            .send(Record::new("dev-1", json!({"temperature": v}).to_string()))
            .await
            .unwrap();
    }
    let detector = AnomalyDetector::new(
        "temperature",
        SpikeAndDip::new(99.0, 20, AnomalyMode::SpikesAndDips).unwrap(),
    );
    run(&topics, "anomaly", Arc::new(detector)).await;
    let alerts = all(&topics.topic("alerts").await.unwrap()).await;
    assert_eq!(alerts.len(), 1, "only the spike");
    let body: Value = serde_json::from_slice(&alerts[0].payload).unwrap();
    assert_eq!(body["kind"], "spike");
    assert_eq!(body["value"], json!(60.0));
}

/// A provisioner over memory stores with `dev-1` registered (`{"floor": 1, "model": "x"}`),
/// writing its audit trail to `topics`' `audit` topic, with `hooks`.
async fn provisioner_with_dev_1(
    topics: &Arc<Topics>,
    hooks: Vec<Arc<dyn iot_provisioning::Hook>>,
) -> iot_provisioning::Provisioner {
    use iot_provisioning::{Provisioner, Provisioning, RegisterRequest};

    let mut builder = Provisioner::builder(
        Arc::new(iot_identity::MemoryIdentityStore::new()),
        Arc::new(iot_registry::MemoryRegistry::new()),
    )
    .audit_log(topics.topic(iot_core::TopicName::AUDIT).await.unwrap())
    .actor("operator");
    for hook in hooks {
        builder = builder.hook(hook);
    }
    let provisioner = builder.open().await.unwrap();
    provisioner
        .register(RegisterRequest::new(
            DeviceId::new("dev-1").unwrap(),
            json!({"floor": 1, "model": "x"}),
        ))
        .await
        .unwrap();
    provisioner
}

#[tokio::test]
async fn metadata_sync_merges_into_the_registry() {
    use iot_stream::processors::{METADATA_SUBJECT, MetadataSync};

    let topics = Arc::new(Topics::memory(2));
    let provisioner = provisioner_with_dev_1(&topics, Vec::new()).await;
    let dev = DeviceId::new("dev-1").unwrap();
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    let meta = |key: &str, body: &str| {
        Record::new(key, body.to_owned()).with_header("subject", METADATA_SUBJECT)
    };
    producer
        .send(meta("dev-1", r#"{"floor": 2, "model": null, "fw": "1.1"}"#))
        .await
        .unwrap();
    producer
        .send(Record::new("dev-1", r#"{"temperature": 20}"#))
        .await
        .unwrap();
    producer
        .send(meta("dev-1", r#"{"fw": "1.2"}"#))
        .await
        .unwrap();
    producer
        .send(meta("ghost", r#"{"fw": "1.2"}"#))
        .await
        .unwrap();
    run(
        &topics,
        "meta",
        Arc::new(MetadataSync::new(Arc::new(provisioner.clone()))),
    )
    .await;

    let record = provisioner.registry().get(&dev).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(record.metadata.clone()),
        json!({"floor": 2, "fw": "1.2"})
    );
    let dead = all(&topics.topic("deadletter").await.unwrap()).await;
    assert_eq!(
        dead.len(),
        1,
        "the unknown device's update is dead-lettered"
    );
    assert_eq!(dead[0].key, "ghost");
}

/// A hook that records every `update` it is asked about and vetoes those that set `"locked"`.
#[derive(Debug, Default)]
struct UpdateWatcher {
    seen: std::sync::Mutex<Vec<(String, String, Option<Value>)>>,
}

#[async_trait::async_trait]
impl iot_provisioning::Hook for UpdateWatcher {
    fn name(&self) -> &str {
        "update-watcher"
    }

    async fn before(
        &self,
        ctx: &iot_provisioning::HookContext,
    ) -> Result<(), iot_provisioning::HookError> {
        if ctx.operation != iot_provisioning::Operation::Update {
            return Ok(());
        }
        self.seen.lock().unwrap().push((
            ctx.id.as_str().to_owned(),
            ctx.actor.clone(),
            ctx.metadata.clone(),
        ));
        match ctx.metadata.as_ref().and_then(|m| m.get("locked")) {
            Some(_) => Err(iot_provisioning::HookError::Veto(
                "locked is set by operators".into(),
            )),
            None => Ok(()),
        }
    }
}

#[tokio::test]
async fn metadata_sync_goes_through_provisioning_hooks_and_audit() {
    use iot_provisioning::AuditRecord;
    use iot_stream::processors::{METADATA_SUBJECT, MetadataSync};

    let topics = Arc::new(Topics::memory(2));
    let watcher = Arc::new(UpdateWatcher::default());
    let provisioner = provisioner_with_dev_1(&topics, vec![watcher.clone()]).await;
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    let meta =
        |body: &str| Record::new("dev-1", body.to_owned()).with_header("subject", METADATA_SUBJECT);
    let sync = Arc::new(MetadataSync::new(Arc::new(
        provisioner.with_actor("metadata-sync"),
    )));
    // One message per run of the group (it resumes at its checkpoint), so that a failing batch
    // never makes the host apply the good message a second time on its own.
    producer.send(meta(r#"{"fw": "1.1"}"#)).await.unwrap();
    run(&topics, "meta-audit", sync.clone()).await;
    producer.send(meta(r#"{"locked": true}"#)).await.unwrap();
    run(&topics, "meta-audit", sync).await;

    // The hook ran for both messages, with the sync's actor and the patch.
    let seen = watcher.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                "dev-1".to_owned(),
                "metadata-sync".to_owned(),
                Some(json!({"fw": "1.1"}))
            ),
            (
                "dev-1".to_owned(),
                "metadata-sync".to_owned(),
                Some(json!({"locked": true}))
            ),
        ]
    );
    // The veto held: only the first patch is in the record, the second is dead-lettered.
    let dev = DeviceId::new("dev-1").unwrap();
    let record = provisioner.registry().get(&dev).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(record.metadata.clone()),
        json!({"floor": 1, "model": "x", "fw": "1.1"})
    );
    let dead = all(&topics.topic("deadletter").await.unwrap()).await;
    assert_eq!(dead.len(), 1, "the vetoed update is dead-lettered");
    assert_eq!(dead[0].payload.as_ref(), br#"{"locked": true}"#);

    // Each update left an audit record attributed to the sync, with its outcome.
    let audit: Vec<AuditRecord> = all(&topics.topic("audit").await.unwrap())
        .await
        .iter()
        .map(|r| AuditRecord::from_payload(&r.payload).unwrap())
        .filter(|a| a.operation == "update")
        .collect();
    let outcomes: Vec<(&str, &str, &str, Option<&str>)> = audit
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.device_id.as_str(),
                a.outcome.as_str(),
                a.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("metadata-sync", "dev-1", "ok", None),
            ("metadata-sync", "dev-1", "error", Some("vetoed")),
        ]
    );
}
