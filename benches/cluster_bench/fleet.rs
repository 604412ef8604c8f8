//! The bench's devices: identities in the run's namespace, and how each one logs in over MQTT.
//!
//! Every device's key is derived from one group key (as a symmetric-key group enrollment derives
//! them), so the bench keeps one key in memory instead of a thousand.

use std::net::SocketAddr;

use futures::StreamExt;
use iot_sdk::identity::{Credentials, IdentityStore, NewIdentity, SymmetricKey, sas};
use iot_sdk::postgres::{PgIdentityConfig, PgIdentityStore, PgPool};

/// The host name the nodes are started with (`NodeOptions::host`), and so the one in tokens.
pub(crate) const HOST: &str = "localhost";

/// Identity creations in flight at once: enough to keep PostgreSQL busy, not so many that the
/// pool queues them.
const CREATING_AT_ONCE: usize = 16;

/// One device as the load generator connects it.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub(crate) id: String,
    pub(crate) username: String,
    pub(crate) token: String,
    /// The node's MQTT address it connects to.
    pub(crate) broker: SocketAddr,
}

/// A run's devices: `{prefix}-{i}` in `namespace`, keys derived from `group`.
#[derive(Debug)]
pub(crate) struct Fleet {
    group: SymmetricKey,
    prefix: String,
}

impl Fleet {
    pub(crate) fn new(prefix: &str) -> Self {
        Fleet {
            group: SymmetricKey::generate(),
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Creates devices `0..count` in the hub's identity namespace (what the nodes of hub
    /// `namespace` authenticate against).
    pub(crate) async fn create(
        &self,
        pool: &PgPool,
        namespace: &str,
        count: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.create_range(pool, namespace, 0..count).await
    }

    /// Creates devices `range` in the hub's identity namespace.
    pub(crate) async fn create_range(
        &self,
        pool: &PgPool,
        namespace: &str,
        range: std::ops::Range<usize>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let store = PgIdentityStore::open(
            pool.clone(),
            PgIdentityConfig::default().namespace(namespace),
        )
        .await?;
        let results: Vec<_> = futures::stream::iter(range)
            .map(|i| {
                let store = &store;
                let id = self.id(i);
                let key = self.group.derive_for_device(&id);
                async move {
                    let credentials = Credentials::SymmetricKeys {
                        primary: key,
                        secondary: SymmetricKey::generate(),
                    };
                    store
                        .create(NewIdentity::new(id.parse()?, credentials))
                        .await
                        .map(|_| ())
                        .map_err(Box::<dyn std::error::Error>::from)
                }
            })
            .buffer_unordered(CREATING_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// Device `i`'s key, base64.
    pub(crate) fn key(&self, i: usize) -> String {
        self.group
            .derive_for_device(&self.id(i))
            .expose_base64()
            .to_string()
    }

    /// Device `i`'s MQTT login to `broker`: username and a SAS token signed with its key.
    pub(crate) fn login(
        &self,
        i: usize,
        broker: SocketAddr,
    ) -> Result<Login, Box<dyn std::error::Error>> {
        let id = self.id(i);
        let key = self.group.derive_for_device(&id);
        let token = sas::generate(
            &format!("{HOST}/devices/{id}"),
            &key,
            sas::unix_now() + 3600,
            None,
        )?;
        Ok(Login {
            username: format!("{HOST}/{id}/?api-version=2021-04-12"),
            token: token.as_str().to_owned(),
            id,
            broker,
        })
    }
}
