//! The delivery engine: picks a next hop per recipient, relays over SMTP or
//! drops into a maildir, retries transient failures with backoff, and
//! bounces permanent ones with a DSN. It knows nothing of inbound sessions;
//! it reads the spool.

mod attempt;
mod client;
mod connect;
pub mod dane;
mod dsn;
mod error;
mod extensions;
mod maildir;
pub mod mta_sts;
mod notify;
mod outbound;
mod pool;
pub mod route;
mod runner;
pub mod tls;
pub mod tls_rpt;

use std::num::NonZeroUsize;
use std::time::Duration;

pub use error::{DeliveryError, Failure, Handoff, Outcome};
pub use runner::{
    HoldTarget, QuarantineCommand, QueueCommand, QueueControl, QueueEntry, QueueStatus, control, offline, run,
};

use crate::dns::Resolver;
use crate::queue::RetrySchedule;
use route::RouteTable;

/// Outbound settings, validated.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// Our name in EHLO and in the DSNs we write.
    pub hostname: String,
    /// Delivery attempts in flight at once.
    pub concurrency: NonZeroUsize,
    /// When to retry, and when to give up.
    pub retry: RetrySchedule,
    /// Outbound SMTP timeouts.
    pub timeouts: ClientTimeouts,
    /// Where mail goes.
    pub routes: RouteTable,
    /// MX and host lookups.
    pub resolver: Resolver,
    /// The port MX hosts are contacted on (25; other values only for tests).
    pub remote_port: u16,
    /// Send a delay warning DSN once a message has waited this long.
    pub delay_warning: Option<Duration>,
    /// Quarantined messages older than this are deleted.
    pub quarantine_max_age: Duration,
    /// MTA-STS policies for MX delivery (none: not looked up).
    pub mta_sts: Option<std::sync::Arc<mta_sts::MtaSts>>,
    /// DANE's validating resolver (`[dns] dnssec = true`).
    pub dane: Option<std::sync::Arc<dane::Dane>>,
    /// The plugin chain, when some plugin runs at an outbound stage.
    pub chain: Option<std::sync::Arc<crate::plugin::Chain>>,
    /// Where outbound plugin calls are recorded (`[delivery] record`).
    pub record: Option<std::sync::Arc<std::path::Path>>,
    /// TLS reporting (RFC 8460) of delivery over MX.
    pub tls_reports: Option<std::sync::Arc<tls_rpt::TlsReports>>,
}

/// Outbound SMTP timeouts (RFC 5321 section 4.5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting and the replies to EHLO, MAIL, RCPT, RSET, QUIT.
    pub command: Duration,
    /// The 354 reply to DATA.
    pub data_init: Duration,
    /// Each block of content written.
    pub data: Duration,
    /// The reply after the final dot.
    pub data_done: Duration,
    /// How long a connection is kept for reuse after a message; zero turns
    /// reuse off.
    pub idle: Duration,
}
