//! Who holds which device: this instance's sessions, and what the others announced.
//!
//! Pure state with no I/O, so that the rules are tested on their own: the node feeds it what it
//! hears on the presence subject and what its hub's observer reports, and acts on what it
//! returns (messages to publish, sessions to close, instances to ask for their whole list).
//!
//! The rules:
//!
//! * A device's holder is the instance whose session of it opened last, ordered by (open time,
//!   instance id). Open times are each instance's clock (µs), made strictly increasing per
//!   instance; across instances they are compared as they are, so clocks must agree to better
//!   than the time between two connects of one device (see docs/cluster.md).
//! * An instance's entries live as long as its lease: each message from it renews it; an
//!   instance not heard from for the lease is dropped with all its devices.
//! * A restarted instance (same id, a later `run`) replaces what its earlier run announced;
//!   messages of an earlier run than the one known are ignored.
//! * Each instance numbers its opens and closes (`seq`). A receiver that sees a gap, or hears of
//!   an instance for the first time, asks that instance for its whole list (in pages), replaces
//!   what it had with it, and replays the announcements it heard since the list was taken.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use iot_core::DeviceId;

use super::wire::{Held, Presence, PresenceKind};

/// A device's session on some instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holding {
    /// The hub's session id (this instance's sessions only; 0 for others').
    pub(crate) session: u64,
    /// When it opened, µs since the epoch on its instance's clock.
    pub(crate) at: u64,
}

/// How many announcements of each peer are remembered, to bring a device list taken a moment
/// ago up to date.
const RECENT: usize = 4096;

#[derive(Debug)]
struct Peer {
    run: u64,
    seq: u64,
    heard: Instant,
    devices: HashMap<DeviceId, u64>,
    /// The last [`RECENT`] announcements, by seq.
    recent: VecDeque<(u64, Change)>,
}

/// One announced open or close.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    device: DeviceId,
    at: u64,
    open: bool,
}

impl Peer {
    fn remember(&mut self, seq: u64, change: Change) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, change));
    }

    fn apply(&mut self, change: &Change) {
        if change.open {
            self.devices.insert(change.device.clone(), change.at);
        } else if self.devices.get(&change.device) == Some(&change.at) {
            self.devices.remove(&change.device);
        }
    }
}

/// What the node must do after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Actions {
    /// This instance's sessions to close because a newer one opened elsewhere: (device, session).
    pub(crate) take_over: Vec<(DeviceId, u64)>,
    /// Instances to ask for their whole list.
    pub(crate) resync: Vec<String>,
}

/// The directory of one instance.
#[derive(Debug)]
pub(crate) struct Directory {
    me: String,
    run: u64,
    seq: u64,
    last_at: u64,
    local: HashMap<DeviceId, Holding>,
    peers: HashMap<String, Peer>,
}

impl Directory {
    /// The directory of instance `me` in its run `run` (a start time, µs).
    pub(crate) fn new(me: impl Into<String>, run: u64) -> Self {
        Directory {
            me: me.into(),
            run,
            seq: 0,
            last_at: 0,
            local: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// A session of `device` opened here at `now_us`: records it and returns the announcement,
    /// and the session itself if another instance already holds the device with a newer
    /// session (then this one must close at once: it lost the race).
    pub(crate) fn opened_here(
        &mut self,
        device: &DeviceId,
        session: u64,
        now_us: u64,
    ) -> (Presence, Option<u64>) {
        let at = now_us.max(self.last_at + 1);
        self.last_at = at;
        self.local.insert(device.clone(), Holding { session, at });
        self.seq += 1;
        let newer_elsewhere = self.peers.iter().any(|(id, p)| {
            p.devices
                .get(device)
                .is_some_and(|&t| (t, id.as_str()) > (at, self.me.as_str()))
        });
        let announce = Presence {
            instance: self.me.clone(),
            run: self.run,
            seq: self.seq,
            what: PresenceKind::Opened {
                device: device.clone(),
                at,
            },
        };
        (announce, newer_elsewhere.then_some(session))
    }

    /// The session `session` of `device` closed here: forgets it and returns the announcement
    /// (`None` if a newer session of the device replaced it here already).
    pub(crate) fn closed_here(&mut self, device: &DeviceId, session: u64) -> Option<Presence> {
        let holding = *self.local.get(device).filter(|h| h.session == session)?;
        self.local.remove(device);
        self.seq += 1;
        Some(Presence {
            instance: self.me.clone(),
            run: self.run,
            seq: self.seq,
            what: PresenceKind::Closed {
                device: device.clone(),
                at: holding.at,
            },
        })
    }

    /// A heartbeat of this instance.
    pub(crate) fn beat(&self) -> Presence {
        Presence {
            instance: self.me.clone(),
            run: self.run,
            seq: self.seq,
            what: PresenceKind::Beat,
        }
    }

    /// Applies a message heard on the presence subject at `now`.
    pub(crate) fn heard(&mut self, message: Presence, now: Instant) -> Actions {
        let mut actions = Actions::default();
        if message.instance == self.me {
            return actions;
        }
        if !self.same_run(&message.instance, message.run) {
            return actions;
        }
        if message.what == PresenceKind::Bye {
            self.peers.remove(&message.instance);
            return actions;
        }
        let known = self.peers.contains_key(&message.instance);
        let peer = self.peer(&message.instance, message.run, now);
        peer.heard = now;
        let change = match message.what {
            PresenceKind::Beat => {
                if !known || message.seq > peer.seq {
                    actions.resync.push(message.instance);
                }
                return actions;
            }
            PresenceKind::Opened { device, at } => Change {
                device,
                at,
                open: true,
            },
            PresenceKind::Closed { device, at } => Change {
                device,
                at,
                open: false,
            },
            PresenceKind::Bye => return actions,
        };
        if known && message.seq <= peer.seq {
            return actions; // already covered by a list applied since
        }
        if !known || message.seq != peer.seq + 1 {
            actions.resync.push(message.instance.clone());
        }
        peer.seq = message.seq;
        peer.remember(message.seq, change.clone());
        peer.apply(&change);
        self.check_take_over(&message.instance, &change, &mut actions);
        actions
    }

    /// Applies `instance`'s whole list (its pages joined), then the changes heard since the
    /// first page was taken, so that the result is as new as the newest announcement. If the
    /// changes remembered do not reach back that far, asks for the list again.
    pub(crate) fn apply_held(&mut self, instance: &str, held: Held, now: Instant) -> Actions {
        let mut actions = Actions::default();
        if instance == self.me || !self.same_run(instance, held.run) {
            return actions;
        }
        let peer = self.peer(instance, held.run, now);
        peer.heard = now;
        peer.devices = held.devices.into_iter().collect();
        let oldest = peer.recent.front().map_or(u64::MAX, |(seq, _)| *seq);
        if peer.seq > held.seq && oldest > held.seq + 1 {
            actions.resync.push(instance.to_owned());
        }
        let replay: Vec<Change> = peer
            .recent
            .iter()
            .filter(|(seq, _)| *seq > held.seq)
            .map(|(_, c)| c.clone())
            .collect();
        for change in &replay {
            peer.apply(change);
        }
        peer.seq = peer.seq.max(held.seq);
        let devices: Vec<Change> = peer
            .devices
            .iter()
            .map(|(d, &at)| Change {
                device: d.clone(),
                at,
                open: true,
            })
            .collect();
        for change in &devices {
            self.check_take_over(instance, change, &mut actions);
        }
        actions
    }

    /// `instance`'s list could not be fetched: its next heartbeat (any counter is ahead of 0)
    /// or announcement (a gap from 0) asks for it again.
    pub(crate) fn needs_list(&mut self, instance: &str) {
        if let Some(peer) = self.peers.get_mut(instance) {
            peer.seq = 0;
        }
    }

    /// Whether a message of `instance`'s run `run` is to be applied: not from a run that has
    /// ended. A later run replaces the instance (it restarted: what it held is gone).
    fn same_run(&mut self, instance: &str, run: u64) -> bool {
        match self.peers.get(instance).map(|p| p.run) {
            Some(known) if known > run => false,
            Some(known) if known < run => {
                self.peers.remove(instance);
                true
            }
            _ => true,
        }
    }

    fn peer(&mut self, instance: &str, run: u64, now: Instant) -> &mut Peer {
        self.peers
            .entry(instance.to_owned())
            .or_insert_with(|| Peer {
                run,
                seq: 0,
                heard: now,
                devices: HashMap::new(),
                recent: VecDeque::new(),
            })
    }

    /// A session opened on `instance` takes over an older one here.
    fn check_take_over(&self, instance: &str, change: &Change, actions: &mut Actions) {
        if !change.open {
            return;
        }
        if let Some(h) = self.local.get(&change.device)
            && (h.at, self.me.as_str()) < (change.at, instance)
        {
            actions.take_over.push((change.device.clone(), h.session));
        }
    }

    /// This instance's devices after `after` (all from the start when `None`), at most `limit`,
    /// for a peer that asked.
    pub(crate) fn held(&self, after: Option<&DeviceId>, limit: usize) -> Held {
        let mut devices: Vec<_> = self
            .local
            .iter()
            .filter(|(d, _)| after.is_none_or(|a| *d > a))
            .map(|(d, h)| (d.clone(), h.at))
            .collect();
        devices.sort();
        let more = devices.len() > limit;
        devices.truncate(limit);
        Held {
            run: self.run,
            seq: self.seq,
            next: if more {
                devices.last().map(|(d, _)| d.clone())
            } else {
                None
            },
            devices,
        }
    }

    /// Drops the instances not heard from within `lease` before `now`; returns their ids.
    pub(crate) fn expire(&mut self, now: Instant, lease: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.heard) > lease)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.peers.remove(id);
        }
        gone
    }

    /// The instance holding `device`: `Some(None)` for this one, `Some(Some(id))` for another,
    /// `None` when no live instance holds it.
    pub(crate) fn holder(&self, device: &DeviceId) -> Option<Option<String>> {
        let mut best: Option<(u64, &str)> =
            self.local.get(device).map(|h| (h.at, self.me.as_str()));
        for (id, peer) in &self.peers {
            if let Some(&at) = peer.devices.get(device) {
                let candidate = (at, id.as_str());
                if best.is_none_or(|b| candidate > b) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(_, id)| (id != self.me).then(|| id.to_owned()))
    }

    /// Every device some live instance holds, in id order.
    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        let mut all: Vec<DeviceId> = self.local.keys().cloned().collect();
        for peer in self.peers.values() {
            all.extend(peer.devices.keys().cloned());
        }
        all.sort();
        all.dedup();
        all
    }

    /// This instance's part of the hub-wide throttling quotas: `(held here + 1) / (held by all +
    /// instances)`. The parts of all live instances add up to 1 when their directories agree;
    /// an instance holding more devices gets more, and one holding none still gets a little
    /// (for the connects that bring devices to it).
    pub(crate) fn quota_share(&self) -> f64 {
        let held_here = self.local.len();
        let held_all = held_here + self.peers.values().map(|p| p.devices.len()).sum::<usize>();
        let instances = 1 + self.peers.len();
        // Counts far below 2^52: exact as f64.
        (held_here + 1) as f64 / (held_all + instances) as f64
    }

    /// The live instances other than this one, in id order.
    pub(crate) fn peers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.peers.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        s.parse().unwrap()
    }

    fn opened(instance: &str, seq: u64, device: &str, at: u64) -> Presence {
        Presence {
            instance: instance.into(),
            run: 1,
            seq,
            what: PresenceKind::Opened {
                device: dev(device),
                at,
            },
        }
    }

    #[test]
    fn the_newest_session_holds_the_device_and_the_older_one_is_taken_over() {
        let now = Instant::now();
        let mut a = Directory::new("a", 1);
        let (_, lost) = a.opened_here(&dev("d"), 7, 100);
        assert_eq!(lost, None);
        assert_eq!(a.holder(&dev("d")), Some(None));
        // b's session opened later: a must close its own.
        let actions = a.heard(opened("b", 1, "d", 200), now);
        assert_eq!(actions.take_over, vec![(dev("d"), 7)]);
        assert_eq!(a.holder(&dev("d")), Some(Some("b".into())));
        // An announcement of an older session elsewhere takes nothing over.
        let mut c = Directory::new("c", 1);
        c.opened_here(&dev("e"), 1, 500);
        let actions = c.heard(opened("b", 1, "e", 400), now);
        assert!(actions.take_over.is_empty());
        assert_eq!(c.holder(&dev("e")), Some(None));
    }

    #[test]
    fn quota_shares_follow_the_devices_held_and_add_up_to_one() {
        let now = Instant::now();
        // a holds 3 devices, b (heard of) holds 1: a's share 4/6, b's 2/6.
        let mut a = Directory::new("a", 1);
        assert!(
            (a.quota_share() - 1.0).abs() < 1e-12,
            "alone: the whole quota"
        );
        for (i, d) in ["d1", "d2", "d3"].into_iter().enumerate() {
            a.opened_here(&dev(d), i as u64, 10 + i as u64);
        }
        a.heard(opened("b", 1, "e1", 20), now);
        let mut b = Directory::new("b", 1);
        b.opened_here(&dev("e1"), 1, 20);
        for (i, d) in ["d1", "d2", "d3"].into_iter().enumerate() {
            b.heard(opened("a", i as u64 + 1, d, 10 + i as u64), now);
        }
        assert!(
            (a.quota_share() - 4.0 / 6.0).abs() < 1e-12,
            "{}",
            a.quota_share()
        );
        assert!(
            (b.quota_share() - 2.0 / 6.0).abs() < 1e-12,
            "{}",
            b.quota_share()
        );
        assert!((a.quota_share() + b.quota_share() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_session_that_opens_after_a_newer_one_elsewhere_was_heard_of_loses() {
        let now = Instant::now();
        let mut a = Directory::new("a", 1);
        a.heard(opened("b", 1, "d", 1_000), now);
        let (_, lost) = a.opened_here(&dev("d"), 3, 900);
        assert_eq!(lost, Some(3));
    }

    #[test]
    fn a_gap_or_a_new_instance_asks_for_the_list_which_is_brought_up_to_date() {
        let now = Instant::now();
        let mut a = Directory::new("a", 1);
        assert_eq!(
            a.heard(opened("b", 5, "d", 1), now).resync,
            vec!["b".to_owned()]
        );
        assert!(a.heard(opened("b", 6, "e", 2), now).resync.is_empty());
        // Seq 7 (e closing) is lost.
        assert_eq!(
            a.heard(opened("b", 8, "f", 3), now).resync,
            vec!["b".to_owned()]
        );
        // The list was taken at 7: it lacks f, announced since, which the replay adds.
        let list = Held {
            run: 1,
            seq: 7,
            devices: vec![(dev("d"), 1)],
            next: None,
        };
        assert!(a.apply_held("b", list, now).resync.is_empty());
        assert_eq!(a.devices(), vec![dev("d"), dev("f")]);
        // A beat with a newer seq than applied means a change was missed.
        let beat = Presence {
            instance: "b".into(),
            run: 1,
            seq: 9,
            what: PresenceKind::Beat,
        };
        assert_eq!(a.heard(beat, now).resync, vec!["b".to_owned()]);
        // A list older than the announcements remembered cannot be brought up to date.
        let old = Held {
            run: 1,
            seq: 2,
            devices: Vec::new(),
            next: None,
        };
        assert_eq!(a.apply_held("b", old, now).resync, vec!["b".to_owned()]);
    }

    #[test]
    fn the_list_comes_in_pages_in_id_order() {
        let mut a = Directory::new("a", 1);
        for (i, d) in ["x", "y", "z"].into_iter().enumerate() {
            a.opened_here(&dev(d), i as u64, 10);
        }
        let first = a.held(None, 2);
        assert_eq!(first.devices.len(), 2);
        assert_eq!(first.next, Some(dev("y")));
        let second = a.held(first.next.as_ref(), 2);
        assert_eq!(
            second
                .devices
                .iter()
                .map(|(d, _)| d.clone())
                .collect::<Vec<_>>(),
            vec![dev("z")]
        );
        assert_eq!(second.next, None);
    }

    #[test]
    fn an_instance_not_heard_from_within_its_lease_is_dropped_with_its_devices() {
        let t0 = Instant::now();
        let mut a = Directory::new("a", 1);
        a.heard(opened("b", 1, "d", 1), t0);
        let lease = Duration::from_secs(3);
        assert!(a.expire(t0 + Duration::from_secs(2), lease).is_empty());
        assert_eq!(a.holder(&dev("d")), Some(Some("b".into())));
        assert_eq!(
            a.expire(t0 + Duration::from_secs(4), lease),
            vec!["b".to_owned()]
        );
        assert_eq!(a.holder(&dev("d")), None);
        assert!(a.devices().is_empty());
    }

    #[test]
    fn closing_forgets_only_the_session_it_names() {
        let mut a = Directory::new("a", 1);
        a.opened_here(&dev("d"), 1, 10);
        a.opened_here(&dev("d"), 2, 20);
        assert_eq!(a.closed_here(&dev("d"), 1), None);
        assert!(a.closed_here(&dev("d"), 2).is_some());
        assert_eq!(a.holder(&dev("d")), None);
    }

    #[test]
    fn a_restarted_instance_replaces_what_its_earlier_run_held() {
        let now = Instant::now();
        let mut a = Directory::new("a", 1);
        a.heard(opened("b", 1, "d", 1), now);
        a.heard(opened("b", 2, "e", 2), now);
        // b restarts: its counter starts again, in a later run.
        let mut restarted = opened("b", 1, "f", 3);
        restarted.run = 2;
        let actions = a.heard(restarted, now);
        assert_eq!(actions.resync, vec!["b".to_owned()]);
        assert_eq!(a.devices(), vec![dev("f")]);
        // A late message of the run that ended changes nothing.
        a.heard(opened("b", 3, "g", 4), now);
        assert_eq!(a.devices(), vec![dev("f")]);
    }

    #[test]
    fn a_list_that_could_not_be_fetched_is_asked_for_at_the_next_heartbeat() {
        let now = Instant::now();
        let mut a = Directory::new("a", 1);
        a.heard(opened("b", 1, "d", 1), now);
        let beat = Presence {
            instance: "b".into(),
            run: 1,
            seq: 1,
            what: PresenceKind::Beat,
        };
        assert!(a.heard(beat.clone(), now).resync.is_empty());
        a.needs_list("b");
        assert_eq!(a.heard(beat, now).resync, vec!["b".to_owned()]);
    }
}
