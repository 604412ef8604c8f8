//! Model test: random sequences of append / read / commit / reopen against MemoryLog and FileLog
//! agree with a plain in-memory model (vectors of records and a map of commits).

use std::collections::HashMap;
use std::path::Path;

use iot_core::{
    Durability, Error, FileLog, FileLogConfig, GroupName, Log, MemoryLog, Offset, PartitionId,
    ReadLimits, Record,
};
use proptest::prelude::*;

const PARTITIONS: u32 = 2;

#[derive(Clone, Debug)]
enum Op {
    Append {
        partition: u32,
        records: Vec<(u8, u16, bool)>,
    },
    Read {
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    },
    Commit {
        group: u8,
        partition: u32,
        offset: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTITIONS, prop::collection::vec((0u8..20, 0u16..600, any::<bool>()), 1..12))
            .prop_map(|(partition, records)| Op::Append { partition, records }),
        4 => (0..PARTITIONS, 0u64..80, 1usize..20, 1usize..4000)
            .prop_map(|(partition, from, max_records, max_bytes)| Op::Read { partition, from, max_records, max_bytes }),
        2 => (0u8..3, 0..PARTITIONS, 0u64..80)
            .prop_map(|(group, partition, offset)| Op::Commit { group, partition, offset }),
        1 => Just(Op::Reopen),
    ]
}

fn make_record(seq: usize, (key_len, payload_len, with_time): (u8, u16, bool)) -> Record {
    let key: String = "k".repeat(key_len as usize);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i as usize + seq) as u8).collect();
    let mut r = Record::new(key, payload).with_header("seq", seq.to_string());
    if with_time {
        r = r.with_device_time(iot_core::Timestamp::from_unix_micros(seq as u64 * 1000));
    }
    r
}

#[derive(Default)]
struct Model {
    partitions: Vec<Vec<Record>>,
    commits: HashMap<(u8, u32), u64>,
}

fn expected_read(
    records: &[Record],
    from: usize,
    max_records: usize,
    max_bytes: usize,
) -> Vec<Record> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for r in records.iter().skip(from).take(max_records) {
        let size = r.size_bytes();
        if !out.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        out.push(r.clone());
    }
    out
}

fn file_config() -> FileLogConfig {
    FileLogConfig::default()
        .partitions(PARTITIONS)
        .durability(Durability::OsBuffered)
        .segment_bytes(2048)
        .index_interval_bytes(200)
}

async fn open(dir: Option<&Path>) -> Box<dyn Log> {
    match dir {
        Some(d) => Box::new(FileLog::open(d, file_config()).await.expect("open")),
        None => Box::new(MemoryLog::new(PARTITIONS).expect("log")),
    }
}

async fn run(ops: Vec<Op>, dir: Option<&Path>) -> Result<(), TestCaseError> {
    let mut log = open(dir).await;
    let mut model = Model {
        partitions: vec![Vec::new(); PARTITIONS as usize],
        ..Model::default()
    };
    let mut seq = 0;
    for op in ops {
        match op {
            Op::Append { partition, records } => {
                let batch: Vec<Record> = records
                    .into_iter()
                    .map(|r| {
                        seq += 1;
                        make_record(seq, r)
                    })
                    .collect();
                let a = log
                    .append(PartitionId(partition), batch.clone())
                    .await
                    .expect("append");
                let m = &mut model.partitions[partition as usize];
                prop_assert_eq!(a.first, Offset(m.len() as u64));
                m.extend(batch);
            }
            Op::Read {
                partition,
                from,
                max_records,
                max_bytes,
            } => {
                let m = &model.partitions[partition as usize];
                let limits = ReadLimits {
                    max_records,
                    max_bytes,
                };
                let got = log.read(PartitionId(partition), Offset(from), limits).await;
                if from as usize > m.len() {
                    prop_assert!(matches!(got, Err(Error::OffsetBeyondEnd { .. })), "{got:?}");
                } else {
                    let got: Vec<Record> =
                        got.expect("read").into_iter().map(|r| r.record).collect();
                    prop_assert_eq!(got, expected_read(m, from as usize, max_records, max_bytes));
                }
            }
            Op::Commit {
                group,
                partition,
                offset,
            } => {
                let name = GroupName::new(format!("g{group}")).expect("name");
                let got = log
                    .commit(&name, PartitionId(partition), Offset(offset))
                    .await;
                if offset as usize > model.partitions[partition as usize].len() {
                    prop_assert!(matches!(got, Err(Error::OffsetBeyondEnd { .. })), "{got:?}");
                } else {
                    got.expect("commit");
                    model.commits.insert((group, partition), offset);
                }
            }
            Op::Reopen => {
                if dir.is_some() {
                    drop(log);
                    log = open(dir).await;
                }
            }
        }
        // Offsets and commits agree after every step.
        for p in 0..PARTITIONS {
            let next = log.next_offset(PartitionId(p)).await.expect("next");
            prop_assert_eq!(next, Offset(model.partitions[p as usize].len() as u64));
            for g in 0..3u8 {
                let name = GroupName::new(format!("g{g}")).expect("name");
                let c = log
                    .committed(&name, PartitionId(p))
                    .await
                    .expect("committed");
                prop_assert_eq!(c, model.commits.get(&(g, p)).copied().map(Offset));
            }
        }
    }
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_log_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        block_on(run(ops, None))?;
    }

    #[test]
    fn file_log_agrees_with_the_model_across_reopens(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(run(ops, Some(dir.path())))?;
    }
}
