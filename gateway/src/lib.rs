//! mailgate: a programmable SMTP relay gateway.
//!
//! `run` is the entry point shared by the binary and the end-to-end tests:
//! it opens the spool, recovers queued mail, serves the listeners and runs
//! the delivery engine until the shutdown token is cancelled.

pub mod admin;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod kv;
pub mod metrics;
pub mod milter;
pub mod mta_hooks;
pub mod net;
pub mod plugin;
pub mod plugin_test;
pub mod queue;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod smtp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::spawn_blocking;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use config::Config;
use queue::{Spool, SpoolError};
use reload::Reloader;
use server::{BoundListener, Generation, Inbound};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {address} (listener {name}): {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address.
        address: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The spool could not be opened or read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The plugins' key-value store could not be opened.
    #[error("{0}")]
    Kv(String),
}

/// Every bound socket: the SMTP listeners and the admin API's.
#[derive(Debug)]
pub struct Bound {
    /// The SMTP listeners, in configuration order.
    pub listeners: Vec<BoundListener>,
    /// The admin API listener.
    pub admin: Option<TcpListener>,
    /// The admin API's control endpoints, when they listen apart.
    pub admin_control: Option<TcpListener>,
}

/// Connections the kernel queues for a listener before `accept`: std's
/// default of 128 drops SYNs (a second's retransmit for the client) when
/// hundreds of clients connect at once; the kernel caps it at somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds and listens on `address` (SO_REUSEADDR, as std does).
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds every configured listener (before any other start-up work, so a
/// port conflict is reported at once).
pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = listen(listener.address).map_err(|source| StartError::Bind {
            name: listener.name.to_string(),
            address: listener.address,
            source,
        })?;
        bound.push(BoundListener {
            config: listener.clone(),
            socket,
        });
    }
    let bind_admin = |name: &str, address: Option<std::net::SocketAddr>| match address {
        Some(address) => listen(address).map(Some).map_err(|source| StartError::Bind {
            name: name.into(),
            address,
            source,
        }),
        None => Ok(None),
    };
    let admin = bind_admin("admin", config.admin)?;
    let admin_control = bind_admin("admin-control", config.admin_control)?;
    Ok(Bound {
        listeners: bound,
        admin,
        admin_control,
    })
}

/// Reloads on every SIGHUP until `shutdown`.
async fn reload_on_hangup(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            error!(error = %e, "cannot install the SIGHUP handler; reloading is off");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                info!(signal = "SIGHUP", "reloading the configuration");
                // The outcome is logged and counted by the reloader.
                let _ = reloader.reload().await;
            }
        }
    }
}

/// How the gateway stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Everything in flight finished within the grace period.
    Drained,
    /// The grace period ran out; what was still in flight stays spooled
    /// (nothing accepted is lost) or was never acknowledged.
    GraceExpired,
}

/// Runs the gateway until `shutdown` is cancelled, then drains: sessions
/// finish at their next command boundary (a transfer in DATA may
/// finish), deliveries in flight get the grace period, everything else
/// stays spooled.
pub async fn run(config: Config, bound: Bound, shutdown: CancellationToken) -> Result<Stopped, StartError> {
    let Bound {
        listeners,
        admin,
        admin_control,
    } = bound;
    let spool = Arc::new(Spool::open_with(&config.spool_dir, config.spool_sync)?);
    let scanned = {
        let spool = Arc::clone(&spool);
        spawn_blocking(move || spool.scan())
            .await
            .map_err(|_| SpoolError::Cancelled)??
    };
    let (recovered, problems) = scanned;
    for problem in problems {
        error!(error = %problem, "spool entry set aside in corrupt/");
    }
    info!(messages = recovered.len(), spool = %config.spool_dir.display(), "spool opened");
    // A store that cannot open stops start-up rather than every message.
    if config
        .plugins
        .iter()
        .any(|p| p.capabilities.contains(&plugin::Capability::Kv))
    {
        config.kv.open().await.map_err(StartError::Kv)?;
    }

    let (queue, inbox) = queue::handoff();
    let (delivery_settings, delivery_updates) = watch::channel(Arc::new(config.delivery.clone()));
    let generation = Generation {
        number: 1,
        settings: config.server.clone(),
        listeners: config.listeners.iter().cloned().map(Arc::new).collect(),
    };
    let inbound = Arc::new(Inbound::new(generation, Arc::clone(&spool), queue));
    let reloader = Arc::new(Reloader::new(&config, Arc::clone(&inbound), delivery_settings));
    let kv = Arc::clone(&config.kv);
    let admin_auth = config.admin_auth.clone();
    drop(config);
    let tracker = TaskTracker::new();
    tracker.spawn(reload_on_hangup(Arc::clone(&reloader), shutdown.clone()));
    for listener in listeners {
        if let Ok(address) = listener.socket.local_addr() {
            info!(listener = %listener.config.name, role = listener.config.role.name(), %address, "listening");
        }
        tracker.spawn(server::serve(
            listener,
            Arc::clone(&inbound),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    drop(inbound);
    let (control, commands) = delivery::control();
    tracker.spawn(delivery::run(
        spool,
        delivery_updates,
        inbox,
        commands,
        recovered,
        shutdown.clone(),
    ));
    // The admin API outlives the drain, so that /readyz can say so.
    let admin_stop = CancellationToken::new();
    if admin.is_some() || admin_control.is_some() {
        let state = Arc::new(admin::AdminState {
            queue: control,
            reloader: Arc::clone(&reloader),
            draining: shutdown.clone(),
            auth: admin_auth,
            kv: Arc::clone(&kv),
        });
        // With a control listener of its own, the first one is read-only.
        let roles = match admin_control.is_some() {
            true => [admin::Role::ReadOnly, admin::Role::Control],
            false => [admin::Role::All, admin::Role::Control],
        };
        for ((socket, role), name) in [admin, admin_control]
            .into_iter()
            .zip(roles)
            .zip(["admin", "admin-control"])
        {
            let Some(socket) = socket else { continue };
            if let Ok(address) = socket.local_addr() {
                info!(listener = name, %address, "listening");
            }
            tokio::spawn(admin::serve(socket, Arc::clone(&state), role, admin_stop.clone()));
        }
    } else {
        drop(control);
    }

    shutdown.cancelled().await;
    let grace_period = reloader.grace_period();
    info!(?grace_period, "shutting down");
    tracker.close();
    let stopped = if tokio::time::timeout(grace_period, tracker.wait()).await.is_ok() {
        info!("drained; stopped");
        Stopped::Drained
    } else {
        warn!(
            tasks = tracker.len(),
            "grace period over; work still in flight stays spooled"
        );
        Stopped::GraceExpired
    };
    admin_stop.cancel();
    if let Err(e) = kv.flush().await {
        warn!(error = %e, "cannot flush the key-value store");
    }
    Ok(stopped)
}
