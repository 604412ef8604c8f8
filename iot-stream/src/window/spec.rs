//! Window kinds.

use std::time::Duration;

use super::{Micros, duration_micros};
use crate::error::{Error, Result};

/// The kind and size of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows `(k*size, (k+1)*size]`.
    Tumbling {
        /// Window length.
        size: Duration,
    },
    /// Windows of `size` ending at every multiple of `hop`; an event is in `size / hop` of them.
    Hopping {
        /// Window length.
        size: Duration,
        /// Distance between window ends.
        hop: Duration,
    },
    /// A window `(t - size, t]` at every point where its content changes.
    Sliding {
        /// Window length.
        size: Duration,
    },
    /// Windows of activity separated by gaps longer than `timeout`, cut at multiples of
    /// `max_duration`.
    Session {
        /// Largest gap between events of one session.
        timeout: Duration,
        /// Largest length of a session (its boundaries are the multiples of it).
        max_duration: Duration,
    },
}

impl WindowSpec {
    /// Refuses zero sizes and a hop larger than the size.
    pub fn validate(&self) -> Result<()> {
        let positive = |d: &Duration, what: &str| {
            if duration_micros(*d) <= 0 {
                Err(Error::invalid(format!(
                    "window {what} must be at least 1 µs"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            WindowSpec::Tumbling { size } | WindowSpec::Sliding { size } => positive(size, "size"),
            WindowSpec::Hopping { size, hop } => {
                positive(size, "size")?;
                positive(hop, "hop")?;
                if hop > size {
                    return Err(Error::invalid(
                        "a hopping window's hop must not exceed its size",
                    ));
                }
                Ok(())
            }
            WindowSpec::Session {
                timeout,
                max_duration,
            } => {
                positive(timeout, "timeout")?;
                positive(max_duration, "max duration")
            }
        }
    }

    pub(crate) fn micros(d: Duration) -> Micros {
        duration_micros(d)
    }
}

/// The smallest multiple of `step` at or after `t` (`step > 0`).
pub(crate) fn ceil_to(t: Micros, step: Micros) -> Micros {
    let r = t.rem_euclid(step);
    if r == 0 {
        t
    } else {
        // Saturating: times come from outside and may sit at the ends of the range.
        (t - r).saturating_add(step)
    }
}

/// The smallest multiple of `step` strictly after `t`.
pub(crate) fn next_multiple(t: Micros, step: Micros) -> Micros {
    (t - t.rem_euclid(step)).saturating_add(step)
}
