//! Connections that have not authenticated yet, counted per peer address.
//!
//! A connection takes one of the server's `max_connections` slots when it is accepted, before
//! the TLS handshake, the WebSocket upgrade and CONNECT, and may keep it for up to the connect
//! timeout without proving anything. Without a per-address cap one host could hold every slot
//! that way and keep all devices out. A device behind the same address needs a slot only for the
//! moment between its TCP connect and its CONNACK, so a cap far below `max_connections` costs a
//! well-behaved NAT nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sync_util::lock;
use crate::throttle::PeerKey;

/// How many connections of each peer address are between accept and authentication.
#[derive(Debug)]
pub(crate) struct PendingPeers {
    limit: usize,
    counts: Mutex<HashMap<PeerKey, usize>>,
}

impl PendingPeers {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(PendingPeers {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or `None` if that address already has `limit`
    /// connections waiting to authenticate.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PendingGuard> {
        let key = PeerKey::of(ip);
        let mut counts = lock(&self.counts);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PendingGuard {
            peers: self.clone(),
            key,
        })
    }
}

/// One connection's place in its address's count; dropped once it authenticated (or ended).
#[derive(Debug)]
pub(crate) struct PendingGuard {
    peers: Arc<PendingPeers>,
    key: PeerKey,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.peers.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            // Memory follows the addresses with connections in the handshake, nothing more.
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_forgets_it_when_done() {
        let peers = PendingPeers::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = peers.enter(a).expect("first");
        let _second = peers.enter(a).expect("second");
        assert!(peers.enter(a).is_none());
        assert!(peers.enter(b).is_some());
        drop(first);
        assert!(peers.enter(a).is_some());
        drop(_second);
        assert!(lock(&peers.counts).is_empty());
    }
}
