//! The inbound side: listeners with their roles, the accept loop with its
//! connection limits, PROXY protocol and implicit TLS, and the connection
//! driver that feeds the SMTP state machine.

pub mod auth;
pub(crate) mod connection;
mod filters;
pub mod limits;
pub mod policy;
pub mod proxy;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics::{Direction, ListenerMetrics, metrics};
use crate::net::{Stream, TlsInfo};
use crate::plugin::Chain;
use crate::queue::{QueueSender, Spool};
use crate::smtp::Reply;
use crate::smtp::session::{ConnectionInfo, Security, SessionConfig};
use auth::Authenticator;
use limits::{ConnectionCounts, UserRates};
use policy::RelayPolicy;
use proxy::Proxied;
use tls::ServerTls;

/// What a listener is for (DESIGN section 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerRole {
    /// Port 25: mail from anywhere to the accepted domains, relaying for
    /// trusted networks; STARTTLS offered when a certificate is set.
    #[default]
    Relay,
    /// Port 587: STARTTLS, then AUTH before MAIL.
    Submission,
    /// Port 465: TLS from the first byte (RFC 8314), then AUTH before MAIL.
    Submissions,
}

impl ListenerRole {
    /// The lower-case name, as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Submission => "submission",
            Self::Submissions => "submissions",
        }
    }
}

/// One `[[listener]]`, validated.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Its name, for logs and metrics.
    pub name: Arc<str>,
    /// The address to bind.
    pub address: SocketAddr,
    /// What it is for.
    pub role: ListenerRole,
    /// Its certificate; required by the submission roles.
    pub tls: Option<Arc<ServerTls>>,
    /// Connections start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// Where transcripts of its transactions go, when recording.
    pub record: Option<Arc<std::path::Path>>,
}

impl ListenerConfig {
    /// What the SMTP session offers and requires on this listener.
    pub fn security(&self) -> Security {
        match self.role {
            ListenerRole::Relay => Security {
                starttls: self.tls.is_some(),
                auth: false,
                auth_required: false,
            },
            ListenerRole::Submission => Security {
                starttls: true,
                auth: true,
                auth_required: true,
            },
            ListenerRole::Submissions => Security {
                starttls: false,
                auth: true,
                auth_required: true,
            },
        }
    }
}

/// Inbound settings, validated.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// The plugin chain; `None` when no plugins are configured.
    pub chain: Option<Arc<Chain>>,
    /// What the state machine needs.
    pub session: Arc<SessionConfig>,
    /// Wait for the next command (RFC 5321 section 4.5.3.2.7).
    pub command_timeout: Duration,
    /// Wait for the next chunk of DATA.
    pub data_timeout: Duration,
    /// Connections open at once over all listeners.
    pub max_connections: NonZeroUsize,
    /// Connections open at once per client address.
    pub max_connections_per_ip: NonZeroUsize,
    /// Client networks `max_connections_per_ip` does not apply to.
    pub connection_limit_exempt: Vec<ipnet::IpNet>,
    /// Who may send where.
    pub relay: RelayPolicy,
    /// Checks AUTH credentials, when a users file is configured.
    pub auth: Option<Arc<Authenticator>>,
    /// Messages per authenticated user per window (0: no limit).
    pub user_message_limit: u32,
    /// The window of `user_message_limit`.
    pub user_message_window: Duration,
}

impl ServerSettings {
    /// True when `ip` is not held to `max_connections_per_ip`.
    pub fn is_limit_exempt(&self, ip: std::net::IpAddr) -> bool {
        let ip = policy::canonical(ip);
        self.connection_limit_exempt.iter().any(|net| net.contains(&ip))
    }
}

/// A listening socket with its configuration.
#[derive(Debug)]
pub struct BoundListener {
    /// The listener.
    pub config: ListenerConfig,
    /// The socket.
    pub socket: TcpListener,
}

/// Errors that end one connection. None of them is the gateway's fault or
/// affects other connections; they are logged at debug level.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The client closed the connection while sending DATA.
    #[error("client disconnected during DATA")]
    ClosedInData,
    /// The client closed the connection between commands.
    #[error("client disconnected")]
    Closed,
    /// The client did not read our replies in time.
    #[error("timeout writing to the client")]
    WriteTimeout,
}

/// What a reload replaces on the inbound side: the settings and the
/// listeners' configurations. A connection takes the current generation
/// when it is accepted and again at each MAIL, so a transaction runs on
/// one generation from start to end.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start-up, plus one per successful reload.
    pub number: u64,
    /// Inbound settings.
    pub settings: ServerSettings,
    /// The listeners, by name.
    pub listeners: Vec<Arc<ListenerConfig>>,
}

impl Generation {
    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerConfig>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// What every inbound connection shares, across reloads.
#[derive(Debug)]
pub struct Inbound {
    current: RwLock<Arc<Generation>>,
    /// Where accepted mail goes.
    pub spool: Arc<Spool>,
    /// Tells the delivery engine about newly spooled mail.
    pub queue: QueueSender,
    /// Caps connections over all listeners.
    pub connections: Arc<Semaphore>,
    /// Caps connections per client address.
    pub per_client: Arc<ConnectionCounts>,
    /// Counts messages per authenticated user.
    pub user_rates: UserRates,
}

impl Inbound {
    /// The shared state for the first generation.
    pub fn new(generation: Generation, spool: Arc<Spool>, queue: QueueSender) -> Self {
        let settings = &generation.settings;
        Self {
            connections: Arc::new(Semaphore::new(settings.max_connections.get())),
            per_client: ConnectionCounts::new(settings.max_connections_per_ip.get()),
            user_rates: UserRates::new(settings.user_message_limit, settings.user_message_window),
            current: RwLock::new(Arc::new(generation)),
            spool,
            queue,
        }
    }

    /// The generation new connections and transactions use.
    pub fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `next` current: connections and transactions already under
    /// way finish on the generation they hold. The shared limits take the
    /// new values; AUTH failure counts carry over.
    pub fn replace(&self, next: Generation) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let (old, new) = (&current.settings, &next.settings);
        let (before, after) = (old.max_connections.get(), new.max_connections.get());
        if after > before {
            self.connections.add_permits(after - before);
        } else if before > after {
            // Taken back as connections end.
            let connections = Arc::clone(&self.connections);
            let excess = u32::try_from(before - after).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(permits) = connections.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
        self.per_client.set_max(new.max_connections_per_ip.get());
        self.user_rates
            .set_limit(new.user_message_limit, new.user_message_window);
        if let (Some(old), Some(new)) = (&old.auth, &new.auth) {
            new.inherit_failures(old);
        }
        *current = Arc::new(next);
    }
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(listener: BoundListener, inbound: Arc<Inbound>, shutdown: CancellationToken, tracker: TaskTracker) {
    let local = listener.socket.local_addr().ok();
    let name = Arc::clone(&listener.config.name);
    let first = Arc::new(listener.config);
    let counters = metrics().listener(&name);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, %peer, listener = %name);
        let generation = inbound.current();
        // A reload cannot add or remove listeners, so this one is there.
        let config = Arc::clone(generation.listener(&name).unwrap_or(&first));
        let Ok(permit) = Arc::clone(&inbound.connections).try_acquire_owned() else {
            warn!(parent: &span, "connection limit reached; refusing");
            counters.refused.inc();
            let reply = Reply::unavailable(&generation.settings.session.hostname);
            tracker.spawn(refuse(stream, reply).instrument(span));
            continue;
        };
        let info = ConnectionInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            listener: Arc::clone(&name),
        };
        let (inbound, shutdown) = (Arc::clone(&inbound), shutdown.clone());
        let counters = counters.clone();
        tracker.spawn(
            async move {
                debug!("connected");
                let _active = counters.session();
                let accepted = Accepted {
                    listener: config,
                    generation,
                    counters: counters.clone(),
                };
                match start(stream, info, accepted, inbound, shutdown).await {
                    Ok(()) | Err(ConnectionError::Closed) => debug!("disconnected"),
                    Err(e) => debug!(error = %e, "connection ended"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = %name, "stopped accepting");
}

/// What a connection was accepted with.
struct Accepted {
    /// Its listener's configuration.
    listener: Arc<ListenerConfig>,
    /// The settings of the time.
    generation: Arc<Generation>,
    /// Its listener's counters.
    counters: ListenerMetrics,
}

/// The steps before SMTP: the PROXY header, the per-client limit, and the
/// handshake of an implicit-TLS listener.
async fn start(
    mut tcp: TcpStream,
    mut info: ConnectionInfo,
    accepted: Accepted,
    inbound: Arc<Inbound>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let Accepted {
        listener: config,
        generation,
        counters,
    } = &accepted;
    let settings = &generation.settings;
    let wait = settings.command_timeout.min(PREAMBLE_TIMEOUT);
    if config.proxy_protocol {
        match tokio::time::timeout(wait, proxy::read_header(&mut tcp)).await {
            Ok(Ok(Proxied::Client { source, destination })) => {
                debug!(client = %source, "PROXY header");
                info.peer = source;
                info.local = destination;
            }
            Ok(Ok(Proxied::Local)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "closing: the listener expects a PROXY protocol header");
                return Ok(());
            }
            Err(_) => return Err(ConnectionError::Closed),
        }
    }
    let ip = info.peer.ip();
    let slot = if settings.is_limit_exempt(ip) {
        None
    } else {
        match inbound.per_client.try_acquire(ip) {
            Some(slot) => Some(slot),
            None => {
                warn!(client = %ip, "too many connections from one client; refusing");
                counters.refused.inc();
                if config.role == ListenerRole::Submissions {
                    // The client expects a TLS handshake, not a reply in clear.
                    return Ok(());
                }
                let host = &settings.session.hostname;
                refuse(tcp, Reply::abuse_limit(host, "too many connections from your address")).await;
                return Ok(());
            }
        }
    };
    counters.accepted.inc();
    let (stream, tls) = match (config.role, &config.tls) {
        (ListenerRole::Submissions, Some(tls)) => match handshake(tls, tcp, wait).await? {
            Some((stream, parameters)) => (stream, Some(parameters)),
            None => return Ok(()),
        },
        _ => (Stream::Plain(tcp), None),
    };
    let result = connection::handle(stream, info, tls, accepted, inbound, shutdown).await;
    drop(slot);
    result
}

/// How long a client has for the PROXY header and a TLS handshake.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server side of a TLS handshake (implicit TLS or after STARTTLS),
/// within `wait`. `None` when it failed (logged): the connection is to be
/// closed without a word, since its state is unknown.
async fn handshake(
    tls: &ServerTls,
    tcp: TcpStream,
    wait: Duration,
) -> Result<Option<(Stream, TlsInfo)>, ConnectionError> {
    match tokio::time::timeout(wait, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => {
            metrics().tls(Direction::Inbound, true);
            let stream = Stream::Tls(Box::new(stream.into()));
            let parameters = stream.tls_info();
            if let Some(p) = &parameters {
                debug!(version = %p.version, cipher = %p.cipher, "TLS established");
            }
            Ok(parameters.map(|p| (stream, p)))
        }
        Ok(Err(e)) => {
            metrics().tls(Direction::Inbound, false);
            debug!(error = %e, "TLS handshake failed");
            Ok(None)
        }
        Err(_) => {
            metrics().tls(Direction::Inbound, false);
            Err(ConnectionError::Closed)
        }
    }
}

/// Says why and closes (RFC 5321 section 3.1 allows 421 at greeting).
async fn refuse(mut stream: impl AsyncWrite + Unpin, reply: Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}
