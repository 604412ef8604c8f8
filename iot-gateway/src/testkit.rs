//! Conformance suite for [`Gateway`] implementations (feature `testkit`).
//!
//! Each check is a public async function taking the gateway under test and a [`Fixture`] that
//! provisions devices and reads back what reached the log. The hub's own tests run every check
//! against a [`Hub`](crate::Hub) with memory stores and with file stores; a protocol endpoint can
//! be driven through the same checks by wrapping a client of that protocol in a `Gateway`.
//!
//! Checks never assert on timing. They wait for events (with a generous guard against hangs) and
//! prove that something did *not* happen by ordering: an expired message is followed by a live one,
//! and the live one must be the first delivered. Where nothing can follow (a session that
//! unsubscribed must hand out nothing at all), a check gives the session a short while to hand
//! something out: a correct gateway passes however slow it is, only a broken one can fail.
//!
//! [`run_all`] runs every check; [`Limits`] passes the limits the gateway was configured with.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use iot_core::{DeviceId, Log, ReadLimits, Record, partition_for_key};
use iot_identity::{
    Credentials, DeviceStatus, IdentityStore, NewIdentity, Presented, SymmetricKey, sas,
};
use serde_json::json;

use crate::error::{CloseReason, Error};
use crate::gateway::{DeviceSession, Gateway, SessionEvent, SessionOptions, Subscription};
use crate::message::{AckRequest, C2dDelivery, C2dMessage, FeedbackStatus, Telemetry, header};
use crate::method::{MethodCall, MethodRequest, MethodResponse};
use crate::twins::DesiredPatch;

/// Provisions devices for the checks and reads back what reached the log.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// Creates a new enabled device (the name is a hint; make it unique) and returns its id and
    /// a SAS token valid for an hour.
    async fn provision(&self, name: &str) -> (DeviceId, String);
    /// Disables the device in the identity store.
    async fn disable(&self, device: &DeviceId);
    /// The telemetry records of `device` in the log, in log order.
    async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record>;
}

/// A [`Fixture`] over an identity store and the telemetry topic (what a `Hub` is built on).
#[derive(Debug, Clone)]
pub struct StoreFixture {
    /// The identity store the gateway authenticates against.
    pub identity: Arc<dyn IdentityStore>,
    /// The telemetry topic.
    pub telemetry: Arc<dyn Log>,
    /// The host SAS tokens are scoped to.
    pub host: String,
}

#[async_trait]
impl Fixture for StoreFixture {
    async fn provision(&self, name: &str) -> (DeviceId, String) {
        let id: DeviceId = format!("{name}-{:08x}", rand::random::<u32>())
            .parse()
            .expect("device id");
        let key = SymmetricKey::generate();
        self.identity
            .create(NewIdentity::new(
                id.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create identity");
        let resource = sas::device_resource(&self.host, &id);
        let token = sas::generate(&resource, &key, sas::unix_now() + 3600, None).expect("token");
        (id, token.as_str().to_owned())
    }

    async fn disable(&self, device: &DeviceId) {
        self.identity
            .set_status(device, DeviceStatus::disabled("testkit"), None)
            .await
            .expect("disable");
    }

    async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record> {
        let p = partition_for_key(device.as_str(), self.telemetry.partition_count());
        let mut out = Vec::new();
        let mut from = self.telemetry.earliest_offset(p).await.expect("earliest");
        loop {
            let batch = self
                .telemetry
                .read(p, from, ReadLimits::default())
                .await
                .expect("read");
            let Some(last) = batch.last() else { break };
            from = last.offset.next();
            out.extend(
                batch
                    .into_iter()
                    .filter(|r| r.record.key == device.as_str())
                    .map(|r| r.record),
            );
        }
        out
    }
}

/// The limits the gateway under test was configured with; checks that need a short lock or a
/// small delivery count are skipped when the gateway's are too long to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages queued per device before `QueueFull`.
    pub max_inbox_depth: usize,
    /// Deliveries before dead-lettering.
    pub max_delivery_count: u32,
    /// The C2D lock duration.
    pub lock_duration: Duration,
}

/// Waits for `f`, failing the check if it hangs (not a timing assertion: the guard is minutes).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the gateway hung for 60 s")
}

async fn connect(gw: &dyn Gateway, id: &DeviceId, token: &str) -> Box<dyn DeviceSession> {
    within(gw.connect(id, Presented::SasToken(token), SessionOptions::default()))
        .await
        .expect("connect")
}

async fn next_c2d(s: &dyn DeviceSession) -> C2dDelivery {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::C2d(d) => d,
        other => panic!("expected a C2D message, got {other:?}"),
    }
}

/// How long [`assert_quiet`] gives a session to hand something out. Not a timing assertion: a
/// correct gateway hands out nothing however long it is given.
const QUIET: Duration = Duration::from_millis(300);

/// Fails if `s` hands out any event within [`QUIET`] (`next_event` is cancel safe, so giving up
/// on it loses nothing).
async fn assert_quiet(s: &dyn DeviceSession, what: &str) {
    if let Ok(event) = tokio::time::timeout(QUIET, s.next_event()).await {
        panic!("{what}: {event:?}");
    }
}

async fn next_method(s: &dyn DeviceSession) -> MethodRequest {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::Method(r) => r,
        other => panic!("expected a method request, got {other:?}"),
    }
}

async fn next_desired(s: &dyn DeviceSession) -> DesiredPatch {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::DesiredPatch(p) => p,
        other => panic!("expected a desired patch, got {other:?}"),
    }
}

async fn feedback_for(gw: &dyn Gateway, message_id: &str) -> Vec<FeedbackStatus> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = gw.read_feedback(from, 1000).await.expect("read feedback");
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        out.extend(
            batch
                .into_iter()
                .filter(|f| f.message_id == message_id)
                .map(|f| f.status),
        );
    }
    out
}

fn c2d(body: &str, ack: AckRequest) -> C2dMessage {
    let mut m = C2dMessage::new(Bytes::from(body.to_owned()));
    m.message_id = Some(format!("{body}-{:08x}", rand::random::<u32>()));
    m.ack = ack;
    m
}

/// Runs every check.
pub async fn run_all(gw: &dyn Gateway, fx: &dyn Fixture, limits: Limits) {
    connect_refuses_bad_credentials(gw, fx).await;
    refused_connects_spend_nothing_of_the_device(gw, fx).await;
    telemetry_in_order_with_headers(gw, fx).await;
    telemetry_stamped_from_the_session(gw, fx).await;
    telemetry_validation(gw, fx).await;
    c2d_waits_for_offline_device(gw, fx).await;
    c2d_expired_never_delivered(gw, fx).await;
    c2d_abandon_redelivers_and_complete_removes(gw, fx).await;
    c2d_reject_dead_letters(gw, fx).await;
    c2d_max_delivery_count_dead_letters(gw, fx, limits).await;
    c2d_lock_expiry_redelivers(gw, fx, limits).await;
    c2d_queue_limit(gw, fx, limits).await;
    session_takeover(gw, fx).await;
    disabled_device_session_ends(gw, fx).await;
    methods_offline_timeout_and_answer(gw, fx).await;
    twin_versions_and_desired_push(gw, fx).await;
    c2d_unsubscribe_keeps_locks_and_inbox(gw, fx).await;
    c2d_unsubscribe_with_a_lookup_pending(gw, fx).await;
    c2d_resubscribe_keeps_fifo(gw, fx).await;
    desired_unsubscribe_and_resubscribe(gw, fx).await;
    methods_unsubscribe(gw, fx).await;
}

/// A wrong token and an unknown device are both `Unauthorized`.
pub async fn connect_refuses_bad_credentials(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("auth").await;
    let (other, _) = fx.provision("auth-other").await;
    let wrong = gw
        .connect(
            &other,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await;
    assert!(
        matches!(wrong, Err(Error::Unauthorized { .. })),
        "{wrong:?}"
    );
    let unknown: DeviceId = "no-such-device-x".parse().expect("id");
    let unknown = gw
        .connect(
            &unknown,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await;
    assert!(
        matches!(unknown, Err(Error::Unauthorized { .. })),
        "{unknown:?}"
    );
    let s = connect(gw, &id, &token).await;
    assert_eq!(s.device_id(), &id);
    assert!(gw.connected_devices().await.expect("list").contains(&id));
    s.close().await;
    assert!(!gw.connected_devices().await.expect("list").contains(&id));
}

/// Refused attempts in a device's name, as many as a stranger may make, spend nothing of that
/// device's budget: it still connects with its own credential at once.
pub async fn refused_connects_spend_nothing_of_the_device(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("lockout").await;
    let (_, other_token) = fx.provision("lockout-other").await;
    // More than any sensible per-device connect burst, fewer than a hub-wide failure budget.
    for _ in 0..40 {
        let refused = gw
            .connect(
                &id,
                Presented::SasToken(&other_token),
                SessionOptions::default(),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    let s = connect(gw, &id, &token).await;
    assert_eq!(s.device_id(), &id);
    s.close().await;
}

/// Telemetry lands in the log in the order sent, with system and custom properties as headers.
pub async fn telemetry_in_order_with_headers(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("telemetry").await;
    let s = connect(gw, &id, &token).await;
    for i in 0..20 {
        let mut m = Telemetry::new(format!("reading-{i}"))
            .with_property("unit", "celsius")
            .with_property("seq", i.to_string());
        m.system.message_id = Some(format!("m{i}"));
        m.system.correlation_id = Some("batch-1".into());
        m.system.content_type = Some("application/json".into());
        m.system.content_encoding = Some("utf-8".into());
        m.will = i == 19;
        within(s.send_telemetry(m)).await.expect("send");
    }
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 20);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.key, id.as_str());
        assert_eq!(r.payload, format!("reading-{i}"));
        let h = &r.headers;
        assert_eq!(h.get(header::MESSAGE_ID), Some(format!("m{i}").as_str()));
        assert_eq!(h.get(header::CORRELATION_ID), Some("batch-1"));
        assert_eq!(h.get(header::CONTENT_TYPE), Some("application/json"));
        assert_eq!(h.get(header::CONTENT_ENCODING), Some("utf-8"));
        assert_eq!(h.get("unit"), Some("celsius"));
        assert_eq!(h.get("seq"), Some(i.to_string().as_str()));
        assert_eq!(
            h.get(header::MESSAGE_TYPE),
            (i == 19).then_some(header::MESSAGE_TYPE_WILL)
        );
    }
    s.close().await;
}

/// Telemetry is stamped from the session as IoT Hub stamps it — who sent it, how it
/// authenticated, which generation of its identity, when it was accepted, where it came from,
/// the model it announced — and no custom property can pass off its own value as a stamp.
pub async fn telemetry_stamped_from_the_session(gw: &dyn Gateway, fx: &dyn Fixture) {
    const MODEL: &str = "dtmi:com:example:Thermostat;1";
    let (id, token) = fx.provision("stamped").await;
    let options = SessionOptions {
        model_id: Some(MODEL.to_owned()),
        ..SessionOptions::default()
    };
    let s = within(gw.connect(&id, Presented::SasToken(&token), options))
        .await
        .expect("connect");
    let before = iot_core::Timestamp::now().as_unix_millis();
    within(s.send_telemetry(Telemetry::new("stamped")))
        .await
        .expect("send");
    let after = iot_core::Timestamp::now().as_unix_millis();
    for name in [
        header::DEVICE_ID,
        header::AUTH_METHOD,
        header::AUTH_GENERATION_ID,
        header::ENQUEUED_TIME,
        header::MESSAGE_SOURCE,
        header::MODEL_ID,
        header::MESSAGE_TYPE,
        "iothub-anything",
    ] {
        let r = s
            .send_telemetry(Telemetry::new("spoof").with_property(name, "forged"))
            .await;
        assert!(
            matches!(r, Err(Error::InvalidProperty { .. })),
            "a custom {name:?}: {r:?}"
        );
    }
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 1, "spoofing messages must not be logged");
    let h = &records[0].headers;
    assert_eq!(h.get(header::DEVICE_ID), Some(id.as_str()));
    let method: serde_json::Value =
        serde_json::from_str(h.get(header::AUTH_METHOD).expect("auth method")).expect("JSON");
    assert_eq!(
        method,
        json!({"scope": "device", "type": "sas", "issuer": "iothub", "acceptingIpFilterRule": null})
    );
    assert!(
        h.get(header::AUTH_GENERATION_ID)
            .is_some_and(|g| !g.is_empty()),
        "{h:?}"
    );
    let enqueued: u64 = h
        .get(header::ENQUEUED_TIME)
        .expect("enqueued time")
        .parse()
        .expect("Unix milliseconds");
    assert!(
        (before..=after).contains(&enqueued),
        "{enqueued} not in {before}..={after}"
    );
    assert_eq!(
        h.get(header::MESSAGE_SOURCE),
        Some(header::MESSAGE_SOURCE_TELEMETRY)
    );
    assert_eq!(h.get(header::MODEL_ID), Some(MODEL));
    s.close().await;
    // A session that announced no model stamps none.
    let s = connect(gw, &id, &token).await;
    within(s.send_telemetry(Telemetry::new("no model")))
        .await
        .expect("send");
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].headers.get(header::MODEL_ID), None);
    assert_eq!(records[1].headers.get(header::DEVICE_ID), Some(id.as_str()));
    s.close().await;
}

/// Bad property names and oversized messages are refused with typed errors and never logged.
pub async fn telemetry_validation(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("validation").await;
    let s = connect(gw, &id, &token).await;
    for name in ["$reserved", "has space", "message-id", ""] {
        let r = s
            .send_telemetry(Telemetry::new("x").with_property(name, "v"))
            .await;
        assert!(
            matches!(r, Err(Error::InvalidProperty { .. })),
            "{name:?}: {r:?}"
        );
    }
    let r = s
        .send_telemetry(Telemetry::new(vec![0u8; 256 * 1024 + 1]))
        .await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(fx.telemetry_of(&id).await.is_empty());
    // The session survives refused messages.
    within(s.send_telemetry(Telemetry::new("fine")))
        .await
        .expect("send");
    assert_eq!(fx.telemetry_of(&id).await.len(), 1);
    s.close().await;
}

/// A message sent while the device is offline is delivered when it connects and subscribes —
/// not before it subscribes — and completing it yields success feedback.
pub async fn c2d_waits_for_offline_device(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("offline").await;
    let mut m = c2d("hello", AckRequest::Full);
    m.correlation_id = Some("corr".into());
    m.properties = vec![("k".into(), "v".into())];
    let receipt = within(gw.send_c2d(&id, m)).await.expect("send");
    let s = connect(gw, &id, &token).await;
    // Not subscribed yet: a method subscription wakes the session but no C2D may come out.
    s.subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe");
    gw.patch_desired(&id, json!({"marker": 1}), None)
        .await
        .expect("patch");
    match within(s.next_event()).await.expect("event") {
        SessionEvent::DesiredPatch(p) => assert_eq!(p.version, 1),
        other => panic!("a C2D message was delivered before the subscription: {other:?}"),
    }
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*s).await;
    assert_eq!(d.payload, "hello");
    assert_eq!(d.message_id, receipt.message_id);
    assert_eq!(d.correlation_id.as_deref(), Some("corr"));
    assert_eq!(d.properties, vec![("k".to_owned(), "v".to_owned())]);
    assert_eq!(d.ack, AckRequest::Full);
    assert_eq!(d.expires_at, receipt.expires_at);
    assert_eq!(d.delivery_count, 1);
    s.complete(d.lock_token).await.expect("complete");
    assert!(matches!(
        s.complete(d.lock_token).await,
        Err(Error::LockLost { .. })
    ));
    assert_eq!(
        feedback_for(gw, &receipt.message_id).await,
        vec![FeedbackStatus::Success]
    );
    s.close().await;
}

/// An expired message is never delivered and yields "expired" feedback.
pub async fn c2d_expired_never_delivered(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("expiry").await;
    let mut dying = c2d("dying", AckRequest::Negative);
    dying.ttl = Some(Duration::from_millis(1));
    let dying = gw.send_c2d(&id, dying).await.expect("send");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let live = gw
        .send_c2d(&id, c2d("live", AckRequest::None))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*s).await;
    assert_eq!(
        d.message_id, live.message_id,
        "the expired message was delivered"
    );
    s.complete(d.lock_token).await.expect("complete");
    assert_eq!(
        feedback_for(gw, &dying.message_id).await,
        vec![FeedbackStatus::Expired]
    );
    s.close().await;
}

/// Abandon redelivers (delivery count grows); complete removes.
pub async fn c2d_abandon_redelivers_and_complete_removes(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("abandon").await;
    let first = gw
        .send_c2d(&id, c2d("first", AckRequest::None))
        .await
        .expect("send");
    let second = gw
        .send_c2d(&id, c2d("second", AckRequest::None))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let a = next_c2d(&*s).await;
    assert_eq!(a.message_id, first.message_id);
    s.abandon(a.lock_token).await.expect("abandon");
    let again = next_c2d(&*s).await;
    assert_eq!(
        again.message_id, first.message_id,
        "FIFO: the abandoned message comes first"
    );
    assert_eq!(again.delivery_count, 2);
    assert!(matches!(
        s.complete(a.lock_token).await,
        Err(Error::LockLost { .. })
    ));
    s.complete(again.lock_token).await.expect("complete");
    let b = next_c2d(&*s).await;
    assert_eq!(b.message_id, second.message_id);
    s.complete(b.lock_token).await.expect("complete");
    s.close().await;
}

/// Reject dead-letters at once, with "rejected" feedback.
pub async fn c2d_reject_dead_letters(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("reject").await;
    let bad = gw
        .send_c2d(&id, c2d("bad", AckRequest::Full))
        .await
        .expect("send");
    let good = gw
        .send_c2d(&id, c2d("good", AckRequest::None))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*s).await;
    assert_eq!(d.message_id, bad.message_id);
    s.reject(d.lock_token).await.expect("reject");
    let d = next_c2d(&*s).await;
    assert_eq!(
        d.message_id, good.message_id,
        "a rejected message came back"
    );
    s.complete(d.lock_token).await.expect("complete");
    assert_eq!(
        feedback_for(gw, &bad.message_id).await,
        vec![FeedbackStatus::Rejected]
    );
    s.close().await;
}

/// After the maximum number of deliveries a message is dead-lettered, not delivered again.
pub async fn c2d_max_delivery_count_dead_letters(
    gw: &dyn Gateway,
    fx: &dyn Fixture,
    limits: Limits,
) {
    if limits.max_delivery_count > 20 {
        return;
    }
    let (id, token) = fx.provision("maxdeliveries").await;
    let doomed = gw
        .send_c2d(&id, c2d("doomed", AckRequest::Negative))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    for n in 1..=limits.max_delivery_count {
        let d = next_c2d(&*s).await;
        assert_eq!(d.message_id, doomed.message_id);
        assert_eq!(d.delivery_count, n);
        s.abandon(d.lock_token).await.expect("abandon");
    }
    let next = gw
        .send_c2d(&id, c2d("next", AckRequest::None))
        .await
        .expect("send");
    let d = next_c2d(&*s).await;
    assert_eq!(
        d.message_id, next.message_id,
        "delivered past the maximum count"
    );
    s.complete(d.lock_token).await.expect("complete");
    assert_eq!(
        feedback_for(gw, &doomed.message_id).await,
        vec![FeedbackStatus::DeliveryCountExceeded]
    );
    s.close().await;
}

/// A message whose lock expires unsettled is delivered again, to the same session.
pub async fn c2d_lock_expiry_redelivers(gw: &dyn Gateway, fx: &dyn Fixture, limits: Limits) {
    if limits.lock_duration > Duration::from_secs(5) {
        return;
    }
    let (id, token) = fx.provision("lockexpiry").await;
    let m = gw
        .send_c2d(&id, c2d("slow", AckRequest::None))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let first = next_c2d(&*s).await;
    // Not settled: the lock lapses and the message comes back.
    let again = next_c2d(&*s).await;
    assert_eq!(again.message_id, m.message_id);
    assert_eq!(again.delivery_count, first.delivery_count + 1);
    assert!(matches!(
        s.complete(first.lock_token).await,
        Err(Error::LockLost { .. })
    ));
    s.complete(again.lock_token).await.expect("complete");
    s.close().await;
}

/// The inbox holds at most `max_inbox_depth` messages per device; one more is `QueueFull`.
pub async fn c2d_queue_limit(gw: &dyn Gateway, fx: &dyn Fixture, limits: Limits) {
    let (id, _) = fx.provision("queuefull").await;
    for i in 0..limits.max_inbox_depth {
        gw.send_c2d(&id, c2d(&format!("m{i}"), AckRequest::None))
            .await
            .expect("send within the limit");
    }
    let over = gw.send_c2d(&id, c2d("over", AckRequest::None)).await;
    assert!(
        matches!(over, Err(Error::QueueFull { limit, .. }) if limit == limits.max_inbox_depth),
        "{over:?}"
    );
    // Another device is not affected.
    let (other, _) = fx.provision("queuefull-other").await;
    gw.send_c2d(&other, c2d("fine", AckRequest::None))
        .await
        .expect("send");
}

/// A second connection takes over: the first session ends with `TakenOver`, and C2D messages
/// it held go to the new one.
pub async fn session_takeover(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("takeover").await;
    let m = gw
        .send_c2d(&id, c2d("held", AckRequest::None))
        .await
        .expect("send");
    let old = connect(gw, &id, &token).await;
    old.subscribe(Subscription::C2d).await.expect("subscribe");
    let held = next_c2d(&*old).await;
    let new = connect(gw, &id, &token).await;
    assert_eq!(
        within(old.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::TakenOver)
    );
    assert!(matches!(
        old.send_telemetry(Telemetry::new("x")).await,
        Err(Error::SessionClosed {
            reason: CloseReason::TakenOver,
            ..
        })
    ));
    assert!(old.complete(held.lock_token).await.is_err());
    new.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*new).await;
    assert_eq!(d.message_id, m.message_id);
    new.complete(d.lock_token).await.expect("complete");
    assert!(new.close_reason().is_none());
    new.close().await;
}

/// Disabling the device in the identity store ends its session promptly, and it cannot
/// connect again.
pub async fn disabled_device_session_ends(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("disable").await;
    let s = connect(gw, &id, &token).await;
    fx.disable(&id).await;
    assert_eq!(
        within(s.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::Disabled)
    );
    assert!(matches!(
        s.send_telemetry(Telemetry::new("x")).await,
        Err(Error::SessionClosed { .. })
    ));
    let again = gw
        .connect(&id, Presented::SasToken(&token), SessionOptions::default())
        .await;
    assert!(
        matches!(again, Err(Error::Unauthorized { .. })),
        "{again:?}"
    );
    assert!(!gw.connected_devices().await.expect("list").contains(&id));
}

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

/// After `unsubscribe(C2d)` no message is handed out. The message in flight stays locked to the
/// session and can still be completed (an acknowledgement may arrive after the unsubscribe); the
/// one never handed out stays in the inbox and reaches a later session as its first delivery.
/// Unsubscribing twice, or a kind never subscribed, is fine; on a closed session it is
/// `SessionClosed`.
pub async fn c2d_unsubscribe_keeps_locks_and_inbox(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("unsub-c2d").await;
    let first = gw
        .send_c2d(&id, c2d("first", AckRequest::Full))
        .await
        .expect("send");
    let second = gw
        .send_c2d(&id, c2d("second", AckRequest::None))
        .await
        .expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let held = next_c2d(&*s).await;
    assert_eq!(held.message_id, first.message_id);
    s.unsubscribe(Subscription::C2d).await.expect("unsubscribe");
    s.unsubscribe(Subscription::C2d)
        .await
        .expect("unsubscribing twice");
    s.unsubscribe(Subscription::Methods)
        .await
        .expect("unsubscribing a kind never subscribed");
    assert_quiet(&*s, "handed out after unsubscribe(C2d)").await;
    s.complete(held.lock_token)
        .await
        .expect("a message in flight at unsubscribe can still be completed");
    assert_eq!(
        feedback_for(gw, &first.message_id).await,
        vec![FeedbackStatus::Success]
    );
    s.close().await;
    assert!(matches!(
        s.unsubscribe(Subscription::C2d).await,
        Err(Error::SessionClosed { .. })
    ));
    let later = connect(gw, &id, &token).await;
    later.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*later).await;
    assert_eq!(d.message_id, second.message_id);
    assert_eq!(
        d.delivery_count, 1,
        "the unsubscribed session took the message"
    );
    later.complete(d.lock_token).await.expect("complete");
    later.close().await;
}

/// Unsubscribing right after a cancelled `next_event` (whose C2D lookup may still be running)
/// hands out nothing, and what that lookup found goes back to the inbox rather than being kept
/// for the session: a message that expires meanwhile is never delivered when the session
/// subscribes again, and a live one sent after it is the first delivered.
pub async fn c2d_unsubscribe_with_a_lookup_pending(gw: &dyn Gateway, fx: &dyn Fixture) {
    const TTL: Duration = Duration::from_millis(500);
    let (id, token) = fx.provision("unsub-lookup").await;
    let mut dying = c2d("dying", AckRequest::Negative);
    dying.ttl = Some(TTL);
    let dying = gw.send_c2d(&id, dying).await.expect("send");
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    leave_a_lookup_running(&*s).await;
    s.unsubscribe(Subscription::C2d).await.expect("unsubscribe");
    assert_quiet(&*s, "handed out after unsubscribe(C2d)").await;
    tokio::time::sleep(TTL).await;
    let live = gw
        .send_c2d(&id, c2d("live", AckRequest::None))
        .await
        .expect("send");
    s.subscribe(Subscription::C2d)
        .await
        .expect("subscribe again");
    let d = next_c2d(&*s).await;
    assert_eq!(
        d.message_id, live.message_id,
        "a message locked before the unsubscribe was kept past its expiry and delivered"
    );
    s.complete(d.lock_token).await.expect("complete");
    assert_eq!(
        feedback_for(gw, &dying.message_id).await,
        vec![FeedbackStatus::Expired]
    );
    s.close().await;
}

/// Polls `next_event` once and drops it, which usually leaves its C2D lookup running (locking
/// the next message) for the session to deal with. (A zero timeout would not do: it waits for
/// the timer's next tick.) If the lookup won the race, its message is abandoned, so the caller's
/// check still holds.
async fn leave_a_lookup_running(s: &dyn DeviceSession) {
    let mut call = s.next_event();
    let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    drop(call);
    if let Poll::Ready(event) = polled {
        match event.expect("event") {
            SessionEvent::C2d(d) => s.abandon(d.lock_token).await.expect("abandon"),
            other => panic!("expected a C2D message, got {other:?}"),
        }
    }
}

/// A lock given back by `unsubscribe(C2d)` is back in the inbox before a new subscription looks
/// again: subscribing at once still hands out the oldest message first, not the one after it.
pub async fn c2d_resubscribe_keeps_fifo(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("unsub-fifo").await;
    let mut sent = Vec::new();
    for body in ["one", "two", "three"] {
        sent.push(
            gw.send_c2d(&id, c2d(body, AckRequest::None))
                .await
                .expect("send"),
        );
    }
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let first = next_c2d(&*s).await;
    assert_eq!(first.message_id, sent[0].message_id);
    // Its lookup locks "two".
    leave_a_lookup_running(&*s).await;
    s.unsubscribe(Subscription::C2d).await.expect("unsubscribe");
    s.subscribe(Subscription::C2d)
        .await
        .expect("subscribe again");
    let next = next_c2d(&*s).await;
    assert_eq!(
        next.message_id, sent[1].message_id,
        "a newer message was handed out before the one given back by unsubscribe"
    );
    s.complete(first.lock_token).await.expect("complete");
    s.complete(next.lock_token).await.expect("complete");
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
