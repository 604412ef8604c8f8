//! Parsing only the payload fields the rules use.
//!
//! The active rules name their top-level fields up front, so the payload is parsed into one slot
//! per named field; other members are skipped without being built, and field names are matched
//! without being copied. This is the main cost of a rule on small payloads.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The named top-level fields of one payload (`null` where absent or not an object).
#[derive(Debug)]
pub(crate) struct Projected<'n> {
    /// Sorted field names.
    names: &'n [String],
    values: Vec<Value>,
}

impl<'n> Projected<'n> {
    /// No fields (the scope of window outputs).
    pub(crate) fn empty() -> Self {
        Projected {
            names: &[],
            values: Vec::new(),
        }
    }

    /// The value of top-level field `name` (`None` if the rules did not ask for it).
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        let i = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        self.values.get(i)
    }
}

struct Seed<'n>(&'n [String]);

impl<'de, 'n> DeserializeSeed<'de> for Seed<'n> {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Value>, A::Error> {
        let mut values = vec![Value::Null; self.0.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.0.binary_search_by(|n| n.as_str().cmp(key.as_ref())) {
                Ok(i) => values[i] = map.next_value()?,
                Err(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }

    // Anything but an object has no fields.
    fn visit_bool<E>(self, _: bool) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_i64<E>(self, _: i64) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_u64<E>(self, _: u64) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_f64<E>(self, _: f64) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_str<E>(self, _: &str) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_unit<E>(self) -> Result<Vec<Value>, E> {
        Ok(vec![Value::Null; self.0.len()])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(vec![Value::Null; self.0.len()])
    }
}

/// Parses the fields `names` (sorted) of `payload`; an unparsable payload has only nulls.
pub(crate) fn parse<'n>(payload: &[u8], names: &'n [String]) -> Projected<'n> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let values = match Seed(names).deserialize(&mut de) {
        Ok(v) if de.end().is_ok() => v,
        _ => vec![Value::Null; names.len()],
    };
    Projected { names, values }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_fields() {
        let names = ["a".to_owned(), "a1".to_owned(), "c".to_owned()];
        let p = parse(
            br#"{"a":1,"b":{"x":[1,2]},"c":{"d":"e"},"a\u0031":5}"#,
            &names,
        );
        assert_eq!(p.get("a"), Some(&json!(1)));
        assert_eq!(p.get("c"), Some(&json!({"d":"e"})));
        assert_eq!(p.get("a1"), Some(&json!(5)), "escaped names match");
        assert_eq!(p.get("b"), None, "not asked for");
        for bad in [&b"[1,2]"[..], b"{\"a\":1} trailing", b"not json", b"7"] {
            assert_eq!(parse(bad, &names).get("a"), Some(&Value::Null));
        }
    }
}
