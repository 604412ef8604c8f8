//! Budgets of failed logins on `POST /auth/login`: a token bucket per user name and one per peer
//! address ([`LoginLimit`]), the buckets of [`crate::throttle`].
//!
//! An attempt takes a token from both buckets *before* the password is checked, so that
//! concurrent guesses cannot all pass a check made before any of them failed, and a refused
//! attempt costs no argon2 hashing. A successful login gives both tokens back: only failures
//! count.
//!
//! The per-user budget is a trade-off: it stops a slow guesser spread over many addresses, but
//! whoever knows a user name can keep that user's budget empty (each refill spent by one bad
//! guess), locking the user out of new logins while the attack lasts. Sessions already open
//! keep working. `per_user: 0` turns it off where that matters more than the guessing.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iot_identity::access::UserName;

use super::config::LoginLimit;
use crate::sync_util::lock;
use crate::throttle::{KeyedBuckets, PeerKey, Rate};

/// The failed-login buckets of one HTTP endpoint.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    user_rate: Option<Rate>,
    peer_rate: Option<Rate>,
    users: Mutex<KeyedBuckets<UserName>>,
    peers: Mutex<KeyedBuckets<PeerKey>>,
}

/// An attempt that holds a token of its user's and its peer's bucket: give it back with
/// [`LoginThrottle::give_back`] when the login succeeds.
#[derive(Debug)]
pub(crate) struct Attempt {
    user: Option<UserName>,
    peer: Option<PeerKey>,
}

impl LoginThrottle {
    pub(crate) fn new(limit: LoginLimit) -> Self {
        let rate = |burst: u32| {
            (burst > 0).then(|| {
                let refill = limit.refill_every.as_secs_f64();
                Rate::new(
                    if refill > 0.0 { 1.0 / refill } else { f64::MAX },
                    f64::from(burst),
                )
            })
        };
        LoginThrottle {
            user_rate: rate(limit.per_user),
            peer_rate: rate(limit.per_peer),
            users: Mutex::new(KeyedBuckets::new()),
            peers: Mutex::new(KeyedBuckets::new()),
        }
    }

    /// Takes an attempt for `user` (the name as sent) from `peer`, or says how long until one
    /// is there. A name that cannot be a user's is charged to the peer alone: it can never log
    /// in, and keying buckets by arbitrary text would let a caller grow the map with it.
    pub(crate) fn attempt(&self, user: &str, peer: Option<IpAddr>) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let peer = peer.map(PeerKey::of);
        let user = UserName::new(user).ok();
        if let (Some(rate), Some(key)) = (self.peer_rate, &peer) {
            lock(&self.peers).bucket(key, rate, now).take(rate, now)?;
        }
        if let (Some(rate), Some(key)) = (self.user_rate, &user)
            && let Err(wait) = lock(&self.users).bucket(key, rate, now).take(rate, now)
        {
            // The peer's token was not used for a check: give it back.
            self.refund_peer(peer.as_ref());
            return Err(wait);
        }
        Ok(Attempt { user, peer })
    }

    /// `attempt` does not count (the login succeeded, or the store failed): its tokens go back.
    pub(crate) fn give_back(&self, attempt: Attempt) {
        self.refund_peer(attempt.peer.as_ref());
        if let (Some(rate), Some(key)) = (self.user_rate, &attempt.user) {
            lock(&self.users).refund(key, rate);
        }
    }

    fn refund_peer(&self, peer: Option<&PeerKey>) {
        if let (Some(rate), Some(key)) = (self.peer_rate, peer) {
            lock(&self.peers).refund(key, rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn failures_spend_both_budgets_and_successes_give_back() {
        let throttle = LoginThrottle::new(LoginLimit::new(2, 4, Duration::from_secs(3600)));
        // Two failures for ann from one address spend her budget, half of the address's.
        for _ in 0..2 {
            assert!(throttle.attempt("ann", ip("192.0.2.1")).is_ok());
        }
        assert!(
            throttle.attempt("ann", ip("192.0.2.2")).is_err(),
            "per user"
        );
        // Successes give their tokens back: bob logs in as often as he likes.
        for _ in 0..5 {
            let Ok(attempt) = throttle.attempt("bob", ip("192.0.2.1")) else {
                panic!("a success must give its tokens back")
            };
            throttle.give_back(attempt);
        }
        assert!(throttle.attempt("bob", ip("192.0.2.1")).is_ok());
        assert!(throttle.attempt("carl", ip("192.0.2.1")).is_ok());
        assert!(
            throttle.attempt("dan", ip("192.0.2.1")).is_err(),
            "per peer"
        );
        // ann's refused attempt gave 192.0.2.2 its token back: four failures left there.
        for user in ["eve", "eve", "fay", "fay"] {
            assert!(throttle.attempt(user, ip("192.0.2.2")).is_ok(), "{user}");
        }
        assert!(throttle.attempt("gus", ip("192.0.2.2")).is_err());
        // An IPv6 /64 is one peer.
        for (user, addr) in [("u", "::1"), ("v", "::2"), ("w", "::3"), ("x", "::4")] {
            assert!(
                throttle
                    .attempt(user, ip(&format!("2001:db8{addr}")))
                    .is_ok()
            );
        }
        assert!(throttle.attempt("y", ip("2001:db8::5")).is_err());
        assert!(throttle.attempt("y", ip("2001:db8:0:1::5")).is_ok());
        // A name that cannot be a user's is charged to its peer alone; no peer, no peer budget.
        assert!(
            throttle
                .attempt(&"n".repeat(10_000), ip("192.0.2.9"))
                .is_ok()
        );
        assert!(throttle.attempt("ann", None).is_err());
        assert!(throttle.attempt("hal", None).is_ok());
    }

    #[test]
    fn zero_turns_a_budget_off() {
        let throttle = LoginThrottle::new(LoginLimit::new(0, 0, Duration::from_secs(3600)));
        for _ in 0..100 {
            assert!(throttle.attempt("ann", ip("192.0.2.1")).is_ok());
        }
    }
}
