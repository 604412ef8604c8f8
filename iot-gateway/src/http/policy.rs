//! Hub-level shared access policies: named key pairs with rights, as IoT Hub has them.
//!
//! A back end proves which policy it holds with a SAS token signed by one of the policy's keys
//! and naming it in `skn`. The hub ships IoT Hub's five default policies; their keys are random
//! and made when the store is first opened. Keys rotate one slot at a time, so a back end can
//! move to the other key before the old one stops working.
//!
//! [`PolicyStore`] keeps the policies in memory and, when opened on a directory, in one JSON file
//! (`policies.json`, mode 0600) replaced atomically on every change with the storage kit
//! (`iot_core::storage::fs::replace_atomically`): a crash leaves the old or the new set, never a
//! mix. Keys never appear in `Debug` output, logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use iot_core::storage::{self, StorageError};
use iot_identity::{KeySlot, SymmetricKey};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// What a policy may do, IoT Hub's four permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// Read the identity registry (devices, twins, queries).
    pub const REGISTRY_READ: Rights = Rights(1);
    /// Write the identity registry (create, update, delete devices).
    pub const REGISTRY_WRITE: Rights = Rights(2);
    /// Cloud-side operations: twins, direct methods, cloud-to-device messages, feedback.
    pub const SERVICE_CONNECT: Rights = Rights(4);
    /// Connect as any device (protocol gateways).
    pub const DEVICE_CONNECT: Rights = Rights(8);
    /// No right at all.
    pub const NONE: Rights = Rights(0);
    /// Every right.
    pub const ALL: Rights = Rights(15);

    const NAMES: [(Rights, &'static str); 4] = [
        (Rights::REGISTRY_READ, "RegistryRead"),
        (Rights::REGISTRY_WRITE, "RegistryWrite"),
        (Rights::SERVICE_CONNECT, "ServiceConnect"),
        (Rights::DEVICE_CONNECT, "DeviceConnect"),
    ];

    /// Both sets of rights.
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    /// Whether every right of `other` is in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any right of `other` is in `self`.
    pub const fn intersects(self, other: Rights) -> bool {
        self.0 & other.0 != 0
    }

    /// IoT Hub's names of the rights held, in its order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect()
    }

    /// The right called `name` (IoT Hub's spelling, case-insensitive).
    pub fn from_name(name: &str) -> Option<Rights> {
        Self::NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(r, _)| *r)
    }

    /// Parses IoT Hub's `"RegistryRead, ServiceConnect"` form.
    pub fn parse_list(text: &str) -> Option<Rights> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .try_fold(Rights::NONE, |acc, n| {
                Some(acc.union(Rights::from_name(n)?))
            })
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rights({})", self.names().join(", "))
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(", "))
    }
}

/// One shared access policy. `Debug` redacts the keys.
#[derive(Clone)]
pub struct SharedAccessPolicy {
    /// The name tokens carry in `skn`.
    pub name: String,
    /// The primary key.
    pub primary: SymmetricKey,
    /// The secondary key.
    pub secondary: SymmetricKey,
    /// What the policy may do.
    pub rights: Rights,
}

impl SharedAccessPolicy {
    /// A policy with two fresh random keys.
    pub fn generate(name: impl Into<String>, rights: Rights) -> Self {
        SharedAccessPolicy {
            name: name.into(),
            primary: SymmetricKey::generate(),
            secondary: SymmetricKey::generate(),
            rights,
        }
    }

    /// IoT Hub's default policies: `iothubowner` (every right), `service` (ServiceConnect),
    /// `device` (DeviceConnect), `registryRead` and `registryReadWrite`.
    pub fn defaults() -> Vec<SharedAccessPolicy> {
        vec![
            Self::generate("iothubowner", Rights::ALL),
            Self::generate("service", Rights::SERVICE_CONNECT),
            Self::generate("device", Rights::DEVICE_CONNECT),
            Self::generate("registryRead", Rights::REGISTRY_READ),
            Self::generate(
                "registryReadWrite",
                Rights::REGISTRY_READ.union(Rights::REGISTRY_WRITE),
            ),
        ]
    }

    /// The connection string a back end uses with this policy's primary key:
    /// `HostName={host};SharedAccessKeyName={name};SharedAccessKey={key}`.
    pub fn connection_string(&self, host: &str) -> String {
        format!(
            "HostName={host};SharedAccessKeyName={};SharedAccessKey={}",
            self.name,
            self.primary.expose_base64().as_str()
        )
    }
}

impl fmt::Debug for SharedAccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedAccessPolicy")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Why the policy store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No policy has that name.
    #[error("no shared access policy named {0:?}")]
    NotFound(String),
    /// A policy name must be 1–64 characters of letters, digits, `.`, `_`, `-`.
    #[error("invalid policy name {0:?}")]
    InvalidName(String),
    /// The file could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The file is not a policy set this version wrote.
    #[error("{path}: not a shared access policy file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPolicy {
    key_name: String,
    primary_key: String,
    secondary_key: String,
    rights: String,
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    version: u32,
    policies: Vec<StoredPolicy>,
}

type PolicyMap = BTreeMap<String, SharedAccessPolicy>;

/// The hub's shared access policies, in memory or durable in a directory.
///
/// Reads take a read lock on a shared map (no I/O); writes are serialised, written to the file
/// first, and only then made visible.
pub struct PolicyStore {
    current: RwLock<Arc<PolicyMap>>,
    /// Grows by one with every change, after the new set is visible: a verdict reached with the
    /// set of generation `g` (read before the policy) is stale once this is past `g`.
    generation: AtomicU64,
    file: Option<PathBuf>,
    writer: Mutex<()>,
}

impl fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyStore")
            .field("file", &self.file)
            .field("policies", &self.snapshot().keys().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl PolicyStore {
    /// A store in memory holding `policies` (use [`SharedAccessPolicy::defaults`] for IoT Hub's).
    pub fn memory(policies: Vec<SharedAccessPolicy>) -> Self {
        PolicyStore {
            current: RwLock::new(Arc::new(
                policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            )),
            generation: AtomicU64::new(0),
            file: None,
            writer: Mutex::new(()),
        }
    }

    /// Opens the store in `dir` (created if missing), writing IoT Hub's default policies with
    /// fresh keys the first time.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self, PolicyError> {
        let dir = dir.into();
        storage::run_blocking(move || Self::open_blocking(&dir)).await
    }

    fn open_blocking(dir: &Path) -> Result<Self, PolicyError> {
        storage::fs::create_dir_durably(dir)?;
        let file = dir.join("policies.json");
        storage::fs::remove_leftover_temp(&file)?;
        let map = match storage::fs::read_optional(&file)? {
            Some(bytes) => decode(&file, &bytes)?,
            None => {
                let map: PolicyMap = SharedAccessPolicy::defaults()
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect();
                write_file(&file, &map)?;
                map
            }
        };
        Ok(PolicyStore {
            current: RwLock::new(Arc::new(map)),
            generation: AtomicU64::new(0),
            file: Some(file),
            writer: Mutex::new(()),
        })
    }

    fn snapshot(&self) -> Arc<PolicyMap> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many times the set changed (any upsert, removal or rotation) since the store was
    /// opened. Read it *before* [`get`](Self::get): a decision made from the policy read then
    /// holds only while the generation is still the one read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<SharedAccessPolicy> {
        self.snapshot().get(name).cloned()
    }

    /// Every policy, by name.
    pub fn list(&self) -> Vec<SharedAccessPolicy> {
        self.snapshot().values().cloned().collect()
    }

    /// Adds or replaces a policy.
    pub async fn upsert(&self, policy: SharedAccessPolicy) -> Result<(), PolicyError> {
        if !valid_name(&policy.name) {
            return Err(PolicyError::InvalidName(policy.name));
        }
        self.update(move |map| {
            map.insert(policy.name.clone(), policy);
            Ok(())
        })
        .await
    }

    /// Removes a policy; tokens naming it stop working at once.
    pub async fn remove(&self, name: &str) -> Result<(), PolicyError> {
        let name = name.to_owned();
        self.update(move |map| {
            map.remove(&name)
                .map(|_| ())
                .ok_or(PolicyError::NotFound(name))
        })
        .await
    }

    /// Replaces one key of a policy with a fresh random one (tokens signed with the old key of
    /// that slot stop working; the other slot is untouched).
    pub async fn rotate(&self, name: &str, slot: KeySlot) -> Result<(), PolicyError> {
        let name = name.to_owned();
        self.update(move |map| {
            let policy = map
                .get_mut(&name)
                .ok_or_else(|| PolicyError::NotFound(name.clone()))?;
            match slot {
                KeySlot::Primary => policy.primary = SymmetricKey::generate(),
                _ => policy.secondary = SymmetricKey::generate(),
            }
            Ok(())
        })
        .await
    }

    async fn update(
        &self,
        change: impl FnOnce(&mut PolicyMap) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError> {
        let _writer = self.writer.lock().await;
        let mut map = (*self.snapshot()).clone();
        change(&mut map)?;
        let map = Arc::new(map);
        if let Some(file) = &self.file {
            let (file, to_write) = (file.clone(), map.clone());
            storage::run_blocking(move || write_file(&file, &to_write)).await?;
        }
        match self.current.write() {
            Ok(mut guard) => *guard = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
        // After the swap: whoever reads the new generation reads the new set.
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!("shared access policies changed");
        Ok(())
    }
}

/// The hub's policies with `DeviceConnect` sign device tokens too: give the store to
/// [`HubBuilder::device_connect_policies`](crate::HubBuilder::device_connect_policies) and such
/// tokens authenticate devices on every endpoint (MQTT as well as HTTPS).
impl iot_identity::DeviceConnectPolicies for PolicyStore {
    fn device_connect_keys(&self, policy: &str) -> Option<(SymmetricKey, SymmetricKey)> {
        let snapshot = self.snapshot();
        let found = snapshot.get(policy)?;
        found
            .rights
            .contains(Rights::DEVICE_CONNECT)
            .then(|| (found.primary.clone(), found.secondary.clone()))
    }
}

fn write_file(file: &Path, map: &PolicyMap) -> Result<(), PolicyError> {
    let stored = StoredFile {
        version: 1,
        policies: map
            .values()
            .map(|p| StoredPolicy {
                key_name: p.name.clone(),
                primary_key: p.primary.expose_base64().to_string(),
                secondary_key: p.secondary.expose_base64().to_string(),
                rights: p.rights.to_string(),
            })
            .collect(),
    };
    // The text holds keys: it is zeroized once written.
    let text = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&stored).map_err(|e| {
        PolicyError::Corrupt {
            path: file.to_owned(),
            reason: e.to_string(),
        }
    })?);
    storage::fs::write_atomically(file, &text)?;
    Ok(())
}

fn decode(file: &Path, bytes: &[u8]) -> Result<PolicyMap, PolicyError> {
    let corrupt = |reason: String| PolicyError::Corrupt {
        path: file.to_owned(),
        reason,
    };
    let stored: StoredFile =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("JSON: {e}")))?;
    if stored.version != 1 {
        return Err(corrupt(format!("unknown version {}", stored.version)));
    }
    let mut map = PolicyMap::new();
    for p in stored.policies {
        if !valid_name(&p.key_name) {
            return Err(corrupt(format!("invalid policy name {:?}", p.key_name)));
        }
        let key = |k: &str| {
            SymmetricKey::from_base64(k)
                .map_err(|_| corrupt(format!("policy {}: a key is not base64", p.key_name)))
        };
        let rights = Rights::parse_list(&p.rights)
            .ok_or_else(|| corrupt(format!("policy {}: unknown rights", p.key_name)))?;
        let policy = SharedAccessPolicy {
            name: p.key_name.clone(),
            primary: key(&p.primary_key)?,
            secondary: key(&p.secondary_key)?,
            rights,
        };
        map.insert(p.key_name, policy);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_round_trip_through_names() {
        let rw = Rights::REGISTRY_READ.union(Rights::REGISTRY_WRITE);
        assert_eq!(rw.to_string(), "RegistryRead, RegistryWrite");
        assert_eq!(Rights::parse_list("registryread,RegistryWrite"), Some(rw));
        assert_eq!(Rights::parse_list("RegistryRead, Nope"), None);
        assert!(Rights::ALL.contains(rw));
        assert!(!rw.contains(Rights::SERVICE_CONNECT));
    }

    #[test]
    fn debug_shows_no_key() {
        let p = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
        let text = format!("{p:?}");
        assert!(!text.contains(p.primary.expose_base64().as_str()));
        assert!(text.contains("redacted"));
    }

    #[tokio::test]
    async fn defaults_persist_and_rotation_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).await.unwrap();
        let names: Vec<String> = store.list().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "device",
                "iothubowner",
                "registryRead",
                "registryReadWrite",
                "service"
            ]
        );
        let before = store.get("service").unwrap();
        store.rotate("service", KeySlot::Primary).await.unwrap();
        let after = store.get("service").unwrap();
        assert_ne!(
            before.primary.expose_base64().as_str(),
            after.primary.expose_base64().as_str()
        );
        assert_eq!(
            before.secondary.expose_base64().as_str(),
            after.secondary.expose_base64().as_str()
        );
        store.remove("device").await.unwrap();
        drop(store);
        let reopened = PolicyStore::open(dir.path()).await.unwrap();
        assert!(reopened.get("device").is_none());
        assert_eq!(
            reopened
                .get("service")
                .unwrap()
                .primary
                .expose_base64()
                .as_str(),
            after.primary.expose_base64().as_str()
        );
        assert_eq!(reopened.get("iothubowner").unwrap().rights, Rights::ALL);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_file_is_private_and_debug_names_no_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = PolicyStore::open(dir.path()).await.unwrap();
        let mode = std::fs::metadata(dir.path().join("policies.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let debug = format!("{store:?}");
        for policy in store.list() {
            assert!(!debug.contains(policy.primary.expose_base64().as_str()));
            assert!(!debug.contains(policy.secondary.expose_base64().as_str()));
        }
        assert!(debug.contains("iothubowner"));
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(PolicyStore::open(dir.path()).await.unwrap());
        std::fs::write(dir.path().join("policies.json"), b"{\"version\":1,").unwrap();
        assert!(matches!(
            PolicyStore::open(dir.path()).await,
            Err(PolicyError::Corrupt { .. })
        ));
    }
}
