//! How actors and reminder tables are kept in a `StateStore`: as last-known-values records
//! written as key frames (each write replaces the record), under ids `<namespace>:<actor id>`
//! and `<namespace>$reminders-<partition>`.
//!
//! The actor's state is kept as JSON *text* inside the record (`{"partition": 3, "offset": 17,
//! "state": "{\"count\":4}"}`): a merge patch drops `null` members, which would change a state
//! holding `None`s, and text comes back byte for byte.

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::state::{LkvUpdate, StateStore};

/// An actor's stored record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredActor {
    /// The input partition the actor's messages come from.
    pub(crate) partition: u32,
    /// The offset of the last message applied to `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) offset: Option<u64>,
    /// The state, as JSON text.
    pub(crate) state: String,
}

/// The store id of actor `id` in `namespace`; an id no device id could be is `InvalidInput`.
pub(crate) fn actor_key(namespace: &str, id: &str) -> Result<DeviceId> {
    DeviceId::new(format!("{namespace}:{id}"))
        .map_err(|e| Error::invalid(format!("actor id unusable as a store id: {e}")))
}

/// The store id of the reminder table of `partition`.
pub(crate) fn reminders_key(namespace: &str, partition: u32) -> Result<DeviceId> {
    DeviceId::new(format!("{namespace}$reminders-{partition}"))
        .map_err(|e| Error::invalid(format!("namespace unusable in a store id: {e}")))
}

/// Replaces record `key` with the object `{field: text, ...extra}`.
fn key_frame(patch: serde_json::Value) -> LkvUpdate {
    LkvUpdate {
        patch,
        key_frame: true,
        source_time: Timestamp::now(),
        source: None,
    }
}

pub(crate) async fn load_actor(
    store: &dyn StateStore,
    key: &DeviceId,
) -> Result<Option<StoredActor>> {
    let Some(record) = store.last_known(key).await? else {
        return Ok(None);
    };
    serde_json::from_value(record.values())
        .map(Some)
        .map_err(|e| Error::invalid(format!("stored actor {key} unreadable: {e}")))
}

pub(crate) async fn save_actor(
    store: &dyn StateStore,
    key: &DeviceId,
    actor: &StoredActor,
) -> Result<()> {
    let patch = serde_json::to_value(actor)
        .map_err(|e| Error::invalid(format!("actor {key} not serializable: {e}")))?;
    store.merge_last_known(key, key_frame(patch)).await?;
    Ok(())
}

pub(crate) async fn load_reminders(
    store: &dyn StateStore,
    key: &DeviceId,
) -> Result<Option<String>> {
    let Some(record) = store.last_known(key).await? else {
        return Ok(None);
    };
    match record.values().get("reminders") {
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        _ => Err(Error::invalid(format!(
            "stored reminder table {key} unreadable"
        ))),
    }
}

pub(crate) async fn save_reminders(
    store: &dyn StateStore,
    key: &DeviceId,
    text: String,
) -> Result<()> {
    store
        .merge_last_known(key, key_frame(json!({ "reminders": text })))
        .await?;
    Ok(())
}
