//! The sink's store from a URL and options: `file:///dir`, and with features `s3://bucket/prefix`
//! and `az://container/prefix`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;

/// A misconfigured store: the URL, an option, the credentials, or (from
/// [`StoreConfig::connect`]) a store that refuses the first request.
///
/// Messages name the URL without user info, query or fragment and never carry an option's
/// value that may be a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreConfigError {
    /// The URL does not parse or has parts the sink does not take.
    #[error("object store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, without user info, query and fragment.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is not one of the sink's.
    #[error("object store URL scheme {scheme:?} is not supported (file, s3, az)")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
    },
    /// The URL's scheme needs a cargo feature that is off.
    #[error("object store URL scheme {scheme:?} needs iot-stream's feature `{feature}`")]
    FeatureOff {
        /// The scheme.
        scheme: String,
        /// The feature that turns it on.
        feature: &'static str,
    },
    /// An option the store does not know.
    #[error("object store option {key:?} is not known to the {backend} store")]
    UnknownOption {
        /// The store kind (`S3`, `Azure`, `local`).
        backend: &'static str,
        /// The option's key.
        key: String,
    },
    /// Credentials that are incomplete, malformed or refused by the store.
    #[error("object store {backend} credentials: {reason}")]
    Credentials {
        /// The store kind.
        backend: &'static str,
        /// What is wrong (never the secret itself).
        reason: String,
    },
    /// The bucket or container does not exist.
    #[error("object store {backend}: {what} does not exist")]
    NotFound {
        /// The store kind.
        backend: &'static str,
        /// The bucket or container, as in the URL.
        what: String,
    },
    /// Any other refusal by the store's builder or of the first request.
    #[error("object store {backend}: {reason}")]
    Store {
        /// The store kind.
        backend: &'static str,
        /// The store's own message, secrets removed.
        reason: String,
    },
}

/// Where an [`ObjectSink`](super::ObjectSink) writes: a URL and options.
///
/// * `file:///absolute/dir`: the local file system under that directory (fsync on every object).
/// * `s3://bucket/prefix` (feature `s3`): options are object_store's `AmazonS3ConfigKey` names
///   (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `token`, `allow_http`, …).
/// * `az://container/prefix` (feature `azure`, also `azure://`): options are
///   `AzureConfigKey` names (`account_name`, `access_key`, `sas_token`, `bearer_token`,
///   `endpoint`, `use_emulator`, `allow_http`, …).
///
/// With [`from_env`](Self::from_env), the store's own environment variables (`AWS_*`,
/// `AZURE_*`) are read first and explicit options override them. Debug output shows option
/// keys, and values only for options that cannot hold a secret.
#[derive(Clone)]
pub struct StoreConfig {
    url: String,
    options: BTreeMap<String, String>,
    env: bool,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret(k) { "<redacted>" } else { v };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("StoreConfig")
            .field("url", &sanitize(&self.url))
            .field("options", &options)
            .field("env", &self.env)
            .finish()
    }
}

/// Option keys whose values may be credentials (matched on parts of the key, so that every
/// alias, `aws_secret_access_key` or `secret_access_key`, is covered).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "key",
        "token",
        "sas",
        "password",
        "signature",
        "client_id",
    ]
    .iter()
    .any(|part| key.contains(part))
        && !matches!(
            key.as_str(),
            "skip_signature" | "aws_skip_signature" | "azure_skip_signature"
        )
}

/// The URL without user info, query and fragment (where credentials could be), for messages.
fn sanitize(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<user>@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl StoreConfig {
    /// A store at `url` configured by options alone.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            options: BTreeMap::new(),
            env: false,
        }
    }

    /// A store at `url` that also reads the store's environment variables (`AWS_*` for S3,
    /// `AZURE_*` for Azure); options set here take precedence.
    pub fn from_env(url: impl Into<String>) -> Self {
        StoreConfig {
            env: true,
            ..Self::new(url)
        }
    }

    /// Sets option `key` (object_store's key names, see the type's documentation).
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Sets several options.
    pub fn with_options<K: Into<String>, V: Into<String>>(
        mut self,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in options {
            self.options.insert(k.into(), v.into());
        }
        self
    }

    /// The URL without user info, query and fragment.
    pub fn display_url(&self) -> String {
        sanitize(&self.url)
    }

    /// Builds the store (no request is made; see [`connect`](Self::connect)).
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| self.invalid("not a URL (scheme://…)"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "file" => self.local(rest),
            "s3" | "s3a" => self.s3(),
            "az" | "azure" => self.azure(),
            other => Err(StoreConfigError::UnsupportedScheme {
                scheme: other.to_owned(),
            }),
        }
    }

    /// Builds the store and makes one request (a listing of the prefix), so that a wrong
    /// endpoint, a missing bucket or refused credentials show now as a typed error rather than
    /// as retried batch writes later.
    pub async fn connect(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        use futures::TryStreamExt;
        let store = self.build()?;
        let backend = self.backend();
        // The first page is enough to prove that the store answers and accepts us.
        let first = store.list(None).try_next().await;
        match first {
            Ok(_) => Ok(store),
            Err(e) => Err(self.request_error(backend, e)),
        }
    }

    fn backend(&self) -> &'static str {
        match self
            .url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
        {
            Some(s) if s == "s3" || s == "s3a" => "S3",
            Some(s) if s == "az" || s == "azure" => "Azure",
            _ => "local",
        }
    }

    fn request_error(&self, backend: &'static str, e: object_store::Error) -> StoreConfigError {
        let status = http_status(&e);
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreConfigError::Credentials {
                backend,
                reason: format!("refused by {}: {}", self.display_url(), self.scrub(&e)),
            },
            _ if matches!(status, Some(401 | 403)) => StoreConfigError::Credentials {
                backend,
                reason: format!(
                    "refused by {} (HTTP {}): {}",
                    self.display_url(),
                    status.unwrap_or_default(),
                    self.scrub(&e)
                ),
            },
            object_store::Error::NotFound { .. } => StoreConfigError::NotFound {
                backend,
                what: self.display_url(),
            },
            _ if status == Some(404) => StoreConfigError::NotFound {
                backend,
                what: self.display_url(),
            },
            e => StoreConfigError::Store {
                backend,
                reason: self.scrub(&e),
            },
        }
    }

    /// `e`'s message with every secret option value replaced.
    fn scrub(&self, e: &dyn fmt::Display) -> String {
        let mut message = e.to_string();
        for (k, v) in &self.options {
            // Short values (`true`, a region) are not secrets and would garble the text.
            if is_secret(k) && v.len() >= 6 {
                message = message.replace(v.as_str(), "<redacted>");
            }
        }
        message
    }

    fn invalid(&self, reason: impl Into<String>) -> StoreConfigError {
        StoreConfigError::InvalidUrl {
            url: self.display_url(),
            reason: reason.into(),
        }
    }

    fn local(&self, rest: &str) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        if let Some(key) = self.options.keys().next() {
            return Err(StoreConfigError::UnknownOption {
                backend: "local",
                key: key.clone(),
            });
        }
        // `file:///dir`: no host, an absolute path.
        if !rest.starts_with('/') || rest.contains(['?', '#']) {
            return Err(self.invalid("a local store is file:///absolute/path"));
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(rest)
            .map_err(|e| StoreConfigError::Store {
                backend: "local",
                reason: e.to_string(),
            })?
            .with_fsync(true);
        Ok(Arc::new(store))
    }

    #[cfg(not(feature = "s3"))]
    fn s3(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        Err(StoreConfigError::FeatureOff {
            scheme: "s3".into(),
            feature: "s3",
        })
    }

    #[cfg(feature = "s3")]
    fn s3(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        const BACKEND: &str = "S3";
        let (bucket, prefix) = self.cloud_location()?;
        let mut builder = if self.env {
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
        };
        for (k, v) in &self.options {
            let key: AmazonS3ConfigKey =
                k.parse().map_err(|_| StoreConfigError::UnknownOption {
                    backend: BACKEND,
                    key: k.clone(),
                })?;
            builder = builder.with_config(key, v);
        }
        builder = builder.with_bucket_name(bucket);
        // A key without its secret (or the reverse) is a mistake to report now; with neither,
        // object_store looks for a web identity, ECS or instance credentials at the first request.
        let id = builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId);
        let secret = builder.get_config_value(&AmazonS3ConfigKey::SecretAccessKey);
        match (id.is_some(), secret.is_some()) {
            (true, false) => {
                return Err(StoreConfigError::Credentials {
                    backend: BACKEND,
                    reason: "access_key_id is set but secret_access_key is not".into(),
                });
            }
            (false, true) => {
                return Err(StoreConfigError::Credentials {
                    backend: BACKEND,
                    reason: "secret_access_key is set but access_key_id is not".into(),
                });
            }
            _ => {}
        }
        install_ring_provider();
        let store = builder.build().map_err(|e| self.build_error(BACKEND, e))?;
        Ok(with_prefix(store, prefix))
    }

    #[cfg(not(feature = "azure"))]
    fn azure(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        Err(StoreConfigError::FeatureOff {
            scheme: "az".into(),
            feature: "azure",
        })
    }

    #[cfg(feature = "azure")]
    fn azure(&self) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
        const BACKEND: &str = "Azure";
        let (container, prefix) = self.cloud_location()?;
        let mut builder = if self.env {
            MicrosoftAzureBuilder::from_env()
        } else {
            MicrosoftAzureBuilder::new()
        };
        for (k, v) in &self.options {
            let key: AzureConfigKey = k.parse().map_err(|_| StoreConfigError::UnknownOption {
                backend: BACKEND,
                key: k.clone(),
            })?;
            builder = builder.with_config(key, v);
        }
        builder = builder.with_container_name(container);
        let emulator = builder
            .get_config_value(&AzureConfigKey::UseEmulator)
            .is_some_and(|v| v == "true");
        if !emulator
            && builder
                .get_config_value(&AzureConfigKey::AccountName)
                .is_none()
        {
            return Err(StoreConfigError::Credentials {
                backend: BACKEND,
                reason: "no account_name (option or AZURE_STORAGE_ACCOUNT_NAME)".into(),
            });
        }
        install_ring_provider();
        let store = builder.build().map_err(|e| self.build_error(BACKEND, e))?;
        Ok(with_prefix(store, prefix))
    }

    /// `bucket` and `prefix` of `scheme://bucket/prefix`, refusing what a cloud URL must not
    /// have (credentials in user info or a query belong in options, where they stay secret).
    #[cfg(any(feature = "s3", feature = "azure"))]
    fn cloud_location(&self) -> Result<(String, object_store::path::Path), StoreConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| self.invalid(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid("credentials go in options, not in the URL's user info"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.invalid(
                "no query or fragment (a SAS token or key goes in options, not the URL)",
            ));
        }
        if url.port().is_some() {
            return Err(self.invalid("no port: the host is the bucket or container; set the `endpoint` option for a custom endpoint"));
        }
        let bucket = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.invalid("no bucket or container (scheme://bucket/prefix)"))?;
        let prefix = object_store::path::Path::parse(url.path().trim_matches('/'))
            .map_err(|e| self.invalid(format!("prefix: {e}")))?;
        Ok((bucket.to_owned(), prefix))
    }

    #[cfg(any(feature = "s3", feature = "azure"))]
    fn build_error(&self, backend: &'static str, e: object_store::Error) -> StoreConfigError {
        let reason = self.scrub(&e);
        match e {
            object_store::Error::UnknownConfigurationKey { key, .. } => {
                StoreConfigError::UnknownOption { backend, key }
            }
            // The builders' own credential complaints (a malformed key, a missing account).
            _ if ["credential", "key", "account", "token", "sas"]
                .iter()
                .any(|w| reason.to_ascii_lowercase().contains(w)) =>
            {
                StoreConfigError::Credentials { backend, reason }
            }
            _ => StoreConfigError::Store { backend, reason },
        }
    }
}

/// The HTTP status of a failed request. object_store reports a failed listing as a `Generic`
/// error whose source (its retry error type, not public) says "status code: 404 Not Found"; the
/// message is the only place the status is exposed.
fn http_status(e: &object_store::Error) -> Option<u16> {
    let message = e.to_string();
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}

/// The store seen through `prefix` (unchanged when the URL has none).
#[cfg(any(feature = "s3", feature = "azure"))]
fn with_prefix<T: ObjectStore>(store: T, prefix: object_store::path::Path) -> Arc<dyn ObjectStore> {
    if prefix.as_ref().is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    }
}

/// reqwest is built without a default rustls provider (its own default is aws-lc-rs, a C
/// build); the process default is set to ring unless the application already chose one.
#[cfg(any(feature = "s3", feature = "azure"))]
fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_hide_secrets() {
        let config = StoreConfig::new("s3://bucket/p")
            .with_option("secret_access_key", "SUPERSECRETVALUE")
            .with_option("region", "eu-west-1");
        let debug = format!("{config:?}");
        assert!(!debug.contains("SUPERSECRETVALUE"), "{debug}");
        assert!(debug.contains("eu-west-1"), "{debug}");
        assert_eq!(
            config.scrub(&"bad SUPERSECRETVALUE here"),
            "bad <redacted> here"
        );
        assert_eq!(
            sanitize("az://user:pw@container/p?sig=abc#x"),
            "az://<user>@container/p"
        );
    }

    #[test]
    fn urls_are_checked() {
        let err = |url: &str| StoreConfig::new(url).build().err().unwrap();
        assert!(matches!(
            err("gs://b/p"),
            StoreConfigError::UnsupportedScheme { .. }
        ));
        assert!(matches!(
            err("no-scheme"),
            StoreConfigError::InvalidUrl { .. }
        ));
        assert!(matches!(
            err("file://relative/dir"),
            StoreConfigError::InvalidUrl { .. }
        ));
        let dir = std::env::temp_dir();
        let url = format!("file://{}", dir.display());
        assert!(StoreConfig::new(&url).build().is_ok());
        assert!(matches!(
            StoreConfig::new(&url)
                .with_option("region", "x")
                .build()
                .err()
                .unwrap(),
            StoreConfigError::UnknownOption { .. }
        ));
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_without_its_feature_says_which_feature() {
        let e = StoreConfig::new("s3://b/p").build().err().unwrap();
        assert!(
            matches!(e, StoreConfigError::FeatureOff { feature: "s3", .. }),
            "{e}"
        );
    }

    #[cfg(feature = "s3")]
    #[test]
    fn s3_configuration_errors_are_typed_and_secret_free() {
        let e = StoreConfig::new("s3://bucket/prefix")
            .with_option("secret_access_key", "SUPERSECRETVALUE")
            .build()
            .err()
            .unwrap();
        assert!(matches!(e, StoreConfigError::Credentials { .. }), "{e}");
        assert!(!e.to_string().contains("SUPERSECRETVALUE"));
        let e = StoreConfig::new("s3://bucket/prefix")
            .with_option("no_such_option", "1")
            .build()
            .err()
            .unwrap();
        assert!(matches!(e, StoreConfigError::UnknownOption { .. }), "{e}");
        for url in [
            "s3://key:SUPERSECRETVALUE@bucket/p",
            "s3://bucket/p?X-Amz-Signature=SUPERSECRETVALUE",
            "s3:///p",
            "s3://bucket:9000/p",
        ] {
            let e = StoreConfig::new(url).build().err().unwrap();
            assert!(
                matches!(e, StoreConfigError::InvalidUrl { .. }),
                "{url}: {e}"
            );
            assert!(!e.to_string().contains("SUPERSECRETVALUE"), "{e}");
        }
        assert!(
            StoreConfig::new("s3://bucket/a/b")
                .with_option("access_key_id", "id")
                .with_option("secret_access_key", "secret")
                .with_option("endpoint", "http://127.0.0.1:1")
                .with_option("allow_http", "true")
                .build()
                .is_ok()
        );
    }

    #[cfg(feature = "azure")]
    #[test]
    fn azure_configuration_errors_are_typed_and_secret_free() {
        let e = StoreConfig::new("az://container/p").build().err().unwrap();
        assert!(matches!(e, StoreConfigError::Credentials { .. }), "{e}");
        let e = StoreConfig::new("az://container/p")
            .with_option("account_name", "acct")
            .with_option("access_key", "not base64 SUPERSECRETVALUE!")
            .build()
            .err()
            .unwrap();
        assert!(matches!(e, StoreConfigError::Credentials { .. }), "{e}");
        assert!(!e.to_string().contains("SUPERSECRETVALUE"), "{e}");
    }
}
