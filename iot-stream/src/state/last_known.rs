//! The last-known-values record of one device.

use std::collections::BTreeMap;

use iot_core::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where a record came from in the log: used to recognise a redelivered record.
///
/// One device's records stay in one partition, in offset order, so a device's state needs to
/// remember only the last position it applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The partition of the source record.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

impl SourcePosition {
    /// Whether a record at `self` was already covered by state that applied up to `applied`.
    pub fn is_covered_by(self, applied: Option<SourcePosition>) -> bool {
        applied.is_some_and(|a| a.partition == self.partition && self.offset <= a.offset)
    }
}

/// One update of a last-known-values record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LkvUpdate {
    /// A JSON object: a merge patch (RFC 7396), or the whole new state if `key_frame`.
    pub patch: Value,
    /// A key frame replaces the state (as if the patch were applied to an empty object);
    /// otherwise the patch is merged.
    pub key_frame: bool,
    /// When the values were measured (the device time, or the enqueued time without one).
    pub source_time: Timestamp,
    /// The log position of the record, to skip redeliveries; `None` to always apply.
    pub source: Option<SourcePosition>,
}

/// A node of the state tree: a value with the source time of the update that last set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Node {
    /// A scalar or an array (merge patch replaces arrays whole).
    Leaf { value: Value, time: Timestamp },
    /// An object; `time` is that of the last update that touched it.
    Object {
        members: BTreeMap<String, Node>,
        time: Timestamp,
    },
}

impl Node {
    fn empty(time: Timestamp) -> Node {
        Node::Object {
            members: BTreeMap::new(),
            time,
        }
    }

    /// RFC 7396 on the tree, stamping every node the patch touches with `time`.
    fn merge(&mut self, patch: &Value, time: Timestamp) {
        let Value::Object(patch) = patch else {
            *self = Node::Leaf {
                value: patch.clone(),
                time,
            };
            return;
        };
        if !matches!(self, Node::Object { .. }) {
            *self = Node::empty(time);
        }
        if let Node::Object { members, time: t } = self {
            *t = time;
            for (name, value) in patch {
                if value.is_null() {
                    members.remove(name);
                } else if let Some(child) = members.get_mut(name) {
                    child.merge(value, time);
                } else {
                    let mut child = Node::empty(time);
                    child.merge(value, time);
                    members.insert(name.clone(), child);
                }
            }
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Node::Leaf { value, .. } => value.clone(),
            Node::Object { members, .. } => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    fn time(&self) -> Timestamp {
        match self {
            Node::Leaf { time, .. } | Node::Object { time, .. } => *time,
        }
    }

    fn leaves(&self, path: &mut String, out: &mut Vec<(String, Timestamp)>) {
        match self {
            Node::Leaf { time, .. } => out.push((path.clone(), *time)),
            Node::Object { members, .. } => {
                for (name, child) in members {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&name.replace('~', "~0").replace('/', "~1"));
                    child.leaves(path, out);
                    path.truncate(len);
                }
            }
        }
    }
}

/// The last known values of a device: a JSON object built from differential updates merged with
/// JSON merge patch (RFC 7396), where every value keeps the source time of the update that set
/// it, and which remembers the last log position applied so that a redelivered update changes
/// nothing.
///
/// ```
/// use iot_core::Timestamp;
/// use iot_stream::{LastKnown, LkvUpdate};
/// use serde_json::json;
///
/// let mut lkv = LastKnown::new();
/// let t1 = Timestamp::from_unix_millis(1_000);
/// let t2 = Timestamp::from_unix_millis(2_000);
/// lkv.apply(&LkvUpdate { patch: json!({"temp": 20, "door": "open"}), key_frame: false, source_time: t1, source: None })?;
/// lkv.apply(&LkvUpdate { patch: json!({"temp": 21, "door": null}), key_frame: false, source_time: t2, source: None })?;
/// assert_eq!(lkv.values(), json!({"temp": 21}));
/// assert_eq!(lkv.source_time("/temp"), Some(t2));
/// # Ok::<(), iot_stream::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastKnown {
    root: Node,
    position: Option<SourcePosition>,
}

impl Default for LastKnown {
    fn default() -> Self {
        Self::new()
    }
}

impl LastKnown {
    /// An empty record.
    pub fn new() -> Self {
        LastKnown {
            root: Node::empty(Timestamp::EPOCH),
            position: None,
        }
    }

    /// Applies `update`. Returns `Ok(false)`, changing nothing, when its source position is at or
    /// before the last one applied in the same partition (a redelivery). A patch that is not a
    /// JSON object is [`Error::InvalidInput`].
    pub fn apply(&mut self, update: &LkvUpdate) -> Result<bool> {
        if !update.patch.is_object() {
            return Err(Error::invalid(
                "a last-known-values update must be a JSON object",
            ));
        }
        if update
            .source
            .is_some_and(|s| s.is_covered_by(self.position))
        {
            return Ok(false);
        }
        if update.key_frame {
            self.root = Node::empty(update.source_time);
        }
        self.root.merge(&update.patch, update.source_time);
        if update.source.is_some() {
            self.position = update.source;
        }
        Ok(true)
    }

    /// The values, as a JSON object.
    pub fn values(&self) -> Value {
        self.root.to_value()
    }

    /// The source time of the value at JSON pointer `pointer` (RFC 6901; `""` is the whole
    /// record, whose time is that of the last update).
    pub fn source_time(&self, pointer: &str) -> Option<Timestamp> {
        if pointer.is_empty() {
            return Some(self.root.time());
        }
        let mut node = &self.root;
        for segment in pointer.strip_prefix('/')?.split('/') {
            let name = segment.replace("~1", "/").replace("~0", "~");
            match node {
                Node::Object { members, .. } => node = members.get(&name)?,
                Node::Leaf { .. } => return None,
            }
        }
        Some(node.time())
    }

    /// Every leaf value's JSON pointer with its source time, in key order.
    pub fn source_times(&self) -> Vec<(String, Timestamp)> {
        let mut out = Vec::new();
        self.root.leaves(&mut String::new(), &mut out);
        out
    }

    /// The last log position applied.
    pub fn position(&self) -> Option<SourcePosition> {
        self.position
    }
}
