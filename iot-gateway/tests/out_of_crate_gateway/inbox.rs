//! The C2D inbox of the out-of-crate gateway: per device, a `BTreeMap` from sequence number to
//! message, each with its delivery count and the lock (session, until when) of its current
//! delivery. Plain synchronous state: the gateway calls it under one `Mutex`, so a lookup never
//! spans an `.await` and a cancelled `next_event` cannot leave a message locked for nobody.

use std::collections::BTreeMap;

use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::{InboxMessage, Removed};
use iot_gateway::{C2dDelivery, Error, FeedbackStatus, InboxLimits, LockToken, Result};

/// Which session holds a delivery, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lock {
    session: u64,
    until: Timestamp,
}

#[derive(Debug)]
struct Entry {
    message: InboxMessage,
    /// Deliveries so far; the current delivery's lock token carries it.
    delivery_count: u32,
    lock: Option<Lock>,
}

impl Entry {
    /// The lock, if it has not lapsed at `now`.
    fn live_lock(&self, now: Timestamp) -> Option<Lock> {
        self.lock.filter(|l| l.until > now)
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// Never reused, so a stale token can never name a newer message.
    next_sequence: u64,
    entries: BTreeMap<u64, Entry>,
}

impl Queue {
    /// Removes expired messages, returning them as `Expired`.
    fn purge(&mut self, device: &DeviceId, now: Timestamp) -> Vec<Removed> {
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.message.expires_at <= now)
            .map(|(&seq, _)| seq)
            .collect();
        expired
            .into_iter()
            .filter_map(|seq| self.remove(device, seq, FeedbackStatus::Expired))
            .collect()
    }

    fn remove(&mut self, device: &DeviceId, seq: u64, status: FeedbackStatus) -> Option<Removed> {
        let e = self.entries.remove(&seq)?;
        Some(Removed::new(
            device.clone(),
            e.message,
            status,
            e.delivery_count,
        ))
    }
}

/// What a lookup found.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// The message now locked to the session.
    pub(crate) delivery: Option<C2dDelivery>,
    /// Messages that left the inbox on the way (expired, delivered too often).
    pub(crate) removed: Vec<Removed>,
    /// When nothing was handed out: when the earliest live lock lapses.
    pub(crate) next_due: Option<Timestamp>,
}

/// Every device's queue.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queues: BTreeMap<DeviceId, Queue>,
}

impl Inbox {
    /// Queues `message`, after dropping the device's expired messages (returned, for feedback).
    pub(crate) fn enqueue(
        &mut self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<Vec<Removed>> {
        let queue = self.queues.entry(device.clone()).or_default();
        let removed = queue.purge(device, now);
        if queue.entries.len() >= limits.max_depth {
            return Err(Error::QueueFull {
                device: device.clone(),
                queue: "inbox",
                limit: limits.max_depth,
            });
        }
        let seq = queue.next_sequence;
        queue.next_sequence += 1;
        queue.entries.insert(
            seq,
            Entry {
                message,
                delivery_count: 0,
                lock: None,
            },
        );
        Ok(removed)
    }

    /// Locks the oldest available message of `device` for `session`, unless the session already
    /// holds `window` live locks. On the way it removes expired messages and those delivered
    /// `max_delivery_count` times.
    pub(crate) fn lock_next(
        &mut self,
        device: &DeviceId,
        session: u64,
        window: usize,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Lookup {
        let mut out = Lookup::default();
        let Some(queue) = self.queues.get_mut(device) else {
            return out;
        };
        out.removed = queue.purge(device, now);
        let held = queue
            .entries
            .values()
            .filter(|e| e.live_lock(now).is_some_and(|l| l.session == session))
            .count();
        let sequences: Vec<u64> = queue.entries.keys().copied().collect();
        for seq in sequences {
            let Some(entry) = queue.entries.get_mut(&seq) else {
                continue;
            };
            if let Some(lock) = entry.live_lock(now) {
                out.next_due = Some(out.next_due.map_or(lock.until, |d| d.min(lock.until)));
                continue;
            }
            if entry.delivery_count >= limits.max_delivery_count {
                out.removed.extend(queue.remove(
                    device,
                    seq,
                    FeedbackStatus::DeliveryCountExceeded,
                ));
                continue;
            }
            if held >= window {
                continue;
            }
            entry.delivery_count += 1;
            let until = now.saturating_add(limits.lock_duration);
            entry.lock = Some(Lock { session, until });
            let token = LockToken {
                sequence: seq,
                delivery: entry.delivery_count,
            };
            out.delivery = Some(C2dDelivery::new(token, entry.message.clone(), until));
            out.next_due = None;
            break;
        }
        out
    }

    /// Settles the delivery `token` names, if it is still `session`'s: `Success` and `Rejected`
    /// remove the message (returned), `None` gives it back. A lapsed lock that no lookup took
    /// over still settles (the device was only slow); once the message is locked again, the
    /// old token is `LockLost`.
    pub(crate) fn settle(
        &mut self,
        device: &DeviceId,
        session: u64,
        token: LockToken,
        outcome: Option<FeedbackStatus>,
    ) -> Result<Option<Removed>> {
        let lost = || Error::LockLost {
            device: device.clone(),
            token: token.to_string(),
        };
        let queue = self.queues.get_mut(device).ok_or_else(lost)?;
        let entry = queue.entries.get_mut(&token.sequence).ok_or_else(lost)?;
        let held = entry.lock.is_some_and(|l| l.session == session);
        if !held || entry.delivery_count != token.delivery {
            return Err(lost());
        }
        match outcome {
            Some(status) => Ok(queue.remove(device, token.sequence, status)),
            None => {
                entry.lock = None;
                Ok(None)
            }
        }
    }

    /// Gives back every message `session` holds (it closed); their delivery counts stay raised.
    pub(crate) fn release(&mut self, device: &DeviceId, session: u64) {
        if let Some(queue) = self.queues.get_mut(device) {
            for entry in queue.entries.values_mut() {
                if entry.lock.is_some_and(|l| l.session == session) {
                    entry.lock = None;
                }
            }
        }
    }

    /// Removes every expired message of every device.
    pub(crate) fn purge_expired(&mut self, now: Timestamp) -> Vec<Removed> {
        self.queues
            .iter_mut()
            .flat_map(|(device, queue)| queue.purge(device, now))
            .collect()
    }

    /// Forgets a deleted device's messages.
    pub(crate) fn remove_device(&mut self, device: &DeviceId) {
        self.queues.remove(device);
    }
}
