//! Delivery errors and per-recipient outcomes. Whether an error is
//! transient (retry) or permanent (bounce) is decided here, once.

use std::io;

use crate::smtp::{EnhancedCode, Reply, ReplyClass};

/// Why a delivery attempt (or part of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No route matches the recipient's domain.
    #[error("no route for domain {0}")]
    NoRoute(String),
    /// A DNS lookup failed for now (or found nothing for a host name).
    #[error("DNS lookup of {name} failed: {error}")]
    Dns {
        /// The name looked up.
        name: String,
        /// Why.
        error: crate::dns::DnsError,
    },
    /// The recipient domain does not exist (NXDOMAIN).
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    /// The recipient domain accepts no mail (null MX, RFC 7505).
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    /// TLS could not be set up, or the certificate did not verify.
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The route's security policy cannot be met (STARTTLS required but
    /// not offered, AUTH wanted but not possible).
    #[error("{reason}")]
    Security {
        /// The status code for logs and DSNs.
        status: EnhancedCode,
        /// What is missing.
        reason: String,
    },
    /// The smarthost refused our credentials.
    #[error("authentication failed: {reply}")]
    Auth {
        /// Its reply.
        reply: Reply,
    },
    /// No address of the next hop accepted a connection.
    #[error("connect to {host} failed: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The last connect error.
        source: io::Error,
    },
    /// The next hop did not answer in time.
    #[error("timeout waiting for the reply to {0}")]
    Timeout(&'static str),
    /// Reading or writing the connection failed.
    #[error("connection error during {stage}: {source}")]
    Io {
        /// The SMTP stage.
        stage: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The next hop refused a command.
    #[error("{stage} refused: {reply}")]
    Rejected {
        /// The command refused (MAIL, RCPT, DATA, ...).
        stage: &'static str,
        /// Its reply.
        reply: Reply,
    },
    /// The next hop broke the protocol (malformed or oversized reply).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The message needs an extension the next hop lacks (SMTPUTF8), or is
    /// larger than its declared SIZE.
    #[error("{reason}")]
    Unsupported {
        /// The status code for the DSN.
        status: EnhancedCode,
        /// What is missing.
        reason: String,
    },
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] crate::queue::SpoolError),
    /// Reading the spooled content failed mid-way.
    #[error("reading the spooled message: {0}")]
    Content(io::Error),
    /// Writing the maildir failed.
    #[error("maildir delivery failed: {0}")]
    Maildir(io::Error),
}

impl DeliveryError {
    /// True when retrying cannot help: 5xx replies, no route, a missing
    /// extension, a domain that does not exist or takes no mail.
    /// Everything else (4xx, timeouts, connection failures, DNS failures,
    /// TLS and AUTH problems, local I/O) is retried: a misconfigured
    /// credential or certificate must not bounce mail.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NoRoute(_) | Self::Unsupported { .. } | Self::NoSuchDomain(_) | Self::NullMx(_) => true,
            Self::Rejected { reply, .. } => reply.class() == ReplyClass::Permanent,
            _ => false,
        }
    }

    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !self.is_permanent()
    }

    /// True when a reused connection turned out to be dead before the
    /// server accepted anything of the message (it closed while idle, or
    /// answered MAIL with 421): sending again on a new connection cannot
    /// deliver the message twice.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            Self::Io { stage, .. } => matches!(*stage, "MAIL" | "RSET"),
            Self::Rejected { stage: "MAIL", reply } => reply.code() == 421,
            _ => false,
        }
    }

    /// The RFC 3463 status for a DSN.
    pub fn status(&self) -> EnhancedCode {
        match self {
            Self::NoRoute(_) => EnhancedCode::new(5, 4, 4),
            Self::Unsupported { status, .. } => *status,
            Self::Rejected { reply, .. } => reply.enhanced().unwrap_or(match reply.class() {
                ReplyClass::Permanent => EnhancedCode::new(5, 0, 0),
                _ => EnhancedCode::new(4, 0, 0),
            }),
            Self::Dns { .. } => EnhancedCode::new(4, 4, 3),
            Self::NoSuchDomain(_) => EnhancedCode::new(5, 1, 2),
            Self::NullMx(_) => EnhancedCode::new(5, 1, 10),
            Self::Tls { .. } => EnhancedCode::new(4, 7, 5),
            Self::Security { status, .. } => *status,
            Self::Auth { .. } => EnhancedCode::new(4, 7, 8),
            Self::Connect { .. } | Self::Timeout(_) => EnhancedCode::new(4, 4, 1),
            Self::Io { .. } | Self::Protocol(_) => EnhancedCode::new(4, 4, 2),
            Self::Spool(_) | Self::Content(_) | Self::Maildir(_) => EnhancedCode::new(4, 3, 0),
        }
    }

    /// The outcome this error means for each recipient it touches.
    pub fn outcome(&self, remote: Option<&str>) -> Outcome {
        let failure = Failure {
            status: self.status(),
            diagnostic: match self {
                Self::Rejected { reply, .. } => reply.one_line(),
                other => other.to_string(),
            },
            remote: remote.map(str::to_owned),
            smtp_reply: matches!(self, Self::Rejected { .. }),
        };
        if self.is_permanent() {
            Outcome::Failed(failure)
        } else {
            Outcome::Deferred(failure)
        }
    }
}

/// How a message left this server for a recipient, which decides the
/// `Action` of a success DSN (RFC 3464 section 2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Final delivery (a maildir): `Action: delivered`.
    Delivered,
    /// Relayed to a next hop; `dsn` when it offered DSN and so took over
    /// the reporting, else a success DSN says `Action: relayed`.
    Relayed {
        /// The next hop offered DSN.
        dsn: bool,
        /// The session's TLS policy (`mta-sts`, `require`, `opportunistic`,
        /// `none`) and what it got (`verified TLS`, `TLS`, `clear text`).
        tls: (&'static str, &'static str),
    },
}

/// The result of an attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took responsibility (2xx after the final dot), or the
    /// maildir file is on disk.
    Delivered(Handoff),
    /// Failed for now; retry later.
    Deferred(Failure),
    /// Failed for good; bounce.
    Failed(Failure),
}

/// What went wrong, for logs, the queue state and DSNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// RFC 3463 status.
    pub status: EnhancedCode,
    /// The remote reply or the local error, on one line.
    pub diagnostic: String,
    /// The next hop's name, when one was reached.
    pub remote: Option<String>,
    /// The diagnostic is an SMTP reply (`Diagnostic-Code: smtp;`).
    pub smtp_reply: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_classify_by_their_first_digit() {
        let permanent = DeliveryError::Rejected {
            stage: "RCPT",
            reply: Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user"),
        };
        assert!(permanent.is_permanent());
        assert_eq!(permanent.status(), EnhancedCode::new(5, 1, 1));
        let transient = DeliveryError::Rejected {
            stage: "MAIL",
            reply: Reply::plain(451, vec!["try later".into()]),
        };
        assert!(transient.is_transient());
        assert_eq!(transient.status(), EnhancedCode::new(4, 0, 0));
        assert!(DeliveryError::Timeout("DATA").is_transient());
        assert!(DeliveryError::NoRoute("x.test".into()).is_permanent());
        let outcome = permanent.outcome(Some("mx.test"));
        assert!(matches!(outcome, Outcome::Failed(Failure { smtp_reply: true, .. })));
    }
}
