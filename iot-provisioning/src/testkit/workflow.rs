//! The workflow suite: every [`Provisioning`] runs the solution's hooks and writes the audit
//! trail as [`Workflow`] defines them — a refusing hook leaves nothing written, the hooks that
//! agreed hear `aborted` or `after`, bulk items are hooked one by one, and every operation leaves
//! one audit record without a secret.
//!
//! An implementation takes the hooks, audit log and actor as a [`Workflow`]; its
//! [`WorkflowFactory`] builds one around the workflow the suite hands it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, GroupConsumer, GroupName, Log, StartFrom, TopicName, Topics};
use iot_identity::Credentials;
use iot_identity::testkit::fresh_id;
use serde_json::json;

use crate::audit::AuditRecord;
use crate::error::{Error, Result};
use crate::hooks::{Hook, HookContext, HookError};
use crate::provisioning::Provisioning;
use crate::types::{BulkMode, RegisterRequest};
use crate::workflow::Workflow;

/// Opens the [`Provisioning`] under test around a given [`Workflow`].
#[async_trait]
pub trait WorkflowFactory: Send + Sync {
    /// An implementation whose operations run in `workflow` (its hooks, audit log and actor).
    /// Its stores need not be empty.
    async fn open(&self, workflow: Workflow) -> Result<Arc<dyn Provisioning>>;
}

/// The actor the suite's workflow names.
const ACTOR: &str = "ops-console";
/// Devices whose id starts with this are vetoed by the second hook.
const VETO: &str = "veto";
/// Devices whose id starts with this make the second hook fail.
const FAIL: &str = "hookfail";

/// Runs every workflow check against implementations from `factory` (a fresh workflow, hooks
/// and audit log per check, and fresh device ids).
pub async fn run_workflow(factory: &dyn WorkflowFactory) {
    a_refusing_hook_leaves_nothing_written(factory).await;
    hooks_hear_after_or_aborted(factory).await;
    every_operation_is_audited_without_secrets(factory).await;
}

/// Records every call; vetoes or fails devices by id prefix.
#[derive(Debug, Default)]
struct Recorder {
    name: &'static str,
    refuses: bool,
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Hook for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    async fn before(&self, ctx: &HookContext) -> std::result::Result<(), HookError> {
        self.push("before", ctx);
        if self.refuses && ctx.id.as_str().starts_with(VETO) {
            return Err(HookError::Veto("no SIM for this device".into()));
        }
        if self.refuses && ctx.id.as_str().starts_with(FAIL) {
            return Err(HookError::Failed("operator API down".into()));
        }
        Ok(())
    }

    async fn after(&self, ctx: &HookContext) {
        self.push("after", ctx);
    }

    async fn aborted(&self, ctx: &HookContext, _reason: &str) {
        self.push("aborted", ctx);
    }
}

impl Recorder {
    fn push(&self, event: &str, ctx: &HookContext) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{event} {} {}", ctx.operation.name(), ctx.id));
        }
    }

    fn take(&self) -> Vec<String> {
        self.calls
            .lock()
            .map(|mut calls| std::mem::take(&mut *calls))
            .unwrap_or_default()
    }
}

/// One check's implementation, hooks and audit log.
struct Setup {
    p: Arc<dyn Provisioning>,
    audit: Arc<dyn Log>,
    /// Agrees to everything.
    first: Arc<Recorder>,
    /// Refuses the `veto` and `hookfail` devices.
    second: Arc<Recorder>,
}

async fn setup(factory: &dyn WorkflowFactory) -> Setup {
    // One partition: the audit records come back in the order they were written.
    let topics = Topics::memory(1);
    let audit = topics
        .topic(TopicName::AUDIT)
        .await
        .unwrap_or_else(|e| panic!("the suite's audit topic: {e}"));
    let first = Arc::new(Recorder {
        name: "sim",
        ..Recorder::default()
    });
    let second = Arc::new(Recorder {
        name: "billing",
        refuses: true,
        ..Recorder::default()
    });
    let workflow = Workflow::new()
        .audit_log(audit.clone())
        .hook(first.clone())
        .hook(second.clone())
        .actor(ACTOR);
    let p = factory
        .open(workflow)
        .await
        .unwrap_or_else(|e| panic!("the factory could not open the implementation: {e}"));
    Setup {
        p,
        audit,
        first,
        second,
    }
}

/// Every audit record on `log`, oldest first.
async fn audit_records(log: Arc<dyn Log>) -> Vec<AuditRecord> {
    let group = GroupName::new("workflow-suite").unwrap_or_else(|e| panic!("group name: {e}"));
    let mut consumer = GroupConsumer::new(log, group, StartFrom::Earliest)
        .await
        .unwrap_or_else(|e| panic!("reading the audit topic: {e}"));
    let mut out = Vec::new();
    loop {
        let batch = consumer
            .try_next_batch()
            .await
            .unwrap_or_else(|e| panic!("reading the audit topic: {e}"));
        if batch.is_empty() {
            break;
        }
        for r in batch {
            out.push(
                AuditRecord::from_payload(&r.record.payload)
                    .unwrap_or_else(|| panic!("not an audit record: {:?}", r.record.payload)),
            );
        }
    }
    out
}

async fn a_refusing_hook_leaves_nothing_written(factory: &dyn WorkflowFactory) {
    let s = setup(factory).await;
    for (label, kind) in [(VETO, "vetoed"), (FAIL, "hook_failed")] {
        let id = fresh_id(label);
        let e =
            s.p.register(RegisterRequest::new(id.clone(), json!({})))
                .await
                .expect_err("a refusing hook refuses the registration");
        assert_eq!(e.kind(), kind, "{e}");
        let found = s.p.get(&id).await.unwrap_or_else(|e| panic!("get: {e}"));
        assert!(found.is_none(), "nothing written for {id}: {found:?}");
        // The first hook agreed, so it hears that the operation did not happen.
        assert_eq!(
            s.first.take(),
            [
                format!("before register {id}"),
                format!("aborted register {id}")
            ]
        );
        assert_eq!(s.second.take(), [format!("before register {id}")]);
    }
}

async fn hooks_hear_after_or_aborted(factory: &dyn WorkflowFactory) {
    let s = setup(factory).await;
    let ok = fresh_id("ok");
    s.p.register(RegisterRequest::new(ok.clone(), json!({"site": "north"})))
        .await
        .unwrap_or_else(|e| panic!("register: {e}"));
    assert_eq!(
        s.first.take(),
        [
            format!("before register {ok}"),
            format!("after register {ok}")
        ]
    );
    // An operation that fails after the hooks agreed: they hear it was aborted.
    let ghost = fresh_id("ghost");
    let r = s.p.update(&ghost, json!({}), None).await;
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    assert_eq!(
        s.first.take(),
        [
            format!("before update {ghost}"),
            format!("aborted update {ghost}")
        ]
    );
    // Removal is hooked too.
    s.p.unregister(&ok, None)
        .await
        .unwrap_or_else(|e| panic!("unregister: {e}"));
    assert_eq!(
        s.first.take(),
        [
            format!("before unregister {ok}"),
            format!("after unregister {ok}")
        ]
    );
    // Bulk: hooks per item; a vetoed item fails on its own in best-effort mode.
    let (good, vetoed) = (fresh_id("ok"), fresh_id(VETO));
    let results =
        s.p.bulk(
            vec![
                RegisterRequest::new(good.clone(), json!({})),
                RegisterRequest::new(vetoed.clone(), json!({})),
            ],
            BulkMode::BestEffort,
        )
        .await
        .unwrap_or_else(|e| panic!("bulk: {e}"));
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(Error::Vetoed { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(
        s.first.take(),
        [
            format!("before register {good}"),
            format!("before register {vetoed}"),
            format!("aborted register {vetoed}"),
            format!("after register {good}"),
        ]
    );
    // All or nothing: a vetoed item aborts the valid one, whose hooks hear it.
    let (valid, vetoed) = (fresh_id("ok"), fresh_id(VETO));
    let results =
        s.p.bulk(
            vec![
                RegisterRequest::new(valid.clone(), json!({})),
                RegisterRequest::new(vetoed.clone(), json!({})),
            ],
            BulkMode::AllOrNothing,
        )
        .await
        .unwrap_or_else(|e| panic!("bulk: {e}"));
    assert!(
        matches!(results[0], Err(Error::Aborted { .. })),
        "{:?}",
        results[0]
    );
    assert!(s.p.get(&valid).await.is_ok_and(|d| d.is_none()));
    assert_eq!(
        s.first.take(),
        [
            format!("before register {valid}"),
            format!("before register {vetoed}"),
            format!("aborted register {vetoed}"),
            format!("aborted register {valid}"),
        ]
    );
    for id in [&good] {
        s.p.unregister(id, None)
            .await
            .unwrap_or_else(|e| panic!("cleanup: {e}"));
    }
}

async fn every_operation_is_audited_without_secrets(factory: &dyn WorkflowFactory) {
    let s = setup(factory).await;
    let id: DeviceId = fresh_id("audited");
    let reg =
        s.p.register(RegisterRequest::new(id.clone(), json!({"site": "north"})))
            .await
            .unwrap_or_else(|e| panic!("register: {e}"));
    let reset =
        s.p.reset_credentials(&id, None)
            .await
            .unwrap_or_else(|e| panic!("reset: {e}"));
    let token =
        s.p.issue_token(&id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("token: {e}"));
    s.p.update(&id, json!({"site": "south"}), None)
        .await
        .unwrap_or_else(|e| panic!("update: {e}"));
    s.p.deactivate(&id, Some(json!({"state": "off"})))
        .await
        .unwrap_or_else(|e| panic!("deactivate: {e}"));
    let refused = s.p.reset_credentials(&id, None).await;
    assert!(refused.is_err(), "a disabled device's keys are not reset");
    s.p.activate(&id, None)
        .await
        .unwrap_or_else(|e| panic!("activate: {e}"));
    let not_an_object =
        s.p.register(RegisterRequest::new(id.clone(), json!([])))
            .await;
    assert!(not_an_object.is_err());
    s.p.unregister(&id, None)
        .await
        .unwrap_or_else(|e| panic!("unregister: {e}"));
    let second = fresh_id("audited");
    let bulk =
        s.p.bulk(
            vec![RegisterRequest::new(second.clone(), json!({}))],
            BulkMode::AllOrNothing,
        )
        .await
        .unwrap_or_else(|e| panic!("bulk: {e}"));
    assert!(bulk.iter().all(|r| r.is_ok()), "{bulk:?}");

    let records = audit_records(s.audit.clone()).await;
    let ops: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.operation.as_str(),
                r.outcome.as_str(),
                r.device_id.as_str(),
            )
        })
        .collect();
    let (a, b) = (id.as_str(), second.as_str());
    assert_eq!(
        ops,
        [
            ("register", "ok", a),
            ("reset_credentials", "ok", a),
            ("issue_token", "ok", a),
            ("update", "ok", a),
            ("deactivate", "ok", a),
            ("reset_credentials", "error", a),
            ("activate", "ok", a),
            ("register", "error", a),
            ("unregister", "ok", a),
            ("register", "ok", b),
        ]
    );
    assert!(records.iter().all(|r| r.actor == ACTOR), "{records:?}");
    assert_eq!(records[5].error.as_deref(), Some("device_disabled"));
    assert_eq!(records[7].error.as_deref(), Some("metadata_not_an_object"));
    // No secret in any record, in any encoding handed out.
    let mut secrets = vec![token.as_str().to_owned()];
    for credentials in [&reg.credentials, &reset] {
        if let Credentials::SymmetricKeys { primary, secondary } = credentials {
            secrets.push(primary.expose_base64().to_string());
            secrets.push(secondary.expose_base64().to_string());
        }
    }
    assert!(secrets.len() > 1, "the suite registers with generated keys");
    let all = serde_json::to_string(&records).unwrap_or_default();
    for secret in &secrets {
        assert!(
            !all.contains(secret.as_str()),
            "a secret in the audit trail"
        );
    }
    s.p.unregister(&second, None)
        .await
        .unwrap_or_else(|e| panic!("cleanup: {e}"));
}
