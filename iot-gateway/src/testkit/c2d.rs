//! Gateway checks of cloud-to-device messages: delivery, settlement, expiry, limits,
//! unsubscribing.

use std::task::Poll;
use std::time::Duration;

use serde_json::json;

use crate::error::Error;
use crate::gateway::{DeviceSession, Gateway, SessionEvent, Subscription};
use crate::message::{AckRequest, FeedbackStatus};

use super::helpers::{assert_quiet, c2d, connect, feedback_for, next_c2d};
use super::{Fixture, Limits, within};

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

/// The feedback queue's completed position ([`Gateway::feedback_completed`]) moves forward when
/// a receiver completes feedback, never back, and never past the end of the feedback.
pub async fn feedback_completion_moves_forward_only(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("feedback-queue").await;
    let s = connect(gw, &id, &token).await;
    s.subscribe(Subscription::C2d).await.expect("subscribe");
    let mut last = String::new();
    for body in ["first", "second"] {
        let receipt = within(gw.send_c2d(&id, c2d(body, AckRequest::Full)))
            .await
            .expect("send");
        let d = next_c2d(&*s).await;
        s.complete(d.lock_token).await.expect("complete");
        last = receipt.message_id;
    }
    s.close().await;
    // Wait for the second message's feedback: the end of the feedback is after it.
    assert_eq!(feedback_for(gw, &last).await, vec![FeedbackStatus::Success]);
    let end = feedback_end(gw).await;
    let position = || async { within(gw.feedback_completed()).await.expect("position") };
    let start = position().await;
    assert!(
        start <= end,
        "completed position {start} past the end {end}"
    );
    within(gw.complete_feedback(end - 1))
        .await
        .expect("complete");
    assert_eq!(position().await, start.max(end - 1));
    within(gw.complete_feedback(0)).await.expect("complete");
    assert_eq!(
        position().await,
        start.max(end - 1),
        "the position moved back"
    );
    within(gw.complete_feedback(end + 1_000))
        .await
        .expect("complete");
    assert_eq!(position().await, end, "the position is not past the end");
}

/// The position after the last feedback record.
async fn feedback_end(gw: &dyn Gateway) -> u64 {
    let mut end = 0;
    loop {
        let batch = gw.read_feedback(end, 1000).await.expect("read feedback");
        let Some(last) = batch.last() else { return end };
        end = last.offset + 1;
    }
}
