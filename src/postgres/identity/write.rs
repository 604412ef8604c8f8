//! The identity store's writes. Each runs in the caller's transaction (so that provisioning can
//! write the identity and the registry record in one), writes the change row and notifies.

use deadpool_postgres::GenericClient;
use iot_core::{DeviceId, Timestamp};
use iot_identity::{
    ChangeKind, Credentials, DeviceIdentity, DeviceStatus, ETag, Error, GenerationId,
    IdentityChange, NewIdentity, Result,
};

use super::Shared;
use super::codec::{self, CredentialColumns, backend};
use crate::postgres::PgError;

pub(crate) const GET: &str = "SELECT device_id, generation, etag, disabled_reason, cred_kind, \
     cred_primary, cred_secondary, cred_phc, created_us, updated_us, status_updated_us \
     FROM iot_identities WHERE ns = $1 AND device_id = $2";

const LOCK: &str = "SELECT device_id, generation, etag, disabled_reason, cred_kind, \
     cred_primary, cred_secondary, cred_phc, created_us, updated_us, status_updated_us \
     FROM iot_identities WHERE ns = $1 AND device_id = $2 FOR UPDATE";

pub(crate) const LIST: &str = "SELECT device_id, generation, etag, disabled_reason, cred_kind, \
     cred_primary, cred_secondary, cred_phc, created_us, updated_us, status_updated_us \
     FROM iot_identities WHERE ns = $1 AND device_id > $2 ORDER BY device_id LIMIT $3";

const INSERT: &str = "INSERT INTO iot_identities (ns, device_id, generation, etag, \
     disabled_reason, cred_kind, cred_primary, cred_secondary, cred_phc, created_us, updated_us, \
     status_updated_us) \
     VALUES ($1, $2, $3, nextval('iot_identity_etag'), $4, $5, $6, $7, $8, $9, $9, $9) \
     ON CONFLICT DO NOTHING RETURNING etag";

const UPDATE: &str = "UPDATE iot_identities SET etag = nextval('iot_identity_etag'), \
     disabled_reason = $3, cred_kind = $4, cred_primary = $5, cred_secondary = $6, cred_phc = $7, \
     updated_us = $8, status_updated_us = $9 \
     WHERE ns = $1 AND device_id = $2 RETURNING etag";

const DELETE: &str = "DELETE FROM iot_identities WHERE ns = $1 AND device_id = $2";

const NEXT_ETAG: &str = "SELECT nextval('iot_identity_etag')";

/// Records the change and notifies every listener; both take effect at commit.
const ANNOUNCE: &str = "WITH change AS ( \
     INSERT INTO iot_identity_changes (seq, ns, device_id, generation, kind, at_us) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq) \
     SELECT pg_notify('iot_identity', $7) FROM change";

fn query_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| backend(PgError::query(context, e))
}

fn reason_column(status: &DeviceStatus) -> Option<&str> {
    match status {
        DeviceStatus::Enabled => None,
        DeviceStatus::Disabled { reason } => Some(reason.as_str()),
    }
}

async fn announce<C: GenericClient>(
    client: &C,
    ns: &str,
    change: &IdentityChange,
    at: Timestamp,
) -> Result<()> {
    let statement = client
        .prepare_cached(ANNOUNCE)
        .await
        .map_err(query_error("prepare identity change"))?;
    let seq = i64::try_from(change.etag.as_u64()).unwrap_or(i64::MAX);
    client
        .query(
            &statement,
            &[
                &seq,
                &ns,
                &change.id.as_str(),
                &codec::generation_column(change.generation_id),
                &codec::kind_code(&change.kind),
                &codec::to_micros(at),
                &codec::payload(ns, change),
            ],
        )
        .await
        .map_err(query_error("record identity change"))?;
    Ok(())
}

/// Creates an identity within the caller's transaction.
pub(crate) async fn create_in<C: GenericClient>(
    client: &C,
    ns: &str,
    new: NewIdentity,
) -> Result<DeviceIdentity> {
    codec::check_storable(&new.credentials)?;
    let now = Timestamp::now();
    // Built first so that an invalid status is refused before the database is asked; the etag
    // is the row's, set below.
    let mut record = DeviceIdentity::created(new, GenerationId::random(), ETag::from_u64(0), now)?;
    let creds = CredentialColumns::of(&record.credentials);
    let statement = client
        .prepare_cached(INSERT)
        .await
        .map_err(query_error("prepare identity insert"))?;
    let row = client
        .query_opt(
            &statement,
            &[
                &ns,
                &record.id.as_str(),
                &codec::generation_column(record.generation_id),
                &reason_column(&record.status),
                &creds.kind,
                &creds.primary,
                &creds.secondary,
                &creds.phc,
                &codec::to_micros(now),
            ],
        )
        .await
        .map_err(query_error("insert identity"))?;
    let Some(row) = row else {
        return Err(Error::AlreadyExists { id: record.id });
    };
    record.etag = codec::etag_of(row.get(0));
    announce(client, ns, &record.change(ChangeKind::Created), now).await?;
    Ok(record)
}

/// The current record, locked for the rest of the transaction, checked against `if_match`.
async fn locked<C: GenericClient>(
    client: &C,
    ns: &str,
    id: &DeviceId,
    if_match: Option<ETag>,
) -> Result<DeviceIdentity> {
    let statement = client
        .prepare_cached(LOCK)
        .await
        .map_err(query_error("prepare identity lock"))?;
    let row = client
        .query_opt(&statement, &[&ns, &id.as_str()])
        .await
        .map_err(query_error("lock identity"))?
        .ok_or_else(|| Error::NotFound { id: id.clone() })?;
    let current = codec::record(&row)?;
    if let Some(expected) = if_match
        && expected != current.etag
    {
        return Err(Error::PreconditionFailed {
            id: id.clone(),
            expected,
            actual: current.etag,
        });
    }
    Ok(current)
}

/// What an update changes.
pub(crate) enum Change {
    Status(DeviceStatus),
    Credentials(Credentials),
}

/// Sets the status or replaces the credentials, in a transaction of its own.
pub(crate) async fn update(
    shared: &Shared,
    id: &DeviceId,
    if_match: Option<ETag>,
    change: Change,
) -> Result<DeviceIdentity> {
    let mut client = shared.pool.get().await.map_err(backend)?;
    let tx = client
        .transaction()
        .await
        .map_err(query_error("begin identity update"))?;
    let record = update_in(&tx, &shared.namespace, id, if_match, change).await?;
    tx.commit()
        .await
        .map_err(query_error("commit identity update"))?;
    Ok(record)
}

/// Refuses a change the crate's rules refuse, before the database is asked.
fn check_change(id: &DeviceId, change: &Change) -> Result<()> {
    match change {
        Change::Status(status) => {
            let probe = DeviceIdentity::created(
                NewIdentity::new(id.clone(), Credentials::None),
                GenerationId::from_u64(0),
                ETag::from_u64(0),
                Timestamp::EPOCH,
            )?;
            probe.with_status(status.clone(), ETag::from_u64(0), Timestamp::EPOCH)?;
        }
        Change::Credentials(credentials) => codec::check_storable(credentials)?,
    }
    Ok(())
}

/// [`update`] within the caller's transaction: the row is locked until it ends, and the change
/// notification is sent when it commits.
pub(crate) async fn update_in<C: GenericClient>(
    client: &C,
    ns: &str,
    id: &DeviceId,
    if_match: Option<ETag>,
    change: Change,
) -> Result<DeviceIdentity> {
    check_change(id, &change)?;
    let current = locked(client, ns, id, if_match).await?;
    let now = Timestamp::now();
    // The etag is set from the row below; `with_*` build the rest by the crate's rules.
    let (mut record, kind) = match change {
        Change::Status(status) => {
            let enabled = status.is_enabled();
            (
                current.with_status(status, current.etag, now)?,
                ChangeKind::StatusChanged { enabled },
            )
        }
        Change::Credentials(credentials) => (
            current.with_credentials(credentials, current.etag, now),
            ChangeKind::CredentialsReplaced,
        ),
    };
    let creds = CredentialColumns::of(&record.credentials);
    let statement = client
        .prepare_cached(UPDATE)
        .await
        .map_err(query_error("prepare identity update"))?;
    let row = client
        .query_one(
            &statement,
            &[
                &ns,
                &id.as_str(),
                &reason_column(&record.status),
                &creds.kind,
                &creds.primary,
                &creds.secondary,
                &creds.phc,
                &codec::to_micros(record.updated_at),
                &codec::to_micros(record.status_updated_at),
            ],
        )
        .await
        .map_err(query_error("update identity"))?;
    record.etag = codec::etag_of(row.get(0));
    announce(client, ns, &record.change(kind), now).await?;
    Ok(record)
}

/// Deletes an identity within the caller's transaction.
pub(crate) async fn delete_in<C: GenericClient>(
    client: &C,
    ns: &str,
    id: &DeviceId,
    if_match: Option<ETag>,
) -> Result<()> {
    let current = locked(client, ns, id, if_match).await?;
    let statement = client
        .prepare_cached(DELETE)
        .await
        .map_err(query_error("prepare identity delete"))?;
    client
        .execute(&statement, &[&ns, &id.as_str()])
        .await
        .map_err(query_error("delete identity"))?;
    let seq: i64 = client
        .query_one(NEXT_ETAG, &[])
        .await
        .map_err(query_error("draw the delete's etag"))?
        .get(0);
    let change = IdentityChange {
        id: id.clone(),
        generation_id: current.generation_id,
        etag: codec::etag_of(seq),
        kind: ChangeKind::Deleted,
    };
    announce(client, ns, &change, Timestamp::now()).await
}
