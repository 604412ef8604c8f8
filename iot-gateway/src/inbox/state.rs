//! The inbox state machine shared by every store: plans operations, applies them.

use std::collections::{BTreeMap, HashMap};

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{InboxLimits, InboxMessage, LockOutcome, Locked, Removed, Settlement};
use crate::error::{Error, Result};
use crate::message::{FeedbackStatus, LockToken};
use iot_core::storage::Journaled;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    message: InboxMessage,
    delivery_count: u32,
    locked_until: Option<Timestamp>,
}

/// One change of the inbox; what the file store journals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Enqueue {
        device: DeviceId,
        seq: u64,
        message: InboxMessage,
        delivery_count: u32,
    },
    Lock {
        device: DeviceId,
        seq: u64,
        delivery_count: u32,
        until: Timestamp,
    },
    Unlock {
        device: DeviceId,
        seq: u64,
    },
    Remove {
        device: DeviceId,
        seq: u64,
    },
    /// Sequence numbers up to `seq` are used (kept across snapshots so none is reused).
    Watermark {
        seq: u64,
    },
}

/// Every device's queue.
#[derive(Debug, Default)]
pub(crate) struct InboxState {
    devices: HashMap<DeviceId, BTreeMap<u64, Entry>>,
    next_seq: u64,
}

impl InboxState {
    fn removed(device: &DeviceId, e: &Entry, status: FeedbackStatus) -> Removed {
        Removed {
            device: device.clone(),
            message: e.message.clone(),
            status,
            delivery_count: e.delivery_count,
        }
    }

    fn expired_of(
        &self,
        device: &DeviceId,
        now: Timestamp,
        ops: &mut Vec<Op>,
        out: &mut Vec<Removed>,
    ) {
        if let Some(queue) = self.devices.get(device) {
            for (seq, e) in queue {
                if e.message.expires_at <= now {
                    ops.push(Op::Remove {
                        device: device.clone(),
                        seq: *seq,
                    });
                    out.push(Self::removed(device, e, FeedbackStatus::Expired));
                }
            }
        }
    }

    pub(crate) fn plan_enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(Vec<Op>, u64, Vec<Removed>)> {
        let mut ops = Vec::new();
        let mut removed = Vec::new();
        self.expired_of(device, now, &mut ops, &mut removed);
        // `removed` holds only entries of this device's queue, so it is never longer.
        let depth = self
            .devices
            .get(device)
            .map_or(0, BTreeMap::len)
            .saturating_sub(removed.len());
        if depth >= limits.max_depth {
            return Err(Error::QueueFull {
                device: device.clone(),
                queue: "inbox",
                limit: limits.max_depth,
            });
        }
        let seq = self.next_seq + 1;
        ops.push(Op::Enqueue {
            device: device.clone(),
            seq,
            message,
            delivery_count: 0,
        });
        Ok((ops, seq, removed))
    }

    pub(crate) fn plan_lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> (Vec<Op>, LockOutcome) {
        let mut ops = Vec::new();
        let mut outcome = LockOutcome::default();
        let Some(queue) = self.devices.get(device) else {
            return (ops, outcome);
        };
        for (seq, e) in queue {
            let remove = Op::Remove {
                device: device.clone(),
                seq: *seq,
            };
            if e.message.expires_at <= now {
                ops.push(remove);
                outcome
                    .removed
                    .push(Self::removed(device, e, FeedbackStatus::Expired));
                continue;
            }
            if let Some(until) = e.locked_until
                && until > now
            {
                outcome.next_due = Some(outcome.next_due.map_or(until, |d| d.min(until)));
                continue;
            }
            if e.delivery_count >= limits.max_delivery_count {
                ops.push(remove);
                outcome.removed.push(Self::removed(
                    device,
                    e,
                    FeedbackStatus::DeliveryCountExceeded,
                ));
                continue;
            }
            // Below `max_delivery_count` (checked just above), so adding one cannot overflow.
            let delivery_count = e.delivery_count + 1;
            let until = now.saturating_add(limits.lock_duration);
            ops.push(Op::Lock {
                device: device.clone(),
                seq: *seq,
                delivery_count,
                until,
            });
            outcome.locked = Some(Locked {
                token: LockToken {
                    sequence: *seq,
                    delivery: delivery_count,
                },
                message: e.message.clone(),
                locked_until: until,
            });
            outcome.next_due = None;
            break;
        }
        (ops, outcome)
    }

    pub(crate) fn plan_settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<(Op, Option<Removed>)> {
        let entry = self
            .devices
            .get(device)
            .and_then(|q| q.get(&token.sequence))
            .filter(|e| e.locked_until.is_some() && e.delivery_count == token.delivery)
            .ok_or_else(|| Error::LockLost {
                device: device.clone(),
                token: token.to_string(),
            })?;
        let remove = Op::Remove {
            device: device.clone(),
            seq: token.sequence,
        };
        Ok(match settlement {
            Settlement::Complete => (
                remove,
                Some(Self::removed(device, entry, FeedbackStatus::Success)),
            ),
            Settlement::Reject => (
                remove,
                Some(Self::removed(device, entry, FeedbackStatus::Rejected)),
            ),
            Settlement::Abandon => (
                Op::Unlock {
                    device: device.clone(),
                    seq: token.sequence,
                },
                None,
            ),
        })
    }

    pub(crate) fn plan_purge(&self, now: Timestamp) -> (Vec<Op>, Vec<Removed>) {
        let mut ops = Vec::new();
        let mut removed = Vec::new();
        for device in self.devices.keys() {
            self.expired_of(device, now, &mut ops, &mut removed);
        }
        (ops, removed)
    }

    pub(crate) fn plan_remove_device(&self, device: &DeviceId) -> Vec<Op> {
        self.devices.get(device).map_or_else(Vec::new, |q| {
            q.keys()
                .map(|seq| Op::Remove {
                    device: device.clone(),
                    seq: *seq,
                })
                .collect()
        })
    }

    pub(crate) fn depth(&self, device: &DeviceId) -> usize {
        self.devices.get(device).map_or(0, BTreeMap::len)
    }

    /// Makes every locked message available again (the sessions holding the locks are gone).
    pub(crate) fn release_all_locks(&mut self) -> usize {
        let mut released = 0;
        for queue in self.devices.values_mut() {
            for e in queue.values_mut() {
                if e.locked_until.take().is_some() {
                    released += 1;
                }
            }
        }
        released
    }
}

impl Journaled for InboxState {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            Op::Enqueue {
                device,
                seq,
                message,
                delivery_count,
            } => {
                self.next_seq = self.next_seq.max(seq);
                self.devices.entry(device).or_default().insert(
                    seq,
                    Entry {
                        message,
                        delivery_count,
                        locked_until: None,
                    },
                );
            }
            Op::Lock {
                device,
                seq,
                delivery_count,
                until,
            } => {
                if let Some(e) = self.devices.get_mut(&device).and_then(|q| q.get_mut(&seq)) {
                    e.delivery_count = delivery_count;
                    e.locked_until = Some(until);
                }
            }
            Op::Unlock { device, seq } => {
                if let Some(e) = self.devices.get_mut(&device).and_then(|q| q.get_mut(&seq)) {
                    e.locked_until = None;
                }
            }
            Op::Watermark { seq } => self.next_seq = self.next_seq.max(seq),
            Op::Remove { device, seq } => {
                if let Some(q) = self.devices.get_mut(&device) {
                    q.remove(&seq);
                    if q.is_empty() {
                        self.devices.remove(&device);
                    }
                }
            }
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        let mut ops = vec![Op::Watermark { seq: self.next_seq }];
        for (device, queue) in &self.devices {
            for (seq, e) in queue {
                ops.push(Op::Enqueue {
                    device: device.clone(),
                    seq: *seq,
                    message: e.message.clone(),
                    delivery_count: e.delivery_count,
                });
            }
        }
        ops
    }
}
