//! Threshold alerts over a window aggregate.

use async_trait::async_trait;
use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use serde_json::json;

use super::{event_time, field_f64};
use crate::error::Result;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};
use crate::window::{self, AggKind, Input, OrderingPolicy, WindowEngine, WindowResult, WindowSpec};

/// Which side of the threshold raises the alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// The aggregate is greater than the threshold.
    Above,
    /// The aggregate is less than the threshold.
    Below,
}

/// Aggregates a numeric payload field per device over a window (average by default) and emits
/// an alert record to `alerts` for every window whose aggregate crosses the threshold.
///
/// The alert's key is the device id, its header `subject` is `alert`, and its payload
/// `{"deviceId", "kind": "threshold", "field", "aggregate", "value", "threshold", "windowStart",
/// "windowEnd"}` with window times in microseconds since the epoch. Event time is the record's
/// device time (or enqueued time); see [`OrderingPolicy`] for late events.
#[derive(Clone, Debug)]
pub struct ThresholdAlert {
    field: String,
    window: WindowSpec,
    aggregate: AggKind,
    threshold: f64,
    crossing: Crossing,
    policy: OrderingPolicy,
    topic: String,
}

/// A [`ThresholdAlert`] with its partition's window engine.
#[derive(Debug)]
struct ThresholdAlertProcessor {
    config: ThresholdAlert,
    engine: WindowEngine,
}

impl ThresholdAlert {
    /// Alerts when the average of `field` over `window` goes above `threshold`.
    pub fn new(field: impl Into<String>, window: WindowSpec, threshold: f64) -> Result<Self> {
        window.validate()?;
        Ok(ThresholdAlert {
            field: field.into(),
            window,
            aggregate: AggKind::Avg,
            threshold,
            crossing: Crossing::Above,
            policy: OrderingPolicy::default(),
            topic: "alerts".into(),
        })
    }

    /// Uses another aggregate (count, sum, min, max, last).
    pub fn aggregate(mut self, aggregate: AggKind) -> Self {
        self.aggregate = aggregate;
        self
    }

    /// Alerts below the threshold instead.
    pub fn crossing(mut self, crossing: Crossing) -> Self {
        self.crossing = crossing;
        self
    }

    /// Sets the event-ordering policy.
    pub fn ordering(mut self, policy: OrderingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Emits alerts to `topic` instead of `alerts`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    fn alert(&self, r: &WindowResult) -> Option<Record> {
        let value = r.values.first()?.as_f64()?;
        let crossed = match self.crossing {
            Crossing::Above => value > self.threshold,
            Crossing::Below => value < self.threshold,
        };
        crossed.then(|| {
            let payload = json!({
                "deviceId": r.key,
                "kind": "threshold",
                "field": self.field,
                "aggregate": format!("{:?}", self.aggregate).to_lowercase(),
                "value": value,
                "threshold": self.threshold,
                "windowStart": r.start,
                "windowEnd": r.end,
            });
            Record::new(r.key.clone(), payload.to_string())
                .with_header(iot_core::headers::SUBJECT, "alert")
                .with_device_time(window::timestamp(r.end))
        })
    }

    fn emit(&self, out: Vec<WindowResult>, ctx: &mut Context) {
        for r in &out {
            if let Some(record) = self.alert(r) {
                ctx.emit(&self.topic, record);
            }
        }
    }
}

#[async_trait]
impl StreamProcessor for ThresholdAlertProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        let mut out = Vec::new();
        for record in batch {
            let Some(x) = field_f64(&record.record.payload, &self.config.field) else {
                continue;
            };
            self.engine.push_at(
                record.offset.0,
                &record.record.key,
                window::micros(event_time(record)),
                window::micros(record.enqueued_time),
                &[Input::Number(x)],
                &mut out,
            );
        }
        self.config.emit(out, ctx);
        Ok(())
    }

    fn retained_offset(&self) -> Option<Offset> {
        self.engine.retained_offset().map(Offset)
    }

    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        let mut out = Vec::new();
        self.engine.tick(window::micros(now), &mut out);
        self.config.emit(out, ctx);
        Ok(())
    }
}

impl ProcessorFactory for ThresholdAlert {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(ThresholdAlertProcessor {
            config: self.clone(),
            engine: WindowEngine::new(self.window, vec![self.aggregate], self.policy)?,
        }))
    }
}
