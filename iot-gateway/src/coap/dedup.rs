//! Message deduplication (RFC 7252 §4.5): a request retransmitted because its acknowledgement
//! was lost must not be processed twice, and must get the first answer again.
//!
//! Keyed by the peer's address and the message id. An entry is `InProgress` while the first
//! copy is being processed (a duplicate is then dropped: the client retransmits again later,
//! and will find the answer), then holds the encoded answer until the exchange lifetime ends.
//! Bounded in count: when full, the oldest entry is forgotten (a duplicate arriving after that
//! would be processed again; at-least-once still holds).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

type Key = (SocketAddr, u16);

enum State {
    InProgress,
    Answered(Vec<u8>),
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// First time: process it.
    New,
    /// A duplicate of one still being processed: drop it.
    InProgress,
    /// A duplicate of one answered: send this again.
    Answered(Vec<u8>),
}

pub(super) struct Dedup {
    /// Each entry with the instant it was recorded at.
    entries: HashMap<Key, (Instant, State)>,
    /// Recording order, for expiry and eviction. A key forgotten and recorded again appears
    /// twice; only the item whose instant matches its entry's stands for it.
    order: VecDeque<(Instant, Key)>,
    lifetime: Duration,
    capacity: usize,
}

impl Dedup {
    pub(super) fn new(lifetime: Duration, capacity: usize) -> Self {
        Dedup {
            entries: HashMap::new(),
            order: VecDeque::new(),
            lifetime,
            capacity: capacity.max(1),
        }
    }

    /// Records a request (`New` the first time within the lifetime).
    pub(super) fn check(&mut self, peer: SocketAddr, message_id: u16, now: Instant) -> Seen {
        self.expire(now);
        let key = (peer, message_id);
        match self.entries.get(&key) {
            Some((_, State::InProgress)) => return Seen::InProgress,
            Some((_, State::Answered(bytes))) => return Seen::Answered(bytes.clone()),
            None => {}
        }
        // Forgotten keys leave stale items in `order`; bound those too.
        while self.entries.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            self.remove_if_recorded_at(old, at);
        }
        self.entries.insert(key, (now, State::InProgress));
        self.order.push_back((now, key));
        Seen::New
    }

    /// Stores the answer to a request recorded by [`check`](Self::check).
    pub(super) fn answered(&mut self, peer: SocketAddr, message_id: u16, answer: Vec<u8>) {
        if let Some((_, state)) = self.entries.get_mut(&(peer, message_id)) {
            *state = State::Answered(answer);
        }
    }

    /// Forgets a request that got no answer (dropped), so that a retransmission is processed.
    pub(super) fn forget(&mut self, peer: SocketAddr, message_id: u16) {
        if let Some((_, State::InProgress)) = self.entries.get(&(peer, message_id)) {
            self.entries.remove(&(peer, message_id));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front().copied() {
            if now.duration_since(at) < self.lifetime {
                break;
            }
            self.order.pop_front();
            self.remove_if_recorded_at(key, at);
        }
    }

    fn remove_if_recorded_at(&mut self, key: Key, at: Instant) {
        if self
            .entries
            .get(&key)
            .is_some_and(|(recorded, _)| *recorded == at)
        {
            self.entries.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn duplicates_in_progress_then_answered_then_expired() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 100);
        assert_eq!(d.check(peer(1), 7, t0), Seen::New);
        assert_eq!(d.check(peer(1), 7, t0), Seen::InProgress);
        // Same id from another peer is another exchange.
        assert_eq!(d.check(peer(2), 7, t0), Seen::New);
        d.answered(peer(1), 7, vec![1, 2]);
        assert_eq!(d.check(peer(1), 7, t0), Seen::Answered(vec![1, 2]));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(d.check(peer(1), 7, later), Seen::New);
    }

    #[test]
    fn bounded_and_forgettable() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 3);
        for id in 0..10 {
            assert_eq!(d.check(peer(1), id, t0), Seen::New);
        }
        assert!(d.len() <= 3);
        d.forget(peer(1), 9);
        assert_eq!(d.check(peer(1), 9, t0), Seen::New);
    }
}
