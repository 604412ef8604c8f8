//! The registry's writes, each against any client or transaction, so that provisioning can run
//! them inside a transaction that also writes the identity.

use deadpool_postgres::GenericClient;
use iot_core::{DeviceId, Timestamp};
use iot_registry::{DeviceDocument, DeviceRecord, ETag, Error, Result};

use super::PgRegistryConfig;
use super::row::{self, backend};
use crate::postgres::{PgClient, PgError};

/// One record by namespace and id.
pub(crate) const GET: &str = "SELECT device_id, doc::text, etag, created_us, updated_us FROM iot_registry_devices \
     WHERE ns = $1 AND device_id = $2";

const LOCK: &str = "SELECT device_id, doc::text, etag, created_us, updated_us \
     FROM iot_registry_devices WHERE ns = $1 AND device_id = $2 FOR UPDATE";

const INSERT: &str = "INSERT INTO iot_registry_devices \
     (ns, device_id, doc, etag, created_us, updated_us) \
     VALUES ($1, $2, $3::text::jsonb, nextval('iot_registry_etag'), $4, $4) \
     ON CONFLICT DO NOTHING \
     RETURNING device_id, doc::text, etag, created_us, updated_us";

const UPDATE: &str = "UPDATE iot_registry_devices \
     SET doc = $3::text::jsonb, etag = nextval('iot_registry_etag'), updated_us = $4 \
     WHERE ns = $1 AND device_id = $2 \
     RETURNING device_id, doc::text, etag, created_us, updated_us";

const DELETE: &str = "DELETE FROM iot_registry_devices WHERE ns = $1 AND device_id = $2";

fn now_micros() -> i64 {
    i64::try_from(Timestamp::now().as_unix_micros()).unwrap_or(i64::MAX)
}

fn query_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| backend(PgError::query(context, e))
}

/// Inserts a new record. The record returned is read back from the row, so it is exactly what
/// later reads return.
pub(crate) async fn create_in<C: GenericClient>(
    client: &C,
    config: &PgRegistryConfig,
    id: &DeviceId,
    doc: DeviceDocument,
) -> Result<DeviceRecord> {
    config.limits.check_document(&doc)?;
    let text = row::document_text(&doc)?;
    let statement = client
        .prepare_cached(INSERT)
        .await
        .map_err(query_error("prepare registry insert"))?;
    let row = client
        .query_opt(
            &statement,
            &[&config.namespace, &id.as_str(), &text, &now_micros()],
        )
        .await
        .map_err(query_error("insert registry record"))?;
    match row {
        Some(row) => row::record(&row),
        None => Err(Error::AlreadyExists { id: id.clone() }),
    }
}

/// The current record, locked for the rest of the transaction, checked against `if_match`.
async fn locked<C: GenericClient>(
    client: &C,
    config: &PgRegistryConfig,
    id: &DeviceId,
    if_match: Option<&ETag>,
) -> Result<DeviceRecord> {
    let statement = client
        .prepare_cached(LOCK)
        .await
        .map_err(query_error("prepare registry lock"))?;
    let row = client
        .query_opt(&statement, &[&config.namespace, &id.as_str()])
        .await
        .map_err(query_error("lock registry record"))?
        .ok_or_else(|| Error::NotFound { id: id.clone() })?;
    let current = row::record(&row)?;
    if let Some(expected) = if_match
        && *expected != current.etag
    {
        return Err(Error::PreconditionFailed {
            id: id.clone(),
            expected: expected.clone(),
            actual: current.etag,
        });
    }
    Ok(current)
}

/// Replaces the document of `id` with what `change` makes of the current one, in one
/// transaction: the row is locked, so concurrent writers with the same `if_match` are
/// serialised and all but one see the winner's etag.
pub(crate) async fn update(
    client: &mut PgClient,
    config: &PgRegistryConfig,
    id: &DeviceId,
    if_match: Option<&ETag>,
    change: impl FnOnce(DeviceDocument) -> Result<DeviceDocument> + Send,
) -> Result<DeviceRecord> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("begin registry update"))?;
    let record = update_in(&tx, config, id, if_match, change).await?;
    tx.commit()
        .await
        .map_err(query_error("commit registry update"))?;
    Ok(record)
}

/// [`update`] within the caller's transaction (the row stays locked until it ends).
pub(crate) async fn update_in<C: GenericClient>(
    client: &C,
    config: &PgRegistryConfig,
    id: &DeviceId,
    if_match: Option<&ETag>,
    change: impl FnOnce(DeviceDocument) -> Result<DeviceDocument> + Send,
) -> Result<DeviceRecord> {
    let current = locked(client, config, id, if_match).await?;
    let doc = change(current.into_document())?;
    config.limits.check_document(&doc)?;
    let text = row::document_text(&doc)?;
    let statement = client
        .prepare_cached(UPDATE)
        .await
        .map_err(query_error("prepare registry update"))?;
    let row = client
        .query_one(
            &statement,
            &[&config.namespace, &id.as_str(), &text, &now_micros()],
        )
        .await
        .map_err(query_error("update registry record"))?;
    row::record(&row)
}

/// Deletes the record of `id` within the caller's transaction.
pub(crate) async fn delete_in<C: GenericClient>(
    client: &C,
    config: &PgRegistryConfig,
    id: &DeviceId,
    if_match: Option<&ETag>,
) -> Result<()> {
    locked(client, config, id, if_match).await?;
    let statement = client
        .prepare_cached(DELETE)
        .await
        .map_err(query_error("prepare registry delete"))?;
    client
        .execute(&statement, &[&config.namespace, &id.as_str()])
        .await
        .map_err(query_error("delete registry record"))?;
    Ok(())
}
