//! An `IdentityStore` written the way an integrator would write one: outside the crate, over a
//! `Mutex<BTreeMap>` standing in for their database, using only the public API.
//!
//! Shared by `iot-identity/tests/out_of_crate.rs` (which runs the identity suite on it) and
//! `iot-provisioning/tests/out_of_crate.rs` (which runs a provisioner over it).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_identity::{
    ChangeKind, ChangeSender, ChangeStream, Credentials, DeviceIdentity, DeviceStatus, ETag, Error,
    GenerationId, IdentityPage, IdentityStore, Lookup, MAX_PAGE_SIZE, NewIdentity, PassphraseHash,
    Result, SymmetricKey, Thumbprint,
};

/// The "database": it outlives every store handle, as a real one outlives a process.
#[derive(Debug, Default)]
pub(crate) struct Db {
    /// The identities by id (a table with the id as its primary key).
    pub(crate) rows: BTreeMap<DeviceId, Row>,
    /// The last etag given out, deleted records' included, so none is ever reused.
    pub(crate) last_etag: u64,
}

impl Db {
    fn next_etag(&mut self) -> Result<ETag> {
        self.last_etag = self
            .last_etag
            .checked_add(1)
            .ok_or_else(|| Error::backend("btreemap", "the etag counter is exhausted", false))?;
        Ok(ETag::from_u64(self.last_etag))
    }

    /// The current record of `id`, checked against `if_match`.
    fn current(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<DeviceIdentity> {
        let record = self
            .get(id)?
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
        match if_match {
            Some(expected) if expected != record.etag => Err(Error::PreconditionFailed {
                id: id.clone(),
                expected,
                actual: record.etag,
            }),
            _ => Ok(record),
        }
    }
}

/// One identity in plain columns, as a database table keeps it; records are rebuilt from it
/// through the public constructors on every read.
///
/// (A real backend would keep the key columns encrypted; this stand-in keeps them as bytes.)
#[derive(Clone, Debug)]
pub(crate) struct Row {
    generation: u64,
    etag: u64,
    disabled_reason: Option<String>,
    /// `"none"`, `"keys"`, `"x509"` or `"passphrase"`.
    credential_kind: &'static str,
    /// Primary key or thumbprint bytes, or the passphrase's PHC string.
    credential_a: Vec<u8>,
    /// Secondary key or thumbprint bytes.
    credential_b: Vec<u8>,
    created_us: u64,
    updated_us: u64,
    status_updated_us: u64,
}

fn unreadable(what: &str) -> Error {
    Error::backend("btreemap", format!("unreadable {what} column"), false)
}

impl Row {
    fn from_identity(record: &DeviceIdentity) -> Result<Row> {
        let (credential_kind, credential_a, credential_b) = match &record.credentials {
            Credentials::None => ("none", Vec::new(), Vec::new()),
            Credentials::SymmetricKeys { primary, secondary } => (
                "keys",
                primary.expose_bytes().to_vec(),
                secondary.expose_bytes().to_vec(),
            ),
            Credentials::X509 { primary, secondary } => (
                "x509",
                primary.as_bytes().to_vec(),
                secondary.as_bytes().to_vec(),
            ),
            Credentials::Passphrase(hash) => (
                "passphrase",
                hash.expose_phc().as_bytes().to_vec(),
                Vec::new(),
            ),
            Credentials::CertificateAuthority => ("ca", Vec::new(), Vec::new()),
            // A kind added to the SDK later has no column here yet: refuse rather than lose it.
            other => {
                return Err(Error::backend(
                    "btreemap",
                    format!("no column for {} credentials", other.kind_name()),
                    false,
                ));
            }
        };
        let disabled_reason = match &record.status {
            DeviceStatus::Enabled => None,
            DeviceStatus::Disabled { reason } => Some(reason.clone()),
        };
        Ok(Row {
            generation: record.generation_id.as_u64(),
            etag: record.etag.as_u64(),
            disabled_reason,
            credential_kind,
            credential_a,
            credential_b,
            created_us: record.created_at.as_unix_micros(),
            updated_us: record.updated_at.as_unix_micros(),
            status_updated_us: record.status_updated_at.as_unix_micros(),
        })
    }

    fn to_identity_of(&self, id: DeviceId) -> Result<DeviceIdentity> {
        let credentials = match self.credential_kind {
            "none" => Credentials::None,
            "keys" => Credentials::SymmetricKeys {
                primary: SymmetricKey::from_bytes(&self.credential_a)?,
                secondary: SymmetricKey::from_bytes(&self.credential_b)?,
            },
            "x509" => {
                let thumbprint = |bytes: &[u8]| {
                    <[u8; 32]>::try_from(bytes)
                        .map(Thumbprint::from_bytes)
                        .map_err(|_| unreadable("thumbprint"))
                };
                Credentials::X509 {
                    primary: thumbprint(&self.credential_a)?,
                    secondary: thumbprint(&self.credential_b)?,
                }
            }
            "passphrase" => {
                let phc = std::str::from_utf8(&self.credential_a)
                    .map_err(|_| unreadable("passphrase"))?;
                Credentials::Passphrase(PassphraseHash::from_phc(phc)?)
            }
            "ca" => Credentials::CertificateAuthority,
            _ => return Err(unreadable("credential kind")),
        };
        let status = match &self.disabled_reason {
            Some(reason) => DeviceStatus::disabled(reason.clone()),
            None => DeviceStatus::Enabled,
        };
        let mut record = DeviceIdentity::created(
            NewIdentity {
                id,
                status,
                credentials,
            },
            GenerationId::from_u64(self.generation),
            ETag::from_u64(self.etag),
            Timestamp::from_unix_micros(self.created_us),
        )?;
        record.updated_at = Timestamp::from_unix_micros(self.updated_us);
        record.status_updated_at = Timestamp::from_unix_micros(self.status_updated_us);
        Ok(record)
    }
}

impl Db {
    /// The record of `id` rebuilt from its row, if there is one.
    fn get(&self, id: &DeviceId) -> Result<Option<DeviceIdentity>> {
        self.rows
            .get(id)
            .map(|row| row.to_identity_of(id.clone()))
            .transpose()
    }
}

/// One handle on the database, with its own change stream.
#[derive(Debug)]
pub(crate) struct BTreeMapStore {
    db: Arc<Mutex<Db>>,
    changes: ChangeSender,
}

impl BTreeMapStore {
    pub(crate) fn new(db: Arc<Mutex<Db>>) -> Self {
        BTreeMapStore {
            db,
            changes: ChangeSender::default(),
        }
    }

    /// A poisoned lock is reported as the backend's failure, the way a driver error would be.
    fn db(&self) -> Result<MutexGuard<'_, Db>> {
        self.db
            .lock()
            .map_err(|_| Error::backend("btreemap", "a writer panicked holding the lock", false))
    }

    /// Stores `row` and publishes its change while the lock is held, so changes go out in write
    /// order.
    fn put(&self, db: &mut Db, record: DeviceIdentity, kind: ChangeKind) -> Result<DeviceIdentity> {
        let row = Row::from_identity(&record)?;
        db.rows.insert(record.id.clone(), row);
        self.changes.send(record.change(kind));
        Ok(record)
    }
}

#[async_trait]
impl IdentityStore for BTreeMapStore {
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        let mut db = self.db()?;
        if db.rows.contains_key(&identity.id) {
            return Err(Error::AlreadyExists { id: identity.id });
        }
        let etag = db.next_etag()?;
        let record =
            DeviceIdentity::created(identity, GenerationId::random(), etag, Timestamp::now())?;
        self.put(&mut db, record, ChangeKind::Created)
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        Lookup::ready(
            self.db()
                .and_then(|db| db.get(id))
                .map(|found| found.map(Arc::new)),
        )
    }

    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let mut db = self.db()?;
        let current = db.current(id, if_match)?;
        let enabled = status.is_enabled();
        let etag = db.next_etag()?;
        let record = current.with_status(status, etag, Timestamp::now())?;
        self.put(&mut db, record, ChangeKind::StatusChanged { enabled })
    }

    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let mut db = self.db()?;
        let current = db.current(id, if_match)?;
        let etag = db.next_etag()?;
        let record = current.with_credentials(credentials, etag, Timestamp::now());
        self.put(&mut db, record, ChangeKind::CredentialsReplaced)
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
        let mut db = self.db()?;
        let current = db.current(id, if_match)?;
        let etag = db.next_etag()?;
        db.rows.remove(id);
        // The change carries the deleting write's etag, not the record's last one.
        let mut change = current.change(ChangeKind::Deleted);
        change.etag = etag;
        self.changes.send(change);
        Ok(())
    }

    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        if limit == 0 {
            return Err(Error::InvalidInput {
                reason: "a page limit must be positive".into(),
            });
        }
        let limit = limit.min(MAX_PAGE_SIZE);
        let db = self.db()?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rows = db.rows.range::<DeviceId, _>((lower, Bound::Unbounded));
        let items = rows
            .by_ref()
            .take(limit)
            .map(|(id, row)| row.to_identity_of(id.clone()))
            .collect::<Result<Vec<_>>>()?;
        let next = match rows.next() {
            Some(_) => items.last().map(|row| row.id.clone()),
            None => None,
        };
        Ok(IdentityPage { items, next })
    }

    fn subscribe(&self) -> ChangeStream {
        self.changes.subscribe()
    }
}
