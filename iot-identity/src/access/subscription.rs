//! Alert subscriptions: a user asks for the alerts of the devices they may read to be pushed to a
//! webhook of theirs. The records live beside the access matrix (the same user names; deleting a
//! user is for the caller to follow with [`SubscriptionStore::delete_of`]); the delivery, and the
//! check that the user's grants cover each alert's device, is the alert push processor's
//! (`iot_sdk::alert_push`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use iot_core::{DeviceId, Timestamp};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::names::UserName;
use crate::error::{Error, Result, shorten};

/// The most subscriptions one user may hold.
pub const MAX_SUBSCRIPTIONS_PER_USER: usize = 16;
/// The most devices a subscription's filter may name.
pub const MAX_SUBSCRIPTION_DEVICES: usize = 1000;
/// The longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// The shortest and longest webhook secret accepted, in bytes.
pub const WEBHOOK_SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// The HMAC key alerts to a subscription are signed with. Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscriptionSecret(Zeroizing<String>);

impl SubscriptionSecret {
    /// A secret of 32 random bytes (43 characters of URL-safe base64).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut bytes[..]);
        SubscriptionSecret(Zeroizing::new(URL_SAFE_NO_PAD.encode(&bytes[..])))
    }

    /// A secret chosen by the user (16 to 256 bytes), as GitHub's webhooks take one.
    pub fn new(secret: impl Into<String>) -> Result<Self> {
        let secret = Zeroizing::new(secret.into());
        if !WEBHOOK_SECRET_LEN.contains(&secret.len()) {
            return Err(Error::invalid(format!(
                "a webhook secret is {} to {} bytes",
                WEBHOOK_SECRET_LEN.start(),
                WEBHOOK_SECRET_LEN.end()
            )));
        }
        Ok(SubscriptionSecret(secret))
    }

    /// A secret as a store of this crate wrote it (checked when it was made).
    pub(crate) fn from_stored(secret: String) -> Self {
        SubscriptionSecret(Zeroizing::new(secret))
    }

    /// The secret's text: the HMAC key is its UTF-8 bytes.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Debug for SubscriptionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionSecret(<redacted>)")
    }
}

/// One user's request for alerts pushed to a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscription {
    /// Its id (random, 16 hex digits), unique in the store.
    pub id: String,
    /// Whose it is: alerts reach it only for devices this user may read.
    pub user: UserName,
    /// Where alerts are posted (`http://` or `https://`).
    pub url: String,
    /// Only alerts of these devices, when set (still only those the user may read).
    pub devices: Option<BTreeSet<DeviceId>>,
    /// The signing key.
    pub secret: SubscriptionSecret,
    /// When it was made.
    pub created_at: Timestamp,
}

impl Subscription {
    /// A new subscription with a fresh id, its input checked.
    pub fn new(
        user: UserName,
        url: impl Into<String>,
        devices: Option<BTreeSet<DeviceId>>,
        secret: SubscriptionSecret,
    ) -> Result<Self> {
        let url = url.into();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || url.len() > MAX_WEBHOOK_URL_LEN || url.chars().any(char::is_whitespace) {
            return Err(Error::invalid(format!(
                "a webhook URL is http:// or https://, at most {MAX_WEBHOOK_URL_LEN} bytes, \
                 not {:?}",
                shorten(&url, 64)
            )));
        }
        if devices
            .as_ref()
            .is_some_and(|d| d.is_empty() || d.len() > MAX_SUBSCRIPTION_DEVICES)
        {
            return Err(Error::invalid(format!(
                "a subscription's device filter names 1 to {MAX_SUBSCRIPTION_DEVICES} devices"
            )));
        }
        let mut id = [0u8; 8];
        rand::rng().fill_bytes(&mut id);
        Ok(Subscription {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            user,
            url,
            devices,
            secret,
            created_at: Timestamp::now(),
        })
    }

    /// A subscription as a store outside this crate read it back (no checks: the store wrote
    /// what [`new`](Self::new) checked).
    pub fn from_parts(
        id: String,
        user: UserName,
        url: String,
        devices: Option<BTreeSet<DeviceId>>,
        secret: SubscriptionSecret,
        created_at: Timestamp,
    ) -> Self {
        Subscription {
            id,
            user,
            url,
            devices,
            secret,
            created_at,
        }
    }

    /// Whether the subscription's own device filter lets `device` through (the user's grants
    /// are checked apart).
    pub fn wants(&self, device: &DeviceId) -> bool {
        self.devices.as_ref().is_none_or(|d| d.contains(device))
    }
}

/// A subscription as the REST API shows it (no secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SubscriptionView {
    /// Its id.
    pub id: String,
    /// Where alerts are posted.
    pub url: String,
    /// The device filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<BTreeSet<DeviceId>>,
    /// When it was made (microseconds since the Unix epoch).
    pub created_us: u64,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        SubscriptionView {
            id: s.id.clone(),
            url: s.url.clone(),
            devices: s.devices.clone(),
            created_us: s.created_at.as_unix_micros(),
        }
    }
}

/// Where subscriptions live.
///
/// Contract: ids are unique; a user holds at most [`MAX_SUBSCRIPTIONS_PER_USER`]
/// ([`Error::InvalidInput`] beyond); listings are by user, then id.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + Debug + 'static {
    /// Adds a subscription.
    async fn add(&self, subscription: Subscription) -> Result<()>;
    /// The subscriptions of `user`.
    async fn of_user(&self, user: &UserName) -> Result<Vec<Subscription>>;
    /// Every subscription.
    async fn all(&self) -> Result<Vec<Subscription>>;
    /// Removes `user`'s subscription `id`; `false` if they held none by that id.
    async fn remove(&self, user: &UserName, id: &str) -> Result<bool>;
    /// Removes every subscription of `user` (when the user is deleted); returns how many.
    async fn delete_of(&self, user: &UserName) -> Result<usize>;
}

/// A [`SubscriptionStore`] in memory.
#[derive(Debug, Default)]
pub struct MemorySubscriptionStore {
    by_user: Mutex<BTreeMap<UserName, BTreeMap<String, Subscription>>>,
}

impl MemorySubscriptionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<UserName, BTreeMap<String, Subscription>>> {
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SubscriptionStore for MemorySubscriptionStore {
    async fn add(&self, subscription: Subscription) -> Result<()> {
        let mut all = self.lock();
        if all.values().any(|held| held.contains_key(&subscription.id)) {
            return Err(Error::invalid("a subscription with this id exists"));
        }
        let held = all.entry(subscription.user.clone()).or_default();
        if held.len() >= MAX_SUBSCRIPTIONS_PER_USER {
            return Err(Error::invalid(format!(
                "user {} already has {MAX_SUBSCRIPTIONS_PER_USER} subscriptions",
                subscription.user
            )));
        }
        held.insert(subscription.id.clone(), subscription);
        Ok(())
    }

    async fn of_user(&self, user: &UserName) -> Result<Vec<Subscription>> {
        Ok(self
            .lock()
            .get(user)
            .map(|held| held.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn all(&self) -> Result<Vec<Subscription>> {
        Ok(self
            .lock()
            .values()
            .flat_map(|h| h.values().cloned())
            .collect())
    }

    async fn remove(&self, user: &UserName, id: &str) -> Result<bool> {
        let mut all = self.lock();
        let removed = all.get_mut(user).and_then(|h| h.remove(id)).is_some();
        if all.get(user).is_some_and(BTreeMap::is_empty) {
            all.remove(user);
        }
        Ok(removed)
    }

    async fn delete_of(&self, user: &UserName) -> Result<usize> {
        Ok(self.lock().remove(user).map_or(0, |h| h.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_passes_the_subscription_suite() {
        crate::testkit::subscriptions::run_subscriptions(&MemorySubscriptionStore::new()).await;
    }
}
