//! Workflow hooks (veto, failure, after, aborted) and the audit trail on the `audit` topic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{GroupConsumer, GroupName, Log, StartFrom, TopicName, Topics};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore};
use iot_provisioning::testkit;
use iot_provisioning::{
    AuditRecord, BulkMode, Error, Hook, HookContext, HookError, Provisioner, Provisioning,
    RegisterRequest,
};
use iot_registry::{MemoryRegistry, Registry};
use serde_json::json;

/// Records every call; vetoes or fails devices whose id starts with a given prefix.
#[derive(Debug, Default)]
struct Recorder {
    name: &'static str,
    veto_prefix: Option<&'static str>,
    fail_prefix: Option<&'static str>,
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Hook for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    async fn before(&self, ctx: &HookContext) -> Result<(), HookError> {
        self.calls.lock().expect("lock").push(format!(
            "before {} {}",
            ctx.operation.name(),
            ctx.id
        ));
        if self
            .veto_prefix
            .is_some_and(|p| ctx.id.as_str().starts_with(p))
        {
            return Err(HookError::Veto("no SIM for this device".into()));
        }
        if self
            .fail_prefix
            .is_some_and(|p| ctx.id.as_str().starts_with(p))
        {
            return Err(HookError::Failed("operator API down".into()));
        }
        Ok(())
    }
    async fn after(&self, ctx: &HookContext) {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("after {} {}", ctx.operation.name(), ctx.id));
    }
    async fn aborted(&self, ctx: &HookContext, _reason: &str) {
        self.calls.lock().expect("lock").push(format!(
            "aborted {} {}",
            ctx.operation.name(),
            ctx.id
        ));
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }
}

struct Setup {
    identity: Arc<dyn IdentityStore>,
    registry: Arc<dyn Registry>,
    audit: Arc<dyn Log>,
    first: Arc<Recorder>,
    second: Arc<Recorder>,
    p: Provisioner,
}

async fn setup() -> Setup {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let topics = Topics::memory(2);
    let audit = topics.topic(TopicName::AUDIT).await.expect("audit topic");
    let first = Arc::new(Recorder {
        name: "sim",
        ..Recorder::default()
    });
    let second = Arc::new(Recorder {
        name: "billing",
        veto_prefix: Some("veto"),
        fail_prefix: Some("fail"),
        ..Recorder::default()
    });
    let p = Provisioner::builder(identity.clone(), registry.clone())
        .audit_log(audit.clone())
        .hook(first.clone())
        .hook(second.clone())
        .actor("ops-console")
        .open()
        .await
        .expect("open");
    Setup {
        identity,
        registry,
        audit,
        first,
        second,
        p,
    }
}

async fn audit_records(log: Arc<dyn Log>) -> Vec<AuditRecord> {
    let mut c = GroupConsumer::new(
        log,
        GroupName::new("test").expect("group"),
        StartFrom::Earliest,
    )
    .await
    .expect("consumer");
    let mut out = Vec::new();
    loop {
        let batch = c.try_next_batch().await.expect("read");
        if batch.is_empty() {
            break;
        }
        for r in batch {
            let payload = String::from_utf8(r.record.payload.to_vec()).expect("utf-8");
            out.push(AuditRecord::from_payload(payload.as_bytes()).expect("an audit record"));
        }
    }
    out.sort_by_key(|r| r.time);
    out
}

#[tokio::test]
async fn a_veto_or_a_failing_hook_leaves_nothing_written() {
    let s = setup().await;
    for (name, kind) in [("veto-1", "vetoed"), ("fail-1", "hook_failed")] {
        let id = name.parse().expect("id");
        let r = s.p.register(RegisterRequest::new(id, json!({}))).await;
        let e = r.expect_err("refused");
        assert_eq!(e.kind(), kind, "{e}");
        assert!(
            s.p.get(&name.parse().expect("id"))
                .await
                .expect("get")
                .is_none()
        );
        // The first hook agreed, so it hears that the operation did not happen.
        assert_eq!(
            s.first.take(),
            vec![
                format!("before register {name}"),
                format!("aborted register {name}")
            ]
        );
        assert_eq!(s.second.take(), vec![format!("before register {name}")]);
    }
    testkit::assert_agreement(s.identity.as_ref(), s.registry.as_ref()).await;
    assert_eq!(
        testkit::assert_agreement(s.identity.as_ref(), s.registry.as_ref()).await,
        0
    );
}

#[tokio::test]
async fn hooks_hear_after_or_aborted() {
    let s = setup().await;
    let id = "ok-1".parse().expect("id");
    s.p.register(RegisterRequest::new(id, json!({})))
        .await
        .expect("register");
    assert_eq!(
        s.first.take(),
        vec!["before register ok-1", "after register ok-1"]
    );
    // An operation that fails after the hooks agreed: they hear it was aborted.
    let ghost = "ok-ghost".parse().expect("id");
    assert!(matches!(
        s.p.update(&ghost, json!({}), None).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        s.first.take(),
        vec!["before update ok-ghost", "aborted update ok-ghost"]
    );
    // Bulk: per item, vetoed items fail on their own in best-effort mode.
    let results =
        s.p.bulk(
            vec![
                RegisterRequest::new("ok-2".parse().expect("id"), json!({})),
                RegisterRequest::new("veto-2".parse().expect("id"), json!({})),
            ],
            BulkMode::BestEffort,
        )
        .await
        .expect("bulk");
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(Error::Vetoed { .. })));
    assert_eq!(
        s.first.take(),
        vec![
            "before register ok-2",
            "before register veto-2",
            "aborted register veto-2",
            "after register ok-2"
        ]
    );
    testkit::assert_agreement(s.identity.as_ref(), s.registry.as_ref()).await;
}

#[tokio::test]
async fn every_operation_is_audited_without_secrets() {
    let s = setup().await;
    let id: iot_core::DeviceId = "audited-1".parse().expect("id");
    let reg =
        s.p.register(RegisterRequest::new(id.clone(), json!({"site": "north"})))
            .await
            .expect("register");
    let Credentials::SymmetricKeys { primary, secondary } = &reg.credentials else {
        panic!("keys")
    };
    let reset = s.p.reset_credentials(&id, None).await.expect("reset");
    let token =
        s.p.issue_token(&id, Duration::from_secs(60))
            .await
            .expect("token");
    s.p.update(&id, json!({"site": "south"}), None)
        .await
        .expect("update");
    s.p.deactivate(&id, Some(json!({"state": "off"})))
        .await
        .expect("deactivate");
    let _ =
        s.p.reset_credentials(&id, None)
            .await
            .expect_err("disabled");
    s.p.activate(&id, None).await.expect("activate");
    let _ =
        s.p.register(RegisterRequest::new(id.clone(), json!([])))
            .await;
    s.p.unregister(&id, None).await.expect("unregister");
    let _ =
        s.p.bulk(
            vec![RegisterRequest::new(
                "audited-2".parse().expect("id"),
                json!({}),
            )],
            BulkMode::AllOrNothing,
        )
        .await;

    let records = audit_records(s.audit.clone()).await;
    let ops: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.operation.clone(), r.outcome.clone()))
        .collect();
    let expect = [
        ("register", "ok"),
        ("reset_credentials", "ok"),
        ("issue_token", "ok"),
        ("update", "ok"),
        ("deactivate", "ok"),
        ("reset_credentials", "error"),
        ("activate", "ok"),
        ("register", "error"),
        ("unregister", "ok"),
        ("register", "ok"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(ops, expect);
    assert!(records.iter().all(|r| r.actor == "ops-console"));
    assert_eq!(records[5].error.as_deref(), Some("device_disabled"));
    assert_eq!(records[7].error.as_deref(), Some("metadata_not_an_object"));
    // No secret in any record, in any encoding we hand out.
    let Credentials::SymmetricKeys {
        primary: new_primary,
        ..
    } = &reset
    else {
        panic!("keys")
    };
    let secrets = [
        primary.expose_base64().to_string(),
        secondary.expose_base64().to_string(),
        new_primary.expose_base64().to_string(),
        token.as_str().to_owned(),
    ];
    let all = serde_json::to_string(&records).expect("json");
    for secret in &secrets {
        assert!(!all.contains(secret.as_str()));
    }
    assert!(!format!("{reg:?}{reset:?}{token:?}").contains(&secrets[0]));
}
