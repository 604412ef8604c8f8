//! The `Actor` trait and the context an actor handles a message or a reminder in.

use std::fmt::Debug;
use std::time::Duration;

use iot_core::{Record, StoredRecord, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::command::{Command, CommandRecord};
use super::hierarchy::Hierarchy;
use super::reminders::{Reminder, ReminderTable};
use super::runtime::ActorConfig;
use crate::error::Result;
use crate::processor::Context;

/// Header naming the actor that sent a message to another actor ([`ActorContext::tell`]).
pub const FROM_HEADER: &str = "actor-from";
/// Header with a message's id, derived from the input that caused it (the same after a
/// redelivery), so a receiver can recognise a duplicate.
pub const MESSAGE_ID_HEADER: &str = iot_core::headers::MESSAGE_ID;

/// What a kind of actor does. One value of the type serves every actor of the kind; each
/// actor's data is its [`State`](Actor::State), which the runtime keeps in memory while the
/// actor is active and in the `StateStore` otherwise.
///
/// # Contract
///
/// * Handlers run one at a time per actor (and per shard), never concurrently, and do not
///   await: effects go through the [`ActorContext`] (records appended to topics once the batch
///   is done), so a handler is a pure step `(state, message) → (state, outputs)`.
/// * **Errors.** A handler that returns `Err` must leave the state as it found it (check, then
///   change). The batch is retried; messages the actor already applied are not given again, and
///   a message that keeps failing goes to the dead-letter topic.
/// * **Determinism.** After a crash, messages applied since the last flush are applied again
///   to the state loaded from the store; their outputs are discarded (they were delivered).
///   A handler that reads only its state and the message (and [`ActorContext::now`], which is
///   the message's time) rebuilds the same state.
pub trait Actor: Send + Sync + Debug + 'static {
    /// One actor's data. `Default` is the state of an actor never seen before.
    type State: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// Handles one message (a record of the input topic keyed by this actor's id).
    fn on_message(
        &self,
        state: &mut Self::State,
        message: &StoredRecord,
        ctx: &mut ActorContext<'_>,
    ) -> Result<()>;

    /// Handles a reminder set with [`ActorContext::set_reminder`]. The default does nothing.
    fn on_reminder(
        &self,
        state: &mut Self::State,
        reminder: &str,
        ctx: &mut ActorContext<'_>,
    ) -> Result<()> {
        let _ = (state, reminder, ctx);
        Ok(())
    }
}

/// What caused a turn, formatted only when the turn emits something.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cause<'a> {
    /// The message at this position of the input.
    Message { partition: u32, offset: u64 },
    /// The reminder `name` due at `due` (ms since the epoch).
    Reminder { name: &'a str, due: u64 },
}

/// What an actor sees and can do while it handles a message or a reminder.
#[derive(Debug)]
pub struct ActorContext<'a> {
    pub(crate) id: &'a str,
    pub(crate) now: Timestamp,
    /// What caused this turn: the base of the ids of what the turn emits.
    pub(crate) cause: Cause<'a>,
    pub(crate) sent: u32,
    pub(crate) host: &'a mut Context,
    pub(crate) config: &'a ActorConfig,
    pub(crate) hierarchy: Option<&'a Hierarchy>,
    pub(crate) reminders: &'a mut ReminderTable,
}

impl ActorContext<'_> {
    /// This actor's id (the key of its input records).
    pub fn id(&self) -> &str {
        self.id
    }

    /// The time of this turn: the message's device time (else its enqueued time), or the time
    /// a reminder fired.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Whether the turn is a replay after a restart, whose outputs are discarded.
    pub fn is_rebuilding(&self) -> bool {
        self.host.is_rebuilding()
    }

    /// This actor's parent in the runtime's [`Hierarchy`], if it has one.
    pub fn parent(&self) -> Option<&str> {
        self.hierarchy.and_then(|h| h.parent(self.id))
    }

    /// A fresh id for something this turn emits: `<actor>@<cause>#<n>`, where the cause is
    /// the message's position (`p3:o17`) or the reminder (`r:<name>:<due ms>`). A turn replayed
    /// after a crash gives the same ids in the same order, so receivers can drop duplicates.
    /// [`tell`](Self::tell) and [`send_command`](Self::send_command) use it; give it to records
    /// you [`emit`](Self::emit) yourself.
    pub fn next_output_id(&mut self) -> String {
        let id = match self.cause {
            Cause::Message { partition, offset } => {
                format!("{}@p{partition}:o{offset}#{}", self.id, self.sent)
            }
            Cause::Reminder { name, due } => format!("{}@r:{name}:{due}#{}", self.id, self.sent),
        };
        self.sent += 1;
        id
    }

    /// Appends `record` to `topic` once the batch is done.
    pub fn emit(&mut self, topic: &str, record: Record) {
        self.host.emit(topic, record);
    }

    /// Sends `payload` to actor `to` through the runtime's messages topic (where the runtime
    /// of `to`'s kind reads). Returns the message's id.
    pub fn tell(&mut self, to: &str, payload: impl Into<bytes::Bytes>) -> String {
        let id = self.next_output_id();
        let record = Record::new(to, payload)
            .with_header(FROM_HEADER, self.id)
            .with_header(MESSAGE_ID_HEADER, id.clone())
            .with_device_time(self.now);
        let topic = self.config.messages_topic.clone();
        self.host.emit(&topic, record);
        id
    }

    /// Sends `payload` to this actor's parent; `false` (nothing sent) without one.
    pub fn tell_parent(&mut self, payload: impl Into<bytes::Bytes>) -> bool {
        match self.parent().map(str::to_owned) {
            Some(parent) => {
                self.tell(&parent, payload);
                true
            }
            None => false,
        }
    }

    /// Appends `command` for `device` to the commands topic; a direct method's answer is to
    /// come back on the runtime's input topic (`reply-to`). Returns the command's id.
    pub fn send_command(&mut self, device: &str, command: Command) -> Result<String> {
        let id = self.next_output_id();
        let reply_to = matches!(command, Command::DirectMethod { .. })
            .then(|| self.config.reply_topic.clone())
            .flatten();
        let record = CommandRecord {
            device: device.to_owned(),
            id: id.clone(),
            issuer: self.id.to_owned(),
            reply_to,
            command,
        }
        .to_record()?;
        let topic = self.config.commands_topic.clone();
        self.host.emit(&topic, record);
        Ok(id)
    }

    /// Sets (or replaces) this actor's reminder `name`, first due at `due`, then every
    /// `period` if given. Reminders are stored with the actor's state and survive restarts; a
    /// passivated actor is activated to receive one.
    pub fn set_reminder(&mut self, name: &str, due: Timestamp, period: Option<Duration>) {
        let period_ms = period.map(|p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX).max(1));
        self.reminders.set(
            self.id,
            name,
            Reminder {
                due_ms: due.as_unix_millis(),
                period_ms,
            },
        );
    }

    /// Cancels this actor's reminder `name`; `false` if it had none.
    pub fn cancel_reminder(&mut self, name: &str) -> bool {
        self.reminders.cancel(self.id, name)
    }

    /// When this actor's reminder `name` is next due.
    pub fn reminder_due(&self, name: &str) -> Option<Timestamp> {
        self.reminders
            .get(self.id, name)
            .map(|r| Timestamp::from_unix_millis(r.due_ms))
    }
}
