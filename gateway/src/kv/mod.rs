//! The store behind the plugins' `kv` capability: an embedded, persistent
//! store in one file (redb) by default, or Redis so that several gateways
//! share state. Keys are namespaced per plugin (`<plugin>:<key>`). The
//! store opens on first use, so checking a configuration never locks the
//! file of a running gateway.

pub mod control;
mod embedded;
mod redis;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::plugin::{BoxFuture, KvError, KvService};

/// `[kv]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvSettings {
    /// One file on local disk.
    Embedded {
        /// The file.
        path: PathBuf,
    },
    /// A Redis server shared by several gateways.
    Redis {
        /// `redis://host:port/db` (or `rediss://`, `unix://`).
        url: String,
        /// Put before every key.
        key_prefix: String,
        /// How long one operation may take.
        timeout: Duration,
    },
}

/// Whether `url` is a Redis URL the client accepts.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::check_url(url)
}

/// The key of `key` in `namespace`, as stored.
fn stored_key(namespace: &str, key: &str) -> String {
    format!("{namespace}:{key}")
}

enum Backend {
    Embedded(embedded::Embedded),
    Redis(redis::Redis),
}

/// The store, opened on first use (or by `open` at start-up).
pub struct Kv {
    settings: KvSettings,
    backend: OnceCell<Backend>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Kv {
    /// A store for `settings`, not opened yet.
    pub fn new(settings: KvSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            backend: OnceCell::new(),
        })
    }

    /// What it was made for.
    pub fn settings(&self) -> &KvSettings {
        &self.settings
    }

    /// Opens the store if it is not open yet; a failure is retried at the
    /// next use.
    pub async fn open(&self) -> Result<(), KvError> {
        self.backend().await.map(|_| ())
    }

    /// Makes every write so far durable (the embedded store commits
    /// without fsync and flushes every second; shutdown flushes at once).
    pub async fn flush(&self) -> Result<(), KvError> {
        match self.backend.get() {
            Some(Backend::Embedded(store)) => store.flush().await,
            Some(Backend::Redis(_)) | None => Ok(()),
        }
    }

    async fn backend(&self) -> Result<&Backend, KvError> {
        self.backend
            .get_or_try_init(|| async {
                match &self.settings {
                    KvSettings::Embedded { path } => {
                        embedded::Embedded::open(path.clone()).await.map(Backend::Embedded)
                    }
                    KvSettings::Redis {
                        url,
                        key_prefix,
                        timeout,
                    } => redis::Redis::new(url, key_prefix, *timeout).map(Backend::Redis),
                }
            })
            .await
    }
}

impl Kv {
    /// The live entries of `namespace` (a plugin's), keys without the
    /// namespace, in key order: what `mailgate kv list` shows.
    pub async fn entries(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let prefix = stored_key(namespace, "");
        let found = match self.backend().await? {
            Backend::Embedded(store) => store.entries(prefix.clone()).await?,
            Backend::Redis(store) => store.entries(prefix.clone()).await?,
        };
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(&prefix)?.to_owned(), value)))
            .collect())
    }
}

/// Runs `$op` on whichever backend is open, with the namespaced key.
macro_rules! on_backend {
    ($self:ident, $namespace:ident, $key:ident, |$store:ident, $stored:ident| $op:expr) => {
        Box::pin(async move {
            let $stored = stored_key($namespace, $key);
            match $self.backend().await? {
                Backend::Embedded($store) => $op,
                Backend::Redis($store) => $op,
            }
        })
    };
}

impl KvService for Kv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>> {
        on_backend!(self, namespace, key, |store, stored| store.get(stored).await)
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>> {
        on_backend!(self, namespace, key, |store, stored| store
            .set(stored, value, ttl)
            .await)
    }

    fn increment<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        on_backend!(self, namespace, key, |store, stored| store
            .increment(stored, delta, ttl)
            .await)
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        on_backend!(self, namespace, key, |store, stored| store.delete(stored).await)
    }
}
