//! Criterion micro-benchmarks of appends: MemoryLog and FileLog (OS-buffered), batch sizes 1 and
//! 1000, 100-byte payloads. `cargo bench --bench log_append`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use iot_sdk::core::{Durability, FileLog, FileLogConfig, Log, MemoryLog, PartitionId, Record};

fn batch(n: usize) -> Vec<Record> {
    let payload = Bytes::from(vec![b'x'; 100]);
    (0..n)
        .map(|_| Record::new("device-0042", payload.clone()))
        .collect()
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = rt
        .block_on(FileLog::open(
            dir.path(),
            FileLogConfig::default()
                .partitions(1)
                .durability(Durability::OsBuffered),
        ))
        .unwrap();
    let memory = MemoryLog::new(1).unwrap();
    let logs: [(&str, &dyn Log); 2] = [("memory", &memory), ("file_buffered", &file)];
    let mut group = c.benchmark_group("append");
    for n in [1usize, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        for (name, log) in logs {
            group.bench_function(format!("{name}/batch_{n}"), |b| {
                b.iter_batched(
                    || batch(n),
                    |records| rt.block_on(log.append(PartitionId(0), records)).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
