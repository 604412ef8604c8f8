//! JSON merge patch (RFC 7396).
//!
//! A patch that is an object merges into the target key by key, recursively; `null` removes a key;
//! anything else (a scalar, an array) replaces the target whole. Arrays are never merged
//! element-wise.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::limits::{MAX_SUPPORTED_DEPTH, depth_at_most};

/// Applies `patch` to `target` as RFC 7396 describes.
///
/// The patch's nesting is checked first (iteratively), so a hostile patch cannot exhaust the
/// stack: a patch deeper than `max_depth` is [`Error::DocumentTooDeep`] and leaves `target`
/// unchanged. `max_depth` is capped at [`MAX_SUPPORTED_DEPTH`].
///
/// ```
/// use serde_json::json;
/// let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
/// iot_registry::merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}), 16)?;
/// assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
/// # Ok::<(), iot_registry::Error>(())
/// ```
pub fn merge_patch(target: &mut Value, patch: &Value, max_depth: usize) -> Result<()> {
    let limit = max_depth.min(MAX_SUPPORTED_DEPTH);
    let depth = depth_at_most(patch, limit);
    if depth > limit {
        return Err(Error::DocumentTooDeep {
            depth,
            limit,
            path: "$ (merge patch)".into(),
        });
    }
    apply(target, patch);
    Ok(())
}

/// The recursive merge; callers bound the patch's depth.
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
            assert!(merge_patch(&mut doc, &patch, 16).is_ok());
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
        assert!(merge_patch(&mut doc, &patch, 16).is_ok());
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
        for _ in 0..1000 {
            patch = json!({ "a": patch });
        }
        let mut doc = json!({});
        assert!(matches!(
            merge_patch(&mut doc, &patch, 16),
            Err(Error::DocumentTooDeep { .. })
        ));
        assert_eq!(doc, json!({}));
    }
}
