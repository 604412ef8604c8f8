//! The window engine: ordering buffer plus per-kind window state.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use super::Micros;
use super::aggregate::{Accumulator, AggKind};
use super::ordering::{OrderingPolicy, Sequencer};
use super::spec::{WindowSpec, ceil_to, next_multiple};
use crate::error::Result;

/// One window's output for one key.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The grouping key.
    pub key: String,
    /// Window start (exclusive; for sessions, the first event's time), µs since the epoch.
    pub start: Micros,
    /// Window end (inclusive), µs since the epoch: the output's timestamp.
    pub end: Micros,
    /// One value per aggregate, in the engine's order.
    pub values: Vec<Value>,
}

/// An event waiting in the ordering buffer.
#[derive(Debug)]
struct Pending {
    key: String,
    inputs: Vec<Value>,
    /// Its log offset, or [`UNTRACKED`].
    offset: u64,
}

/// The offset of an event pushed without one: it never holds the checkpoint back.
const UNTRACKED: u64 = u64::MAX;

/// The events of one tumbling or hopping window, by key, with the lowest log offset among them
/// (what a restart must replay from to rebuild the window).
#[derive(Debug)]
struct FixedWindow {
    keys: HashMap<String, Vec<Accumulator>>,
    min_offset: u64,
}

/// Aggregates keyed events over windows of one [`WindowSpec`], in event time, with an
/// [`OrderingPolicy`]. Feed it with [`push`](Self::push); it appends the windows that became
/// final to `out` (in the order they became final; by end, then key, within one advance). One
/// engine serves one partition (its watermark is
/// that partition's).
///
/// ```
/// use std::time::Duration;
/// use iot_stream::window::{AggKind, OrderingPolicy, WindowEngine, WindowSpec};
/// use serde_json::json;
///
/// let s = |x: i64| x * 1_000_000;
/// let spec = WindowSpec::Tumbling { size: Duration::from_secs(10) };
/// let mut engine = WindowEngine::new(spec, vec![AggKind::Avg], OrderingPolicy::replay())?;
/// let mut out = Vec::new();
/// for (t, v) in [(1, 10.0), (10, 20.0), (11, 40.0)] {
///     engine.push("dev-1", s(t), s(t), vec![json!(v)], &mut out);
/// }
/// engine.flush(&mut out);
/// assert_eq!((out[0].end, &out[0].values[0]), (s(10), &json!(15.0)));
/// assert_eq!((out[1].end, &out[1].values[0]), (s(20), &json!(40.0)));
/// # Ok::<(), iot_stream::Error>(())
/// ```
#[derive(Debug)]
pub struct WindowEngine {
    spec: WindowSpec,
    aggs: Vec<AggKind>,
    sequencer: Sequencer,
    buffer: BTreeMap<(Micros, u64), Pending>,
    seq: u64,
    state: State,
}

/// An event a sliding window holds: (time, sequence, log offset, inputs).
type Held = (Micros, u64, u64, Vec<Value>);

#[derive(Debug)]
enum State {
    /// Tumbling and hopping: accumulators by window end, then key.
    Fixed {
        size: Micros,
        hop: Micros,
        windows: BTreeMap<Micros, FixedWindow>,
    },
    Sliding {
        size: Micros,
        events: HashMap<String, VecDeque<Held>>,
        points: BTreeSet<(Micros, String)>,
    },
    Session {
        timeout: Micros,
        max: Micros,
        open: HashMap<String, Session>,
        closing: BTreeSet<(Micros, String)>,
    },
}

#[derive(Debug)]
struct Session {
    first: Micros,
    last: Micros,
    boundary: Micros,
    accs: Vec<Accumulator>,
    /// The lowest log offset of the session's events.
    min_offset: u64,
}

impl Session {
    fn end(&self, timeout: Micros) -> Micros {
        self.last.saturating_add(timeout).min(self.boundary)
    }
}

impl WindowEngine {
    /// An engine computing `aggs` over `spec` windows.
    pub fn new(spec: WindowSpec, aggs: Vec<AggKind>, policy: OrderingPolicy) -> Result<Self> {
        spec.validate()?;
        let state = match spec {
            WindowSpec::Tumbling { size } => State::Fixed {
                size: WindowSpec::micros(size),
                hop: WindowSpec::micros(size),
                windows: BTreeMap::new(),
            },
            WindowSpec::Hopping { size, hop } => State::Fixed {
                size: WindowSpec::micros(size),
                hop: WindowSpec::micros(hop),
                windows: BTreeMap::new(),
            },
            WindowSpec::Sliding { size } => State::Sliding {
                size: WindowSpec::micros(size),
                events: HashMap::new(),
                points: BTreeSet::new(),
            },
            WindowSpec::Session {
                timeout,
                max_duration,
            } => State::Session {
                timeout: WindowSpec::micros(timeout),
                max: WindowSpec::micros(max_duration),
                open: HashMap::new(),
                closing: BTreeSet::new(),
            },
        };
        Ok(WindowEngine {
            spec,
            aggs,
            sequencer: Sequencer::new(policy),
            buffer: BTreeMap::new(),
            seq: 0,
            state,
        })
    }

    /// The window kind.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// The current watermark.
    pub fn watermark(&self) -> Micros {
        self.sequencer.watermark()
    }

    /// Adds an event of `key` at event time `time` that arrived at `arrival`, with one input per
    /// aggregate. Returns the event time used (after the ordering policy), or `None` if the policy
    /// dropped it. Windows that became final are appended to `out`.
    pub fn push(
        &mut self,
        key: impl Into<String>,
        time: Micros,
        arrival: Micros,
        inputs: Vec<Value>,
        out: &mut Vec<WindowResult>,
    ) -> Option<Micros> {
        self.push_at(UNTRACKED, key, time, arrival, inputs, out)
    }

    /// [`push`](Self::push) for an event read from the log at `offset`: the engine then counts
    /// it in [`retained_offset`](Self::retained_offset) for as long as it holds it.
    pub fn push_at(
        &mut self,
        offset: u64,
        key: impl Into<String>,
        time: Micros,
        arrival: Micros,
        inputs: Vec<Value>,
        out: &mut Vec<WindowResult>,
    ) -> Option<Micros> {
        let t = self.sequencer.admit(time, arrival)?;
        self.seq += 1;
        let pending = Pending {
            key: key.into(),
            inputs,
            offset,
        };
        let w = self.sequencer.watermark();
        if self.buffer.is_empty() && t <= w {
            // In order and already released by the watermark: skip the buffer.
            self.apply(t, self.seq, pending, w, out);
            self.sequencer.set_floor(w);
            self.emit(w, out);
        } else {
            self.buffer.insert((t, self.seq), pending);
            self.advance(w, out);
        }
        Some(t)
    }

    /// The lowest log offset among the events the engine still holds (in the ordering buffer or
    /// an open window), or `None` if it holds none pushed with [`push_at`](Self::push_at).
    /// Replaying the log from there into a new engine rebuilds every open window.
    ///
    /// Costs a scan of the open windows (tumbling, hopping), sessions or held events (sliding)
    /// and of the ordering buffer.
    pub fn retained_offset(&self) -> Option<u64> {
        let buffered = self.buffer.values().map(|p| p.offset).min();
        let held = match &self.state {
            State::Fixed { windows, .. } => windows.values().map(|w| w.min_offset).min(),
            State::Sliding { events, .. } => {
                events.values().flat_map(|q| q.iter().map(|e| e.2)).min()
            }
            State::Session { open, .. } => open.values().map(|s| s.min_offset).min(),
        };
        buffered
            .into_iter()
            .chain(held)
            .min()
            .filter(|o| *o != UNTRACKED)
    }

    /// Lets the arrival clock reach `now` (no event): the late-arrival tolerance may then close
    /// windows.
    pub fn tick(&mut self, now: Micros, out: &mut Vec<WindowResult>) {
        self.sequencer.advance_arrival(now);
        self.advance(self.sequencer.watermark(), out);
    }

    /// Closes every window (end of input).
    pub fn flush(&mut self, out: &mut Vec<WindowResult>) {
        self.advance(Micros::MAX, out);
    }

    /// Releases buffered events up to `w` in time order, then emits windows ending before `w`.
    fn advance(&mut self, w: Micros, out: &mut Vec<WindowResult>) {
        while let Some(entry) = self.buffer.first_entry() {
            if entry.key().0 > w {
                break;
            }
            let ((t, seq), pending) = entry.remove_entry();
            self.apply(t, seq, pending, w, out);
        }
        self.sequencer.set_floor(w);
        self.emit(w, out);
    }

    /// Adds a released event (released in non-decreasing time order) to the window state.
    fn apply(&mut self, t: Micros, seq: u64, p: Pending, w: Micros, out: &mut Vec<WindowResult>) {
        let aggs = &self.aggs;
        match &mut self.state {
            State::Fixed { size, hop, windows } => {
                let mut end = ceil_to(t, *hop);
                while end.saturating_sub(*size) < t {
                    let window = windows.entry(end).or_insert_with(|| FixedWindow {
                        keys: HashMap::new(),
                        min_offset: UNTRACKED,
                    });
                    window.min_offset = window.min_offset.min(p.offset);
                    let keys = &mut window.keys;
                    // Look up before inserting: most events find their key's window open, and
                    // the key is then not copied.
                    let accs = match keys.get_mut(p.key.as_str()) {
                        Some(accs) => accs,
                        None => keys
                            .entry(p.key.clone())
                            .or_insert_with(|| vec![Accumulator::default(); aggs.len()]),
                    };
                    for ((acc, kind), input) in accs.iter_mut().zip(aggs).zip(&p.inputs) {
                        acc.add(*kind, input, t, seq);
                    }
                    match end.checked_add(*hop) {
                        Some(e) => end = e,
                        None => break,
                    }
                }
            }
            State::Sliding {
                size,
                events,
                points,
            } => {
                points.insert((t, p.key.clone()));
                points.insert((t.saturating_add(*size), p.key.clone()));
                events
                    .entry(p.key)
                    .or_default()
                    .push_back((t, seq, p.offset, p.inputs));
            }
            State::Session {
                timeout,
                max,
                open,
                closing,
            } => {
                if let Some(s) = open.get_mut(&p.key) {
                    let end = s.end(*timeout);
                    if t <= end {
                        closing.remove(&(end, p.key.clone()));
                        s.last = s.last.max(t);
                        s.min_offset = s.min_offset.min(p.offset);
                        for ((acc, kind), input) in s.accs.iter_mut().zip(aggs).zip(&p.inputs) {
                            acc.add(*kind, input, t, seq);
                        }
                        closing.insert((s.end(*timeout), p.key));
                        return;
                    }
                    // The event is after the session's end, so the session is final.
                    closing.remove(&(end, p.key.clone()));
                    if let Some(s) = open.remove(&p.key) {
                        out.push(finish_session(&p.key, &s, *timeout, aggs));
                    }
                }
                let mut accs = vec![Accumulator::default(); aggs.len()];
                for ((acc, kind), input) in accs.iter_mut().zip(aggs).zip(&p.inputs) {
                    acc.add(*kind, input, t, seq);
                }
                let s = Session {
                    first: t,
                    last: t,
                    boundary: next_multiple(t, *max),
                    accs,
                    min_offset: p.offset,
                };
                closing.insert((s.end(*timeout), p.key.clone()));
                open.insert(p.key, s);
            }
        }
        let _ = w;
    }

    fn emit(&mut self, w: Micros, out: &mut Vec<WindowResult>) {
        let aggs = &self.aggs;
        match &mut self.state {
            State::Fixed { size, windows, .. } => {
                while let Some(entry) = windows.first_entry() {
                    if !is_final(*entry.key(), w) {
                        break;
                    }
                    let (end, window) = entry.remove_entry();
                    let mut keys: Vec<_> = window.keys.into_iter().collect();
                    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    out.extend(keys.into_iter().map(|(key, accs)| WindowResult {
                        key,
                        start: end.saturating_sub(*size),
                        end,
                        values: accs.iter().zip(aggs).map(|(a, k)| a.finish(*k)).collect(),
                    }));
                }
            }
            State::Sliding {
                size,
                events,
                points,
            } => {
                while let Some(first) = points.first() {
                    if !is_final(first.0, w) {
                        break;
                    }
                    let Some((p, key)) = points.pop_first() else {
                        break;
                    };
                    let Some(queue) = events.get_mut(&key) else {
                        continue;
                    };
                    let start = p.saturating_sub(*size);
                    while queue.front().is_some_and(|e| e.0 <= start) {
                        queue.pop_front();
                    }
                    let mut accs = vec![Accumulator::default(); aggs.len()];
                    let mut any = false;
                    for (t, seq, _, inputs) in queue.iter().take_while(|e| e.0 <= p) {
                        any = true;
                        for ((acc, kind), input) in accs.iter_mut().zip(aggs).zip(inputs) {
                            acc.add(*kind, input, *t, *seq);
                        }
                    }
                    if any {
                        out.push(WindowResult {
                            key: key.clone(),
                            start,
                            end: p,
                            values: accs.iter().zip(aggs).map(|(a, k)| a.finish(*k)).collect(),
                        });
                    }
                    if queue.is_empty() {
                        events.remove(&key);
                    }
                }
            }
            State::Session {
                timeout,
                open,
                closing,
                ..
            } => {
                while let Some(first) = closing.first() {
                    if !is_final(first.0, w) {
                        break;
                    }
                    let Some((_, key)) = closing.pop_first() else {
                        break;
                    };
                    if let Some(s) = open.remove(&key) {
                        out.push(finish_session(&key, &s, *timeout, aggs));
                    }
                }
            }
        }
    }
}

/// Whether a window ending at `end` is final at watermark `w`; `Micros::MAX` is the end of input
/// and closes everything (even windows whose end saturated at the top of the range).
fn is_final(end: Micros, w: Micros) -> bool {
    end < w || w == Micros::MAX
}

fn finish_session(key: &str, s: &Session, timeout: Micros, aggs: &[AggKind]) -> WindowResult {
    WindowResult {
        key: key.to_owned(),
        start: s.first,
        end: s.end(timeout),
        values: s.accs.iter().zip(aggs).map(|(a, k)| a.finish(*k)).collect(),
    }
}
