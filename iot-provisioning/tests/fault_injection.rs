//! Fault injection: a scripted scenario of every operation runs over wrappers that fail the Nth
//! call (identity store, registry and journal counted together), for every N the scenario makes,
//! once with the failed call changing nothing and once with it taking effect before reporting the
//! failure. After each run, and again after a restart's recovery, the two stores must agree, and
//! every registration that was acknowledged (and not later undone by the scenario) must exist.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Stores, faulty};
use iot_core::DeviceId;
use iot_provisioning::testkit::{self, FaultMode, FaultPlan};
use iot_provisioning::{BulkMode, Provisioner, Provisioning, RegisterRequest};
use serde_json::json;

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("id")
}

fn req(s: &str) -> RegisterRequest {
    RegisterRequest::new(id(s), json!({"name": s}))
}

/// Runs the scenario, ignoring errors; returns the ids whose registration was acknowledged and
/// that the scenario does not remove later.
async fn scenario(p: &dyn Provisioning) -> BTreeSet<DeviceId> {
    let mut acked = BTreeSet::new();
    fn note(
        acked: &mut BTreeSet<DeviceId>,
    ) -> impl FnMut(&iot_provisioning::Result<iot_provisioning::Registered>) + '_ {
        |r| {
            if let Ok(r) = r {
                acked.insert(r.device.id.clone());
            }
        }
    }
    note(&mut acked)(&p.register(req("a")).await);
    note(&mut acked)(&p.register(req("b")).await);
    let bad = RegisterRequest::new(id("e"), json!([1]));
    if let Ok(results) = p
        .bulk(
            vec![req("c"), req("d"), req("a"), bad],
            BulkMode::BestEffort,
        )
        .await
    {
        results.iter().for_each(note(&mut acked));
    }
    if let Ok(results) = p
        .bulk(vec![req("f"), req("g")], BulkMode::AllOrNothing)
        .await
    {
        results.iter().for_each(note(&mut acked));
    }
    if let Ok(results) = p
        .bulk(vec![req("h"), req("a")], BulkMode::AllOrNothing)
        .await
    {
        results.iter().for_each(note(&mut acked));
    }
    let _ = p.deactivate(&id("a"), Some(json!({"why": "lost"}))).await;
    let _ = p
        .activate(&id("a"), Some(json!({"why": null, "found": true})))
        .await;
    let _ = p.update(&id("b"), json!({"floor": 2}), None).await;
    let _ = p.reset_credentials(&id("a"), None).await;
    let _ = p.deactivate(&id("b"), None).await;
    let _ = p.unregister(&id("c"), None).await;
    acked.remove(&id("c"));
    note(&mut acked)(&p.register(req("c")).await);
    let _ = p.unregister(&id("d"), None).await;
    acked.remove(&id("d"));
    let _ = p.issue_token(&id("a"), Duration::from_secs(60)).await;
    acked
}

async fn provisioner(run: &Stores) -> iot_provisioning::Result<Provisioner> {
    Provisioner::builder(run.identity.clone(), run.registry.clone())
        .journal(run.journal.clone())
        // Several batches per bulk request, so that faults also hit between batches.
        .bulk_batch(2)
        .open()
        .await
}

#[tokio::test]
async fn every_single_failure_leaves_the_stores_in_agreement() {
    // A clean run counts the calls (the scenario's size).
    let clean = faulty(FaultPlan::counting());
    let p = provisioner(&clean).await.expect("open");
    let before = clean.plan.calls();
    let acked = scenario(&p).await;
    let calls = clean.plan.calls() - before;
    assert_eq!(acked.len(), 5, "{acked:?}");
    testkit::assert_agreement(clean.identity.as_ref(), clean.registry.as_ref()).await;
    assert!(calls > 50, "the scenario makes {calls} calls");

    let mut failures_seen = 0;
    for mode in [FaultMode::Before, FaultMode::After] {
        // Open's own recovery makes calls first; count past them.
        for n in 1..=calls + before {
            let run = faulty(FaultPlan::fail_at(n, mode));
            let p = match provisioner(&run).await {
                Ok(p) => p,
                // The fault hit open's recovery: opening again (as a restart would) must work.
                Err(_) => provisioner(&run).await.expect("second open"),
            };
            let acked = scenario(&p).await;
            if run.plan.calls() >= n {
                failures_seen += 1;
            }
            testkit::assert_agreement(run.identity.as_ref(), run.registry.as_ref()).await;
            // A restart: a new provisioner over the same stores and journal recovers.
            run.plan.disarm();
            drop(p);
            let p = provisioner(&run).await.expect("recovery after restart");
            testkit::assert_agreement(run.identity.as_ref(), run.registry.as_ref()).await;
            for device in &acked {
                assert!(
                    p.get(device).await.expect("get").is_some(),
                    "N={n} {mode:?}: acknowledged {device} is gone"
                );
            }
        }
    }
    assert!(
        failures_seen as u64 >= 2 * calls,
        "{failures_seen} runs hit their fault"
    );
}

/// A call whose future is dropped mid-way (a caller's timeout, a disconnected client), at each
/// store or journal call a short scenario makes: its unfinished intent must be resolved by the
/// next write, not left for a restart's recovery to undo after later calls were told the device
/// exists (here: new keys handed out by `reset_credentials`).
#[tokio::test]
async fn a_cancelled_call_is_resolved_before_the_next_write() {
    // Every call runs under a timeout, as the hang may land in any of them.
    async fn cancellable<T>(call: impl Future<Output = iot_provisioning::Result<T>>) -> Option<T> {
        match tokio::time::timeout(Duration::from_millis(50), call).await {
            Ok(Ok(t)) => Some(t),
            _ => None,
        }
    }
    async fn scenario(p: &Provisioner) -> BTreeSet<DeviceId> {
        let mut acked = BTreeSet::new();
        for name in ["a", "b"] {
            if let Some(r) = cancellable(p.register(req(name))).await {
                acked.insert(r.device.id);
            }
        }
        // Whoever finds "a" in the stores hands it new keys: acknowledged from here on.
        if cancellable(p.reset_credentials(&id("a"), None))
            .await
            .is_some()
        {
            acked.insert(id("a"));
        }
        let bulk = p.bulk(vec![req("c"), req("d"), req("e")], BulkMode::BestEffort);
        if let Some(results) = cancellable(bulk).await {
            acked.extend(results.into_iter().flatten().map(|r| r.device.id));
        }
        for d in ["c", "d", "e"] {
            if cancellable(p.reset_credentials(&id(d), None))
                .await
                .is_some()
            {
                acked.insert(id(d));
            }
        }
        // A last write, so that whatever the hang left is resolved before the stores are read.
        let _ = cancellable(p.update(&id("b"), json!({"last": true}), None)).await;
        acked
    }

    let clean = faulty(FaultPlan::counting());
    let p = provisioner(&clean).await.expect("open");
    let before = clean.plan.calls();
    assert_eq!(scenario(&p).await.len(), 5);
    let calls = clean.plan.calls() - before;

    let mut hung = 0;
    for n in before + 1..=before + calls {
        let run = faulty(FaultPlan::fail_at(n, FaultMode::Hang));
        let p = provisioner(&run).await.expect("open");
        let acked = scenario(&p).await;
        hung += usize::from(run.plan.calls() >= n);
        run.plan.disarm();
        testkit::assert_agreement(run.identity.as_ref(), run.registry.as_ref()).await;
        drop(p);
        let p = provisioner(&run).await.expect("recovery after restart");
        testkit::assert_agreement(run.identity.as_ref(), run.registry.as_ref()).await;
        for device in &acked {
            assert!(
                p.get(device).await.expect("get").is_some(),
                "N={n}: {device} was acknowledged, then undone by the restart's recovery"
            );
        }
    }
    assert_eq!(hung as u64, calls, "every run reached its hanging call");
}
