//! Small steps the gateway checks share: connecting, waiting for one kind of event, reading
//! feedback.

use std::time::Duration;

use bytes::Bytes;
use iot_core::DeviceId;
use iot_identity::Presented;

use crate::gateway::{DeviceSession, Gateway, SessionEvent, SessionOptions};
use crate::message::{AckRequest, C2dDelivery, C2dMessage, FeedbackStatus};
use crate::method::MethodRequest;
use crate::twins::DesiredPatch;

use super::within;

pub(super) async fn connect(
    gw: &dyn Gateway,
    id: &DeviceId,
    token: &str,
) -> Box<dyn DeviceSession> {
    within(gw.connect(id, Presented::SasToken(token), SessionOptions::default()))
        .await
        .expect("connect")
}

pub(super) async fn next_c2d(s: &dyn DeviceSession) -> C2dDelivery {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::C2d(d) => d,
        other => panic!("expected a C2D message, got {other:?}"),
    }
}

/// How long [`assert_quiet`] gives a session to hand something out. Not a timing assertion: a
/// correct gateway hands out nothing however long it is given.
pub(super) const QUIET: Duration = Duration::from_millis(300);

/// Fails if `s` hands out any event within [`QUIET`] (`next_event` is cancel safe, so giving up
/// on it loses nothing).
pub(super) async fn assert_quiet(s: &dyn DeviceSession, what: &str) {
    if let Ok(event) = tokio::time::timeout(QUIET, s.next_event()).await {
        panic!("{what}: {event:?}");
    }
}

pub(super) async fn next_method(s: &dyn DeviceSession) -> MethodRequest {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::Method(r) => r,
        other => panic!("expected a method request, got {other:?}"),
    }
}

pub(super) async fn next_desired(s: &dyn DeviceSession) -> DesiredPatch {
    match within(s.next_event()).await.expect("next event") {
        SessionEvent::DesiredPatch(p) => p,
        other => panic!("expected a desired patch, got {other:?}"),
    }
}

pub(super) async fn feedback_for(gw: &dyn Gateway, message_id: &str) -> Vec<FeedbackStatus> {
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

pub(super) fn c2d(body: &str, ack: AckRequest) -> C2dMessage {
    let mut m = C2dMessage::new(Bytes::from(body.to_owned()));
    m.message_id = Some(format!("{body}-{:08x}", rand::random::<u32>()));
    m.ack = ack;
    m
}
