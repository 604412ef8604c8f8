//! The actor runtime: a partition-sharded scheduler on the processor host. Each partition of the
//! input topic is one shard, run by one host worker; an active actor is an entry in its shard's
//! table, a passivated one only its record in the `StateStore`.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foldhash::fast::RandomState;
use iot_core::{Offset, PartitionId, StoredRecord, Timestamp};
use tracing::{debug, warn};

use super::actor::{Actor, ActorContext, Cause};
use super::hierarchy::Hierarchy;
use super::reminders::ReminderTable;
use super::stored::{self, StoredActor};
use crate::error::{Error, Result};
use crate::host;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};
use crate::state::StateStore;

/// Most reminders fired in one housekeeping round, so a backlog after a long outage does not
/// hold up the partition's messages.
const MAX_REMINDERS_PER_ROUND: usize = 10_000;

/// How a kind of actor runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActorConfig {
    /// Prefix of the actors' ids in the state store (`<namespace>:<actor id>`), so several
    /// kinds (and other processors) can share a store. Default `actor`.
    pub namespace: String,
    /// An actor idle (no message, no reminder) this long is passivated: dropped from memory,
    /// its state already in the store. Default 5 min.
    pub idle_timeout: Duration,
    /// Changed states are written to the store at least this often (and before passivation);
    /// until then the checkpoint stays at the oldest message not yet written, and a restart
    /// replays from there. Default 1 s.
    pub flush_interval: Duration,
    /// Changed states are also written once this many actors of a shard are changed (bounding
    /// the replay after a crash and the bookkeeping of changed actors). Default 100 000.
    pub max_dirty: usize,
    /// Where [`ActorContext::send_command`] appends commands. Default `commands`.
    pub commands_topic: String,
    /// Where [`ActorContext::tell`] appends messages to other actors. Default `actor-messages`.
    pub messages_topic: String,
    /// The topic direct-method answers are to come back on (the `reply-to` of method commands),
    /// normally the input topic of the target devices' actors. Default none.
    pub reply_topic: Option<String>,
    /// Where a message goes that its handler refused (or whose key is no usable actor id),
    /// with the host's dead-letter headers. Default `deadletter`.
    pub dead_letter_topic: String,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            namespace: "actor".into(),
            idle_timeout: Duration::from_secs(300),
            flush_interval: Duration::from_secs(1),
            max_dirty: 100_000,
            commands_topic: "commands".into(),
            messages_topic: "actor-messages".into(),
            reply_topic: None,
            dead_letter_topic: "deadletter".into(),
        }
    }
}

/// Chainable setters (the struct is `non_exhaustive`).
impl ActorConfig {
    /// Sets [`namespace`](Self::namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`flush_interval`](Self::flush_interval).
    pub fn flush_interval(mut self, flush_interval: Duration) -> Self {
        self.flush_interval = flush_interval;
        self
    }

    /// Sets [`max_dirty`](Self::max_dirty).
    pub fn max_dirty(mut self, max_dirty: usize) -> Self {
        self.max_dirty = max_dirty;
        self
    }

    /// Sets [`commands_topic`](Self::commands_topic).
    pub fn commands_topic(mut self, topic: impl Into<String>) -> Self {
        self.commands_topic = topic.into();
        self
    }

    /// Sets [`messages_topic`](Self::messages_topic).
    pub fn messages_topic(mut self, topic: impl Into<String>) -> Self {
        self.messages_topic = topic.into();
        self
    }

    /// Sets [`dead_letter_topic`](Self::dead_letter_topic).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = topic.into();
        self
    }

    /// Sets [`reply_topic`](Self::reply_topic).
    pub fn reply_topic(mut self, topic: impl Into<String>) -> Self {
        self.reply_topic = Some(topic.into());
        self
    }
}

/// Counters of a runtime, over all its shards.
#[derive(Debug, Default)]
pub struct ActorStats {
    activations: AtomicU64,
    passivations: AtomicU64,
    messages: AtomicU64,
    redeliveries: AtomicU64,
    reminders_fired: AtomicU64,
    states_written: AtomicU64,
}

/// A snapshot of [`ActorStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActorCounts {
    /// Actors brought into memory (new, or loaded from the store).
    pub activations: u64,
    /// Actors dropped from memory after their idle time.
    pub passivations: u64,
    /// Messages handled.
    pub messages: u64,
    /// Messages skipped because the actor's state already covered them.
    pub redeliveries: u64,
    /// Reminders fired.
    pub reminders_fired: u64,
    /// Actor states written to the store.
    pub states_written: u64,
}

impl ActorCounts {
    /// Actors in memory now (activations − passivations).
    pub fn active(&self) -> u64 {
        self.activations.saturating_sub(self.passivations)
    }
}

impl ActorStats {
    /// The counters now.
    pub fn snapshot(&self) -> ActorCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ActorCounts {
            activations: get(&self.activations),
            passivations: get(&self.passivations),
            messages: get(&self.messages),
            redeliveries: get(&self.redeliveries),
            reminders_fired: get(&self.reminders_fired),
            states_written: get(&self.states_written),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs actors of kind `A` over an input topic: a [`ProcessorFactory`] for
/// [`ProcessorHost::start`](crate::ProcessorHost::start), whose records' keys are actor ids.
/// See the [module documentation](super) and `docs/actors.md`.
pub struct ActorRuntime<A: Actor> {
    actor: Arc<A>,
    store: Arc<dyn StateStore>,
    config: Arc<ActorConfig>,
    hierarchy: Option<Arc<Hierarchy>>,
    stats: Arc<ActorStats>,
}

impl<A: Actor> Debug for ActorRuntime<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRuntime")
            .field("actor", &self.actor)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<A: Actor> ActorRuntime<A> {
    /// A runtime for actors `actor` keeping their state in `store`. Refuses a namespace that
    /// cannot be part of a store id.
    pub fn new(actor: A, store: Arc<dyn StateStore>, config: ActorConfig) -> Result<Self> {
        stored::reminders_key(&config.namespace, 0)?;
        if config.namespace.contains(['$', ':']) {
            return Err(Error::invalid(
                "an actor namespace may not contain '$' or ':'",
            ));
        }
        Ok(ActorRuntime {
            actor: Arc::new(actor),
            store,
            config: Arc::new(config),
            hierarchy: None,
            stats: Arc::default(),
        })
    }

    /// Gives the actors a hierarchy ([`ActorContext::parent`], [`ActorContext::tell_parent`]).
    pub fn with_hierarchy(mut self, hierarchy: Arc<Hierarchy>) -> Self {
        self.hierarchy = Some(hierarchy);
        self
    }

    /// The runtime's counters.
    pub fn stats(&self) -> Arc<ActorStats> {
        self.stats.clone()
    }
}

impl<A: Actor> ProcessorFactory for ActorRuntime<A> {
    fn create(&self, partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        let now = Instant::now();
        Ok(Box::new(Shard::<A> {
            partition,
            actor: self.actor.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            hierarchy: self.hierarchy.clone(),
            stats: self.stats.clone(),
            actors: HashMap::default(),
            dirty: Vec::new(),
            first_dirty: None,
            reminders: None,
            flush_soon: false,
            epoch: now,
            last_flush: now,
            last_sweep: now,
        }))
    }
}

/// Sends a message its actor refused to the dead-letter topic, with the host's headers.
fn dead_letter(config: &ActorConfig, ctx: &mut Context, record: &StoredRecord, reason: &str) {
    warn!(actor = %record.record.key, offset = %record.offset, reason, "message dead-lettered");
    let out = record
        .record
        .clone()
        .with_header(host::dead_letter::REASON, reason)
        .with_header(
            host::dead_letter::SOURCE_PARTITION,
            record.partition.to_string(),
        )
        .with_header(host::dead_letter::SOURCE_OFFSET, record.offset.to_string())
        .with_header(ACTOR_NAMESPACE_HEADER, config.namespace.clone());
    ctx.emit(&config.dead_letter_topic, out);
}

/// Header of a dead letter naming the actor kind (namespace) that refused it.
pub const ACTOR_NAMESPACE_HEADER: &str = "x-actor-namespace";

/// An active actor: its state and a few words of bookkeeping.
struct Slot<S> {
    state: S,
    /// One past the offset of the last message applied (0: none).
    applied_end: u64,
    /// When it last handled something, in ms since the shard started.
    last_active: u64,
    /// Changed since last written.
    dirty: bool,
}

/// The actors of one partition.
struct Shard<A: Actor> {
    partition: PartitionId,
    actor: Arc<A>,
    store: Arc<dyn StateStore>,
    config: Arc<ActorConfig>,
    hierarchy: Option<Arc<Hierarchy>>,
    stats: Arc<ActorStats>,
    actors: HashMap<Box<str>, Slot<A::State>, RandomState>,
    /// Ids of the changed actors (each once).
    dirty: Vec<Box<str>>,
    /// The offset of the first message applied since the last flush: the checkpoint may not
    /// pass it.
    first_dirty: Option<u64>,
    /// Loaded from the store on first use.
    reminders: Option<ReminderTable>,
    /// Reminders fired: write at the next call.
    flush_soon: bool,
    epoch: Instant,
    last_flush: Instant,
    last_sweep: Instant,
}

impl<A: Actor> Debug for Shard<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorShard")
            .field("partition", &self.partition)
            .field("active", &self.actors.len())
            .field("dirty", &self.dirty.len())
            .field("first_dirty", &self.first_dirty)
            .finish_non_exhaustive()
    }
}

impl<A: Actor> Shard<A> {
    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn load_reminders(&mut self) -> Result<()> {
        if self.reminders.is_some() {
            return Ok(());
        }
        let key = stored::reminders_key(&self.config.namespace, self.partition.0)?;
        let table = match stored::load_reminders(&*self.store, &key).await? {
            Some(text) => ReminderTable::decode(&text)?,
            None => ReminderTable::default(),
        };
        debug!(partition = %self.partition, reminders = table.len(), "reminder table loaded");
        self.reminders = Some(table);
        Ok(())
    }

    /// Brings actor `id` into memory if it is not there: from its stored record, or new.
    async fn activate(&mut self, id: &str, now_ms: u64) -> Result<()> {
        if self.actors.contains_key(id) {
            return Ok(());
        }
        let key = stored::actor_key(&self.config.namespace, id)?;
        let slot = match stored::load_actor(&*self.store, &key).await? {
            Some(record) => Slot {
                state: serde_json::from_str(&record.state)
                    .map_err(|e| Error::invalid(format!("stored state of actor {id}: {e}")))?,
                // Offsets of another partition (the topic was repartitioned) say nothing here.
                applied_end: match record.offset {
                    Some(o) if record.partition == self.partition.0 => o + 1,
                    _ => 0,
                },
                last_active: now_ms,
                dirty: false,
            },
            None => Slot {
                state: A::State::default(),
                applied_end: 0,
                last_active: now_ms,
                dirty: false,
            },
        };
        self.actors.insert(id.into(), slot);
        ActorStats::add(&self.stats.activations, 1);
        Ok(())
    }

    /// Writes the reminder table, then every changed actor. The table goes first: a table ahead
    /// of the states is harmless (replaying the messages sets the same reminders again), one
    /// behind them would lose reminders set by messages the stored states already cover.
    async fn flush(&mut self) -> Result<()> {
        if let Some(table) = self.reminders.as_mut().filter(|t| t.dirty) {
            let key = stored::reminders_key(&self.config.namespace, self.partition.0)?;
            stored::save_reminders(&*self.store, &key, table.encode()?).await?;
            table.dirty = false;
        }
        let mut written = 0;
        while let Some(id) = self.dirty.last() {
            if let Some(slot) = self.actors.get_mut(&**id) {
                let record = StoredActor {
                    partition: self.partition.0,
                    offset: slot.applied_end.checked_sub(1),
                    state: serde_json::to_string(&slot.state)
                        .map_err(|e| Error::invalid(format!("state of actor {id}: {e}")))?,
                };
                let key = stored::actor_key(&self.config.namespace, id)?;
                stored::save_actor(&*self.store, &key, &record).await?;
                slot.dirty = false;
                written += 1;
            }
            self.dirty.pop();
        }
        self.first_dirty = None;
        self.last_flush = Instant::now();
        ActorStats::add(&self.stats.states_written, written);
        Ok(())
    }

    /// Fires reminders due at `now`; returns how many. Never fails once a reminder fired (its
    /// outputs are in `ctx`): an actor that cannot be loaded stops the round with a warning,
    /// its reminder left due for the next one.
    async fn fire_reminders(&mut self, now: Timestamp, ctx: &mut Context) -> usize {
        let now_ms = self.clock();
        let mut fired = 0;
        while fired < MAX_REMINDERS_PER_ROUND {
            let Some((id, name, due)) = self.reminders.as_ref().and_then(|t| t.next_due(now))
            else {
                break;
            };
            match self.activate(&id, now_ms).await {
                Ok(()) => {}
                Err(e @ Error::InvalidInput { .. }) => {
                    warn!(actor = %id, reminder = %name, error = %e, "reminder of an actor that cannot be loaded; cancelled");
                    if let Some(table) = self.reminders.as_mut() {
                        table.cancel(&id, &name);
                    }
                    continue;
                }
                Err(e) => {
                    warn!(actor = %id, reminder = %name, error = %e, "actor not loaded; its reminder waits for the next round");
                    break;
                }
            }
            let (Some(slot), Some(reminders)) =
                (self.actors.get_mut(&*id), self.reminders.as_mut())
            else {
                break;
            };
            // Rescheduled before the handler runs, so the handler may replace or cancel it.
            reminders.fired(&id, &name, now);
            let mut actx = ActorContext {
                id: &id,
                now,
                cause: Cause::Reminder { name: &name, due },
                sent: 0,
                host: ctx,
                config: &self.config,
                hierarchy: self.hierarchy.as_deref(),
                reminders,
            };
            if let Err(e) = self.actor.on_reminder(&mut slot.state, &name, &mut actx) {
                warn!(actor = %id, reminder = %name, error = %e, "reminder handler failed");
            }
            slot.last_active = now_ms;
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(id.clone());
            }
            fired += 1;
        }
        ActorStats::add(&self.stats.reminders_fired, fired as u64);
        fired
    }

    /// At the start of a batch or a tick, when the host has delivered everything the previous
    /// calls emitted: writes the changed states if due and passivates idle actors.
    ///
    /// States are written only here, never after handlers ran in the same call: a state written
    /// before the outputs of its messages are appended would, after a crash between the two,
    /// make the replay skip those messages and their outputs would be lost.
    async fn housekeeping(&mut self) -> Result<()> {
        if self.flush_soon
            || self.dirty.len() >= self.config.max_dirty
            || self.last_flush.elapsed() >= self.config.flush_interval
        {
            self.flush().await?;
            self.flush_soon = false;
        }
        if self.last_sweep.elapsed() >= self.config.idle_timeout / 4 {
            self.passivate_idle();
        }
        Ok(())
    }

    /// Fires due reminders at the end of a call, when nothing can fail any more (the host would
    /// discard their outputs), and not while rebuilding (it discards outputs then too).
    async fn remind(&mut self, now: Timestamp, ctx: &mut Context) {
        if !ctx.is_rebuilding() && self.fire_reminders(now, ctx).await > 0 {
            // A reminder's effects are in no input record: written at the next call.
            self.flush_soon = true;
        }
    }

    /// Drops written actors idle for the idle timeout.
    fn passivate_idle(&mut self) {
        let now_ms = self.clock();
        let idle = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let before = self.actors.len();
        self.actors
            .retain(|_, slot| slot.dirty || now_ms.saturating_sub(slot.last_active) < idle);
        let passivated = before - self.actors.len();
        if self.actors.capacity() > 64 && self.actors.len() < self.actors.capacity() / 4 {
            self.actors.shrink_to_fit();
        }
        self.last_sweep = Instant::now();
        ActorStats::add(&self.stats.passivations, passivated as u64);
    }
}

#[async_trait]
impl<A: Actor> StreamProcessor for Shard<A> {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        self.load_reminders().await?;
        self.housekeeping().await?;
        let now_ms = self.clock();
        // Activation is the only step that can fail for a reason a retry may fix (the store),
        // so it runs for the whole batch before any handler: a failed attempt has applied
        // nothing, and the retry skips no message whose outputs the host discarded.
        for record in batch {
            match self.activate(&record.record.key, now_ms).await {
                Ok(()) | Err(Error::InvalidInput { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut handled = 0;
        let mut skipped = 0;
        for record in batch {
            let id = record.record.key.as_str();
            let offset = record.offset.0;
            let (Some(slot), Some(reminders)) = (self.actors.get_mut(id), self.reminders.as_mut())
            else {
                // Not activated: an id no store id can be made of.
                let reason = stored::actor_key(&self.config.namespace, id)
                    .err()
                    .map_or_else(|| "actor not activated".to_owned(), |e| e.to_string());
                dead_letter(&self.config, ctx, record, &reason);
                continue;
            };
            if offset < slot.applied_end {
                skipped += 1;
                continue;
            }
            let mut actx = ActorContext {
                id,
                now: record.record.device_time.unwrap_or(record.enqueued_time),
                cause: Cause::Message {
                    partition: self.partition.0,
                    offset,
                },
                sent: 0,
                host: ctx,
                config: &self.config,
                hierarchy: self.hierarchy.as_deref(),
                reminders,
            };
            if let Err(e) = self.actor.on_message(&mut slot.state, record, &mut actx) {
                // The handler left the state as it was; the message is consumed.
                dead_letter(&self.config, ctx, record, &e.to_string());
            } else {
                handled += 1;
            }
            slot.applied_end = offset + 1;
            slot.last_active = now_ms;
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(id.into());
            }
            self.first_dirty.get_or_insert(offset);
        }
        ActorStats::add(&self.stats.messages, handled);
        ActorStats::add(&self.stats.redeliveries, skipped);
        self.remind(Timestamp::now(), ctx).await;
        Ok(())
    }

    fn retained_offset(&self) -> Option<Offset> {
        self.first_dirty.map(Offset)
    }

    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        self.load_reminders().await?;
        self.housekeeping().await?;
        self.remind(now, ctx).await;
        Ok(())
    }
}

// The setters are the only way other crates can build an `ActorConfig` (`non_exhaustive`): each
// must set its own field and nothing else.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let built = ActorConfig::default()
            .namespace("n")
            .idle_timeout(Duration::from_millis(3))
            .flush_interval(Duration::from_millis(5))
            .max_dirty(7)
            .commands_topic("c")
            .messages_topic("m")
            .reply_topic("r")
            .dead_letter_topic("d");
        let expected = ActorConfig {
            namespace: "n".into(),
            idle_timeout: Duration::from_millis(3),
            flush_interval: Duration::from_millis(5),
            max_dirty: 7,
            commands_topic: "c".into(),
            messages_topic: "m".into(),
            reply_topic: Some("r".into()),
            dead_letter_topic: "d".into(),
        };
        assert_eq!(format!("{built:?}"), format!("{expected:?}"));
    }
}
