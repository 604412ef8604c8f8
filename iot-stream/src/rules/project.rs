//! Parsing only the payload fields the rules use.
//!
//! The active rules name their top-level fields up front, so one scan of the payload fills one
//! slot per named field; other members are skipped without being built, field names are matched
//! without being copied, and strings are borrowed from the payload (copied only when they hold
//! escapes). Only objects and arrays become JSON values. This is the main cost of a rule on
//! small payloads, so it allocates nothing for scalar fields and reuses its slots from record
//! to record.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// One top-level payload field.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Field<'a> {
    /// Absent, or JSON `null`.
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    /// A string, borrowed from the payload unless it had escapes.
    Str(Cow<'a, str>),
    /// An object or array.
    Json(Value),
}

impl Field<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Field::Null)
    }

    /// The field as a JSON value (copies strings).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Bool(b) => Value::Bool(*b),
            Field::Number(n) => Value::Number(n.clone()),
            Field::Str(s) => Value::String(s.as_ref().to_owned()),
            Field::Json(v) => v.clone(),
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Field::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

/// The named top-level fields of one payload (null where absent or not an object).
#[derive(Debug)]
pub(crate) struct Projected<'a> {
    /// Sorted field names.
    names: &'a [String],
    values: Vec<Field<'a>>,
}

impl<'a> Projected<'a> {
    /// Slots for the fields `names` (sorted), all null.
    pub(crate) fn new(names: &'a [String]) -> Self {
        Projected {
            names,
            values: vec![Field::Null; names.len()],
        }
    }

    /// No fields (the scope of window outputs).
    pub(crate) fn empty() -> Self {
        Projected {
            names: &[],
            values: Vec::new(),
        }
    }

    /// Fills the slots from `payload`; an unparsable payload (or one that is not an object) has
    /// only nulls.
    pub(crate) fn fill(&mut self, payload: &'a [u8]) {
        self.values.fill(Field::Null);
        let mut de = serde_json::Deserializer::from_slice(payload);
        let ok = Slots {
            names: self.names,
            values: &mut self.values,
        }
        .deserialize(&mut de)
        .is_ok()
            && de.end().is_ok();
        if !ok {
            self.values.fill(Field::Null);
        }
    }

    /// Top-level field `name` (`None` if the rules did not ask for it).
    pub(crate) fn get(&self, name: &str) -> Option<&Field<'a>> {
        let i = self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()?;
        self.values.get(i)
    }
}

/// Deserializes one field value without building a tree for scalars.
struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Field<'de>, E> {
        Ok(Field::Bool(b))
    }
    fn visit_i64<E>(self, x: i64) -> Result<Field<'de>, E> {
        Ok(Field::Number(x.into()))
    }
    fn visit_u64<E>(self, x: u64) -> Result<Field<'de>, E> {
        Ok(Field::Number(x.into()))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Field<'de>, E> {
        Ok(Number::from_f64(x).map_or(Field::Null, Field::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Field::Json)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Json)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

/// A member name, borrowed unless it has escapes (serde's own `Cow<str>` always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FieldVisitor).and_then(|f| match f {
            Field::Str(s) => Ok(Name(s)),
            _ => Err(serde::de::Error::custom("a member name must be a string")),
        })
    }
}

/// Fills the slots of the named fields of one payload.
struct Slots<'s, 'a> {
    names: &'a [String],
    values: &'s mut [Field<'a>],
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Slots<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Slots<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Name<'de>>()? {
            match self
                .names
                .binary_search_by(|n| n.as_str().cmp(key.0.as_ref()))
            {
                Ok(i) => self.values[i] = map.next_value::<Field<'de>>()?,
                Err(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Anything but an object has no fields.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_fields() {
        let names = [
            "a".to_owned(),
            "a1".to_owned(),
            "c".to_owned(),
            "s".to_owned(),
            "t".to_owned(),
        ];
        let mut p = Projected::new(&names);
        let payload = br#"{"a":1,"b":{"x":[1,2]},"c":{"d":"e"},"a\u0031":5,"s":"x","t":"\"q"}"#;
        p.fill(payload);
        assert_eq!(p.get("a").map(Field::to_value), Some(json!(1)));
        assert_eq!(p.get("c").map(Field::to_value), Some(json!({"d":"e"})));
        assert_eq!(
            p.get("a1").map(Field::to_value),
            Some(json!(5)),
            "escaped names match"
        );
        assert!(
            matches!(p.get("s"), Some(Field::Str(Cow::Borrowed("x")))),
            "plain strings are borrowed"
        );
        assert_eq!(p.get("t").map(Field::to_value), Some(json!("\"q")));
        assert_eq!(p.get("b"), None, "not asked for");
        for bad in [&b"[1,2]"[..], b"{\"a\":1} trailing", b"not json", b"7"] {
            p.fill(bad);
            assert_eq!(p.get("a"), Some(&Field::Null));
        }
    }
}
