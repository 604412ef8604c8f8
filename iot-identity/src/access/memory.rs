//! `MemoryAccessStore`: users, roles, grants and sessions in memory only.

use std::sync::{Mutex, MutexGuard, PoisonError};

use iot_core::Timestamp;
use iot_core::storage::Journaled;

use super::grant::Grant;
use super::names::{RoleName, UserName};
use super::role::Role;
use super::session::{Session, SessionDigest};
use super::state::{AccessState, Plan};
use super::user::{NewUser, User};
use super::{UserAccess, access_store_over_state};
use crate::credentials::PassphraseHash;
use crate::error::Result;

/// An [`AccessStore`](super::AccessStore) held in memory; everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryAccessStore {
    state: Mutex<AccessState>,
}

impl MemoryAccessStore {
    /// An empty store (the built-in roles only).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, AccessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write<T>(&self, plan: impl FnOnce(&AccessState) -> Result<Plan<T>>) -> Result<T> {
        let mut state = self.lock();
        let (ops, out) = plan(&state)?;
        for op in ops {
            state.apply(op);
        }
        Ok(out)
    }

    async fn read<T>(&self, f: impl FnOnce(&AccessState) -> T) -> Result<T> {
        Ok(f(&self.lock()))
    }
}

access_store_over_state!(MemoryAccessStore);
