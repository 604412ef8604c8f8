//! The state both stores keep in memory, and the rules of the `StateStore` contract on it.

use std::collections::HashMap;

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Event, LastKnown, LkvUpdate, SourcePosition};
use crate::error::Result;

/// Invariants: `events` is sorted by time, equal times in append order; `last_event` is the
/// source position of the last event stored with one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeviceState {
    #[serde(with = "events_repr")]
    pub(crate) events: Vec<Event>,
    pub(crate) last_event: Option<SourcePosition>,
    pub(crate) lkv: Option<LastKnown>,
}

/// All devices' state.
#[derive(Debug, Default)]
pub(crate) struct StateData {
    pub(crate) devices: HashMap<DeviceId, DeviceState>,
}

impl StateData {
    /// The events of `events` that are not redeliveries, in order (without storing them).
    pub(crate) fn fresh_events(&self, device: &DeviceId, events: Vec<Event>) -> Vec<Event> {
        let mut last = self.devices.get(device).and_then(|d| d.last_event);
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if let Some(s) = e.source {
                if s.is_covered_by(last) {
                    continue;
                }
                last = Some(s);
            }
            out.push(e);
        }
        out
    }

    /// Stores events already filtered by [`fresh_events`](Self::fresh_events).
    pub(crate) fn append(&mut self, device: &DeviceId, events: Vec<Event>) -> usize {
        if events.is_empty() {
            return 0;
        }
        let state = self.devices.entry(device.clone()).or_default();
        let n = events.len();
        for e in events {
            if e.source.is_some() {
                state.last_event = e.source;
            }
            if state.events.last().is_none_or(|l| l.time <= e.time) {
                state.events.push(e);
            } else {
                let at = state.events.partition_point(|x| x.time <= e.time);
                state.events.insert(at, e);
            }
        }
        n
    }

    pub(crate) fn read(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Vec<Event> {
        let Some(state) = self.devices.get(device) else {
            return Vec::new();
        };
        let start = state.events.partition_point(|e| e.time < from);
        state.events[start..]
            .iter()
            .take_while(|e| e.time < to)
            .take(limit)
            .cloned()
            .collect()
    }

    pub(crate) fn retention(&mut self, before: Timestamp) -> u64 {
        let mut removed = 0;
        for state in self.devices.values_mut() {
            let n = state.events.partition_point(|e| e.time < before);
            state.events.drain(..n);
            removed += n as u64;
        }
        removed
    }

    /// Whether `update` would change `device`'s record (validating it).
    pub(crate) fn would_apply(&self, device: &DeviceId, update: &LkvUpdate) -> Result<bool> {
        if !update.patch.is_object() {
            return Err(crate::Error::invalid(
                "a last-known-values update must be a JSON object",
            ));
        }
        let position = self
            .devices
            .get(device)
            .and_then(|d| d.lkv.as_ref())
            .and_then(LastKnown::position);
        Ok(!update.source.is_some_and(|s| s.is_covered_by(position)))
    }

    pub(crate) fn merge(&mut self, device: &DeviceId, update: &LkvUpdate) -> Result<bool> {
        let state = self.devices.entry(device.clone()).or_default();
        state.lkv.get_or_insert_with(LastKnown::new).apply(update)
    }

    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        let mut ids: Vec<_> = self.devices.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Events in files: the payload as text when it is UTF-8 (readable, compact), else as bytes.
pub(crate) mod events_repr {
    use bytes::Bytes;
    use iot_core::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Event, SourcePosition};

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Repr {
        t: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s: Option<SourcePosition>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<Vec<u8>>,
    }

    impl From<&Event> for Repr {
        fn from(e: &Event) -> Self {
            let (text, bytes) = match std::str::from_utf8(&e.payload) {
                Ok(s) => (Some(s.to_owned()), None),
                Err(_) => (None, Some(e.payload.to_vec())),
            };
            Repr {
                t: e.time,
                s: e.source,
                text,
                bytes,
            }
        }
    }

    impl From<Repr> for Event {
        fn from(r: Repr) -> Self {
            let payload = match (r.text, r.bytes) {
                (Some(t), _) => Bytes::from(t),
                (None, Some(b)) => Bytes::from(b),
                (None, None) => Bytes::new(),
            };
            Event {
                time: r.t,
                source: r.s,
                payload,
            }
        }
    }

    pub(crate) fn serialize<S: Serializer>(events: &[Event], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(events.iter().map(Repr::from))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        Ok(Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(Event::from)
            .collect())
    }
}
