//! Finished registrations, kept for the status request that follows each.
//!
//! Over MQTT a connection remembers its own operations; over HTTPS every request may come on a
//! new connection, so the endpoint keeps them, keyed by registration id and operation id (a
//! device asks only for its own), bounded in number and age so that a flood of registrations
//! cannot grow memory without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

type Key = (String, String);

/// A bounded, expiring map from (registration id, operation id) to the `200` body.
pub(super) struct Operations {
    max: usize,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bodies: HashMap<Key, (Instant, Value)>,
    /// Insertion order, for expiry and eviction of the oldest.
    order: VecDeque<(Instant, Key)>,
}

impl Operations {
    pub(super) fn new(max: usize, ttl: Duration) -> Self {
        Operations {
            max: max.max(1),
            ttl,
            state: Mutex::default(),
        }
    }

    /// Remembers a finished operation.
    pub(super) fn insert(&self, registration_id: &str, operation_id: &str, body: Value) {
        let now = Instant::now();
        let key = (registration_id.to_owned(), operation_id.to_owned());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(now, self.ttl);
        while state.bodies.len() >= self.max {
            if !state.pop_oldest() {
                break;
            }
        }
        state.order.push_back((now, key.clone()));
        state.bodies.insert(key, (now, body));
    }

    /// The body of a finished operation of `registration_id`, if it is still kept.
    pub(super) fn get(&self, registration_id: &str, operation_id: &str) -> Option<Value> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.expire(now, self.ttl);
        state
            .bodies
            .get(&(registration_id.to_owned(), operation_id.to_owned()))
            .map(|(_, body)| body.clone())
    }
}

impl State {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry; `false` when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        // Only if the map's entry is this one (ids are random, but be exact).
        if self.bodies.get(&key).is_some_and(|(t, _)| *t == at) {
            self.bodies.remove(&key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keeps_at_most_max_and_drops_the_oldest() {
        let ops = Operations::new(2, Duration::from_secs(60));
        ops.insert("a", "1", json!(1));
        ops.insert("b", "2", json!(2));
        ops.insert("c", "3", json!(3));
        assert_eq!(ops.get("a", "1"), None);
        assert_eq!(ops.get("b", "2"), Some(json!(2)));
        assert_eq!(ops.get("c", "3"), Some(json!(3)));
    }

    #[test]
    fn an_operation_is_found_only_for_its_registration() {
        let ops = Operations::new(8, Duration::from_secs(60));
        ops.insert("a", "1", json!(1));
        assert_eq!(ops.get("b", "1"), None);
        assert_eq!(ops.get("a", "2"), None);
    }

    #[test]
    fn expired_operations_are_gone() {
        let ops = Operations::new(8, Duration::ZERO);
        ops.insert("a", "1", json!(1));
        assert_eq!(ops.get("a", "1"), None);
    }
}
