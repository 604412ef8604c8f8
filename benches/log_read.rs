//! Criterion micro-benchmarks of reads: 1000 records of 100 bytes from a MemoryLog and from a
//! FileLog (page cache warm), at the head and in the middle of a partition.
//! `cargo bench --bench log_read`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iot_sdk::core::{
    Durability, FileLog, FileLogConfig, Log, MemoryLog, Offset, PartitionId, ReadLimits, Record,
};

const RECORDS: u64 = 200_000;

fn fill(rt: &tokio::runtime::Runtime, log: &dyn Log) {
    let payload = Bytes::from(vec![b'x'; 100]);
    for _ in 0..RECORDS / 1000 {
        let batch = (0..1000)
            .map(|_| Record::new("device-0042", payload.clone()))
            .collect();
        rt.block_on(log.append(PartitionId(0), batch)).unwrap();
    }
}

fn reads(c: &mut Criterion) {
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
    fill(&rt, &file);
    fill(&rt, &memory);
    let logs: [(&str, &dyn Log); 2] = [("memory", &memory), ("file", &file)];
    let mut group = c.benchmark_group("read_1000");
    group.throughput(Throughput::Elements(1000));
    for (name, log) in logs {
        for (at, offset) in [("start", 0), ("middle", RECORDS / 2 + 17)] {
            group.bench_function(format!("{name}/{at}"), |b| {
                b.iter(|| {
                    rt.block_on(log.read(PartitionId(0), Offset(offset), ReadLimits::records(1000)))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
