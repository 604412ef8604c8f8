//! `FileEnrollmentStore`: enrollments in a directory, as a journal of the storage kit
//! ([`iot_core::storage::journal`]).
//!
//! # Format
//! The directory holds the kit's `LOCK`, `wal` and `snapshot` files with the magic `IOTPENR1`.
//! Each operation is JSON (see the `wire` module for the documents):
//! `{"op": "putIndividual", "enrollment": …}`, `{"op": "deleteIndividual", "id": …}`,
//! `{"op": "putGroup", "group": …}`, `{"op": "deleteGroup", "id": …}`, and — in a snapshot —
//! `{"op": "lastVersion", "version": n}`, so versions keep growing after deletes and compaction.
//!
//! # Invariants
//! * A write returns once its operation is fsynced; concurrent writers share one fsync (the
//!   kit's group commit). A write's precondition is checked against the state under the
//!   journal's state lock, and the operation staged and applied under it, so two writers
//!   conditioned on the same version cannot both succeed.
//! * Reads answer from memory once every write they may have seen is durable.
//! * Open follows the kit's torn-tail rule: a torn last frame is cut off, damage elsewhere is
//!   refused ([`Error::CorruptJournal`](crate::Error::CorruptJournal)), an intact operation that
//!   does not decode is refused too.
//! * The files hold the enrollments' keys; the kit creates them readable by the owner only.

use std::path::Path;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_core::storage::journal::{Journal as KitJournal, JournalConfig, Journaled};
use iot_core::storage::{Durability, run_blocking};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::state::{Change, Enrollments};
use super::types::{EnrollmentGroup, GroupId, IndividualEnrollment};
use super::wire::{GroupDoc, IndividualDoc};
use super::{EnrollmentStore, Precondition};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"IOTPENR1";
/// The largest operation: an enrollment with its initial twin and tags (each bounded by what a
/// caller sends; 4 MiB is far above DPS's limits).
const MAX_OP: usize = 4 * 1024 * 1024;
/// The WAL is compacted into a snapshot past this size (and the last snapshot's).
const COMPACT_AFTER: u64 = 4 * 1024 * 1024;

/// Enrollments in a directory: durable writes (fsync, group commit), reads from memory. The
/// directory's `LOCK` keeps a second store out. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct FileEnrollmentStore {
    journal: KitJournal<Enrollments>,
}

/// One operation of the journal. Documents convert to enrollments while the frame is decoded,
/// so an intact frame whose document does not convert (a bad key, an invalid id: a file edited
/// by hand) is refused at open like any undecodable frame, never skipped.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub(crate) enum Op {
    PutIndividual { enrollment: StoredIndividual },
    DeleteIndividual { id: DeviceId },
    PutGroup { group: StoredGroup },
    DeleteGroup { id: GroupId },
    LastVersion { version: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "IndividualDoc", into = "IndividualDoc")]
pub(crate) struct StoredIndividual(IndividualEnrollment);

impl TryFrom<IndividualDoc> for StoredIndividual {
    type Error = Error;
    fn try_from(doc: IndividualDoc) -> Result<Self> {
        IndividualEnrollment::try_from(doc).map(StoredIndividual)
    }
}

impl From<StoredIndividual> for IndividualDoc {
    fn from(stored: StoredIndividual) -> Self {
        IndividualDoc::from(&stored.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "GroupDoc", into = "GroupDoc")]
pub(crate) struct StoredGroup(EnrollmentGroup);

impl TryFrom<GroupDoc> for StoredGroup {
    type Error = Error;
    fn try_from(doc: GroupDoc) -> Result<Self> {
        EnrollmentGroup::try_from(doc).map(StoredGroup)
    }
}

impl From<StoredGroup> for GroupDoc {
    fn from(stored: StoredGroup) -> Self {
        GroupDoc::from(&stored.0)
    }
}

impl Journaled for Enrollments {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        let change = match op {
            Op::PutIndividual { enrollment } => Change::PutIndividual(enrollment.0),
            Op::DeleteIndividual { id } => Change::DeleteIndividual(id),
            Op::PutGroup { group } => Change::PutGroup(group.0),
            Op::DeleteGroup { id } => Change::DeleteGroup(id),
            Op::LastVersion { version } => {
                self.last_version = self.last_version.max(version);
                return;
            }
        };
        Enrollments::apply(self, change);
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        std::iter::once(Op::LastVersion {
            version: self.last_version,
        })
        .chain(self.individuals.values().map(|e| Op::PutIndividual {
            enrollment: StoredIndividual(e.clone()),
        }))
        .chain(self.groups.values().map(|g| Op::PutGroup {
            group: StoredGroup(g.clone()),
        }))
        .collect()
    }
}

impl FileEnrollmentStore {
    /// Opens (or creates) the store in `dir`, on tokio's blocking pool.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = JournalConfig::with_durability(Durability::Fsync)
            .compact_after_bytes(COMPACT_AFTER)
            .max_op_bytes(MAX_OP);
        let journal = KitJournal::open(dir, MAGIC, Enrollments::default(), config)?;
        let (individuals, groups) =
            journal.read_blocking(|s| (s.individuals.len(), s.groups.len()))?;
        info!(dir = %dir.display(), individuals, groups, "enrollment store opened");
        Ok(FileEnrollmentStore { journal })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.journal.dir()
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Enrollments) -> T) -> Result<T> {
        Ok(self.journal.read(f).await?)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl EnrollmentStore for FileEnrollmentStore {
    async fn put_individual(
        &self,
        enrollment: IndividualEnrollment,
        precondition: Precondition,
    ) -> Result<IndividualEnrollment> {
        self.journal
            .write(|s| {
                let stored = s.plan_put_individual(enrollment, precondition)?;
                let op = Op::PutIndividual {
                    enrollment: StoredIndividual(stored.clone()),
                };
                Ok::<_, Error>((vec![op], stored))
            })
            .await
    }

    async fn individual(&self, registration_id: &DeviceId) -> Result<Option<IndividualEnrollment>> {
        self.read(|s| s.individuals.get(registration_id).cloned())
            .await
    }

    async fn delete_individual(
        &self,
        registration_id: &DeviceId,
        precondition: Precondition,
    ) -> Result<()> {
        self.journal
            .write(|s| {
                s.plan_delete_individual(registration_id, precondition)?;
                let op = Op::DeleteIndividual {
                    id: registration_id.clone(),
                };
                Ok::<_, Error>((vec![op], ()))
            })
            .await
    }

    async fn individuals(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>> {
        self.read(|s| s.individuals_after(after, limit)).await
    }

    async fn put_group(
        &self,
        group: EnrollmentGroup,
        precondition: Precondition,
    ) -> Result<EnrollmentGroup> {
        self.journal
            .write(|s| {
                let stored = s.plan_put_group(group, precondition)?;
                let op = Op::PutGroup {
                    group: StoredGroup(stored.clone()),
                };
                Ok::<_, Error>((vec![op], stored))
            })
            .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<EnrollmentGroup>> {
        self.read(|s| s.groups.get(id).cloned()).await
    }

    async fn delete_group(&self, id: &GroupId, precondition: Precondition) -> Result<()> {
        self.journal
            .write(|s| {
                s.plan_delete_group(id, precondition)?;
                let op = Op::DeleteGroup { id: id.clone() };
                Ok::<_, Error>((vec![op], ()))
            })
            .await
    }

    async fn groups(&self, after: Option<&GroupId>, limit: usize) -> Result<Vec<EnrollmentGroup>> {
        self.read(|s| s.groups_after(after, limit)).await
    }

    async fn sync(&self) -> Result<()> {
        // Writes return once fsynced; a read waits for any still in their batch.
        self.read(|_| ()).await
    }
}
