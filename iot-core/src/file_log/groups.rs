//! Consumer-group offsets of a `FileLog`: one small file per group, replaced atomically.
//!
//! A group's file concerns that group only. A file that does not parse, names another group or
//! holds another partition count leaves its group **damaged**: the log opens, and every use of that
//! group fails with [`Error::Corrupt`] naming the file until an operator removes it (the group then
//! starts afresh). A committed offset past the end of its partition — what an OS-buffered log can
//! hold after a machine crash, when the commit reached the disk and the records did not — is
//! clamped to the end on open, with a warning, and the clamp is written back so that the stale
//! offset cannot return once new records fill the gap.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{Error, Result};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::storage::fs::{create_dir_durably, write_atomically};
use crate::storage::{DirLock, run_blocking};
use crate::sync_util::lock;

/// The file format of `groups/NAME.json`.
#[derive(Debug, Serialize, Deserialize)]
struct GroupFile {
    group: GroupName,
    /// Committed offset per partition; `null` where the group never committed.
    offsets: Vec<Option<u64>>,
}

/// One group as the log holds it.
#[derive(Debug)]
enum GroupState {
    /// Committed offset per partition.
    Offsets(Vec<Option<u64>>),
    /// The group's file is damaged; every use of the group fails with this.
    Damaged { path: PathBuf, reason: String },
}

impl GroupState {
    fn offsets(&self) -> Result<&[Option<u64>]> {
        match self {
            GroupState::Offsets(offsets) => Ok(offsets),
            GroupState::Damaged { path, reason } => Err(Error::Corrupt {
                path: path.clone(),
                position: 0,
                reason: format!("{reason}; remove the file to reset the group"),
            }),
        }
    }
}

/// One group's state behind the lock that serialises its commits.
type GroupSlot = Arc<tokio::sync::Mutex<GroupState>>;

/// Committed offsets of every group, cached in memory and written through to disk.
///
/// Invariant: the cached offsets of a group equal its file on disk whenever the group's lock is
/// free; a damaged group is never written.
#[derive(Debug)]
pub(crate) struct GroupOffsets {
    dir: PathBuf,
    partitions: usize,
    groups: Mutex<HashMap<GroupName, GroupSlot>>,
    /// The log directory's lock, carried into each commit's blocking write (see
    /// `FilePartition`).
    dir_lock: Arc<DirLock>,
}

impl GroupOffsets {
    /// Loads the groups of `dir` (blocking). `ends` holds the next offset of each partition.
    #[allow(
        clippy::disallowed_methods,
        reason = "runs while the log is opened, on the blocking pool"
    )]
    pub(crate) fn open(dir: PathBuf, ends: &[u64], dir_lock: Arc<DirLock>) -> Result<Self> {
        create_dir_durably(&dir)?;
        let mut groups = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A commit interrupted before its rename: the previous file is still valid.
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove an interrupted commit");
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(group) = GroupName::new(stem) else {
                warn!(path = %path.display(), "ignoring a file that names no valid group");
                continue;
            };
            let state = load_group(&path, &group, ends)?;
            groups.insert(group, Arc::new(tokio::sync::Mutex::new(state)));
        }
        Ok(GroupOffsets {
            dir,
            partitions: ends.len(),
            groups: Mutex::new(groups),
            dir_lock,
        })
    }

    fn group(&self, group: &GroupName) -> GroupSlot {
        lock(&self.groups)
            .entry(group.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(GroupState::Offsets(vec![
                    None;
                    self.partitions
                ])))
            })
            .clone()
    }

    pub(crate) async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        // The guard travels with the write into the blocking pool: a caller dropped mid-write
        // (an aborted task) leaves the group locked until its file and cache agree again, so
        // the next commit never races this write on the temporary file nor reads a stale cache.
        let mut state = self.group(group).lock_owned().await;
        let mut updated = state.offsets()?.to_vec();
        updated[partition.index()] = Some(offset.0);
        let contents = encode(group, &updated)?;
        let target = self.dir.join(file_name(group));
        let dir_lock = self.dir_lock.clone();
        run_blocking(move || {
            let _dir_lock = dir_lock;
            write_atomically(&target, &contents).map_err(Error::from)?;
            *state = GroupState::Offsets(updated);
            Ok(())
        })
        .await
    }

    pub(crate) async fn committed(
        &self,
        group: &GroupName,
        partition: PartitionId,
    ) -> Result<Option<Offset>> {
        let Some(slot) = lock(&self.groups).get(group).cloned() else {
            return Ok(None);
        };
        let state = slot.lock().await;
        Ok(state
            .offsets()?
            .get(partition.index())
            .copied()
            .flatten()
            .map(Offset))
    }
}

fn file_name(group: &GroupName) -> String {
    format!("{group}.json")
}

fn encode(group: &GroupName, offsets: &[Option<u64>]) -> Result<Vec<u8>> {
    serde_json::to_vec(&GroupFile {
        group: group.clone(),
        offsets: offsets.to_vec(),
    })
    .map_err(|e| Error::InvalidInput {
        reason: format!("cannot encode offsets of group {group}: {e}"),
    })
}

/// Loads one group's file (blocking): its offsets, clamped to `ends` (and written back if
/// clamped), or the reason it is damaged. Only failing I/O is an error for the whole log.
fn load_group(path: &Path, group: &GroupName, ends: &[u64]) -> Result<GroupState> {
    let raw = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let damaged = |reason: String| {
        warn!(path = %path.display(), %reason, "consumer-group file is damaged; the group is unusable until it is removed");
        Ok(GroupState::Damaged {
            path: path.to_owned(),
            reason,
        })
    };
    let file: GroupFile = match serde_json::from_slice(&raw) {
        Ok(file) => file,
        Err(e) => return damaged(format!("consumer-group offsets do not parse: {e}")),
    };
    if file.group != *group {
        return damaged(format!("the file holds offsets of group {}", file.group));
    }
    if file.offsets.len() != ends.len() {
        return damaged(format!(
            "holds {} partitions, the log has {}",
            file.offsets.len(),
            ends.len()
        ));
    }
    let mut offsets = file.offsets;
    let mut clamped = false;
    for (p, (offset, &end)) in offsets.iter_mut().zip(ends).enumerate() {
        if let Some(o) = offset
            && *o > end
        {
            warn!(%group, partition = p, committed = *o, end,
                "committed offset is past the end of the partition; clamping it to the end");
            *o = end;
            clamped = true;
        }
    }
    if clamped {
        write_atomically(path, &encode(group, &offsets)?)?;
    }
    Ok(GroupState::Offsets(offsets))
}
