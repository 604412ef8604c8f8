//! A store's in-memory state with the storage kit's journal behind it, shared by the file inbox,
//! the file twin store and the MQTT endpoint's persistent sessions.
//!
//! The state and the journal have separate locks, so that a reader on the async executor (a twin
//! read, an inbox depth) takes the state lock for a moment and never waits for a write or an
//! fsync, which hold only the journal lock.
//!
//! # Invariants
//!
//! * Writers are serialised by the journal lock: a write plans its operations from the state,
//!   appends them (the journal's durability decides whether that waits for an fsync) and only then
//!   applies them, so the journal's order is the state's order and nothing is applied that is not
//!   durable.
//! * The state changes only under the journal lock (or before the store is shared, on open), so a
//!   plan made under it is still valid when its operations are applied.

use std::path::Path;
use std::sync::Mutex;

use iot_core::storage::{Journal, JournalConfig, Journaled};

use crate::error::Result;
use crate::sync_util::lock;

/// State of type `S`, made durable by a journal, or kept only in memory.
#[derive(Debug)]
pub(crate) struct JournaledState<S> {
    state: Mutex<S>,
    journal: Mutex<Option<Journal>>,
    /// Whether `journal` is `Some`, readable without waiting for a writer.
    // Read only by `is_durable`, which only the MQTT endpoint's persistent sessions call.
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    durable: bool,
}

impl<S: Journaled> JournaledState<S> {
    /// Opens (or creates) the journal in `dir` and replays it into `state`. Blocking.
    pub(crate) fn open(
        dir: &Path,
        magic: &[u8; 8],
        mut state: S,
        config: JournalConfig,
    ) -> Result<Self> {
        let journal = Journal::open(dir, magic, &mut state, config)?;
        Ok(JournaledState {
            state: Mutex::new(state),
            journal: Mutex::new(Some(journal)),
            durable: true,
        })
    }

    /// `state` kept in memory only.
    // Only the MQTT endpoint's persistent sessions (without a state directory) keep state in
    // memory; the inbox and twin stores always journal.
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    pub(crate) fn in_memory(state: S) -> Self {
        JournaledState {
            state: Mutex::new(state),
            journal: Mutex::new(None),
            durable: false,
        }
    }

    /// Whether writes go to a journal (and so are blocking work for
    /// [`run_blocking`](iot_core::storage::run_blocking)).
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    pub(crate) fn is_durable(&self) -> bool {
        self.durable
    }

    /// Reads the state; never waits for file I/O.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&lock(&self.state))
    }

    /// Changes the state without journaling it, before the store is shared (e.g. releasing the
    /// locks of a previous process on open).
    pub(crate) fn update_unjournaled<T>(&mut self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// Plans operations from the state, makes them durable, applies them, and returns what the
    /// plan returned. A plan that fails, or an append that fails, changes nothing. Blocking when
    /// the state is journaled.
    pub(crate) fn write<T>(&self, plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T)>) -> Result<T> {
        let mut journal = lock(&self.journal);
        let (ops, out) = plan(&lock(&self.state))?;
        if ops.is_empty() {
            return Ok(out);
        }
        if let Some(journal) = journal.as_mut() {
            journal.append(&ops)?;
        }
        {
            let mut state = lock(&self.state);
            for op in ops {
                state.apply(op);
            }
        }
        if let Some(journal) = journal.as_mut() {
            journal.maybe_compact(&Shared(&self.state));
        }
        Ok(out)
    }

    /// Makes every appended operation durable (with `Durability::OsBuffered`). Blocking.
    pub(crate) fn sync(&self) -> Result<()> {
        match lock(&self.journal).as_ref() {
            Some(journal) => Ok(journal.sync()?),
            None => Ok(()),
        }
    }
}

/// The state behind its lock, as the journal's compaction sees it: the snapshot's operations are
/// collected under the state lock (a copy in memory) and written after it is released.
struct Shared<'a, S>(&'a Mutex<S>);

impl<S: Journaled> Journaled for Shared<'_, S> {
    type Op = S::Op;

    fn apply(&mut self, op: S::Op) {
        lock(self.0).apply(op);
    }

    fn snapshot_ops(&self) -> Vec<S::Op> {
        lock(self.0).snapshot_ops()
    }
}
