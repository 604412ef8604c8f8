//! Answering queries: the planner's candidate set, then one page of records in the query's
//! order, with the token of the next page.

use std::cmp::Ordering;

use roaring::RoaringBitmap;

use super::{Engine, encode_page};
use crate::error::{Error, Result};
use crate::paging::{Page, PageRequest, Token};
use crate::query::{Query, Select};
use crate::stored::Stored;
use crate::value::SortKey;

/// Queries matching more than 1/`BROAD_FACTOR` of the records page through the device-id index
/// rather than ranking all their matches.
const BROAD_FACTOR: u64 = 50;

impl Engine {
    /// The candidate slots of `query` and whether each must still be checked against the whole
    /// condition.
    fn candidates(&self, query: &Query) -> (RoaringBitmap, bool) {
        use crate::query::Cond;
        let all = &self.live;
        match &query.filter {
            Cond::And(children) => {
                // Use the selective indexed conditions; leave a condition whose set is much
                // larger than the running intersection to be checked on the candidates instead.
                let mut indexed: Vec<(u64, &Cond)> = Vec::new();
                let mut residual = false;
                for c in children {
                    match self.indexes.estimate(c, all.len()) {
                        Some(e) => indexed.push((e, c)),
                        None => residual = true,
                    }
                }
                indexed.sort_by_key(|(e, _)| *e);
                let mut acc: Option<RoaringBitmap> = None;
                for (estimate, c) in indexed {
                    if let Some(a) = &acc
                        && estimate > a.len().saturating_mul(32).max(1024)
                    {
                        residual = true;
                        continue;
                    }
                    match &mut acc {
                        None => match self.indexes.cover(c, all) {
                            Some(cover) => {
                                residual |= !cover.exact;
                                acc = Some(cover.set);
                            }
                            None => residual = true,
                        },
                        Some(a) => {
                            if self.indexes.intersect(a, c, all) != Some(true) {
                                residual = true;
                            }
                        }
                    }
                }
                match acc {
                    Some(set) => (set, residual),
                    None => (all.clone(), true),
                }
            }
            filter => match self.indexes.cover(filter, all) {
                Some(cover) => (cover.set, !cover.exact),
                None => (all.clone(), true),
            },
        }
    }

    pub(crate) fn count(&self, query: &Query) -> u64 {
        let (candidates, residual) = self.candidates(query);
        let n = if residual {
            candidates
                .iter()
                .filter_map(|s| self.record_at(s))
                .filter(|r| query.filter.matches(*r))
                .count() as u64
        } else {
            candidates.len()
        };
        query.limit.map_or(n, |l| n.min(l))
    }

    pub(crate) fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        if query.select != Select::All {
            return Err(Error::InvalidInput {
                reason: "query() returns records: use count() for SELECT COUNT()".into(),
            });
        }
        if page.max_items == 0 || page.max_items > self.config.max_page_size {
            return Err(Error::InvalidInput {
                reason: format!(
                    "page size must be 1 to {}, got {}",
                    self.config.max_page_size, page.max_items
                ),
            });
        }
        let token = page
            .continuation
            .as_deref()
            .map(|t| Token::decode(t, query.fingerprint, query.order_by.len()))
            .transpose()?;
        let returned = token.as_ref().map_or(0, |t| t.n);
        let remaining = query.limit.map_or(u64::MAX, |l| l.saturating_sub(returned));
        let take = usize::try_from(remaining.min(page.max_items as u64)).unwrap_or(page.max_items);
        if take == 0 {
            return Ok(Page::new(Vec::new(), None));
        }
        let after: Option<(Vec<SortKey<'_>>, &str)> = token
            .as_ref()
            .map(|t| (t.k.iter().map(|k| k.as_key()).collect(), t.id.as_str()));

        let (candidates, residual) = self.candidates(query);
        // A broad query in device-id order: walk the id index from the token and stop after one
        // page, instead of ranking every match. Expected work: page size × (all / matches).
        if query.order_by.is_empty()
            && candidates.len().saturating_mul(BROAD_FACTOR) > self.live.len()
            && let Some(ordered) = self
                .indexes
                .ordered_strings("deviceId", after.as_ref().map(|(_, id)| *id))
        {
            let mut items: Vec<&Stored> = Vec::with_capacity(take + 1);
            for slot in ordered {
                if !candidates.contains(slot) {
                    continue;
                }
                let Some(record) = self.record_at(slot) else {
                    continue;
                };
                if residual && !query.filter.matches(record) {
                    continue;
                }
                items.push(record);
                if items.len() > take {
                    break;
                }
            }
            let more = items.len() > take;
            items.truncate(take);
            let continuation = match items.last() {
                Some(record)
                    if more && (returned + take as u64) < query.limit.unwrap_or(u64::MAX) =>
                {
                    Some(
                        Token::new(
                            query.fingerprint,
                            returned + items.len() as u64,
                            Vec::new(),
                            record.device_id().as_str().to_owned(),
                        )
                        .encode(),
                    )
                }
                _ => None,
            };
            std::hint::black_box(touch(items.iter().copied(), usize::MAX));
            return Ok(Page::encoded(encode_page(items.into_iter()), continuation));
        }
        let mut hits: Vec<(Vec<SortKey<'_>>, &Stored)> = Vec::new();
        // Every line of a candidate is touched with its slot (filtering, ORDER BY keys and
        // decoding read them) unless most candidates will only be compared by id: then only
        // the page's records, once chosen.
        let id_only = !residual && query.order_by.is_empty() && candidates.len() > take as u64;
        let lines = if id_only { 1 } else { usize::MAX };
        let mut slots = candidates.iter();
        let mut numbers: Vec<u32> = Vec::with_capacity(CHUNK);
        let mut records: Vec<&Stored> = Vec::with_capacity(CHUNK);
        loop {
            // A chunk of slots at a time: their numbers from the bitmap, then their records
            // in a loop that does nothing else. The slot table is large, so these loads miss
            // the cache; kept apart from the work on each record, many are in flight at once.
            numbers.clear();
            numbers.extend(slots.by_ref().take(CHUNK));
            if numbers.is_empty() {
                break;
            }
            records.clear();
            records.extend(numbers.iter().filter_map(|&slot| self.record_at(slot)));
            std::hint::black_box(touch(records.iter().copied(), lines));
            for &record in &records {
                if residual && !query.filter.matches(record) {
                    continue;
                }
                let keys = query.sort_keys(record);
                if let Some((after_keys, after_id)) = &after
                    && query
                        .cmp_positions((&keys, record.device_id().as_str()), (after_keys, after_id))
                        != Ordering::Greater
                {
                    continue;
                }
                hits.push((keys, record));
            }
        }
        let cmp = |a: &(Vec<SortKey<'_>>, &Stored), b: &(Vec<SortKey<'_>>, &Stored)| {
            query.cmp_positions(
                (&a.0, a.1.device_id().as_str()),
                (&b.0, b.1.device_id().as_str()),
            )
        };
        let more = hits.len() > take;
        if more {
            hits.select_nth_unstable_by(take, cmp);
            hits.truncate(take);
        }
        if id_only {
            std::hint::black_box(touch(hits.iter().map(|(_, r)| *r), usize::MAX));
        }
        hits.sort_unstable_by(cmp);
        let continuation = match hits.last() {
            Some((keys, record))
                if more && (returned + take as u64) < query.limit.unwrap_or(u64::MAX) =>
            {
                Some(
                    Token::new(
                        query.fingerprint,
                        returned + hits.len() as u64,
                        keys.iter().map(|k| k.to_owned_key()).collect(),
                        record.device_id().as_str().to_owned(),
                    )
                    .encode(),
                )
            }
            _ => None,
        };
        Ok(Page::encoded(
            encode_page(hits.iter().map(|(_, r)| *r)),
            continuation,
        ))
    }
}

/// Slots whose records are looked up together (see [`Engine::query`]).
const CHUNK: usize = 256;

/// Bytes of a cache line.
const LINE: usize = 64;

/// Loads one byte of each of the first `lines` cache lines of each record's encoding, and the
/// first byte of its id, in one tight pass; returns a value made of them (for `black_box`, so
/// that the loads are kept).
///
/// The records of a query lie anywhere in a heap of hundreds of megabytes, so nearly every one
/// is a cache miss (and a TLB miss). Sorting by id and decoding would meet those misses one at
/// a time, each stalling the work that needs it; here the loads do not depend on each other,
/// so the CPU keeps many in flight and their waits overlap.
fn touch<'a>(records: impl Iterator<Item = &'a Stored>, lines: usize) -> u8 {
    let mut acc = 0u8;
    for record in records {
        let id = record.device_id().as_str().as_bytes();
        acc ^= id.first().copied().unwrap_or(0);
        for byte in record.bytes().iter().step_by(LINE).take(lines) {
            acc ^= *byte;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use iot_core::{DeviceId, Timestamp};
    use serde_json::json;

    use super::*;
    use crate::{DeviceDocument, RegistryConfig};

    /// A 100 × 100 grid of devices one degree apart, from (−50, −50) to (49, 49).
    fn grid() -> Engine {
        let mut engine = Engine::new(RegistryConfig::default()).unwrap();
        let mut version = 0;
        for i in 0..100i32 {
            for j in 0..100i32 {
                let id = DeviceId::new(format!("d-{i}-{j}")).unwrap();
                let doc = DeviceDocument {
                    metadata: json!({"location": {"lat": i - 50, "lon": j - 50}})
                        .as_object()
                        .cloned()
                        .unwrap(),
                    ..DeviceDocument::default()
                };
                let change = engine
                    .prepare_create(&id, doc, Timestamp::from_unix_millis(0))
                    .unwrap();
                version += 1;
                engine.apply(change, version);
            }
        }
        engine
    }

    #[test]
    fn geo_conditions_are_answered_from_the_indexes() {
        let engine = grid();
        // A box: exactly its 3 × 4 grid points, no check needed.
        let q: Query = "SELECT * FROM devices WHERE WITHIN_BOX(metadata.location, 0, 0, 2, 3)"
            .parse()
            .unwrap();
        let (candidates, residual) = engine.candidates(&q);
        assert_eq!((candidates.len(), residual), (12, false));
        assert_eq!(engine.count(&q), 12);
        // 150 km around (10, 10): the bounding box's 3 × 3 points are the candidates (of
        // 10 000), checked exactly: the four corners are 157 km away.
        let q: Query =
            "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 10, 10, 150000)"
                .parse()
                .unwrap();
        let (candidates, residual) = engine.candidates(&q);
        assert_eq!((candidates.len(), residual), (9, true));
        assert_eq!(engine.count(&q), 5);
        let q: Query =
            "SELECT * FROM devices WHERE WITHIN_BOX(metadata.location, -50, -50, -50, -50)"
                .parse()
                .unwrap();
        assert_eq!(engine.count(&q), 1);
        let q: Query = "SELECT * FROM devices WHERE deviceId != 'd-60-60' AND WITHIN_BOX(metadata.location, -50, -50, -50, -50)"
            .parse()
            .unwrap();
        assert_eq!(engine.count(&q), 1);
        // Beside another condition, and inside an OR (with the box holding the grid's corner), the
        // indexes still answer.
        let q: Query = "SELECT * FROM devices WHERE deviceId != 'd-60-60' AND \
             (WITHIN_DISTANCE(metadata.location, 10, 10, 150000) OR WITHIN_BOX(metadata.location, -50, -50, -50, -50))"
            .parse()
            .unwrap();
        let (candidates, residual) = engine.candidates(&q);
        assert_eq!((candidates.len(), residual), (10, true));
        // The circle's five less its centre (d-60-60), and the corner.
        assert_eq!(engine.count(&q), 5);
    }
}
