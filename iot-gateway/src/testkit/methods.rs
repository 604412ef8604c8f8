//! Gateway checks of direct methods.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::gateway::{Gateway, SessionEvent, Subscription};
use crate::method::{MethodCall, MethodResponse};

use super::helpers::{connect, next_method};
use super::{Fixture, within};

/// Methods: `DeviceOffline` for a device that is not connected (or not subscribed), `TimedOut`
/// when the device does not answer, and the device's answer otherwise.
pub async fn methods_offline_timeout_and_answer(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("methods").await;
    let call = |timeout_ms| {
        let mut c = MethodCall::new("reboot", r#"{"delay":1}"#);
        c.response_timeout = Duration::from_millis(timeout_ms);
        c
    };
    let offline = gw.invoke_method(&id, call(100)).await;
    assert!(
        matches!(offline, Err(Error::DeviceOffline { .. })),
        "{offline:?}"
    );
    let s = Arc::new(connect(gw, &id, &token).await);
    // Connected but not subscribed to methods: still offline for methods.
    let unsubscribed = gw.invoke_method(&id, call(100)).await;
    assert!(
        matches!(unsubscribed, Err(Error::DeviceOffline { .. })),
        "{unsubscribed:?}"
    );
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    // Nobody reads the session: the call times out.
    let timed_out = gw.invoke_method(&id, call(50)).await;
    assert!(
        matches!(timed_out, Err(Error::TimedOut { .. })),
        "{timed_out:?}"
    );
    // A device that answers. The timed-out request may still be handed out; it is skipped.
    let device = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                match s.next_event().await.expect("event") {
                    SessionEvent::Method(r) if r.name == "reboot" => {
                        let answer = MethodResponse {
                            request_id: r.request_id,
                            status: 200,
                            payload: Bytes::from(format!(
                                r#"{{"echo":{}}}"#,
                                String::from_utf8_lossy(&r.payload)
                            )),
                        };
                        match s.respond_method(answer).await {
                            Ok(()) => return,
                            Err(Error::UnknownMethodRequest { .. }) => continue,
                            Err(e) => panic!("respond: {e}"),
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
    };
    let answer = within(gw.invoke_method(&id, call(30_000)))
        .await
        .expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.payload, r#"{"echo":{"delay":1}}"#);
    within(device).await.expect("device task");
    s.close().await;
}

/// After `unsubscribe(Methods)` the session takes no method requests, as if it had never
/// subscribed: a request queued and not handed out fails with `DeviceOffline`, and so does a new
/// call without a connect timeout; a call with one waits for the next subscription. A request
/// handed out before the unsubscribe can still be answered.
pub async fn methods_unsubscribe(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("unsub-methods").await;
    let call = |name: &str, connect_timeout: Duration| {
        let mut c = MethodCall::new(name, "{}");
        c.connect_timeout = connect_timeout;
        c.response_timeout = Duration::from_secs(20);
        c
    };
    let answer = |request_id| MethodResponse {
        request_id,
        status: 200,
        payload: Bytes::from_static(b"{}"),
    };
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    let (handed_out, ()) = tokio::join!(
        within(gw.invoke_method(&id, call("a", Duration::ZERO))),
        async {
            let a = next_method(&*s).await;
            assert_eq!(a.name, "a");
            let (queued, ()) = tokio::join!(
                within(gw.invoke_method(&id, call("b", Duration::ZERO))),
                async {
                    // Usually lets "b" reach the session's queue first; in either order it must
                    // end in `DeviceOffline`, not wait for its response timeout.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.unsubscribe(Subscription::Methods)
                        .await
                        .expect("unsubscribe");
                }
            );
            assert!(
                matches!(queued, Err(Error::DeviceOffline { .. })),
                "{queued:?}"
            );
            let offline = within(gw.invoke_method(&id, call("c", Duration::ZERO))).await;
            assert!(
                matches!(offline, Err(Error::DeviceOffline { .. })),
                "{offline:?}"
            );
            s.respond_method(answer(a.request_id))
                .await
                .expect("a request handed out before unsubscribe can be answered");
        }
    );
    assert_eq!(handed_out.expect("answered").status, 200);
    let (waited, ()) = tokio::join!(
        within(gw.invoke_method(&id, call("d", Duration::from_secs(30)))),
        async {
            s.subscribe(Subscription::Methods)
                .await
                .expect("subscribe again");
            let d = next_method(&*s).await;
            assert_eq!(
                d.name, "d",
                "a request from before the unsubscribe came out"
            );
            s.respond_method(answer(d.request_id))
                .await
                .expect("respond");
        }
    );
    assert_eq!(waited.expect("answered").status, 200);
    s.close().await;
}
