//! [`PgRegistry`]: the device registry over PostgreSQL (`jsonb` documents, queries translated to
//! SQL).
//!
//! Queries give exactly the answers of `iot_registry::MemoryRegistry`, in the same order and with
//! the same continuation tokens ([`iot_registry::PageToken`]); how each part of the language
//! becomes SQL, and what is evaluated in Rust instead, is in `sql.rs` and `docs/postgres.md`.

mod row;
mod schema;
mod sql;
mod write;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use iot_core::DeviceId;
use iot_registry::{
    DeviceDocument, DeviceRecord, DocumentLimits, ETag, Error, Page, PageRequest, PageToken, Query,
    Registry, Result, Select,
};
use serde_json::Value;

use crate::postgres::{PgError, PgPool, migrate};

pub(crate) use row::backend;
pub(crate) use write::{create_in, delete_in, update_in};

/// Statements kept prepared per connection before the cache is emptied: every query shape is a
/// statement of its own, and a service running arbitrary queries must not grow it without end.
const STATEMENT_CACHE_LIMIT: usize = 256;

/// Settings of a [`PgRegistry`]. Start from [`Default`] and change what you need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgRegistryConfig {
    /// Which registry of the database this is: registries with different namespaces share the
    /// tables and never see each other's records. Default: empty.
    pub namespace: String,
    /// Size, depth and key limits of documents.
    pub limits: DocumentLimits,
    /// Largest page a query may ask for. Default 10 000, as the crate's registries.
    pub max_page_size: usize,
}

impl Default for PgRegistryConfig {
    fn default() -> Self {
        PgRegistryConfig {
            namespace: String::new(),
            limits: DocumentLimits::default(),
            max_page_size: 10_000,
        }
    }
}

impl PgRegistryConfig {
    /// Sets [`namespace`](Self::namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: DocumentLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`max_page_size`](Self::max_page_size).
    pub fn max_page_size(mut self, max_page_size: usize) -> Self {
        self.max_page_size = max_page_size;
        self
    }
}

/// A [`Registry`] whose records live in PostgreSQL: one row per device, the document as `jsonb`.
///
/// Every write is one committed transaction (durable when acknowledged, so
/// [`sync`](Registry::sync) has nothing to do), and every process that opens the same database
/// and namespace sees the same registry. Cloning shares the pool.
///
/// ```no_run
/// use iot_sdk::postgres::{PgPool, PgRegistry, PgRegistryConfig};
/// use iot_sdk::registry::{RegistryExt, QueryOutput};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPool::from_url("postgres://postgres@127.0.0.1:5432/test")?;
/// let registry = PgRegistry::open(pool, PgRegistryConfig::default()).await?;
/// let found = registry.run("SELECT COUNT() FROM devices WHERE metadata.building = 'B7'").await?;
/// assert!(matches!(found, QueryOutput::Count(_)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgRegistry {
    pool: PgPool,
    config: Arc<PgRegistryConfig>,
}

impl PgRegistry {
    /// Opens the registry, creating or upgrading its schema first.
    pub async fn open(pool: PgPool, config: PgRegistryConfig) -> Result<Self> {
        config.limits.validate()?;
        if config.max_page_size == 0 {
            return Err(Error::Config {
                reason: "max_page_size must be positive".into(),
            });
        }
        migrate(&pool, schema::COMPONENT, schema::MIGRATIONS)
            .await
            .map_err(backend)?;
        Ok(PgRegistry {
            pool,
            config: Arc::new(config),
        })
    }

    /// The pool the registry uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The registry's settings.
    pub fn config(&self) -> &PgRegistryConfig {
        &self.config
    }

    async fn client(&self) -> Result<crate::postgres::PgClient> {
        let client = self.pool.get().await.map_err(backend)?;
        if client.statement_cache.size() > STATEMENT_CACHE_LIMIT {
            client.statement_cache.clear();
        }
        Ok(client)
    }

    fn check_page(&self, query: &Query, page: &PageRequest) -> Result<()> {
        if query.select() != Select::All {
            return Err(Error::InvalidInput {
                reason: "query() returns records: use count() for SELECT COUNT()".into(),
            });
        }
        if page.max_items == 0 || page.max_items > self.config.max_page_size {
            return Err(Error::InvalidInput {
                reason: format!(
                    "page size must be 1 to {}, got {}",
                    self.config.max_page_size, page.max_items
                ),
            });
        }
        Ok(())
    }

    /// Every record of the namespace that may match `query` (the index hint applied), for the
    /// queries evaluated in Rust.
    async fn candidates(&self, query: &Query) -> Result<Vec<DeviceRecord>> {
        let statement = sql::candidates(query, &self.config.namespace);
        let client = self.client().await?;
        let rows = client
            .query(statement.sql.as_str(), &statement.params.refs())
            .await
            .map_err(|e| backend(PgError::query("scan registry candidates", e)))?;
        let records = rows.iter().map(row::record).collect::<Result<Vec<_>>>()?;
        Ok(records.into_iter().filter(|r| query.matches(r)).collect())
    }
}

impl fmt::Debug for PgRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRegistry")
            .field("target", &self.pool.config().target())
            .field("namespace", &self.config.namespace)
            .finish()
    }
}

#[async_trait]
impl Registry for PgRegistry {
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        let client = self.client().await?;
        create_in(&client, &self.config, id, doc).await
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(write::GET)
            .await
            .map_err(|e| backend(PgError::query("prepare registry get", e)))?;
        let row = client
            .query_opt(&statement, &[&self.config.namespace, &id.as_str()])
            .await
            .map_err(|e| backend(PgError::query("get registry record", e)))?;
        row.as_ref().map(row::record).transpose()
    }

    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let mut client = self.client().await?;
        write::update(&mut client, &self.config, id, if_match, |_| Ok(doc)).await
    }

    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let limits = self.config.limits;
        let mut client = self.client().await?;
        write::update(&mut client, &self.config, id, if_match, |current| {
            current.merged(patch, &limits)
        })
        .await
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| backend(PgError::query("begin registry delete", e)))?;
        delete_in(&tx, &self.config, id, if_match).await?;
        tx.commit()
            .await
            .map_err(|e| backend(PgError::query("commit registry delete", e)))
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        self.check_page(query, page)?;
        let token = page
            .continuation
            .as_deref()
            .map(|t| PageToken::decode(query, t))
            .transpose()?;
        let returned = token.as_ref().map_or(0, PageToken::returned);
        let limit = query.limit().unwrap_or(u64::MAX);
        let take = limit.saturating_sub(returned).min(page.max_items as u64);
        if take == 0 {
            return Ok(Page::new(Vec::new(), None));
        }
        let mut records = match sql::translate(
            query,
            &self.config.namespace,
            token.as_ref(),
            take.saturating_add(1),
        ) {
            Some(statement) => {
                let client = self.client().await?;
                let prepared = client
                    .prepare_cached(&statement.sql)
                    .await
                    .map_err(|e| backend(PgError::query("prepare registry query", e)))?;
                let rows = client
                    .query(&prepared, &statement.params.refs())
                    .await
                    .map_err(|e| backend(PgError::query("run registry query", e)))?;
                rows.iter().map(row::record).collect::<Result<Vec<_>>>()?
            }
            None => {
                let mut found = self.candidates(query).await?;
                if let Some(token) = &token {
                    found.retain(|r| token.is_after(query, r));
                }
                found.sort_by(|a, b| query.cmp_records(a, b));
                found.truncate(usize::try_from(take.saturating_add(1)).unwrap_or(usize::MAX));
                found
            }
        };
        let take = usize::try_from(take).unwrap_or(usize::MAX);
        let more = records.len() > take;
        records.truncate(take);
        let continuation = match records.last() {
            Some(last) if more && returned.saturating_add(take as u64) < limit => {
                Some(PageToken::after(query, last, returned + records.len() as u64).encode())
            }
            _ => None,
        };
        Ok(Page::new(records, continuation))
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        match sql::translate_count(query, &self.config.namespace) {
            Some(statement) => {
                let client = self.client().await?;
                let prepared = client
                    .prepare_cached(&statement.sql)
                    .await
                    .map_err(|e| backend(PgError::query("prepare registry count", e)))?;
                let row = client
                    .query_one(&prepared, &statement.params.refs())
                    .await
                    .map_err(|e| backend(PgError::query("run registry count", e)))?;
                let n: i64 = row.get(0);
                Ok(u64::try_from(n).unwrap_or(0))
            }
            None => {
                let n = self.candidates(query).await?.len() as u64;
                Ok(query.limit().map_or(n, |l| n.min(l)))
            }
        }
    }
}
