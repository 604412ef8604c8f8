//! What the gateway does with the telemetry that lands in its log: print each record (the
//! default, for trying the gateway by hand), or count them for a load generator in another
//! process (`--telemetry-stats ADDR`).
//!
//! The counting consumer tails every partition of the telemetry log from where it stood at
//! start, takes each payload's first 8 bytes as its send time (Unix microseconds, big-endian, as
//! `mqtt_load` writes them) and keeps the latency. A TCP client of `ADDR` gets one JSON line,
//! `{"received":N,"p50_ms":…,"p99_ms":…}`, and the connection closes: the load generator polls
//! it until its messages have all arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use iot_core::{Log, Offset, PartitionId, ReadLimits, StoredRecord};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Records seen and their latencies (microseconds).
#[derive(Debug, Default)]
struct Counts {
    received: u64,
    latencies_us: Vec<u64>,
}

/// Tails every partition of `log` from its current end, calling `each` per record.
pub(crate) async fn tail(log: Arc<dyn Log>, each: impl Fn(&StoredRecord) + Clone + Send + 'static) {
    let mut tasks = Vec::new();
    for p in 0..log.partition_count() {
        let (log, each) = (log.clone(), each.clone());
        tasks.push(tokio::spawn(async move {
            let partition = PartitionId(p);
            let Ok(mut next) = log.next_offset(partition).await else {
                return;
            };
            loop {
                if log.wait_for(partition, next).await.is_err() {
                    return;
                }
                let Ok(records) = log.read(partition, next, ReadLimits::default()).await else {
                    return;
                };
                for stored in records {
                    each(&stored);
                    next = Offset(stored.offset.0 + 1);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Prints each record as it lands.
pub(crate) fn print(stored: &StoredRecord) {
    let headers: Vec<String> = stored
        .record
        .headers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "telemetry: device={} headers=[{}] payload={}",
        stored.record.key,
        headers.join(", "),
        String::from_utf8_lossy(&stored.record.payload)
    );
}

/// Counts the telemetry of `log` and answers `addr` with the counts; returns the bound address
/// and the task doing both.
pub(crate) async fn serve_stats(
    log: Arc<dyn Log>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let counting = {
        let counts = counts.clone();
        move |stored: &StoredRecord| {
            let latency = latency_of(&stored.record.payload);
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.received += 1;
            if let Some(l) = latency {
                counts.latencies_us.push(l);
            }
        }
    };
    let task = tokio::spawn(async move {
        let tailing = tokio::spawn(tail(log, counting));
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            let line = answer(&counts);
            tokio::spawn(async move {
                let _ = socket.write_all(line.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
        tailing.abort();
    });
    Ok((bound, task))
}

/// The JSON line a stats client gets.
fn answer(counts: &Mutex<Counts>) -> String {
    let (received, mut latencies) = {
        let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
        (counts.received, counts.latencies_us.clone())
    };
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    format!(
        "{{\"received\":{received},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}\n",
        pct(0.50),
        pct(0.99)
    )
}

/// Latency of one payload, from the send time in its first 8 bytes.
fn latency_of(payload: &[u8]) -> Option<u64> {
    let stamp = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .ok()?;
    Some(now.saturating_sub(stamp))
}
