//! The kill -9 harness every store's crash tests use.
//!
//! A crash test is two `#[test]`s in one test binary: the parent, and an `#[ignore]`d child that the
//! parent starts as a separate process (the test binary itself, running only the child test, with
//! a working directory passed in an environment variable). The child does its work and prints one
//! line per acknowledged write; the parent kills it with SIGKILL at a random moment, reopens the
//! store, and checks that every acknowledged write survived. Only complete lines count: a line cut
//! by the kill was never an acknowledgement.
//!
//! ```no_run
//! use iot_core::testkit::crash::CrashChild;
//!
//! const CHILD: CrashChild = CrashChild::new("crash_child", "MY_STORE_CRASH_DIR");
//!
//! #[test]
//! #[ignore = "started by kill_9_loses_nothing"]
//! fn crash_child() {
//!     let Some(dir) = CHILD.dir() else { return };
//!     // open the store in `dir`, write, and after each acknowledged write:
//!     iot_core::testkit::crash::ack("key=1");
//! }
//!
//! #[test]
//! fn kill_9_loses_nothing() {
//!     let dir = tempfile::tempdir().unwrap();
//!     for round in 0..20 {
//!         let acked = CHILD.run_and_kill(dir.path(), round, 5..200);
//!         // reopen the store in `dir` and check every line in `acked` survived
//!     }
//! }
//! ```

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a child prints when it finished its work (see [`CrashChild::run_to_completion`]).
pub const DONE: &str = "DONE";

/// Prints one acknowledgement line from a child and flushes it, so that the parent sees it before
/// a kill.
#[allow(clippy::print_stdout)]
pub fn ack(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A number in `range` that differs from run to run (std's random hasher keys; no dependency).
pub fn random_in(range: Range<u64>) -> u64 {
    let span = range.end.saturating_sub(range.start).max(1);
    range.start + RandomState::new().hash_one(Instant::now()) % span
}

/// A crash test's child: the name of its `#[test]` and the variable that passes it the directory.
#[derive(Clone, Copy, Debug)]
pub struct CrashChild {
    test: &'static str,
    env: &'static str,
}

impl CrashChild {
    /// The child test `test` (its function name), told its directory through variable `env`.
    pub const fn new(test: &'static str, env: &'static str) -> Self {
        CrashChild { test, env }
    }

    /// In the child: the directory to work in, or `None` when the test runs as a plain test
    /// (the child then does nothing).
    pub fn dir(&self) -> Option<PathBuf> {
        std::env::var_os(self.env).map(PathBuf::from)
    }

    /// In the child: which round this is (0 for the first run over a directory).
    pub fn round(&self) -> usize {
        std::env::var(self.round_env())
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }

    fn round_env(&self) -> String {
        format!("{}_ROUND", self.env)
    }

    fn spawn(&self, dir: &Path, round: usize) -> (std::process::Child, mpsc::Receiver<Vec<u8>>) {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                "--exact",
                self.test,
                "--nocapture",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(self.env, dir)
            .env(self.round_env(), round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the crash child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        (child, rx)
    }

    /// Starts the child, waits (up to a minute) for its first line, kills it with SIGKILL after a
    /// random delay in `kill_after_ms`, and returns the complete lines it printed (the libtest
    /// chatter filtered out).
    pub fn run_and_kill(&self, dir: &Path, round: usize, kill_after_ms: Range<u64>) -> Vec<String> {
        let (mut child, rx) = self.spawn(dir, round);
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lines.iter().any(|l: &Vec<u8>| is_child_line(l)) && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                lines.push(l);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(random_in(kill_after_ms)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The reader thread ends at EOF once the child is gone; take what it still holds.
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        complete_lines(lines)
    }

    /// Runs the child to completion and returns its lines; fails unless it printed [`DONE`].
    pub fn run_to_completion(&self, dir: &Path, round: usize) -> Vec<String> {
        let (mut child, rx) = self.spawn(dir, round);
        let _ = child.wait();
        let lines = complete_lines(rx.iter().collect());
        assert!(
            lines.iter().any(|l| l == DONE),
            "the final run of {} did not print {DONE}",
            self.test
        );
        lines
    }
}

/// The child's own text of a line, without libtest's chatter: `running 1 test`, the result
/// lines, and the `test NAME ... ` prefix that libtest prints (without a newline) before the
/// child's first line under `--nocapture`.
fn child_text(l: &[u8]) -> Option<&[u8]> {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    let text = match l.strip_prefix(b"test ") {
        Some(rest) => {
            let at = rest.windows(5).position(|w| w == b" ... ")?;
            &rest[at + 5..]
        }
        None => l,
    };
    let chatter: [&[u8]; 4] = [b"running ", b"test result:", b"successes:", b"failures:"];
    let is_chatter = text.is_empty()
        || chatter.iter().any(|c| text.starts_with(c))
        || matches!(text, b"ok" | b"FAILED" | b"ignored");
    (!is_chatter).then_some(text)
}

fn is_child_line(l: &[u8]) -> bool {
    child_text(l).is_some()
}

fn complete_lines(lines: Vec<Vec<u8>>) -> Vec<String> {
    lines
        .iter()
        // A line cut by the kill has no newline: it was never a complete acknowledgement.
        .filter(|l| l.ends_with(b"\n"))
        .filter_map(|l| child_text(l))
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(|t| t.trim_end().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_chatter_is_filtered_and_the_first_line_unprefixed() {
        let lines: Vec<Vec<u8>> = [
            &b"\n"[..],
            b"running 1 test\n",
            b"test crash_child ... ack 1\n",
            b"ack 2\n",
            b"ack 3",
        ]
        .iter()
        .map(|l| l.to_vec())
        .collect();
        assert_eq!(complete_lines(lines), ["ack 1", "ack 2"]);
    }
}
