//! A store's in-memory state with the storage kit's journal behind it, shared by the file inbox,
//! the file twin store and the MQTT endpoint's persistent sessions.
//!
//! The durable case is the kit's [`Journal`], which gives concurrent writers group commit: a write
//! plans, stages and applies under one short state lock, then waits for the group fsync that
//! covers it, so unrelated devices share fsyncs instead of queueing behind one writer. A read
//! takes the state lock for a moment and returns once every write it may have seen is durable.
//! The in-memory case (sessions without a state directory) is a plain lock.

use std::path::Path;
use std::sync::Mutex;

use iot_core::storage::{Journal, JournalConfig, Journaled};

use crate::error::{Error, Result};
use crate::sync_util::lock;

/// State of type `S`, made durable by a journal, or kept only in memory.
#[derive(Debug)]
pub(crate) enum JournaledState<S> {
    Durable(Journal<S>),
    // Only the MQTT endpoint's persistent sessions (without a state directory) keep state in
    // memory; the inbox and twin stores always journal.
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    Memory(Mutex<S>),
}

impl<S: Journaled + Send + 'static> JournaledState<S> {
    /// Opens (or creates) the journal in `dir` and replays it into `state`. Blocking.
    pub(crate) fn open(
        dir: &Path,
        magic: &[u8; 8],
        state: S,
        config: JournalConfig,
    ) -> Result<Self> {
        Ok(JournaledState::Durable(Journal::open(
            dir, magic, state, config,
        )?))
    }

    /// `state` kept in memory only.
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    pub(crate) fn in_memory(state: S) -> Self {
        JournaledState::Memory(Mutex::new(state))
    }

    /// Reads the state, returning once every write the read may have seen is durable.
    pub(crate) async fn read<T>(&self, f: impl FnOnce(&S) -> T) -> Result<T> {
        match self {
            JournaledState::Durable(journal) => Ok(journal.read(f).await?),
            JournaledState::Memory(state) => Ok(f(&lock(state))),
        }
    }

    /// Changes the state without journaling it, before the store is shared (e.g. releasing the
    /// locks of a previous process on open).
    pub(crate) fn update_unjournaled<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        match self {
            JournaledState::Durable(journal) => journal.update_unjournaled(f),
            JournaledState::Memory(state) => f(&mut lock(state)),
        }
    }

    /// Plans operations from the state, applies them and returns what the plan returned once
    /// they are durable (group commit). A plan that fails changes nothing.
    pub(crate) async fn write<T>(
        &self,
        plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T)>,
    ) -> Result<T> {
        match self {
            JournaledState::Durable(journal) => journal.write::<T, Error>(plan).await,
            JournaledState::Memory(state) => {
                let mut state = lock(state);
                let (ops, out) = plan(&state)?;
                for op in ops {
                    state.apply(op);
                }
                Ok(out)
            }
        }
    }

    /// Makes every acknowledged operation durable (with `Durability::OsBuffered`).
    pub(crate) async fn sync(&self) -> Result<()> {
        match self {
            JournaledState::Durable(journal) => Ok(journal.sync().await?),
            JournaledState::Memory(_) => Ok(()),
        }
    }
}
