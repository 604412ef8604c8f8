//! [`PgTwinStore`]: the gateway's twins ([`TwinStore`]) in a PostgreSQL table.
//!
//! A patch reads the device's row `FOR UPDATE`, applies [`Twin::patched`] (the one function that
//! holds the twin rules for every store) and writes the result back in the same transaction: two
//! patches of one device serialise on its row, patches of different devices never wait for each
//! other. A refused patch rolls back and changes nothing.

mod schema;

use std::time::Duration;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_gateway::twins::Section;
use iot_gateway::{Error, Result, Twin, TwinLimits, TwinSection, TwinStore};
use serde_json::Value;

use crate::postgres::call::{Work, bounded};
use crate::postgres::values::{from_bigint, to_bigint};
use crate::postgres::{PgClient, PgError, PgPool, errors, migrate};

/// How a [`PgTwinStore`] is opened.
///
/// ```
/// use std::time::Duration;
/// use iot_sdk::postgres::PgTwinStoreConfig;
///
/// let config = PgTwinStoreConfig::default().call_timeout(Duration::from_secs(5));
/// assert_eq!(config.call_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgTwinStoreConfig {
    /// How long one call may work on its connection before it fails with a retryable error (the
    /// wait for a connection is bounded by the pool's own timeouts). Default 30 s.
    pub call_timeout: Duration,
}

impl Default for PgTwinStoreConfig {
    fn default() -> Self {
        PgTwinStoreConfig {
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl PgTwinStoreConfig {
    /// Sets [`call_timeout`](Self::call_timeout).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// A [`TwinStore`] in PostgreSQL. Every acknowledged patch is
/// committed before the call returns.
///
/// A patch reads the device's row `FOR UPDATE`, applies [`Twin::patched`] (the one function that
/// holds the twin rules for every store) and writes the result back in the same transaction: two
/// patches of one device serialise on its row, patches of different devices never wait for each
/// other. A refused patch rolls back and changes nothing.
#[derive(Clone, Debug)]
pub struct PgTwinStore {
    pool: PgPool,
    config: PgTwinStoreConfig,
}

const GET: &str = "SELECT desired::text, desired_version, reported::text, reported_version \
     FROM iot_twins WHERE device = $1";
/// Creates the empty twin if the device has none, so the next statement has a row to lock.
const ENSURE: &str = "INSERT INTO iot_twins VALUES ($1, '{}', 0, '{}', 0) \
     ON CONFLICT (device) DO NOTHING";
const GET_FOR_UPDATE: &str = "SELECT desired::text, desired_version, reported::text, \
     reported_version FROM iot_twins WHERE device = $1 FOR UPDATE";
const PUT: &str = "UPDATE iot_twins SET desired = $2::text::jsonb, desired_version = $3, \
     reported = $4::text::jsonb, reported_version = $5 WHERE device = $1";
const REMOVE: &str = "DELETE FROM iot_twins WHERE device = $1";

fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::gateway(PgError::query(context, e))
}

fn section(json: &str, version: i64) -> Result<TwinSection> {
    let properties: Value = serde_json::from_str(json).map_err(|e| {
        Error::backend(
            "postgres",
            format!("iot_twins holds a section that is not JSON: {e}"),
            false,
        )
    })?;
    Ok(TwinSection {
        properties,
        version: from_bigint(version),
    })
}

fn twin(row: &tokio_postgres::Row) -> Result<Twin> {
    Ok(Twin {
        desired: section(row.get(0), row.get(1))?,
        reported: section(row.get(2), row.get(3))?,
    })
}

fn version(v: u64) -> Result<i64> {
    to_bigint(v).ok_or_else(|| Error::InvalidInput {
        reason: format!("twin version {v} is past what PostgreSQL's bigint holds"),
    })
}

impl PgTwinStore {
    /// Brings the schema up to date.
    pub async fn open(pool: PgPool, config: PgTwinStoreConfig) -> Result<Self> {
        tokio::time::timeout(
            config.call_timeout,
            migrate(&pool, schema::COMPONENT, schema::MIGRATIONS),
        )
        .await
        .map_err(|_| {
            errors::gateway(PgError::Unreachable {
                target: pool.config().target(),
                reason: "the schema migration did not finish in time".into(),
            })
        })?
        .map_err(errors::gateway)?;
        tracing::info!(target = %pool.config().target(), "PostgreSQL twin store opened");
        Ok(PgTwinStore { pool, config })
    }

    async fn call<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, Error>,
    ) -> Result<T> {
        bounded(&self.pool, self.config.call_timeout, errors::gateway, work).await
    }
}

#[async_trait]
impl TwinStore for PgTwinStore {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(GET)
                    .await
                    .map_err(query("prepare twin read"))?;
                match c
                    .query_opt(&st, &[&device.as_str()])
                    .await
                    .map_err(query("read a twin"))?
                {
                    Some(row) => twin(&row),
                    None => Ok(Twin::default()),
                }
            })
        })
        .await
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        // Refused before a connection is taken: the rules need no stored state for this one.
        if !patch.is_object() {
            return Twin::default().patched(device, section, patch, if_version, limits);
        }
        let device = device.clone();
        let patch = patch.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let tx = c.transaction().await.map_err(query("begin twin patch"))?;
                let st = tx
                    .prepare_cached(ENSURE)
                    .await
                    .map_err(query("prepare twin row"))?;
                tx.execute(&st, &[&id])
                    .await
                    .map_err(query("create a twin row"))?;
                let st = tx
                    .prepare_cached(GET_FOR_UPDATE)
                    .await
                    .map_err(query("prepare twin read"))?;
                let row = tx
                    .query_one(&st, &[&id])
                    .await
                    .map_err(query("lock a twin"))?;
                // A refusal returns here; dropping the transaction rolls the row creation back.
                let after = twin(&row)?.patched(&device, section, &patch, if_version, limits)?;
                let desired = after.desired.properties.to_string();
                let reported = after.reported.properties.to_string();
                let st = tx
                    .prepare_cached(PUT)
                    .await
                    .map_err(query("prepare twin write"))?;
                tx.execute(
                    &st,
                    &[
                        &id,
                        &desired,
                        &version(after.desired.version)?,
                        &reported,
                        &version(after.reported.version)?,
                    ],
                )
                .await
                .map_err(query("write a twin"))?;
                tx.commit().await.map_err(query("commit twin patch"))?;
                Ok(after)
            })
        })
        .await
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(REMOVE)
                    .await
                    .map_err(query("prepare twin removal"))?;
                c.execute(&st, &[&device.as_str()])
                    .await
                    .map_err(query("remove a twin"))?;
                Ok(())
            })
        })
        .await
    }
}
