//! `FileSubscriptionStore`: alert subscriptions in memory, made durable by the storage kit's
//! write-ahead journal with snapshots ([`iot_core::storage::journal`]), as the file access store
//! keeps the access matrix. A directory of its own (the hub example uses `DIR/access/subscriptions`
//! beside the access store's `DIR/access`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use iot_core::storage::{Journal, JournalConfig, Journaled, run_blocking};
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize as _;

use super::file::FileAccessStoreConfig;
use super::names::UserName;
use super::subscription::{
    MAX_SUBSCRIPTIONS_PER_USER, Subscription, SubscriptionSecret, SubscriptionStore,
};
use crate::error::{Error, Result};

/// The journal's magic (first version).
const MAGIC: &[u8; 8] = b"IOTSUB01";

/// One subscription as the journal holds it (the secret too: it signs the webhooks).
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    user: UserName,
    url: String,
    devices: Option<BTreeSet<DeviceId>>,
    secret: String,
    created_us: u64,
}

impl From<&Subscription> for Stored {
    fn from(s: &Subscription) -> Self {
        Stored {
            id: s.id.clone(),
            user: s.user.clone(),
            url: s.url.clone(),
            devices: s.devices.clone(),
            secret: s.secret.expose().to_owned(),
            created_us: s.created_at.as_unix_micros(),
        }
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// One change of the journal.
#[derive(Serialize, Deserialize)]
enum Op {
    Add(Stored),
    Remove { user: UserName, id: String },
    DeleteOf { user: UserName },
}

/// The subscriptions by user, then id.
#[derive(Default)]
struct State {
    by_user: BTreeMap<UserName, BTreeMap<String, Subscription>>,
}

impl Journaled for State {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            Op::Add(s) => {
                // Checked when the subscription was made: kept as written.
                let secret = SubscriptionSecret::from_stored(s.secret.clone());
                let subscription = Subscription::from_parts(
                    s.id.clone(),
                    s.user.clone(),
                    s.url.clone(),
                    s.devices.clone(),
                    secret,
                    Timestamp::from_unix_micros(s.created_us),
                );
                self.by_user
                    .entry(s.user.clone())
                    .or_default()
                    .insert(s.id.clone(), subscription);
            }
            Op::Remove { user, id } => {
                if let Some(held) = self.by_user.get_mut(&user) {
                    held.remove(&id);
                    if held.is_empty() {
                        self.by_user.remove(&user);
                    }
                }
            }
            Op::DeleteOf { user } => {
                self.by_user.remove(&user);
            }
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        self.by_user
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| Op::Add(Stored::from(s)))
            .collect()
    }
}

/// A durable [`SubscriptionStore`] in a directory of its own: every write is journaled (and,
/// with `Durability::Fsync`, fsynced) before it is acknowledged. The files hold the webhook
/// secrets (HMAC keys): keep the directory private.
///
/// Deleting a user does not reach this store by itself: the caller follows
/// `delete_user` with [`SubscriptionStore::delete_of`] (the service API's
/// `DELETE /access/users/{name}` does).
#[derive(Clone)]
pub struct FileSubscriptionStore {
    journal: Journal<State>,
    dir: PathBuf,
}

impl std::fmt::Debug for FileSubscriptionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSubscriptionStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileSubscriptionStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash. It takes the same
    /// configuration as the file access store.
    pub async fn open(dir: impl AsRef<Path>, config: FileAccessStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, config: FileAccessStoreConfig) -> Result<Self> {
        let journal_config =
            JournalConfig::with_durability(config.durability).recovery(config.recovery);
        let journal = Journal::open(dir, MAGIC, State::default(), journal_config)?;
        Ok(FileSubscriptionStore {
            journal,
            dir: dir.to_owned(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl SubscriptionStore for FileSubscriptionStore {
    async fn add(&self, subscription: Subscription) -> Result<()> {
        self.journal
            .write::<_, Error>(|state| {
                if state
                    .by_user
                    .values()
                    .any(|held| held.contains_key(&subscription.id))
                {
                    return Err(Error::invalid("a subscription with this id exists"));
                }
                let held = state
                    .by_user
                    .get(&subscription.user)
                    .map_or(0, BTreeMap::len);
                if held >= MAX_SUBSCRIPTIONS_PER_USER {
                    return Err(Error::invalid(format!(
                        "user {} already has {MAX_SUBSCRIPTIONS_PER_USER} subscriptions",
                        subscription.user
                    )));
                }
                Ok((vec![Op::Add(Stored::from(&subscription))], ()))
            })
            .await
    }

    async fn of_user(&self, user: &UserName) -> Result<Vec<Subscription>> {
        Ok(self
            .journal
            .read(|state| {
                state
                    .by_user
                    .get(user)
                    .map(|held| held.values().cloned().collect())
                    .unwrap_or_default()
            })
            .await?)
    }

    async fn all(&self) -> Result<Vec<Subscription>> {
        Ok(self
            .journal
            .read(|state| {
                state
                    .by_user
                    .values()
                    .flat_map(|h| h.values().cloned())
                    .collect()
            })
            .await?)
    }

    async fn remove(&self, user: &UserName, id: &str) -> Result<bool> {
        self.journal
            .write::<_, Error>(|state| {
                let held = state.by_user.get(user).is_some_and(|h| h.contains_key(id));
                let ops = if held {
                    vec![Op::Remove {
                        user: user.clone(),
                        id: id.to_owned(),
                    }]
                } else {
                    Vec::new()
                };
                Ok((ops, held))
            })
            .await
    }

    async fn delete_of(&self, user: &UserName) -> Result<usize> {
        self.journal
            .write::<_, Error>(|state| {
                let n = state.by_user.get(user).map_or(0, BTreeMap::len);
                let ops = if n > 0 {
                    vec![Op::DeleteOf { user: user.clone() }]
                } else {
                    Vec::new()
                };
                Ok((ops, n))
            })
            .await
    }
}
