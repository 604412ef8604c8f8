//! SASL as IoT Hub offers it: MSSBCBS and ANONYMOUS (the client then authenticates with
//! claims-based security on `$cbs`) and PLAIN (user `{deviceId}@sas.{hub}` or `{policy}@sas.root.{hub}`,
//! password a SAS token).
//!
//! fe2o3-amqp's SASL hook is synchronous, so it cannot ask the identity store; PLAIN is therefore
//! accepted at the SASL layer and its token verified as soon as the connection is open, before
//! any session is taken (a bad token closes the connection with `amqp:unauthorized-access`).
//! Each connection gets an acceptor of its own, so the password it captures belongs to that
//! connection alone.

use std::fmt;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use zeroize::Zeroizing;

const ANONYMOUS: &str = "ANONYMOUS";
const PLAIN: &str = "PLAIN";
/// Microsoft's mechanism for "authenticates with `$cbs` next" (uamqp, the Python service SDK's
/// AMQP stack, asks for it); it carries no credential, so it is ANONYMOUS by another name.
const MSSBCBS: &str = "MSSBCBS";
/// The longest PLAIN response taken (user, password and separators); SAS tokens are a few
/// hundred bytes.
const MAX_PLAIN: usize = 4096;

/// What a client presented in SASL.
#[derive(Clone, Default)]
pub(super) enum Offered {
    /// Nothing yet (no SASL outcome was reached).
    #[default]
    Nothing,
    /// ANONYMOUS.
    Anonymous,
    /// PLAIN with this password (a SAS token).
    Plain(Zeroizing<String>),
}

impl fmt::Debug for Offered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is a credential: never in Debug output.
        match self {
            Offered::Nothing => f.write_str("Nothing"),
            Offered::Anonymous => f.write_str("Anonymous"),
            Offered::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

/// The SASL acceptor of one connection.
#[derive(Clone, Debug, Default)]
pub(super) struct Sasl {
    offered: Arc<Mutex<Offered>>,
}

impl Sasl {
    /// What the client presented (taken: the password is kept no longer than needed).
    pub(super) fn take(&self) -> Offered {
        std::mem::take(&mut *self.offered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, offered: Offered) {
        *self.offered.lock().unwrap_or_else(|e| e.into_inner()) = offered;
    }
}

fn outcome(code: SaslCode) -> SaslServerFrame {
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

/// The password of a PLAIN response `authzid NUL authcid NUL passwd` (RFC 4616).
fn plain_password(response: &[u8]) -> Option<Zeroizing<String>> {
    if response.len() > MAX_PLAIN {
        return None;
    }
    let mut parts = response.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if authcid.is_empty() || password.is_empty() {
        return None;
    }
    std::str::from_utf8(password)
        .ok()
        .map(|p| Zeroizing::new(p.to_owned()))
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from(MSSBCBS),
            Symbol::from(PLAIN),
            Symbol::from(ANONYMOUS),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.as_str() {
            ANONYMOUS | MSSBCBS => {
                self.set(Offered::Anonymous);
                outcome(SaslCode::Ok)
            }
            PLAIN => match init
                .initial_response
                .as_ref()
                .and_then(|r| plain_password(r.as_ref()))
            {
                Some(password) => {
                    self.set(Offered::Plain(password));
                    outcome(SaslCode::Ok)
                }
                None => outcome(SaslCode::Auth),
            },
            _ => outcome(SaslCode::Auth),
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism has a challenge, so there is nothing to respond to.
        outcome(SaslCode::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_takes_the_password_and_refuses_malformed_responses() {
        let p = plain_password(b"\0d1@sas.hub\0SharedAccessSignature sr=x").expect("password");
        assert_eq!(p.as_str(), "SharedAccessSignature sr=x");
        assert!(plain_password(b"no separators").is_none());
        assert!(plain_password(b"\0user\0").is_none());
        assert!(plain_password(&[0u8; 5000]).is_none());
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", Offered::Plain(Zeroizing::new("secret".into())));
        assert!(!text.contains("secret"));
    }
}
