//! The twin rules shared by every store.

use std::collections::HashMap;

use iot_core::{DeviceId, ModuleId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Twin;
use super::{Section, TwinLimits};
use crate::error::Result;
use iot_core::storage::Journaled;

/// One change; what the file store journals (whole twins, so replay needs no merging).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Op {
    Put {
        device: DeviceId,
        twin: Twin,
    },
    Remove {
        device: DeviceId,
    },
    /// A module's twin (new variants: journals written before modules replay unchanged).
    PutModule {
        device: DeviceId,
        module: ModuleId,
        twin: Twin,
    },
    RemoveModule {
        device: DeviceId,
        module: ModuleId,
    },
}

#[derive(Debug, Default)]
pub(crate) struct TwinState {
    twins: HashMap<DeviceId, Twin>,
    /// Module twins, by device then module: a separate map, so that no key of one kind can
    /// name a twin of the other.
    modules: HashMap<DeviceId, HashMap<ModuleId, Twin>>,
}

impl TwinState {
    pub(crate) fn get(&self, device: &DeviceId) -> Twin {
        self.twins.get(device).cloned().unwrap_or_default()
    }

    pub(crate) fn has(&self, device: &DeviceId) -> bool {
        self.twins.contains_key(device)
    }

    /// The twin after `patch`, or why the patch is refused ([`Twin::patched`]).
    pub(crate) fn plan_patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        self.get(device)
            .patched(device, section, patch, if_version, limits)
    }
}

impl TwinState {
    pub(crate) fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Twin {
        self.modules
            .get(device)
            .and_then(|m| m.get(module))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn has_module(&self, device: &DeviceId, module: &ModuleId) -> bool {
        self.modules
            .get(device)
            .is_some_and(|m| m.contains_key(module))
    }

    /// The module twin after `patch` ([`Twin::patched`], errors naming the device).
    pub(crate) fn plan_module_patch(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        self.get_module(device, module)
            .patched(device, section, patch, if_version, limits)
    }
}

impl Journaled for TwinState {
    type Op = Op;

    fn apply(&mut self, op: Op) {
        match op {
            Op::Put { device, twin } => {
                self.twins.insert(device, twin);
            }
            Op::Remove { device } => {
                self.twins.remove(&device);
            }
            Op::PutModule {
                device,
                module,
                twin,
            } => {
                self.modules.entry(device).or_default().insert(module, twin);
            }
            Op::RemoveModule { device, module } => {
                if let Some(modules) = self.modules.get_mut(&device) {
                    modules.remove(&module);
                    if modules.is_empty() {
                        self.modules.remove(&device);
                    }
                }
            }
        }
    }

    fn snapshot_ops(&self) -> Vec<Op> {
        let modules = self.modules.iter().flat_map(|(device, modules)| {
            modules.iter().map(|(module, twin)| Op::PutModule {
                device: device.clone(),
                module: module.clone(),
                twin: twin.clone(),
            })
        });
        self.twins
            .iter()
            .map(|(device, twin)| Op::Put {
                device: device.clone(),
                twin: twin.clone(),
            })
            .chain(modules)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use serde_json::json;

    #[test]
    fn versions_limits_and_preconditions() {
        let mut s = TwinState::default();
        let d: DeviceId = "d".parse().expect("id");
        let limits = TwinLimits {
            max_section_bytes: 64,
            max_depth: 3,
        };
        let t = s
            .plan_patch(&d, Section::Desired, &json!({"a": 1}), Some(0), limits)
            .expect("patch");
        assert_eq!(t.desired.version, 1);
        s.apply(Op::Put {
            device: d.clone(),
            twin: t,
        });
        assert!(matches!(
            s.plan_patch(&d, Section::Desired, &json!({"a": 2}), Some(0), limits),
            Err(Error::PreconditionFailed { actual: 1, .. })
        ));
        assert!(matches!(
            s.plan_patch(
                &d,
                Section::Reported,
                &json!({"x": "y".repeat(80)}),
                None,
                limits
            ),
            Err(Error::TooLarge { .. })
        ));
        assert!(
            s.plan_patch(
                &d,
                Section::Reported,
                &json!({"a": {"b": {"c": {"d": 1}}}}),
                None,
                limits
            )
            .is_err()
        );
        assert!(
            s.plan_patch(&d, Section::Reported, &json!([1]), None, limits)
                .is_err()
        );
    }
}
