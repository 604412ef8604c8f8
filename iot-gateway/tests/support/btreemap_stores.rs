//! An `InboxStore` and a `TwinStore` as an integrator would write them: outside the crate, over a
//! `Mutex<BTreeMap>` "database", public API only. Rows are kept in plain columns and rebuilt
//! through the public constructors, as a database backend must.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_gateway::inbox::{InboxMessage, LockOutcome, Locked, Removed, Settlement};
use iot_gateway::twins::{Section, Twin, TwinLimits, TwinSection};
use iot_gateway::{
    AckRequest, Error, FeedbackStatus, InboxLimits, InboxStore, LockToken, Result, TwinStore,
};
use serde_json::Value;

fn backend(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::backend("btreemap", source, false)
}

/// One queued message in columns.
#[derive(Clone, Debug)]
pub(crate) struct MessageRow {
    message_id: String,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    properties: Vec<(String, String)>,
    payload: Vec<u8>,
    enqueued_at_us: u64,
    expires_at_us: u64,
    ack: String,
    delivery_count: u32,
    locked_until_us: Option<u64>,
}

impl MessageRow {
    fn new(m: &InboxMessage) -> Self {
        MessageRow {
            message_id: m.message_id.clone(),
            correlation_id: m.correlation_id.clone(),
            content_type: m.content_type.clone(),
            content_encoding: m.content_encoding.clone(),
            properties: m.properties.clone(),
            payload: m.payload.to_vec(),
            enqueued_at_us: m.enqueued_at.as_unix_micros(),
            expires_at_us: m.expires_at.as_unix_micros(),
            ack: m.ack.as_str().to_owned(),
            delivery_count: 0,
            locked_until_us: None,
        }
    }

    fn message(&self) -> Result<InboxMessage> {
        let ack = match self.ack.as_str() {
            "none" => AckRequest::None,
            "positive" => AckRequest::Positive,
            "negative" => AckRequest::Negative,
            "full" => AckRequest::Full,
            other => return Err(backend(format!("unknown ack column {other:?}"))),
        };
        let enqueued_at = Timestamp::from_unix_micros(self.enqueued_at_us);
        let mut message = InboxMessage::new(
            self.message_id.clone(),
            self.payload.clone(),
            enqueued_at,
            std::time::Duration::ZERO,
        )
        .with_expiry(Timestamp::from_unix_micros(self.expires_at_us))
        .with_content(self.content_type.clone(), self.content_encoding.clone())
        .with_properties(self.properties.clone())
        .with_ack(ack);
        if let Some(c) = &self.correlation_id {
            message = message.with_correlation_id(c.clone());
        }
        Ok(message)
    }

    fn expired(&self, now: Timestamp) -> bool {
        self.expires_at_us <= now.as_unix_micros()
    }

    fn removed(&self, device: &DeviceId, status: FeedbackStatus) -> Result<Removed> {
        Ok(Removed::new(
            device.clone(),
            self.message()?,
            status,
            self.delivery_count,
        ))
    }
}

/// The inbox "database": (device, sequence) → row, and the last sequence number given out.
#[derive(Debug, Default)]
pub(crate) struct InboxDb {
    pub(crate) rows: BTreeMap<(String, u64), MessageRow>,
    pub(crate) last_seq: u64,
}

#[derive(Debug)]
pub(crate) struct BTreeMapInbox {
    db: Arc<Mutex<InboxDb>>,
}

impl BTreeMapInbox {
    /// Opens a handle on `db`. Locks belong to sessions of the process that is gone, so opening
    /// releases them (delivery counts stay).
    pub(crate) fn open(db: Arc<Mutex<InboxDb>>) -> Self {
        if let Ok(mut db) = db.lock() {
            for row in db.rows.values_mut() {
                row.locked_until_us = None;
            }
        }
        BTreeMapInbox { db }
    }

    fn lock(&self) -> Result<MutexGuard<'_, InboxDb>> {
        self.db.lock().map_err(|_| backend("poisoned"))
    }
}

fn device_rows<'a>(
    db: &'a InboxDb,
    device: &DeviceId,
) -> impl Iterator<Item = (&'a (String, u64), &'a MessageRow)> + use<'a> {
    let d = device.as_str().to_owned();
    db.rows.range((d.clone(), 0)..=(d, u64::MAX))
}

/// Removes the expired rows of `device`, returning them as expired.
fn purge_device(db: &mut InboxDb, device: &DeviceId, now: Timestamp) -> Result<Vec<Removed>> {
    let keys: Vec<_> = device_rows(db, device)
        .filter(|(_, r)| r.expired(now))
        .map(|(k, _)| k.clone())
        .collect();
    let mut out = Vec::new();
    for k in keys {
        if let Some(row) = db.rows.remove(&k) {
            out.push(row.removed(device, FeedbackStatus::Expired)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl InboxStore for BTreeMapInbox {
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)> {
        let mut db = self.lock()?;
        let live = device_rows(&db, device)
            .filter(|(_, r)| !r.expired(now))
            .count();
        // Refused before anything changes, expired rows included.
        if live >= limits.max_depth {
            return Err(Error::QueueFull {
                device: device.clone(),
                queue: "inbox",
                limit: limits.max_depth,
            });
        }
        let removed = purge_device(&mut db, device, now)?;
        db.last_seq += 1;
        let seq = db.last_seq;
        db.rows
            .insert((device.as_str().to_owned(), seq), MessageRow::new(&message));
        Ok((seq, removed))
    }

    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome> {
        let mut db = self.lock()?;
        let keys: Vec<_> = device_rows(&db, device).map(|(k, _)| k.clone()).collect();
        let mut removed = Vec::new();
        let mut next_due: Option<Timestamp> = None;
        for key in keys {
            let Some(row) = db.rows.get(&key).cloned() else {
                continue;
            };
            if row.expired(now) {
                db.rows.remove(&key);
                removed.push(row.removed(device, FeedbackStatus::Expired)?);
                continue;
            }
            if let Some(until) = row.locked_until_us
                && until > now.as_unix_micros()
            {
                let until = Timestamp::from_unix_micros(until);
                next_due = Some(next_due.map_or(until, |d| d.min(until)));
                continue;
            }
            if row.delivery_count >= limits.max_delivery_count {
                db.rows.remove(&key);
                removed.push(row.removed(device, FeedbackStatus::DeliveryCountExceeded)?);
                continue;
            }
            let until = now.saturating_add(limits.lock_duration);
            let delivery = row.delivery_count + 1;
            let message = row.message()?;
            if let Some(stored) = db.rows.get_mut(&key) {
                stored.delivery_count = delivery;
                stored.locked_until_us = Some(until.as_unix_micros());
            }
            let token = LockToken {
                sequence: key.1,
                delivery,
            };
            return Ok(LockOutcome::new(
                Some(Locked::new(token, message, until)),
                removed,
                None,
            ));
        }
        Ok(LockOutcome::new(None, removed, next_due))
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        let mut db = self.lock()?;
        let key = (device.as_str().to_owned(), token.sequence);
        let current = db
            .rows
            .get(&key)
            .is_some_and(|r| r.locked_until_us.is_some() && r.delivery_count == token.delivery);
        if !current {
            return Err(Error::LockLost {
                device: device.clone(),
                token: token.to_string(),
            });
        }
        let status = match settlement {
            Settlement::Abandon => {
                if let Some(row) = db.rows.get_mut(&key) {
                    row.locked_until_us = None;
                }
                return Ok(None);
            }
            Settlement::Complete => FeedbackStatus::Success,
            _ => FeedbackStatus::Rejected,
        };
        match db.rows.remove(&key) {
            Some(row) => Ok(Some(row.removed(device, status)?)),
            None => Err(backend("row vanished under the lock")),
        }
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        let mut db = self.lock()?;
        let devices: Vec<String> = db.rows.keys().map(|(d, _)| d.clone()).collect();
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for d in devices {
            if seen.insert(d.clone()) {
                let device = DeviceId::new(d).map_err(backend)?;
                out.extend(purge_device(&mut db, &device, now)?);
            }
        }
        Ok(out)
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        let mut db = self.lock()?;
        let keys: Vec<_> = device_rows(&db, device).map(|(k, _)| k.clone()).collect();
        for k in &keys {
            db.rows.remove(k);
        }
        Ok(keys.len())
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        Ok(device_rows(&*self.lock()?, device).count())
    }
}

/// One twin in columns: each section's properties as JSON text and its version.
#[derive(Clone, Debug)]
pub(crate) struct TwinRow {
    desired: String,
    desired_version: u64,
    reported: String,
    reported_version: u64,
}

fn section(text: &str, version: u64) -> Result<TwinSection> {
    Ok(TwinSection {
        properties: serde_json::from_str(text).map_err(backend)?,
        version,
    })
}

impl TwinRow {
    fn twin(&self) -> Result<Twin> {
        Ok(Twin {
            desired: section(&self.desired, self.desired_version)?,
            reported: section(&self.reported, self.reported_version)?,
        })
    }

    fn new(twin: &Twin) -> Result<Self> {
        Ok(TwinRow {
            desired: serde_json::to_string(&twin.desired.properties).map_err(backend)?,
            desired_version: twin.desired.version,
            reported: serde_json::to_string(&twin.reported.properties).map_err(backend)?,
            reported_version: twin.reported.version,
        })
    }
}

/// The twin "database": device → row.
#[derive(Debug, Default)]
pub(crate) struct TwinDb {
    pub(crate) rows: BTreeMap<String, TwinRow>,
}

#[derive(Debug)]
pub(crate) struct BTreeMapTwins {
    pub(crate) db: Arc<Mutex<TwinDb>>,
}

impl BTreeMapTwins {
    fn lock(&self) -> Result<MutexGuard<'_, TwinDb>> {
        self.db.lock().map_err(|_| backend("poisoned"))
    }
}

#[async_trait]
impl TwinStore for BTreeMapTwins {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        match self.lock()?.rows.get(device.as_str()) {
            Some(row) => row.twin(),
            None => Ok(Twin::default()),
        }
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let mut db = self.lock()?;
        let current = match db.rows.get(device.as_str()) {
            Some(row) => row.twin()?,
            None => Twin::default(),
        };
        // The crate's rules, applied to the stored twin; the row changes only on success.
        let next = current.patched(device, section, patch, if_version, limits)?;
        db.rows
            .insert(device.as_str().to_owned(), TwinRow::new(&next)?);
        Ok(next)
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        self.lock()?.rows.remove(device.as_str());
        Ok(())
    }
}
