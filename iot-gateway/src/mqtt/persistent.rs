//! Subscriptions of persistent sessions (`clean_session = false`), kept between connections and,
//! when the endpoint has a state directory, across restarts.
//!
//! Devices such as the Azure IoT SDKs connect with `clean_session = false` and subscribe once:
//! after a reconnect (even to a restarted gateway) they expect their subscriptions to be there.
//! The state is one small line per device; the file is rewritten atomically (temporary file,
//! fsync, rename, fsync of the directory) only when a device's subscriptions change.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use iot_core::DeviceId;

use super::error::Error;
use super::session::Subscriptions;

const FILE_NAME: &str = "mqtt-subscriptions";

/// The kept subscriptions, in memory and optionally in a file.
#[derive(Debug)]
pub(crate) struct PersistentSessions {
    kept: Mutex<HashMap<DeviceId, Subscriptions>>,
    file: Option<PathBuf>,
    /// Serialises file writes; each write takes a fresh snapshot, so the last one wins.
    writer: tokio::sync::Mutex<()>,
}

impl PersistentSessions {
    /// Loads the state from `dir` (created if missing), or keeps it in memory only.
    pub(crate) fn open(dir: Option<&Path>) -> Result<Self, Error> {
        let mut kept = HashMap::new();
        let file = match dir {
            None => None,
            Some(dir) => {
                fs::create_dir_all(dir)?;
                let file = dir.join(FILE_NAME);
                match fs::read_to_string(&file) {
                    Ok(text) => kept = parse(&text, &file)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                Some(file)
            }
        };
        Ok(PersistentSessions {
            kept: Mutex::new(kept),
            file,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The subscriptions a connecting device gets back: none for a clean session, which also
    /// forgets what was kept.
    pub(crate) async fn resume(&self, device: &DeviceId, clean_session: bool) -> Subscriptions {
        if clean_session {
            self.store(device, Subscriptions::default()).await;
            Subscriptions::default()
        } else {
            self.lock().get(device).copied().unwrap_or_default()
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

    async fn store(&self, device: &DeviceId, subs: Subscriptions) {
        let changed = {
            let mut kept = self.lock();
            let before = kept.get(device).copied().unwrap_or_default();
            if subs.is_empty() {
                kept.remove(device);
            } else {
                kept.insert(device.clone(), subs);
            }
            before != subs
        };
        if changed {
            self.persist().await;
        }
    }

    async fn persist(&self) {
        let Some(file) = &self.file else { return };
        let _writer = self.writer.lock().await;
        let text = render(&self.lock());
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&file, &text)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save MQTT session subscriptions"),
            Err(e) => tracing::warn!(error = %e, "could not save MQTT session subscriptions"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Subscriptions>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `{bits} {device id}` per line; device ids contain no spaces.
fn render(kept: &HashMap<DeviceId, Subscriptions>) -> String {
    let mut lines: Vec<String> = kept
        .iter()
        .map(|(device, subs)| format!("{} {device}\n", subs.to_bits()))
        .collect();
    lines.sort();
    lines.concat()
}

fn parse(text: &str, file: &Path) -> Result<HashMap<DeviceId, Subscriptions>, Error> {
    let mut kept = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let corrupt = || {
            Error::Config(format!(
                "{} line {}: not \"{{bits}} {{device id}}\"",
                file.display(),
                number + 1
            ))
        };
        let (bits, device) = line.split_once(' ').ok_or_else(corrupt)?;
        let bits: u8 = bits.parse().map_err(|_| corrupt())?;
        let device = DeviceId::new(device).map_err(|_| corrupt())?;
        kept.insert(device, Subscriptions::from_bits(bits).ok_or_else(corrupt)?);
    }
    Ok(kept)
}

fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    let temp = file.with_extension("tmp");
    let mut out = fs::File::create(&temp)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    drop(out);
    fs::rename(&temp, file)?;
    if let Some(dir) = file.parent() {
        // Makes the rename itself durable.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_a_restart_and_clean_sessions_forget() {
        let dir = tempfile::tempdir().expect("dir");
        let d1: DeviceId = "d1".parse().expect("id");
        let d2: DeviceId = "d2".parse().expect("id");
        let subs = Subscriptions::from_bits(0b0101_0101).expect("bits");
        {
            let store = PersistentSessions::open(Some(dir.path())).expect("open");
            assert!(store.resume(&d1, false).await.is_empty());
            store.keep(&d1, false, subs).await;
            store.keep(&d2, false, subs).await;
        }
        let store = PersistentSessions::open(Some(dir.path())).expect("reopen");
        assert_eq!(store.resume(&d1, false).await, subs);
        assert!(store.resume(&d2, true).await.is_empty());
        let store = PersistentSessions::open(Some(dir.path())).expect("reopen");
        assert_eq!(store.resume(&d1, false).await, subs);
        assert!(store.resume(&d2, false).await.is_empty());
    }

    #[test]
    fn corrupt_state_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(dir.path().join(FILE_NAME), "x d1\n").expect("write");
        assert!(PersistentSessions::open(Some(dir.path())).is_err());
    }
}
