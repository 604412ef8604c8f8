//! The in-memory state shared by [`MemoryRegistry`](crate::MemoryRegistry) and
//! [`FileRegistry`](crate::FileRegistry): records in slots, the id map, the indexes, the planner
//! and the pager.
//!
//! Writes happen in two steps so that a durable registry can log a write before it becomes
//! visible: `prepare_*` validates and builds the new record (or refuses with a typed error)
//! without changing anything; `put`/`remove` then apply it. Callers serialise writers between the
//! two steps.
//!
//! # Invariants
//! * `ids[id] == slot` iff `slots[slot]` holds the record of `id`; `live` is the set of such slots.
//! * The indexes describe exactly the records in `slots` (see [`crate::index`]).
//! * `next_version` is above the version of every write applied, deletes included.

use std::collections::HashMap;

use iot_core::{DeviceId, Timestamp};
use roaring::RoaringBitmap;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::index::{Indexes, Part};
use crate::limits::DocumentLimits;
use crate::paging::EncodedRecords;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::stored::Stored;

mod query;

/// Logs of at least this many changes are applied in bulk (one pass over the indexes) rather
/// than change by change.
const BULK_LOG: usize = 8192;

/// Settings shared by every registry implementation of this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Size, depth and key limits of documents.
    pub limits: DocumentLimits,
    /// Paths not to index, each with everything below it (`metadata.description`). Queries on
    /// them still work, by reading the candidate records.
    pub unindexed_paths: Vec<String>,
    /// Largest page a query may ask for. Default 10 000.
    pub max_page_size: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            limits: DocumentLimits::default(),
            unindexed_paths: Vec::new(),
            max_page_size: 10_000,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl RegistryConfig {
    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: DocumentLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`unindexed_paths`](Self::unindexed_paths).
    pub fn unindexed_paths(mut self, unindexed_paths: Vec<String>) -> Self {
        self.unindexed_paths = unindexed_paths;
        self
    }

    /// Sets [`max_page_size`](Self::max_page_size).
    pub fn max_page_size(mut self, max_page_size: usize) -> Self {
        self.max_page_size = max_page_size;
        self
    }
}

impl RegistryConfig {
    /// Refuses a nonsensical configuration.
    pub fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        if self.max_page_size == 0 {
            return Err(Error::Config {
                reason: "max_page_size must be positive".into(),
            });
        }
        Ok(())
    }
}

/// A write ready to apply.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// The new record, encoded once: memory keeps these bytes and the log stores them.
    Put(Stored),
    Delete(DeviceId),
}

#[derive(Debug)]
pub(crate) struct Engine {
    config: RegistryConfig,
    /// Records kept encoded (see [`crate::stored`]).
    slots: Vec<Option<Stored>>,
    free: Vec<u32>,
    /// Hashed with foldhash (seeded per map): several times faster than SipHash on short ids,
    /// which matters when a million are inserted on reopen.
    ids: HashMap<DeviceId, u32, foldhash::fast::RandomState>,
    live: RoaringBitmap,
    indexes: Indexes,
    next_version: u64,
}

impl Engine {
    pub(crate) fn new(config: RegistryConfig) -> Result<Self> {
        config.validate()?;
        let indexes = Indexes::new(config.unindexed_paths.clone());
        Ok(Engine {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            ids: HashMap::default(),
            live: RoaringBitmap::new(),
            indexes,
            next_version: 1,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn next_version(&self) -> u64 {
        self.next_version
    }

    /// The record of `id`, decoded.
    pub(crate) fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.stored(id).map(decode).transpose()
    }

    fn stored(&self, id: &DeviceId) -> Option<&Stored> {
        let slot = *self.ids.get(id)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    fn record_at(&self, slot: u32) -> Option<&Stored> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Every record, in no particular order.
    #[cfg(test)]
    pub(crate) fn records(&self) -> impl Iterator<Item = &Stored> {
        self.slots.iter().flatten()
    }

    fn check_match(
        &self,
        id: &DeviceId,
        current: &DeviceRecord,
        if_match: Option<&ETag>,
    ) -> Result<()> {
        match if_match {
            Some(expected) if *expected != current.etag => Err(Error::PreconditionFailed {
                id: id.clone(),
                expected: expected.clone(),
                actual: current.etag.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn existing(&self, id: &DeviceId) -> Result<DeviceRecord> {
        self.get(id)?
            .ok_or_else(|| Error::NotFound { id: id.clone() })
    }

    pub(crate) fn prepare_create(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        now: Timestamp,
    ) -> Result<Change> {
        if self.ids.contains_key(id) {
            return Err(Error::AlreadyExists { id: id.clone() });
        }
        self.config.limits.check_document(&doc)?;
        Ok(self.put_new_version(id, doc, now, now))
    }

    /// The write of `doc` as `id`'s record under the next version.
    fn put_new_version(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        created: Timestamp,
        now: Timestamp,
    ) -> Change {
        let etag = ETag::from_version(self.next_version);
        Change::Put(Stored::encode(&DeviceRecord::new(
            id.clone(),
            doc,
            etag,
            created,
            now,
        )))
    }

    pub(crate) fn prepare_replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
        now: Timestamp,
    ) -> Result<Change> {
        let current = self.existing(id)?;
        self.check_match(id, &current, if_match)?;
        self.config.limits.check_document(&doc)?;
        Ok(self.put_new_version(id, doc, current.created, now))
    }

    pub(crate) fn prepare_merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
        now: Timestamp,
    ) -> Result<Change> {
        let current = self.existing(id)?;
        self.check_match(id, &current, if_match)?;
        let created = current.created;
        let doc = current.into_document().merged(patch, &self.config.limits)?;
        self.config.limits.check_document(&doc)?;
        Ok(self.put_new_version(id, doc, created, now))
    }

    pub(crate) fn prepare_delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<Change> {
        let current = self.existing(id)?;
        self.check_match(id, &current, if_match)?;
        Ok(Change::Delete(id.clone()))
    }

    /// Applies a prepared (or replayed) change as write number `version`.
    pub(crate) fn apply(&mut self, change: Change, version: u64) {
        self.next_version = self.next_version.max(version.saturating_add(1));
        match change {
            Change::Put(record) => self.put(record),
            Change::Delete(id) => self.remove(&id),
        }
    }

    /// Loads `slots` into an empty engine (a record's slot is its position; `None` is a free
    /// slot), with the indexes decoded from a snapshot's index section when `section` is given
    /// and passes its checks, built from the records otherwise; `expected_log` is how many
    /// changes will be applied next (room is reserved for them). Returns why a given section was
    /// not used, or the id of a record that appears twice (the engine is then unusable and must
    /// be dropped).
    pub(crate) fn load_slots(
        &mut self,
        mut slots: Vec<Option<Stored>>,
        section: Option<Vec<Part>>,
        expected_log: usize,
    ) -> std::result::Result<Option<String>, DeviceId> {
        debug_assert!(self.slots.is_empty());
        let live: RoaringBitmap = (0u32..)
            .zip(slots.iter())
            .filter_map(|(slot, record)| record.as_ref().map(|_| slot))
            .collect();
        let unindexed = self.config.unindexed_paths.clone();
        // The id map is built beside the indexes, on another thread.
        let (ids, indexes, rejected) = std::thread::scope(|scope| {
            let ids = scope.spawn(|| {
                // Room for the log's new devices too: growing a map of a million ids later
                // rehashes all of them.
                let mut ids = HashMap::with_capacity_and_hasher(
                    live.len() as usize + expected_log,
                    foldhash::fast::RandomState::default(),
                );
                for (slot, record) in (0u32..).zip(slots.iter()) {
                    if let Some(record) = record
                        && ids.insert(record.device_id().clone(), slot).is_some()
                    {
                        return Err(record.device_id().clone());
                    }
                }
                Ok(ids)
            });
            let (indexes, rejected) =
                match section.map(|parts| Indexes::from_section(unindexed.clone(), parts, &live)) {
                    Some(Ok(indexes)) => (indexes, None),
                    other => {
                        let mut indexes = Indexes::new(unindexed);
                        indexes.bulk_build(
                            (0u32..)
                                .zip(slots.iter())
                                .filter_map(|(slot, record)| Some((slot, record.as_ref()?))),
                        );
                        (indexes, other.and_then(Result::err))
                    }
                };
            let ids = ids.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            ids.map(|ids| (ids, indexes, rejected))
        })?;
        // Lowest free slot first out (the free list pops from its end).
        self.free = (0u32..)
            .zip(slots.iter())
            .filter_map(|(slot, record)| record.is_none().then_some(slot))
            .collect();
        self.free.reverse();
        slots.reserve(expected_log.saturating_sub(self.free.len()));
        self.ids = ids;
        self.live = live;
        self.indexes = indexes;
        self.slots = slots;
        Ok(rejected)
    }

    /// Applies the changes of a log, in order, as [`Engine::apply`] would one by one — in bulk
    /// when there are many: only the last change of each device counts, the index entries of
    /// every slot it touches are removed in one pass and its new records indexed in one batch.
    pub(crate) fn apply_log(&mut self, changes: Vec<(Change, u64)>) {
        self.apply_log_from(changes, BULK_LOG);
    }

    /// [`Engine::apply_log`], in bulk from `bulk_from` changes on.
    pub(crate) fn apply_log_from(&mut self, changes: Vec<(Change, u64)>, bulk_from: usize) {
        if changes.len() < bulk_from {
            for (change, version) in changes {
                self.apply(change, version);
            }
            return;
        }
        let mut position: HashMap<DeviceId, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(changes.len(), Default::default());
        let mut last: Vec<Change> = Vec::with_capacity(changes.len());
        for (change, version) in changes {
            self.next_version = self.next_version.max(version.saturating_add(1));
            let id = match &change {
                Change::Put(record) => record.device_id().clone(),
                Change::Delete(id) => id.clone(),
            };
            match position.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    if let Some(place) = last.get_mut(*e.get()) {
                        *place = change;
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(last.len());
                    last.push(change);
                }
            }
        }
        drop(position);
        // Slots whose index entries go, and slots whose (new) record is indexed.
        let mut gone = RoaringBitmap::new();
        let mut fresh: Vec<u32> = Vec::new();
        for change in last {
            match change {
                Change::Put(record) => {
                    let slot = match self.ids.get(record.device_id()) {
                        Some(&slot) => {
                            gone.insert(slot);
                            slot
                        }
                        None => {
                            let slot = self.allocate_slot();
                            self.ids.insert(record.device_id().clone(), slot);
                            self.live.insert(slot);
                            slot
                        }
                    };
                    if let Some(place) = self.slots.get_mut(slot as usize) {
                        *place = Some(record);
                        fresh.push(slot);
                    }
                }
                Change::Delete(id) => {
                    if let Some(slot) = self.ids.remove(&id) {
                        gone.insert(slot);
                        if let Some(place) = self.slots.get_mut(slot as usize) {
                            *place = None;
                        }
                        self.live.remove(slot);
                        self.free.push(slot);
                    }
                }
            }
        }
        self.indexes.remove_slots(&gone);
        fresh.sort_unstable();
        let slots = &self.slots;
        self.indexes.bulk_build(
            fresh
                .iter()
                .filter_map(|&slot| Some((slot, slots.get(slot as usize)?.as_ref()?))),
        );
    }

    /// Every record with its slot, in slot order.
    pub(crate) fn slotted_records(&self) -> impl Iterator<Item = (u32, &Stored)> {
        (0u32..)
            .zip(self.slots.iter())
            .filter_map(|(slot, record)| Some((slot, record.as_ref()?)))
    }

    /// How many slots exist (live or free).
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The indexes (for a snapshot to store).
    pub(crate) fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    /// The paths this engine leaves unindexed.
    pub(crate) fn unindexed_paths(&self) -> &[String] {
        &self.config.unindexed_paths
    }

    fn allocate_slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                // More than 4 billion devices in one registry is out of scope; the file format
                // and the bitmaps use 32-bit slots.
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(None);
                slot
            }
        }
    }

    /// The indexes with slots named by device id, and every record by id; checks on the way
    /// that the id map, the live set and the slots agree.
    #[cfg(test)]
    pub(crate) fn canonical(
        &self,
    ) -> (
        crate::index::Canonical,
        std::collections::BTreeMap<String, DeviceRecord>,
    ) {
        let live: RoaringBitmap = self.ids.values().copied().collect();
        assert_eq!(live, self.live);
        for (id, slot) in &self.ids {
            assert_eq!(self.record_at(*slot).map(Stored::device_id), Some(id));
        }
        assert_eq!(self.records().count(), self.ids.len());
        let name = |slot: u32| {
            self.record_at(slot).map_or_else(
                || format!("<free slot {slot}>"),
                |r| r.device_id().to_string(),
            )
        };
        let records = self
            .records()
            .map(|r| {
                (
                    r.device_id().to_string(),
                    r.decode().expect("stored records decode"),
                )
            })
            .collect();
        (self.indexes.canonical(name), records)
    }

    /// Raises the next version to at least `floor` (a snapshot records it, so that etags of
    /// deleted records are never handed out again).
    pub(crate) fn apply_version_floor(&mut self, floor: u64) {
        self.next_version = self.next_version.max(floor);
    }

    fn put(&mut self, record: Stored) {
        if let Some(&slot) = self.ids.get(record.device_id()) {
            if let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                self.indexes.remove(slot, &old);
            }
            self.indexes.insert(slot, &record);
            if let Some(place) = self.slots.get_mut(slot as usize) {
                *place = Some(record);
            }
            return;
        }
        let slot = self.allocate_slot();
        self.indexes.insert(slot, &record);
        self.ids.insert(record.device_id().clone(), slot);
        self.live.insert(slot);
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(record);
        }
    }

    fn remove(&mut self, id: &DeviceId) {
        let Some(slot) = self.ids.remove(id) else {
            return;
        };
        if let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            self.indexes.remove(slot, &old);
        }
        self.live.remove(slot);
        self.free.push(slot);
    }

    /// How many distinct paths are indexed.
    pub(crate) fn indexed_paths(&self) -> usize {
        self.indexes.path_count()
    }
}

/// Decodes a stored record. Stored bytes were validated when stored, so this does not fail; if
/// it ever did, the caller gets a typed error rather than a panic.
fn decode(stored: &Stored) -> Result<DeviceRecord> {
    stored.decode().map_err(|reason| unreadable(stored, reason))
}

/// Copies the encodings of a page's records, in order, into one buffer: the page decodes them
/// only when its caller asks (see [`Page`](crate::Page)).
fn encode_page<'a>(records: impl ExactSizeIterator<Item = &'a Stored> + Clone) -> EncodedRecords {
    let bytes = records.clone().map(|r| r.bytes().len()).sum();
    let mut page = EncodedRecords::with_capacity(records.len(), bytes);
    for stored in records {
        page.push(stored.device_id(), stored.bytes());
    }
    page
}

fn unreadable(stored: &Stored, reason: String) -> Error {
    Error::Corrupt {
        path: std::path::PathBuf::from("<memory>"),
        position: 0,
        reason: format!("record of {} unreadable: {reason}", stored.device_id()),
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_registry_config_setter_sets_its_own_field() {
        let limits = DocumentLimits::default().max_depth(3);
        let built = RegistryConfig::default()
            .limits(limits)
            .unindexed_paths(vec!["tags".to_owned()])
            .max_page_size(5);
        let expected = RegistryConfig {
            limits,
            unindexed_paths: vec!["tags".to_owned()],
            max_page_size: 5,
        };
        assert_eq!(built, expected);
    }
}
