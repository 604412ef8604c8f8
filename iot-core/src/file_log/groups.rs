//! Consumer-group offsets of a `FileLog`: one small file per group, replaced atomically.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file_log::fs_util::{create_dir_durably, write_atomically};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::sync_util::lock;

/// The file format of `groups/NAME.json`.
#[derive(Debug, Serialize, Deserialize)]
struct GroupFile {
    group: GroupName,
    /// Committed offset per partition; `null` where the group never committed.
    offsets: Vec<Option<u64>>,
}

/// One group's committed offsets, per partition, behind the lock that serialises its commits.
type GroupSlot = Arc<tokio::sync::Mutex<Vec<Option<u64>>>>;

/// Committed offsets of every group, cached in memory and written through to disk.
///
/// Invariant: the cache of a group equals its file on disk whenever the group's lock is free.
#[derive(Debug)]
pub(crate) struct GroupOffsets {
    dir: PathBuf,
    partitions: usize,
    groups: Mutex<HashMap<GroupName, GroupSlot>>,
}

impl GroupOffsets {
    pub(crate) fn open(dir: PathBuf, partitions: u32) -> Result<Self> {
        create_dir_durably(&dir)?;
        let partitions = partitions as usize;
        let mut groups = HashMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A commit interrupted before its rename: the previous file is still valid.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let file = read_group_file(&path)?;
            let mut offsets = file.offsets;
            if offsets.len() != partitions {
                return Err(Error::Corrupt {
                    path,
                    position: 0,
                    reason: format!(
                        "holds {} partitions, the log has {partitions}",
                        offsets.len()
                    ),
                });
            }
            offsets.truncate(partitions);
            groups.insert(file.group, Arc::new(tokio::sync::Mutex::new(offsets)));
        }
        Ok(GroupOffsets {
            dir,
            partitions,
            groups: Mutex::new(groups),
        })
    }

    fn group(&self, group: &GroupName) -> GroupSlot {
        lock(&self.groups)
            .entry(group.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(vec![None; self.partitions])))
            .clone()
    }

    pub(crate) async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        let state = self.group(group);
        let mut offsets = state.lock().await;
        let mut updated = offsets.clone();
        updated[partition.index()] = Some(offset.0);
        let contents = serde_json::to_vec(&GroupFile {
            group: group.clone(),
            offsets: updated.clone(),
        })
        .map_err(|e| Error::InvalidInput {
            reason: format!("cannot encode offsets of group {group}: {e}"),
        })?;
        let dir = self.dir.clone();
        let name = format!("{group}.json");
        tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &contents))
            .await
            .map_err(|_| Error::Closed)??;
        *offsets = updated;
        Ok(())
    }

    pub(crate) async fn committed(
        &self,
        group: &GroupName,
        partition: PartitionId,
    ) -> Option<Offset> {
        let state = lock(&self.groups).get(group).cloned()?;
        let offsets = state.lock().await;
        offsets
            .get(partition.index())
            .copied()
            .flatten()
            .map(Offset)
    }
}

fn read_group_file(path: &Path) -> Result<GroupFile> {
    let raw = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        position: 0,
        reason: format!("consumer-group offsets do not parse: {e}"),
    })
}
