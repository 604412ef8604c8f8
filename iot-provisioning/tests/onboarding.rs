//! Registration through an enrollment (`onboarding`): over memory stores, a real `Provisioner`
//! with its audit trail on a memory log.

use std::collections::HashMap;
use std::sync::Arc;

use iot_core::{DeviceId, Log, LogExt, MemoryLog, Offset, ReadLimits};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, SymmetricKey, sas};
use iot_provisioning::enrollment::{
    Attestation, EnrollmentGroup, EnrollmentStatus, EnrollmentStore, GroupAttestation,
    IndividualEnrollment, MemoryEnrollmentStore, Precondition, ReprovisionPolicy,
};
use iot_provisioning::onboarding::{
    EnrollmentRef, Onboarding, OnboardingConfig, OnboardingError, Substatus,
};
use iot_provisioning::{AuditRecord, Provisioner, Provisioning, Workflow};
use iot_registry::{MemoryRegistry, Registry};
use serde_json::json;

const SCOPE: &str = "0ne00000A1B";
const HUB: &str = "hub.example.net";

struct Setup {
    onboarding: Onboarding,
    enrollments: Arc<MemoryEnrollmentStore>,
    provisioner: Provisioner,
    identity: Arc<MemoryIdentityStore>,
    audit: Arc<dyn Log>,
}

async fn setup() -> Setup {
    let identity = Arc::new(MemoryIdentityStore::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let audit: Arc<dyn Log> = Arc::new(MemoryLog::new(4).expect("log"));
    let provisioner = Provisioner::builder(identity.clone(), registry)
        .workflow(Workflow::new().audit_log(audit.clone()).actor("dps"))
        .open()
        .await
        .expect("provisioner");
    let enrollments = Arc::new(MemoryEnrollmentStore::new());
    let onboarding = Onboarding::new(
        enrollments.clone(),
        Arc::new(provisioner.clone()),
        OnboardingConfig::new(SCOPE, HUB),
    )
    .expect("onboarding");
    Setup {
        onboarding,
        enrollments,
        provisioner,
        identity,
        audit,
    }
}

fn token(registration_id: &str, key: &SymmetricKey) -> String {
    token_for(
        &format!("{SCOPE}/registrations/{registration_id}"),
        key,
        None,
    )
}

fn token_for(resource: &str, key: &SymmetricKey, skn: Option<&str>) -> String {
    sas::generate(resource, key, sas::unix_now() + 600, skn)
        .expect("token")
        .as_str()
        .to_string()
}

async fn add_group(
    s: &Setup,
    id: &str,
    key: &SymmetricKey,
    edit: impl FnOnce(&mut EnrollmentGroup),
) {
    let mut group = EnrollmentGroup::new(
        id.parse().expect("group id"),
        GroupAttestation::SymmetricKey {
            primary: key.clone(),
            secondary: SymmetricKey::generate(),
        },
    );
    edit(&mut group);
    s.enrollments
        .put_group(group, Precondition::Any)
        .await
        .expect("put group");
}

/// Every audit record, all partitions.
async fn audit(log: &Arc<dyn Log>) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for partition in log.partitions() {
        let mut offset = Offset(0);
        loop {
            let batch = log
                .read(partition, offset, ReadLimits::default())
                .await
                .expect("read audit");
            let Some(last) = batch.last() else { break };
            offset = Offset(last.offset.0 + 1);
            out.extend(
                batch
                    .iter()
                    .map(|r| AuditRecord::from_payload(&r.record.payload).expect("audit record")),
            );
        }
    }
    out
}

fn registers_of(records: &[AuditRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records.iter().filter(|r| r.operation == "register") {
        *counts.entry(r.device_id.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_group_device_registers_once_with_its_derived_keys_and_the_group_tags() {
    let s = setup().await;
    let group_key = SymmetricKey::generate();
    add_group(&s, "plant-7", &group_key, |g| {
        g.settings.tags = json!({"site": "plant-7"});
        g.settings.initial_twin = json!({"interval": 30});
    })
    .await;
    let key = group_key.derive_for_device("sensor-1");
    let first = s
        .onboarding
        .register("sensor-1", &token("sensor-1", &key))
        .await
        .expect("register");
    assert_eq!(first.device_id.as_str(), "sensor-1");
    assert_eq!(first.assigned_hub, HUB);
    assert_eq!(first.substatus, Substatus::InitialAssignment);
    assert_eq!(
        first.enrollment,
        EnrollmentRef::Group("plant-7".parse().expect("id"))
    );
    assert_eq!(first.initial_twin, json!({"interval": 30}));
    assert!(first.apply_initial_twin);

    // The identity holds the derived key: a hub token signed with it verifies.
    let identity = s
        .identity
        .get(&"sensor-1".parse().expect("id"))
        .await
        .expect("get")
        .expect("identity");
    match &identity.credentials {
        Credentials::SymmetricKeys { primary, .. } => assert_eq!(primary, &key),
        other => panic!("unexpected credentials {}", other.kind_name()),
    }
    let device = s
        .provisioner
        .get(&"sensor-1".parse().expect("id"))
        .await
        .expect("get")
        .expect("device");
    assert_eq!(device.record.metadata.get("site"), Some(&json!("plant-7")));
    assert_eq!(first.etag, device.record.etag);

    // Registering again: the same assignment, no second registration.
    let again = s
        .onboarding
        .register("sensor-1", &token("sensor-1", &key))
        .await
        .expect("register again");
    assert_eq!(again.device_id, first.device_id);
    assert_eq!(again.substatus, Substatus::DeviceDataMigrated);
    assert_eq!(again.created, first.created);
    assert!(!again.apply_initial_twin);
    let records = audit(&s.audit).await;
    assert_eq!(
        registers_of(&records).get("sensor-1"),
        Some(&1),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.actor == "dps" && r.outcome == "ok")
    );
}

#[tokio::test]
async fn the_reprovision_policy_decides_what_a_second_registration_does() {
    let s = setup().await;
    let keep_key = SymmetricKey::generate();
    add_group(&s, "keep", &keep_key, |g| {
        g.settings.reprovision = ReprovisionPolicy {
            update_hub_assignment: false,
            migrate_device_data: true,
        };
    })
    .await;
    let key = keep_key.derive_for_device("k-1");
    s.onboarding
        .register("k-1", &token("k-1", &key))
        .await
        .expect("first");
    let again = s
        .onboarding
        .register("k-1", &token("k-1", &key))
        .await
        .expect("again");
    assert_eq!(again.substatus, Substatus::InitialAssignment);
    assert!(!again.apply_initial_twin);

    let reset_key = SymmetricKey::generate();
    add_group(&s, "reset", &reset_key, |g| {
        g.settings.tags = json!({"fleet": "a"});
        g.settings.initial_twin = json!({"mode": "eco"});
        g.settings.reprovision = ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: false,
        };
    })
    .await;
    let key = reset_key.derive_for_device("r-1");
    s.onboarding
        .register("r-1", &token("r-1", &key))
        .await
        .expect("first");
    let id: DeviceId = "r-1".parse().expect("id");
    s.provisioner
        .update(&id, json!({"fleet": "changed"}), None)
        .await
        .expect("update");
    let again = s
        .onboarding
        .register("r-1", &token("r-1", &key))
        .await
        .expect("again");
    assert_eq!(again.substatus, Substatus::DeviceDataReset);
    assert!(again.apply_initial_twin);
    let device = s.provisioner.get(&id).await.expect("get").expect("device");
    assert_eq!(device.record.metadata.get("fleet"), Some(&json!("a")));
    assert_eq!(registers_of(&audit(&s.audit).await).get("r-1"), Some(&1));
}

#[tokio::test]
async fn a_disabled_enrollment_is_refused_and_nothing_is_registered() {
    let s = setup().await;
    let group_key = SymmetricKey::generate();
    add_group(&s, "off", &group_key, |g| {
        g.settings.status = EnrollmentStatus::Disabled;
    })
    .await;
    let key = group_key.derive_for_device("d-1");
    let e = s
        .onboarding
        .register("d-1", &token("d-1", &key))
        .await
        .expect_err("disabled group");
    assert!(
        matches!(e, OnboardingError::EnrollmentDisabled { .. }),
        "{e}"
    );
    assert_eq!(e.kind(), "enrollment_disabled");

    let own = SymmetricKey::generate();
    let mut individual = IndividualEnrollment::new(
        "d-2".parse().expect("id"),
        Attestation::SymmetricKey {
            primary: own.clone(),
            secondary: SymmetricKey::generate(),
        },
    );
    individual.settings.status = EnrollmentStatus::Disabled;
    s.enrollments
        .put_individual(individual, Precondition::Absent)
        .await
        .expect("put");
    let e = s
        .onboarding
        .register("d-2", &token("d-2", &own))
        .await
        .expect_err("disabled individual");
    assert!(
        matches!(e, OnboardingError::EnrollmentDisabled { .. }),
        "{e}"
    );
    for id in ["d-1", "d-2"] {
        assert!(
            s.provisioner
                .get(&id.parse().expect("id"))
                .await
                .expect("get")
                .is_none()
        );
    }
    assert!(registers_of(&audit(&s.audit).await).is_empty());
}

#[tokio::test]
async fn bad_tokens_are_refused_without_a_secret_in_the_error() {
    let s = setup().await;
    let group_key = SymmetricKey::generate();
    add_group(&s, "g", &group_key, |_| {}).await;
    let key = group_key.derive_for_device("b-1");
    let resource = format!("{SCOPE}/registrations/b-1");
    let expired = sas::generate(&resource, &key, sas::unix_now() - 3600, None)
        .expect("token")
        .as_str()
        .to_string();
    let cases = [
        ("wrong key", token("b-1", &SymmetricKey::generate())),
        ("the group key itself", token("b-1", &group_key)),
        (
            "another device's key",
            token("b-1", &group_key.derive_for_device("b-2")),
        ),
        ("another registration's scope", token("b-2", &key)),
        (
            "another id scope",
            token_for("0ne-other/registrations/b-1", &key, None),
        ),
        (
            "a hub token",
            token_for(&format!("{HUB}/devices/b-1"), &key, None),
        ),
        (
            "another key name",
            token_for(&resource, &key, Some("device")),
        ),
        ("expired", expired),
        ("not a token", "SharedAccessSignature nonsense".to_string()),
    ];
    for (label, bad) in &cases {
        let e = s.onboarding.register("b-1", bad).await.expect_err(label);
        assert!(
            matches!(e, OnboardingError::Unauthorized { .. }),
            "{label}: {e}"
        );
        let text = format!("{e} {e:?}");
        for secret in [&key, &group_key] {
            assert!(
                !text.contains(secret.expose_base64().as_str()),
                "{label}: {text}"
            );
        }
        if let Some(sig) = bad.split("sig=").nth(1) {
            let sig = sig.split('&').next().unwrap_or_default();
            assert!(!text.contains(sig), "{label}: the signature is in {text}");
        }
    }
    // The key name DPS documents is accepted, as is none (the Azure SDKs send none).
    s.onboarding
        .register("b-1", &token_for(&resource, &key, Some("registration")))
        .await
        .expect("skn=registration");
    let e = s
        .onboarding
        .register("not valid!", &token("x", &key))
        .await
        .expect_err("bad id");
    assert_eq!(e.kind(), "invalid_registration_id");
    assert!(registers_of(&audit(&s.audit).await).len() == 1);
}

#[tokio::test]
async fn an_individual_enrollment_takes_precedence_over_groups() {
    let s = setup().await;
    let group_key = SymmetricKey::generate();
    add_group(&s, "g", &group_key, |g| {
        g.settings.tags = json!({"via": "group"})
    })
    .await;
    let own = SymmetricKey::generate();
    let mut individual = IndividualEnrollment::new(
        "p-1".parse().expect("id"),
        Attestation::SymmetricKey {
            primary: own.clone(),
            secondary: SymmetricKey::generate(),
        },
    );
    individual.device_id = Some("p-1-device".parse().expect("id"));
    individual.settings.tags = json!({"via": "individual"});
    s.enrollments
        .put_individual(individual, Precondition::Absent)
        .await
        .expect("put");

    // The group's derived key would verify, but the individual enrollment decides.
    let e = s
        .onboarding
        .register("p-1", &token("p-1", &group_key.derive_for_device("p-1")))
        .await
        .expect_err("group key for an individually enrolled id");
    assert!(matches!(e, OnboardingError::Unauthorized { .. }), "{e}");

    let assignment = s
        .onboarding
        .register("p-1", &token("p-1", &own))
        .await
        .expect("individual key");
    assert_eq!(
        assignment.enrollment,
        EnrollmentRef::Individual("p-1".parse().expect("id"))
    );
    assert_eq!(assignment.device_id.as_str(), "p-1-device");
    let device = s
        .provisioner
        .get(&assignment.device_id)
        .await
        .expect("get")
        .expect("device");
    assert_eq!(
        device.record.metadata.get("via"),
        Some(&json!("individual"))
    );

    // Another id of the group still registers through the group, among several groups (a
    // disabled one and an X.509 one first in id order).
    add_group(&s, "a-off", &SymmetricKey::generate(), |g| {
        g.settings.status = EnrollmentStatus::Disabled;
    })
    .await;
    let assignment = s
        .onboarding
        .register("p-2", &token("p-2", &group_key.derive_for_device("p-2")))
        .await
        .expect("group");
    assert_eq!(
        assignment.enrollment,
        EnrollmentRef::Group("g".parse().expect("id"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_devices_of_one_group_register_at_once() {
    let s = setup().await;
    let group_key = SymmetricKey::generate();
    add_group(&s, "fleet", &group_key, |g| {
        g.settings.tags = json!({"fleet": 1})
    })
    .await;
    let onboarding = Arc::new(s.onboarding.clone());
    let mut tasks = Vec::new();
    // Each device twice at once, as a device retrying while its first attempt runs would.
    for round in 0..2 {
        for i in 0..100 {
            let onboarding = onboarding.clone();
            let id = format!("fleet-{i:03}");
            let key = group_key.derive_for_device(&id);
            tasks.push(tokio::spawn(async move {
                let t = token(&id, &key);
                (round, onboarding.register(&id, &t).await)
            }));
        }
    }
    let mut assigned = 0;
    for task in tasks {
        let (_, result) = task.await.expect("task");
        let assignment = result.expect("every registration succeeds");
        assert_eq!(assignment.assigned_hub, HUB);
        assigned += 1;
    }
    assert_eq!(assigned, 200);
    let counts = registers_of(&audit(&s.audit).await);
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    for i in 0..100 {
        let id: DeviceId = format!("fleet-{i:03}").parse().expect("id");
        assert!(s.provisioner.get(&id).await.expect("get").is_some(), "{id}");
    }
}
