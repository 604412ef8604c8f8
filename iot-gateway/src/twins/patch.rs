//! The twin rules as one pure function, shared by every store — the crate's and an integrator's.

use iot_core::DeviceId;
use iot_core::json::{depth_at_most, merge_patch};
use serde_json::Value;

use super::{Section, Twin, TwinLimits};
use crate::error::{Error, Result};

impl Twin {
    /// This twin after merging `patch` into `section`, or why the patch is refused — the rules of
    /// the [module docs](super) in one place, so a store of any kind reads the stored twin, calls
    /// this, and writes the result back atomically (unchanged on an error). `device` only names
    /// the device in errors.
    ///
    /// * `patch` must be a JSON object ([`Error::InvalidInput`] otherwise); it is applied as an
    ///   RFC 7396 merge patch.
    /// * `if_version`, when given, must be the section's version
    ///   ([`Error::PreconditionFailed`] otherwise).
    /// * The section may not nest deeper than `limits.max_depth` ([`Error::InvalidInput`]) nor
    ///   serialize larger than `limits.max_section_bytes` ([`Error::TooLarge`]).
    /// * The section's version grows by one.
    ///
    /// ```
    /// use iot_gateway::twins::{Section, Twin, TwinLimits};
    /// use serde_json::json;
    ///
    /// let device = "dev-1".parse()?;
    /// let twin = Twin::default().patched(&device, Section::Reported, &json!({"fw": "1.0"}), Some(0), TwinLimits::default())?;
    /// assert_eq!(twin.reported.version, 1);
    /// assert_eq!(twin.reported.properties, json!({"fw": "1.0"}));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn patched(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        if !patch.is_object() {
            return Err(Error::invalid(format!(
                "a {} patch must be a JSON object",
                section.as_str()
            )));
        }
        let mut twin = self.clone();
        let target = match section {
            Section::Desired => &mut twin.desired,
            Section::Reported => &mut twin.reported,
        };
        if let Some(expected) = if_version
            && expected != target.version
        {
            return Err(Error::PreconditionFailed {
                device: device.clone(),
                section: section.as_str(),
                expected,
                actual: target.version,
            });
        }
        merge_patch(&mut target.properties, patch, limits.max_depth)
            .map_err(|e| Error::invalid(format!("{} patch: {e}", section.as_str())))?;
        let depth = depth_at_most(&target.properties, limits.max_depth);
        if depth > limits.max_depth {
            return Err(Error::invalid(format!(
                "the {} properties would nest {depth} or more levels deep; at most {} are allowed",
                section.as_str(),
                limits.max_depth
            )));
        }
        let size = serde_json::to_vec(&target.properties).map_or(usize::MAX, |v| v.len());
        if size > limits.max_section_bytes {
            return Err(Error::TooLarge {
                what: match section {
                    Section::Desired => "desired properties",
                    Section::Reported => "reported properties",
                },
                size,
                limit: limits.max_section_bytes,
            });
        }
        target.version += 1;
        Ok(twin)
    }
}
