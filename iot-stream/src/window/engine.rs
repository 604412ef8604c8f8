//! The window engine: ordering buffer plus per-kind window state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::Micros;
use super::aggregate::{Accumulator, AggKind, Input};
use super::keys::{IdMap, KeyId, Keys};
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
    key: KeyId,
    inputs: Box<[Input]>,
    /// Its log offset, or [`UNTRACKED`].
    offset: u64,
}

/// The offset of an event pushed without one: it never holds the checkpoint back.
const UNTRACKED: u64 = u64::MAX;

/// The cells of one tumbling or hopping window: per key a slot, per slot one accumulator per
/// aggregate (flat), and the lowest log offset among the window's events (what a restart must
/// replay from to rebuild it).
#[derive(Debug)]
struct FixedWindow {
    slots: IdMap<KeyId, u32>,
    keys: Vec<KeyId>,
    accs: Vec<Accumulator>,
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
    keys: Keys,
    buffer: BTreeMap<(Micros, u64), Pending>,
    seq: u64,
    state: State,
    /// Windows the host clock closed before the events' own watermark reached them: (end, lowest
    /// log offset of their events). They keep counting in
    /// [`retained_offset`](Self::retained_offset) until the events' watermark passes their end,
    /// so that a restart rebuilds them whole (see [`tick`](Self::tick)).
    pins: Vec<(Micros, u64)>,
}

/// An event a sliding window holds: (time, sequence, log offset, inputs).
type Held = (Micros, u64, u64, Box<[Input]>);

#[derive(Debug)]
enum State {
    /// Tumbling and hopping: cells by window end, then key.
    Fixed {
        size: Micros,
        hop: Micros,
        windows: BTreeMap<Micros, FixedWindow>,
    },
    Sliding {
        size: Micros,
        events: IdMap<KeyId, VecDeque<Held>>,
        points: BTreeSet<(Micros, KeyId)>,
    },
    Session {
        timeout: Micros,
        max: Micros,
        open: IdMap<KeyId, Session>,
        closing: BTreeSet<(Micros, KeyId)>,
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

fn add_all(accs: &mut [Accumulator], aggs: &[AggKind], inputs: &[Input], t: Micros, seq: u64) {
    for ((acc, kind), input) in accs.iter_mut().zip(aggs).zip(inputs) {
        acc.add_input(*kind, input, t, seq);
    }
}

fn finish_all(accs: &[Accumulator], aggs: &[AggKind]) -> Vec<Value> {
    accs.iter().zip(aggs).map(|(a, k)| a.finish(*k)).collect()
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
                events: IdMap::default(),
                points: BTreeSet::new(),
            },
            WindowSpec::Session {
                timeout,
                max_duration,
            } => State::Session {
                timeout: WindowSpec::micros(timeout),
                max: WindowSpec::micros(max_duration),
                open: IdMap::default(),
                closing: BTreeSet::new(),
            },
        };
        Ok(WindowEngine {
            spec,
            aggs,
            sequencer: Sequencer::new(policy),
            keys: Keys::default(),
            buffer: BTreeMap::new(),
            seq: 0,
            state,
            pins: Vec::new(),
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
        key: impl AsRef<str>,
        time: Micros,
        arrival: Micros,
        inputs: Vec<Value>,
        out: &mut Vec<WindowResult>,
    ) -> Option<Micros> {
        let inputs: Vec<Input> = inputs.into_iter().map(Input::from).collect();
        self.push_at(UNTRACKED, key.as_ref(), time, arrival, &inputs, out)
    }

    /// [`push`](Self::push) for an event read from the log at `offset`, with its inputs as
    /// [`Input`]s: the engine then counts it in [`retained_offset`](Self::retained_offset) for
    /// as long as it holds it. The inputs are copied only if the event must wait in the ordering
    /// buffer or a sliding window.
    pub fn push_at(
        &mut self,
        offset: u64,
        key: &str,
        time: Micros,
        arrival: Micros,
        inputs: &[Input],
        out: &mut Vec<WindowResult>,
    ) -> Option<Micros> {
        let t = self.sequencer.admit(time, arrival)?;
        self.seq += 1;
        let key = self.keys.intern(key);
        let w = self.sequencer.watermark();
        if self.buffer.is_empty() && t <= w {
            // In order and already released by the watermark: skip the buffer.
            self.apply(t, self.seq, key, inputs, offset, out);
            self.sequencer.set_floor(w);
            self.emit(w, out);
        } else {
            let pending = Pending {
                key,
                inputs: inputs.into(),
                offset,
            };
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
        let buffered = self
            .buffer
            .values()
            .map(|p| p.offset)
            .chain(self.pins.iter().map(|p| p.1))
            .min();
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
    ///
    /// Replaying the same events into a new engine rebuilds the same state, except for what the
    /// clock did: a window closed by a tick before the events' own watermark reached its end
    /// would be rebuilt from the replayed part of its events and emitted again. So such a
    /// window keeps holding [`retained_offset`](Self::retained_offset) at its oldest event
    /// until the events' watermark passes its end: a replay then rebuilds it whole, and it is
    /// emitted again with the same content (at-least-once). Call `tick` only with `now` at or
    /// before the arrival time of every event still to come (the host ticks only when it has
    /// read everything); the floor it sets then never changes the time of a later event.
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
            let ((t, seq), p) = entry.remove_entry();
            self.apply(t, seq, p.key, &p.inputs, p.offset, out);
        }
        self.sequencer.set_floor(w);
        self.emit(w, out);
    }

    /// Adds a released event (released in non-decreasing time order) to the window state.
    fn apply(
        &mut self,
        t: Micros,
        seq: u64,
        key: KeyId,
        inputs: &[Input],
        offset: u64,
        out: &mut Vec<WindowResult>,
    ) {
        let aggs = &self.aggs;
        match &mut self.state {
            State::Fixed { size, hop, windows } => {
                let mut end = ceil_to(t, *hop);
                while end.saturating_sub(*size) < t {
                    let window = windows.entry(end).or_insert_with(|| FixedWindow {
                        slots: IdMap::default(),
                        keys: Vec::new(),
                        accs: Vec::new(),
                        min_offset: UNTRACKED,
                    });
                    window.min_offset = window.min_offset.min(offset);
                    let n = aggs.len();
                    let next = u32::try_from(window.keys.len()).unwrap_or(u32::MAX);
                    let slot = *window.slots.entry(key).or_insert(next) as usize;
                    if slot == window.keys.len() {
                        window.keys.push(key);
                        window
                            .accs
                            .resize(window.accs.len() + n, Accumulator::default());
                    }
                    add_all(&mut window.accs[slot * n..][..n], aggs, inputs, t, seq);
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
                points.insert((t, key));
                points.insert((t.saturating_add(*size), key));
                events
                    .entry(key)
                    .or_default()
                    .push_back((t, seq, offset, inputs.into()));
            }
            State::Session {
                timeout,
                max,
                open,
                closing,
            } => {
                if let Some(s) = open.get_mut(&key) {
                    let end = s.end(*timeout);
                    if t <= end {
                        closing.remove(&(end, key));
                        s.last = s.last.max(t);
                        s.min_offset = s.min_offset.min(offset);
                        add_all(&mut s.accs, aggs, inputs, t, seq);
                        closing.insert((s.end(*timeout), key));
                        return;
                    }
                    // The event is after the session's end, so the session is final.
                    closing.remove(&(end, key));
                    if let Some(s) = open.remove(&key) {
                        out.push(finish_session(self.keys.name(key), &s, *timeout, aggs));
                    }
                }
                let mut accs = vec![Accumulator::default(); aggs.len()];
                add_all(&mut accs, aggs, inputs, t, seq);
                let s = Session {
                    first: t,
                    last: t,
                    boundary: next_multiple(t, *max),
                    accs,
                    min_offset: offset,
                };
                closing.insert((s.end(*timeout), key));
                open.insert(key, s);
            }
        }
    }

    fn emit(&mut self, w: Micros, out: &mut Vec<WindowResult>) {
        let aggs = &self.aggs;
        let keys = &self.keys;
        let mut closed_any = false;
        // What closes now although the events alone would not close it yet is pinned.
        let rw = self.sequencer.record_watermark();
        let pins = &mut self.pins;
        pins.retain(|p| !is_final(p.0, rw));
        let mut pin = |end: Micros, offset: u64| {
            if !is_final(end, rw) && offset != UNTRACKED {
                pins.push((end, offset));
            }
        };
        match &mut self.state {
            State::Fixed { size, windows, .. } => {
                while let Some(entry) = windows.first_entry() {
                    if !is_final(*entry.key(), w) {
                        break;
                    }
                    closed_any = true;
                    let (end, window) = entry.remove_entry();
                    pin(end, window.min_offset);
                    let n = aggs.len();
                    // Sort (name, slot) pairs: comparing names in place, not through ids.
                    let mut order: Vec<(&str, usize)> = window
                        .keys
                        .iter()
                        .enumerate()
                        .map(|(slot, id)| (keys.name(*id), slot))
                        .collect();
                    order.sort_unstable();
                    out.extend(order.into_iter().map(|(key, slot)| WindowResult {
                        key: key.to_owned(),
                        start: end.saturating_sub(*size),
                        end,
                        values: finish_all(&window.accs[slot * n..][..n], aggs),
                    }));
                }
            }
            State::Sliding {
                size,
                events,
                points,
            } => {
                let mut due: Vec<KeyId> = Vec::new();
                while let Some(&(p, _)) = points.first() {
                    if !is_final(p, w) {
                        break;
                    }
                    closed_any = true;
                    // Every point at `p`, in key order.
                    due.clear();
                    while let Some(&(q, key)) = points.first()
                        && q == p
                    {
                        points.pop_first();
                        due.push(key);
                    }
                    keys.sort(&mut due);
                    for key in &due {
                        let Some(queue) = events.get_mut(key) else {
                            continue;
                        };
                        let start = p.saturating_sub(*size);
                        while queue.front().is_some_and(|e| e.0 <= start) {
                            queue.pop_front();
                        }
                        let mut accs = vec![Accumulator::default(); aggs.len()];
                        let mut any = false;
                        let mut lowest = UNTRACKED;
                        for (t, seq, offset, inputs) in queue.iter().take_while(|e| e.0 <= p) {
                            any = true;
                            lowest = lowest.min(*offset);
                            add_all(&mut accs, aggs, inputs, *t, *seq);
                        }
                        pin(p, lowest);
                        if any {
                            out.push(WindowResult {
                                key: keys.name(*key).to_owned(),
                                start,
                                end: p,
                                values: finish_all(&accs, aggs),
                            });
                        }
                        if queue.is_empty() {
                            events.remove(key);
                        }
                    }
                }
            }
            State::Session {
                timeout,
                open,
                closing,
                ..
            } => {
                let mut due: Vec<KeyId> = Vec::new();
                while let Some(&(end, _)) = closing.first() {
                    if !is_final(end, w) {
                        break;
                    }
                    closed_any = true;
                    due.clear();
                    while let Some(&(e, key)) = closing.first()
                        && e == end
                    {
                        closing.pop_first();
                        due.push(key);
                    }
                    keys.sort(&mut due);
                    for key in &due {
                        if let Some(s) = open.remove(key) {
                            pin(s.end(*timeout), s.min_offset);
                            out.push(finish_session(keys.name(*key), &s, *timeout, aggs));
                        }
                    }
                }
            }
        }
        if closed_any && self.keys.wants_sweep() {
            self.sweep_keys();
        }
    }

    /// Frees the ids of keys the engine no longer holds anywhere.
    fn sweep_keys(&mut self) {
        let mut live = vec![false; self.keys.capacity()];
        let mut mark = |id: KeyId| {
            if let Some(l) = live.get_mut(id as usize) {
                *l = true;
            }
        };
        self.buffer.values().for_each(|p| mark(p.key));
        match &self.state {
            State::Fixed { windows, .. } => {
                windows
                    .values()
                    .for_each(|w| w.keys.iter().for_each(|k| mark(*k)));
            }
            State::Sliding { events, points, .. } => {
                events.keys().for_each(|k| mark(*k));
                points.iter().for_each(|p| mark(p.1));
            }
            State::Session { open, .. } => open.keys().for_each(|k| mark(*k)),
        }
        self.keys.sweep(&live);
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
        values: finish_all(&s.accs, aggs),
    }
}
