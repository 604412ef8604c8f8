//! Checks of a protocol adapter (feature `testkit`): the device's side of the adapter contract,
//! run through a client of the adapter's protocol.
//!
//! A protocol adapter is not a [`Gateway`]: it sits in front of one. The [`Gateway`] checks
//! above assume sessions a caller opens and closes, twins and methods, which a connectionless
//! adapter (CoAP, HTTP) need not offer. These checks assert what every adapter must keep of the
//! gateway's contract, whatever its protocol:
//!
//! * telemetry lands in the log in the order sent, stamped with the authenticated device and
//!   carrying the message's system and custom properties;
//! * a request without a credential, with a bad one, or with one device's credential on another
//!   device's address is refused, reaches nothing, and costs the real device nothing;
//! * a C2D message is received with its properties and lock token, and completing, rejecting
//!   and abandoning it does what the inbox promises (feedback, redelivery).
//!
//! The adapter writer implements [`AdapterDevice`] — a few lines over a client of their
//! protocol — and calls [`run_adapter_checks`] with the gateway behind the adapter and a
//! [`Fixture`]. `iot-gateway/tests/coap.rs` does so for the CoAP adapter.

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{SymmetricKey, sas};

use crate::adapter::LOCK_TOKEN_PROPERTY;
use crate::gateway::Gateway;
use crate::inbox::Settlement;
use crate::message::{AckRequest, C2dMessage, FeedbackStatus, header};

use super::helpers::feedback_for;
use super::{Fixture, within};

/// How an adapter answered a request it did not carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterRefusal {
    /// The credential was refused (missing, bad, or for another device).
    Unauthorized,
    /// Anything else, with the protocol's own description.
    Other(String),
}

/// A C2D message as a device received it through the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedC2d {
    /// The body.
    pub payload: Vec<u8>,
    /// Its properties under IoT Hub's names (`$.mid`, custom ones, and
    /// [`LOCK_TOKEN_PROPERTY`] for settling it).
    pub properties: Vec<(String, String)>,
}

impl ReceivedC2d {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The device side of an adapter: one client of its protocol. Each call presents `token` (a SAS
/// token from [`Fixture::provision`], or one the check forged) for `device`'s address, as a
/// device of that protocol would.
#[async_trait]
pub trait AdapterDevice: Send + Sync {
    /// Sends a telemetry message with `properties` (IoT Hub's names: `$.mid` for the message
    /// id, custom names as they are). `Ok` once the adapter acknowledged it.
    async fn send_telemetry(
        &self,
        device: &DeviceId,
        token: Option<&str>,
        properties: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), AdapterRefusal>;

    /// The device's next C2D message, or `None` if the adapter says there is none now.
    async fn receive_c2d(
        &self,
        device: &DeviceId,
        token: Option<&str>,
    ) -> Result<Option<ReceivedC2d>, AdapterRefusal>;

    /// Settles the message whose [`LOCK_TOKEN_PROPERTY`] was `lock`.
    async fn settle_c2d(
        &self,
        device: &DeviceId,
        token: Option<&str>,
        lock: &str,
        settlement: Settlement,
    ) -> Result<(), AdapterRefusal>;
}

/// Runs every adapter check.
pub async fn run_adapter_checks(gw: &dyn Gateway, fx: &dyn Fixture, device: &dyn AdapterDevice) {
    adapter_telemetry_in_order_and_stamped(fx, device).await;
    adapter_refuses_bad_credentials(gw, fx, device).await;
    adapter_c2d_settlements(gw, fx, device).await;
}

/// Telemetry lands in the log in the order sent, stamped with the device that authenticated,
/// with its message id and custom properties.
pub async fn adapter_telemetry_in_order_and_stamped(fx: &dyn Fixture, device: &dyn AdapterDevice) {
    let (id, token) = fx.provision("adapter-telemetry").await;
    for i in 0..10 {
        let mid = format!("m{i}");
        let seq = i.to_string();
        within(device.send_telemetry(
            &id,
            Some(&token),
            &[("$.mid", &mid), ("seq", &seq), ("unit", "celsius")],
            format!("reading-{i}").as_bytes(),
        ))
        .await
        .expect("telemetry accepted");
    }
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 10, "one record per message");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.key, id.as_str());
        assert_eq!(r.payload, format!("reading-{i}"));
        assert_eq!(r.headers.get(header::DEVICE_ID), Some(id.as_str()));
        assert_eq!(
            r.headers.get(header::MESSAGE_ID),
            Some(format!("m{i}").as_str())
        );
        assert_eq!(r.headers.get("seq"), Some(i.to_string().as_str()));
        assert_eq!(r.headers.get("unit"), Some("celsius"));
    }
}

/// No credential, a forged one, and one device's credential on another device's address are
/// refused as unauthorized, reach neither the log nor the inbox, and leave the real device's
/// own credential working.
pub async fn adapter_refuses_bad_credentials(
    gw: &dyn Gateway,
    fx: &dyn Fixture,
    device: &dyn AdapterDevice,
) {
    let (alice, alice_token) = fx.provision("adapter-alice").await;
    let (bob, _) = fx.provision("adapter-bob").await;
    // Signed with a key the identity store does not hold.
    let forged = sas::generate(
        &sas::device_resource("forged.example", &alice),
        &SymmetricKey::generate(),
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    for (what, target, token) in [
        ("no credential", &alice, None),
        ("a forged token", &alice, Some(forged.as_str())),
        ("not a token", &alice, Some("nonsense")),
        ("another device's token", &bob, Some(alice_token.as_str())),
    ] {
        let sent = within(device.send_telemetry(target, token, &[], b"refused")).await;
        assert_eq!(
            sent,
            Err(AdapterRefusal::Unauthorized),
            "telemetry with {what}"
        );
    }
    let receipt = within(gw.send_c2d(&bob, C2dMessage::new("for bob")))
        .await
        .expect("send c2d");
    let taken = within(device.receive_c2d(&bob, Some(&alice_token))).await;
    assert_eq!(
        taken,
        Err(AdapterRefusal::Unauthorized),
        "C2D of another device"
    );
    let settled =
        within(device.settle_c2d(&bob, Some(&alice_token), "1.1", Settlement::Complete)).await;
    assert_eq!(
        settled,
        Err(AdapterRefusal::Unauthorized),
        "settling another device's message"
    );
    assert!(fx.telemetry_of(&alice).await.is_empty());
    assert!(fx.telemetry_of(&bob).await.is_empty());
    assert!(feedback_for(gw, &receipt.message_id).await.is_empty());
    within(device.send_telemetry(&alice, Some(&alice_token), &[], b"mine"))
        .await
        .expect("the device's own token still works");
    assert_eq!(fx.telemetry_of(&alice).await.len(), 1);
}

/// The next C2D message comes with its properties and a lock token; complete, reject and
/// abandon settle it (abandon gives it back with a new lock), with the feedback the message
/// asked for; a settled lock does not settle again.
pub async fn adapter_c2d_settlements(
    gw: &dyn Gateway,
    fx: &dyn Fixture,
    device: &dyn AdapterDevice,
) {
    let (id, token) = fx.provision("adapter-c2d").await;
    let token = Some(token.as_str());
    assert_eq!(
        within(device.receive_c2d(&id, token)).await,
        Ok(None),
        "nothing queued yet"
    );
    let mut ids = Vec::new();
    for body in ["complete", "reject", "abandon"] {
        let mut m = C2dMessage::new(body);
        m.ack = AckRequest::Full;
        m.properties.push(("kind".into(), body.into()));
        ids.push(
            within(gw.send_c2d(&id, m))
                .await
                .expect("send c2d")
                .message_id,
        );
    }
    let receive = async |expected: &str| {
        let m = within(device.receive_c2d(&id, token))
            .await
            .expect("receive")
            .expect("a message is waiting");
        assert_eq!(m.payload, expected.as_bytes());
        assert_eq!(m.property("kind"), Some(expected));
        m
    };
    let settle = async |m: &ReceivedC2d, how| {
        let lock = m.property(LOCK_TOKEN_PROPERTY).expect("a lock token");
        within(device.settle_c2d(&id, token, lock, how)).await
    };

    let first = receive("complete").await;
    assert_eq!(first.property("$.mid"), Some(ids[0].as_str()));
    settle(&first, Settlement::Complete)
        .await
        .expect("complete");
    assert!(
        settle(&first, Settlement::Complete).await.is_err(),
        "completed twice"
    );
    let second = receive("reject").await;
    settle(&second, Settlement::Reject).await.expect("reject");
    let third = receive("abandon").await;
    settle(&third, Settlement::Abandon).await.expect("abandon");
    let again = receive("abandon").await;
    assert_ne!(
        again.property(LOCK_TOKEN_PROPERTY),
        third.property(LOCK_TOKEN_PROPERTY),
        "a new delivery, a new lock"
    );
    settle(&again, Settlement::Complete)
        .await
        .expect("complete");
    assert_eq!(within(device.receive_c2d(&id, token)).await, Ok(None));

    assert_eq!(
        feedback_for(gw, &ids[0]).await,
        vec![FeedbackStatus::Success]
    );
    assert_eq!(
        feedback_for(gw, &ids[1]).await,
        vec![FeedbackStatus::Rejected]
    );
    assert_eq!(
        feedback_for(gw, &ids[2]).await,
        vec![FeedbackStatus::Success]
    );
}
