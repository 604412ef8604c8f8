//! The MQTT endpoint driven by a third-party client (rumqttc) against a real `Hub`: telemetry
//! with properties, C2D with lazy subscription, PUBACK completion and UNSUBSCRIBE, twins, direct
//! methods, ACL, wills and persistent sessions.

mod mqtt_support;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use iot_core::headers;
use iot_gateway::message::header;
use iot_gateway::{AckRequest, C2dMessage, FeedbackStatus, MethodCall};
use iot_identity::IdentityStore;
use mqtt_support::{Client, Fixture, PATIENCE, raw};
use rumqttc::{QoS, SubscribeReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

#[tokio::test]
async fn telemetry_properties_become_record_headers() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let client = Client::connect_device(&device, fx.addr).await;
    let topic = "devices/d1/messages/events/%24.mid=m-1&%24.cid=c-1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2099-01-01T00%3A00%3A00Z&site=north%20wing&level=3";
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, b"{\"t\":21}".to_vec())
        .await
        .expect("publish");
    client
        .client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtMostOnce,
            true,
            b"second".to_vec(),
        )
        .await
        .expect("publish");
    let records = fx.telemetry(&device.id, 2).await;
    let first = &records[0].record;
    assert_eq!(first.payload.as_ref(), b"{\"t\":21}");
    let h = &first.headers;
    assert_eq!(h.get(headers::MESSAGE_ID), Some("m-1"));
    assert_eq!(h.get(headers::CORRELATION_ID), Some("c-1"));
    assert_eq!(h.get(headers::CONTENT_TYPE), Some("application/json"));
    assert_eq!(h.get(headers::CONTENT_ENCODING), Some("utf-8"));
    assert_eq!(h.get(header::EXPIRY_TIME), Some("4070908800000"));
    assert_eq!(h.get("site"), Some("north wing"));
    assert_eq!(h.get("level"), Some("3"));
    assert_eq!(h.get(header::MESSAGE_TYPE), None);
    assert_eq!(h.get(header::RETAIN), None);
    assert_eq!(records[1].record.payload.as_ref(), b"second");
}

/// IoT Hub keeps no retained message but passes the flag on as `mqtt-retain: true`.
#[tokio::test]
async fn a_retained_publish_is_forwarded_marked_mqtt_retain() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let client = Client::connect_device(&device, fx.addr).await;
    for (retain, body) in [(true, "retained"), (false, "plain")] {
        client
            .client
            .publish(
                "devices/d1/messages/events/a=1",
                QoS::AtLeastOnce,
                retain,
                body.as_bytes().to_vec(),
            )
            .await
            .expect("publish");
    }
    let records = fx.telemetry(&device.id, 2).await;
    let retained = &records[0].record;
    assert_eq!(retained.payload.as_ref(), b"retained");
    assert_eq!(retained.headers.get(header::RETAIN), Some("true"));
    assert_eq!(retained.headers.get("a"), Some("1"));
    assert_eq!(records[1].record.headers.get(header::RETAIN), None);
}

/// The system properties the Azure SDKs send beyond the basic five (`$.uid`, `$.ifid`, `$.on`,
/// `$.sub`) and the model id of a Plug and Play username reach the record under IoT Hub's names.
#[tokio::test]
async fn sdk_system_properties_and_the_model_id_are_kept() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    options.set_credentials(
        format!(
            "{}&model-id=dtmi%3Acom%3Aexample%3ATemperatureController%3B1",
            device.username()
        ),
        device.token(),
    );
    let client = Client::connect(options).await;
    let topic = "devices/d1/messages/events/%24.uid=ops&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1&%24.on=out1&%24.sub=thermostat1&t=1";
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, b"{}".to_vec())
        .await
        .expect("publish");
    let records = fx.telemetry(&device.id, 1).await;
    let h = &records[0].record.headers;
    assert_eq!(h.get(header::USER_ID), Some("ops"));
    assert_eq!(
        h.get(header::INTERFACE_ID),
        Some("urn:azureiot:Security:SecurityAgent:1")
    );
    assert_eq!(h.get(header::OUTPUT_NAME), Some("out1"));
    assert_eq!(h.get(header::COMPONENT), Some("thermostat1"));
    assert_eq!(
        h.get(header::MODEL_ID),
        Some("dtmi:com:example:TemperatureController;1")
    );
    assert_eq!(h.get("t"), Some("1"));
}

/// Telemetry is stamped as IoT Hub stamps it, and stamps the device writes into its property
/// bag are dropped (the connection stays open), so it cannot pass itself off as another device.
#[tokio::test]
async fn telemetry_is_stamped_and_device_sent_stamps_are_dropped() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    fx.device("d2").await;
    let client = Client::connect_device(&device, fx.addr).await;
    let forged = "devices/d1/messages/events/iothub-connection-device-id=d2&iothub-connection-auth-generation-id=1&iothub-connection-auth-method=x&iothub-enqueuedtime=0&iothub-message-source=Twin&iothub-MessageType=Will&dt-dataschema=dtmi%3Afake%3B1&mqtt-retain=true&kept=yes";
    client
        .client
        .publish(forged, QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .expect("publish");
    client
        .client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"after".to_vec(),
        )
        .await
        .expect("publish");
    let records = fx.telemetry(&device.id, 2).await;
    assert_eq!(records[1].record.payload.as_ref(), b"after");
    let stored = &records[0];
    let h = &stored.record.headers;
    assert_eq!(stored.record.payload.as_ref(), b"forged");
    assert_eq!(h.get(header::DEVICE_ID), Some("d1"));
    let generation = fx
        .identity
        .get(&device.id)
        .await
        .expect("lookup")
        .expect("identity")
        .generation_id
        .to_string();
    assert_eq!(h.get(header::AUTH_GENERATION_ID), Some(generation.as_str()));
    assert_eq!(
        h.get(header::AUTH_METHOD),
        Some(r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#)
    );
    let accepted: u64 = h
        .get(header::ENQUEUED_TIME)
        .expect("stamped")
        .parse()
        .expect("Unix ms");
    assert!(accepted <= stored.enqueued_time.as_unix_millis());
    assert!(accepted > 0);
    assert_eq!(
        h.get(header::MESSAGE_SOURCE),
        Some(header::MESSAGE_SOURCE_TELEMETRY)
    );
    assert_eq!(h.get(header::MESSAGE_TYPE), None);
    assert_eq!(h.get(header::MODEL_ID), None);
    assert_eq!(h.get(header::RETAIN), None);
    assert_eq!(h.get("kept"), Some("yes"));
}

/// The C2D topic's property bag carries the expiry (`$.exp`, RFC 3339 UTC) and the feedback
/// the sender asked for (`iothub-ack`), as IoT Hub's does.
#[tokio::test]
async fn the_c2d_bag_carries_expiry_and_ack() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    for (ack, name) in [
        (AckRequest::Positive, "positive"),
        (AckRequest::None, "none"),
    ] {
        let mut message = C2dMessage::new(name.as_bytes().to_vec());
        message.ack = ack;
        message.ttl = Some(Duration::from_secs(600));
        let receipt = fx
            .gateway
            .send_c2d(&device.id, message)
            .await
            .expect("queue C2D");
        let mut client = Client::connect_device(&device, fx.addr).await;
        client
            .subscribe("devices/d1/messages/devicebound/#", QoS::AtLeastOnce)
            .await;
        let publish = client.next_publish().await;
        assert_eq!(publish.payload.as_ref(), name.as_bytes());
        let bag = publish
            .topic
            .strip_prefix("devices/d1/messages/devicebound/")
            .expect("devicebound topic")
            .to_string();
        let pairs: Vec<(String, String)> = bag
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .expect("UTF-8")
                        .into_owned()
                };
                (decode(k), decode(v))
            })
            .collect();
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        assert_eq!(get("iothub-ack").as_deref(), Some(name), "{bag}");
        // `YYYY-MM-DDTHH:MM:SS.mmmZ` naming the receipt's expiry (the date arithmetic has unit
        // tests of its own; here the time of day must match).
        let expiry = get("$.exp").expect("$.exp");
        let millis = receipt.expires_at.as_unix_millis();
        let in_day = millis % 86_400_000;
        let time = format!(
            "T{:02}:{:02}:{:02}.{:03}Z",
            in_day / 3_600_000,
            in_day % 3_600_000 / 60_000,
            in_day % 60_000 / 1000,
            in_day % 1000
        );
        assert_eq!(expiry.len(), 24, "{expiry}");
        assert_eq!(&expiry[10..], time, "{expiry} for {millis} ms");
        client.client.disconnect().await.expect("disconnect");
        client.closed().await;
    }
}

#[tokio::test]
async fn c2d_waits_for_the_subscription_and_puback_completes_it() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut message = C2dMessage::new(&b"open valve"[..]);
    message.message_id = Some("msg-1".into());
    message.correlation_id = Some("corr-1".into());
    message.content_type = Some("text/plain".into());
    message.ack = AckRequest::Full;
    message.properties.push(("valve".into(), "a/b 1".into()));
    fx.gateway
        .send_c2d(&device.id, message)
        .await
        .expect("queue C2D");

    let mut client = Client::connect_device(&device, fx.addr).await;
    // Nothing before the subscription: twin answers come first if we ask for one.
    let ack = client
        .subscribe("devices/d1/messages/devicebound/#", QoS::AtLeastOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let publish = client.next_publish().await;
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(publish.payload.as_ref(), b"open valve");
    let topic = publish.topic.clone();
    let bag = topic
        .strip_prefix("devices/d1/messages/devicebound/")
        .expect("devicebound topic");
    assert!(!bag.contains('/'), "one topic level: {bag}");
    for part in [
        "%24.mid=msg-1",
        "%24.cid=corr-1",
        "%24.ct=text%2Fplain",
        "valve=a%2Fb%201",
    ] {
        assert!(bag.split('&').any(|p| p == part), "{part} in {bag}");
    }
    // rumqttc sent PUBACK: the message is completed and success feedback written.
    let feedback = tokio::time::timeout(PATIENCE, async {
        loop {
            let f = fx.gateway.read_feedback(0, 10).await.expect("feedback");
            if !f.is_empty() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("feedback in time");
    assert_eq!(feedback[0].status, FeedbackStatus::Success);
    assert_eq!(feedback[0].message_id, "msg-1");
}

/// Asks for the twin and waits for the answer. The endpoint handles a connection's packets in
/// order, so once the answer is back everything the client sent before has been handled.
async fn twin_round_trip(client: &mut Client, rid: &str) {
    client
        .client
        .publish(
            format!("$iothub/twin/GET/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            Vec::new(),
        )
        .await
        .expect("twin GET");
    let answer = client.next_publish().await;
    assert_eq!(answer.topic, format!("$iothub/twin/res/200/?$rid={rid}"));
}

/// Fails if a PUBLISH arrives within a short while. Not a timing assertion: while the device is
/// subscribed a queued C2D message is written at once; after UNSUBSCRIBE it must never be.
async fn assert_no_publish(client: &mut Client, what: &str) {
    if let Ok(publish) =
        tokio::time::timeout(Duration::from_millis(500), client.incoming.recv()).await
    {
        panic!("{what}: {publish:?}");
    }
}

#[tokio::test]
async fn unsubscribe_stops_c2d_and_a_later_puback_still_completes() {
    const C2D: &str = "devices/d1/messages/devicebound/#";
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    // PUBACKs are sent by the test, so that one can follow the UNSUBSCRIBE. A persistent session
    // shows that the unsubscribed filter is not restored either.
    options.set_manual_acks(true);
    options.set_clean_session(false);
    let mut client = Client::connect(options.clone()).await;
    client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await;
    client.subscribe(C2D, QoS::AtLeastOnce).await;
    let send = |body: &'static str| {
        let mut message = C2dMessage::new(body.as_bytes());
        message.message_id = Some(body.into());
        message.ack = AckRequest::Full;
        fx.gateway.send_c2d(&device.id, message)
    };
    send("first").await.expect("queue C2D");
    let first = client.next_publish().await;
    assert_eq!(first.payload.as_ref(), b"first");

    client.client.unsubscribe(C2D).await.expect("unsubscribe");
    twin_round_trip(&mut client, "1").await;
    send("second").await.expect("queue C2D");
    assert_no_publish(&mut client, "C2D delivered after UNSUBSCRIBE").await;

    // The PUBACK of the message in flight at the UNSUBSCRIBE still completes it.
    client.client.ack(&first).await.expect("PUBACK");
    let completed = tokio::time::timeout(PATIENCE, async {
        loop {
            let f = fx.gateway.read_feedback(0, 10).await.expect("feedback");
            if let Some(f) = f.into_iter().find(|f| f.message_id == "first") {
                return f.status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("feedback in time");
    assert_eq!(completed, FeedbackStatus::Success);

    // Subscribing again delivers what waited in the inbox.
    client.subscribe(C2D, QoS::AtLeastOnce).await;
    let second = client.next_publish().await;
    assert_eq!(second.payload.as_ref(), b"second");
    client.client.ack(&second).await.expect("PUBACK");

    // Unsubscribed again before disconnecting: the persistent session keeps only the twin
    // answers, so after reconnecting no C2D message is delivered.
    client.client.unsubscribe(C2D).await.expect("unsubscribe");
    twin_round_trip(&mut client, "2").await;
    client.client.disconnect().await.expect("disconnect");
    client.closed().await;
    send("third").await.expect("queue C2D");
    let (again, eventloop) = rumqttc::AsyncClient::new(options, 8);
    let mut again = Client::spawn(again, eventloop);
    let ack = tokio::time::timeout(PATIENCE, again.connack.recv())
        .await
        .expect("CONNACK")
        .expect("connected");
    assert!(ack.session_present, "the twin answer subscription is kept");
    twin_round_trip(&mut again, "3").await;
    assert_no_publish(&mut again, "C2D delivered to a session that unsubscribed").await;
}

#[tokio::test]
async fn suback_grants_at_most_qos_1() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut client = Client::connect_device(&device, fx.addr).await;
    let ack = client
        .subscribe("$iothub/methods/POST/#", QoS::ExactlyOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let ack = client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
}

#[tokio::test]
async fn twin_get_reported_patch_and_desired_push() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut client = Client::connect_device(&device, fx.addr).await;
    client
        .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
        .await;
    client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await;

    client
        .client
        .publish(
            "$iothub/twin/GET/?$rid=1",
            QoS::AtMostOnce,
            false,
            Vec::new(),
        )
        .await
        .expect("twin GET");
    let answer = client.next_publish().await;
    assert_eq!(answer.topic, "$iothub/twin/res/200/?$rid=1");
    let twin: serde_json::Value = serde_json::from_slice(&answer.payload).expect("twin JSON");
    assert_eq!(twin["reported"]["$version"], 0);
    assert_eq!(twin["desired"]["$version"], 0);

    client
        .client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=2",
            QoS::AtLeastOnce,
            false,
            b"{\"firmware\":\"1.2\"}".to_vec(),
        )
        .await
        .expect("reported PATCH");
    let answer = client.next_publish().await;
    assert_eq!(answer.topic, "$iothub/twin/res/204/?$rid=2&$version=1");
    let twin = fx.gateway.get_twin(&device.id).await.expect("twin");
    assert_eq!(twin.reported.properties["firmware"], "1.2");

    client
        .client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=3",
            QoS::AtMostOnce,
            false,
            b"not json".to_vec(),
        )
        .await
        .expect("bad PATCH");
    let answer = client.next_publish().await;
    assert_eq!(answer.topic, "$iothub/twin/res/400/?$rid=3");

    fx.gateway
        .patch_desired(&device.id, serde_json::json!({"interval": 5}), None)
        .await
        .expect("desired patch");
    let pushed = client.next_publish().await;
    assert_eq!(
        pushed.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=1"
    );
    let body: serde_json::Value = serde_json::from_slice(&pushed.payload).expect("patch JSON");
    assert_eq!(body, serde_json::json!({"interval": 5, "$version": 1}));
}

#[tokio::test]
async fn direct_method_round_trip() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut client = Client::connect_device(&device, fx.addr).await;
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await;

    let gateway = fx.gateway.clone();
    let id = device.id.clone();
    let call = tokio::spawn(async move {
        gateway
            .invoke_method(&id, MethodCall::new("reboot", &b"{\"delay\":1}"[..]))
            .await
    });
    let request = client.next_publish().await;
    let topic = request.topic.clone();
    let rid = topic
        .strip_prefix("$iothub/methods/POST/reboot/?$rid=")
        .expect("method topic")
        .to_string();
    assert_eq!(request.payload.as_ref(), b"{\"delay\":1}");
    client
        .client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            b"{\"ok\":true}".to_vec(),
        )
        .await
        .expect("method response");
    let response = call.await.expect("task").expect("method answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.payload.as_ref(), b"{\"ok\":true}");
}

#[tokio::test]
async fn publishing_to_another_devices_topic_closes_only_that_connection() {
    let fx = Fixture::start().await;
    let d1 = fx.device("d1").await;
    let d2 = fx.device("d2").await;
    let mut bad = Client::connect_device(&d1, fx.addr).await;
    let good = Client::connect_device(&d2, fx.addr).await;
    bad.client
        .publish(
            "devices/d2/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"spoof".to_vec(),
        )
        .await
        .expect("queue publish");
    bad.closed().await;
    good.client
        .publish(
            "devices/d2/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"fine".to_vec(),
        )
        .await
        .expect("publish");
    let records = fx.telemetry(&d2.id, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.payload.as_ref(), b"fine");
}

#[tokio::test]
async fn subscribing_to_another_devices_topic_closes_the_connection() {
    let fx = Fixture::start().await;
    let d1 = fx.device("d1").await;
    fx.device("d2").await;
    let mut client = Client::connect_device(&d1, fx.addr).await;
    client
        .client
        .subscribe("devices/d2/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    client.closed().await;
}

#[tokio::test]
async fn wrong_credentials_are_refused_with_connack_5() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    options.set_credentials(device.username(), "SharedAccessSignature sr=x&sig=y&se=1");
    let (client, eventloop) = rumqttc::AsyncClient::new(options, 8);
    let mut c = Client::spawn(client, eventloop);
    let error = c.closed().await;
    assert!(error.contains("NotAuthorized"), "{error}");
}

#[tokio::test]
async fn a_vanished_device_leaves_its_will_as_telemetry() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    options.set_last_will(Client::will(&device, "gone"));
    let client = Client::connect(options).await;
    client.vanish();
    let records = fx.telemetry(&device.id, 1).await;
    let will = &records[0].record;
    assert_eq!(will.payload.as_ref(), b"gone");
    assert_eq!(
        will.headers.get(header::MESSAGE_TYPE),
        Some(header::MESSAGE_TYPE_WILL)
    );
    assert_eq!(will.headers.get(header::DEVICE_ID), Some("d1"));
    assert_eq!(will.headers.get("alarm"), Some("lost"));
}

#[tokio::test]
async fn a_clean_disconnect_discards_the_will() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    options.set_last_will(Client::will(&device, "gone"));
    let client = Client::connect(options).await;
    client
        .client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"bye".to_vec(),
        )
        .await
        .expect("publish");
    client.client.disconnect().await.expect("disconnect");
    let records = fx.telemetry(&device.id, 1).await;
    // Wait until the server has finished the session, then check that no will followed.
    tokio::time::timeout(PATIENCE, async {
        while !fx
            .gateway
            .connected_devices()
            .await
            .expect("list")
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("session ends");
    let records_after = fx.telemetry(&device.id, 1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records_after.len(), 1);
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut options = device.options(fx.addr);
    options.set_clean_session(false);
    let mut first = Client::connect(options.clone()).await;
    first
        .subscribe("devices/d1/messages/devicebound/#", QoS::AtLeastOnce)
        .await;
    first.client.disconnect().await.expect("disconnect");
    first.closed().await;

    fx.gateway
        .send_c2d(&device.id, C2dMessage::new(&b"while away"[..]))
        .await
        .expect("queue");
    // Reconnect without subscribing: the kept subscription delivers the message.
    let (client, eventloop) = rumqttc::AsyncClient::new(options, 8);
    let mut second = Client::spawn(client, eventloop);
    let ack = tokio::time::timeout(PATIENCE, second.connack.recv())
        .await
        .expect("CONNACK")
        .expect("connected");
    assert!(ack.session_present);
    let publish = second.next_publish().await;
    assert_eq!(publish.payload.as_ref(), b"while away");
}

#[tokio::test]
async fn a_new_connection_of_the_same_device_takes_over() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut first = Client::connect_device(&device, fx.addr).await;
    let _second = Client::connect_device(&device, fx.addr).await;
    first.closed().await;
}

#[tokio::test]
async fn shutdown_closes_sessions_and_stops_accepting() {
    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    let mut client = Client::connect_device(&device, fx.addr).await;
    fx.server.shutdown().await;
    client.closed().await;
    assert_eq!(fx.server.connections(), 0);
    assert!(tokio::net::TcpStream::connect(fx.addr).await.is_err());
}

/// The next packet from the server, forwarded by the event loop of
/// [`a_non_json_method_answer_fails_the_call_and_keeps_the_connection`]; panics if the
/// connection ended first.
async fn next_packet(
    incoming: &mut tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Incoming, String>>,
    what: &str,
) -> rumqttc::Incoming {
    match tokio::time::timeout(PATIENCE, incoming.recv()).await {
        Ok(Some(Ok(packet))) => packet,
        Ok(Some(Err(e))) => panic!("the connection ended while waiting for {what}: {e}"),
        Ok(None) => panic!("the event loop stopped while waiting for {what}"),
        Err(_) => panic!("no {what} in time"),
    }
}

/// Publishes a method answer (status 200) for `rid` at QoS 1 and waits for its PUBACK.
async fn answer_and_await_puback(
    client: &rumqttc::AsyncClient,
    incoming: &mut tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Incoming, String>>,
    rid: &str,
    body: &[u8],
) {
    client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtLeastOnce,
            false,
            body.to_vec(),
        )
        .await
        .expect("publish the answer");
    assert!(matches!(
        next_packet(incoming, "PUBACK").await,
        rumqttc::Incoming::PubAck(_)
    ));
}

#[tokio::test]
async fn a_non_json_method_answer_fails_the_call_and_keeps_the_connection() {
    use rumqttc::{Event, Incoming};

    let fx = Fixture::start().await;
    let device = fx.device("d1").await;
    // Its own event loop rather than `Client`'s: the test must see the PUBACK of the refused
    // answer, and learn at once if the server closes the connection.
    let (client, mut eventloop) = rumqttc::AsyncClient::new(device.options(fx.addr), 16);
    let (tx, mut incoming) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PingResp)) | Ok(Event::Outgoing(_)) => {}
                Ok(Event::Incoming(packet)) => {
                    let _ = tx.send(Ok(packet));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    assert!(matches!(
        next_packet(&mut incoming, "CONNACK").await,
        Incoming::ConnAck(_)
    ));
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert!(matches!(
        next_packet(&mut incoming, "SUBACK").await,
        Incoming::SubAck(_)
    ));

    let invoke = |name: &'static str| {
        let (gateway, id) = (fx.gateway.clone(), device.id.clone());
        tokio::spawn(async move {
            // Far longer than the guard below: only the refusal can end the call in time.
            let mut call = MethodCall::new(name, "");
            call.response_timeout = Duration::from_secs(60);
            gateway.invoke_method(&id, call).await
        })
    };
    let rid_of = |packet: Incoming, name: &str| -> String {
        let Incoming::Publish(publish) = packet else {
            panic!("expected the method request, got {packet:?}");
        };
        publish
            .topic
            .strip_prefix(&format!("$iothub/methods/POST/{name}/?$rid="))
            .expect("method topic")
            .to_string()
    };

    let first = invoke("first");
    let rid = rid_of(
        next_packet(&mut incoming, "the first request").await,
        "first",
    );
    // The answer is acknowledged although it was refused.
    answer_and_await_puback(&client, &mut incoming, &rid, b"this is not json").await;
    let answer = tokio::time::timeout(PATIENCE, first)
        .await
        .expect("the caller is told before its response timeout")
        .expect("task");
    match answer {
        Err(iot_gateway::Error::InvalidMethodResponse {
            device: who,
            request_id,
            ..
        }) => {
            assert_eq!(who, device.id);
            assert_eq!(request_id.to_string(), rid);
        }
        other => panic!("expected InvalidMethodResponse, got {other:?}"),
    }

    // Still connected: the next call is answered over the same connection.
    let second = invoke("second");
    let rid = rid_of(
        next_packet(&mut incoming, "the second request").await,
        "second",
    );
    answer_and_await_puback(&client, &mut incoming, &rid, b"{\"ok\":true}").await;
    let response = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("answer in time")
        .expect("task")
        .expect("the second call is answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.payload.as_ref(), b"{\"ok\":true}");
    task.abort();
}

/// A connection's server end that counts the writes the endpoint makes on it.
struct CountingWrites<IO> {
    inner: IO,
    writes: Arc<AtomicUsize>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountingWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountingWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one connection whose device sent all of `input` before the session reads anything;
/// returns what the endpoint wrote and in how many writes.
async fn serve_all_at_once(fx: &Fixture, input: &[u8]) -> (Vec<u8>, usize) {
    let (mut client, server_end) = tokio::io::duplex(1 << 16);
    client.write_all(input).await.expect("write");
    let writes = Arc::new(AtomicUsize::new(0));
    let served = fx.server.serve(CountingWrites {
        inner: server_end,
        writes: writes.clone(),
    });
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("the session ends at DISCONNECT")
        .expect("a clean end");
    let mut answers = Vec::new();
    client.read_to_end(&mut answers).await.expect("read");
    (answers, writes.load(Ordering::Relaxed))
}

/// CONNECT, `n` QoS 1 telemetry PUBLISHes and DISCONNECT.
fn connect_publish_disconnect(device: &mqtt_support::Device, n: usize) -> Vec<u8> {
    let topic = format!("devices/{}/messages/events/", device.id);
    let mut input = raw::connect(device);
    for _ in 0..n {
        input.extend(raw::publish(topic.as_bytes(), 1, b"x"));
    }
    input.extend(raw::packet(0xE0, &[]));
    input
}

/// CONNACK, then a PUBACK (of packet id 1, as `raw::publish` numbers them) per PUBLISH.
fn connack_and_pubacks(n: usize) -> Vec<u8> {
    let mut expected = vec![0x20, 2, 0, 0];
    for _ in 0..n {
        expected.extend([0x40, 2, 0, 1]);
    }
    expected
}

/// Packets that arrive together are answered together: a device that sends a window of QoS 1
/// PUBLISHes gets their PUBACKs in one write (one system call on a socket), not one each.
#[tokio::test]
async fn replies_to_a_burst_of_packets_go_out_in_one_write() {
    let fx = Fixture::start().await;
    let device = fx.device("burst").await;
    let (answers, writes) = serve_all_at_once(&fx, &connect_publish_disconnect(&device, 10)).await;
    assert_eq!(answers, connack_and_pubacks(10));
    assert_eq!(writes, 1, "CONNACK and the ten PUBACKs in one write");
    assert_eq!(fx.telemetry(&device.id, 10).await.len(), 10);
}

/// Replies do not wait for a device that never pauses: after 64 packets they go out even
/// though more are ready.
#[tokio::test]
async fn replies_wait_for_at_most_64_packets() {
    let fx = Fixture::start().await;
    let device = fx.device("stream").await;
    let (answers, writes) = serve_all_at_once(&fx, &connect_publish_disconnect(&device, 200)).await;
    assert_eq!(answers, connack_and_pubacks(200));
    // After the 64th, 128th and 192nd PUBLISH, and the last eight at DISCONNECT.
    assert_eq!(writes, 4);
}
