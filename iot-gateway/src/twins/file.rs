//! `FileTwinStore`: twins in memory, made durable by a journal (see [`crate::journal`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iot_core::DeviceId;
use serde_json::Value;

use super::state::{Op, TwinState};
use super::{Section, TwinLimits, TwinStore};
use crate::error::Result;
use crate::journal::{Durability, Journal, Journaled, run_blocking};
use crate::sync_util::lock;
use crate::twin::Twin;

const MAGIC: &[u8; 8] = b"IOTGWTW1";

/// How a [`FileTwinStore`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileTwinStoreOptions {
    /// When writes are acknowledged. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Compact once the journal is larger than this and than the snapshot. Default 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for FileTwinStoreOptions {
    fn default() -> Self {
        FileTwinStoreOptions {
            durability: Durability::Fsync,
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A durable [`TwinStore`] in a directory: each accepted patch journals the section's new
/// content before it is acknowledged.
#[derive(Debug, Clone)]
pub struct FileTwinStore {
    inner: Arc<Mutex<Inner>>,
    dir: PathBuf,
}

#[derive(Debug)]
struct Inner {
    state: TwinState,
    journal: Journal,
}

impl FileTwinStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, options: FileTwinStoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, options)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, options: FileTwinStoreOptions) -> Result<Self> {
        let mut state = TwinState::default();
        let journal = Journal::open(
            dir,
            MAGIC,
            &mut state,
            options.durability,
            options.compact_after_bytes,
        )?;
        Ok(FileTwinStore {
            inner: Arc::new(Mutex::new(Inner { state, journal })),
            dir: dir.to_owned(),
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn commit(&self, op: Op) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let mut inner = lock(&inner);
            inner.journal.append(std::slice::from_ref(&op))?;
            inner.state.apply(op);
            let Inner { state, journal } = &mut *inner;
            journal.maybe_compact(MAGIC, state);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl TwinStore for FileTwinStore {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        Ok(lock(&self.inner).state.get(device))
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let device = device.clone();
        let patch = patch.clone();
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let mut guard = lock(&inner);
            let twin = guard
                .state
                .plan_patch(&device, section, &patch, if_version, limits)?;
            let op = Op::Put {
                device,
                twin: twin.clone(),
            };
            guard.journal.append(std::slice::from_ref(&op))?;
            guard.state.apply(op);
            let Inner { state, journal } = &mut *guard;
            journal.maybe_compact(MAGIC, state);
            Ok(twin)
        })
        .await
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        if !lock(&self.inner).state.has(device) {
            return Ok(());
        }
        self.commit(Op::Remove {
            device: device.clone(),
        })
        .await
    }
}
