//! The conformance suite for [`Journal`] implementations.
//!
//! An integrator with a journal of their own (a table in the database that holds their stores,
//! say) runs [`run_all`] once through a [`JournalFactory`]. Every intent the suite begins names
//! devices with fresh ids (a random suffix), and every check looks only at its own intents in
//! [`Journal::pending`], so the suite runs against a journal that already holds entries, and
//! twice against the same database. Each check finishes what it began.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::testkit::fresh_id;
use serde_json::json;

use crate::error::Result;
use crate::journal::{Intent, Journal};

/// Opens the journal under test, and opens it again for the durability check.
#[async_trait]
pub trait JournalFactory: Send + Sync {
    /// The journal to run the suite against. It need not be empty.
    async fn open(&self) -> Result<Arc<dyn Journal>>;

    /// Closes `previous` (the suite holds no other handle to it) and opens the same storage
    /// again, as a restarted process would; `None` when the journal keeps nothing across a
    /// reopen. The provided method is for such journals: it drops `previous` and returns `None`.
    async fn reopen(&self, previous: Arc<dyn Journal>) -> Option<Result<Arc<dyn Journal>>> {
        drop(previous);
        None
    }
}

/// Runs every check on one journal from `factory`, then [`survives_reopen`].
pub async fn run_all(factory: &dyn JournalFactory) {
    let journal = factory
        .open()
        .await
        .unwrap_or_else(|e| panic!("the factory could not open a journal: {e}"));
    let j = journal.as_ref();
    begin_numbers_and_orders(j).await;
    intents_round_trip(j).await;
    finish_forgets(j).await;
    concurrent_begins_get_distinct_numbers(j).await;
    survives_reopen(journal, |journal| async move {
        factory.reopen(journal).await.map(|reopened| {
            reopened.unwrap_or_else(|e| panic!("the factory could not reopen the journal: {e}"))
        })
    })
    .await;
}

/// The devices an intent names.
fn devices(intent: &Intent) -> Vec<&DeviceId> {
    match intent {
        Intent::Register { ids } => ids.iter().collect(),
        Intent::Unregister { id } | Intent::SetStatus { id, .. } => vec![id],
    }
}

/// The pending intents that name one of `ids` (those of this check), in the journal's order.
async fn pending_of(journal: &dyn Journal, ids: &BTreeSet<DeviceId>) -> Vec<(u64, Intent)> {
    journal
        .pending()
        .await
        .expect("pending")
        .into_iter()
        .filter(|(_, intent)| devices(intent).into_iter().any(|id| ids.contains(id)))
        .collect()
}

fn unregister(label: &str) -> Intent {
    Intent::Unregister {
        id: fresh_id(label),
    }
}

fn ids_of<'a>(intents: impl IntoIterator<Item = &'a Intent>) -> BTreeSet<DeviceId> {
    intents.into_iter().flat_map(devices).cloned().collect()
}

async fn begin(journal: &dyn Journal, intent: &Intent) -> u64 {
    journal
        .begin(intent)
        .await
        .unwrap_or_else(|e| panic!("begin {intent:?}: {e}"))
}

/// Each `begin` returns a number larger than every earlier one; `pending` lists the begun
/// intents in that order.
pub async fn begin_numbers_and_orders(journal: &dyn Journal) {
    let intents: Vec<Intent> = (0..5).map(|_| unregister("jk-order")).collect();
    let ids = ids_of(&intents);
    let mut seqs = Vec::new();
    for intent in &intents {
        seqs.push(begin(journal, intent).await);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers grow: {seqs:?}"
    );
    let expected: Vec<(u64, Intent)> = seqs.iter().copied().zip(intents).collect();
    assert_eq!(pending_of(journal, &ids).await, expected, "begin order");
    for seq in seqs {
        journal.finish(seq).await.expect("finish");
    }
    assert_eq!(pending_of(journal, &ids).await, vec![]);
}

/// Every kind of intent comes back from `pending` exactly as begun.
pub async fn intents_round_trip(journal: &dyn Journal) {
    let intents = vec![
        Intent::Register {
            ids: vec![
                fresh_id("jk-trip-reg"),
                fresh_id("jk-trip-reg"),
                fresh_id("jk-trip-reg"),
            ],
        },
        Intent::Register {
            ids: vec![fresh_id("jk-trip-one")],
        },
        unregister("jk-trip-unreg"),
        Intent::SetStatus {
            id: fresh_id("jk-trip-on"),
            enabled: true,
            reason: String::new(),
            patch: json!({}),
        },
        Intent::SetStatus {
            id: fresh_id("jk-trip-off"),
            enabled: false,
            reason: "stolen — «reported» by the owner\n\"quoted\"".into(),
            patch: json!({"metadata": {"site": {"room": "B7", "floor": 3, "old": null},
                "tags": ["a", "b"], "ratio": 0.25, "ok": true}}),
        },
    ];
    let ids = ids_of(&intents);
    let mut begun = Vec::new();
    for intent in &intents {
        begun.push((begin(journal, intent).await, intent.clone()));
    }
    assert_eq!(pending_of(journal, &ids).await, begun, "intents round-trip");
    for (seq, _) in begun {
        journal.finish(seq).await.expect("finish");
    }
}

/// `finish` and `finish_unsynced` remove an intent from `pending`, and only that one; `sync`
/// succeeds after them.
pub async fn finish_forgets(journal: &dyn Journal) {
    let intents: Vec<Intent> = (0..4).map(|_| unregister("jk-finish")).collect();
    let ids = ids_of(&intents);
    let mut seqs = Vec::new();
    for intent in &intents {
        seqs.push(begin(journal, intent).await);
    }
    let entry = |i: usize| (seqs[i], intents[i].clone());
    journal.finish(seqs[1]).await.expect("finish");
    assert_eq!(
        pending_of(journal, &ids).await,
        vec![entry(0), entry(2), entry(3)]
    );
    journal
        .finish_unsynced(seqs[3])
        .await
        .expect("finish_unsynced");
    assert_eq!(
        pending_of(journal, &ids).await,
        vec![entry(0), entry(2)],
        "an unsynced finish is seen at once"
    );
    journal.sync().await.expect("sync");
    journal.sync().await.expect("a sync with nothing to do");
    journal.finish(seqs[0]).await.expect("finish");
    journal.finish(seqs[2]).await.expect("finish");
    assert_eq!(pending_of(journal, &ids).await, vec![]);
}

/// Concurrent `begin`s each get their own number, and all are pending.
pub async fn concurrent_begins_get_distinct_numbers(journal: &dyn Journal) {
    let intents: Vec<Intent> = (0..8).map(|_| unregister("jk-race")).collect();
    let ids = ids_of(&intents);
    let seqs: Vec<u64> =
        futures::future::join_all(intents.iter().map(|intent| begin(journal, intent))).await;
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), seqs.len(), "numbers are distinct: {seqs:?}");
    let pending = pending_of(journal, &ids).await;
    assert_eq!(pending.len(), intents.len());
    assert!(
        pending.windows(2).all(|w| w[0].0 < w[1].0),
        "pending is in number order"
    );
    for (seq, intent) in &pending {
        let i = seqs.iter().position(|s| s == seq).expect("a begun number");
        assert_eq!(intent, &intents[i], "each number names its own intent");
    }
    for seq in seqs {
        journal.finish(seq).await.expect("finish");
    }
}

/// What a reopened journal must give back: the intents begun and not finished, and numbers
/// larger than every one given out before. `reopen` closes `journal` (the caller's only
/// handle) and opens the same storage again; `None` skips the check.
pub async fn survives_reopen<F, Fut>(journal: Arc<dyn Journal>, reopen: F)
where
    F: FnOnce(Arc<dyn Journal>) -> Fut,
    Fut: std::future::Future<Output = Option<Arc<dyn Journal>>>,
{
    let intents: Vec<Intent> = (0..4).map(|_| unregister("jk-reopen")).collect();
    let ids = ids_of(&intents);
    let mut seqs = Vec::new();
    for intent in &intents {
        seqs.push(begin(journal.as_ref(), intent).await);
    }
    journal.finish(seqs[1]).await.expect("finish");
    journal
        .finish_unsynced(seqs[2])
        .await
        .expect("finish_unsynced");
    journal.sync().await.expect("sync");
    let highest = journal
        .pending()
        .await
        .expect("pending")
        .iter()
        .map(|(seq, _)| *seq)
        .chain(seqs.iter().copied())
        .max()
        .unwrap_or(0);

    let Some(journal) = reopen(journal).await else {
        return;
    };
    assert_eq!(
        pending_of(journal.as_ref(), &ids).await,
        vec![(seqs[0], intents[0].clone()), (seqs[3], intents[3].clone())],
        "exactly the unfinished intents survive a reopen, with their numbers"
    );
    let later = unregister("jk-reopen-later");
    let seq = begin(journal.as_ref(), &later).await;
    assert!(
        seq > highest,
        "a begin after a reopen numbers {seq}, not above {highest} given out before"
    );
    for seq in [seqs[0], seqs[3], seq] {
        journal.finish(seq).await.expect("finish");
    }
    let mut all_ids = ids;
    all_ids.extend(devices(&later).into_iter().cloned());
    assert_eq!(pending_of(journal.as_ref(), &all_ids).await, vec![]);
}
