//! The C2D inbox: a durable FIFO of messages per device.
//!
//! The semantics live once, in a private `InboxState` — a plain state machine — and each store
//! only decides where its state lives: [`MemoryInbox`] in memory, [`FileInbox`] in memory made
//! durable by a journal.
//!
//! # Invariants
//!
//! * Messages of a device are delivered in the order they were queued (FIFO by sequence number);
//!   a later message can be delivered while an earlier one is locked.
//! * A message is in one of two states: available, or locked until a time. Locking it increments
//!   its delivery count (durably, before the delivery is handed out), so a crash never resets it.
//! * An expired message is never delivered: whoever meets it first removes it and reports it as
//!   [`crate::FeedbackStatus::Expired`].
//! * An available message whose delivery count reached the maximum is dead-lettered instead of
//!   delivered.
//! * A device holds at most `max_depth` messages (expired ones are purged before counting).
//! * A settlement names the delivery's current lock ([`LockToken`]: sequence number and delivery
//!   count); any other token is [`Error::LockLost`](crate::Error::LockLost) and changes nothing.
//!   Sequence numbers are never reused, not even after a reopen.
//! * A reopened durable store holds every message it acknowledged, with its delivery count, but
//!   no locks: the sessions that held them are gone, so their messages are available again. A
//!   store that several gateway instances share holds locks per instance: a restarted instance
//!   releases its own, and opening one instance never releases another's.
//! * A store outside this crate reports its own failures as
//!   [`Error::Backend`](crate::Error::Backend), saying whether a retry may help.
//!
//! Every type an implementation returns has a public constructor ([`InboxMessage::new`] and its
//! `with_*` setters, [`Locked::new`], [`Removed::new`], [`LockOutcome::new`]). The `testkit`
//! feature's `testkit::inbox_store` checks these invariants.

mod file;
mod memory;
mod state;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::message::{AckRequest, FeedbackStatus, LockToken};

pub use file::{FileInbox, FileInboxConfig};
pub use memory::MemoryInbox;

/// A queued C2D message as the inbox stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InboxMessage {
    /// The message id.
    pub message_id: String,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Media type.
    pub content_type: Option<String>,
    /// Encoding.
    pub content_encoding: Option<String>,
    /// Custom properties.
    pub properties: Vec<(String, String)>,
    /// The body.
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Which settlements produce feedback.
    pub ack: AckRequest,
}

impl InboxMessage {
    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the media type and encoding.
    pub fn with_content(
        mut self,
        content_type: Option<String>,
        content_encoding: Option<String>,
    ) -> Self {
        self.content_type = content_type;
        self.content_encoding = content_encoding;
        self
    }

    /// Sets the custom properties, in order.
    pub fn with_properties(mut self, properties: Vec<(String, String)>) -> Self {
        self.properties = properties;
        self
    }

    /// Sets which settlements produce feedback.
    pub fn with_ack(mut self, ack: AckRequest) -> Self {
        self.ack = ack;
        self
    }

    /// Sets when it expires (a store rebuilding a stored message keeps the stored time).
    pub fn with_expiry(mut self, expires_at: Timestamp) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// A message with `payload` and `message_id`, queued at `now`, expiring after `ttl`.
    pub fn new(
        message_id: impl Into<String>,
        payload: impl Into<Bytes>,
        now: Timestamp,
        ttl: Duration,
    ) -> Self {
        InboxMessage {
            message_id: message_id.into(),
            correlation_id: None,
            content_type: None,
            content_encoding: None,
            properties: Vec::new(),
            payload: payload.into(),
            enqueued_at: now,
            expires_at: now.saturating_add(ttl),
            ack: AckRequest::None,
        }
    }
}

/// A message handed out under a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Locked {
    /// Settles this delivery.
    pub token: LockToken,
    /// The message.
    pub message: InboxMessage,
    /// When the lock lapses.
    pub locked_until: Timestamp,
}

impl Locked {
    /// A delivery of `message` under `token`, locked until `locked_until`.
    pub fn new(token: LockToken, message: InboxMessage, locked_until: Timestamp) -> Self {
        Locked {
            token,
            message,
            locked_until,
        }
    }
}

/// A message that left the inbox, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// The device it was for.
    pub device: DeviceId,
    /// The message.
    pub message: InboxMessage,
    /// How it ended.
    pub status: FeedbackStatus,
    /// How many times it was delivered.
    pub delivery_count: u32,
}

impl Removed {
    /// `message`, queued for `device`, left the inbox with `status` after `delivery_count`
    /// deliveries.
    pub fn new(
        device: DeviceId,
        message: InboxMessage,
        status: FeedbackStatus,
        delivery_count: u32,
    ) -> Self {
        Removed {
            device,
            message,
            status,
            delivery_count,
        }
    }
}

/// What [`InboxStore::lock_next`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOutcome {
    /// The next available message, now locked.
    pub locked: Option<Locked>,
    /// Messages removed on the way (expired, or dead-lettered after too many deliveries).
    pub removed: Vec<Removed>,
    /// When nothing was available: the earliest time a locked message's lock lapses.
    pub next_due: Option<Timestamp>,
}

impl LockOutcome {
    /// What a lookup found: the message it locked (if any), what it removed on the way, and —
    /// when nothing was available — when the earliest held lock lapses.
    pub fn new(locked: Option<Locked>, removed: Vec<Removed>, next_due: Option<Timestamp>) -> Self {
        LockOutcome {
            locked,
            removed,
            next_due,
        }
    }
}

/// How a device settles a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Processed: remove it.
    Complete,
    /// Give it back for redelivery.
    Abandon,
    /// Refuse it: dead-letter it.
    Reject,
}

/// The inbox's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxLimits {
    /// Most messages queued per device. Default 50.
    pub max_depth: usize,
    /// How long a delivery is locked. Default 60 s.
    pub lock_duration: Duration,
    /// Deliveries before a message is dead-lettered. Default 10.
    pub max_delivery_count: u32,
}

impl Default for InboxLimits {
    fn default() -> Self {
        InboxLimits {
            max_depth: 50,
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl InboxLimits {
    /// Sets [`max_depth`](Self::max_depth).
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets [`lock_duration`](Self::lock_duration).
    pub fn lock_duration(mut self, lock_duration: Duration) -> Self {
        self.lock_duration = lock_duration;
        self
    }

    /// Sets [`max_delivery_count`](Self::max_delivery_count).
    pub fn max_delivery_count(mut self, max_delivery_count: u32) -> Self {
        self.max_delivery_count = max_delivery_count;
        self
    }
}

/// Where C2D messages wait for their device. Implementations hold the invariants of the
/// [module docs](self); the `testkit` feature's `testkit::inbox_store::run_all` checks them.
#[async_trait]
pub trait InboxStore: Send + Sync + Debug + 'static {
    /// Queues `message` for `device`; returns its sequence number and any expired messages of
    /// the device purged first. Fails with [`Error::QueueFull`](crate::Error::QueueFull) when the
    /// device already holds `limits.max_depth` messages.
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)>;

    /// Locks the device's next available message (see [`LockOutcome`]).
    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome>;

    /// Settles a delivery; returns what left the inbox (`None` for an abandon). A token that is
    /// not the message's current lock is [`Error::LockLost`](crate::Error::LockLost).
    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>>;

    /// Removes every expired message of every device.
    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>>;

    /// Removes every message of `device` (it was deleted); returns how many.
    async fn remove_device(&self, device: &DeviceId) -> Result<usize>;

    /// How many messages `device` holds (locked ones included).
    async fn depth(&self, device: &DeviceId) -> Result<usize>;
}

macro_rules! forward_inbox {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: InboxStore + ?Sized> InboxStore for $ptr<T> {
            async fn enqueue(
                &self,
                device: &DeviceId,
                message: InboxMessage,
                now: Timestamp,
                limits: InboxLimits,
            ) -> Result<(u64, Vec<Removed>)> {
                (**self).enqueue(device, message, now, limits).await
            }
            async fn lock_next(
                &self,
                device: &DeviceId,
                now: Timestamp,
                limits: InboxLimits,
            ) -> Result<LockOutcome> {
                (**self).lock_next(device, now, limits).await
            }
            async fn settle(
                &self,
                device: &DeviceId,
                token: LockToken,
                settlement: Settlement,
            ) -> Result<Option<Removed>> {
                (**self).settle(device, token, settlement).await
            }
            async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
                (**self).purge_expired(now).await
            }
            async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
                (**self).remove_device(device).await
            }
            async fn depth(&self, device: &DeviceId) -> Result<usize> {
                (**self).depth(device).await
            }
        }
    };
}

forward_inbox!(Arc);
forward_inbox!(Box);

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let built = InboxLimits::default()
            .max_depth(5)
            .lock_duration(Duration::from_millis(1500))
            .max_delivery_count(2);
        let expected = InboxLimits {
            max_depth: 5,
            lock_duration: Duration::from_millis(1500),
            max_delivery_count: 2,
        };
        assert_eq!(built, expected);
    }
}
