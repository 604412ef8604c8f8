//! The reminder table of one shard: durable timers, kept apart from actor state (as Orleans
//! keeps its reminder table) so that a passivated actor is woken by its reminder.

use std::collections::{BTreeMap, BTreeSet};

use iot_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One reminder: when it is next due and, if periodic, its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reminder {
    pub(crate) due_ms: u64,
    pub(crate) period_ms: Option<u64>,
}

/// The reminders of one shard, by (actor, name), with an index by due time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReminderTable {
    by_key: BTreeMap<(Box<str>, Box<str>), Reminder>,
    due: BTreeSet<(u64, Box<str>, Box<str>)>,
    /// Changed since it was last stored.
    pub(crate) dirty: bool,
}

/// The stored form: one entry per reminder.
#[derive(Serialize, Deserialize)]
struct Entry {
    actor: String,
    name: String,
    #[serde(flatten)]
    reminder: Reminder,
}

impl ReminderTable {
    /// Sets (or replaces) `actor`'s reminder `name`.
    pub(crate) fn set(&mut self, actor: &str, name: &str, reminder: Reminder) {
        self.cancel(actor, name);
        self.due
            .insert((reminder.due_ms, actor.into(), name.into()));
        self.by_key.insert((actor.into(), name.into()), reminder);
        self.dirty = true;
    }

    /// Removes `actor`'s reminder `name`; `false` if there was none.
    pub(crate) fn cancel(&mut self, actor: &str, name: &str) -> bool {
        let key: (Box<str>, Box<str>) = (actor.into(), name.into());
        match self.by_key.remove(&key) {
            Some(old) => {
                self.due.remove(&(old.due_ms, key.0, key.1));
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// `actor`'s reminder `name`.
    pub(crate) fn get(&self, actor: &str, name: &str) -> Option<Reminder> {
        self.by_key.get(&(actor.into(), name.into())).copied()
    }

    /// The earliest reminder due at or before `now`, if any, as (actor, name, due). The
    /// reminder stays until [`fired`](Self::fired) reschedules or removes it.
    pub(crate) fn next_due(&self, now: Timestamp) -> Option<(Box<str>, Box<str>, u64)> {
        let (due, actor, name) = self.due.first()?;
        (*due <= now.as_unix_millis()).then(|| (actor.clone(), name.clone(), *due))
    }

    /// After `actor`'s reminder `name` fired at `now`: a periodic one is due again at its first
    /// multiple of the period after `now` (missed periods while the process was down are not
    /// fired one by one, as Orleans does), a one-shot one is removed.
    pub(crate) fn fired(&mut self, actor: &str, name: &str, now: Timestamp) {
        let Some(current) = self.get(actor, name) else {
            return;
        };
        match current.period_ms {
            Some(period) if period > 0 => {
                let now = now.as_unix_millis();
                let behind = now.saturating_sub(current.due_ms) / period + 1;
                let next = current.due_ms.saturating_add(behind.saturating_mul(period));
                self.set(
                    actor,
                    name,
                    Reminder {
                        due_ms: next,
                        period_ms: Some(period),
                    },
                );
            }
            _ => {
                self.cancel(actor, name);
            }
        }
    }

    /// How many reminders it holds.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The stored form (JSON text).
    pub(crate) fn encode(&self) -> Result<String> {
        let entries: Vec<Entry> = self
            .by_key
            .iter()
            .map(|((actor, name), reminder)| Entry {
                actor: actor.to_string(),
                name: name.to_string(),
                reminder: *reminder,
            })
            .collect();
        serde_json::to_string(&entries)
            .map_err(|e| Error::invalid(format!("reminder table not serializable: {e}")))
    }

    /// Reads the stored form.
    pub(crate) fn decode(text: &str) -> Result<ReminderTable> {
        let entries: Vec<Entry> = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("stored reminder table unreadable: {e}")))?;
        let mut table = ReminderTable::default();
        for e in entries {
            table.set(&e.actor, &e.name, e.reminder);
        }
        table.dirty = false;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn due_order_rescheduling_and_round_trip() {
        let mut t = ReminderTable::default();
        t.set(
            "a",
            "tick",
            Reminder {
                due_ms: 100,
                period_ms: Some(50),
            },
        );
        t.set(
            "b",
            "once",
            Reminder {
                due_ms: 80,
                period_ms: None,
            },
        );
        assert_eq!(t.next_due(at(79)), None);
        assert_eq!(t.next_due(at(200)).map(|d| d.2), Some(80));
        t.fired("b", "once", at(200));
        assert_eq!(t.get("b", "once"), None);
        // Periods missed while down are skipped: next due after now.
        t.fired("a", "tick", at(260));
        assert_eq!(t.get("a", "tick").map(|r| r.due_ms), Some(300));
        // Replacing keeps one entry in the due index.
        t.set(
            "a",
            "tick",
            Reminder {
                due_ms: 10,
                period_ms: Some(50),
            },
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_due(at(10)).map(|d| d.2), Some(10));
        let back = ReminderTable::decode(&t.encode().expect("encodes")).expect("decodes");
        assert_eq!(back.by_key, t.by_key);
        assert_eq!(back.due, t.due);
    }
}
