//! SASL for the endpoint: ANONYMOUS (the client then proves itself with a `$cbs` token, as
//! every Event Hubs SDK does) and PLAIN with a shared access policy's name and key (or a SAS
//! token as the password), which authorizes the connection at once.

use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use iot_gateway::http::{PolicyStore, Rights};

use super::claims::unix_now;
use super::token;

/// Byte-wise comparison whose time depends on the lengths only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One connection's SASL exchange; the outcome is read back through `granted`.
#[derive(Clone)]
pub(crate) struct Sasl {
    policies: Arc<PolicyStore>,
    host: Arc<str>,
    entity: Arc<str>,
    /// Set when PLAIN proved a policy with ServiceConnect: until when.
    pub(crate) granted: Arc<Mutex<Option<u64>>>,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl").finish_non_exhaustive()
    }
}

impl Sasl {
    pub(crate) fn new(policies: Arc<PolicyStore>, host: Arc<str>, entity: Arc<str>) -> Self {
        Sasl {
            policies,
            host,
            entity,
            granted: Arc::default(),
        }
    }

    /// Checks PLAIN's `authcid` (a policy name) and password (its key, or a SAS token).
    fn plain(&self, response: &[u8]) -> Option<u64> {
        let mut parts = response.split(|b| *b == 0);
        let _authzid = parts.next()?;
        let name = std::str::from_utf8(parts.next()?).ok()?;
        let password = std::str::from_utf8(parts.next()?).ok()?;
        if password.starts_with("SharedAccessSignature ") {
            let grant = token::verify(
                password,
                &self.host,
                &self.entity,
                &self.policies,
                unix_now(),
            )
            .ok()?;
            return Some(grant.expires);
        }
        let policy = self.policies.get(name)?;
        let matches = [&policy.primary, &policy.secondary]
            .iter()
            .any(|k| ct_eq(k.expose_base64().as_bytes(), password.as_bytes()));
        (matches && policy.rights.contains(Rights::SERVICE_CONNECT)).then_some(u64::MAX)
    }

    fn outcome(code: SaslCode) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("PLAIN"), Symbol::from("ANONYMOUS")])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.as_str() {
            "ANONYMOUS" => Self::outcome(SaslCode::Ok),
            "PLAIN" => {
                let response = init.initial_response.map(|b| b.into_vec());
                match response.as_deref().and_then(|r| self.plain(r)) {
                    Some(until) => {
                        *self.granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
                        Self::outcome(SaslCode::Ok)
                    }
                    None => {
                        tracing::debug!("SASL PLAIN refused");
                        Self::outcome(SaslCode::Auth)
                    }
                }
            }
            _ => Self::outcome(SaslCode::Auth),
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism has a second round.
        Self::outcome(SaslCode::Auth)
    }
}
