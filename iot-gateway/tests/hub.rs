//! Hub behaviour beyond the conformance suite: throttling, the event and twin-change topics,
//! deletion, desired-patch folding, lazy method subscription and validation of back-end input.

use std::sync::Arc;
use std::time::Duration;

use iot_core::{Log, PartitionId, ReadLimits, Record, partition_for_key};
use iot_gateway::message::header;
use iot_gateway::testkit::{Fixture, StoreFixture, within};
use iot_gateway::{
    C2dMessage, CloseReason, DeviceSession, Error, Gateway, Hub, HubConfig, MethodCall, Rate,
    SessionEvent, SessionOptions, Subscription, Telemetry, ThrottleConfig, ThrottleScope,
    ThrottledOperation,
};
use iot_identity::{IdentityStore, MemoryIdentityStore, Presented};
use serde_json::json;

const HOST: &str = "hub.test.local";

async fn hub_with(config: HubConfig) -> (Hub, StoreFixture) {
    hub_built(|builder| builder.config(config)).await
}

/// A hub over a fresh memory identity store, from a builder `configure` finishes.
async fn hub_built(
    configure: impl FnOnce(iot_gateway::HubBuilder) -> iot_gateway::HubBuilder,
) -> (Hub, StoreFixture) {
    let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
    let hub = configure(Hub::builder(identity.clone(), HOST))
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

async fn connect(hub: &Hub, id: &iot_core::DeviceId, token: &str) -> Box<dyn DeviceSession> {
    hub.connect(id, Presented::SasToken(token), SessionOptions::default())
        .await
        .expect("connect")
}

async fn records_of(log: &Arc<dyn Log>, key: &str) -> Vec<Record> {
    let p = partition_for_key(key, log.partition_count());
    log.read(
        p,
        log.earliest_offset(p).await.expect("earliest"),
        ReadLimits::default(),
    )
    .await
    .expect("read")
    .into_iter()
    .filter(|r| r.record.key == key)
    .map(|r| r.record)
    .collect()
}

#[tokio::test]
async fn telemetry_is_throttled_per_device_and_hub_wide() {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited()
        .device_telemetry(Some(Rate::new(0.0, 3.0)))
        .hub_telemetry(Some(Rate::new(0.0, 5.0)));
    let (hub, fx) = hub_with(config).await;
    let (a, ta) = fx.provision("a").await;
    let (b, tb) = fx.provision("b").await;
    let sa = connect(&hub, &a, &ta).await;
    let sb = connect(&hub, &b, &tb).await;
    for _ in 0..3 {
        sa.send_telemetry(Telemetry::new("x"))
            .await
            .expect("within budget");
    }
    let refused = sa.send_telemetry(Telemetry::new("x")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Throttled {
                operation: ThrottledOperation::Telemetry,
                scope: ThrottleScope::Device,
                ..
            })
        ),
        "{refused:?}"
    );
    sb.send_telemetry(Telemetry::new("y"))
        .await
        .expect("b's own budget");
    sb.send_telemetry(Telemetry::new("y"))
        .await
        .expect("b's own budget");
    let hub_wide = sb.send_telemetry(Telemetry::new("y")).await;
    assert!(
        matches!(
            hub_wide,
            Err(Error::Throttled {
                scope: ThrottleScope::Hub,
                ..
            })
        ),
        "{hub_wide:?}"
    );
    assert_eq!(records_of(hub.telemetry_log(), a.as_str()).await.len(), 3);
    assert_eq!(records_of(hub.telemetry_log(), b.as_str()).await.len(), 2);
}

/// Hubs serving one fleet together split the hub-wide quotas (`Hub::set_hub_quota_share`): a
/// hub with 0.3 of a 10-message budget takes 3, and per-device budgets are not split.
#[tokio::test]
async fn a_hub_enforces_its_share_of_the_hub_wide_quotas() {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited()
        .device_telemetry(Some(Rate::new(0.0, 4.0)))
        .hub_telemetry(Some(Rate::new(0.0, 10.0)));
    let (hub, fx) = hub_with(config).await;
    assert!((hub.hub_quota_share() - 1.0).abs() < f64::EPSILON);
    for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                hub.set_hub_quota_share(bad),
                Err(Error::InvalidInput { .. })
            ),
            "{bad}"
        );
    }
    hub.set_hub_quota_share(0.3).expect("a share");
    let (a, ta) = fx.provision("a").await;
    let sa = connect(&hub, &a, &ta).await;
    for _ in 0..3 {
        sa.send_telemetry(Telemetry::new("x"))
            .await
            .expect("within the hub's share");
    }
    let refused = sa.send_telemetry(Telemetry::new("x")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Throttled {
                scope: ThrottleScope::Hub,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(records_of(hub.telemetry_log(), a.as_str()).await.len(), 3);
}

#[tokio::test]
async fn connects_are_throttled() {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited()
        .device_connects(Some(Rate::new(0.0, 2.0)))
        .hub_connects(Some(Rate::new(0.0, 3.0)));
    let (hub, fx) = hub_with(config).await;
    let (a, ta) = fx.provision("a").await;
    let (b, tb) = fx.provision("b").await;
    let (c, tc) = fx.provision("c").await;
    connect(&hub, &a, &ta).await;
    connect(&hub, &a, &ta).await;
    let third = hub
        .connect(&a, Presented::SasToken(&ta), SessionOptions::default())
        .await;
    assert!(
        matches!(
            third,
            Err(Error::Throttled {
                operation: ThrottledOperation::Connect,
                scope: ThrottleScope::Device,
                ..
            })
        ),
        "{third:?}"
    );
    connect(&hub, &b, &tb).await;
    let hub_wide = hub
        .connect(&c, Presented::SasToken(&tc), SessionOptions::default())
        .await;
    assert!(
        matches!(
            hub_wide,
            Err(Error::Throttled {
                scope: ThrottleScope::Hub,
                ..
            })
        ),
        "{hub_wide:?}"
    );
}

#[tokio::test]
async fn connection_events_and_twin_changes_reach_their_topics() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("events").await;
    let s1 = connect(&hub, &id, &token).await;
    let s2 = connect(&hub, &id, &token).await;
    hub.patch_desired(&id, json!({"a": 1}), None)
        .await
        .expect("desired");
    s2.patch_reported(json!({"b": 2})).await.expect("reported");
    s2.close().await;
    drop(s1);
    let events: Vec<_> = records_of(hub.connection_events_log(), id.as_str())
        .await
        .into_iter()
        .map(|r| {
            (
                r.headers.get(header::EVENT).map(str::to_owned),
                r.headers.get(header::REASON).map(str::to_owned),
            )
        })
        .collect();
    let e = |a: &str, b: Option<&str>| (Some(a.to_owned()), b.map(str::to_owned));
    assert_eq!(
        events,
        vec![
            e("connected", None),
            e("disconnected", Some("taken-over")),
            e("connected", None),
            e("disconnected", Some("client-closed")),
        ]
    );
    let changes: Vec<_> = records_of(hub.twin_changes_log(), id.as_str())
        .await
        .into_iter()
        .map(|r| {
            (
                r.headers.get(header::SECTION).map(str::to_owned),
                r.headers.get(header::VERSION).map(str::to_owned),
                {
                    // The body is IoT Hub's twin change notification; the patch is inside it.
                    let body: serde_json::Value =
                        serde_json::from_slice(&r.payload).expect("JSON body");
                    let section = r.headers.get(header::SECTION).unwrap_or_default();
                    iot_gateway::events::twin_change_patch(&body, section)
                        .expect("patch")
                        .to_string()
                },
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                Some("desired".into()),
                Some("1".into()),
                r#"{"a":1}"#.into()
            ),
            (
                Some("reported".into()),
                Some("1".into()),
                r#"{"b":2}"#.into()
            ),
        ]
    );
}

#[tokio::test]
async fn deleting_a_device_ends_its_session_and_drops_its_inbox_and_twin() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("deleted").await;
    hub.send_c2d(&id, C2dMessage::new("x")).await.expect("send");
    hub.patch_desired(&id, json!({"a": 1}), None)
        .await
        .expect("patch");
    let s = connect(&hub, &id, &token).await;
    fx.identity.delete(&id, None).await.expect("delete");
    assert_eq!(
        within(s.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::Deleted)
    );
    assert!(matches!(
        hub.send_c2d(&id, C2dMessage::new("y")).await,
        Err(Error::DeviceNotFound { .. })
    ));
    // The watcher empties the inbox after closing the session; wait for it by polling the
    // store (bounded by `within`), not by sleeping a fixed time.
    within(async {
        while hub.inbox().depth(&id).await.expect("depth") > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn credential_replacement_ends_the_session() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("rekey").await;
    let s = connect(&hub, &id, &token).await;
    fx.identity
        .replace_credentials(
            &id,
            iot_identity::Credentials::generate_symmetric_keys(),
            None,
        )
        .await
        .expect("rekey");
    assert_eq!(
        within(s.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::CredentialsReplaced)
    );
}

#[tokio::test]
async fn desired_patches_beyond_the_session_queue_fold_into_the_full_document() {
    let mut config = HubConfig::default();
    config.desired_queue = 2;
    let (hub, fx) = hub_with(config).await;
    let (id, token) = fx.provision("fold").await;
    let s = connect(&hub, &id, &token).await;
    for i in 0..5 {
        hub.patch_desired(&id, json!({format!("k{i}"): i}), None)
            .await
            .expect("patch");
    }
    hub.patch_desired(&id, json!({"k0": null}), None)
        .await
        .expect("patch");
    // Patches made before the subscription are kept, not lost.
    s.subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe");
    match within(s.next_event()).await.expect("event") {
        SessionEvent::DesiredPatch(p) => {
            assert!(p.full_document);
            assert_eq!(p.version, 6);
            assert_eq!(p.patch, json!({"k1": 1, "k2": 2, "k3": 3, "k4": 4}));
        }
        other => panic!("expected the full document, got {other:?}"),
    }
}

#[tokio::test]
async fn method_waits_for_the_device_within_the_connect_timeout() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("late").await;
    let invoker = {
        let (hub, id) = (hub.clone(), id.clone());
        tokio::spawn(async move {
            let mut call = MethodCall::new("ping", "");
            call.connect_timeout = Duration::from_secs(60);
            hub.invoke_method(&id, call).await
        })
    };
    let s = connect(&hub, &id, &token).await;
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    let SessionEvent::Method(request) = within(s.next_event()).await.expect("event") else {
        panic!("expected a method request");
    };
    s.respond_method(iot_gateway::MethodResponse {
        request_id: request.request_id,
        status: 204,
        payload: "null".into(),
    })
    .await
    .expect("respond");
    let answer = within(invoker).await.expect("task").expect("answer");
    assert_eq!(answer.status, 204);
}

#[tokio::test]
async fn an_abandoned_method_call_is_forgotten() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("abandoned").await;
    let s = connect(&hub, &id, &token).await;
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    let invoker = {
        let (hub, id) = (hub.clone(), id.clone());
        tokio::spawn(async move {
            let mut call = MethodCall::new("ping", "");
            call.response_timeout = Duration::from_secs(60);
            hub.invoke_method(&id, call).await
        })
    };
    let SessionEvent::Method(request) = within(s.next_event()).await.expect("event") else {
        panic!("expected a method request");
    };
    // The back end gives up (its caller went away): the call future is dropped.
    invoker.abort();
    assert!(within(invoker).await.is_err_and(|e| e.is_cancelled()));
    let late = s
        .respond_method(iot_gateway::MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: "null".into(),
        })
        .await;
    assert!(
        matches!(late, Err(Error::UnknownMethodRequest { .. })),
        "{late:?}"
    );
}

#[tokio::test]
async fn back_end_input_is_validated() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, _) = fx.provision("validate").await;
    let mut too_long = C2dMessage::new("x");
    too_long.ttl = Some(Duration::from_secs(3 * 24 * 3600));
    assert!(matches!(
        hub.send_c2d(&id, too_long).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        hub.send_c2d(&id, C2dMessage::new(vec![0u8; 256 * 1024 + 1]))
            .await,
        Err(Error::TooLarge { .. })
    ));
    let mut bad_prop = C2dMessage::new("x");
    bad_prop.properties = vec![("$x".into(), "y".into())];
    assert!(matches!(
        hub.send_c2d(&id, bad_prop).await,
        Err(Error::InvalidProperty { .. })
    ));
    assert!(matches!(
        hub.invoke_method(&id, MethodCall::new("a/b", "")).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        hub.invoke_method(&id, MethodCall::new("ok", "{not json"))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    let big = json!({"blob": "x".repeat(33 * 1024)});
    assert!(matches!(
        hub.patch_desired(&id, big, None).await,
        Err(Error::TooLarge { .. })
    ));
    let unknown: iot_core::DeviceId = "nobody".parse().expect("id");
    assert!(matches!(
        hub.get_twin(&unknown).await,
        Err(Error::DeviceNotFound { .. })
    ));
    let _ = PartitionId(0);
}

#[tokio::test]
async fn sas_tokens_are_checked_as_received() {
    // The Python SDK percent-encodes the resource with upper-case hex (`%2F`); the signature is
    // over the resource as sent. Sign exactly what such a device sends and connect with it.
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("sas").await;
    assert!(token.contains("%2F") || token.contains("%2f"));
    connect(&hub, &id, &token).await;
    let tampered = token.replace("sr=", "sr=x");
    assert!(matches!(
        hub.connect(
            &id,
            Presented::SasToken(&tampered),
            SessionOptions::default()
        )
        .await,
        Err(Error::Unauthorized { .. })
    ));
}

/// An inbox whose abandons take a while to be written, as on a slow disk: a lock the session gives
/// back is still held when it looks for the next message.
#[derive(Debug)]
struct SlowAbandons(iot_gateway::MemoryInbox);

#[async_trait::async_trait]
impl iot_gateway::InboxStore for SlowAbandons {
    async fn enqueue(
        &self,
        device: &iot_core::DeviceId,
        message: iot_gateway::inbox::InboxMessage,
        now: iot_core::Timestamp,
        limits: iot_gateway::InboxLimits,
    ) -> iot_gateway::Result<(u64, Vec<iot_gateway::inbox::Removed>)> {
        self.0.enqueue(device, message, now, limits).await
    }
    async fn lock_next(
        &self,
        device: &iot_core::DeviceId,
        now: iot_core::Timestamp,
        limits: iot_gateway::InboxLimits,
    ) -> iot_gateway::Result<iot_gateway::inbox::LockOutcome> {
        self.0.lock_next(device, now, limits).await
    }
    async fn settle(
        &self,
        device: &iot_core::DeviceId,
        token: iot_gateway::LockToken,
        settlement: iot_gateway::inbox::Settlement,
    ) -> iot_gateway::Result<Option<iot_gateway::inbox::Removed>> {
        if settlement == iot_gateway::inbox::Settlement::Abandon {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.0.settle(device, token, settlement).await
    }
    async fn purge_expired(
        &self,
        now: iot_core::Timestamp,
    ) -> iot_gateway::Result<Vec<iot_gateway::inbox::Removed>> {
        self.0.purge_expired(now).await
    }
    async fn remove_device(&self, device: &iot_core::DeviceId) -> iot_gateway::Result<usize> {
        self.0.remove_device(device).await
    }
    async fn depth(&self, device: &iot_core::DeviceId) -> iot_gateway::Result<usize> {
        self.0.depth(device).await
    }
}

#[tokio::test]
async fn resubscribing_waits_for_the_lock_unsubscribe_gave_back() {
    let (hub, fx) =
        hub_built(|builder| builder.inbox(Arc::new(SlowAbandons(iot_gateway::MemoryInbox::new()))))
            .await;
    within(iot_gateway::testkit::c2d_resubscribe_keeps_fifo(&hub, &fx)).await;
}

/// Waits for the next event of `s`, which must be a method request.
async fn next_method(s: &dyn DeviceSession) -> iot_gateway::MethodRequest {
    match within(s.next_event()).await.expect("event") {
        SessionEvent::Method(request) => request,
        other => panic!("expected a method request, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_method_answer_fails_the_call_at_once() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("garbled").await;
    let s = connect(&hub, &id, &token).await;
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    let invoke = |name: &'static str| {
        let (hub, id) = (hub.clone(), id.clone());
        tokio::spawn(async move {
            // A long response timeout: only the refusal can end the call before the guard below.
            let mut call = MethodCall::new(name, "");
            call.response_timeout = Duration::from_secs(30);
            hub.invoke_method(&id, call).await
        })
    };

    let first = invoke("first");
    let request = next_method(s.as_ref()).await;
    let refused = s
        .respond_method(iot_gateway::MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: "{not json".into(),
        })
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidMethodResponse { request_id, .. }) if *request_id == request.request_id),
        "{refused:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the caller is told before its response timeout")
        .expect("task");
    match answer {
        Err(Error::InvalidMethodResponse {
            device,
            request_id,
            reason,
        }) => {
            assert_eq!(device, id);
            assert_eq!(request_id, request.request_id);
            assert!(reason.contains("not JSON"), "{reason}");
            assert!(
                !reason.contains("{not json"),
                "no payload in the error: {reason}"
            );
        }
        other => panic!("expected InvalidMethodResponse, got {other:?}"),
    }
    // The request is no longer pending: a second answer to it is late.
    let again = s
        .respond_method(iot_gateway::MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: "null".into(),
        })
        .await;
    assert!(
        matches!(again, Err(Error::UnknownMethodRequest { .. })),
        "{again:?}"
    );

    // The session is unharmed: it answers the next request normally.
    let second = invoke("second");
    let request = next_method(s.as_ref()).await;
    assert_eq!(request.name, "second");
    s.respond_method(iot_gateway::MethodResponse {
        request_id: request.request_id,
        status: 200,
        payload: "{\"ok\":true}".into(),
    })
    .await
    .expect("respond");
    let answer = within(second).await.expect("task").expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.payload.as_ref(), b"{\"ok\":true}");
}

#[tokio::test]
async fn an_oversized_method_answer_fails_the_call_at_once() {
    let mut config = HubConfig::default();
    config.max_method_payload = 16;
    let (hub, fx) = hub_with(config).await;
    let (id, token) = fx.provision("verbose").await;
    let s = connect(&hub, &id, &token).await;
    s.subscribe(Subscription::Methods).await.expect("subscribe");
    let invoker = {
        let (hub, id) = (hub.clone(), id.clone());
        tokio::spawn(async move {
            let mut call = MethodCall::new("dump", "");
            call.response_timeout = Duration::from_secs(30);
            hub.invoke_method(&id, call).await
        })
    };
    let request = next_method(s.as_ref()).await;
    let refused = s
        .respond_method(iot_gateway::MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: "\"0123456789abcdef\"".into(),
        })
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidMethodResponse { .. })),
        "{refused:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), invoker)
        .await
        .expect("the caller is told before its response timeout")
        .expect("task");
    assert!(
        matches!(&answer, Err(Error::InvalidMethodResponse { reason, .. }) if reason.contains("exceeds the limit of 16 bytes")),
        "{answer:?}"
    );
}

/// The stamps come from the identity the session authenticated: its generation id (a
/// re-created device id gets a new one), the credential kind, and the hub's acceptance time,
/// which is never after the log's own enqueued time.
#[tokio::test]
async fn telemetry_stamps_follow_the_identity() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let thumbprint = iot_identity::Thumbprint::from_hex(&"5a".repeat(32)).expect("thumbprint");
    let id: iot_core::DeviceId = "x509-device".parse().expect("id");
    let create = || {
        iot_identity::NewIdentity::new(
            id.clone(),
            iot_identity::Credentials::X509 {
                primary: thumbprint,
                secondary: thumbprint,
            },
        )
    };
    let mut generations = Vec::new();
    for round in 0..2 {
        let identity = fx.identity.create(create()).await.expect("create");
        let s = hub
            .connect(
                &id,
                Presented::Thumbprint(thumbprint),
                SessionOptions::default(),
            )
            .await
            .expect("connect");
        s.send_telemetry(Telemetry::new(format!("round {round}")))
            .await
            .expect("send");
        s.close().await;
        generations.push(identity.generation_id.to_string());
        if round == 0 {
            fx.identity.delete(&id, None).await.expect("delete");
        }
    }
    assert_ne!(generations[0], generations[1]);
    let log = hub.telemetry_log();
    let p = partition_for_key(id.as_str(), log.partition_count());
    let from = log.earliest_offset(p).await.expect("earliest");
    let stored = log
        .read(p, from, ReadLimits::default())
        .await
        .expect("read");
    let stored: Vec<_> = stored
        .into_iter()
        .filter(|r| r.record.key == id.as_str())
        .collect();
    assert_eq!(stored.len(), 2);
    for (r, generation) in stored.iter().zip(&generations) {
        let h = &r.record.headers;
        assert_eq!(h.get(header::DEVICE_ID), Some(id.as_str()));
        assert_eq!(h.get(header::AUTH_GENERATION_ID), Some(generation.as_str()));
        let method: serde_json::Value =
            serde_json::from_str(h.get(header::AUTH_METHOD).expect("auth method")).expect("JSON");
        assert_eq!(method["type"], "x509Certificate");
        assert_eq!(method["scope"], "device");
        let accepted: u64 = h
            .get(header::ENQUEUED_TIME)
            .expect("enqueued time")
            .parse()
            .expect("Unix ms");
        assert!(
            accepted <= r.enqueued_time.as_unix_millis(),
            "stamped {accepted}, enqueued {}",
            r.enqueued_time.as_unix_millis()
        );
    }
}

/// A model id that is not a property value is refused before the session opens.
#[tokio::test]
async fn a_malformed_model_id_is_refused() {
    let (hub, fx) = hub_with(HubConfig::default()).await;
    let (id, token) = fx.provision("model").await;
    for bad in [String::new(), "a\nb".to_owned(), "m".repeat(4097)] {
        let mut options = SessionOptions::default();
        options.model_id = Some(bad.clone());
        let r = hub.connect(&id, Presented::SasToken(&token), options).await;
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{bad:?}: {:?}",
            r.err()
        );
    }
    assert!(hub.connected_devices().await.expect("list").is_empty());
}

/// Topics in memory, except that the connection-events topic fails its first append.
#[derive(Debug, Default)]
struct EventsFailOnce;

#[async_trait::async_trait]
impl iot_core::LogFactory for EventsFailOnce {
    async fn open_log(
        &self,
        topic: &iot_core::TopicName,
        partitions: u32,
    ) -> iot_core::Result<Arc<dyn Log>> {
        let log = iot_core::MemoryLog::new(partitions)?;
        if topic.as_str() != iot_gateway::hub::topic::CONNECTION_EVENTS {
            return Ok(Arc::new(log));
        }
        let faulty = iot_core::testkit::FaultyLog::new(log);
        faulty.fail_nth(
            Some(iot_core::testkit::Operation::Append),
            1,
            iot_core::testkit::FaultKind::Refuse,
        );
        Ok(Arc::new(faulty))
    }
}

#[tokio::test]
async fn a_connect_whose_event_cannot_be_written_leaves_no_session_behind() {
    let (hub, fx) =
        hub_built(|builder| builder.topics(Arc::new(iot_core::Topics::new(EventsFailOnce, 4))))
            .await;
    let (id, token) = fx.provision("event-fails").await;
    let failed = hub
        .connect(&id, Presented::SasToken(&token), SessionOptions::default())
        .await;
    assert!(
        failed.is_err(),
        "the connect reports the failed event write"
    );
    assert!(
        !hub.is_connected(&id).await.expect("is_connected"),
        "a failed connect leaves the device disconnected"
    );
    assert!(hub.connected_devices().await.expect("list").is_empty());
    // The next connect (the log works again) is an ordinary one.
    let session = connect(&hub, &id, &token).await;
    assert!(hub.is_connected(&id).await.expect("is_connected"));
    session.close().await;
}

#[tokio::test]
async fn retention_configured_in_the_hub_config_runs_by_itself() {
    use iot_core::retention::{RetentionRule, RetentionSchedule};
    use iot_core::{GroupName, Offset, RetentionPolicy};
    let mut config = HubConfig::default();
    config.partitions = 1;
    let monitor = GroupName::new("monitor").expect("group");
    config.retention = RetentionSchedule::new(
        Duration::from_millis(20),
        vec![
            RetentionRule::new(
                iot_gateway::hub::topic::CONNECTION_EVENTS,
                RetentionPolicy {
                    max_age: Some(Duration::from_millis(1)),
                    max_bytes: None,
                },
            )
            .protect(monitor.clone()),
        ],
    );
    let (hub, fx) = hub_with(config).await;
    let (id, token) = fx.provision("retained").await;
    for _ in 0..3 {
        connect(&hub, &id, &token).await.close().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = hub.connection_events_log().clone();
    let p = PartitionId(0);
    assert_eq!(log.next_offset(p).await.expect("next"), Offset(6));
    // Nothing goes while the protected group has committed nothing; then up to its commit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.earliest_offset(p).await.expect("earliest"), Offset(0));
    log.commit(&monitor, p, Offset(4)).await.expect("commit");
    within(async {
        while log.earliest_offset(p).await.expect("earliest") < Offset(4) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.earliest_offset(p).await.expect("earliest"), Offset(4));
}
