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
    GenerationId, IdentityPage, IdentityStore, Lookup, MAX_PAGE_SIZE, NewIdentity, Result,
};

/// The "database": it outlives every store handle, as a real one outlives a process.
#[derive(Debug, Default)]
pub(crate) struct Db {
    /// The identities by id (a table with the id as its primary key).
    pub(crate) rows: BTreeMap<DeviceId, Arc<DeviceIdentity>>,
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

    /// The current row of `id`, checked against `if_match`.
    fn current(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<Arc<DeviceIdentity>> {
        let row = self
            .rows
            .get(id)
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
        match if_match {
            Some(expected) if expected != row.etag => Err(Error::PreconditionFailed {
                id: id.clone(),
                expected,
                actual: row.etag,
            }),
            _ => Ok(Arc::clone(row)),
        }
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
    fn put(&self, db: &mut Db, row: DeviceIdentity, kind: ChangeKind) -> DeviceIdentity {
        let change = row.change(kind);
        db.rows.insert(row.id.clone(), Arc::new(row.clone()));
        self.changes.send(change);
        row
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
        let row =
            DeviceIdentity::created(identity, GenerationId::random(), etag, Timestamp::now())?;
        Ok(self.put(&mut db, row, ChangeKind::Created))
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        Lookup::ready(self.db().map(|db| db.rows.get(id).cloned()))
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
        let row = current.with_status(status, etag, Timestamp::now())?;
        Ok(self.put(&mut db, row, ChangeKind::StatusChanged { enabled }))
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
        let row = current.with_credentials(credentials, etag, Timestamp::now());
        Ok(self.put(&mut db, row, ChangeKind::CredentialsReplaced))
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
        let items: Vec<DeviceIdentity> = rows
            .by_ref()
            .take(limit)
            .map(|(_, row)| DeviceIdentity::clone(row))
            .collect();
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
