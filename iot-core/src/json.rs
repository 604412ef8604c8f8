//! JSON helpers every crate shares: RFC 7396 merge patch, and nesting-depth checks that never
//! recurse.
//!
//! The registry merges device documents, the stream processors fold last known values, the
//! gateway patches twins; all of them go through [`merge_patch`], so the three agree on what a
//! patch means and on how deep a hostile patch may nest.

use serde_json::{Map, Value};

/// The deepest nesting any limit may allow. Code that walks documents recursively (merge,
/// indexing, serde's serialiser) relies on it to stay far from the end of the stack.
pub const MAX_SUPPORTED_DEPTH: usize = 64;

/// A JSON value nests deeper than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("JSON nests {depth} levels deep; at most {limit} are allowed")]
#[non_exhaustive]
pub struct TooDeep {
    /// How deep the value nests, counted no further than `limit + 1`.
    pub depth: usize,
    /// The limit it broke.
    pub limit: usize,
}

/// The nesting depth of `value` — 0 for a scalar, 1 for `{}`, `[]` or `{"a": 1}` — counting no
/// further than `stop_at + 1`, so a hostile value costs no more than the limit it is checked
/// against. Never recurses.
///
/// ```
/// use iot_core::json::depth_at_most;
/// use serde_json::json;
///
/// assert_eq!(depth_at_most(&json!(1), 10), 0);
/// assert_eq!(depth_at_most(&json!({"a": [[1]]}), 10), 3);
/// assert_eq!(depth_at_most(&json!([[[[[]]]]]), 2), 3, "stops past the limit");
/// ```
pub fn depth_at_most(value: &Value, stop_at: usize) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(map) => Box::new(map.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        deepest = deepest.max(depth);
        if depth > stop_at {
            return depth;
        }
        stack.extend(children.filter(|c| is_container(c)).map(|c| (c, depth + 1)));
    }
    deepest
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

/// Applies `patch` to `target` as RFC 7396 describes: a patch that is an object merges into the
/// target key by key, recursively; `null` removes a key; anything else (a scalar, an array)
/// replaces the target whole. Arrays are never merged element-wise.
///
/// The patch's nesting is checked first, without recursion, so a hostile patch cannot exhaust
/// the stack: a patch deeper than `max_depth` is [`TooDeep`] and leaves `target` unchanged.
/// `max_depth` is capped at [`MAX_SUPPORTED_DEPTH`]. The result may nest one level deeper than
/// the target or the patch did; callers with a limit on documents check the result.
///
/// ```
/// use serde_json::json;
///
/// let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
/// iot_core::json::merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}), 16)?;
/// assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
/// # Ok::<(), iot_core::json::TooDeep>(())
/// ```
pub fn merge_patch(target: &mut Value, patch: &Value, max_depth: usize) -> Result<(), TooDeep> {
    let limit = max_depth.min(MAX_SUPPORTED_DEPTH);
    let depth = depth_at_most(patch, limit);
    if depth > limit {
        return Err(TooDeep { depth, limit });
    }
    apply(target, patch);
    Ok(())
}

/// The recursive merge; [`merge_patch`] bounds the patch's depth, and so the recursion.
fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                apply(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The examples of RFC 7396 appendix A as `(target, patch, result)`, in the RFC's order: the
/// reference cases for any merge-patch implementation (this one, the stream crate's last known
/// values, an integrator's registry).
pub fn rfc7396_appendix_a() -> Vec<(Value, Value, Value)> {
    use serde_json::json;
    vec![
        (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
        (json!({"a":"b"}), json!({"a":null}), json!({})),
        (
            json!({"a":"b","b":"c"}),
            json!({"a":null}),
            json!({"b":"c"}),
        ),
        (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
        (
            json!({"a":{"b":"c"}}),
            json!({"a":{"b":"d","c":null}}),
            json!({"a":{"b":"d"}}),
        ),
        (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a":"b"}), json!(["c"]), json!(["c"])),
        (json!({"a":"foo"}), json!(null), json!(null)),
        (json!({"a":"foo"}), json!("bar"), json!("bar")),
        (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
        (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
        (
            json!({}),
            json!({"a":{"bb":{"ccc":null}}}),
            json!({"a":{"bb":{}}}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every example of RFC 7396, appendix A.
    #[test]
    fn every_appendix_a_example() {
        for (original, patch, expected) in rfc7396_appendix_a() {
            let mut doc = original.clone();
            assert_eq!(merge_patch(&mut doc, &patch, 16), Ok(()));
            assert_eq!(doc, expected, "{original} + {patch}");
        }
    }

    /// The larger example of RFC 7396, section 3.
    #[test]
    fn rfc7396_section_3_example() {
        let mut doc = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        assert_eq!(merge_patch(&mut doc, &patch, 16), Ok(()));
        assert_eq!(
            doc,
            json!({
                "title": "Hello!",
                "author": {"givenName": "John"},
                "tags": ["example"],
                "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890"
            })
        );
    }

    #[test]
    fn deep_patch_is_refused_without_recursion() {
        let mut patch = json!(1);
        for _ in 0..10_000 {
            // Not `json!({"a": patch})`: that serialises `patch` again, recursively.
            patch = Value::Object(Map::from_iter([("a".to_string(), patch)]));
        }
        let mut doc = json!({});
        assert_eq!(
            merge_patch(&mut doc, &patch, 16),
            Err(TooDeep {
                depth: 17,
                limit: 16
            })
        );
        assert_eq!(doc, json!({}));
        // A limit above the supported depth is capped.
        assert!(merge_patch(&mut doc, &patch, usize::MAX).is_err());
        // Dropping a 10 000-deep value recurses in serde_json; take it apart iteratively.
        let mut rest = Some(patch);
        while let Some(Value::Object(mut map)) = rest.take() {
            rest = map.remove("a");
        }
    }

    #[test]
    fn depth_counts_containers_only() {
        assert_eq!(depth_at_most(&json!(1), 10), 0);
        assert_eq!(depth_at_most(&json!({}), 10), 1);
        assert_eq!(depth_at_most(&json!({"a": 1}), 10), 1);
        assert_eq!(depth_at_most(&json!([[[]]]), 10), 3);
        assert_eq!(depth_at_most(&json!({"a": {"b": 1}, "c": [1]}), 10), 2);
    }
}
