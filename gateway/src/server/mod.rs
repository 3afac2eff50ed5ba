//! The inbound side: listeners, the accept loop with its connection limit,
//! and the connection driver that feeds the SMTP state machine.

mod connection;
mod filters;
pub mod policy;

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::plugin::Chain;
use crate::queue::{QueueSender, Spool};
use crate::smtp::Reply;
use crate::smtp::session::{ConnectionInfo, SessionConfig};
use policy::RelayPolicy;

/// One `[[listener]]`, validated.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Its name, for logs and metrics.
    pub name: Arc<str>,
    /// The address to bind.
    pub address: SocketAddr,
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
    /// Who may send where.
    pub relay: RelayPolicy,
}

/// A listening socket with its name.
#[derive(Debug)]
pub struct BoundListener {
    /// The listener's name.
    pub name: Arc<str>,
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

/// What every inbound connection shares.
#[derive(Debug)]
pub struct Inbound {
    /// Inbound settings.
    pub settings: ServerSettings,
    /// Where accepted mail goes.
    pub spool: Arc<Spool>,
    /// Tells the delivery engine about newly spooled mail.
    pub queue: QueueSender,
    /// Caps connections over all listeners.
    pub connections: Arc<Semaphore>,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(listener: BoundListener, inbound: Arc<Inbound>, shutdown: CancellationToken, tracker: TaskTracker) {
    let local = listener.socket.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, %peer, listener = %listener.name);
        let Ok(permit) = Arc::clone(&inbound.connections).try_acquire_owned() else {
            tracker.spawn(refuse_busy(stream, Arc::clone(&inbound)).instrument(span));
            continue;
        };
        let info = ConnectionInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            listener: Arc::clone(&listener.name),
        };
        let (inbound, shutdown) = (Arc::clone(&inbound), shutdown.clone());
        tracker.spawn(
            async move {
                debug!("connected");
                match connection::handle(stream, info, inbound, shutdown).await {
                    Ok(()) | Err(ConnectionError::Closed) => debug!("disconnected"),
                    Err(e) => debug!(error = %e, "connection ended"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = %listener.name, "stopped accepting");
}

/// Over the connection limit: say so and close (RFC 5321 section 3.1 allows 421 at greeting).
async fn refuse_busy(mut stream: TcpStream, inbound: Arc<Inbound>) {
    warn!("connection limit reached; refusing");
    let mut out = Vec::new();
    Reply::unavailable(&inbound.settings.session.hostname).write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}
