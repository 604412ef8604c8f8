//! [`PgIdentityStore`]: device identities in PostgreSQL, with a change stream that crosses
//! processes (`LISTEN`/`NOTIFY`) and a lookup cache that the stream keeps honest.

mod cache;
mod codec;
mod listener;
mod schema;
mod write;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{
    ChangeSender, ChangeStream, Credentials, DeviceIdentity, DeviceStatus, ETag, Error,
    IdentityPage, IdentityStore, Lookup, MAX_PAGE_SIZE, NewIdentity, Result,
};
use tokio::task::JoinHandle;

use crate::postgres::{PgError, PgPool, migrate};

pub(crate) use codec::backend;
pub(crate) use write::{Change, create_in, delete_in, update_in};

/// Longest namespace accepted, in bytes (it travels in every change notification, whose payload
/// PostgreSQL caps at 8 000 bytes).
pub const MAX_NAMESPACE_BYTES: usize = 256;

/// Settings of a [`PgIdentityStore`]. Start from [`Default`] and change what you need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgIdentityConfig {
    /// Which store of the database this is: stores with different namespaces share the tables and
    /// never see each other's identities or changes. Default: empty.
    pub namespace: String,
    /// Most identities the lookup cache holds (0 turns it off). Default 100 000.
    pub cache_capacity: usize,
    /// Room per change-stream subscriber before it lags. Default 4 096.
    pub change_capacity: usize,
}

impl Default for PgIdentityConfig {
    fn default() -> Self {
        PgIdentityConfig {
            namespace: String::new(),
            cache_capacity: 100_000,
            change_capacity: 4096,
        }
    }
}

impl PgIdentityConfig {
    /// Sets [`namespace`](Self::namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`cache_capacity`](Self::cache_capacity).
    pub fn cache_capacity(mut self, cache_capacity: usize) -> Self {
        self.cache_capacity = cache_capacity;
        self
    }

    /// Sets [`change_capacity`](Self::change_capacity).
    pub fn change_capacity(mut self, change_capacity: usize) -> Self {
        self.change_capacity = change_capacity;
        self
    }
}

/// What the store and its change feed share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) namespace: String,
    pub(crate) changes: ChangeSender,
    pub(crate) cache: cache::Cache,
}

/// Stops the change feed when the last handle of the store is dropped.
#[derive(Debug)]
struct FeedGuard(JoinHandle<()>);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An [`IdentityStore`] in PostgreSQL.
///
/// * Every write is one transaction: the row, a row in the change table, and a `NOTIFY` that
///   PostgreSQL delivers at commit, to every process listening, in commit order.
/// * [`subscribe`](IdentityStore::subscribe) follows the changes of every process using the same
///   database and namespace: a device disabled anywhere is seen here within milliseconds. A
///   dedicated connection listens; after an outage it reconnects and catches up from the change
///   table, so no change is lost to a short outage (the table keeps 10 minutes).
/// * [`get`](IdentityStore::get) answers from a cache when it can ([`Lookup::ready`], no I/O):
///   entries are dropped on every change of their device (this process's writes at once, other
///   processes' when their notification arrives) and the whole cache is off while the feed is
///   disconnected. See `docs/postgres.md` for the exact guarantee.
/// * Credentials are stored as the crate's file store keeps them: key and thumbprint bytes, the
///   passphrase's argon2id PHC string. None of them appears in errors, logs or `Debug`.
///
/// Cloning shares the store.
#[derive(Clone)]
pub struct PgIdentityStore {
    shared: Arc<Shared>,
    _feed: Arc<FeedGuard>,
}

impl PgIdentityStore {
    /// Opens the store: creates or upgrades the schema and starts listening for changes before it
    /// returns, so that every write committed after `open` reaches this store's subscribers.
    pub async fn open(pool: PgPool, config: PgIdentityConfig) -> Result<Self> {
        if config.namespace.len() > MAX_NAMESPACE_BYTES {
            return Err(Error::InvalidInput {
                reason: format!("a namespace is at most {MAX_NAMESPACE_BYTES} bytes"),
            });
        }
        migrate(&pool, schema::COMPONENT, schema::MIGRATIONS)
            .await
            .map_err(backend)?;
        let listening = listener::listen(&pool).await.map_err(backend)?;
        let floor = listener::current_floor(&listening.0)
            .await
            .map_err(backend)?;
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            namespace: config.namespace,
            changes: ChangeSender::new(config.change_capacity),
            cache: cache::Cache::new(config.cache_capacity),
        });
        // The feed is connected: lookups may be cached from now on.
        shared.cache.reset(true);
        let feed = tokio::spawn(listener::run(
            Arc::downgrade(&shared),
            pool,
            listening,
            floor,
        ));
        Ok(PgIdentityStore {
            shared,
            _feed: Arc::new(FeedGuard(feed)),
        })
    }

    /// The store's namespace.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Drops `id` from the lookup cache (after a write made outside the store's own methods,
    /// such as a provisioning transaction).
    pub(crate) fn forget(&self, id: &DeviceId) {
        self.shared.cache.invalidate(id);
    }

    /// How many identities the lookup cache holds now.
    pub fn cached(&self) -> usize {
        self.shared.cache.len()
    }

    async fn read(shared: &Shared, id: &DeviceId) -> Result<Option<Arc<DeviceIdentity>>> {
        let epoch = shared.cache.epoch();
        let client = shared.pool.get().await.map_err(backend)?;
        let statement = client
            .prepare_cached(write::GET)
            .await
            .map_err(|e| backend(PgError::query("prepare identity get", e)))?;
        let row = client
            .query_opt(&statement, &[&shared.namespace, &id.as_str()])
            .await
            .map_err(|e| backend(PgError::query("get identity", e)))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = Arc::new(codec::record(&row)?);
        shared.cache.fill(epoch, &record);
        Ok(Some(record))
    }

    /// Runs a write in a transaction and drops the device from the cache once it committed.
    async fn written<T>(&self, id: &DeviceId, result: Result<T>) -> Result<T> {
        // Invalidated on failure too: a commit whose acknowledgement was lost may have happened.
        self.shared.cache.invalidate(id);
        result
    }
}

impl fmt::Debug for PgIdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIdentityStore")
            .field("target", &self.shared.pool.config().target())
            .field("namespace", &self.shared.namespace)
            .field("cached", &self.shared.cache.len())
            .finish()
    }
}

#[async_trait]
impl IdentityStore for PgIdentityStore {
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        let id = identity.id.clone();
        let result = async {
            let mut client = self.shared.pool.get().await.map_err(backend)?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| backend(PgError::query("begin identity create", e)))?;
            let record = create_in(&tx, &self.shared.namespace, identity).await?;
            tx.commit()
                .await
                .map_err(|e| backend(PgError::query("commit identity create", e)))?;
            Ok(record)
        }
        .await;
        self.written(&id, result).await
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        match self.shared.cache.get(id) {
            Some(hit) => Lookup::ready(Ok(Some(hit))),
            None => Lookup::new(Self::read(&self.shared, id)),
        }
    }

    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let result = write::update(&self.shared, id, if_match, write::Change::Status(status)).await;
        self.written(id, result).await
    }

    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let result = write::update(
            &self.shared,
            id,
            if_match,
            write::Change::Credentials(credentials),
        )
        .await;
        self.written(id, result).await
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
        let result = async {
            let mut client = self.shared.pool.get().await.map_err(backend)?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| backend(PgError::query("begin identity delete", e)))?;
            delete_in(&tx, &self.shared.namespace, id, if_match).await?;
            tx.commit()
                .await
                .map_err(|e| backend(PgError::query("commit identity delete", e)))
        }
        .await;
        self.written(id, result).await
    }

    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        if limit == 0 {
            return Err(Error::InvalidInput {
                reason: "a page limit must be positive".into(),
            });
        }
        let limit = limit.min(MAX_PAGE_SIZE);
        let client = self.shared.pool.get().await.map_err(backend)?;
        let statement = client
            .prepare_cached(write::LIST)
            .await
            .map_err(|e| backend(PgError::query("prepare identity list", e)))?;
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &statement,
                &[
                    &self.shared.namespace,
                    &after.map_or("", DeviceId::as_str),
                    &fetch,
                ],
            )
            .await
            .map_err(|e| backend(PgError::query("list identities", e)))?;
        let more = rows.len() > limit;
        let items = rows
            .iter()
            .take(limit)
            .map(codec::record)
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(IdentityPage { items, next })
    }

    fn subscribe(&self) -> ChangeStream {
        self.shared.changes.subscribe()
    }
}
