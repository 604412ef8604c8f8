//! The disk's own fsync rate, measured in a benchmark's run beside the figure it bounds: one
//! writer appending 100 bytes and calling `fdatasync`, over and over, in the directory the store
//! under test writes to. A store without group commit acknowledges at most this many durable
//! writes a second; the benchmarks print their figure divided by it.
//!
//! Shared by the benchmark examples through `#[path = "support/disk_probe.rs"] mod disk_probe;`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Append + `fdatasync` cycles per second of one writer in `dir`, over about `secs` seconds.
#[allow(
    clippy::disallowed_methods,
    reason = "the synchronous fsync baseline a benchmark compares against"
)]
pub(crate) fn fsync_rate(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("fsync-probe.bin");
    let mut file = std::fs::File::create(&path).expect("create the fsync probe");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        file.write_all(&[0x5A; 100]).expect("write the fsync probe");
        file.sync_data().expect("fsync the fsync probe");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).expect("remove the fsync probe");
    rate
}
