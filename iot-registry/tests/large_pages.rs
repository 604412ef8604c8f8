//! Queries over a fleet large enough for the paths the small fleets of the proptests never
//! take: more candidates than the engine looks up at once, selective queries whose matches
//! outnumber the page (ranked by id only, the page's records chosen before they are read),
//! ORDER BY over hundreds of matches, and conditions left to be checked on the records. Every
//! page of every page size must give exactly what a scan of all records gives, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_core::DeviceId;
use iot_registry::{
    DeviceDocument, DeviceRecord, MemoryRegistry, PageRequest, Query, Registry, RegistryConfig,
};
use serde_json::json;

/// Enough that a value held by one device in 50 still has more than the engine's chunk of
/// 256 candidates, while staying below the share that pages through the id index instead.
const DEVICES: u64 = 13_500;

/// Ids are not created in id order, so that slot order and id order differ.
fn device(i: u64) -> (DeviceId, DeviceDocument) {
    let n = (i * 7919) % DEVICES;
    let doc = DeviceDocument::with_metadata(json!({
        "g": n % 50,
        "k": (n * 31) % 1000,
        "note": if n.is_multiple_of(3) { "x" } else { "y" },
        "geo": {"lat": n as f64 / 7.0},
    }))
    .unwrap();
    (DeviceId::new(format!("d{n:06}")).unwrap(), doc)
}

async fn fleet(config: RegistryConfig) -> (MemoryRegistry, Vec<DeviceRecord>) {
    let registry = MemoryRegistry::with_config(config).unwrap();
    let mut all = Vec::new();
    for i in 0..DEVICES {
        let (id, doc) = device(i);
        all.push(registry.create(&id, doc).await.unwrap());
    }
    // Some deletes and rewrites, so that slots are reused.
    for i in (0..DEVICES).step_by(97) {
        let (id, doc) = device(i);
        registry.delete(&id, None).await.unwrap();
        registry.create(&id, doc).await.unwrap();
    }
    let mut current = Vec::new();
    for record in &all {
        current.push(registry.get(&record.device_id).await.unwrap().unwrap());
    }
    (registry, current)
}

/// Every page of `text` at `page_size`, concatenated, against the scan.
async fn check(registry: &MemoryRegistry, all: &[DeviceRecord], text: &str, page_size: usize) {
    let query = Query::parse(text).unwrap();
    let mut expected: Vec<&DeviceRecord> = all.iter().filter(|r| query.matches(r)).collect();
    expected.sort_by(|a, b| query.cmp_records(a, b));
    if let Some(limit) = query.limit() {
        expected.truncate(usize::try_from(limit).unwrap());
    }
    let mut got = Vec::new();
    let mut request = PageRequest::first(page_size);
    loop {
        let page = registry.query(&query, &request).await.unwrap();
        assert!(page.len() <= page_size, "{text}");
        got.extend(page.records().unwrap());
        assert!(
            got.len() <= expected.len() + page_size,
            "{text} {page_size}: runaway paging"
        );
        match page.continuation {
            Some(token) => request = PageRequest::next(page_size, token),
            None => break,
        }
    }
    let got: Vec<&DeviceRecord> = got.iter().collect();
    assert_eq!(got.len(), expected.len(), "{text}, pages of {page_size}");
    assert!(got == expected, "{text}, pages of {page_size}");
}

const QUERIES: [&str; 5] = [
    // 270 matches of 13 500: ranked by id, not paged through the id index.
    "SELECT * FROM devices WHERE metadata.g = 7",
    "SELECT * FROM devices WHERE metadata.g = 7 AND metadata.k >= 500",
    "SELECT * FROM devices WHERE metadata.g = 7 LIMIT 100",
    "SELECT * FROM devices WHERE metadata.k < 30 ORDER BY metadata.k DESC",
    "SELECT * FROM devices WHERE metadata.g IN [3, 4] AND metadata.note = 'x' ORDER BY metadata.k LIMIT 300",
];

#[tokio::test]
async fn pages_of_a_large_fleet_equal_a_scan() {
    let (registry, all) = fleet(RegistryConfig::default()).await;
    for text in QUERIES {
        for page_size in [1, 7, 100, 1000] {
            check(&registry, &all, text, page_size).await;
        }
    }
}

#[tokio::test]
async fn conditions_checked_on_the_records_equal_a_scan() {
    // `note` unindexed: its condition is checked on each candidate.
    let config = RegistryConfig::default().unindexed_paths(vec!["metadata.note".to_owned()]);
    let (registry, all) = fleet(config).await;
    for text in QUERIES {
        for page_size in [7, 1000] {
            check(&registry, &all, text, page_size).await;
        }
    }
}
