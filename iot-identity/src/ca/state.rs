//! The decisions both stores make the same way: check the condition, draw the version.

use std::collections::BTreeMap;

use super::error::CaError;
use super::record::{CaCertificate, StoredCa};
use super::store::CaCondition;

/// The certificates and the version counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CaState {
    pub(crate) certificates: BTreeMap<String, StoredCa>,
    /// The last version given out.
    pub(crate) last_version: u64,
}

impl CaState {
    fn check(&self, name: &str, condition: CaCondition, deleting: bool) -> Result<(), CaError> {
        let stored = self.certificates.get(name);
        match (condition, stored) {
            (CaCondition::Absent, Some(_)) => Err(CaError::Exists {
                name: name.to_owned(),
            }),
            (CaCondition::Version(v), Some(s)) if s.version != v => Err(CaError::Changed {
                name: name.to_owned(),
                expected: v,
                actual: s.version,
            }),
            (CaCondition::Version(_), None) => Err(CaError::NotFound {
                name: name.to_owned(),
            }),
            (CaCondition::Any, None) if deleting => Err(CaError::NotFound {
                name: name.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Applies a put; the stored result.
    pub(crate) fn put(
        &mut self,
        certificate: CaCertificate,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        super::record::check_name(certificate.name())?;
        self.check(certificate.name(), condition, false)?;
        self.last_version += 1;
        let stored = StoredCa {
            certificate,
            version: self.last_version,
        };
        self.certificates
            .insert(stored.certificate.name().to_owned(), stored.clone());
        Ok(stored)
    }

    /// Applies a delete.
    pub(crate) fn delete(&mut self, name: &str, condition: CaCondition) -> Result<(), CaError> {
        self.check(name, condition, true)?;
        self.certificates.remove(name);
        Ok(())
    }
}
