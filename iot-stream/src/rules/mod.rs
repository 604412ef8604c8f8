//! The rule language: a subset of Azure Stream Analytics SQL compiled to the built-in operators.
//!
//! ```sql
//! SELECT deviceId, AVG(temperature) AS t, System.Timestamp() AS windowEnd
//! INTO alerts
//! FROM telemetry TIMESTAMP BY time
//! WHERE temperature IS NOT NULL
//! GROUP BY deviceId, TumblingWindow(second, 30)
//! HAVING t > 80
//! ```
//!
//! * `SELECT` items are expressions with optional `AS` names, or `*` (record-by-record rules).
//!   Without `GROUP BY` a rule maps each record (filter and projection); with it, items may use
//!   the `GROUP BY` keys, aggregates `COUNT(*)`, `COUNT(x)`, `SUM`, `AVG`, `MIN`, `MAX`, `LAST`, and
//!   `System.Timestamp()` (the window end).
//! * Expressions: payload fields (`temperature`, nested `a.b`), `deviceId` (the payload field,
//!   else the record key), `header('subject')`, `EventEnqueuedUtcTime`, number / string /
//!   boolean / `NULL` literals, `+ - * / %`, comparisons, `AND OR NOT`, `IS [NOT] NULL`.
//! * `FROM topic` names the input topic; `INTO topic` the output (default `output`).
//! * `TIMESTAMP BY expr` sets event time: an RFC 3339 string or a number of Unix milliseconds.
//!   Without it the event time is the record's enqueued time (arrival), as in ASA.
//! * `GROUP BY` keys plus exactly one of `TumblingWindow(unit, size)`,
//!   `HoppingWindow(unit, size, hop)`, `SlidingWindow(unit, size)`,
//!   `SessionWindow(unit, timeout, maxDuration)`; `HAVING` filters windows and may use `SELECT`
//!   names.
//! * Anything else is [`Error::Rule`] with the line and column of the
//!   offending text.
//!
//! Output records: key = the first `GROUP BY` key (or the input key), payload = a JSON object of
//! the `SELECT` items, device time = the window end (or the event time).

mod compile;
mod expr;
pub(crate) mod project;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use serde_json::{Map, Value};
use tracing::debug;

pub use compile::CompiledRule;
use compile::Shape;
use expr::{GroupKeys, Scope};
use project::Projected;

use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, StreamProcessor};
use crate::window::{self, Input, OrderingPolicy, WindowEngine, WindowResult};

/// Compiles `sql` without adding it anywhere (to validate a rule).
pub fn compile(sql: &str) -> Result<CompiledRule> {
    compile::compile(sql)
}

#[derive(Debug)]
struct Entry {
    id: u64,
    sql: String,
    rule: Arc<CompiledRule>,
    enabled: bool,
}

#[derive(Debug, Default)]
struct Rules {
    version: u64,
    next_id: u64,
    by_name: BTreeMap<String, Entry>,
}

/// A rule as listed by [`RuleSet::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its name.
    pub name: String,
    /// Its text.
    pub sql: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Its input topic.
    pub input: String,
    /// Its output topic.
    pub output: String,
}

/// Rules that can be added, enabled, disabled and removed while processors run them: the
/// processors of [`RuleSet::processor`] pick changes up at their next batch or tick. A rule added
/// or re-enabled starts with empty windows; disabling drops its windows.
///
/// ```
/// use iot_stream::rules::RuleSet;
/// use iot_stream::window::OrderingPolicy;
///
/// let rules = RuleSet::new(OrderingPolicy::default());
/// rules.add("hot", "SELECT deviceId, AVG(temperature) AS t INTO alerts FROM telemetry \
///     TIMESTAMP BY time GROUP BY deviceId, TumblingWindow(second, 30) HAVING t > 80")?;
/// rules.disable("hot")?;
/// assert!(!rules.list()[0].enabled);
/// let err = rules.add("bad", "SELECT a FROM t JOIN u ON a = b").unwrap_err();
/// assert!(err.to_string().contains("column"));
/// # Ok::<(), iot_stream::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Arc<RwLock<Rules>>,
    policy: OrderingPolicy,
}

impl RuleSet {
    /// An empty rule set whose windows use `policy`.
    pub fn new(policy: OrderingPolicy) -> Self {
        RuleSet {
            rules: Arc::default(),
            policy,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Rules> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rules> {
        self.rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compiles and adds an enabled rule named `name`.
    pub fn add(&self, name: &str, sql: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("a rule needs a name"));
        }
        let rule = Arc::new(compile::compile(sql)?);
        let mut rules = self.write();
        if rules.by_name.contains_key(name) {
            return Err(Error::AlreadyExists {
                what: format!("rule {name:?}"),
            });
        }
        rules.next_id += 1;
        rules.version += 1;
        let id = rules.next_id;
        rules.by_name.insert(
            name.to_owned(),
            Entry {
                id,
                sql: sql.to_owned(),
                rule,
                enabled: true,
            },
        );
        Ok(())
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        let mut rules = self.write();
        let next_id = rules.next_id + 1;
        let entry = rules.by_name.get_mut(name).ok_or_else(|| Error::NotFound {
            what: format!("rule {name:?}"),
        })?;
        if entry.enabled != enabled {
            entry.enabled = enabled;
            // A re-enabled rule is a new instance: fresh windows.
            entry.id = next_id;
            rules.next_id = next_id;
            rules.version += 1;
        }
        Ok(())
    }

    /// Starts running rule `name`.
    pub fn enable(&self, name: &str) -> Result<()> {
        self.set_enabled(name, true)
    }

    /// Stops running rule `name` (it stays listed).
    pub fn disable(&self, name: &str) -> Result<()> {
        self.set_enabled(name, false)
    }

    /// Removes rule `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut rules = self.write();
        rules.by_name.remove(name).ok_or_else(|| Error::NotFound {
            what: format!("rule {name:?}"),
        })?;
        rules.version += 1;
        Ok(())
    }

    /// The rules, by name.
    pub fn list(&self) -> Vec<RuleInfo> {
        self.read()
            .by_name
            .iter()
            .map(|(name, e)| RuleInfo {
                name: name.clone(),
                sql: e.sql.clone(),
                enabled: e.enabled,
                input: e.rule.input.clone(),
                output: e.rule.output.clone(),
            })
            .collect()
    }

    /// A processor factory running the enabled rules whose `FROM` is `input` (the topic the
    /// host group reads).
    pub fn processor(&self, input: &str) -> RuleFactory {
        RuleFactory {
            rules: self.clone(),
            input: input.to_owned(),
        }
    }
}

/// Runs a [`RuleSet`]'s rules over one input topic; give it to
/// [`ProcessorHost::start`](crate::ProcessorHost::start).
#[derive(Clone, Debug)]
pub struct RuleFactory {
    rules: RuleSet,
    input: String,
}

impl ProcessorFactory for RuleFactory {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(RuleProcessor::new(
            self.rules.clone(),
            &self.input,
        )))
    }
}

#[derive(Debug)]
struct Active {
    id: u64,
    name: String,
    rule: Arc<CompiledRule>,
    engine: Option<WindowEngine>,
    /// The output members in JSON object order (aggregate rules).
    order: Vec<usize>,
    /// Buffers for the window key and the aggregate inputs of one event.
    key: String,
    inputs: Vec<Input>,
}

/// The rules of one partition, with their window state. Public so that benchmarks and tests can
/// drive it without a host.
#[derive(Debug)]
pub struct RuleProcessor {
    rules: RuleSet,
    input: String,
    version: Option<u64>,
    active: Vec<Active>,
    /// The payload fields the active rules read, sorted.
    fields: Vec<String>,
    out: Vec<WindowResult>,
}

impl RuleProcessor {
    /// A processor of `rules` for input topic `input`.
    pub fn new(rules: RuleSet, input: &str) -> Self {
        RuleProcessor {
            rules,
            input: input.to_owned(),
            version: None,
            active: Vec::new(),
            fields: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Picks up added, enabled, disabled and removed rules.
    fn sync(&mut self) -> Result<()> {
        let rules = self.rules.read();
        if self.version == Some(rules.version) {
            return Ok(());
        }
        let mut old: Vec<Active> = std::mem::take(&mut self.active);
        for (name, e) in &rules.by_name {
            if !e.enabled || e.rule.input != self.input {
                continue;
            }
            if let Some(at) = old.iter().position(|a| a.id == e.id) {
                self.active.push(old.swap_remove(at));
                continue;
            }
            let engine = match &e.rule.shape {
                Shape::Aggregate {
                    window, aggregates, ..
                } => Some(WindowEngine::new(
                    *window,
                    aggregates.iter().map(|a| a.0).collect(),
                    self.rules.policy,
                )?),
                Shape::Project { .. } => None,
            };
            let order = match &e.rule.shape {
                Shape::Aggregate { items, .. } => member_order(items),
                Shape::Project { .. } => Vec::new(),
            };
            debug!(rule = %name, "rule started");
            self.active.push(Active {
                id: e.id,
                name: name.clone(),
                rule: e.rule.clone(),
                engine,
                order,
                key: String::new(),
                inputs: Vec::new(),
            });
        }
        let fields: std::collections::BTreeSet<String> =
            self.active.iter().flat_map(|a| a.rule.fields()).collect();
        self.fields = fields.into_iter().collect();
        self.version = Some(rules.version);
        Ok(())
    }

    /// Runs every active rule over `batch`, emitting through `ctx`.
    pub fn run(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        self.sync()?;
        if self.active.is_empty() {
            return Ok(());
        }
        let mut payload = Projected::new(&self.fields);
        for record in batch {
            payload.fill(&record.record.payload);
            for a in &mut self.active {
                run_one(a, record, &payload, &mut self.out, ctx);
            }
        }
        Ok(())
    }

    /// Lets the arrival clock reach `now` in every window.
    pub fn advance(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        self.sync()?;
        for a in &mut self.active {
            if let Some(engine) = &mut a.engine {
                engine.tick(window::micros(now), &mut self.out);
                emit_windows(a.name.as_str(), &a.rule, &a.order, &mut self.out, ctx);
            }
        }
        Ok(())
    }

    /// The lowest input offset any active rule's windows or ordering buffer still hold.
    pub fn retained_offset(&self) -> Option<u64> {
        self.active
            .iter()
            .filter_map(|a| a.engine.as_ref()?.retained_offset())
            .min()
    }

    /// Closes every window (end of input), emitting what they hold.
    pub fn flush(&mut self, ctx: &mut Context) -> Result<()> {
        self.sync()?;
        for a in &mut self.active {
            if let Some(engine) = &mut a.engine {
                engine.flush(&mut self.out);
                emit_windows(a.name.as_str(), &a.rule, &a.order, &mut self.out, ctx);
            }
        }
        Ok(())
    }
}

/// The event time of `record` for `rule`, or `None` when `TIMESTAMP BY` gives no usable time.
fn event_time(rule: &CompiledRule, record: &StoredRecord, payload: &Projected<'_>) -> Option<i64> {
    let Some(ts) = &rule.timestamp_by else {
        return Some(window::micros(record.enqueued_time));
    };
    let scope = Scope {
        record: Some(record),
        payload,
        timestamp: 0,
        keys: GroupKeys::Values(&[]),
        aggregates: &[],
    };
    if let Some(s) = ts.str_ref(&scope) {
        return iot_core::time::parse_rfc3339_assume_utc(s).ok();
    }
    match ts.eval(&scope) {
        Value::String(s) => iot_core::time::parse_rfc3339_assume_utc(&s).ok(),
        Value::Number(n) => n.as_f64().map(|ms| (ms * 1000.0) as i64),
        _ => None,
    }
}

fn run_one(
    a: &mut Active,
    record: &StoredRecord,
    payload: &Projected<'_>,
    out: &mut Vec<WindowResult>,
    ctx: &mut Context,
) {
    let rule = &a.rule;
    let Some(t) = event_time(rule, record, payload) else {
        debug!(rule = %a.name, offset = %record.offset, "no usable TIMESTAMP BY value; record skipped");
        return;
    };
    let scope = Scope {
        record: Some(record),
        payload,
        timestamp: t,
        keys: GroupKeys::Values(&[]),
        aggregates: &[],
    };
    if let Some(filter) = &rule.filter
        && !filter.holds(&scope)
    {
        return;
    }
    match (&rule.shape, &mut a.engine) {
        (Shape::Project { items }, _) => {
            let body = match items {
                None => record.record.payload.clone(),
                Some(items) => {
                    let obj: Map<String, Value> = items
                        .iter()
                        .map(|(n, e)| (n.clone(), e.eval(&scope)))
                        .collect();
                    Value::Object(obj).to_string().into()
                }
            };
            let mut out =
                Record::new(record.record.key.clone(), body).with_device_time(window::timestamp(t));
            if items.is_none() {
                out = out.with_headers(record.record.headers.clone());
            }
            ctx.emit(&rule.output, out);
        }
        (
            Shape::Aggregate {
                keys, aggregates, ..
            },
            Some(engine),
        ) => {
            // The key and the inputs are built in buffers kept from event to event.
            let key = &mut a.key;
            key.clear();
            match keys.as_slice() {
                [k] => match k.str_ref(&scope) {
                    Some(s) => {
                        key.push('s');
                        key.push_str(s);
                    }
                    None => encode_key(key, &[k.eval(&scope)]),
                },
                _ => {
                    let values: Vec<Value> = keys.iter().map(|k| k.eval(&scope)).collect();
                    encode_key(key, &values);
                }
            }
            a.inputs.clear();
            a.inputs
                .extend(aggregates.iter().map(|(kind, e)| e.input(*kind, &scope)));
            engine.push_at(
                record.offset.0,
                key,
                t,
                window::micros(record.enqueued_time),
                &a.inputs,
                out,
            );
            emit_windows(&a.name, rule, &a.order, out, ctx);
        }
        (Shape::Aggregate { .. }, None) => {}
    }
}

/// Writes a window key for the GROUP BY values into `key`: one string value as itself after
/// `s`, anything else as JSON after `j`.
fn encode_key(key: &mut String, values: &[Value]) {
    if let [Value::String(s)] = values {
        key.push('s');
        key.push_str(s);
        return;
    }
    key.push('j');
    key.push_str(&serde_json::to_string(values).unwrap_or_default());
}

/// The GROUP BY values of a window key: a single string key is returned as the string after
/// its tag (no copy).
fn decode_key(key: &str) -> Result<&str, Vec<Value>> {
    match key.split_at_checked(1) {
        Some(("s", s)) => Ok(s),
        Some(("j", json)) => Err(serde_json::from_str(json).unwrap_or_default()),
        _ => Err(Vec::new()),
    }
}

/// The order in which a JSON object built from `items` lists its members (the order of
/// `serde_json::Map`, the last of equal names winning), as indices into `items`.
fn member_order(items: &[(String, expr::Expr)]) -> Vec<usize> {
    let map: Map<String, Value> = items
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), Value::from(i)))
        .collect();
    map.values()
        .filter_map(|v| v.as_u64().and_then(|i| usize::try_from(i).ok()))
        .collect()
}

fn emit_windows(
    name: &str,
    rule: &CompiledRule,
    order: &[usize],
    out: &mut Vec<WindowResult>,
    ctx: &mut Context,
) {
    let Shape::Aggregate { items, having, .. } = &rule.shape else {
        out.clear();
        return;
    };
    let empty = Projected::empty();
    for mut w in out.drain(..) {
        let key = std::mem::take(&mut w.key);
        let decoded = decode_key(&key);
        let scope = Scope {
            record: None,
            payload: &empty,
            timestamp: w.end,
            keys: match &decoded {
                Ok(s) => GroupKeys::Str(s),
                Err(values) => GroupKeys::Values(values),
            },
            aggregates: &w.values,
        };
        if let Some(h) = having
            && !h.holds(&scope)
        {
            continue;
        }
        // The payload is written straight from the window's values, members in the order a
        // `serde_json::Map` of the items would have.
        let mut body = Vec::with_capacity(16 + 24 * order.len());
        body.push(b'{');
        for (n, &i) in order.iter().enumerate() {
            let (item, e) = &items[i];
            if n > 0 {
                body.push(b',');
            }
            if serde_json::to_writer(&mut body, item).is_err() {
                body.extend_from_slice(b"\"\"");
            }
            body.push(b':');
            e.write_json(&scope, &mut body);
        }
        body.push(b'}');
        let key = match decoded {
            // The window's key without its tag: no copy.
            Ok(_) => {
                let mut key = key;
                key.remove(0);
                key
            }
            Err(values) => match values.first() {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => name.to_owned(),
            },
        };
        ctx.emit(
            &rule.output,
            Record::new(key, body).with_device_time(window::timestamp(w.end)),
        );
    }
}

#[async_trait]
impl StreamProcessor for RuleProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        self.run(batch, ctx)
    }

    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        self.advance(now, ctx)
    }

    fn retained_offset(&self) -> Option<Offset> {
        RuleProcessor::retained_offset(self).map(Offset)
    }
}
