//! mailgate: a programmable SMTP relay gateway.
//!
//! `run` is the entry point shared by the binary and the end-to-end tests:
//! it opens the spool, recovers queued mail, serves the listeners and runs
//! the delivery engine until the shutdown token is cancelled.

pub mod admin;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod net;
pub mod plugin;
pub mod queue;
pub mod server;
pub mod shutdown;
pub mod smtp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::spawn_blocking;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use config::Config;
use queue::{Spool, SpoolError};
use server::auth::Authenticator;
use server::tls::ServerTls;
use server::{BoundListener, Inbound};

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
}

/// Every bound socket: the SMTP listeners and the admin API's.
#[derive(Debug)]
pub struct Bound {
    /// The SMTP listeners, in configuration order.
    pub listeners: Vec<BoundListener>,
    /// The admin API listener.
    pub admin: Option<TcpListener>,
}

/// Binds every configured listener (before any other start-up work, so a
/// port conflict is reported at once).
pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.address)
            .await
            .map_err(|source| StartError::Bind {
                name: listener.name.to_string(),
                address: listener.address,
                source,
            })?;
        bound.push(BoundListener {
            config: listener.clone(),
            socket,
        });
    }
    let admin = match config.admin {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|source| StartError::Bind {
            name: "admin".into(),
            address,
            source,
        })?),
        None => None,
    };
    Ok(Bound {
        listeners: bound,
        admin,
    })
}

/// What SIGHUP reads again: certificates and the users file. (The rest of
/// the configuration is read at start-up only.)
struct Reloadable {
    certificates: Vec<Arc<ServerTls>>,
    users: Option<Arc<Authenticator>>,
}

impl Reloadable {
    fn reload(&self) {
        for tls in &self.certificates {
            match tls.reload() {
                Ok(()) => info!(certificate = %tls.cert_file().display(), "certificate reloaded"),
                Err(e) => error!(error = %e, "certificate not reloaded; the old one stays in use"),
            }
        }
        if let Some(auth) = &self.users {
            match auth.reload() {
                Ok(users) => info!(users, "users file reloaded"),
                Err(e) => error!(error = %e, "users file not reloaded; the old users stay"),
            }
        }
    }
}

/// Reloads on every SIGHUP until `shutdown`.
async fn reload_on_hangup(reloadable: Reloadable, shutdown: CancellationToken) {
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
                info!(signal = "SIGHUP", "reloading certificates and users");
                reloadable.reload();
            }
        }
    }
}

/// Runs the gateway until `shutdown` is cancelled, then drains: sessions
/// finish at their next command boundary, deliveries in flight get the
/// grace period, everything else stays spooled.
pub async fn run(config: Config, bound: Bound, shutdown: CancellationToken) -> Result<(), StartError> {
    let Bound { listeners, admin } = bound;
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
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

    let (queue, inbox) = queue::handoff();
    let mut certificates: Vec<Arc<ServerTls>> = Vec::new();
    // Listeners that share files share one certificate: reload it once.
    for tls in listeners.iter().filter_map(|l| l.config.tls.as_ref()) {
        if !certificates.iter().any(|known| Arc::ptr_eq(known, tls)) {
            certificates.push(Arc::clone(tls));
        }
    }
    let reloadable = Reloadable {
        certificates,
        users: config.server.auth.clone(),
    };
    let inbound = Arc::new(Inbound::new(config.server, Arc::clone(&spool), queue));
    let tracker = TaskTracker::new();
    tracker.spawn(reload_on_hangup(reloadable, shutdown.clone()));
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
    if let Some(admin) = admin {
        if let Ok(address) = admin.local_addr() {
            info!(listener = "admin", %address, "listening");
        }
        tracker.spawn(admin::serve(admin, control, shutdown.clone()));
    } else {
        drop(control);
    }
    tracker.spawn(delivery::run(
        spool,
        Arc::new(config.delivery),
        inbox,
        commands,
        recovered,
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    info!(grace_period = ?config.shutdown_grace_period, "shutting down");
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace_period, tracker.wait())
        .await
        .is_ok()
    {
        info!("drained; stopped");
    } else {
        warn!(
            tasks = tracker.len(),
            "grace period over; work still in flight stays spooled"
        );
    }
    Ok(())
}
