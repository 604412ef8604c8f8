//! The Python device driver (`scripts/cluster/azure_device.py`) as a child process: commands in
//! on stdin, events out on stdout, both one JSON object a line.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one event may take before the test fails instead of hanging (a cold start of the
/// SDK on the loaded 2-core machine takes seconds; every wait here is for something that happens).
pub(crate) const GUARD: Duration = Duration::from_secs(30);

/// The repository root (the root package's manifest directory).
pub(crate) fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, if it has the SDK and paho-mqtt. Outside CI a missing one skips the test
/// (it says why); under CI (`CI` set, `.ci/run` creates the venv) it fails.
#[allow(clippy::print_stderr, reason = "a skipped run says why")]
pub(crate) fn python_with_sdk() -> Option<PathBuf> {
    let python = std::env::var_os("CLUSTER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let usable = Command::new(&python)
        .args(["-c", "import azure.iot.device, paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} cannot import azure.iot.device and paho.mqtt under CI",
        python.display()
    );
    eprintln!(
        "skipped: {} cannot import azure.iot.device and paho.mqtt (python3 -m venv .venv && \
         .venv/bin/pip install azure-iot-device paho-mqtt); CI runs this test",
        python.display()
    );
    None
}

/// One running driver.
pub(crate) struct Driver {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    /// Events read but not yet asked for (an event may come before the one asked for: the
    /// device's C2D handler can print before the HTTP call that sent it returns).
    pending: VecDeque<Value>,
    /// Everything it printed, for failure reports.
    seen: Vec<Value>,
}

impl Driver {
    /// Starts the script with the hub's host name, the CA the SDK must trust (PEM file) and a
    /// service token.
    pub(crate) fn start(python: &Path, host: &str, ca_pem: &Path, service_token: &str) -> Self {
        let ca = std::fs::read_to_string(ca_pem).unwrap();
        let mut child = Command::new(python)
            .arg(workspace().join("scripts/cluster/azure_device.py"))
            .env("IOT_HOST", host)
            .env("IOT_CA_PEM", ca)
            .env("IOT_SERVICE_TOKEN", service_token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => {
                        if sender.send(event).is_err() {
                            break;
                        }
                    }
                    // Not one of ours (a library printing): keep it visible.
                    Err(_) => eprintln!("driver: {line}"),
                }
            }
        });
        Driver {
            child,
            stdin,
            events,
            pending: VecDeque::new(),
            seen: Vec::new(),
        }
    }

    /// Sends one command.
    pub(crate) fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The first event named `name` for which `matches` holds, waiting up to [`GUARD`]. An
    /// `error` event (a command that raised) fails the test at once.
    pub(crate) fn expect_where(&mut self, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let wanted = |e: &Value| e["event"] == name && matches(e);
        if let Some(i) = self.pending.iter().position(wanted) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(e) => panic!(
                    "no {name:?} event within {GUARD:?} ({e}); the driver printed:\n{}",
                    self.report()
                ),
            };
            self.seen.push(event.clone());
            assert!(
                event["event"] != "error",
                "the driver failed: {event}\nit printed:\n{}",
                self.report()
            );
            if wanted(&event) {
                return event;
            }
            self.pending.push_back(event);
        }
    }

    /// The first event named `name`.
    pub(crate) fn expect(&mut self, name: &str) -> Value {
        self.expect_where(name, |_| true)
    }

    fn report(&self) -> String {
        self.seen
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asks the script to close its connections and exit; waits for it.
    pub(crate) fn quit(mut self) {
        self.send(serde_json::json!({"op": "quit"}));
        self.expect("bye");
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the driver exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the driver did not exit within {GUARD:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds between two events' clock readings (`t` fields, seconds, the driver's
/// monotonic clock).
pub(crate) fn ms_between(from: f64, to: f64) -> f64 {
    (to - from) * 1000.0
}

/// An event's `t` or `t0` field.
pub(crate) fn at(event: &Value, field: &str) -> f64 {
    event[field].as_f64().unwrap()
}
