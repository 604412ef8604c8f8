//! What the NATS tests share: a nats-server of the test's own (its port, store and config), for
//! the tests that kill the server and bring it back without touching the shared one.
#![allow(dead_code, unreachable_pub)]
#![allow(
    clippy::unwrap_used,
    reason = "the harness is part of the tests: a failed unwrap is a failed test"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nats-server binary: `NATS_SERVER`, else the first on `PATH` (or in the Debian package's
/// directories).
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// A nats-server of the test's own on a spare port, with JetStream's default file store in a
/// directory of the test's (docs/log.md). Killed when dropped.
pub struct OwnServer {
    binary: PathBuf,
    config: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl OwnServer {
    /// Writes the config into `dir` and starts the server; returns once it accepts connections.
    pub fn start(binary: PathBuf, dir: &Path) -> OwnServer {
        let port = spare_port();
        let config = dir.join("nats.conf");
        let store = dir.join("store");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 0\njetstream {{\n  store_dir: {:?}\n}}\n",
                store.display().to_string()
            ),
        )
        .unwrap();
        let mut server = OwnServer {
            binary,
            config,
            port,
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts the server (again, after [`kill`](Self::kill)) on the same port and store.
    pub fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the server gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}
