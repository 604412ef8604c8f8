//! The access matrix over a real registry and a real audit log: grants over registry queries
//! and hierarchy nodes follow the device records, and denials land on the log in the shape the
//! provisioning audit records have.

use std::sync::Arc;

use iot_core::{Log, LogExt, MemoryLog, Offset, ReadLimits};
use iot_identity::PassphraseParams;
use iot_identity::access::{
    AccessConfig, AccessControl, Decision, DenyReason, DeviceSet, Grant, LogAuditSink,
    MemoryAccessStore, Permission, Target,
};
use iot_provisioning::{AuditRecord, RegistryDeviceSets};
use iot_registry::{DeviceDocument, MemoryRegistry, Registry};
use serde_json::json;

async fn records(log: &Arc<dyn Log>) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for partition in log.partitions() {
        let batch = log
            .read(partition, Offset(0), ReadLimits::default())
            .await
            .expect("read");
        out.extend(
            batch
                .iter()
                .map(|r| AuditRecord::from_payload(&r.record.payload).expect("an audit record")),
        );
    }
    // Partitions interleave; order by what the test told apart, not by time.
    out.sort_by(|a, b| (&a.operation, &a.device_id).cmp(&(&b.operation, &b.device_id)));
    out
}

#[tokio::test]
async fn grants_follow_the_registry_and_denials_are_on_the_log() {
    let registry = Arc::new(MemoryRegistry::new());
    for (id, floor, kind) in [
        ("pump-1", 3, "pump"),
        ("fan-1", 1, "fan"),
        ("pump-2", 1, "pump"),
    ] {
        let doc =
            DeviceDocument::with_metadata(json!({"building": "HQ", "floor": floor, "kind": kind}))
                .expect("object");
        registry
            .create(&id.parse().expect("id"), doc)
            .await
            .expect("create");
    }
    let log: Arc<dyn Log> = Arc::new(MemoryLog::new(2).expect("log"));
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(RegistryDeviceSets::new(registry.clone())),
    )
    .with_audit(Arc::new(LogAuditSink::new(Arc::clone(&log))))
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    let olga = "olga".parse().expect("name");
    access.create_user(olga, "pw-olga").await.expect("user");
    let olga = "olga".parse().expect("name");
    access
        .grant(Grant::new(
            "olga".parse().expect("name"),
            "operator".parse().expect("role"),
            DeviceSet::Node("building=HQ/floor=3".parse().expect("node")),
        ))
        .await
        .expect("grant");
    access
        .grant(Grant::new(
            "olga".parse().expect("name"),
            "viewer".parse().expect("role"),
            DeviceSet::query("SELECT * FROM devices WHERE metadata.kind = 'pump'").expect("q"),
        ))
        .await
        .expect("grant");
    assert!(
        access
            .grant(Grant::new(
                "olga".parse().expect("name"),
                "viewer".parse().expect("role"),
                DeviceSet::query("SELECT * FROM devices WHERE").expect("text"),
            ))
            .await
            .is_err(),
        "a query that does not parse is refused when granted"
    );
    let on = |id: &str| Target::Device(id.parse().expect("id"));
    assert_eq!(
        access
            .check(&olga, Permission::InvokeMethod, &on("pump-1"))
            .await,
        Decision::Allow
    );
    assert_eq!(
        access.check(&olga, Permission::Read, &on("pump-2")).await,
        Decision::Allow
    );
    assert_eq!(
        access
            .check(&olga, Permission::InvokeMethod, &on("pump-2"))
            .await,
        Decision::Deny(DenyReason::NotGranted)
    );
    assert_eq!(
        access.check(&olga, Permission::Read, &on("fan-1")).await,
        Decision::Deny(DenyReason::NotGranted)
    );
    // pump-2 moves to the third floor: the node grant now holds it.
    let moved =
        DeviceDocument::with_metadata(json!({"building": "HQ", "floor": 3, "kind": "pump"}))
            .expect("object");
    registry
        .replace(&"pump-2".parse().expect("id"), moved, None)
        .await
        .expect("move");
    assert_eq!(
        access
            .check(&olga, Permission::InvokeMethod, &on("pump-2"))
            .await,
        Decision::Allow
    );
    assert!(access.login("olga", "wrong").await.is_err());

    let audited = records(&log).await;
    let summary: Vec<(&str, &str, &str, &str)> = audited
        .iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.operation.as_str(),
                r.device_id.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("olga", "invokeMethod", "pump-2", "denied"),
            ("olga", "login", "", "denied"),
            ("olga", "read", "fan-1", "denied"),
        ]
    );
    assert_eq!(audited[0].error.as_deref(), Some("not_granted"));
    assert_eq!(audited[1].error.as_deref(), Some("login_refused"));
}
