//! Gateway checks of device-to-cloud telemetry: order, headers, stamps, validation.

use iot_identity::Presented;
use serde_json::json;

use crate::error::Error;
use crate::gateway::{Gateway, SessionOptions};
use crate::message::{Telemetry, header};

use super::helpers::connect;
use super::{Fixture, Limits, within};

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

/// Bad property names and messages over `limits.max_message_bytes` are refused with typed errors
/// and never logged.
pub async fn telemetry_validation(gw: &dyn Gateway, fx: &dyn Fixture, limits: Limits) {
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
        .send_telemetry(Telemetry::new(vec![0u8; limits.max_message_bytes + 1]))
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
