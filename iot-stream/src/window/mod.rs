//! Windowed aggregates with the semantics of Azure Stream Analytics.
//!
//! * **Windows** are `(start, end]`: an event at exactly `end` belongs to the window, one at
//!   `start` does not. Tumbling and hopping windows are aligned to time zero (the Unix epoch):
//!   their ends are multiples of the size (tumbling) or the hop (hopping).
//! * **Output** of a window is stamped with its end (`System.Timestamp()` in the rule language).
//! * **Sliding** windows produce output only when the content changes: at each event's time
//!   (window `(t - size, t]`) and when an event leaves (at `t + size`), if the window is then
//!   non-empty; equal times give one output.
//! * **Session** windows start at a key's first event; a later event joins while it is at or
//!   before `min(last event + timeout, next max-duration boundary)`, where the boundaries are the
//!   multiples of the max duration (the first strictly after the session's first event); the
//!   session's output is stamped with that same `min(...)`.
//! * **Event time and watermark** are per engine (one engine per partition): see
//!   [`OrderingPolicy`] for late arrival, out-of-order tolerance and the adjust/drop action.

mod aggregate;
mod engine;
mod keys;
mod ordering;
mod spec;

pub use aggregate::{Accumulator, AggKind, Input};
pub use engine::{WindowEngine, WindowResult};
pub use ordering::{LateAction, OrderingPolicy, Sequencer};
pub use spec::WindowSpec;

/// Microseconds since the epoch as a signed number (window starts may precede the epoch).
pub type Micros = i64;

/// A timestamp as signed microseconds.
pub fn micros(t: iot_core::Timestamp) -> Micros {
    i64::try_from(t.as_unix_micros()).unwrap_or(i64::MAX)
}

/// Signed microseconds back to a timestamp (clamped at the epoch).
pub fn timestamp(m: Micros) -> iot_core::Timestamp {
    iot_core::Timestamp::from_unix_micros(u64::try_from(m).unwrap_or(0))
}

/// A duration as signed microseconds (saturating).
pub fn duration_micros(d: std::time::Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
