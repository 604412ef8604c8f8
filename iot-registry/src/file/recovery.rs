//! Open's recovery: find the newest generation, load its snapshot and log (at the same time),
//! build the engine, and delete older generations.

use std::ops::Range;
use std::path::Path;

use iot_core::storage::{StorageError, fs as sfs};
use tracing::{info, warn};

use super::config::FileRegistryConfig;
use super::snapshot::{Loaded, load_snapshot};
use super::wal::read_wal;
use super::{snapshot_name, wal_name};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// What open recovered.
pub(super) struct Recovered {
    pub(super) engine: Engine,
    pub(super) generation: u64,
    pub(super) wal_bytes: u64,
    pub(super) snapshot_bytes: u64,
    /// A repair dropped records of the snapshot: open writes a new one, so that the repair
    /// lasts.
    pub(super) snapshot_repaired: bool,
}

/// Recovers the registry in `dir` (which the caller has locked).
pub(super) fn recover(dir: &Path, config: &FileRegistryConfig) -> Result<Recovered> {
    let (snapshots, wals) = list_generations(dir)?;
    let generation = snapshots.iter().copied().max().unwrap_or(0);
    let mut engine = Engine::new(config.registry.clone())?;
    let started = std::time::Instant::now();
    let snapshot_path = dir.join(snapshot_name(generation));
    let wal_path = dir.join(wal_name(generation));
    // The snapshot and the log are read and decoded at the same time: each has serial parts
    // (reading the file, checking frames) that the other can overlap.
    let (snapshot, wal) = std::thread::scope(|scope| {
        let wal = scope.spawn(|| read_wal(&wal_path, config.recovery));
        let snapshot = if snapshots.contains(&generation) {
            load_snapshot(&snapshot_path, config.recovery).map(Some)
        } else {
            Ok(None)
        };
        let wal = wal.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (snapshot, wal)
    });
    let (changes, wal_bytes) = wal?;
    let loaded = snapshot?.unwrap_or_else(|| Loaded {
        slots: Vec::new(),
        section: Ok(None),
        unindexed: config.registry.unindexed_paths.clone(),
        next_version: 1,
        size: 0,
        repaired: false,
    });
    let read = started.elapsed();
    // Indexes saved with another list of unindexed paths would answer wrongly.
    let section = match loaded.section {
        Ok(Some(_)) if loaded.unindexed != config.registry.unindexed_paths => {
            info!("unindexed paths changed since the snapshot: rebuilding indexes");
            None
        }
        Ok(parts) => parts,
        Err(reason) => {
            warn!(path = %snapshot_path.display(), reason, "snapshot index section unusable: rebuilding indexes from the records");
            None
        }
    };
    let duplicate = |id: iot_core::DeviceId| {
        Error::from(StorageError::corrupt(
            &snapshot_path,
            0,
            format!("device {id} appears twice"),
        ))
    };
    let snapshot_repaired = loaded.repaired;
    let rejected = engine
        .load_slots(loaded.slots, section, changes.len())
        .map_err(duplicate)?;
    if let Some(reason) = rejected {
        warn!(path = %snapshot_path.display(), reason, "snapshot index section failed its checks: rebuilding indexes from the records");
    }
    let loaded_at = started.elapsed();
    engine.apply_log(changes);
    engine.apply_version_floor(loaded.next_version);
    // Older generations are fully contained in the snapshot just loaded.
    for g in snapshots.iter().filter(|&&g| g != generation) {
        sfs::remove_durably(&dir.join(snapshot_name(*g)))?;
    }
    for g in wals.iter().filter(|&&g| g != generation) {
        sfs::remove_durably(&dir.join(wal_name(*g)))?;
    }
    info!(
        devices = engine.len(),
        generation,
        wal_bytes,
        read_ms = read.as_millis() as u64,
        loaded_ms = loaded_at.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "registry opened"
    );
    Ok(Recovered {
        engine,
        generation,
        wal_bytes,
        snapshot_bytes: loaded.size,
        snapshot_repaired,
    })
}

/// The generations of the snapshots and logs in `dir`; removes what a crashed compaction left
/// (its temporary snapshot).
fn list_generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut snapshots = Vec::new();
    let mut wals = Vec::new();
    let list = |e| Error::from(StorageError::io("list", dir, e));
    for entry in std::fs::read_dir(dir).map_err(list)? {
        let entry = entry.map_err(list)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // An unfinished snapshot of a crashed compaction.
            sfs::remove_durably(&entry.path())?;
        } else if let Some(g) = name.strip_prefix("snapshot-") {
            if let Ok(g) = u64::from_str_radix(g, 16) {
                snapshots.push(g);
            }
        } else if let Some(g) = name.strip_prefix("wal-")
            && let Ok(g) = u64::from_str_radix(g, 16)
        {
            wals.push(g);
        }
    }
    Ok((snapshots, wals))
}

/// Applies `decode` to every frame (file position, body range) on all cores, keeping the order;
/// the first error in frame order wins.
pub(super) fn on_all_cores<T: Send, E: Send>(
    frames: &[(u64, Range<usize>)],
    decode: impl Fn(u64, &Range<usize>) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = frames.len().div_ceil(threads).max(1);
    let decode = &decode;
    let parsed: Vec<std::thread::Result<std::result::Result<Vec<T>, E>>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = frames
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(position, body)| decode(*position, body))
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
    let mut out = Vec::with_capacity(frames.len());
    for part in parsed {
        match part {
            Ok(part) => out.extend(part?),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    Ok(out)
}
