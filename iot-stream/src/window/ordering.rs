//! Event-time ordering: late arrival and out-of-order tolerance, and the watermark.

use std::time::Duration;

use super::{Micros, duration_micros};

/// What happens to an event outside the tolerances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LateAction {
    /// Its event time is moved to the edge of the tolerance (the default, as in ASA).
    #[default]
    Adjust,
    /// It is dropped.
    Drop,
}

/// Event-ordering policy, as Azure Stream Analytics defines it.
///
/// For an event with event time `t` arriving at `a` (its enqueued time):
///
/// 1. **Late arrival**: if `t < a - late_arrival`, the event is late: adjusted to
///    `a - late_arrival`, or dropped.
/// 2. **Out of order**: if `t` is before the largest event time admitted so far (`max`) and
///    `t < a - out_of_order`, it is adjusted to `min(a - out_of_order, max)`, or dropped.
///
/// This reproduces the worked example of the ASA documentation ("Understand time handling in
/// Azure Stream Analytics"): late 15 s, out-of-order 8 s; (event, arrival) 10:00/10:40 → 10:25,
/// 10:30/10:41 → 10:30, 10:42/10:42 → 10:42, 10:38/10:43 → 10:38, 10:35/10:45 → 10:37.
///
/// Every admitted event then has a time at or after the **watermark**
/// `max(a - late_arrival, min(max, a - out_of_order))` (with `a` the latest arrival), so events
/// are held in a buffer and released in event-time order once the watermark reaches them, and a
/// window is final once its end is before the watermark. When input is idle, the host's clock
/// stands in for the arrival time (only the late-arrival term can then move the watermark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderingPolicy {
    /// Late-arrival tolerance; `None` accepts any lateness (replaying history). Default 5 s.
    pub late_arrival: Option<Duration>,
    /// Out-of-order tolerance. Default 0.
    pub out_of_order: Duration,
    /// Adjust or drop. Default adjust.
    pub action: LateAction,
}

impl Default for OrderingPolicy {
    /// The ASA defaults: late arrival 5 s, out of order 0 s, adjust.
    fn default() -> Self {
        OrderingPolicy {
            late_arrival: Some(Duration::from_secs(5)),
            out_of_order: Duration::ZERO,
            action: LateAction::Adjust,
        }
    }
}

impl OrderingPolicy {
    /// No late-arrival bound, no out-of-order tolerance: for replaying stored events whose
    /// arrival times say nothing about their event times.
    pub fn replay() -> Self {
        OrderingPolicy {
            late_arrival: None,
            out_of_order: Duration::ZERO,
            action: LateAction::Adjust,
        }
    }
}

/// Applies an [`OrderingPolicy`] to a stream of events and tracks the watermark.
#[derive(Clone, Debug)]
pub struct Sequencer {
    policy: OrderingPolicy,
    late: Option<Micros>,
    out_of_order: Micros,
    max_seen: Micros,
    arrival: Micros,
    /// The latest arrival of an event (`arrival` also follows the host clock).
    record_arrival: Micros,
    /// Nothing at or before this may be admitted any more (windows up to it were emitted).
    floor: Micros,
}

impl Sequencer {
    /// A sequencer with `policy`.
    pub fn new(policy: OrderingPolicy) -> Self {
        Sequencer {
            policy,
            late: policy.late_arrival.map(duration_micros),
            out_of_order: duration_micros(policy.out_of_order),
            max_seen: Micros::MIN,
            arrival: Micros::MIN,
            record_arrival: Micros::MIN,
            floor: Micros::MIN,
        }
    }

    /// The event time to use for an event at `t` arriving at `arrival`, or `None` to drop it.
    pub fn admit(&mut self, t: Micros, arrival: Micros) -> Option<Micros> {
        self.arrival = self.arrival.max(arrival);
        self.record_arrival = self.record_arrival.max(arrival);
        let mut t = t;
        if let Some(late) = self.late {
            let bound = arrival.saturating_sub(late);
            if t < bound {
                match self.policy.action {
                    LateAction::Adjust => t = bound,
                    LateAction::Drop => return None,
                }
            }
        }
        let bound = arrival.saturating_sub(self.out_of_order);
        if t < self.max_seen && t < bound {
            match self.policy.action {
                LateAction::Adjust => t = bound.min(self.max_seen),
                LateAction::Drop => return None,
            }
        }
        if t < self.floor {
            // Only possible when arrivals go backwards (they do not within a log partition):
            // never let an event into a window already emitted.
            match self.policy.action {
                LateAction::Adjust => t = self.floor,
                LateAction::Drop => return None,
            }
        }
        self.max_seen = self.max_seen.max(t);
        Some(t)
    }

    /// Lets the arrival clock move to `now` without an event.
    pub fn advance_arrival(&mut self, now: Micros) {
        self.arrival = self.arrival.max(now);
    }

    /// The watermark: every event admitted from now on has a time at or after it.
    pub fn watermark(&self) -> Micros {
        self.watermark_at(self.arrival).max(self.floor)
    }

    /// The watermark the events alone set (as if the host clock had never advanced it): what
    /// replaying the same events rebuilds.
    pub fn record_watermark(&self) -> Micros {
        self.watermark_at(self.record_arrival)
    }

    fn watermark_at(&self, arrival: Micros) -> Micros {
        if arrival == Micros::MIN {
            return Micros::MIN;
        }
        let late = self.late.map_or(Micros::MIN, |l| arrival.saturating_sub(l));
        let ooo = self.max_seen.min(arrival.saturating_sub(self.out_of_order));
        late.max(ooo)
    }

    /// Records that everything up to `w` was released.
    pub(crate) fn set_floor(&mut self, w: Micros) {
        self.floor = self.floor.max(w);
    }
}
