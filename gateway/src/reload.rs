//! Hot reload (SIGHUP, and `POST /reload` on the admin API, which
//! `mailgate reload` sends): the file is read and validated again, its
//! plugins are loaded (each one's `init` runs), and only when all of that
//! succeeded does the new generation replace the old one, in one step.
//! Connections and transactions under way finish on the generation they
//! hold; new transactions (from their MAIL) and new delivery attempts use
//! the new one. A reload that fails changes nothing and says why.
//!
//! What needs a restart: the listeners' names and addresses, the spool
//! directory, the admin address and the log format. A reload that changes
//! one of them fails, naming it, so that nothing is half applied.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{Config, LogFormat, Reuse};
use crate::delivery::DeliverySettings;
use crate::kv::{Kv, KvSettings};
use crate::metrics::metrics;
use crate::server::{Generation, Inbound};

/// The settings only a restart changes.
#[derive(Clone, Debug, PartialEq)]
struct Fixed {
    listeners: Vec<(String, SocketAddr)>,
    spool_dir: PathBuf,
    spool_sync: crate::queue::SpoolSync,
    admin: Option<SocketAddr>,
    log_format: LogFormat,
    kv: KvSettings,
}

impl Fixed {
    fn of(config: &Config) -> Self {
        Self {
            listeners: config
                .listeners
                .iter()
                .map(|l| (l.name.to_string(), l.address))
                .collect(),
            spool_dir: config.spool_dir.clone(),
            spool_sync: config.spool_sync,
            admin: config.admin,
            log_format: config.log_format,
            kv: config.kv.settings().clone(),
        }
    }

    /// The keys that differ in `next`.
    fn changed(&self, next: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listeners != next.listeners {
            changed.push("[[listener]] names or addresses");
        }
        if self.spool_dir != next.spool_dir {
            changed.push("server.spool_dir");
        }
        if self.spool_sync != next.spool_sync {
            changed.push("server.spool_sync");
        }
        if self.admin != next.admin {
            changed.push("admin.address");
        }
        if self.log_format != next.log_format {
            changed.push("server.log_format");
        }
        if self.kv != next.kv {
            changed.push("[kv]");
        }
        changed
    }
}

/// Reloads the running gateway's configuration.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    fixed: Fixed,
    kv: Arc<Kv>,
    inbound: Arc<Inbound>,
    delivery: watch::Sender<Arc<DeliverySettings>>,
    grace_period: Mutex<Duration>,
    /// One reload at a time; holds the current generation's number.
    busy: tokio::sync::Mutex<u64>,
}

impl Reloader {
    /// A reloader for the gateway started with `config`, serving through
    /// `inbound` and delivering with the settings `delivery` publishes.
    pub fn new(config: &Config, inbound: Arc<Inbound>, delivery: watch::Sender<Arc<DeliverySettings>>) -> Self {
        Self {
            path: config.path.clone(),
            fixed: Fixed::of(config),
            kv: Arc::clone(&config.kv),
            grace_period: Mutex::new(config.shutdown_grace_period),
            busy: tokio::sync::Mutex::new(inbound.current().number),
            inbound,
            delivery,
        }
    }

    /// How long shutdown waits for work in flight, as last loaded.
    pub fn grace_period(&self) -> Duration {
        *self.grace_period.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration file this gateway runs (and reloads), made
    /// absolute with symbolic links resolved when it still exists.
    pub fn config_path(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }

    /// Reads the file again and switches to it; the new generation's
    /// number, or why nothing changed. Logged and counted either way.
    pub async fn reload(&self) -> Result<u64, String> {
        let mut current = self.busy.lock().await;
        let next = *current + 1;
        let result = self.load(next).await;
        metrics().reload(result.is_ok());
        match &result {
            Ok(generation) => {
                *current = *generation;
                info!(generation, config = %self.path.display(), "configuration reloaded");
            }
            Err(e) => error!(error = %e, "reload failed; the previous configuration keeps serving"),
        }
        result
    }

    async fn load(&self, number: u64) -> Result<u64, String> {
        let serving = self.inbound.current();
        let reuse = Reuse {
            runtime: serving.settings.chain.as_ref().map(|chain| chain.runtime()),
            kv: Some(&self.kv),
        };
        let config = Config::load_reusing(&self.path, reuse)
            .await
            .map_err(|e| e.to_string())?;
        let changed = self.fixed.changed(&Fixed::of(&config));
        if !changed.is_empty() {
            return Err(format!(
                "{}: {} changed, which needs a restart; nothing was reloaded",
                self.path.display(),
                changed.join(", ")
            ));
        }
        let Config {
            listeners,
            server,
            delivery,
            shutdown_grace_period,
            ..
        } = config;
        let plugins: Vec<&str> = server.chain.as_ref().map(|c| c.names().collect()).unwrap_or_default();
        info!(generation = number, plugins = %plugins.join(","), "new configuration loaded");
        self.inbound.replace(Generation {
            number,
            settings: server,
            listeners: listeners.into_iter().map(Arc::new).collect(),
        });
        self.delivery.send_replace(Arc::new(delivery));
        *self.grace_period.lock().unwrap_or_else(PoisonError::into_inner) = shutdown_grace_period;
        Ok(number)
    }
}
