//! `MemoryJournal`: intents in memory, for provisioners over in-memory stores and for tests.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use super::{Intent, Journal};
use crate::error::Result;

/// A [`Journal`] in memory. It lives as long as the process, like the in-memory stores it is
/// meant for; share it through an `Arc` to hand it to a second provisioner (tests of recovery).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, Intent>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl Journal for MemoryJournal {
    async fn begin(&self, intent: &Intent) -> Result<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next += 1;
        let seq = state.next;
        state.pending.insert(seq, intent.clone());
        Ok(seq)
    }

    async fn finish(&self, seq: u64) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending.remove(&seq);
        Ok(())
    }

    async fn finish_unsynced(&self, seq: u64) -> Result<()> {
        self.finish(seq).await
    }

    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(state
            .pending
            .iter()
            .map(|(seq, intent)| (*seq, intent.clone()))
            .collect())
    }
}
