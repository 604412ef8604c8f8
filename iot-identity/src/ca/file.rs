//! CA certificates in one JSON file, replaced atomically on every write.
//!
//! A hub holds a handful of CAs and changes them rarely, so the whole set is written each
//! time: to `cas.json.tmp`, fsynced, renamed over `cas.json`, and the directory fsynced. A
//! crash leaves either the old file or the new one; a stray `.tmp` is ignored at open.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::error::CaError;
use super::record::{CaCertificate, StoredCa};
use super::state::CaState;
use super::store::{CaCondition, CaStore};

const FILE: &str = "cas.json";
const TMP: &str = "cas.json.tmp";
/// The format's name and version, first key of the file.
const FORMAT: &str = "iot-sdk CA store 1";

/// A [`CaStore`] in a directory (`cas.json`), durable once a write returns.
#[derive(Debug)]
pub struct FileCaStore {
    dir: PathBuf,
    /// The state as on disk; a write holds the lock until the file is replaced.
    state: Mutex<CaState>,
}

impl FileCaStore {
    /// Opens (creating the directory if needed) the store in `dir`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Arc<Self>, CaError> {
        let dir = dir.as_ref().to_path_buf();
        let read_dir = dir.clone();
        let state = tokio::task::spawn_blocking(move || load(&read_dir))
            .await
            .map_err(|e| io_error(&dir, std::io::Error::other(e)))??;
        Ok(Arc::new(FileCaStore {
            dir,
            state: Mutex::new(state),
        }))
    }

    async fn write(
        &self,
        change: impl FnOnce(&mut CaState) -> Result<Option<StoredCa>, CaError>,
    ) -> Result<Option<StoredCa>, CaError> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let result = change(&mut next)?;
        let bytes = encode(&next);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || replace(&dir, &bytes))
            .await
            .map_err(|e| io_error(&self.dir, std::io::Error::other(e)))??;
        *state = next;
        Ok(result)
    }
}

#[async_trait]
impl CaStore for FileCaStore {
    async fn get(&self, name: &str) -> Result<Option<StoredCa>, CaError> {
        Ok(self.state.lock().await.certificates.get(name).cloned())
    }

    async fn list(&self) -> Result<Vec<StoredCa>, CaError> {
        Ok(self
            .state
            .lock()
            .await
            .certificates
            .values()
            .cloned()
            .collect())
    }

    async fn put(
        &self,
        certificate: CaCertificate,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        let stored = self
            .write(|s| s.put(certificate, condition).map(Some))
            .await?;
        stored.ok_or_else(|| CaError::invalid("put stored nothing"))
    }

    async fn delete(&self, name: &str, condition: CaCondition) -> Result<(), CaError> {
        self.write(|s| s.delete(name, condition).map(|()| None))
            .await
            .map(|_| ())
    }
}

fn io_error(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode(state: &CaState) -> Vec<u8> {
    let certificates: Vec<Value> = state
        .certificates
        .values()
        .map(|s| {
            let c = &s.certificate;
            json!({
                "name": c.name(),
                "version": s.version,
                "der": STANDARD.encode(c.der()),
                "verified": c.verified,
                "verificationCode": c.verification_code,
                "created": c.created,
                "updated": c.updated,
            })
        })
        .collect();
    let doc = json!({
        "format": FORMAT,
        "lastVersion": state.last_version,
        "certificates": certificates,
    });
    doc.to_string().into_bytes()
}

#[allow(
    clippy::disallowed_methods,
    reason = "runs only on the blocking pool (FileCaStore::write's spawn_blocking)"
)]
fn replace(dir: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let tmp = dir.join(TMP);
    let target = dir.join(FILE);
    let mut file = fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
    // The rename is durable only once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn load(dir: &Path) -> Result<CaState, CaError> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CaState::default()),
        Err(e) => return Err(io_error(&path, e)),
    };
    let corrupt = |reason: String| CaError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if doc["format"] != FORMAT {
        return Err(corrupt(format!("not a {FORMAT:?} file")));
    }
    let mut state = CaState {
        last_version: doc["lastVersion"]
            .as_u64()
            .ok_or_else(|| corrupt("no lastVersion".into()))?,
        ..CaState::default()
    };
    for entry in doc["certificates"]
        .as_array()
        .ok_or_else(|| corrupt("no certificates".into()))?
    {
        let field = |key: &str| corrupt(format!("a certificate without {key}"));
        let name = entry["name"].as_str().ok_or_else(|| field("name"))?;
        let der = entry["der"]
            .as_str()
            .and_then(|d| STANDARD.decode(d).ok())
            .ok_or_else(|| field("der"))?;
        let created = entry["created"].as_u64().ok_or_else(|| field("created"))?;
        let mut certificate =
            CaCertificate::from_der(name, &der, created).map_err(|e| corrupt(e.to_string()))?;
        certificate.verified = entry["verified"]
            .as_bool()
            .ok_or_else(|| field("verified"))?;
        certificate.verification_code = entry["verificationCode"].as_str().map(str::to_owned);
        certificate.updated = entry["updated"].as_u64().ok_or_else(|| field("updated"))?;
        let version = entry["version"].as_u64().ok_or_else(|| field("version"))?;
        if version > state.last_version {
            return Err(corrupt(format!("{name}: version past lastVersion")));
        }
        state.certificates.insert(
            name.to_owned(),
            StoredCa {
                certificate,
                version,
            },
        );
    }
    Ok(state)
}
