//! JSON merge patch (RFC 7396), as the registry reports its errors.
//!
//! The merge itself is `iot_core::json::merge_patch`, shared with the stream processors and the
//! gateway's twins; this module only turns a patch that nests too deep into the registry's
//! [`Error::DocumentTooDeep`].

use serde_json::Value;

pub use iot_core::json::rfc7396_appendix_a;

use crate::error::{Error, Result};

/// Applies `patch` to `target` as RFC 7396 describes (see `iot_core::json::merge_patch`).
///
/// A patch deeper than `max_depth` (capped at [`MAX_SUPPORTED_DEPTH`](crate::MAX_SUPPORTED_DEPTH))
/// is [`Error::DocumentTooDeep`] and leaves `target` unchanged.
///
/// ```
/// use serde_json::json;
/// let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
/// iot_registry::merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}), 16)?;
/// assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
/// # Ok::<(), iot_registry::Error>(())
/// ```
pub fn merge_patch(target: &mut Value, patch: &Value, max_depth: usize) -> Result<()> {
    iot_core::json::merge_patch(target, patch, max_depth).map_err(|e| Error::DocumentTooDeep {
        depth: e.depth,
        limit: e.limit,
        path: "$ (merge patch)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_patch_is_a_registry_error() {
        let mut patch = json!(1);
        for _ in 0..100 {
            patch = json!({ "a": patch });
        }
        let mut doc = json!({"x": 1});
        assert!(matches!(
            merge_patch(&mut doc, &patch, 16),
            Err(Error::DocumentTooDeep {
                depth: 17,
                limit: 16,
                ..
            })
        ));
        assert_eq!(doc, json!({"x": 1}));
    }
}
