//! [`PgStateStore`]: the stream processors' device state ([`StateStore`]) in PostgreSQL: the
//! event history by device and time, and the last-known-values records.
//!
//! Writes of one device serialise on its row in `iot_state_devices` (`FOR UPDATE`), where the
//! redelivery position and the last-known-values record live; writes of different devices never
//! wait for each other. The rules themselves are the stream crate's: [`LastKnown::apply`] for
//! last known values, [`SourcePosition::is_covered_by`] for redeliveries.

mod schema;

use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_stream::state::{Event, LastKnown, LkvUpdate, SourcePosition, StateStore};
use iot_stream::{Error, Result};

use crate::postgres::call::{Work, bounded};
use crate::postgres::values::{from_bigint, from_micros, to_micros};
use crate::postgres::{PgClient, PgError, PgPool, errors, migrate};

/// How a [`PgStateStore`] is opened.
///
/// ```
/// use std::time::Duration;
/// use iot_sdk::postgres::PgStateStoreConfig;
///
/// let config = PgStateStoreConfig::default().call_timeout(Duration::from_secs(5));
/// assert_eq!(config.call_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgStateStoreConfig {
    /// How long one call may work on its connection before it fails with a retryable error (the
    /// wait for a connection is bounded by the pool's own timeouts). Default 30 s.
    pub call_timeout: Duration,
}

impl Default for PgStateStoreConfig {
    fn default() -> Self {
        PgStateStoreConfig {
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl PgStateStoreConfig {
    /// Sets [`call_timeout`](Self::call_timeout).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// A [`StateStore`] in PostgreSQL: the event history by device and time, and the
/// last-known-values records. Every acknowledged write is committed before the call returns.
///
/// Writes of one device serialise on its row in `iot_state_devices` (`FOR UPDATE`), where the
/// redelivery position and the last-known-values record live; writes of different devices never
/// wait for each other. The rules themselves are the stream crate's: [`LastKnown::apply`] for
/// last known values, [`SourcePosition::is_covered_by`] for redeliveries.
#[derive(Clone, Debug)]
pub struct PgStateStore {
    pool: PgPool,
    config: PgStateStoreConfig,
}

const ENSURE_DEVICE: &str =
    "INSERT INTO iot_state_devices (device) VALUES ($1) ON CONFLICT (device) DO NOTHING";
const DEVICE_FOR_UPDATE: &str = "SELECT last_partition, last_offset, appended, last_known::text \
     FROM iot_state_devices WHERE device = $1 FOR UPDATE";
const INSERT_EVENTS: &str = "INSERT INTO iot_state_events \
     (device, time, n, partition, \"offset\", payload) \
     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bytea[])";
const UPDATE_HISTORY: &str = "UPDATE iot_state_devices \
     SET last_partition = $2, last_offset = $3, appended = $4 WHERE device = $1";
const READ_EVENTS: &str = "SELECT time, partition, \"offset\", payload FROM iot_state_events \
     WHERE device = $1 AND time >= $2 AND time < $3 ORDER BY time, n LIMIT $4";
const RETENTION: &str = "DELETE FROM iot_state_events WHERE time < $1";
const LAST_KNOWN: &str = "SELECT last_known::text FROM iot_state_devices WHERE device = $1";
const UPDATE_LAST_KNOWN: &str =
    "UPDATE iot_state_devices SET last_known = $2::text::json WHERE device = $1";
const DEVICES: &str = "SELECT device FROM iot_state_devices";

fn query(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| errors::stream(PgError::query(context, e))
}

fn corrupt(reason: String) -> Error {
    Error::backend(
        "postgres",
        format!("the state tables hold a row this adapter cannot read: {reason}"),
        false,
    )
}

fn position(partition: Option<i64>, offset: Option<i64>) -> Result<Option<SourcePosition>> {
    match (partition, offset) {
        (Some(p), Some(o)) => Ok(Some(SourcePosition {
            partition: u32::try_from(p).map_err(|_| corrupt(format!("partition {p}")))?,
            offset: from_bigint(o),
        })),
        _ => Ok(None),
    }
}

fn offset(p: SourcePosition) -> Result<i64> {
    i64::try_from(p.offset).map_err(|_| Error::InvalidInput {
        reason: format!(
            "source offset {} is past what PostgreSQL's bigint holds",
            p.offset
        ),
    })
}

fn parse_last_known(text: Option<String>) -> Result<Option<LastKnown>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("last known values: {e}"))))
        .transpose()
}

impl PgStateStore {
    /// Brings the schema up to date.
    pub async fn open(pool: PgPool, config: PgStateStoreConfig) -> Result<Self> {
        tokio::time::timeout(
            config.call_timeout,
            migrate(&pool, schema::COMPONENT, schema::MIGRATIONS),
        )
        .await
        .map_err(|_| {
            errors::stream(PgError::Unreachable {
                target: pool.config().target(),
                reason: "the schema migration did not finish in time".into(),
            })
        })?
        .map_err(errors::stream)?;
        tracing::info!(target = %pool.config().target(), "PostgreSQL state store opened");
        Ok(PgStateStore { pool, config })
    }

    async fn call<T: Send>(
        &self,
        work: impl for<'c> FnOnce(&'c mut PgClient) -> Work<'c, T, Error>,
    ) -> Result<T> {
        bounded(&self.pool, self.config.call_timeout, errors::stream, work).await
    }
}

#[async_trait]
impl StateStore for PgStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let tx = c.transaction().await.map_err(query("begin append"))?;
                let st = tx
                    .prepare_cached(ENSURE_DEVICE)
                    .await
                    .map_err(query("prepare device"))?;
                tx.execute(&st, &[&id])
                    .await
                    .map_err(query("create a device row"))?;
                let st = tx
                    .prepare_cached(DEVICE_FOR_UPDATE)
                    .await
                    .map_err(query("prepare device read"))?;
                let row = tx
                    .query_one(&st, &[&id])
                    .await
                    .map_err(query("lock a device"))?;
                let mut last = position(row.get(0), row.get(1))?;
                let mut appended: i64 = row.get(2);
                let (mut times, mut ns, mut partitions, mut offsets, mut payloads) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for e in &events {
                    if let Some(s) = e.source {
                        if s.is_covered_by(last) {
                            continue;
                        }
                        last = Some(s);
                    }
                    times.push(to_micros(e.time));
                    ns.push(appended);
                    appended += 1;
                    partitions.push(e.source.map(|s| i64::from(s.partition)));
                    offsets.push(e.source.map(offset).transpose()?);
                    payloads.push(e.payload.as_ref());
                }
                if times.is_empty() {
                    // Every event was a redelivery; dropping the transaction undoes the row.
                    return Ok(0);
                }
                let st = tx
                    .prepare_cached(INSERT_EVENTS)
                    .await
                    .map_err(query("prepare insert"))?;
                tx.execute(&st, &[&id, &times, &ns, &partitions, &offsets, &payloads])
                    .await
                    .map_err(query("insert events"))?;
                let (lp, lo) = match last {
                    Some(p) => (Some(i64::from(p.partition)), Some(offset(p)?)),
                    None => (None, None),
                };
                let st = tx
                    .prepare_cached(UPDATE_HISTORY)
                    .await
                    .map_err(query("prepare device update"))?;
                tx.execute(&st, &[&id, &lp, &lo, &appended])
                    .await
                    .map_err(query("update a device"))?;
                tx.commit().await.map_err(query("commit append"))?;
                Ok(times.len())
            })
        })
        .await
    }

    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let device = device.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(READ_EVENTS)
                    .await
                    .map_err(query("prepare read"))?;
                let rows = c
                    .query(
                        &st,
                        &[&device.as_str(), &to_micros(from), &to_micros(to), &limit],
                    )
                    .await
                    .map_err(query("read events"))?;
                rows.iter()
                    .map(|r| {
                        let payload: Vec<u8> = r.get(3);
                        let mut e = Event::new(from_micros(r.get(0)), payload);
                        e.source = position(r.get(1), r.get(2))?;
                        Ok(e)
                    })
                    .collect()
            })
        })
        .await
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(RETENTION)
                    .await
                    .map_err(query("prepare retention"))?;
                c.execute(&st, &[&to_micros(before)])
                    .await
                    .map_err(query("remove old events"))
            })
        })
        .await
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(LAST_KNOWN)
                    .await
                    .map_err(query("prepare lkv read"))?;
                let row = c
                    .query_opt(&st, &[&device.as_str()])
                    .await
                    .map_err(query("read last known values"))?;
                parse_last_known(row.and_then(|r| r.get(0)))
            })
        })
        .await
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        if !update.patch.is_object() {
            // The rule's own refusal, before any row is touched.
            return LastKnown::new().apply(&update);
        }
        let device = device.clone();
        self.call(move |c| {
            Box::pin(async move {
                let id = device.as_str();
                let tx = c.transaction().await.map_err(query("begin merge"))?;
                let st = tx
                    .prepare_cached(ENSURE_DEVICE)
                    .await
                    .map_err(query("prepare device"))?;
                tx.execute(&st, &[&id])
                    .await
                    .map_err(query("create a device row"))?;
                let st = tx
                    .prepare_cached(DEVICE_FOR_UPDATE)
                    .await
                    .map_err(query("prepare device read"))?;
                let row = tx
                    .query_one(&st, &[&id])
                    .await
                    .map_err(query("lock a device"))?;
                let mut lkv = parse_last_known(row.get(3))?.unwrap_or_default();
                if !lkv.apply(&update)? {
                    // A redelivery: nothing to write (dropping the transaction undoes the row).
                    return Ok(false);
                }
                let text = serde_json::to_string(&lkv)
                    .map_err(|e| corrupt(format!("cannot serialize last known values: {e}")))?;
                let st = tx
                    .prepare_cached(UPDATE_LAST_KNOWN)
                    .await
                    .map_err(query("prepare lkv write"))?;
                tx.execute(&st, &[&id, &text])
                    .await
                    .map_err(query("write last known values"))?;
                tx.commit().await.map_err(query("commit merge"))?;
                Ok(true)
            })
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        self.call(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(DEVICES)
                    .await
                    .map_err(query("prepare devices"))?;
                let rows = c.query(&st, &[]).await.map_err(query("list devices"))?;
                let mut ids = rows
                    .iter()
                    .map(|r| {
                        let id: String = r.get(0);
                        id.parse::<DeviceId>()
                            .map_err(|_| corrupt(format!("invalid device id {id:?}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Sorted as the SDK orders ids, whatever the database's collation.
                ids.sort();
                Ok(ids)
            })
        })
        .await
    }
}
