//! Spike-and-dip anomaly detection per device.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use iot_core::{Offset, PartitionId, Record, StoredRecord};
use serde_json::json;

use super::{event_time, field_f64};
use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// Which anomalies to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnomalyMode {
    /// Values far above the recent history.
    Spikes,
    /// Values far below it.
    Dips,
    /// Both.
    SpikesAndDips,
}

/// The verdict on one value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// `1 - p`, where `p` is the two-sided tail probability of the value under the history.
    pub score: f64,
    /// Whether the value is an anomaly of the configured kind at the configured confidence.
    pub is_anomaly: bool,
    /// `true` above the history's median, `false` below.
    pub spike: bool,
}

/// The per-device detector: a robust z-score against a sliding history.
///
/// # Algorithm
///
/// For each device, the last `history_size` values form the history. A new value `x` is scored
/// against it before it joins it:
///
/// 1. `m` = median of the history, `MAD` = median of `|v - m|` (median absolute deviation), both
///    robust to the very spikes being looked for.
/// 2. The robust z-score `z = 0.6745 (x - m) / MAD` (0.6745 makes `MAD` estimate the standard
///    deviation of normal data); if `MAD` is 0 (a flat history), `z` is 0 when `x = m` and
///    infinite otherwise.
/// 3. The two-sided tail probability `p = erfc(|z| / √2)` under a normal model; the score is
///    `1 - p`.
/// 4. `x` is a spike if `x > m`, a dip if `x < m`, and an anomaly if its kind is wanted and
///    `score >= confidence / 100`.
///
/// No verdict is given until the history is full. A confidence of 95 therefore flags about 5% of
/// values of a normally distributed signal; 99 or more suits alerting.
#[derive(Clone, Debug)]
pub struct SpikeAndDip {
    confidence: f64,
    history_size: usize,
    mode: AnomalyMode,
    history: VecDeque<f64>,
}

impl SpikeAndDip {
    /// A detector with `confidence` in (0, 100) percent over the last `history_size` (at least 3)
    /// values.
    pub fn new(confidence: f64, history_size: usize, mode: AnomalyMode) -> Result<Self> {
        if !(confidence > 0.0 && confidence < 100.0) {
            return Err(Error::invalid(
                "confidence must be between 0 and 100 (exclusive)",
            ));
        }
        if history_size < 3 {
            return Err(Error::invalid("history size must be at least 3"));
        }
        Ok(SpikeAndDip {
            confidence,
            history_size,
            mode,
            history: VecDeque::with_capacity(history_size),
        })
    }

    /// Scores `x` (when the history is full), then adds it to the history.
    pub fn observe(&mut self, x: f64) -> Option<Score> {
        let verdict = (self.history.len() >= self.history_size).then(|| self.score(x));
        if self.history.len() >= self.history_size {
            self.history.pop_front();
        }
        self.history.push_back(x);
        verdict
    }

    fn score(&self, x: f64) -> Score {
        let mut sorted: Vec<f64> = self.history.iter().copied().collect();
        let m = median(&mut sorted);
        let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - m).abs()).collect();
        let mad = median(&mut deviations);
        let z = if mad > 0.0 {
            0.6745 * (x - m) / mad
        } else if x == m {
            0.0
        } else {
            f64::INFINITY
        };
        let score = 1.0 - erfc(z.abs() / std::f64::consts::SQRT_2);
        let spike = x > m;
        let wanted = match self.mode {
            AnomalyMode::Spikes => x > m,
            AnomalyMode::Dips => x < m,
            AnomalyMode::SpikesAndDips => x != m,
        };
        Score {
            score,
            is_anomaly: wanted && score >= self.confidence / 100.0,
            spike,
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The complementary error function (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7).
fn erfc(x: f64) -> f64 {
    if x.is_infinite() {
        return if x > 0.0 { 0.0 } else { 2.0 };
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let e = poly * (-x * x).exp();
    if x >= 0.0 { e } else { 2.0 - e }
}

/// Runs a [`SpikeAndDip`] detector per device over a numeric payload field and emits an alert to
/// `alerts` for each anomaly: key = device id, header `subject: alert`, payload
/// `{"deviceId", "kind": "spike"|"dip", "field", "value", "score", "time"}` (time in µs since the
/// epoch). Histories are per partition worker; the processor reports the offset of the oldest
/// value in any history as its [retained offset](StreamProcessor::retained_offset), so after a
/// restart the host replays the records from there and the histories are rebuilt exactly (a
/// device that falls silent holds the checkpoint at its history until it sends again).
#[derive(Clone, Debug)]
pub struct AnomalyDetector {
    field: String,
    template: SpikeAndDip,
    topic: String,
}

impl AnomalyDetector {
    /// A detector of `field` with the given settings.
    pub fn new(field: impl Into<String>, template: SpikeAndDip) -> Self {
        AnomalyDetector {
            field: field.into(),
            template,
            topic: "alerts".into(),
        }
    }

    /// Emits to `topic` instead of `alerts`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }
}

#[derive(Debug)]
struct AnomalyProcessor {
    config: AnomalyDetector,
    /// Per device: the detector and the log offsets of the values in its history, oldest first.
    devices: HashMap<String, (SpikeAndDip, VecDeque<u64>)>,
}

#[async_trait]
impl StreamProcessor for AnomalyProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        for record in batch {
            let Some(x) = field_f64(&record.record.payload, &self.config.field) else {
                continue;
            };
            let (detector, offsets) = self
                .devices
                .entry(record.record.key.clone())
                .or_insert_with(|| (self.config.template.clone(), VecDeque::new()));
            let verdict = detector.observe(x);
            offsets.push_back(record.offset.0);
            if offsets.len() > detector.history_size {
                offsets.pop_front();
            }
            let Some(score) = verdict else {
                continue;
            };
            if score.is_anomaly {
                let payload = json!({
                    "deviceId": record.record.key,
                    "kind": if score.spike { "spike" } else { "dip" },
                    "field": self.config.field,
                    "value": x,
                    "score": score.score,
                    "time": event_time(record).as_unix_micros(),
                });
                ctx.emit(
                    &self.config.topic,
                    Record::new(record.record.key.clone(), payload.to_string())
                        .with_header(iot_core::headers::SUBJECT, "alert"),
                );
            }
        }
        Ok(())
    }

    fn retained_offset(&self) -> Option<Offset> {
        self.devices
            .values()
            .filter_map(|(_, offsets)| offsets.front().copied())
            .min()
            .map(Offset)
    }
}

impl ProcessorFactory for AnomalyDetector {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(AnomalyProcessor {
            config: self.clone(),
            devices: HashMap::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (1.0, 0.157_299_2),
            (2.0, 0.004_677_7),
            (-1.0, 1.842_700_8),
        ] {
            assert!((erfc(x) - want).abs() < 1e-6, "erfc({x})");
        }
    }

    #[test]
    fn flags_spikes_and_dips_not_noise() {
        let mut d = SpikeAndDip::new(99.0, 20, AnomalyMode::SpikesAndDips).expect("valid");
        // A repeating gentle pattern: nothing in it is anomalous.
        for i in 0..200 {
            let x = 20.0 + f64::from(i % 5) * 0.1;
            if let Some(s) = d.observe(x) {
                assert!(!s.is_anomaly, "value {x} at {i} flagged with {s:?}");
            }
        }
        let spike = d.observe(35.0).expect("history full");
        assert!(spike.is_anomaly && spike.spike);
        let dip = d.observe(5.0).expect("history full");
        assert!(dip.is_anomaly && !dip.spike);
        let mut spikes_only = SpikeAndDip::new(99.0, 5, AnomalyMode::Spikes).expect("valid");
        for x in [1.0, 2.0, 1.0, 2.0, 1.0] {
            assert!(
                spikes_only.observe(x).is_none(),
                "no verdict before the history is full"
            );
        }
        assert!(
            !spikes_only.observe(-100.0).is_some_and(|s| s.is_anomaly),
            "dips not wanted"
        );
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(SpikeAndDip::new(0.0, 10, AnomalyMode::Spikes).is_err());
        assert!(SpikeAndDip::new(100.0, 10, AnomalyMode::Spikes).is_err());
        assert!(SpikeAndDip::new(95.0, 2, AnomalyMode::Spikes).is_err());
    }
}
