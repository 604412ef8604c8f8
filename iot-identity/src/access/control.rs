//! `AccessControl`: logins, sessions and checks over an [`AccessStore`], a [`DeviceSets`]
//! resolver and an [`AuditSink`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use iot_core::{DeviceId, Timestamp};
use tracing::{instrument, warn};
use zeroize::Zeroizing;

use super::audit::{AccessAuditRecord, AuditSink, TracingAuditSink};
use super::decision::{Decision, DenyReason, Target};
use super::device_sets::DeviceSets;
use super::grant::{DeviceSet, Grant};
use super::names::UserName;
use super::permission::Permission;
use super::session::{Session, SessionDigest, SessionToken};
use super::user::{NewUser, User};
use super::{AccessStore, UserAccess};
use crate::auth::verify_passphrase;
use crate::credentials::{PassphraseHash, PassphraseParams};
use crate::error::{Error, Result, shorten};

/// The longest session lifetime accepted.
const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How an [`AccessControl`] hashes passwords and how long sessions last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessConfig {
    /// How long a session is accepted after login. Default 8 hours; at most 30 days.
    pub session_ttl: Duration,
    /// argon2id cost of new password hashes. Default OWASP's ([`PassphraseParams::OWASP`]).
    pub password_params: PassphraseParams,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            session_ttl: Duration::from_secs(8 * 3600),
            password_params: PassphraseParams::OWASP,
        }
    }
}

impl AccessConfig {
    /// Sets the session lifetime.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Sets the argon2id cost of new password hashes.
    pub fn password_params(mut self, params: PassphraseParams) -> Self {
        self.password_params = params;
        self
    }
}

/// The access matrix in use: users log in for a session, and every call is checked (user,
/// permission, target) to an [`Allow`](Decision::Allow) or an audited
/// [`Deny`](Decision::Deny). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessControl {
    store: Arc<dyn AccessStore>,
    sets: Arc<dyn DeviceSets>,
    audit: Arc<dyn AuditSink>,
    config: AccessConfig,
    /// A hash checked when the user is unknown, so that a refused login takes as long whether or
    /// not the name exists (no user enumeration by timing).
    decoy: Arc<OnceLock<Option<PassphraseHash>>>,
}

impl AccessControl {
    /// Checks against `store`, resolving query and node grants with `sets`; denials go to
    /// [`TracingAuditSink`] until [`with_audit`](Self::with_audit) names another sink.
    pub fn new(store: Arc<dyn AccessStore>, sets: Arc<dyn DeviceSets>) -> Self {
        AccessControl {
            store,
            sets,
            audit: Arc::new(TracingAuditSink),
            config: AccessConfig::default(),
            decoy: Arc::new(OnceLock::new()),
        }
    }

    /// Sends denials to `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = sink;
        self
    }

    /// Uses `config` (refused if the session lifetime is zero or over 30 days).
    pub fn with_config(mut self, config: AccessConfig) -> Result<Self> {
        if config.session_ttl.is_zero() || config.session_ttl > MAX_SESSION_TTL {
            return Err(Error::invalid(
                "a session lifetime is more than zero and at most 30 days",
            ));
        }
        self.config = config;
        self.decoy = Arc::new(OnceLock::new());
        Ok(self)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn AccessStore> {
        &self.store
    }

    /// Creates a user with `password` (hashed with argon2id on the blocking pool; the password
    /// itself goes nowhere).
    pub async fn create_user(&self, name: UserName, password: &str) -> Result<User> {
        let hash = self.hash(password).await?;
        self.store.create_user(NewUser::new(name, hash)).await
    }

    /// Changes a user's password; their sessions end.
    pub async fn set_password(&self, name: &UserName, password: &str) -> Result<User> {
        let hash = self.hash(password).await?;
        self.store.set_password(name, hash).await
    }

    /// Adds a grant, refusing a query the resolver says can never match.
    pub async fn grant(&self, grant: Grant) -> Result<bool> {
        if let DeviceSet::Query(query) = &grant.devices {
            self.sets.check_query(query)?;
        }
        self.store.add_grant(grant).await
    }

    /// Logs `user` in with `password`: a new session and its token, which is shown only here.
    /// Every refusal (unknown user, wrong password, disabled user) is the same
    /// [`Error::LoginRefused`], takes about as long, and is audited.
    #[instrument(skip_all, fields(user = %shorten(user, 64)))]
    pub async fn login(&self, user: &str, password: &str) -> Result<(SessionToken, Session)> {
        let found = match UserName::new(user) {
            Ok(name) => self.store.get_user(&name).await?,
            Err(_) => None,
        };
        let verified = match &found {
            Some(u) => verify_passphrase(u.password.clone(), password).await && !u.disabled,
            None => {
                if let Some(decoy) = self.decoy().await {
                    let _ = verify_passphrase(decoy, password).await;
                }
                false
            }
        };
        let Some(found) = found.filter(|_| verified) else {
            self.audit
                .record(AccessAuditRecord::denied(
                    &shorten(user, 128),
                    "login",
                    None,
                    "login_refused",
                    "the user name or password is wrong, or the user is disabled".to_owned(),
                ))
                .await;
            return Err(Error::LoginRefused {
                user: shorten(user, 64),
            });
        };
        let token = SessionToken::generate();
        let now = Timestamp::now();
        let session = Session::new(
            token.digest(),
            found.name,
            now,
            now.saturating_add(self.config.session_ttl),
        );
        self.store.insert_session(session.clone()).await?;
        Ok((token, session))
    }

    /// The live session of `token`, or [`Error::SessionRefused`] (malformed, unknown, revoked or
    /// expired).
    pub async fn session(&self, token: &str) -> Result<Session> {
        let digest = SessionDigest::of_presented(token)?;
        let session = self
            .store
            .get_session(&digest)
            .await?
            .ok_or(Error::SessionRefused {
                what: "unknown or ended session",
            })?;
        if session.is_expired(Timestamp::now()) {
            return Err(Error::SessionRefused {
                what: "expired session",
            });
        }
        Ok(session)
    }

    /// Ends the session of `token`; `false` if there was none.
    pub async fn logout(&self, token: &str) -> Result<bool> {
        let digest = SessionDigest::of_presented(token)?;
        self.store.revoke_session(&digest).await
    }

    /// Checks the session of `token`, then what its user may do: `Err` when the session is not
    /// accepted (answer 401), else the decision (a denial answers 403).
    pub async fn check_session(
        &self,
        token: &str,
        permission: Permission,
        target: &Target,
    ) -> Result<(Session, Decision)> {
        let session = self.session(token).await?;
        let decision = self.check(&session.user, permission, target).await;
        Ok((session, decision))
    }

    /// Whether `user` may use `permission` on `target`. A denial is audited. Failures of the
    /// store or the resolver deny ([`DenyReason::Unavailable`]): access control fails closed.
    #[instrument(skip_all, fields(user = %user, permission = %permission, target = %target))]
    pub async fn check(
        &self,
        user: &UserName,
        permission: Permission,
        target: &Target,
    ) -> Decision {
        let decision = match self.store.access_of(user).await {
            Ok(Some(access)) => self.decide(&access, permission, target).await,
            Ok(None) => Decision::Deny(DenyReason::UnknownUser),
            Err(e) => {
                warn!(error = %e, "the access store failed; denying");
                Decision::Deny(DenyReason::Unavailable)
            }
        };
        if let Decision::Deny(reason) = decision {
            self.audit
                .record(AccessAuditRecord::denied(
                    user.as_str(),
                    permission.name(),
                    target.device().map(|d| d.as_str()),
                    reason.kind(),
                    format!("{permission} on {target} denied: {reason}"),
                ))
                .await;
        }
        decision
    }

    /// Those of `devices` on which `user` may use `permission`, in their order: for filtering a
    /// listing (a dashboard's device list) to what the user may see. Nothing here is audited: a
    /// device left out of a list is not a refused call. A store failure gives an empty list.
    /// Query and node grants cost a resolver call per device they are asked about.
    pub async fn allowed_devices(
        &self,
        user: &UserName,
        permission: Permission,
        devices: impl IntoIterator<Item = DeviceId>,
    ) -> Vec<DeviceId> {
        let access = match self.store.access_of(user).await {
            Ok(Some(access)) => access,
            Ok(None) => return Vec::new(),
            Err(e) => {
                warn!(error = %e, "the access store failed; listing nothing");
                return Vec::new();
            }
        };
        let mut allowed = Vec::new();
        for device in devices {
            let target = Target::Device(device);
            if self.decide(&access, permission, &target).await.is_allowed()
                && let Target::Device(device) = target
            {
                allowed.push(device);
            }
        }
        allowed
    }

    async fn decide(
        &self,
        access: &UserAccess,
        permission: Permission,
        target: &Target,
    ) -> Decision {
        if access.user.disabled {
            return Decision::Deny(DenyReason::UserDisabled);
        }
        let relevant = access
            .grants
            .iter()
            .filter(|(_, permissions)| permissions.contains(permission))
            .map(|(grant, _)| &grant.devices);
        let device = match target {
            Target::Hub => {
                return if relevant.clone().any(|set| *set == DeviceSet::All) {
                    Decision::Allow
                } else {
                    Decision::Deny(DenyReason::NotGranted)
                };
            }
            Target::Device(device) => device,
        };
        // Grants decided here first; the resolver (a registry read each) only if none allows.
        if relevant
            .clone()
            .any(|set| matches!(set, DeviceSet::All) || *set == DeviceSet::Device(device.clone()))
        {
            return Decision::Allow;
        }
        let mut unresolved = false;
        for set in relevant {
            let answer = match set {
                DeviceSet::Query(query) => self.sets.matches_query(device, query).await,
                DeviceSet::Node(node) => self.sets.under_node(device, node).await,
                _ => continue,
            };
            match answer {
                Ok(true) => return Decision::Allow,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, set = %set, "a device set could not be resolved");
                    unresolved = true;
                }
            }
        }
        Decision::Deny(if unresolved {
            DenyReason::Unavailable
        } else {
            DenyReason::NotGranted
        })
    }

    async fn hash(&self, password: &str) -> Result<PassphraseHash> {
        let password = Zeroizing::new(password.to_owned());
        let params = self.config.password_params;
        // argon2 costs tens of milliseconds of CPU: keep it off the async workers.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(move || PassphraseHash::hash(&password, &params))
                .await
                .map_err(|e| Error::invalid(format!("password hashing did not finish: {e}")))?,
            Err(_) => PassphraseHash::hash(&password, &params),
        }
    }

    async fn decoy(&self) -> Option<PassphraseHash> {
        if let Some(decoy) = self.decoy.get() {
            return decoy.clone();
        }
        let decoy = self.hash("decoy password never given to anyone").await.ok();
        self.decoy.get_or_init(|| decoy).clone()
    }
}
