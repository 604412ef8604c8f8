//! A building of 3 floors × 10 rooms × 10 temperature sensors as actors, shared by the actor
//! tests: sensors keep a window of their last readings and send its average to their room; a
//! room raises an alert (and asks one of its sensors to ventilate) when its sensors' mean passes
//! the threshold; rooms and floors send their summaries up to the building.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{DeviceId, Record, StoredRecord, Timestamp};
use iot_registry::{DeviceDocument, MemoryRegistry, Registry};
use iot_stream::Result;
use iot_stream::actors::{
    Actor, ActorContext, Command, FROM_HEADER, Hierarchy, MESSAGE_ID_HEADER, MethodResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const FLOORS: usize = 3;
pub const ROOMS: usize = 10;
pub const SENSORS: usize = 10;
/// The room whose sensors read hot: floor 2, room 3.
pub const HOT: (usize, usize) = (2, 3);
pub const THRESHOLD: f64 = 30.0;
/// Readings in a sensor's window.
pub const WINDOW: usize = 4;
pub const HEARTBEAT: Duration = Duration::from_millis(300);
pub const ALERTS: &str = "alerts";
pub const LEVELS: [&str; 3] = ["building", "floor", "room"];

pub fn sensor_id(floor: usize, room: usize, sensor: usize) -> String {
    format!("t-{floor}-{room}-{sensor}")
}

pub fn room_node(floor: usize, room: usize) -> String {
    format!("building=B1,floor={floor},room=R{floor}{room:02}")
}

pub fn floor_node(floor: usize) -> String {
    format!("building=B1,floor={floor}")
}

pub fn sensors() -> impl Iterator<Item = (usize, usize, usize)> {
    (1..=FLOORS).flat_map(|f| (1..=ROOMS).flat_map(move |r| (1..=SENSORS).map(move |s| (f, r, s))))
}

/// The registry the hierarchy is read from.
pub async fn registry() -> MemoryRegistry {
    let registry = MemoryRegistry::new();
    for (f, r, s) in sensors() {
        let doc = DeviceDocument::with_metadata(
            json!({"building": "B1", "floor": f, "room": format!("R{f}{r:02}"), "kind": "temp"}),
        )
        .unwrap();
        registry
            .create(&DeviceId::new(sensor_id(f, r, s)).unwrap(), doc)
            .await
            .unwrap();
    }
    registry
}

pub async fn hierarchy() -> Arc<Hierarchy> {
    Arc::new(
        Hierarchy::from_registry(&registry().await, &LEVELS)
            .await
            .unwrap(),
    )
}

/// A reading of sensor (f, r, s) in round `round`: hot room 33–35 °C, the others 20–22 °C.
pub fn temperature(f: usize, r: usize, s: usize, round: usize) -> f64 {
    if (f, r) == HOT {
        33.0 + ((s + round) % 3) as f64
    } else {
        20.0 + ((f + r + s + round) % 5) as f64 * 0.5
    }
}

/// `rounds` readings of every sensor, one second apart in device time.
pub fn readings(rounds: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for (f, r, s) in sensors() {
            let t = temperature(f, r, s, round);
            out.push(
                Record::new(
                    sensor_id(f, r, s),
                    json!({"temp": t, "round": round}).to_string(),
                )
                .with_device_time(Timestamp::from_unix_millis(
                    1_700_000_000_000 + 1000 * round as u64,
                )),
            );
        }
    }
    out
}

fn bad(reason: impl ToString) -> iot_stream::Error {
    iot_stream::Error::InvalidInput {
        reason: reason.to_string(),
    }
}

#[derive(Debug)]
pub struct Sensor;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorState {
    pub window: VecDeque<f64>,
    pub count: u64,
    pub sum: f64,
    pub heartbeats: u64,
    pub method_status: Option<i32>,
}

impl Actor for Sensor {
    type State = SensorState;

    fn on_message(
        &self,
        state: &mut SensorState,
        message: &StoredRecord,
        ctx: &mut ActorContext<'_>,
    ) -> Result<()> {
        if let Some(response) = MethodResponse::from_record(&message.record) {
            state.method_status = Some(response?.status);
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Reading {
            temp: f64,
        }
        let reading: Reading = serde_json::from_slice(&message.record.payload).map_err(bad)?;
        state.count += 1;
        state.sum += reading.temp;
        state.window.push_back(reading.temp);
        if state.window.len() > WINDOW {
            state.window.pop_front();
        }
        let avg = state.window.iter().sum::<f64>() / state.window.len() as f64;
        if ctx.reminder_due("heartbeat").is_none() {
            ctx.set_reminder("heartbeat", ctx.now(), Some(HEARTBEAT));
        }
        ctx.tell_parent(json!({"avg": avg}).to_string());
        Ok(())
    }

    fn on_reminder(
        &self,
        state: &mut SensorState,
        _reminder: &str,
        _ctx: &mut ActorContext<'_>,
    ) -> Result<()> {
        state.heartbeats += 1;
        Ok(())
    }
}

/// A room, a floor or the building: the latest summary of each child.
#[derive(Debug)]
pub struct Node;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub avg: f64,
    /// Rooms in alert at or below the child.
    #[serde(default)]
    pub alerting: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub children: BTreeMap<String, Summary>,
    pub alert: bool,
}

impl NodeState {
    pub fn summary(&self) -> Summary {
        let n = self.children.len().max(1) as f64;
        Summary {
            avg: self.children.values().map(|c| c.avg).sum::<f64>() / n,
            alerting: self.children.values().map(|c| c.alerting).sum::<u32>()
                + u32::from(self.alert),
        }
    }
}

impl Actor for Node {
    type State = NodeState;

    fn on_message(
        &self,
        state: &mut NodeState,
        message: &StoredRecord,
        ctx: &mut ActorContext<'_>,
    ) -> Result<()> {
        let from = message
            .record
            .headers
            .get(FROM_HEADER)
            .ok_or_else(|| bad("a summary without a sender"))?
            .to_owned();
        let summary: Summary = serde_json::from_slice(&message.record.payload).map_err(bad)?;
        state.children.insert(from.clone(), summary);
        if ctx.id().contains(",room=") {
            let mean = state.summary().avg;
            let hot = mean > THRESHOLD;
            if hot && !state.alert {
                let id = ctx.next_output_id();
                let alert =
                    Record::new(ctx.id(), json!({"room": ctx.id(), "avg": mean}).to_string())
                        .with_header(MESSAGE_ID_HEADER, id);
                ctx.emit(ALERTS, alert);
                ctx.send_command(
                    &from,
                    Command::DirectMethod {
                        method: "ventilate".into(),
                        payload: json!({"minutes": 10}),
                        timeout_ms: 30_000,
                    },
                )?;
            }
            state.alert = hot;
        }
        let up = state.summary();
        ctx.tell_parent(serde_json::to_string(&up).map_err(bad)?);
        Ok(())
    }
}
