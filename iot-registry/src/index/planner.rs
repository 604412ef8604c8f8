//! The planner's side of the indexes: the exact slot set of a condition, a cheap size estimate,
//! and ordered walks, all answered from the postings without reading records.

use std::ops::Bound;

use roaring::RoaringBitmap;

use super::Indexes;
use super::postings::{PathIndex, Posting};
use crate::query::{CmpOp, Cond, GeoArea, Path};
use crate::value::{F64Key, ScalarKey, class_bounds};

/// A set of slots holding every slot that satisfies a condition; `exact` when it holds no
/// other.
#[derive(Debug)]
pub(crate) struct Cover {
    pub(crate) set: RoaringBitmap,
    pub(crate) exact: bool,
}

/// How many keys of a range the planner reads to estimate its size before giving up and
/// assuming it is large.
const ESTIMATE_KEYS: usize = 64;

impl Indexes {
    /// The exact set of slots satisfying `cond`, or `None` if some part of it is not indexed.
    /// `all` is the set of live slots.
    pub(crate) fn exact(&self, cond: &Cond, all: &RoaringBitmap) -> Option<RoaringBitmap> {
        let empty = RoaringBitmap::new;
        Some(match cond {
            Cond::Const(true) => all.clone(),
            Cond::Const(false) => empty(),
            Cond::Cmp { path, op, value } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let Some(index) = self.path(path) else {
                    return Some(empty());
                };
                match op {
                    CmpOp::Eq => index.eq_set(value),
                    CmpOp::Ne => &index.defined - &index.eq_set(value),
                    _ => {
                        let mut out = empty();
                        for (_, posting) in index.values.range(range_of(*op, value)) {
                            posting.add_to(&mut out);
                        }
                        out
                    }
                }
            }
            Cond::In { path, values } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let mut out = empty();
                if let Some(index) = self.path(path) {
                    for v in values {
                        if let Some(p) = index.values.get(v) {
                            p.add_to(&mut out);
                        }
                    }
                }
                out
            }
            Cond::StartsWith { path, prefix } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let mut out = empty();
                if let Some(index) = self.path(path) {
                    for (_, posting) in prefix_range(index, prefix) {
                        posting.add_to(&mut out);
                    }
                }
                out
            }
            Cond::IsDefined(path) => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path).map_or_else(empty, |i| i.defined.clone())
            }
            Cond::Within { lat, lon, area, .. } => {
                if !area.bounds_are_exact() {
                    return None;
                }
                self.geo_bounds(lat, lon, area)?
            }
            Cond::Not(inner) => all - &self.exact(inner, all)?,
            Cond::And(children) => {
                // Smallest first, so that the running intersection stays small.
                let mut ordered = children
                    .iter()
                    .map(|c| Some((self.estimate(c, all.len())?, c)))
                    .collect::<Option<Vec<_>>>()?;
                ordered.sort_by_key(|(estimate, _)| *estimate);
                let mut acc: Option<RoaringBitmap> = None;
                for (_, c) in ordered {
                    match &mut acc {
                        None => acc = Some(self.exact(c, all)?),
                        Some(a) => {
                            if self.intersect(a, c, all) != Some(true) {
                                return None;
                            }
                        }
                    }
                    if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                }
                acc.unwrap_or_else(|| all.clone())
            }
            Cond::Or(children) => {
                let mut out = empty();
                for c in children {
                    out |= self.exact(c, all)?;
                }
                out
            }
        })
    }

    /// Narrows `acc` to the slots satisfying `cond`: `Some(true)` if exactly, `Some(false)` if
    /// to a superset (a distance condition's bounding box: the candidates must still be
    /// checked), `None` (and `acc` unchanged) if some part of `cond` is not indexed. An equality
    /// is intersected with its posting in place: copying the posting of a common value (a tenth
    /// of a million devices) first would cost more than the intersection itself.
    pub(crate) fn intersect(
        &self,
        acc: &mut RoaringBitmap,
        cond: &Cond,
        all: &RoaringBitmap,
    ) -> Option<bool> {
        if let Cond::Cmp {
            path,
            op: CmpOp::Eq,
            value,
        } = cond
            && self.is_indexed(&path.text)
        {
            match self.path(path).and_then(|index| index.values.get(value)) {
                None => acc.clear(),
                Some(posting) => posting.retain_in(acc),
            }
            return Some(true);
        }
        let cover = self.cover(cond, all)?;
        *acc &= cover.set;
        Some(cover.exact)
    }

    /// A set holding every slot that satisfies `cond`, and whether it holds only those; `None`
    /// if some part of `cond` is not indexed. Beyond [`Indexes::exact`], it answers a distance
    /// condition (with its bounding box) and `AND`s and `OR`s over one.
    pub(crate) fn cover(&self, cond: &Cond, all: &RoaringBitmap) -> Option<Cover> {
        match cond {
            Cond::Within { lat, lon, area, .. } => Some(Cover {
                set: self.geo_bounds(lat, lon, area)?,
                exact: area.bounds_are_exact(),
            }),
            Cond::And(children) => {
                // A child without a set is left for the check of the candidates; the others'
                // intersection still holds every match.
                let mut acc: Option<RoaringBitmap> = None;
                let mut exact = true;
                for c in children {
                    match &mut acc {
                        None => match self.cover(c, all) {
                            Some(cover) => {
                                exact &= cover.exact;
                                acc = Some(cover.set);
                            }
                            None => exact = false,
                        },
                        Some(a) => exact &= self.intersect(a, c, all) == Some(true),
                    }
                }
                match acc {
                    Some(set) => Some(Cover { set, exact }),
                    None if children.is_empty() => Some(Cover {
                        set: all.clone(),
                        exact: true,
                    }),
                    None => None,
                }
            }
            Cond::Or(children) => {
                let mut set = RoaringBitmap::new();
                let mut exact = true;
                for c in children {
                    let cover = self.cover(c, all)?;
                    exact &= cover.exact;
                    set |= cover.set;
                }
                Some(Cover { set, exact })
            }
            _ => Some(Cover {
                set: self.exact(cond, all)?,
                exact: true,
            }),
        }
    }

    /// The slots whose `lat` and `lon` lie in `area`'s bounds; `None` if either member is not
    /// indexed.
    fn geo_bounds(&self, lat: &Path, lon: &Path, area: &GeoArea) -> Option<RoaringBitmap> {
        if !self.is_indexed(&lat.text) || !self.is_indexed(&lon.text) {
            return None;
        }
        let (Some(lat_index), Some(lon_index)) = (self.path(lat), self.path(lon)) else {
            return Some(RoaringBitmap::new());
        };
        let bounds = area.bounds();
        let mut out = RoaringBitmap::new();
        for (_, posting) in lat_index.values.range(number_range(bounds.lat)) {
            posting.add_to(&mut out);
        }
        if out.is_empty() {
            return Some(out);
        }
        let mut lons = RoaringBitmap::new();
        for range in bounds.lon.into_iter().flatten() {
            for (_, posting) in lon_index.values.range(number_range(range)) {
                posting.add_to(&mut lons);
            }
        }
        out &= lons;
        Some(out)
    }

    /// A cheap upper-bound estimate of how many slots satisfy `cond`, or `None` if it cannot be
    /// answered from the indexes.
    pub(crate) fn estimate(&self, cond: &Cond, all: u64) -> Option<u64> {
        Some(match cond {
            Cond::Const(true) => all,
            Cond::Const(false) => 0,
            Cond::Cmp { path, op, value } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                let Some(index) = self.path(path) else {
                    return Some(0);
                };
                match op {
                    CmpOp::Eq => index.eq_len(value),
                    CmpOp::Ne => index.defined.len(),
                    _ => bounded_sum(index.values.range(range_of(*op, value)), all),
                }
            }
            Cond::In { path, values } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path)
                    .map_or(0, |i| values.iter().map(|v| i.eq_len(v)).sum())
            }
            Cond::StartsWith { path, prefix } => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path)
                    .map_or(0, |i| bounded_sum(prefix_range(i, prefix), all))
            }
            Cond::IsDefined(path) => {
                if !self.is_indexed(&path.text) {
                    return None;
                }
                self.path(path).map_or(0, |i| i.defined.len())
            }
            Cond::Within { lat, lon, area, .. } => {
                if !self.is_indexed(&lat.text) || !self.is_indexed(&lon.text) {
                    return None;
                }
                let (Some(lat_index), Some(lon_index)) = (self.path(lat), self.path(lon)) else {
                    return Some(0);
                };
                let bounds = area.bounds();
                let by_lat = bounded_sum(lat_index.values.range(number_range(bounds.lat)), all);
                let by_lon = bounds
                    .lon
                    .into_iter()
                    .flatten()
                    .map(|r| bounded_sum(lon_index.values.range(number_range(r)), all))
                    .fold(0u64, u64::saturating_add);
                by_lat.min(by_lon)
            }
            Cond::Not(inner) => {
                self.estimate(inner, all)?;
                all
            }
            Cond::And(children) => {
                let mut min = all;
                for c in children {
                    min = min.min(self.estimate(c, all)?);
                }
                min
            }
            Cond::Or(children) => {
                let mut sum = 0u64;
                for c in children {
                    sum = sum.saturating_add(self.estimate(c, all)?);
                }
                sum.min(all)
            }
        })
    }

    /// The slots of `path`'s string values in key order, starting after `after` — with the
    /// `deviceId` index this lists records in device-id order. `None` if `path` is not indexed.
    pub(crate) fn ordered_strings<'a>(
        &'a self,
        path: &str,
        after: Option<&str>,
    ) -> Option<impl Iterator<Item = u32> + 'a> {
        if !self.is_indexed(path) {
            return None;
        }
        let index = self.paths.get(path);
        let low = match after {
            Some(a) => Bound::Excluded(ScalarKey::Str(a.into())),
            None => Bound::Included(ScalarKey::Str("".into())),
        };
        Some(
            index
                .into_iter()
                .flat_map(move |i| i.values.range((low.clone(), Bound::Unbounded)))
                .flat_map(|(_, posting)| posting.iter()),
        )
    }
}

/// A closed range of numbers as index keys.
fn number_range((low, high): (f64, f64)) -> (Bound<ScalarKey>, Bound<ScalarKey>) {
    (
        Bound::Included(ScalarKey::Num(F64Key::new(low))),
        Bound::Included(ScalarKey::Num(F64Key::new(high.max(low)))),
    )
}

/// The key range of `path <op> value` within the value's class (never a reversed range, which
/// `BTreeMap::range` would refuse).
fn range_of(op: CmpOp, value: &ScalarKey) -> (Bound<ScalarKey>, Bound<ScalarKey>) {
    let (low, high) = class_bounds(value);
    match op {
        CmpOp::Lt => (low, Bound::Excluded(value.clone())),
        CmpOp::Le => (low, Bound::Included(value.clone())),
        CmpOp::Gt => (Bound::Excluded(value.clone()), high),
        CmpOp::Ge => (Bound::Included(value.clone()), high),
        // Not called for = and != (answered by lookups), but correct if it were.
        CmpOp::Eq | CmpOp::Ne => (
            Bound::Included(value.clone()),
            Bound::Included(value.clone()),
        ),
    }
}

fn prefix_range<'a>(
    index: &'a PathIndex,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a ScalarKey, &'a Posting)> + 'a {
    index
        .values
        .range((
            Bound::Included(ScalarKey::Str(prefix.into())),
            Bound::Unbounded,
        ))
        .take_while(move |(k, _)| matches!(k, ScalarKey::Str(s) if s.starts_with(prefix)))
}

/// Sums posting sizes over at most [`ESTIMATE_KEYS`] keys; beyond that, assumes `all`.
fn bounded_sum<'a>(mut iter: impl Iterator<Item = (&'a ScalarKey, &'a Posting)>, all: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..ESTIMATE_KEYS {
        match iter.next() {
            Some((_, p)) => sum += p.len(),
            None => return sum,
        }
    }
    if iter.next().is_some() { all } else { sum }
}
