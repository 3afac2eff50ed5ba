//! The outbound stages: what the delivery engine asks a plugin configured
//! for `stages = ["deliver", "defer", "bounce", "delivered",
//! "quarantined"]` (any of them) once a message is queued (or quarantined). See [`crate::Plugin::on_deliver`] and
//! the hooks after it.
//!
//! ```no_run
//! use mailgate_plugin_sdk::outbound::{DeferVerdict, Delivery, Failure};
//! use mailgate_plugin_sdk::NextHop;
//!
//! /// After a provider's throttling reply, try the backup relay.
//! fn on_defer(delivery: &Delivery, failure: &Failure) -> DeferVerdict {
//!     if failure.enhanced.as_deref() == Some("4.7.28") && delivery.attempt < 5 {
//!         return DeferVerdict::Reroute(NextHop::Route("backup".into()));
//!     }
//!     DeferVerdict::Default
//! }
//! ```

use crate::NextHop;
use crate::bindings::exports::mailgate::plugin::outbound as wit;

/// One message's delivery to one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The queue id.
    pub queue_id: String,
    /// The reverse-path ("" for a bounce).
    pub reverse_path: String,
    /// The recipients going to this destination.
    pub recipients: Vec<String>,
    /// "mx:example.com", "smarthost:host:port", "maildir:PATH" or "none".
    pub destination: String,
    /// The named route it comes from, if any.
    pub route: Option<String>,
    /// The attempt's number, 1 for the first.
    pub attempt: u32,
    /// Seconds since the message was received.
    pub age_seconds: u64,
    /// Its size in octets.
    pub size: u64,
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The reply code, when the next hop answered.
    pub code: Option<u16>,
    /// The enhanced status code, such as "5.1.1".
    pub enhanced: Option<String>,
    /// The reply text or the connection error.
    pub text: String,
    /// A permanent failure.
    pub permanent: bool,
}

/// A TLS policy for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// DANE, else MTA-STS, else opportunistic.
    Auto,
    /// DANE where published.
    Dane,
    /// MTA-STS where published.
    MtaSts,
    /// STARTTLS when offered, unauthenticated.
    Opportunistic,
    /// Verified TLS or nothing.
    Require,
    /// No STARTTLS.
    Disabled,
}

/// What to do before an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliverVerdict {
    /// As planned.
    Continue,
    /// To another next hop, for this attempt.
    Reroute(NextHop),
    /// With this TLS policy, for this attempt.
    Tls(TlsPolicy),
    /// On hold for an operator, with this reason.
    Hold(String),
    /// Not now: at this time (seconds since the Unix epoch).
    DeferUntil(u64),
    /// Fail the recipients for good, with this reason.
    Bounce(String),
}

/// What to do after a temporary failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeferVerdict {
    /// Retry on the engine's schedule.
    Default,
    /// Retry at this time (seconds since the Unix epoch).
    RetryAt(u64),
    /// Retry now at this next hop, within this attempt.
    Reroute(NextHop),
    /// Fail the recipients for good, with this reason.
    Bounce(String),
}

/// What to do before a bounce is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BounceVerdict {
    /// Send it.
    Send,
    /// Send none (the recipients are finished all the same).
    Suppress,
    /// Send it with this explanation.
    Explain(String),
    /// Not permanent after all: keep the recipients queued.
    Retry,
}

impl From<wit::Delivery> for Delivery {
    fn from(d: wit::Delivery) -> Self {
        Self {
            queue_id: d.queue_id,
            reverse_path: d.reverse_path,
            recipients: d.recipients,
            destination: d.destination,
            route: d.route,
            attempt: d.attempt,
            age_seconds: d.age_seconds,
            size: d.size,
        }
    }
}

impl From<wit::Failure> for Failure {
    fn from(f: wit::Failure) -> Self {
        Self {
            code: f.code,
            enhanced: f.enhanced,
            text: f.text,
            permanent: f.permanent,
        }
    }
}

impl From<DeliverVerdict> for wit::DeliverVerdict {
    fn from(v: DeliverVerdict) -> Self {
        match v {
            DeliverVerdict::Continue => Self::Continue,
            DeliverVerdict::Reroute(hop) => Self::Reroute(hop.into()),
            DeliverVerdict::Tls(policy) => Self::Tls(match policy {
                TlsPolicy::Auto => wit::TlsPolicy::Auto,
                TlsPolicy::Dane => wit::TlsPolicy::Dane,
                TlsPolicy::MtaSts => wit::TlsPolicy::MtaSts,
                TlsPolicy::Opportunistic => wit::TlsPolicy::Opportunistic,
                TlsPolicy::Require => wit::TlsPolicy::Require,
                TlsPolicy::Disabled => wit::TlsPolicy::Disabled,
            }),
            DeliverVerdict::Hold(reason) => Self::Hold(reason),
            DeliverVerdict::DeferUntil(at) => Self::DeferUntil(at),
            DeliverVerdict::Bounce(reason) => Self::Bounce(reason),
        }
    }
}

impl From<DeferVerdict> for wit::DeferVerdict {
    fn from(v: DeferVerdict) -> Self {
        match v {
            DeferVerdict::Default => Self::Default,
            DeferVerdict::RetryAt(at) => Self::RetryAt(at),
            DeferVerdict::Reroute(hop) => Self::Reroute(hop.into()),
            DeferVerdict::Bounce(reason) => Self::Bounce(reason),
        }
    }
}

impl From<BounceVerdict> for wit::BounceVerdict {
    fn from(v: BounceVerdict) -> Self {
        match v {
            BounceVerdict::Send => Self::Send,
            BounceVerdict::Suppress => Self::Suppress,
            BounceVerdict::Explain(text) => Self::Explain(text),
            BounceVerdict::Retry => Self::Retry,
        }
    }
}
