//! Gateway checks of twins: versions and desired-property pushes.

use serde_json::json;

use crate::error::Error;
use crate::gateway::{Gateway, SessionEvent, Subscription};

use super::helpers::{assert_quiet, connect, next_desired};
use super::{Fixture, within};

/// Twin versions grow by one per patch, reported patches come back in `get_twin`, and desired
/// patches reach the connected device in order.
pub async fn twin_versions_and_desired_push(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("twin").await;
    let t = gw.get_twin(&id).await.expect("twin");
    assert_eq!((t.desired.version, t.reported.version), (0, 0));
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe");
    for i in 1..=3u64 {
        let t = gw
            .patch_desired(
                &id,
                json!({"setpoint": i, "mode": {"fan": "auto"}}),
                Some(i - 1),
            )
            .await
            .expect("patch desired");
        assert_eq!(t.desired.version, i);
    }
    let stale = gw.patch_desired(&id, json!({"x": 1}), Some(1)).await;
    assert!(
        matches!(stale, Err(Error::PreconditionFailed { .. })),
        "{stale:?}"
    );
    for i in 1..=3u64 {
        match within(s.next_event()).await.expect("event") {
            SessionEvent::DesiredPatch(p) => {
                assert_eq!(p.version, i);
                assert_eq!(p.patch["setpoint"], json!(i));
            }
            other => panic!("expected a desired patch, got {other:?}"),
        }
    }
    assert_eq!(
        s.patch_reported(json!({"temp": 20}))
            .await
            .expect("reported"),
        1
    );
    assert_eq!(
        s.patch_reported(json!({"temp": null, "fw": "1.2"}))
            .await
            .expect("reported"),
        2
    );
    let bad = s.patch_reported(json!([1, 2])).await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
    let t = s.get_twin().await.expect("twin");
    assert_eq!(t.reported.properties, json!({"fw": "1.2"}));
    assert_eq!(t.reported.version, 2);
    assert_eq!(t.desired.version, 3);
    assert_eq!(
        t.desired.properties,
        json!({"setpoint": 3, "mode": {"fan": "auto"}})
    );
    assert_eq!(gw.get_twin(&id).await.expect("twin"), t);
    s.close().await;
}

/// After `unsubscribe(DesiredPatches)` no patch is handed out; the patches made meanwhile reach
/// the session, in version order, once it subscribes again.
pub async fn desired_unsubscribe_and_resubscribe(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("unsub-desired").await;
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe");
    gw.patch_desired(&id, json!({"step": 1}), None)
        .await
        .expect("patch");
    assert_eq!(next_desired(&*s).await.version, 1);
    s.unsubscribe(Subscription::DesiredPatches)
        .await
        .expect("unsubscribe");
    for step in 2..=3 {
        gw.patch_desired(&id, json!({ "step": step }), None)
            .await
            .expect("patch");
    }
    assert_quiet(&*s, "handed out after unsubscribe(DesiredPatches)").await;
    s.subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe again");
    for step in 2..=3u64 {
        let p = next_desired(&*s).await;
        assert_eq!(p.version, step);
        assert!(!p.full_document);
        assert_eq!(p.patch, json!({ "step": step }));
    }
    s.close().await;
}
