//! Paging by a floating-point `ORDER BY` key: the continuation token must name the last record's
//! number exactly, or the next page starts before or after it. (serde_json's default parser can
//! read a float back one unit in the last place off, which made a descending query return its
//! last record again on every page and never end.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_core::DeviceId;
use iot_registry::{DeviceDocument, MemoryRegistry, PageRequest, Query, Registry};
use serde_json::json;

#[tokio::test]
async fn float_keys_page_one_record_at_a_time_to_the_end_in_both_directions() {
    const DEVICES: u64 = 400;
    let registry = MemoryRegistry::new();
    for n in 0..DEVICES {
        // Values with long decimal expansions, where a parse one ulp off shows.
        let doc =
            DeviceDocument::with_metadata(json!({"geo": {"lat": n as f64 / 7.0 + 0.1}})).unwrap();
        registry
            .create(&DeviceId::new(format!("d{n:04}")).unwrap(), doc)
            .await
            .unwrap();
    }
    for order in ["DESC", "ASC"] {
        let query = Query::parse(&format!(
            "SELECT * FROM devices ORDER BY metadata.geo.lat {order}"
        ))
        .unwrap();
        let mut seen = Vec::new();
        let mut page = registry
            .query(&query, &PageRequest::first(1))
            .await
            .unwrap();
        loop {
            seen.extend(page.device_ids().map(|id| id.to_string()));
            assert!(
                seen.len() <= DEVICES as usize,
                "{order}: more pages than devices (a token repeats its record): {:?}",
                &seen[seen.len() - 3..]
            );
            let Some(token) = page.continuation.take() else {
                break;
            };
            page = registry
                .query(&query, &PageRequest::next(1, token))
                .await
                .unwrap();
        }
        let mut expected: Vec<String> = (0..DEVICES).map(|n| format!("d{n:04}")).collect();
        if order == "DESC" {
            expected.reverse();
        }
        assert_eq!(seen, expected, "{order}");
    }
}
