//! Where the time goes: CPU seconds (user + system, from `/proc/PID/stat`) of each process
//! taking part — the node(s), the NATS server, the bench itself — over the timed part of a run.
//! On a 2-core machine shared by all of them, the sum against 2 × the wall time says how close
//! to the machine's capacity a run was.

use std::time::{Duration, Instant};

/// A process to account for.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub(crate) name: String,
    pub(crate) pid: u32,
}

/// CPU seconds per tracked process between `start` and `stop`.
#[derive(Debug)]
pub(crate) struct Probe {
    tracked: Vec<Tracked>,
    ticks_per_s: f64,
    at_start: Vec<Option<u64>>,
    began: Option<Instant>,
    /// (name, CPU seconds) per process, and the wall time, once stopped.
    pub(crate) result: Option<(Vec<(String, f64)>, Duration)>,
}

impl Probe {
    pub(crate) fn new(tracked: Vec<Tracked>) -> Self {
        Probe {
            tracked,
            ticks_per_s: ticks_per_second(),
            at_start: Vec::new(),
            began: None,
            result: None,
        }
    }

    pub(crate) fn start(&mut self) {
        self.at_start = self.tracked.iter().map(|t| cpu_ticks(t.pid)).collect();
        self.began = Some(Instant::now());
    }

    pub(crate) fn stop(&mut self) {
        let wall = self.began.map(|b| b.elapsed()).unwrap_or_default();
        let used = self
            .tracked
            .iter()
            .zip(&self.at_start)
            .filter_map(|(t, start)| {
                let ticks = cpu_ticks(t.pid)?.checked_sub((*start)?)?;
                Some((t.name.clone(), ticks as f64 / self.ticks_per_s))
            })
            .collect();
        self.result = Some((used, wall));
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The NATS server's pid: `--nats-server-pid`, else the only `nats-server` running (tests start
/// private ones; with several, the bench cannot tell which is on the URL and skips it).
pub(crate) fn nats_server_pid(given: Option<u32>) -> Option<u32> {
    if given.is_some() {
        return given;
    }
    let out = std::process::Command::new("pidof")
        .arg("nats-server")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let pids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match pids.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}
