//! Where jobs and configurations are kept: two small traits, a memory and a file
//! implementation of each. A database implements the same traits (a row per document).
//!
//! The engines keep every document in memory and write one through on each change, so a store
//! only saves and loads whole documents; it never has to answer a query.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
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
    _lock: Arc<DirLock>,
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
                _lock: Arc::new(lock),
            })
        })
        .await
    }

    async fn write<T: Serialize>(&self, id: &str, doc: &T) -> FleetResult<()> {
        let bytes = serde_json::to_vec(doc).map_err(|e| FleetError::Corrupt {
            what: id.to_owned(),
            reason: e.to_string(),
        })?;
        let path = self.dir.join(file_name(id));
        run_blocking(move || sfs::write_atomically(&path, &bytes).map_err(FleetError::from)).await
    }

    async fn remove(&self, id: &str) -> FleetResult<()> {
        let path = self.dir.join(file_name(id));
        run_blocking(move || sfs::remove_durably(&path).map_err(FleetError::from)).await
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
        let path = self.applied.clone();
        run_blocking(move || sfs::write_atomically(&path, &bytes).map_err(FleetError::from)).await
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
