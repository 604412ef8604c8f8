//! Aggregate functions, their inputs and their accumulators.

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

/// One event's input to one aggregate. Numeric aggregates only need a number, so the rule
/// compiler hands them [`Input::Number`] and the hot path builds no JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// No value (not counted).
    Null,
    /// A number.
    Number(f64),
    /// Any JSON value (what `LAST` keeps, and what numeric aggregates read as a number if it is
    /// one).
    Value(Value),
}

impl From<Value> for Input {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Input::Null,
            v => Input::Value(v),
        }
    }
}

impl Input {
    fn is_null(&self) -> bool {
        matches!(self, Input::Null)
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Input::Number(x) => Some(*x),
            Input::Value(v) => v.as_f64(),
            Input::Null => None,
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Input::Null => Value::Null,
            Input::Number(x) => number(*x),
            Input::Value(v) => v.clone(),
        }
    }
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The running state of one aggregate. One struct for every kind, kept small (40 bytes): a
/// window holds one per key and aggregate of its query, and `LAST`'s value is boxed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accumulator {
    /// Inputs counted: non-null ones for `COUNT`, numeric ones for the numeric kinds.
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: Option<Box<(i64, u64, Value)>>,
}

impl Accumulator {
    /// Adds the input of an event at `time` (`seq` orders equal times).
    pub fn add(&mut self, kind: AggKind, input: &Value, time: i64, seq: u64) {
        match kind {
            AggKind::Count => self.count += u64::from(!input.is_null()),
            AggKind::Last => self.set_last(time, seq, || input.clone()),
            _ => {
                if let Some(x) = input.as_f64() {
                    self.add_number(x);
                }
            }
        }
    }

    /// [`add`](Self::add) for an [`Input`].
    pub fn add_input(&mut self, kind: AggKind, input: &Input, time: i64, seq: u64) {
        match kind {
            AggKind::Count => self.count += u64::from(!input.is_null()),
            AggKind::Last => self.set_last(time, seq, || input.to_value()),
            _ => {
                if let Some(x) = input.as_f64() {
                    self.add_number(x);
                }
            }
        }
    }

    fn add_number(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        self.sum += x;
    }

    fn set_last(&mut self, time: i64, seq: u64, value: impl FnOnce() -> Value) {
        match &mut self.last {
            Some(last) if (time, seq) < (last.0, last.1) => {}
            // Reuse the box: in-order input replaces the last value at every event.
            Some(last) => **last = (time, seq, value()),
            None => self.last = Some(Box::new((time, seq, value()))),
        }
    }

    /// The aggregate's value.
    pub fn finish(&self, kind: AggKind) -> Value {
        match kind {
            AggKind::Count => Value::from(self.count),
            AggKind::Last => self.last.as_ref().map_or(Value::Null, |l| l.2.clone()),
            _ if self.count == 0 => Value::Null,
            AggKind::Sum => number(self.sum),
            AggKind::Avg => number(self.sum / self.count as f64),
            AggKind::Min => number(self.min),
            AggKind::Max => number(self.max),
        }
    }
}
