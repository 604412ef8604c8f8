//! Subscriptions of persistent sessions (`clean_session = false`), kept between connections and,
//! when the endpoint has a state directory, across restarts.
//!
//! Devices such as the Azure IoT SDKs connect with `clean_session = false` and subscribe once:
//! after a reconnect (even to a restarted gateway) they expect their subscriptions to be there.
//!
//! On disk the state is a journal of the storage kit ([`iot_core::storage::journal`]) in
//! `STATE_DIR/sessions`: each change of a device's subscriptions is one checksummed frame
//! appended (and fsynced) on the blocking pool, never a rewrite of the whole state; compaction
//! writes a snapshot now and then. Files are private (0600, directory 0700), like every other
//! store's. Opening follows the kit's recovery rule: a torn last write is cut off, other damage is
//! refused ([`Error::Corrupt`](crate::Error::Corrupt) naming file and position) unless
//! [`MqttConfig::state_recovery`](super::MqttConfig::state_recovery) asks for a repair.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iot_core::DeviceId;
use iot_core::storage::{JournalConfig, Journaled, Recovery};
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::subscriptions::Subscriptions;
use crate::journaled::JournaledState;

/// The journal's directory under the endpoint's state directory.
const DIR_NAME: &str = "sessions";
const MAGIC: &[u8; 8] = b"IOTMQPS1";

/// Every kept session's subscriptions (none kept means none held).
#[derive(Debug, Default)]
struct Kept(HashMap<DeviceId, Subscriptions>);

/// One change: `device` now holds `subscriptions` (empty: forgotten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Op {
    device: DeviceId,
    subscriptions: KeptBits,
}

/// Subscriptions as their bit form; bits no subscription uses fail to decode, so a frame that
/// passes its checksum but holds such bits is refused as corrupt rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
struct KeptBits(Subscriptions);

impl TryFrom<u8> for KeptBits {
    type Error = String;

    fn try_from(bits: u8) -> Result<Self, String> {
        Subscriptions::from_bits(bits)
            .map(KeptBits)
            .ok_or_else(|| format!("subscription bits {bits:#010b} name no subscription"))
    }
}

impl From<KeptBits> for u8 {
    fn from(bits: KeptBits) -> u8 {
        bits.0.to_bits()
    }
}

impl Journaled for Kept {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        if op.subscriptions.0.is_empty() {
            self.0.remove(&op.device);
        } else {
            self.0.insert(op.device, op.subscriptions.0);
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        self.0
            .iter()
            .map(|(device, subs)| Op {
                device: device.clone(),
                subscriptions: KeptBits(*subs),
            })
            .collect()
    }
}

/// The kept subscriptions, in memory and optionally in a journal.
#[derive(Debug)]
pub(crate) struct PersistentSessions {
    kept: Arc<JournaledState<Kept>>,
}

impl PersistentSessions {
    /// Loads the state from `STATE_DIR/sessions` (created if missing, mode 0700), or keeps it in
    /// memory only. Blocking (it runs once, when the server is built).
    pub(crate) fn open(state_dir: Option<&Path>, recovery: Recovery) -> Result<Self, Error> {
        let kept = match state_dir {
            None => JournaledState::in_memory(Kept::default()),
            Some(dir) => JournaledState::open(
                &dir.join(DIR_NAME),
                MAGIC,
                Kept::default(),
                JournalConfig::default().recovery(recovery),
            )?,
        };
        Ok(PersistentSessions {
            kept: Arc::new(kept),
        })
    }

    /// The subscriptions a connecting device gets back: none for a clean session, which also
    /// forgets what was kept.
    pub(crate) async fn resume(&self, device: &DeviceId, clean_session: bool) -> Subscriptions {
        if clean_session {
            self.store(device, Subscriptions::default()).await;
            Subscriptions::default()
        } else {
            match self.kept.read(|kept| kept.0.get(device).copied()).await {
                Ok(kept) => kept.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read MQTT session subscriptions");
                    Subscriptions::default()
                }
            }
        }
    }

    /// Keeps a persistent session's subscriptions when its connection ends.
    pub(crate) async fn keep(&self, device: &DeviceId, clean_session: bool, subs: Subscriptions) {
        let subs = if clean_session {
            Subscriptions::default()
        } else {
            subs
        };
        self.store(device, subs).await;
    }

    /// Records `subs` for `device` if they changed: one frame appended to the journal, on the
    /// blocking pool. A failure is logged; the device then gets what was kept before.
    async fn store(&self, device: &DeviceId, subs: Subscriptions) {
        let device = device.clone();
        let plan = move |kept: &Kept| {
            let before = kept.0.get(&device).copied().unwrap_or_default();
            let ops = if before == subs {
                Vec::new()
            } else {
                vec![Op {
                    device,
                    subscriptions: KeptBits(subs),
                }]
            };
            Ok((ops, ()))
        };
        if let Err(e) = self.kept.write(plan).await {
            tracing::warn!(error = %e, "could not save MQTT session subscriptions");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs() -> Subscriptions {
        Subscriptions::from_bits(0b0101_0101).expect("bits")
    }

    #[tokio::test]
    async fn survives_a_restart_and_clean_sessions_forget() {
        let dir = tempfile::tempdir().expect("dir");
        let d1: DeviceId = "d1".parse().expect("id");
        let d2: DeviceId = "d2".parse().expect("id");
        let open = || PersistentSessions::open(Some(dir.path()), Recovery::Strict);
        {
            let store = open().expect("open");
            assert!(store.resume(&d1, false).await.is_empty());
            store.keep(&d1, false, subs()).await;
            store.keep(&d2, false, subs()).await;
        }
        let store = open().expect("reopen");
        assert_eq!(store.resume(&d1, false).await, subs());
        assert!(store.resume(&d2, true).await.is_empty());
        drop(store);
        let store = open().expect("reopen");
        assert_eq!(store.resume(&d1, false).await, subs());
        assert!(store.resume(&d2, false).await.is_empty());
    }

    /// Every file under `dir` with its inode.
    #[cfg(unix)]
    fn inodes(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.extend(inodes(&path));
            } else {
                out.push((path.clone(), std::fs::metadata(&path).expect("stat").ino()));
            }
        }
        out.sort();
        out
    }

    /// A change appends to the journal: no file is rewritten (replaced by a rename) per change.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_change_appends_rather_than_rewrites() {
        let dir = tempfile::tempdir().expect("dir");
        let store = PersistentSessions::open(Some(dir.path()), Recovery::Strict).expect("open");
        let d1: DeviceId = "d1".parse().expect("id");
        let d2: DeviceId = "d2".parse().expect("id");
        store.keep(&d1, false, subs()).await;
        let before = inodes(dir.path());
        assert!(!before.is_empty());
        store.keep(&d2, false, subs()).await;
        store.keep(&d1, true, subs()).await;
        assert_eq!(inodes(dir.path()), before);
    }

    #[tokio::test]
    async fn in_memory_only_without_a_state_dir() {
        let store = PersistentSessions::open(None, Recovery::Strict).expect("open");
        let d1: DeviceId = "d1".parse().expect("id");
        store.keep(&d1, false, subs()).await;
        assert_eq!(store.resume(&d1, false).await, subs());
    }

    #[test]
    fn bits_no_subscription_uses_do_not_decode() {
        // QoS 1 of a filter that is not present.
        assert!(serde_json::from_str::<KeptBits>("16").is_err());
        assert_eq!(
            serde_json::from_str::<KeptBits>("85").expect("valid"),
            KeptBits(subs())
        );
    }
}
