//! The CoAP adapter (feature `coap`) over a hub: telemetry, C2D, authentication, the message
//! layer's rules on duplicates and malformed datagrams. `coap_interop.rs` runs a client nobody
//! here wrote (aiocoap) against it.

mod coap_support;

use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use coap_support::{Fixture, PATIENCE, code, request, sas};
use iot_gateway::adapter::{LOCK_TOKEN_PROPERTY, properties};
use iot_gateway::coap::PROPERTIES_OPTION;
use iot_gateway::inbox::Settlement;
use iot_gateway::message::header;
use iot_gateway::testkit::{
    self,
    adapter::{AdapterDevice, AdapterRefusal, ReceivedC2d},
};
use iot_gateway::{AckRequest, C2dMessage, FeedbackStatus, Gateway};
use iot_identity::{SymmetricKey, sas as sas_token};

fn events(device: &iot_core::DeviceId) -> String {
    format!("/devices/{device}/messages/events")
}

fn bound(device: &iot_core::DeviceId) -> String {
    format!("/devices/{device}/messages/devicebound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_lands_with_device_id_and_properties() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-telemetry").await;
    let mut client = fx.client().await;
    let mut post = request(
        RequestType::Post,
        client.next_id(),
        &events(&id),
        &[
            sas(&token),
            "$.mid=m-1".into(),
            "temp=21.5".into(),
            "site=a b".into(),
        ],
        br#"{"t":21.5}"#,
    );
    post.add_option(CoapOption::ContentFormat, vec![50]);
    let answer = client.exchange(&post).await;
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, post.header.message_id);
    assert_eq!(code(&answer), ResponseType::Changed);

    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.payload, &br#"{"t":21.5}"#[..]);
    assert_eq!(r.headers.get(header::DEVICE_ID), Some(id.as_str()));
    assert_eq!(r.headers.get(header::MESSAGE_ID), Some("m-1"));
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(r.headers.get("temp"), Some("21.5"));
    assert_eq!(r.headers.get("site"), Some("a b"));
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_confirmable_requests_get_non_confirmable_answers() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-non").await;
    let mut client = fx.client().await;
    let mut post = request(
        RequestType::Post,
        client.next_id(),
        &events(&id),
        &[sas(&token)],
        b"x",
    );
    post.header.set_type(MessageType::NonConfirmable);
    let answer = client.exchange(&post).await;
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(code(&answer), ResponseType::Changed);
    assert_eq!(fx.telemetry_of(&id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bad_token_and_other_devices_address_are_refused() {
    let fx = Fixture::start().await;
    let (alice, alice_token) = fx.device("coap-alice").await;
    let (bob, _) = fx.device("coap-bob").await;
    let mut client = fx.client().await;

    // No token at all.
    let no_token = request(
        RequestType::Post,
        client.next_id(),
        &events(&alice),
        &[],
        b"1",
    );
    assert_eq!(
        code(&client.exchange(&no_token).await),
        ResponseType::Unauthorized
    );

    // A token of the right form signed with a key the hub does not know.
    let forged = sas_token::generate(
        &sas_token::device_resource(coap_support::HOST, &alice),
        &SymmetricKey::generate(),
        sas_token::unix_now() + 600,
        None,
    )
    .expect("token");
    let bad = request(
        RequestType::Post,
        client.next_id(),
        &events(&alice),
        &[sas(forged.as_str())],
        b"2",
    );
    assert_eq!(
        code(&client.exchange(&bad).await),
        ResponseType::Unauthorized
    );

    // Not a token at all.
    let garbage = request(
        RequestType::Post,
        client.next_id(),
        &events(&alice),
        &[sas("nonsense")],
        b"3",
    );
    assert_eq!(
        code(&client.exchange(&garbage).await),
        ResponseType::Unauthorized
    );

    // Alice's good token on Bob's addresses: telemetry and C2D.
    fx.hub
        .send_c2d(&bob, C2dMessage::new("for bob"))
        .await
        .expect("send c2d");
    let as_bob = request(
        RequestType::Post,
        client.next_id(),
        &events(&bob),
        &[sas(&alice_token)],
        b"4",
    );
    assert_eq!(
        code(&client.exchange(&as_bob).await),
        ResponseType::Unauthorized
    );
    let bobs_c2d = request(
        RequestType::Get,
        client.next_id(),
        &bound(&bob),
        &[sas(&alice_token)],
        b"",
    );
    assert_eq!(
        code(&client.exchange(&bobs_c2d).await),
        ResponseType::Unauthorized
    );

    assert!(fx.telemetry_of(&alice).await.is_empty());
    assert!(fx.telemetry_of(&bob).await.is_empty());
    assert_eq!(fx.hub.pending_c2d(&bob).await.expect("pending"), 1);

    // Alice's token still works for Alice: the refusals cost her nothing.
    let good = request(
        RequestType::Post,
        client.next_id(),
        &events(&alice),
        &[sas(&alice_token)],
        b"5",
    );
    assert_eq!(code(&client.exchange(&good).await), ResponseType::Changed);
    assert_eq!(fx.telemetry_of(&alice).await.len(), 1);
}

/// A token that stops being valid (the device is disabled) is refused on the next request,
/// though the adapter had a session open with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_device_refuses_its_cached_token() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-disabled").await;
    let mut client = fx.client().await;
    let first = request(
        RequestType::Post,
        client.next_id(),
        &events(&id),
        &[sas(&token)],
        b"1",
    );
    assert_eq!(code(&client.exchange(&first).await), ResponseType::Changed);
    iot_gateway::testkit::Fixture::disable(&fx.store, &id).await;
    // The hub closes the session when the identity store says so; the adapter then presents
    // the token again, and the gateway refuses it.
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            let again = request(
                RequestType::Post,
                client.next_id(),
                &events(&id),
                &[sas(&token)],
                b"2",
            );
            if code(&client.exchange(&again).await) == ResponseType::Unauthorized {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the disabled device's token was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_by_get_then_complete_reject_and_abandon() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-c2d").await;
    let mut client = fx.client().await;

    // Nothing queued: an empty 2.05 without properties.
    let get = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    let none = client.exchange(&get).await;
    assert_eq!(code(&none), ResponseType::Content);
    assert!(none.payload.is_empty());
    assert!(
        none.get_option(CoapOption::Unknown(PROPERTIES_OPTION))
            .is_none()
    );

    for (n, body) in ["complete me", "reject me", "abandon me"]
        .iter()
        .enumerate()
    {
        let mut m = C2dMessage::new(*body);
        m.message_id = Some(format!("c2d-{n}"));
        m.ack = AckRequest::Full;
        m.properties.push(("kind".into(), "test".into()));
        fx.hub.send_c2d(&id, m).await.expect("send c2d");
    }

    let mut receive = async |expected: &str| {
        let get = request(
            RequestType::Get,
            client.next_id(),
            &bound(&id),
            &[sas(&token)],
            b"",
        );
        let answer = client.exchange(&get).await;
        assert_eq!(code(&answer), ResponseType::Content);
        assert_eq!(answer.payload, expected.as_bytes());
        let bag = answer
            .get_first_option(CoapOption::Unknown(PROPERTIES_OPTION))
            .expect("properties option");
        let pairs = properties::decode_bag(std::str::from_utf8(bag).expect("utf-8")).expect("bag");
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("kind").as_deref(), Some("test"));
        assert!(get("$.mid").is_some_and(|m| m.starts_with("c2d-")));
        get(LOCK_TOKEN_PROPERTY).expect("lock token")
    };

    let lock = receive("complete me").await;
    let mut client2 = fx.client().await;
    let done = request(
        RequestType::Delete,
        client2.next_id(),
        &format!("{}/{lock}", bound(&id)),
        &[sas(&token)],
        b"",
    );
    assert_eq!(code(&client2.exchange(&done).await), ResponseType::Deleted);

    let lock = receive("reject me").await;
    let rejected = request(
        RequestType::Delete,
        client2.next_id(),
        &format!("{}/{lock}", bound(&id)),
        &[sas(&token), "reject".into()],
        b"",
    );
    assert_eq!(
        code(&client2.exchange(&rejected).await),
        ResponseType::Deleted
    );

    let lock = receive("abandon me").await;
    let abandoned = request(
        RequestType::Post,
        client2.next_id(),
        &format!("{}/{lock}/abandon", bound(&id)),
        &[sas(&token)],
        b"",
    );
    assert_eq!(
        code(&client2.exchange(&abandoned).await),
        ResponseType::Changed
    );
    // Given back: delivered again.
    let again = receive("abandon me").await;
    assert_ne!(again, lock, "a new delivery has a new lock token");

    // The same lock token twice: the message is gone.
    let twice = request(
        RequestType::Delete,
        client2.next_id(),
        &format!("{}/{again}", bound(&id)),
        &[sas(&token)],
        b"",
    );
    assert_eq!(code(&client2.exchange(&twice).await), ResponseType::Deleted);
    let stale = request(
        RequestType::Delete,
        client2.next_id(),
        &format!("{}/{again}", bound(&id)),
        &[sas(&token)],
        b"",
    );
    assert!(code(&client2.exchange(&stale).await).is_error());

    let feedback = fx.hub.read_feedback(0, 10).await.expect("feedback");
    let statuses: Vec<_> = feedback
        .iter()
        .map(|f| (f.message_id.as_str(), f.status))
        .collect();
    assert!(
        statuses.contains(&("c2d-0", FeedbackStatus::Success)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("c2d-1", FeedbackStatus::Rejected)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("c2d-2", FeedbackStatus::Success)),
        "{statuses:?}"
    );
    assert_eq!(fx.hub.pending_c2d(&id).await.expect("pending"), 0);
}

/// A confirmable request whose acknowledgement was lost comes again with the same message id:
/// it gets the same answer and is not carried out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_confirmable_telemetry_is_one_record() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-dedup").await;
    let mut client = fx.client().await;
    let post = request(
        RequestType::Post,
        client.next_id(),
        &events(&id),
        &[sas(&token), "seq=1".into()],
        b"once",
    );
    let bytes = post.to_bytes().expect("encode");

    // Back to back (the second may arrive while the first is in progress), then once more after
    // the answer.
    client.send_raw(&bytes).await;
    client.send_raw(&bytes).await;
    let first = client.recv().await;
    client.send_raw(&bytes).await;
    let repeated = client.recv().await;
    assert_eq!(code(&first), ResponseType::Changed);
    assert_eq!(
        repeated.to_bytes().expect("encode"),
        first.to_bytes().expect("encode")
    );

    // A new message id is a new message.
    let next = request(
        RequestType::Post,
        client.next_id(),
        &events(&id),
        &[sas(&token), "seq=2".into()],
        b"twice",
    );
    assert_eq!(code(&client.exchange(&next).await), ResponseType::Changed);

    let records = fx.telemetry_of(&id).await;
    let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, vec![&b"once"[..], &b"twice"[..]]);
}

/// The same message id from another client is another exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_are_per_peer() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-peers").await;
    let one = fx.client().await;
    let two = fx.client().await;
    let post = request(RequestType::Post, 4242, &events(&id), &[sas(&token)], b"x");
    assert_eq!(code(&one.exchange(&post).await), ResponseType::Changed);
    assert_eq!(code(&two.exchange(&post).await), ResponseType::Changed);
    assert_eq!(fx.telemetry_of(&id).await.len(), 2);
}

/// A retransmitted GET gets the same message, not a second one: the first stays locked to
/// the device under the lock token it was answered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_get_hands_out_one_message() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-get-dedup").await;
    fx.hub
        .send_c2d(&id, C2dMessage::new("first"))
        .await
        .expect("c2d");
    fx.hub
        .send_c2d(&id, C2dMessage::new("second"))
        .await
        .expect("c2d");
    let mut client = fx.client().await;
    let get = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    let a = client.exchange(&get).await;
    let b = client.exchange(&get).await;
    assert_eq!(a.payload, b"first");
    assert_eq!(a.to_bytes().expect("a"), b.to_bytes().expect("b"));
    let next = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    assert_eq!(client.exchange(&next).await.payload, b"second");
}

/// Garbage, truncated and malformed datagrams are dropped (confirmable ones with a readable
/// header rejected by a Reset), reach nothing, and leave the socket serving others — and the
/// sender itself. So do 500 random datagrams with a CoAP header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_ignored_without_affecting_others() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-hostile").await;
    let mut hostile = fx.client().await;
    let mut honest = fx.client().await;

    let good = request(
        RequestType::Post,
        hostile.next_id(),
        &events(&id),
        &[sas(&token)],
        b"ok",
    );
    let good_bytes = good.to_bytes().expect("encode");
    let mut truncated_option = good_bytes.clone();
    truncated_option.truncate(good_bytes.len() - 5 - 1); // inside the query option
    let mut marker_without_payload =
        request(RequestType::Post, 0x0101, &events(&id), &[sas(&token)], b"")
            .to_bytes()
            .expect("encode");
    marker_without_payload.push(0xFF);
    let mut token_len_9 = good_bytes.clone();
    token_len_9[0] = (token_len_9[0] & 0xF0) | 9;
    let mut version_2 = good_bytes.clone();
    version_2[0] = (version_2[0] & 0x3F) | 0x80;
    let mut option_delta_15 = vec![0x40, 0x02, 0x01, 0x02, 0xF1, 0x00];
    option_delta_15.extend_from_slice(b"x");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty", vec![], false),
        ("three bytes", vec![0x40, 0x02, 0x00], false),
        ("version 2", version_2, false),
        (
            "random",
            (0..200).map(|i| (i * 37 % 251) as u8).collect(),
            false,
        ),
        ("truncated option", truncated_option, true),
        ("token length 9", token_len_9, true),
        ("option delta 15", option_delta_15, true),
        (
            "payload marker without payload",
            marker_without_payload,
            true,
        ),
    ];
    for (case, bytes, confirmable_reset) in &cases {
        hostile.send_raw(bytes).await;
        if *confirmable_reset {
            let reset = hostile.recv().await;
            assert_eq!(reset.header.get_type(), MessageType::Reset, "{case}");
            assert_eq!(reset.header.code, MessageClass::Empty, "{case}");
        }
    }
    // Random datagrams with a CoAP 1 header (any type, code, token length, message id) and
    // random bytes after it: whatever each is answered with, none may stop the socket. A fixed
    // generator, so that a failure replays; from a socket of their own, so that none shares a
    // message id with the requests below.
    let fuzzer = fx.client().await;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..500 {
        let len = 4 + (random() % 60) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| random() as u8).collect();
        bytes[0] = 0x40 | (bytes[0] & 0x3F);
        fuzzer.send_raw(&bytes).await;
    }

    // An unknown critical option is a 4.02 answer, not a drop.
    let mut critical = request(
        RequestType::Post,
        hostile.next_id(),
        &events(&id),
        &[sas(&token)],
        b"x",
    );
    critical.add_option(CoapOption::Unknown(65001), b"?".to_vec());
    assert_eq!(
        code(&hostile.exchange(&critical).await),
        ResponseType::BadOption
    );

    // Others are served, and so is the hostile sender once it behaves.
    let from_honest = request(
        RequestType::Post,
        honest.next_id(),
        &events(&id),
        &[sas(&token)],
        b"honest",
    );
    assert_eq!(
        code(&honest.exchange(&from_honest).await),
        ResponseType::Changed
    );
    assert_eq!(code(&hostile.exchange(&good).await), ResponseType::Changed);
    // Nothing else came back for the dropped ones.
    assert!(
        hostile
            .recv_within(Duration::from_millis(200))
            .await
            .is_none()
    );

    let payloads: Vec<_> = fx
        .telemetry_of(&id)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, vec![&b"honest"[..], &b"ok"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_addresses() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-methods").await;
    let mut client = fx.client().await;
    let get_events = request(
        RequestType::Get,
        client.next_id(),
        &events(&id),
        &[sas(&token)],
        b"",
    );
    assert_eq!(
        code(&client.exchange(&get_events).await),
        ResponseType::MethodNotAllowed
    );
    let unknown = request(
        RequestType::Post,
        client.next_id(),
        &format!("/devices/{id}/twin"),
        &[sas(&token)],
        b"",
    );
    assert_eq!(
        code(&client.exchange(&unknown).await),
        ResponseType::NotFound
    );
    let ping = {
        let mut p = coap_lite::Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Empty;
        p.header.message_id = client.next_id();
        p
    };
    let pong = client.exchange(&ping).await;
    assert_eq!(pong.header.get_type(), MessageType::Reset);
    assert_eq!(pong.header.message_id, ping.header.message_id);
}

/// The CoAP device side of the adapter checks: one raw client.
struct CoapDevice {
    client: tokio::sync::Mutex<coap_support::Client>,
}

impl CoapDevice {
    async fn request(
        &self,
        method: RequestType,
        path: &str,
        token: Option<&str>,
        extra: &[String],
        payload: &[u8],
    ) -> Result<coap_lite::Packet, AdapterRefusal> {
        let mut client = self.client.lock().await;
        let mut query: Vec<String> = token.map(sas).into_iter().collect();
        query.extend_from_slice(extra);
        let message_id = client.next_id();
        let answer = client
            .exchange(&request(method, message_id, path, &query, payload))
            .await;
        match code(&answer) {
            ResponseType::Unauthorized => Err(AdapterRefusal::Unauthorized),
            c if c.is_error() => Err(AdapterRefusal::Other(format!(
                "{c:?}: {}",
                String::from_utf8_lossy(&answer.payload)
            ))),
            _ => Ok(answer),
        }
    }
}

#[async_trait::async_trait]
impl AdapterDevice for CoapDevice {
    async fn send_telemetry(
        &self,
        device: &iot_core::DeviceId,
        token: Option<&str>,
        properties: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), AdapterRefusal> {
        let extra: Vec<String> = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.request(RequestType::Post, &events(device), token, &extra, payload)
            .await
            .map(drop)
    }

    async fn receive_c2d(
        &self,
        device: &iot_core::DeviceId,
        token: Option<&str>,
    ) -> Result<Option<ReceivedC2d>, AdapterRefusal> {
        let answer = self
            .request(RequestType::Get, &bound(device), token, &[], b"")
            .await?;
        let Some(bag) = answer.get_first_option(CoapOption::Unknown(PROPERTIES_OPTION)) else {
            return Ok(None);
        };
        let bag = std::str::from_utf8(bag).map_err(|e| AdapterRefusal::Other(e.to_string()))?;
        Ok(Some(ReceivedC2d {
            payload: answer.payload.clone(),
            properties: properties::decode_bag(bag)
                .map_err(|e| AdapterRefusal::Other(e.to_string()))?,
        }))
    }

    async fn settle_c2d(
        &self,
        device: &iot_core::DeviceId,
        token: Option<&str>,
        lock: &str,
        settlement: Settlement,
    ) -> Result<(), AdapterRefusal> {
        let message = format!("{}/{lock}", bound(device));
        match settlement {
            Settlement::Complete => {
                self.request(RequestType::Delete, &message, token, &[], b"")
                    .await
            }
            Settlement::Reject => {
                self.request(
                    RequestType::Delete,
                    &message,
                    token,
                    &["reject".into()],
                    b"",
                )
                .await
            }
            Settlement::Abandon => {
                self.request(
                    RequestType::Post,
                    &format!("{message}/abandon"),
                    token,
                    &[],
                    b"",
                )
                .await
            }
            other => Err(AdapterRefusal::Other(format!(
                "{other:?} is not a settlement here"
            ))),
        }
        .map(drop)
    }
}

/// The protocol-neutral adapter checks of the gateway testkit, through CoAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_testkit_adapter_checks() {
    let fx = Fixture::start().await;
    let device = CoapDevice {
        client: tokio::sync::Mutex::new(fx.client().await),
    };
    testkit::adapter::run_adapter_checks(&*fx.hub, &fx.store, &device).await;
    fx.server.shutdown().await;
}

/// A C2D message too large for one datagram (no block-wise transfer) is rejected with feedback
/// and the device hears 5.00; it does not hold up the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_too_large_for_a_datagram_is_rejected() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-large").await;
    let mut large = C2dMessage::new(vec![b'x'; 100_000]);
    large.ack = AckRequest::Full;
    let large = fx.hub.send_c2d(&id, large).await.expect("c2d");
    fx.hub
        .send_c2d(&id, C2dMessage::new("small"))
        .await
        .expect("c2d");
    let mut client = fx.client().await;
    let get = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    assert_eq!(
        code(&client.exchange(&get).await),
        ResponseType::InternalServerError
    );
    let get = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    assert_eq!(client.exchange(&get).await.payload, b"small");
    let feedback = fx.hub.read_feedback(0, 10).await.expect("feedback");
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    assert_eq!(feedback[0].message_id, large.message_id);
    assert_eq!(feedback[0].status, FeedbackStatus::Rejected);
}

/// Observe (RFC 7641) on `…/devicebound`: the registration is answered at once, each C2D
/// message comes as a confirmable notification with a growing Observe value once the last was
/// acknowledged, and a Reset ends the observation and gives the message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_by_observe() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("coap-observe").await;
    let mut client = fx.client().await;
    let mut register = request(
        RequestType::Get,
        client.next_id(),
        &bound(&id),
        &[sas(&token)],
        b"",
    );
    register.set_observe_value(0);
    let registered = client.exchange(&register).await;
    assert_eq!(code(&registered), ResponseType::Content);
    assert!(registered.get_observe_value().is_some(), "an observation");
    assert!(registered.payload.is_empty());

    // The next notification, past retransmissions of the one before (a slow machine may see
    // one before its acknowledgement lands).
    let notification = async |expected: &str, before: Option<u16>| loop {
        let n = client.recv().await;
        if Some(n.header.message_id) == before {
            continue;
        }
        assert_eq!(n.get_token(), register.get_token());
        assert_eq!(n.header.get_type(), MessageType::Confirmable);
        assert_eq!(code(&n), ResponseType::Content);
        assert_eq!(n.payload, expected.as_bytes());
        return n;
    };
    fx.hub
        .send_c2d(&id, C2dMessage::new("one"))
        .await
        .expect("c2d");
    fx.hub
        .send_c2d(&id, C2dMessage::new("two"))
        .await
        .expect("c2d");
    let first = notification("one", None).await;
    let first_seq = first.get_observe_value().expect("Observe").expect("a uint");
    let bag = first
        .get_first_option(CoapOption::Unknown(PROPERTIES_OPTION))
        .expect("properties");
    let pairs = properties::decode_bag(std::str::from_utf8(bag).expect("utf-8")).expect("bag");
    let lock = pairs
        .iter()
        .find(|(k, _)| k == LOCK_TOKEN_PROPERTY)
        .map(|(_, v)| v.clone())
        .expect("lock token");
    // Nothing else until it is acknowledged (at most a retransmission of it).
    if let Some(p) = client.recv_within(Duration::from_millis(500)).await {
        assert_eq!(
            p.header.message_id, first.header.message_id,
            "{:?}",
            p.payload
        );
    }
    let mut ack = coap_lite::Packet::new();
    ack.header.set_version(1);
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.code = MessageClass::Empty;
    ack.header.message_id = first.header.message_id;
    client.send_raw(&ack.to_bytes().expect("ack")).await;
    let second = notification("two", Some(first.header.message_id)).await;
    assert!(
        second
            .get_observe_value()
            .expect("Observe")
            .expect("a uint")
            > first_seq,
        "notifications are ordered"
    );
    // The first one is settled as a GET's would be, beside the observation.
    let mut settler = fx.client().await;
    let done = request(
        RequestType::Delete,
        settler.next_id(),
        &format!("{}/{lock}", bound(&id)),
        &[sas(&token)],
        b"",
    );
    assert_eq!(code(&settler.exchange(&done).await), ResponseType::Deleted);

    // A Reset ends the observation; the unacknowledged message goes back to the inbox.
    let mut reset = ack.clone();
    reset.header.set_type(MessageType::Reset);
    reset.header.message_id = second.header.message_id;
    client.send_raw(&reset.to_bytes().expect("reset")).await;
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            let get = request(
                RequestType::Get,
                settler.next_id(),
                &bound(&id),
                &[sas(&token)],
                b"",
            );
            let answer = settler.exchange(&get).await;
            if !answer.payload.is_empty() {
                return answer;
            }
        }
    })
    .await
    .expect("the message comes back");
    assert_eq!(again.payload, b"two");
    // No more notifications (at most a late retransmission of the one reset).
    while let Some(p) = client.recv_within(Duration::from_millis(300)).await {
        assert_eq!(
            p.header.message_id, second.header.message_id,
            "no more notifications"
        );
    }
}
