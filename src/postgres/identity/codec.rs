//! Identity rows to records and back, and changes to notification payloads and back.
//!
//! Nothing here formats a secret: errors name the device and the column, never its content.

use iot_core::{DeviceId, Timestamp};
use iot_identity::{
    ChangeKind, Credentials, DeviceIdentity, DeviceStatus, ETag, Error, GenerationId,
    IdentityChange, NewIdentity, PassphraseHash, Result, SymmetricKey, Thumbprint,
};
use tokio_postgres::Row;

use crate::postgres::PgError;

/// A PostgreSQL failure as the identity store reports it.
pub(crate) fn backend(e: PgError) -> Error {
    let retryable = e.is_retryable();
    Error::backend("postgres", e, retryable)
}

fn corrupt(id: &str, what: &str) -> Error {
    Error::backend(
        "postgres",
        format!("stored identity {id:?}: {what} does not decode"),
        false,
    )
}

/// The credential columns of a record: kind, primary bytes, secondary bytes, PHC string.
pub(crate) struct CredentialColumns<'a> {
    pub(crate) kind: i16,
    pub(crate) primary: Option<&'a [u8]>,
    pub(crate) secondary: Option<&'a [u8]>,
    pub(crate) phc: Option<&'a str>,
}

impl<'a> CredentialColumns<'a> {
    /// How `credentials` are stored (borrowing the secret bytes; nothing is copied).
    pub(crate) fn of(credentials: &'a Credentials) -> Self {
        let none = CredentialColumns {
            kind: 0,
            primary: None,
            secondary: None,
            phc: None,
        };
        match credentials {
            Credentials::SymmetricKeys { primary, secondary } => CredentialColumns {
                kind: 1,
                primary: Some(primary.expose_bytes()),
                secondary: Some(secondary.expose_bytes()),
                phc: None,
            },
            Credentials::X509 { primary, secondary } => CredentialColumns {
                kind: 2,
                primary: Some(primary.as_bytes().as_slice()),
                secondary: Some(secondary.as_bytes().as_slice()),
                phc: None,
            },
            Credentials::Passphrase(hash) => CredentialColumns {
                kind: 3,
                phc: Some(hash.expose_phc()),
                ..none
            },
            Credentials::CertificateAuthority => CredentialColumns { kind: 4, ..none },
            // `None`, and any kind a later version of the crate adds, which this store cannot
            // keep: `create`/`replace_credentials` refuse those first.
            _ => none,
        }
    }
}

/// Refuses credentials of a kind this store does not know how to keep.
pub(crate) fn check_storable(credentials: &Credentials) -> Result<()> {
    match credentials {
        Credentials::None
        | Credentials::SymmetricKeys { .. }
        | Credentials::X509 { .. }
        | Credentials::Passphrase(_)
        | Credentials::CertificateAuthority => Ok(()),
        other => Err(Error::InvalidInput {
            reason: format!(
                "the PostgreSQL identity store cannot keep {} credentials",
                other.kind_name()
            ),
        }),
    }
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.as_unix_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn to_micros(t: Timestamp) -> i64 {
    micros(t)
}

fn timestamp(us: i64) -> Timestamp {
    Timestamp::from_unix_micros(u64::try_from(us).unwrap_or(0))
}

/// Generations are random 64-bit values, kept in a `bigint` bit for bit.
pub(crate) fn generation_column(g: GenerationId) -> i64 {
    i64::from_ne_bytes(g.as_u64().to_ne_bytes())
}

fn generation_of(column: i64) -> GenerationId {
    GenerationId::from_u64(u64::from_ne_bytes(column.to_ne_bytes()))
}

pub(crate) fn etag_of(column: i64) -> ETag {
    ETag::from_u64(u64::try_from(column).unwrap_or(0))
}

/// A record from a row of [`COLUMNS`].
pub(crate) fn record(row: &Row) -> Result<DeviceIdentity> {
    let id_text: &str = row.get(0);
    let id = DeviceId::new(id_text).map_err(|_| corrupt(id_text, "the device id"))?;
    let reason: Option<&str> = row.get(3);
    let status = match reason {
        None => DeviceStatus::Enabled,
        Some(r) => DeviceStatus::disabled(r),
    };
    let kind: i16 = row.get(4);
    let primary: Option<&[u8]> = row.get(5);
    let secondary: Option<&[u8]> = row.get(6);
    let phc: Option<&str> = row.get(7);
    let credentials = match (kind, primary, secondary, phc) {
        (0, _, _, _) => Credentials::None,
        (1, Some(p), Some(s), _) => Credentials::SymmetricKeys {
            primary: SymmetricKey::from_bytes(p).map_err(|_| corrupt(id_text, "a key"))?,
            secondary: SymmetricKey::from_bytes(s).map_err(|_| corrupt(id_text, "a key"))?,
        },
        (2, Some(p), Some(s), _) => {
            let thumb = |b: &[u8]| {
                <[u8; 32]>::try_from(b)
                    .map(Thumbprint::from_bytes)
                    .map_err(|_| corrupt(id_text, "a thumbprint"))
            };
            Credentials::X509 {
                primary: thumb(p)?,
                secondary: thumb(s)?,
            }
        }
        (3, _, _, Some(phc)) => Credentials::Passphrase(
            PassphraseHash::from_phc(phc).map_err(|_| corrupt(id_text, "the passphrase hash"))?,
        ),
        (4, _, _, _) => Credentials::CertificateAuthority,
        _ => return Err(corrupt(id_text, "the credentials")),
    };
    let new = NewIdentity {
        id,
        status,
        credentials,
    };
    let mut record = DeviceIdentity::created(
        new,
        generation_of(row.get(1)),
        etag_of(row.get(2)),
        Timestamp::EPOCH,
    )?;
    record.created_at = timestamp(row.get(8));
    record.updated_at = timestamp(row.get(9));
    record.status_updated_at = timestamp(row.get(10));
    Ok(record)
}

/// A change kind as the change table and the notifications number it.
pub(crate) fn kind_code(kind: &ChangeKind) -> i16 {
    match kind {
        ChangeKind::Created => 1,
        ChangeKind::StatusChanged { enabled: true } => 2,
        ChangeKind::StatusChanged { enabled: false } => 3,
        ChangeKind::CredentialsReplaced => 4,
        ChangeKind::Deleted => 5,
        // A kind this build does not know: announced as a credential change, the most cautious
        // reading (it revokes sessions).
        _ => 4,
    }
}

fn kind_of(code: i64) -> Option<ChangeKind> {
    Some(match code {
        1 => ChangeKind::Created,
        2 => ChangeKind::StatusChanged { enabled: true },
        3 => ChangeKind::StatusChanged { enabled: false },
        4 => ChangeKind::CredentialsReplaced,
        5 => ChangeKind::Deleted,
        _ => return None,
    })
}

/// The notification payload of a change in namespace `ns`: JSON, a few hundred bytes at most
/// (ids are at most 128 bytes, namespaces at most [`super::MAX_NAMESPACE_BYTES`]).
pub(crate) fn payload(ns: &str, change: &IdentityChange) -> String {
    serde_json::json!({
        "ns": ns,
        "seq": change.etag.as_u64(),
        "gen": change.generation_id.as_u64(),
        "kind": kind_code(&change.kind),
        "id": change.id.as_str(),
    })
    .to_string()
}

/// A change read from a notification, with its namespace; `None` if it is not one of ours.
pub(crate) fn parse_payload(text: &str) -> Option<(String, IdentityChange)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let ns = v.get("ns")?.as_str()?.to_owned();
    let change = IdentityChange {
        id: DeviceId::new(v.get("id")?.as_str()?).ok()?,
        generation_id: GenerationId::from_u64(v.get("gen")?.as_u64()?),
        etag: ETag::from_u64(v.get("seq")?.as_u64()?),
        kind: kind_of(v.get("kind")?.as_i64()?)?,
    };
    Some((ns, change))
}

/// A change from a row of the change table: `seq, device_id, generation, kind`.
pub(crate) fn change_row(row: &Row) -> Option<IdentityChange> {
    let seq: i64 = row.get(0);
    let id: &str = row.get(1);
    let kind: i16 = row.get(3);
    Some(IdentityChange {
        id: DeviceId::new(id).ok()?,
        generation_id: generation_of(row.get(2)),
        etag: etag_of(seq),
        kind: kind_of(i64::from(kind))?,
    })
}
