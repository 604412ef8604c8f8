//! `--target remote`: our gateway in a process of its own (`mqtt_gateway --fleet N
//! --telemetry-stats ADDR`), driven exactly as a broker is. The devices are the gateway's fleet
//! (`fleet-0` …, keys derived from the group key in `--fleet-key-file`); the consumer is the
//! gateway's own telemetry counter, which this side polls over TCP until every message has
//! arrived.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How often the gateway's counter is asked.
const POLL: Duration = Duration::from_millis(20);
/// Give up when the count has not moved for this long.
const STALL: Duration = Duration::from_secs(10);

/// What the gateway's counter answers.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(crate) struct Counts {
    pub(crate) received: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// One reading of the gateway's counter.
pub(crate) async fn counts(stats: SocketAddr) -> Result<Counts, Box<dyn std::error::Error>> {
    let mut socket = TcpStream::connect(stats).await?;
    let mut line = String::new();
    socket.read_to_string(&mut line).await?;
    Ok(serde_json::from_str(line.trim())?)
}

/// Polls the counter until it reaches `base + expected`, stalls, or `deadline` passes since
/// `began`; the last reading and when it was taken.
pub(crate) async fn wait_for(
    stats: SocketAddr,
    base: u64,
    expected: u64,
    began: Instant,
    deadline: Duration,
) -> Result<(Counts, Duration), Box<dyn std::error::Error>> {
    let mut last = counts(stats).await?;
    let mut moved = Instant::now();
    loop {
        let at = began.elapsed();
        if last.received >= base + expected || at > deadline || moved.elapsed() > STALL {
            return Ok((last, at));
        }
        tokio::time::sleep(POLL).await;
        let now = counts(stats).await?;
        if now.received != last.received {
            moved = Instant::now();
        }
        last = now;
    }
}
