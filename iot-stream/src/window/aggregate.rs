//! Aggregate functions and their accumulators.

use serde_json::Value;

/// An aggregate over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    /// Number of non-null inputs (feed `true` for `COUNT(*)`).
    Count,
    /// Sum of numeric inputs (`null` if none).
    Sum,
    /// Mean of numeric inputs (`null` if none).
    Avg,
    /// Smallest numeric input.
    Min,
    /// Largest numeric input.
    Max,
    /// The input of the latest event (by event time, then arrival order).
    Last,
}

/// The running state of one aggregate. One struct for every kind: it is small, and a window
/// keeps one per aggregate of its query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accumulator {
    count: u64,
    numeric: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: Option<(i64, u64, Value)>,
}

impl Accumulator {
    /// Adds the input of an event at `time` (`seq` orders equal times).
    pub fn add(&mut self, kind: AggKind, input: &Value, time: i64, seq: u64) {
        match kind {
            AggKind::Count => {
                if !input.is_null() {
                    self.count += 1;
                }
            }
            AggKind::Last => {
                if self
                    .last
                    .as_ref()
                    .is_none_or(|(t, s, _)| (time, seq) >= (*t, *s))
                {
                    self.last = Some((time, seq, input.clone()));
                }
            }
            _ => {
                if let Some(x) = input.as_f64() {
                    if self.numeric == 0 {
                        self.min = x;
                        self.max = x;
                    } else {
                        self.min = self.min.min(x);
                        self.max = self.max.max(x);
                    }
                    self.numeric += 1;
                    self.sum += x;
                }
            }
        }
    }

    /// The aggregate's value.
    pub fn finish(&self, kind: AggKind) -> Value {
        let number = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match kind {
            AggKind::Count => Value::from(self.count),
            AggKind::Last => self.last.as_ref().map_or(Value::Null, |l| l.2.clone()),
            _ if self.numeric == 0 => Value::Null,
            AggKind::Sum => number(self.sum),
            AggKind::Avg => number(self.sum / self.numeric as f64),
            AggKind::Min => number(self.min),
            AggKind::Max => number(self.max),
        }
    }
}
