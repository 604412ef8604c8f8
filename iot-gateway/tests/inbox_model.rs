//! The inbox stores against a simple model: random sequences of queueing, locking, settling,
//! time passing and (for the file store) reopening, with the same answers from model and store.

use std::time::Duration;

use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::{InboxMessage, LockOutcome, Settlement};
use iot_gateway::{
    Error, FeedbackStatus, FileInbox, FileInboxConfig, InboxLimits, InboxStore, LockToken,
    MemoryInbox,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Enqueue { ttl_ms: u64 },
    Lock,
    Settle { pick: usize, how: u8 },
    Advance { ms: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..200).prop_map(|ttl_ms| Op::Enqueue { ttl_ms }),
        3 => Just(Op::Lock),
        3 => (0usize..4, 0u8..3).prop_map(|(pick, how)| Op::Settle { pick, how }),
        1 => (1u64..120).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reopen),
    ]
}

/// The limits under test (a function: the builder is not `const`).
fn limits() -> InboxLimits {
    InboxLimits::default()
        .max_depth(5)
        .lock_duration(Duration::from_millis(50))
        .max_delivery_count(3)
}

/// The model: one device's queue as a plain list.
#[derive(Default)]
struct Model {
    queue: Vec<Entry>,
    next_seq: u64,
}

struct Entry {
    seq: u64,
    id: String,
    expires: u64,
    count: u32,
    locked_until: Option<u64>,
}

type Gone = Vec<(String, FeedbackStatus)>;

impl Model {
    fn purge(&mut self, now: u64, gone: &mut Gone) {
        self.queue.retain(|e| {
            let keep = e.expires > now;
            if !keep {
                gone.push((e.id.clone(), FeedbackStatus::Expired));
            }
            keep
        });
    }

    fn enqueue(&mut self, id: String, now: u64, ttl: u64) -> Result<Gone, ()> {
        let mut gone = Vec::new();
        self.purge(now, &mut gone);
        if self.queue.len() >= limits().max_depth {
            return Err(());
        }
        self.next_seq += 1;
        self.queue.push(Entry {
            seq: self.next_seq,
            id,
            expires: now + ttl,
            count: 0,
            locked_until: None,
        });
        Ok(gone)
    }

    fn lock(&mut self, now: u64) -> (Option<LockToken>, Gone) {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let e = &mut self.queue[i];
            if e.expires <= now {
                gone.push((e.id.clone(), FeedbackStatus::Expired));
                self.queue.remove(i);
                continue;
            }
            if e.locked_until.is_some_and(|u| u > now) {
                i += 1;
                continue;
            }
            if e.count >= limits().max_delivery_count {
                gone.push((e.id.clone(), FeedbackStatus::DeliveryCountExceeded));
                self.queue.remove(i);
                continue;
            }
            e.count += 1;
            e.locked_until = Some(now + limits().lock_duration.as_millis() as u64);
            return (
                Some(LockToken {
                    sequence: e.seq,
                    delivery: e.count,
                }),
                gone,
            );
        }
        (None, gone)
    }

    fn settle(&mut self, token: LockToken, how: Settlement) -> Result<Option<Gone>, ()> {
        let i = self
            .queue
            .iter()
            .position(|e| {
                e.seq == token.sequence && e.count == token.delivery && e.locked_until.is_some()
            })
            .ok_or(())?;
        Ok(match how {
            Settlement::Abandon => {
                self.queue[i].locked_until = None;
                None
            }
            Settlement::Complete => Some(vec![(self.queue.remove(i).id, FeedbackStatus::Success)]),
            _ => Some(vec![(self.queue.remove(i).id, FeedbackStatus::Rejected)]),
        })
    }

    fn reopen(&mut self) {
        for e in &mut self.queue {
            e.locked_until = None;
        }
    }
}

fn ids(removed: &[iot_gateway::inbox::Removed]) -> Gone {
    removed
        .iter()
        .map(|r| (r.message.message_id.clone(), r.status))
        .collect()
}

async fn run(ops: Vec<Op>, file: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let options = FileInboxConfig::default()
        .durability(iot_gateway::Durability::OsBuffered)
        // Compact often, so snapshots are exercised too.
        .compact_after_bytes(2048);
    let open = || async {
        let store: Box<dyn InboxStore> = if file {
            Box::new(FileInbox::open(dir.path(), options).await.expect("open"))
        } else {
            Box::new(MemoryInbox::new())
        };
        store
    };
    let mut store = open().await;
    let device: DeviceId = "model-device".parse().expect("id");
    let mut model = Model::default();
    let mut now = 1_000_000u64;
    let mut tokens: Vec<LockToken> = Vec::new();
    let mut n = 0;
    for op in ops {
        let t = Timestamp::from_unix_millis(now);
        match op {
            Op::Enqueue { ttl_ms } => {
                n += 1;
                let id = format!("m{n}");
                let msg = InboxMessage::new(id.clone(), "x", t, Duration::from_millis(ttl_ms));
                let got = store.enqueue(&device, msg, t, limits()).await;
                match (model.enqueue(id, now, ttl_ms), got) {
                    (Ok(gone), Ok((_, removed))) => assert_eq!(ids(&removed), gone),
                    (Err(()), Err(Error::QueueFull { .. })) => {}
                    (m, s) => panic!("model {m:?}, store {s:?}"),
                }
            }
            Op::Lock => {
                let LockOutcome {
                    locked, removed, ..
                } = store.lock_next(&device, t, limits()).await.expect("lock");
                let (token, gone) = model.lock(now);
                assert_eq!(locked.map(|l| l.token), token);
                assert_eq!(ids(&removed), gone);
                tokens.extend(token);
            }
            Op::Settle { pick, how } => {
                let Some(&token) = tokens.get(pick % tokens.len().max(1)) else {
                    continue;
                };
                let how = [
                    Settlement::Complete,
                    Settlement::Abandon,
                    Settlement::Reject,
                ][usize::from(how)];
                let got = store.settle(&device, token, how).await;
                match (model.settle(token, how), got) {
                    (Ok(gone), Ok(removed)) => {
                        assert_eq!(removed.map(|r| ids(&[r])), gone)
                    }
                    (Err(()), Err(Error::LockLost { .. })) => {}
                    (m, s) => panic!("model {m:?}, store {s:?}"),
                }
            }
            Op::Advance { ms } => now += ms,
            Op::Reopen => {
                if file {
                    drop(store);
                    store = open().await;
                    model.reopen();
                }
            }
        }
        assert_eq!(
            store.depth(&device).await.expect("depth"),
            model.queue.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn memory_inbox_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        rt.block_on(run(ops, false));
    }

    #[test]
    fn file_inbox_matches_the_model_across_reopens(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        rt.block_on(run(ops, true));
    }
}
