//! Where jobs and configurations are kept: two small traits, a memory and a file
//! implementation of each. A database implements the same traits (a row per document).
//!
//! The engines keep every document in memory and write one through on each change, so a store
//! only saves and loads whole documents; it never has to answer a query.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iot_core::storage::{DirLock, StorageError, fs as sfs, run_blocking};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::configuration::Configuration;
use super::error::{FleetError, FleetResult};
use super::job::Job;

/// Which configuration (id, etag) was last applied to each device, by device id.
pub type Applied = BTreeMap<String, (String, String)>;

/// Keeps jobs.
#[async_trait]
pub trait JobStore: Send + Sync + Debug + 'static {
    /// Writes `job` (replacing the one with its id), durably before returning.
    async fn save(&self, job: &Job) -> FleetResult<()>;
    /// Removes job `id` (nothing if there is none), durably before returning: the engine drops
    /// ended jobs once they are past their history ([`JobsConfig::history`](super::JobsConfig)).
    async fn delete(&self, id: &str) -> FleetResult<()>;
    /// Every job saved.
    async fn load_all(&self) -> FleetResult<Vec<Job>>;
}

/// Keeps configurations and what was applied to each device.
#[async_trait]
pub trait ConfigurationStore: Send + Sync + Debug + 'static {
    /// Writes `configuration` (replacing the one with its id).
    async fn save(&self, configuration: &Configuration) -> FleetResult<()>;
    /// Removes configuration `id` (nothing if there is none).
    async fn delete(&self, id: &str) -> FleetResult<()>;
    /// Every configuration saved.
    async fn load_all(&self) -> FleetResult<Vec<Configuration>>;
    /// Writes the applied map.
    async fn save_applied(&self, applied: &Applied) -> FleetResult<()>;
    /// The applied map last saved (empty at first).
    async fn load_applied(&self) -> FleetResult<Applied>;
}

/// Jobs in memory (tests, and hubs that need no restart).
#[derive(Debug, Default)]
pub struct MemoryJobStore(Mutex<BTreeMap<String, Job>>);

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn save(&self, job: &Job) -> FleetResult<()> {
        crate::sync_util::lock(&self.0).insert(job.spec.id.clone(), job.clone());
        Ok(())
    }

    async fn delete(&self, id: &str) -> FleetResult<()> {
        crate::sync_util::lock(&self.0).remove(id);
        Ok(())
    }

    async fn load_all(&self) -> FleetResult<Vec<Job>> {
        Ok(crate::sync_util::lock(&self.0).values().cloned().collect())
    }
}

/// Configurations in memory.
#[derive(Debug, Default)]
pub struct MemoryConfigurationStore {
    configurations: Mutex<BTreeMap<String, Configuration>>,
    applied: Mutex<Applied>,
}

impl MemoryConfigurationStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConfigurationStore for MemoryConfigurationStore {
    async fn save(&self, configuration: &Configuration) -> FleetResult<()> {
        crate::sync_util::lock(&self.configurations)
            .insert(configuration.spec.id.clone(), configuration.clone());
        Ok(())
    }

    async fn delete(&self, id: &str) -> FleetResult<()> {
        crate::sync_util::lock(&self.configurations).remove(id);
        Ok(())
    }

    async fn load_all(&self) -> FleetResult<Vec<Configuration>> {
        Ok(crate::sync_util::lock(&self.configurations)
            .values()
            .cloned()
            .collect())
    }

    async fn save_applied(&self, applied: &Applied) -> FleetResult<()> {
        *crate::sync_util::lock(&self.applied) = applied.clone();
        Ok(())
    }

    async fn load_applied(&self) -> FleetResult<Applied> {
        Ok(crate::sync_util::lock(&self.applied).clone())
    }
}

/// A directory of JSON documents, one file per id (the id hex-encoded in the name, so any id
/// is a safe file name), each replaced atomically (write, fsync, rename). The directory is
/// locked while the store is open: a second process cannot write beside this one.
#[derive(Debug)]
struct DocDir {
    dir: PathBuf,
    writes: Arc<DocWrites>,
}

/// What every file write of a [`DocDir`] shares, moved into the blocking task that does it.
///
/// A caller's future can be dropped (a task aborted at shutdown) while its write goes on in the
/// blocking pool. Holding the lock there keeps the directory locked until that write has ended,
/// so a store opened next never races it on the same temporary file; the sequence numbers keep
/// such a late write from landing over a newer document.
#[derive(Debug)]
struct DocWrites {
    _lock: DirLock,
    next: AtomicU64,
    /// The sequence number of the last change made to each file.
    landed: Mutex<HashMap<PathBuf, u64>>,
}

/// One change to a document file.
enum Change {
    Replace(Vec<u8>),
    Remove,
}

fn file_name(id: &str) -> String {
    let mut name: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    name.push_str(".json");
    name
}

impl DocDir {
    async fn open(dir: PathBuf) -> FleetResult<Self> {
        run_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("mkdir", &dir, e))?;
            let lock = DirLock::acquire(&dir)?;
            Ok::<_, FleetError>(DocDir {
                dir,
                writes: Arc::new(DocWrites {
                    _lock: lock,
                    next: AtomicU64::new(0),
                    landed: Mutex::new(HashMap::new()),
                }),
            })
        })
        .await
    }

    async fn write<T: Serialize>(&self, id: &str, doc: &T) -> FleetResult<()> {
        let bytes = serde_json::to_vec(doc).map_err(|e| FleetError::Corrupt {
            what: id.to_owned(),
            reason: e.to_string(),
        })?;
        self.change(self.dir.join(file_name(id)), Change::Replace(bytes))
            .await
    }

    async fn remove(&self, id: &str) -> FleetResult<()> {
        self.change(self.dir.join(file_name(id)), Change::Remove)
            .await
    }

    /// Makes `change` to `path` (which may lie beside the directory, as `applied.json` does)
    /// under the lock, one file change at a time, unless a newer change of `path` has landed.
    async fn change(&self, path: PathBuf, change: Change) -> FleetResult<()> {
        let seq = self.writes.next.fetch_add(1, Ordering::Relaxed);
        let writes = self.writes.clone();
        run_blocking(move || {
            let mut landed = crate::sync_util::lock(&writes.landed);
            if landed.get(&path).is_some_and(|last| *last > seq) {
                return Ok(());
            }
            match change {
                Change::Replace(bytes) => sfs::write_atomically(&path, &bytes)?,
                Change::Remove => sfs::remove_durably(&path)?,
            }
            landed.insert(path, seq);
            Ok(())
        })
        .await
    }

    async fn read_all<T: DeserializeOwned + Send + 'static>(&self) -> FleetResult<Vec<T>> {
        let dir = self.dir.clone();
        run_blocking(move || read_dir_docs(&dir)).await
    }
}

fn read_dir_docs<T: DeserializeOwned>(dir: &Path) -> FleetResult<Vec<T>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("readdir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("readdir", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Leftover temporaries of an interrupted write start with a dot; LOCK is the lock.
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        let Some(bytes) = sfs::read_optional(&path)? else {
            continue;
        };
        let doc = serde_json::from_slice(&bytes).map_err(|e| FleetError::Corrupt {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        out.push(doc);
    }
    Ok(out)
}

/// Jobs as files under a directory.
#[derive(Debug)]
pub struct FileJobStore(DocDir);

impl FileJobStore {
    /// Opens (creating) the store in `dir`.
    pub async fn open(dir: impl Into<PathBuf>) -> FleetResult<Self> {
        Ok(FileJobStore(DocDir::open(dir.into()).await?))
    }
}

#[async_trait]
impl JobStore for FileJobStore {
    async fn save(&self, job: &Job) -> FleetResult<()> {
        self.0.write(&job.spec.id, job).await
    }

    async fn delete(&self, id: &str) -> FleetResult<()> {
        self.0.remove(id).await
    }

    async fn load_all(&self) -> FleetResult<Vec<Job>> {
        self.0.read_all().await
    }
}

/// Configurations as files under a directory (`configurations/`, and `applied.json` beside).
#[derive(Debug)]
pub struct FileConfigurationStore {
    docs: DocDir,
    applied: PathBuf,
}

impl FileConfigurationStore {
    /// Opens (creating) the store in `dir`.
    pub async fn open(dir: impl Into<PathBuf>) -> FleetResult<Self> {
        let dir = dir.into();
        let docs = DocDir::open(dir.join("configurations")).await?;
        Ok(FileConfigurationStore {
            docs,
            applied: dir.join("applied.json"),
        })
    }
}

#[async_trait]
impl ConfigurationStore for FileConfigurationStore {
    async fn save(&self, configuration: &Configuration) -> FleetResult<()> {
        self.docs.write(&configuration.spec.id, configuration).await
    }

    async fn delete(&self, id: &str) -> FleetResult<()> {
        self.docs.remove(id).await
    }

    async fn load_all(&self) -> FleetResult<Vec<Configuration>> {
        self.docs.read_all().await
    }

    async fn save_applied(&self, applied: &Applied) -> FleetResult<()> {
        let bytes = serde_json::to_vec(applied).map_err(|e| FleetError::Corrupt {
            what: "applied".into(),
            reason: e.to_string(),
        })?;
        self.docs
            .change(self.applied.clone(), Change::Replace(bytes))
            .await
    }

    async fn load_applied(&self) -> FleetResult<Applied> {
        let path = self.applied.clone();
        let bytes =
            run_blocking(move || sfs::read_optional(&path).map_err(FleetError::from)).await?;
        match bytes {
            None => Ok(Applied::new()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| FleetError::Corrupt {
                what: "applied".into(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iot_core::testkit::blocking_pool::{BlockingThreadHeld, runtime_with_one_blocking_thread};

    use super::*;

    async fn open_until(dir: &Path, patience: Duration) -> FleetResult<DocDir> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match DocDir::open(dir.to_owned()).await {
                Err(FleetError::Store(StorageError::Locked { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_write_left_running_by_a_dropped_caller_keeps_the_directory_locked() {
        let dir = tempfile::tempdir().expect("dir");
        runtime_with_one_blocking_thread().block_on(async {
            let docs = DocDir::open(dir.path().to_owned()).await.expect("open");
            // The pool's one thread kept busy, so the write waits in its queue.
            let held = BlockingThreadHeld::hold();
            let write = tokio::spawn(async move { docs.write("job", &"first").await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The caller goes away (a job task aborted at shutdown) with the store; the write
            // it started does not.
            write.abort();
            assert!(write.await.expect_err("aborted").is_cancelled());
            assert!(
                matches!(
                    DirLock::acquire(dir.path()),
                    Err(StorageError::Locked { .. })
                ),
                "the directory stays locked while the write is pending"
            );
            held.release().await;
            let docs = open_until(dir.path(), Duration::from_secs(10))
                .await
                .expect("opens once the write has ended");
            let all: Vec<String> = docs.read_all().await.expect("read");
            assert_eq!(all, vec!["first".to_owned()]);
            docs.write("job", &"second").await.expect("next write");
            let all: Vec<String> = docs.read_all().await.expect("read");
            assert_eq!(all, vec!["second".to_owned()]);
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::await_holding_lock,
        reason = "the test holds the writes' turn on purpose while both changes queue for it"
    )]
    async fn an_older_change_never_lands_over_a_newer_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("dir");
            let docs = Arc::new(DocDir::open(dir.path().to_owned()).await.expect("open"));
            // Both changes wait for their turn; whichever the pool runs first, the newer wins.
            let turn = crate::sync_util::lock(&docs.writes.landed);
            let older = tokio::spawn({
                let docs = docs.clone();
                async move { docs.write("job", &"older").await }
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            let newer = tokio::spawn({
                let docs = docs.clone();
                async move { docs.write("job", &"newer").await }
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(turn);
            older.await.expect("join").expect("older");
            newer.await.expect("join").expect("newer");
            let all: Vec<String> = docs.read_all().await.expect("read");
            assert_eq!(all, vec!["newer".to_owned()]);
        }
    }
}
