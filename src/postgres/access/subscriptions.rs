//! [`PgSubscriptionStore`]: users' alert subscriptions beside the access matrix's tables, deleted
//! with their user (a foreign key), shared by every process on the database.

use std::collections::BTreeSet;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::access::{
    MAX_SUBSCRIPTIONS_PER_USER, Subscription, SubscriptionSecret, SubscriptionStore, UserName,
};
use iot_identity::{Error, Result};
use tokio_postgres::Row;

use super::{PgAccessStore, query, rows::corrupt};
use crate::postgres::values::{from_micros, to_micros};

const LOCK_USER: &str = "SELECT 1 FROM iot_access_users WHERE name = $1 FOR UPDATE";
const COUNT: &str = "SELECT count(*) FROM iot_access_subscriptions WHERE user_name = $1";
const INSERT: &str = "INSERT INTO iot_access_subscriptions \
     (id, user_name, url, devices, secret, created_us) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (id) DO NOTHING";
const COLUMNS: &str = "id, user_name, url, devices, secret, created_us";
const REMOVE: &str = "DELETE FROM iot_access_subscriptions WHERE user_name = $1 AND id = $2";
const REMOVE_OF: &str = "DELETE FROM iot_access_subscriptions WHERE user_name = $1";

/// A [`SubscriptionStore`] in the access store's database (from [`PgAccessStore::subscriptions`]).
/// A subscription names a user of the access store (else [`Error::UserNotFound`]) and goes when
/// the user is deleted. The webhook secret is stored as given (the hub signs with it); it never
/// appears in errors or `Debug`.
#[derive(Clone, Debug)]
pub struct PgSubscriptionStore {
    store: PgAccessStore,
}

impl PgAccessStore {
    /// The alert subscriptions kept beside this store's users.
    pub fn subscriptions(&self) -> PgSubscriptionStore {
        PgSubscriptionStore {
            store: self.clone(),
        }
    }
}

fn subscription(row: &Row) -> Result<Subscription> {
    let id: String = row.get(0);
    let user: &str = row.get(1);
    let user = UserName::new(user).map_err(|_| corrupt(format!("subscription {id}: user")))?;
    let devices: Option<&str> = row.get(3);
    let devices = devices
        .map(serde_json::from_str::<BTreeSet<DeviceId>>)
        .transpose()
        .map_err(|e| corrupt(format!("subscription {id}: devices: {e}")))?;
    let secret: String = row.get(4);
    let secret = SubscriptionSecret::new(secret)
        .map_err(|_| corrupt(format!("subscription {id}: secret")))?;
    Ok(Subscription::from_parts(
        id,
        user,
        row.get(2),
        devices,
        secret,
        from_micros(row.get(5)),
    ))
}

#[async_trait]
impl SubscriptionStore for PgSubscriptionStore {
    async fn add(&self, s: Subscription) -> Result<()> {
        let devices = s
            .devices
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::InvalidInput {
                reason: format!("a subscription's devices: {e}"),
            })?;
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(query("begin subscribe"))?;
                    let user = s.user.as_str();
                    // The user's row is the lock under which their subscriptions are counted.
                    tx.query_opt(LOCK_USER, &[&user])
                        .await
                        .map_err(query("lock a user"))?
                        .ok_or_else(|| Error::UserNotFound {
                            user: s.user.clone(),
                        })?;
                    let held: i64 = tx
                        .query_one(COUNT, &[&user])
                        .await
                        .map_err(query("count subscriptions"))?
                        .get(0);
                    if held >= i64::try_from(MAX_SUBSCRIPTIONS_PER_USER).unwrap_or(i64::MAX) {
                        return Err(Error::InvalidInput {
                            reason: format!(
                                "user {} already has {MAX_SUBSCRIPTIONS_PER_USER} subscriptions",
                                s.user
                            ),
                        });
                    }
                    let added = tx
                        .execute(
                            INSERT,
                            &[
                                &s.id,
                                &user,
                                &s.url,
                                &devices,
                                &s.secret.expose(),
                                &to_micros(s.created_at),
                            ],
                        )
                        .await
                        .map_err(query("add a subscription"))?;
                    if added == 0 {
                        return Err(Error::InvalidInput {
                            reason: "a subscription with this id exists".into(),
                        });
                    }
                    tx.commit().await.map_err(query("commit subscribe"))?;
                    Ok(())
                })
            })
            .await
    }

    async fn of_user(&self, user: &UserName) -> Result<Vec<Subscription>> {
        let user = user.clone();
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM iot_access_subscriptions WHERE user_name = $1 \
                         ORDER BY id"
                    );
                    let found = c
                        .query(&sql, &[&user.as_str()])
                        .await
                        .map_err(query("list a user's subscriptions"))?;
                    found.iter().map(subscription).collect()
                })
            })
            .await
    }

    async fn all(&self) -> Result<Vec<Subscription>> {
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM iot_access_subscriptions ORDER BY user_name, id"
                    );
                    let found = c
                        .query(&sql, &[])
                        .await
                        .map_err(query("list subscriptions"))?;
                    found.iter().map(subscription).collect()
                })
            })
            .await
    }

    async fn remove(&self, user: &UserName, id: &str) -> Result<bool> {
        let (user, id) = (user.clone(), id.to_owned());
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let removed = c
                        .execute(REMOVE, &[&user.as_str(), &id])
                        .await
                        .map_err(query("remove a subscription"))?;
                    Ok(removed > 0)
                })
            })
            .await
    }

    async fn delete_of(&self, user: &UserName) -> Result<usize> {
        let user = user.clone();
        self.store
            .call(move |c| {
                Box::pin(async move {
                    let removed = c
                        .execute(REMOVE_OF, &[&user.as_str()])
                        .await
                        .map_err(query("remove a user's subscriptions"))?;
                    Ok(usize::try_from(removed).unwrap_or(usize::MAX))
                })
            })
            .await
    }
}
