//! Routes, enrichments, the fallback route, and the table that holds them while processors run.

use std::collections::BTreeMap;
use std::fmt::{self, Display, Formatter};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::ast::Expr;
use super::compiled::Test;
use super::parser;
use crate::error::{Error, Result};

/// A parsed routing condition in IoT Hub's routing query syntax.
///
/// ```
/// use iot_stream::routing::Condition;
/// let c = Condition::parse("$body.Weather.Temperature > 50 AND processingPath = 'hot'")?;
/// assert_eq!(c.text(), "$body.Weather.Temperature > 50 AND processingPath = 'hot'");
/// let err = Condition::parse("level = = 'critical'").unwrap_err();
/// assert!(err.to_string().contains("column 9"), "{err}");
/// # Ok::<(), iot_stream::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Condition {
    text: String,
    pub(crate) expr: Expr,
    /// `expr` compiled for evaluation ([`Test`]), which [`evaluate`](Self::evaluate) runs.
    pub(crate) test: Test,
    /// Whether `expr` reads `$twin` (worked out once: the processor asks for every record).
    reads_twin: bool,
}

/// Conditions are equal when their texts and trees are (the compiled form follows the tree).
impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.expr == other.expr
    }
}

impl Condition {
    /// Parses `text`; a syntax error is [`Error::Rule`] with the line and column (and the byte
    /// offset in the reason) of the offending text.
    pub fn parse(text: &str) -> Result<Self> {
        let expr = parser::parse(text)?;
        Ok(Condition {
            text: text.to_owned(),
            reads_twin: expr.reads_twin(),
            test: Test::compile(&expr),
            expr,
        })
    }

    /// The condition that always holds (`true`), IoT Hub's default.
    pub fn always() -> Self {
        Condition {
            text: "true".to_owned(),
            expr: Expr::Const(Value::Bool(true)),
            test: Test::Known(Some(true)),
            reads_twin: false,
        }
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether it reads the twin (`$twin…`).
    pub fn reads_twin(&self) -> bool {
        self.reads_twin
    }
}

/// Prints the parsed condition fully parenthesised (parses back to the same condition).
impl Display for Condition {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

/// What a route reads, as IoT Hub names its data sources. A routing processor runs over one
/// topic and applies the routes of the source that topic carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteSource {
    /// Device telemetry.
    DeviceMessages,
    /// Twin change notifications.
    TwinChangeEvents,
    /// Device created / deleted.
    DeviceLifecycleEvents,
    /// Device connected / disconnected.
    DeviceConnectionStateEvents,
}

/// A route: messages of `source` for which `condition` holds go to `endpoint` (a log topic).
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Its unique name.
    pub name: String,
    /// The messages it looks at.
    pub source: RouteSource,
    /// When a message goes.
    pub condition: Condition,
    /// Where it goes: a topic.
    pub endpoint: String,
    /// Whether it runs.
    pub enabled: bool,
}

impl Route {
    /// An enabled route over device messages; `condition` in IoT Hub's routing query syntax.
    pub fn new(name: &str, condition: &str, endpoint: &str) -> Result<Self> {
        if name.is_empty() || endpoint.is_empty() {
            return Err(Error::invalid("a route needs a name and an endpoint"));
        }
        Ok(Route {
            name: name.to_owned(),
            source: RouteSource::DeviceMessages,
            condition: Condition::parse(condition)?,
            endpoint: endpoint.to_owned(),
            enabled: true,
        })
    }

    /// The same route over `source`.
    pub fn with_source(mut self, source: RouteSource) -> Self {
        self.source = source;
        self
    }

    /// The same route, disabled.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// Where an enrichment's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrichmentValue {
    /// A fixed string.
    Static(String),
    /// `$iothubname`.
    HubName,
    /// A twin path (`$twin.tags.…`, `$twin.properties.desired.…`,
    /// `$twin.properties.reported.…`), as the steps after `$twin`. When the twin or the path
    /// is missing, the message is stamped with the text of the path itself, as IoT Hub does.
    Twin(Vec<String>),
}

impl EnrichmentValue {
    /// Reads IoT Hub's notation: `$iothubname`, a `$twin.` path, or any other string as a
    /// static value.
    pub fn parse(text: &str) -> Result<Self> {
        if text.eq_ignore_ascii_case("$iothubname") {
            return Ok(EnrichmentValue::HubName);
        }
        let Some(path) = text.strip_prefix("$twin.") else {
            return Ok(EnrichmentValue::Static(text.to_owned()));
        };
        let steps: Vec<String> = path.split('.').map(str::to_owned).collect();
        let allowed = match steps.as_slice() {
            [first, _, ..] if first == "tags" => true,
            [first, section, _, ..] if first == "properties" => {
                section == "desired" || section == "reported"
            }
            _ => false,
        };
        if !allowed || steps.iter().any(String::is_empty) {
            return Err(Error::invalid(format!(
                "enrichment value {text:?}: only $iothubname, $twin.tags.…, \
                 $twin.properties.desired.… and $twin.properties.reported.… are variables"
            )));
        }
        Ok(EnrichmentValue::Twin(steps))
    }
}

/// An application property added to every message sent to one of `endpoints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrichment {
    /// The property name: letters, digits, `-`, `_`, `.`.
    pub key: String,
    /// Its value.
    pub value: EnrichmentValue,
    /// The endpoints (topics) whose messages get it.
    pub endpoints: Vec<String>,
}

impl Enrichment {
    /// An enrichment `key = value` (IoT Hub's notation, see [`EnrichmentValue::parse`]) for
    /// messages sent to `endpoints`.
    pub fn new(key: &str, value: &str, endpoints: &[&str]) -> Result<Self> {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !key_ok {
            return Err(Error::invalid(format!(
                "enrichment key {key:?}: letters, digits, '-', '_' and '.' only"
            )));
        }
        if endpoints.is_empty() {
            return Err(Error::invalid("an enrichment needs at least one endpoint"));
        }
        Ok(Enrichment {
            key: key.to_owned(),
            value: EnrichmentValue::parse(value)?,
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        })
    }

    /// Whether it reads the twin.
    pub fn reads_twin(&self) -> bool {
        matches!(self.value, EnrichmentValue::Twin(_))
    }
}

/// Most enrichments a table holds (IoT Hub's standard tier limit).
pub const MAX_ENRICHMENTS: usize = 10;

/// The configuration processors run: routes, enrichments and the fallback route, as one
/// immutable snapshot.
#[derive(Clone, Debug, Default)]
pub struct RoutingSnapshot {
    pub(crate) routes: Vec<Route>,
    pub(crate) enrichments: Vec<Enrichment>,
    pub(crate) fallback: Option<String>,
}

impl RoutingSnapshot {
    /// The routes, by name.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The enrichments.
    pub fn enrichments(&self) -> &[Enrichment] {
        &self.enrichments
    }

    /// The fallback endpoint, when the fallback route is enabled.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

#[derive(Debug, Default)]
struct Table {
    routes: BTreeMap<String, Route>,
    enrichments: Vec<Enrichment>,
    fallback: Option<String>,
    snapshot: Arc<RoutingSnapshot>,
}

impl Table {
    fn publish(&mut self) {
        self.snapshot = Arc::new(RoutingSnapshot {
            routes: self.routes.values().cloned().collect(),
            enrichments: self.enrichments.clone(),
            fallback: self.fallback.clone(),
        });
    }
}

/// Routes, enrichments and the fallback route, changeable while processors run them: every
/// change publishes a new snapshot, which each processor picks up at its next batch.
///
/// ```
/// use iot_stream::routing::{Enrichment, Route, RouteTable};
/// let table = RouteTable::new().with_fallback("events");
/// table.add(Route::new("critical", "level = 'critical'", "alerts")?)?;
/// table.add_enrichment(Enrichment::new("hub", "$iothubname", &["alerts"])?)?;
/// table.replace(Route::new("critical", "level = 'critical' OR level = 'error'", "alerts")?)?;
/// table.remove("critical")?;
/// assert!(table.snapshot().routes().is_empty());
/// # Ok::<(), iot_stream::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    table: Arc<RwLock<Table>>,
}

impl RouteTable {
    /// No routes, no enrichments, no fallback.
    pub fn new() -> Self {
        Self::default()
    }

    fn change<T>(&self, f: impl FnOnce(&mut Table) -> Result<T>) -> Result<T> {
        let mut table = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut table)?;
        table.publish();
        Ok(out)
    }

    /// The same table with the fallback route to `endpoint` enabled.
    pub fn with_fallback(self, endpoint: &str) -> Self {
        self.set_fallback(Some(endpoint));
        self
    }

    /// Enables the fallback route to `endpoint` (messages no route matched go there), or
    /// disables it with `None` (they go nowhere).
    pub fn set_fallback(&self, endpoint: Option<&str>) {
        // Infallible closure: the change always applies.
        let _ = self.change(|t| {
            t.fallback = endpoint.map(str::to_owned);
            Ok(())
        });
    }

    /// Adds `route`; its name must be new.
    pub fn add(&self, route: Route) -> Result<()> {
        self.change(|t| {
            if t.routes.contains_key(&route.name) {
                return Err(Error::AlreadyExists {
                    what: format!("route {:?}", route.name),
                });
            }
            t.routes.insert(route.name.clone(), route);
            Ok(())
        })
    }

    /// Replaces the route of the same name (or adds it).
    pub fn replace(&self, route: Route) -> Result<()> {
        self.change(|t| {
            t.routes.insert(route.name.clone(), route);
            Ok(())
        })
    }

    /// Removes route `name`.
    pub fn remove(&self, name: &str) -> Result<Route> {
        self.change(|t| {
            t.routes.remove(name).ok_or_else(|| Error::NotFound {
                what: format!("route {name:?}"),
            })
        })
    }

    /// Adds `enrichment` (at most [`MAX_ENRICHMENTS`]); one with the same key replaces it.
    pub fn add_enrichment(&self, enrichment: Enrichment) -> Result<()> {
        self.change(|t| {
            t.enrichments.retain(|e| e.key != enrichment.key);
            if t.enrichments.len() >= MAX_ENRICHMENTS {
                return Err(Error::invalid(format!(
                    "at most {MAX_ENRICHMENTS} enrichments"
                )));
            }
            t.enrichments.push(enrichment);
            Ok(())
        })
    }

    /// Removes the enrichment with `key`.
    pub fn remove_enrichment(&self, key: &str) -> Result<()> {
        self.change(|t| {
            let before = t.enrichments.len();
            t.enrichments.retain(|e| e.key != key);
            if t.enrichments.len() == before {
                return Err(Error::NotFound {
                    what: format!("enrichment {key:?}"),
                });
            }
            Ok(())
        })
    }

    /// What processors run now.
    pub fn snapshot(&self) -> Arc<RoutingSnapshot> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshot
            .clone()
    }
}
