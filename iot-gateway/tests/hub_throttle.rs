//! Hub budgets against strangers and chatty callers: failed authentications are charged to the
//! peer address and a hub-wide failed-attempt budget (never to the device named), and twin and
//! direct-method operations have per-device and hub-wide budgets.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_core::DeviceId;
use iot_gateway::testkit::{Fixture, StoreFixture, within};
use iot_gateway::{
    DeviceSession, Error, Gateway, Hub, HubConfig, MethodCall, MethodResponse, Rate, SessionEvent,
    SessionOptions, Subscription, ThrottleConfig, ThrottleScope, ThrottledOperation,
};
use iot_identity::{IdentityStore, MemoryIdentityStore, Presented};
use serde_json::json;

const HOST: &str = "hub.test.local";

async fn hub_with(throttle: ThrottleConfig) -> (Hub, StoreFixture) {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let mut config = HubConfig::default();
    config.throttle = throttle;
    let hub = Hub::builder(identity.clone(), HOST)
        .config(config)
        .build()
        .await
        .expect("hub");
    let fx = StoreFixture {
        identity,
        telemetry: hub.telemetry_log().clone(),
        host: HOST.into(),
    };
    (hub, fx)
}

fn from(peer: &str) -> SessionOptions {
    let mut options = SessionOptions::default();
    options.peer = Some(peer.parse::<IpAddr>().expect("address"));
    options
}

async fn attempt(
    hub: &Hub,
    device: &DeviceId,
    token: &str,
    options: SessionOptions,
) -> Result<Box<dyn DeviceSession>, Error> {
    hub.connect(device, Presented::SasToken(token), options)
        .await
}

fn is_throttled(
    result: &Result<impl std::fmt::Debug, Error>,
    op: ThrottledOperation,
    want: ThrottleScope,
) -> bool {
    matches!(result, Err(Error::Throttled { operation, scope, .. }) if *operation == op && *scope == want)
}

/// The repro at the hub: bad credentials naming a device, from one address and from
/// none, leave the device's own connect budget (burst 2, never refilled) untouched.
#[tokio::test]
async fn failed_connects_spend_nothing_of_the_named_device() {
    let (hub, fx) = hub_with(
        ThrottleConfig::unlimited()
            .device_connects(Some(Rate::new(0.0, 2.0)))
            .hub_connects(Some(Rate::new(0.0, 10.0))),
    )
    .await;
    let (d1, token) = fx.provision("d1").await;
    let (_, stranger) = fx.provision("stranger").await;
    for i in 0..12 {
        let options = if i % 2 == 0 {
            from("192.0.2.10")
        } else {
            SessionOptions::default()
        };
        let refused = attempt(&hub, &d1, &stranger, options).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    // Both of the device's own tokens are still there.
    for _ in 0..2 {
        attempt(&hub, &d1, &token, from("192.0.2.20"))
            .await
            .expect("the real device connects");
    }
    let third = attempt(&hub, &d1, &token, from("192.0.2.20")).await;
    assert!(
        is_throttled(&third, ThrottledOperation::Connect, ThrottleScope::Device),
        "{third:?}"
    );
}

/// An address that spent its failure budget is refused before authentication, whichever device
/// it names (existing or not, good credential or bad), so the refusal tells nothing about the
/// device. Other addresses are unaffected; IPv6 addresses count per /64.
#[tokio::test]
async fn failed_connects_are_charged_to_the_peer_address() {
    let (hub, fx) =
        hub_with(ThrottleConfig::unlimited().peer_failed_connects(Some(Rate::new(0.0, 3.0)))).await;
    let (d1, token) = fx.provision("d1").await;
    let (_, stranger) = fx.provision("stranger").await;
    let nobody: DeviceId = "no-such-device".parse().expect("id");
    for _ in 0..3 {
        let refused = attempt(&hub, &d1, &stranger, from("198.51.100.7")).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    for (device, credential) in [(&d1, &stranger), (&nobody, &stranger), (&d1, &token)] {
        let refused = attempt(&hub, device, credential, from("198.51.100.7")).await;
        assert!(
            is_throttled(&refused, ThrottledOperation::Connect, ThrottleScope::Peer),
            "{device}: {refused:?}"
        );
    }
    attempt(&hub, &d1, &token, from("198.51.100.8"))
        .await
        .expect("another address connects");

    // One /64 is one budget; the next /64 has its own.
    for _ in 0..3 {
        let refused = attempt(&hub, &d1, &stranger, from("2001:db8:0:1::1")).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    let same_prefix = attempt(&hub, &d1, &token, from("2001:db8:0:1:ffff::2")).await;
    assert!(
        is_throttled(
            &same_prefix,
            ThrottledOperation::Connect,
            ThrottleScope::Peer
        ),
        "{same_prefix:?}"
    );
    attempt(&hub, &d1, &token, from("2001:db8:0:2::1"))
        .await
        .expect("another /64 connects");
}

/// A flood of failures from many addresses spends the hub-wide failed-attempt budget, not the
/// hub-wide connect budget: good devices keep connecting, and once the failure budget is spent
/// only addresses that failed recently are turned away before authentication.
#[tokio::test]
async fn hub_wide_failures_turn_away_repeat_offenders_only() {
    let (hub, fx) = hub_with(
        ThrottleConfig::unlimited()
            .hub_connects(Some(Rate::new(0.0, 3.0)))
            .peer_failed_connects(Some(Rate::new(0.0, 100.0)))
            .hub_failed_connects(Some(Rate::new(0.0, 5.0))),
    )
    .await;
    let (_, stranger) = fx.provision("stranger").await;
    let nobody: DeviceId = "no-such-device".parse().expect("id");
    for i in 0..20 {
        let refused = attempt(&hub, &nobody, &stranger, from(&format!("203.0.113.{i}"))).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    // A repeat offender is refused before authentication once the hub's budget is spent.
    let again = attempt(&hub, &nobody, &stranger, from("203.0.113.1")).await;
    assert!(
        is_throttled(&again, ThrottledOperation::Connect, ThrottleScope::Hub),
        "{again:?}"
    );
    // Addresses without failures are still authenticated, and the connect budget is intact.
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let (id, token) = fx.provision(name).await;
        attempt(&hub, &id, &token, from(&format!("192.0.2.{i}")))
            .await
            .expect("a good device connects during the flood");
    }
    let fresh_but_wrong = attempt(&hub, &nobody, &stranger, from("192.0.2.99")).await;
    assert!(
        matches!(fresh_but_wrong, Err(Error::Unauthorized { .. })),
        "{fresh_but_wrong:?}"
    );
}

/// A device's twin reads and reported patches share its twin budget, which survives a
/// reconnect; other devices have their own; the back end spends only the hub's.
#[tokio::test]
async fn twin_operations_are_throttled_per_device_and_hub_wide() {
    let (hub, fx) = hub_with(
        ThrottleConfig::unlimited()
            .device_twin(Some(Rate::new(0.0, 3.0)))
            .hub_twin(Some(Rate::new(0.0, 6.0))),
    )
    .await;
    let (a, ta) = fx.provision("a").await;
    let (b, tb) = fx.provision("b").await;
    let sa = attempt(&hub, &a, &ta, SessionOptions::default())
        .await
        .expect("a");
    sa.get_twin().await.expect("read 1");
    sa.patch_reported(json!({"x": 1})).await.expect("update 2");
    let sa = attempt(&hub, &a, &ta, SessionOptions::default())
        .await
        .expect("a again");
    sa.get_twin().await.expect("read 3");
    let fourth = sa.patch_reported(json!({"x": 2})).await;
    assert!(
        is_throttled(&fourth, ThrottledOperation::Twin, ThrottleScope::Device),
        "{fourth:?}"
    );
    let sb = attempt(&hub, &b, &tb, SessionOptions::default())
        .await
        .expect("b");
    sb.get_twin().await.expect("b's own budget");
    // The back end spends the hub's budget only: a's spent device budget does not stop it.
    hub.get_twin(&a).await.expect("back-end read");
    hub.patch_desired(&a, json!({"y": 1}), None)
        .await
        .expect("back-end update");
    let hub_wide = hub.get_twin(&b).await;
    assert!(
        is_throttled(&hub_wide, ThrottledOperation::Twin, ThrottleScope::Hub),
        "{hub_wide:?}"
    );
}

async fn answer_one(session: &dyn DeviceSession) {
    let event = within(session.next_event()).await.expect("event");
    let SessionEvent::Method(request) = event else {
        panic!("expected a method request, got {event:?}");
    };
    session
        .respond_method(MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: "{}".into(),
        })
        .await
        .expect("answer");
}

/// Direct-method invocations of a device are throttled before anything is queued for it.
#[tokio::test]
async fn method_invocations_are_throttled_per_device() {
    let (hub, fx) =
        hub_with(ThrottleConfig::unlimited().device_methods(Some(Rate::new(0.0, 2.0)))).await;
    let (a, ta) = fx.provision("a").await;
    let (b, tb) = fx.provision("b").await;
    let sa: Arc<dyn DeviceSession> = attempt(&hub, &a, &ta, SessionOptions::default())
        .await
        .expect("a")
        .into();
    sa.subscribe(Subscription::Methods)
        .await
        .expect("subscribe");
    for _ in 0..2 {
        let device = sa.clone();
        let answering = tokio::spawn(async move { answer_one(&*device).await });
        let answer = within(hub.invoke_method(&a, MethodCall::new("ping", "{}")))
            .await
            .expect("within budget");
        assert_eq!(answer.status, 200);
        answering.await.expect("answering task");
    }
    let third = within(hub.invoke_method(&a, MethodCall::new("ping", "{}"))).await;
    assert!(
        is_throttled(&third, ThrottledOperation::Method, ThrottleScope::Device),
        "{third:?}"
    );
    // Nothing reached the device for the refused call.
    let nothing = tokio::time::timeout(Duration::from_millis(200), sa.next_event()).await;
    assert!(nothing.is_err(), "{nothing:?}");

    let sb: Arc<dyn DeviceSession> = attempt(&hub, &b, &tb, SessionOptions::default())
        .await
        .expect("b")
        .into();
    sb.subscribe(Subscription::Methods)
        .await
        .expect("subscribe");
    let device = sb.clone();
    let answering = tokio::spawn(async move { answer_one(&*device).await });
    within(hub.invoke_method(&b, MethodCall::new("ping", "{}")))
        .await
        .expect("b's own budget");
    answering.await.expect("answering task");
}
