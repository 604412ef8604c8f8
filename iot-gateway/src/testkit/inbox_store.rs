//! The conformance suite for [`InboxStore`] implementations: the invariants of the
//! [inbox module](crate::inbox), one public check per part.
//!
//! Every check works on devices of its own, drawn fresh ([`fresh_id`]), so the suite runs against
//! a store that already holds data, and twice against the same database. `purge_expired` is
//! global; its check looks only at its own devices' messages.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};

use super::fresh_id;
use crate::error::{Error, Result};
use crate::inbox::{InboxLimits, InboxMessage, InboxStore, Locked, Removed, Settlement};
use crate::message::{AckRequest, FeedbackStatus, LockToken};

/// Opens the inbox under test, and opens it again for the durability check.
#[async_trait]
pub trait InboxStoreFactory: Send + Sync {
    /// The store to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn InboxStore>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the store keeps nothing across a reopen.
    /// The provided method is for such stores: it drops `previous` and returns `None`.
    async fn reopen(&self, previous: Arc<dyn InboxStore>) -> Option<Result<Arc<dyn InboxStore>>> {
        drop(previous);
        None
    }

    /// Another instance over the same storage, open beside the first, as a second gateway process
    /// sharing the database would open it; `None` (the provided method) for a store only one
    /// process can open. When given, the suite checks [`peers_share_one_inbox`].
    async fn open_peer(&self) -> Option<Result<Arc<dyn InboxStore>>> {
        None
    }
}

/// Runs every check on one store from `factory`, [`peers_share_one_inbox`] when the factory opens
/// peers, then [`survives_reopen`] through [`InboxStoreFactory::reopen`].
///
/// A reopen is the *same* instance restarting: the suite expects it to release the locks that
/// instance held. A store several instances share must release only the restarted instance's
/// locks (the others' sessions are alive); [`peers_share_one_inbox`] checks that opening a peer
/// releases none.
pub async fn run_all(factory: &dyn InboxStoreFactory) {
    let store = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open an inbox: {e}"));
    let s = store.as_ref();
    fifo_and_depth(s).await;
    messages_round_trip(s).await;
    settlements(s).await;
    stale_tokens_are_lock_lost(s).await;
    lock_expiry_redelivers(s).await;
    expired_messages_are_never_delivered(s).await;
    max_delivery_count_dead_letters(s).await;
    queue_limit(s).await;
    remove_device(s).await;
    if let Some(peer) = factory.open_peer().await {
        let peer = peer.unwrap_or_else(|e| panic!("the factory could not open a peer: {e}"));
        peers_share_one_inbox(s, peer.as_ref()).await;
    }
    let written = write_for_reopen(s).await;
    let reopened = factory
        .reopen(store)
        .await
        .map(|r| r.unwrap_or_else(|e| panic!("the factory could not reopen the inbox: {e}")));
    if let Some(reopened) = reopened {
        survives_reopen(reopened.as_ref(), &written).await;
    }
}

/// A fixed "now" far from the epoch, so ages and expiries are easy to read.
fn t(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

const HOUR: Duration = Duration::from_secs(3600);

fn limits() -> InboxLimits {
    InboxLimits {
        max_depth: 50,
        lock_duration: Duration::from_secs(60),
        max_delivery_count: 10,
    }
}

fn msg(id: &str, now: Timestamp, ttl: Duration) -> InboxMessage {
    InboxMessage::new(id, format!("body of {id}"), now, ttl)
}

async fn enqueue(store: &dyn InboxStore, device: &DeviceId, id: &str) -> u64 {
    store
        .enqueue(device, msg(id, t(0), HOUR), t(0), limits())
        .await
        .unwrap_or_else(|e| panic!("enqueue {id}: {e}"))
        .0
}

async fn lock(store: &dyn InboxStore, device: &DeviceId, now: Timestamp) -> Locked {
    store
        .lock_next(device, now, limits())
        .await
        .unwrap_or_else(|e| panic!("lock_next: {e}"))
        .locked
        .unwrap_or_else(|| panic!("a message is available to lock"))
}

fn statuses(removed: &[Removed]) -> Vec<(String, FeedbackStatus)> {
    removed
        .iter()
        .map(|r| (r.message.message_id.clone(), r.status))
        .collect()
}

/// Messages are locked in the order queued (a later one while an earlier one is locked);
/// sequence numbers grow; depth counts locked messages; an unknown device has nothing.
pub async fn fifo_and_depth(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-fifo");
    let s1 = enqueue(store, &device, "m1").await;
    let s2 = enqueue(store, &device, "m2").await;
    let s3 = enqueue(store, &device, "m3").await;
    assert!(s1 < s2 && s2 < s3, "sequence numbers grow: {s1} {s2} {s3}");
    assert_eq!(store.depth(&device).await.expect("depth"), 3);
    let first = lock(store, &device, t(1)).await;
    assert_eq!(first.message.message_id, "m1");
    assert_eq!(
        first.token,
        LockToken {
            sequence: s1,
            delivery: 1
        }
    );
    assert_eq!(
        first.locked_until,
        t(1).saturating_add(limits().lock_duration)
    );
    let second = lock(store, &device, t(2)).await;
    assert_eq!(
        second.message.message_id, "m2",
        "a later message is delivered while an earlier one is locked"
    );
    assert_eq!(
        store.depth(&device).await.expect("depth"),
        3,
        "locked messages count"
    );
    let unknown = fresh_id("tk-inbox-nobody");
    assert_eq!(store.depth(&unknown).await.expect("depth"), 0);
    let outcome = store
        .lock_next(&unknown, t(0), limits())
        .await
        .expect("lock_next");
    assert!(outcome.locked.is_none() && outcome.removed.is_empty() && outcome.next_due.is_none());
}

/// What is queued comes back field for field: ids, content, properties in order, binary body,
/// times and the feedback request.
pub async fn messages_round_trip(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-fields");
    let message = InboxMessage::new("m-full", vec![0u8, 255, 10, 13], t(0), HOUR)
        .with_correlation_id("c-1")
        .with_content(Some("application/json".into()), Some("utf-8".into()))
        .with_properties(vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ])
        .with_ack(AckRequest::Full);
    store
        .enqueue(&device, message.clone(), t(0), limits())
        .await
        .expect("enqueue");
    let locked = lock(store, &device, t(1)).await;
    assert_eq!(locked.message, message, "the message comes back unchanged");
}

/// Complete and reject remove the message (success / rejected, with the delivery count);
/// abandon gives it back for a redelivery with a higher delivery count.
pub async fn settlements(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-settle");
    enqueue(store, &device, "m1").await;
    enqueue(store, &device, "m2").await;
    let l1 = lock(store, &device, t(1)).await;
    let abandoned = store
        .settle(&device, l1.token, Settlement::Abandon)
        .await
        .expect("abandon");
    assert_eq!(abandoned, None, "an abandon removes nothing");
    let again = lock(store, &device, t(2)).await;
    assert_eq!(again.message.message_id, "m1", "abandoned goes back first");
    assert_eq!(again.token.delivery, 2, "the delivery count grew");
    let done = store
        .settle(&device, again.token, Settlement::Complete)
        .await
        .expect("complete")
        .expect("a completed message left");
    assert_eq!(
        (done.device.clone(), done.status, done.delivery_count),
        (device.clone(), FeedbackStatus::Success, 2)
    );
    assert_eq!(done.message.message_id, "m1");
    let l2 = lock(store, &device, t(3)).await;
    let rejected = store
        .settle(&device, l2.token, Settlement::Reject)
        .await
        .expect("reject")
        .expect("a rejected message left");
    assert_eq!(
        (rejected.message.message_id.as_str(), rejected.status),
        ("m2", FeedbackStatus::Rejected)
    );
    assert_eq!(store.depth(&device).await.expect("depth"), 0);
}

/// A token that is not a message's current lock is `LockLost` and changes nothing: settled
/// twice, from before a redelivery, made up, or of another device.
pub async fn stale_tokens_are_lock_lost(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-stale");
    let other = fresh_id("tk-inbox-stale-other");
    enqueue(store, &device, "m1").await;
    let first = lock(store, &device, t(1)).await;
    let lost = |r: Result<Option<Removed>>| matches!(r, Err(Error::LockLost { .. }));
    assert!(
        lost(
            store
                .settle(&other, first.token, Settlement::Complete)
                .await
        ),
        "another device's token"
    );
    let made_up = LockToken {
        sequence: first.token.sequence,
        delivery: first.token.delivery + 1,
    };
    assert!(lost(
        store.settle(&device, made_up, Settlement::Complete).await
    ));
    // The lock lapses and the message is locked again: the first token is stale.
    let relocked = lock(store, &device, t(1).saturating_add(limits().lock_duration)).await;
    assert!(lost(
        store
            .settle(&device, first.token, Settlement::Complete)
            .await
    ));
    assert_eq!(store.depth(&device).await.expect("depth"), 1);
    store
        .settle(&device, relocked.token, Settlement::Complete)
        .await
        .expect("the current token settles");
    assert!(
        lost(
            store
                .settle(&device, relocked.token, Settlement::Complete)
                .await
        ),
        "settled twice"
    );
}

/// While the only message is locked nothing is available and `next_due` says when its lock
/// lapses; from then on it is delivered again.
pub async fn lock_expiry_redelivers(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-lapse");
    enqueue(store, &device, "m1").await;
    let first = lock(store, &device, t(1)).await;
    let waiting = store
        .lock_next(&device, t(2), limits())
        .await
        .expect("lock_next");
    assert!(
        waiting.locked.is_none(),
        "a locked message is not handed out twice"
    );
    assert_eq!(waiting.next_due, Some(first.locked_until));
    let again = lock(store, &device, first.locked_until).await;
    assert_eq!(again.message.message_id, "m1");
    assert_eq!(again.token.delivery, 2);
}

/// An expired message is removed as expired by whoever meets it first (lock_next, enqueue or
/// purge_expired) and never delivered.
pub async fn expired_messages_are_never_delivered(store: &dyn InboxStore) {
    let short = Duration::from_millis(10);
    let device = fresh_id("tk-inbox-expiry");
    for (id, ttl) in [("old", short), ("live", HOUR)] {
        store
            .enqueue(&device, msg(id, t(0), ttl), t(0), limits())
            .await
            .expect("enqueue");
    }
    let outcome = store
        .lock_next(&device, t(10), limits())
        .await
        .expect("lock_next");
    assert_eq!(
        statuses(&outcome.removed),
        [("old".to_owned(), FeedbackStatus::Expired)],
        "expires_at <= now is expired"
    );
    assert_eq!(
        outcome.locked.map(|l| l.message.message_id).as_deref(),
        Some("live")
    );

    let by_enqueue = fresh_id("tk-inbox-expiry-enq");
    store
        .enqueue(&by_enqueue, msg("old", t(0), short), t(0), limits())
        .await
        .expect("enqueue");
    let (_, purged) = store
        .enqueue(&by_enqueue, msg("new", t(20), HOUR), t(20), limits())
        .await
        .expect("enqueue");
    assert_eq!(
        statuses(&purged),
        [("old".to_owned(), FeedbackStatus::Expired)]
    );
    assert_eq!(store.depth(&by_enqueue).await.expect("depth"), 1);

    let a = fresh_id("tk-inbox-purge-a");
    let b = fresh_id("tk-inbox-purge-b");
    for device in [&a, &b] {
        store
            .enqueue(device, msg("gone", t(0), short), t(0), limits())
            .await
            .expect("enqueue");
        store
            .enqueue(device, msg("kept", t(0), HOUR), t(0), limits())
            .await
            .expect("enqueue");
    }
    // A locked message expires too.
    lock(store, &a, t(1)).await;
    let purged = store.purge_expired(t(10)).await.expect("purge");
    let mut ours: Vec<_> = purged
        .iter()
        .filter(|r| r.device == a || r.device == b)
        .map(|r| {
            (
                r.device.clone(),
                r.message.message_id.clone(),
                r.status.as_str(),
            )
        })
        .collect();
    ours.sort();
    let mut expected = vec![
        (
            a.clone(),
            "gone".to_owned(),
            FeedbackStatus::Expired.as_str(),
        ),
        (
            b.clone(),
            "gone".to_owned(),
            FeedbackStatus::Expired.as_str(),
        ),
    ];
    expected.sort();
    assert_eq!(
        ours, expected,
        "purge removes every device's expired messages"
    );
    assert_eq!(
        store.depth(&a).await.expect("depth") + store.depth(&b).await.expect("depth"),
        2,
        "and nothing else"
    );
}

/// A message delivered `max_delivery_count` times is dead-lettered instead of delivered again.
pub async fn max_delivery_count_dead_letters(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-maxdel");
    let limits = InboxLimits {
        max_delivery_count: 2,
        ..limits()
    };
    enqueue(store, &device, "m1").await;
    enqueue(store, &device, "m2").await;
    for n in 1..=2 {
        let locked = store
            .lock_next(&device, t(n), limits)
            .await
            .expect("lock_next")
            .locked
            .expect("available");
        assert_eq!(
            (locked.message.message_id.as_str(), locked.token.delivery),
            ("m1", u32::try_from(n).expect("small"))
        );
        store
            .settle(&device, locked.token, Settlement::Abandon)
            .await
            .expect("abandon");
    }
    let outcome = store
        .lock_next(&device, t(3), limits)
        .await
        .expect("lock_next");
    assert_eq!(
        statuses(&outcome.removed),
        [("m1".to_owned(), FeedbackStatus::DeliveryCountExceeded)]
    );
    assert_eq!(outcome.removed[0].delivery_count, 2);
    assert_eq!(
        outcome.locked.map(|l| l.message.message_id).as_deref(),
        Some("m2"),
        "the next message is delivered in its place"
    );
}

/// A device holds at most `max_depth` messages, locked ones included; one more is `QueueFull`
/// and changes nothing; expired ones are purged before counting. Other devices are not limited
/// by it.
pub async fn queue_limit(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-full");
    let limits = InboxLimits {
        max_depth: 3,
        ..limits()
    };
    store
        .enqueue(
            &device,
            msg("short", t(0), Duration::from_millis(5)),
            t(0),
            limits,
        )
        .await
        .expect("enqueue");
    for id in ["m2", "m3"] {
        store
            .enqueue(&device, msg(id, t(0), HOUR), t(0), limits)
            .await
            .expect("enqueue");
    }
    store
        .lock_next(&device, t(1), limits)
        .await
        .expect("lock_next");
    let full = store
        .enqueue(&device, msg("m4", t(1), HOUR), t(1), limits)
        .await;
    assert!(
        matches!(&full, Err(Error::QueueFull { limit: 3, .. })),
        "{full:?}"
    );
    assert!(full.as_ref().is_err_and(Error::is_retryable));
    assert_eq!(store.depth(&device).await.expect("depth"), 3);
    let other = fresh_id("tk-inbox-full-other");
    store
        .enqueue(&other, msg("o1", t(1), HOUR), t(1), limits)
        .await
        .expect("another device has room");
    let (_, purged) = store
        .enqueue(&device, msg("m4", t(5), HOUR), t(5), limits)
        .await
        .expect("room once the short one expired");
    assert_eq!(
        statuses(&purged),
        [("short".to_owned(), FeedbackStatus::Expired)]
    );
    assert_eq!(store.depth(&device).await.expect("depth"), 3);
}

/// `remove_device` removes every message of the device (locked ones too) and no other's.
pub async fn remove_device(store: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-rm");
    let other = fresh_id("tk-inbox-rm-other");
    for id in ["m1", "m2", "m3"] {
        enqueue(store, &device, id).await;
    }
    enqueue(store, &other, "o1").await;
    let locked = lock(store, &device, t(1)).await;
    assert_eq!(store.remove_device(&device).await.expect("remove"), 3);
    assert_eq!(store.depth(&device).await.expect("depth"), 0);
    assert!(matches!(
        store
            .settle(&device, locked.token, Settlement::Complete)
            .await,
        Err(Error::LockLost { .. })
    ));
    assert_eq!(store.remove_device(&device).await.expect("remove again"), 0);
    assert_eq!(store.depth(&other).await.expect("depth"), 1);
}

/// Two instances over one storage (`peer` opened after `store` took a lock) see one inbox: the
/// peer's opening released none of `store`'s locks, a message locked by one is not handed out by
/// the other, and each settles its own deliveries.
pub async fn peers_share_one_inbox(store: &dyn InboxStore, peer: &dyn InboxStore) {
    let device = fresh_id("tk-inbox-peers");
    for id in ["m1", "m2", "m3"] {
        enqueue(store, &device, id).await;
    }
    let first = lock(store, &device, t(1)).await;
    assert_eq!(first.message.message_id, "m1");
    assert_eq!(peer.depth(&device).await.expect("depth"), 3, "one inbox");
    let by_peer = lock(peer, &device, t(2)).await;
    assert_eq!(
        by_peer.message.message_id, "m2",
        "a message locked by one instance is not handed out by another"
    );
    let third = lock(store, &device, t(3)).await;
    assert_eq!(third.message.message_id, "m3");
    let waiting = peer
        .lock_next(&device, t(4), limits())
        .await
        .expect("lock_next");
    assert!(waiting.locked.is_none(), "every message is locked");
    assert_eq!(waiting.next_due, Some(first.locked_until));
    peer.settle(&device, by_peer.token, Settlement::Complete)
        .await
        .expect("the peer settles its delivery");
    store
        .settle(&device, first.token, Settlement::Complete)
        .await
        .expect("a peer's opening released no lock of another instance");
    assert_eq!(store.depth(&device).await.expect("depth"), 1);
}

/// What [`write_for_reopen`] left, for [`survives_reopen`].
#[derive(Debug)]
pub struct Written {
    device: DeviceId,
    locked: Locked,
    second: InboxMessage,
    last_sequence: u64,
}

/// Queues two messages on a fresh device and locks the first, for [`survives_reopen`].
pub async fn write_for_reopen(store: &dyn InboxStore) -> Written {
    let device = fresh_id("tk-inbox-reopen");
    enqueue(store, &device, "r1").await;
    let second = msg("r2", t(0), HOUR).with_correlation_id("c-r2");
    let (last_sequence, _) = store
        .enqueue(&device, second.clone(), t(0), limits())
        .await
        .expect("enqueue");
    let locked = lock(store, &device, t(1)).await;
    Written {
        device,
        locked,
        second,
        last_sequence,
    }
}

/// A reopened inbox holds every queued message; locks did not survive (their sessions are gone)
/// but delivery counts did, so the held lock's token is `LockLost` and the message comes back
/// with the next delivery number; sequence numbers are never reused.
pub async fn survives_reopen(store: &dyn InboxStore, written: &Written) {
    let device = &written.device;
    assert_eq!(store.depth(device).await.expect("depth"), 2);
    assert!(
        matches!(
            store
                .settle(device, written.locked.token, Settlement::Complete)
                .await,
            Err(Error::LockLost { .. })
        ),
        "a lock does not survive a reopen"
    );
    let again = lock(store, device, t(2)).await;
    assert_eq!(again.message, written.locked.message);
    assert_eq!(
        again.token,
        LockToken {
            sequence: written.locked.token.sequence,
            delivery: written.locked.token.delivery + 1,
        },
        "the delivery count survives a reopen"
    );
    let next = lock(store, device, t(2)).await;
    assert_eq!(next.message, written.second);
    let seq = enqueue(store, device, "r3").await;
    assert!(
        seq > written.last_sequence,
        "sequence numbers are not reused after a reopen"
    );
}
