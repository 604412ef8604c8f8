//! A `Registry` as an integrator would write it outside this crate: rows of plain columns in a
//! `Mutex<BTreeMap>` (standing in for a database table), records rebuilt through the public
//! constructors, and queries answered by a scan that reads the query only through its public
//! view (`Query::condition`, `Query::order_by`, `Query::limit`, `PageToken`), the way a backend
//! translating queries to SQL would read them.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_registry::query::{Condition, Field, FieldRoot, Literal};
use iot_registry::{
    DEFAULT_PAGE_SIZE, DeviceDocument, DeviceRecord, DocumentLimits, ETag, Error, Page,
    PageRequest, PageToken, Query, Registry, Result, Select,
};
use serde_json::{Map, Value};

const BACKEND: &str = "btreemap";

/// One row: every column a plain value, as a SQL table would hold it.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    metadata: String,
    tags: String,
    state_ref: Option<String>,
    etag: String,
    created_micros: u64,
    updated_micros: u64,
}

/// The "database": rows by device id and the etag sequence.
#[derive(Debug, Default)]
pub(crate) struct Db {
    pub(crate) rows: BTreeMap<String, Row>,
    next_version: u64,
}

/// A handle on a shared [`Db`].
#[derive(Debug)]
pub(crate) struct BTreeMapRegistry {
    db: Arc<Mutex<Db>>,
    limits: DocumentLimits,
}

impl BTreeMapRegistry {
    pub(crate) fn new(db: Arc<Mutex<Db>>, limits: DocumentLimits) -> Self {
        BTreeMapRegistry { db, limits }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Db>> {
        // A poisoned lock is this backend's own failure, reported the way a lost database
        // connection would be.
        self.db
            .lock()
            .map_err(|_| Error::backend(BACKEND, "the table lock is poisoned", false))
    }
}

fn encode_map(map: &Map<String, Value>) -> Result<String> {
    serde_json::to_string(map).map_err(|e| Error::backend(BACKEND, e, false))
}

fn decode_map(column: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(column).map_err(|e| Error::backend(BACKEND, e, false))
}

fn row_of(record: &DeviceRecord) -> Result<Row> {
    Ok(Row {
        metadata: encode_map(&record.metadata)?,
        tags: encode_map(&record.tags)?,
        state_ref: record.state_ref.clone(),
        etag: record.etag.as_str().to_owned(),
        created_micros: record.created.as_unix_micros(),
        updated_micros: record.updated.as_unix_micros(),
    })
}

fn record_of(id: &str, row: &Row) -> Result<DeviceRecord> {
    let device_id = DeviceId::new(id).map_err(|e| Error::backend(BACKEND, e, false))?;
    let doc = DeviceDocument {
        metadata: decode_map(&row.metadata)?,
        tags: decode_map(&row.tags)?,
        state_ref: row.state_ref.clone(),
    };
    Ok(DeviceRecord::new(
        device_id,
        doc,
        ETag::new(row.etag.clone()),
        Timestamp::from_unix_micros(row.created_micros),
        Timestamp::from_unix_micros(row.updated_micros),
    ))
}

impl Db {
    fn current(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<DeviceRecord> {
        let row = self
            .rows
            .get(id.as_str())
            .ok_or_else(|| Error::NotFound { id: id.clone() })?;
        let record = record_of(id.as_str(), row)?;
        if let Some(expected) = if_match
            && expected != &record.etag
        {
            return Err(Error::PreconditionFailed {
                id: id.clone(),
                expected: expected.clone(),
                actual: record.etag,
            });
        }
        Ok(record)
    }

    /// Stores `doc` as the next version of `id`.
    fn put(
        &mut self,
        id: &DeviceId,
        doc: DeviceDocument,
        created: Timestamp,
        updated: Timestamp,
    ) -> Result<DeviceRecord> {
        // Etags come from one sequence that only grows, so none is ever handed out twice.
        self.next_version += 1;
        let etag = ETag::new(format!("v{}", self.next_version));
        let record = DeviceRecord::new(id.clone(), doc, etag, created, updated);
        self.rows.insert(id.as_str().to_owned(), row_of(&record)?);
        Ok(record)
    }

    fn records(&self) -> Result<Vec<DeviceRecord>> {
        self.rows
            .iter()
            .map(|(id, row)| record_of(id, row))
            .collect()
    }
}

/// What `field` holds in `record`: `None` when it is not defined there.
fn resolve(field: &Field<'_>, record: &DeviceRecord) -> Option<Value> {
    let map = match field.root() {
        FieldRoot::DeviceId => {
            return field
                .segments()
                .is_empty()
                .then(|| Value::String(record.device_id.as_str().to_owned()));
        }
        FieldRoot::StateRef => {
            return match (&record.state_ref, field.segments().is_empty()) {
                (Some(s), true) => Some(Value::String(s.clone())),
                _ => None,
            };
        }
        FieldRoot::Metadata => &record.metadata,
        FieldRoot::Tags => &record.tags,
        other => panic!("a field root this backend does not know: {other:?}"),
    };
    let Some((first, rest)) = field.segments().split_first() else {
        return Some(Value::Object(map.clone()));
    };
    let mut value = map.get(first)?;
    for segment in rest {
        value = value.as_object()?.get(segment)?;
    }
    Some(value.clone())
}

fn is_composite(v: &Value) -> bool {
    v.is_object() || v.is_array()
}

/// The `WHERE` clause, evaluated the way the view's documentation says.
fn matches(condition: &Condition<'_>, record: &DeviceRecord) -> bool {
    match condition {
        Condition::Const(b) => *b,
        Condition::Compare { field, op, value } => match resolve(field, record) {
            None => false,
            Some(found) => op.holds(value.compare(&found)),
        },
        Condition::In { field, values } => match resolve(field, record) {
            Some(found) if !is_composite(&found) => values
                .iter()
                .any(|v| v.compare(&found) == Some(Ordering::Equal)),
            _ => false,
        },
        Condition::StartsWith { field, prefix } => matches!(
            resolve(field, record),
            Some(Value::String(s)) if s.starts_with(prefix)
        ),
        Condition::IsDefined(field) => resolve(field, record).is_some(),
        Condition::Within { lat, lon, area, .. } => {
            match (resolve(lat, record), resolve(lon, record)) {
                (Some(Value::Number(lat)), Some(Value::Number(lon))) => {
                    match (lat.as_f64(), lon.as_f64()) {
                        (Some(lat), Some(lon)) => area.contains(lat, lon),
                        _ => false,
                    }
                }
                _ => false,
            }
        }
        Condition::Not(c) => !matches(c, record),
        Condition::And(cs) => cs.iter().all(|c| matches(c, record)),
        Condition::Or(cs) => cs.iter().any(|c| matches(c, record)),
        other => panic!("a condition this backend does not know: {other:?}"),
    }
}

/// `ORDER BY` rank of a value's class: undefined and composites first, then null, booleans,
/// numbers, strings.
fn sort_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let rank = |v: Option<&Value>| match v {
        None | Some(Value::Object(_) | Value::Array(_)) => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
    };
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(x @ Value::Number(_)), Some(Value::Number(y))) => {
            y.as_f64().map_or(Ordering::Equal, |y| {
                Literal::Number(y).compare(x).unwrap_or(Ordering::Equal)
            })
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => Ordering::Equal,
    })
}

fn order(query: &Query, a: &DeviceRecord, b: &DeviceRecord) -> Ordering {
    for key in query.order_by() {
        let (va, vb) = (resolve(&key.field, a), resolve(&key.field, b));
        let ord = sort_cmp(va.as_ref(), vb.as_ref());
        let ord = if key.descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.device_id.cmp(&b.device_id)
}

#[async_trait]
impl Registry for BTreeMapRegistry {
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        let mut db = self.lock()?;
        if db.rows.contains_key(id.as_str()) {
            return Err(Error::AlreadyExists { id: id.clone() });
        }
        self.limits.check_document(&doc)?;
        let now = Timestamp::now();
        db.put(id, doc, now, now)
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        let db = self.lock()?;
        db.rows
            .get(id.as_str())
            .map(|row| record_of(id.as_str(), row))
            .transpose()
    }

    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let mut db = self.lock()?;
        let current = db.current(id, if_match)?;
        self.limits.check_document(&doc)?;
        db.put(id, doc, current.created, Timestamp::now())
    }

    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let mut db = self.lock()?;
        let current = db.current(id, if_match)?;
        let created = current.created;
        let doc = current.into_document().merged(patch, &self.limits)?;
        self.limits.check_document(&doc)?;
        db.put(id, doc, created, Timestamp::now())
    }

    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        let mut db = self.lock()?;
        db.current(id, if_match)?;
        db.rows.remove(id.as_str());
        Ok(())
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        if query.select() != Select::All {
            return Err(Error::InvalidInput {
                reason: "query() returns records: use count() for SELECT COUNT()".into(),
            });
        }
        if page.max_items == 0 || page.max_items > DEFAULT_PAGE_SIZE {
            return Err(Error::InvalidInput {
                reason: format!("page size must be 1 to {DEFAULT_PAGE_SIZE}"),
            });
        }
        let token = page
            .continuation
            .as_deref()
            .map(|text| PageToken::decode(query, text))
            .transpose()?;
        let returned = token.as_ref().map_or(0, PageToken::returned);
        let limit = query.limit().unwrap_or(u64::MAX);
        let take = usize::try_from(limit.saturating_sub(returned))
            .unwrap_or(usize::MAX)
            .min(page.max_items);
        let condition = query.condition();
        let mut hits: Vec<DeviceRecord> = self
            .lock()?
            .records()?
            .into_iter()
            .filter(|r| matches(&condition, r))
            .filter(|r| token.as_ref().is_none_or(|t| t.is_after(query, r)))
            .collect();
        hits.sort_by(|a, b| order(query, a, b));
        let more = hits.len() > take;
        hits.truncate(take);
        let continuation = match hits.last() {
            Some(last) if more && returned + (take as u64) < limit => {
                Some(PageToken::after(query, last, returned + hits.len() as u64).encode())
            }
            _ => None,
        };
        Ok(Page::new(hits, continuation))
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        let condition = query.condition();
        let n = self
            .lock()?
            .records()?
            .iter()
            .filter(|r| matches(&condition, r))
            .count() as u64;
        Ok(query.limit().map_or(n, |l| n.min(l)))
    }
}
