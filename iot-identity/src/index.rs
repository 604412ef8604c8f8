//! The in-memory state both reference stores share: records by id, ids in order, and the write
//! sequence that etags come from.
//!
//! Writes are planned (validated against the current state, producing a [`Mutation`]) and then
//! applied. The file store writes the mutation to its log between the two steps, so the state in
//! memory never runs ahead of what is durable.
//!
//! # Invariants
//!
//! * `map` and `order` hold the same ids.
//! * `last_seq` is the largest etag ever given out (including to deleted records), so etags are
//!   never reused.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use iot_core::{DeviceId, Timestamp};

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::identity::{
    ChangeKind, DeviceIdentity, DeviceStatus, ETag, GenerationId, IdentityChange, IdentityPage,
    NewIdentity,
};
use crate::store::MAX_PAGE_SIZE;

/// One planned write.
#[derive(Clone, Debug)]
pub(crate) enum Mutation {
    /// Insert or replace the record (its etag is the write's sequence number).
    Put(Arc<DeviceIdentity>),
    /// Remove the record; `seq` is the write's sequence number.
    Delete { id: DeviceId, seq: u64 },
}

impl Mutation {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Mutation::Put(r) => r.etag.0,
            Mutation::Delete { seq, .. } => *seq,
        }
    }
}

#[derive(Default)]
pub(crate) struct Index {
    /// Keyed with foldhash, seeded per process: SipHash was a quarter of a lookup. Only the
    /// provisioning path (trusted) inserts, so a remote party presenting chosen ids cannot grow
    /// collision chains; lookups of unknown ids cost one probe like any other.
    map: HashMap<DeviceId, Arc<DeviceIdentity>, foldhash::quality::RandomState>,
    order: BTreeSet<DeviceId>,
    last_seq: u64,
}

impl std::fmt::Debug for Index {
    /// A summary: a store's `Debug` output must stay small with a million identities.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("identities", &self.map.len())
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    pub(crate) fn get(&self, id: &DeviceId) -> Option<&Arc<DeviceIdentity>> {
        self.map.get(id)
    }

    /// Every record, in id order (for snapshots).
    pub(crate) fn records(&self) -> impl Iterator<Item = &Arc<DeviceIdentity>> {
        self.order.iter().filter_map(|id| self.map.get(id))
    }

    pub(crate) fn plan_create(&self, new: NewIdentity, now: Timestamp) -> Result<Planned> {
        // Built first so that an invalid status is refused before the id is looked at.
        let record =
            DeviceIdentity::created(new, GenerationId::random(), ETag(self.next_seq()?), now)?;
        if self.map.contains_key(&record.id) {
            return Err(Error::AlreadyExists { id: record.id });
        }
        Ok(Planned::new(record, ChangeKind::Created))
    }

    pub(crate) fn plan_set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
        now: Timestamp,
    ) -> Result<Planned> {
        status.validate()?;
        let current = self.current(id, if_match)?;
        let enabled = status.is_enabled();
        let record = current.with_status(status, ETag(self.next_seq()?), now)?;
        Ok(Planned::new(record, ChangeKind::StatusChanged { enabled }))
    }

    pub(crate) fn plan_replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
        now: Timestamp,
    ) -> Result<Planned> {
        let current = self.current(id, if_match)?;
        let record = current.with_credentials(credentials, ETag(self.next_seq()?), now);
        Ok(Planned::new(record, ChangeKind::CredentialsReplaced))
    }

    pub(crate) fn plan_delete(
        &self,
        id: &DeviceId,
        if_match: Option<ETag>,
    ) -> Result<(Mutation, IdentityChange)> {
        let current = self.current(id, if_match)?;
        let seq = self.next_seq()?;
        let change = IdentityChange {
            id: id.clone(),
            generation_id: current.generation_id,
            etag: ETag(seq),
            kind: ChangeKind::Deleted,
        };
        Ok((
            Mutation::Delete {
                id: id.clone(),
                seq,
            },
            change,
        ))
    }

    /// Applies a planned (or replayed) mutation.
    pub(crate) fn apply(&mut self, mutation: Mutation) {
        self.last_seq = self.last_seq.max(mutation.seq());
        match mutation {
            Mutation::Put(record) => {
                let id = record.id.clone();
                // A new id is filed under the record's own `Arc<str>` in both the map and the set.
                if self.map.insert(id.clone(), record).is_none() {
                    self.order.insert(id);
                }
            }
            Mutation::Delete { id, .. } => {
                self.map.remove(&id);
                self.order.remove(&id);
            }
        }
    }

    /// Records a sequence number seen on disk without a mutation (a snapshot's high-water mark).
    pub(crate) fn observe_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    pub(crate) fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        if limit == 0 {
            return Err(Error::invalid("a page limit must be positive"));
        }
        let limit = limit.min(MAX_PAGE_SIZE);
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut ids = self.order.range::<DeviceId, _>((lower, Bound::Unbounded));
        let items: Vec<DeviceIdentity> = ids
            .by_ref()
            .take(limit)
            .filter_map(|id| self.map.get(id).map(|r| DeviceIdentity::clone(r)))
            .collect();
        let next = if ids.next().is_some() {
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(IdentityPage { items, next })
    }

    fn current(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<&Arc<DeviceIdentity>> {
        let current = self
            .map
            .get(id)
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
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

    fn next_seq(&self) -> Result<u64> {
        self.last_seq
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the store's etag sequence is exhausted"))
    }
}

/// A planned insert or update: the new record and the change to publish once it is applied.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) record: Arc<DeviceIdentity>,
    pub(crate) change: IdentityChange,
}

impl Planned {
    fn new(record: DeviceIdentity, kind: ChangeKind) -> Self {
        let change = record.change(kind);
        Planned {
            record: Arc::new(record),
            change,
        }
    }

    pub(crate) fn mutation(&self) -> Mutation {
        Mutation::Put(Arc::clone(&self.record))
    }
}
