//! What the spool keeps beside the content: the envelope (fixed once the
//! message is accepted) and the delivery state (rewritten after attempts).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::smtp::command::BodyType;
use crate::smtp::dsn::{MailDsn, RcptDsn};
use crate::smtp::{Mailbox, ReversePath};

/// The envelope of a spooled message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM; `Null` for bounces.
    pub reverse_path: ReversePath,
    /// RCPT TO, in order, after plugin rewrites.
    pub recipients: Vec<Recipient>,
    /// When the message was accepted.
    pub received_at: SystemTime,
    /// Content size in octets, trace header included.
    pub size: u64,
    /// The declared body type.
    pub body: BodyType,
    /// The transaction used SMTPUTF8; it must not be relayed without it.
    pub smtputf8: bool,
    /// Some octet of the content has the high bit set.
    pub eight_bit: bool,
    /// Where the message came from; `None` for messages the gateway made (bounces).
    pub client: Option<Client>,
    /// Why a plugin quarantined the message, for messages in the quarantine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// Which chain entry quarantined it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<String>,
    /// A plugin put the message on hold at the data stage, with this
    /// reason: it starts held (see `DeliveryState::for_envelope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// `RET=` and `ENVID=` of MAIL (RFC 3461).
    #[serde(default, skip_serializing_if = "MailDsn::is_empty")]
    pub dsn: MailDsn,
    /// `MAIL ... REQUIRETLS` (RFC 8689): relay only over verified TLS to
    /// next hops that offer REQUIRETLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// The message carries `TLS-Required: No` (RFC 8689 section 5): the
    /// sender asks that recipient TLS policies not stop its delivery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_optional: bool,
}

impl Envelope {
    /// The envelope of a message the gateway writes itself (a DSN, a TLS
    /// report) from `reverse_path` to `recipient`, accepted `at`: its body
    /// type and SMTPUTF8 as `content` and the address need.
    pub fn generated(reverse_path: ReversePath, recipient: Mailbox, content: &[u8], at: SystemTime) -> Self {
        let eight_bit = content.iter().any(|&b| b >= 0x80);
        let smtputf8 = !recipient.is_ascii() || reverse_path.mailbox().is_some_and(|m| !m.is_ascii());
        Self {
            reverse_path,
            recipients: vec![Recipient::new(recipient)],
            received_at: at,
            size: content.len() as u64,
            body: if eight_bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8,
            eight_bit,
            client: None,
            quarantine: None,
            quarantined_by: None,
            hold: None,
            dsn: MailDsn::default(),
            requiretls: false,
            tls_optional: false,
        }
    }

    /// The recipients' addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &Mailbox> {
        self.recipients.iter().map(|r| &r.address)
    }
}

/// One envelope recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path.
    pub address: Mailbox,
    /// A next hop chosen by a plugin; the route table decides otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteOverride>,
    /// `NOTIFY=` and `ORCPT=` of its RCPT (RFC 3461).
    #[serde(default, skip_serializing_if = "RcptDsn::is_empty")]
    pub dsn: RcptDsn,
}

impl Recipient {
    /// A recipient routed by the route table, without DSN parameters.
    pub fn new(address: Mailbox) -> Self {
        Self {
            address,
            route: None,
            dsn: RcptDsn::default(),
        }
    }
}

/// A next hop a plugin chose, overriding the route table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteOverride {
    /// A `[[route]]` by its name.
    Named(String),
    /// A smarthost.
    Smarthost {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl RouteOverride {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (port 25 by default).
    pub fn parse_smarthost(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid smarthost {text:?}: expected \"host:port\"");
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => return Err(bad()),
                None => (text, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
            None => 25,
        };
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !valid_host {
            return Err(bad());
        }
        Ok(Self::Smarthost {
            host: host.to_owned(),
            port,
        })
    }
}

/// The SMTP client a message was received from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Its address.
    pub ip: IpAddr,
    /// The name it gave in EHLO/HELO.
    pub helo: String,
}

/// Where delivery of a message stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// When to try next; `None` means now.
    pub next_attempt: Option<SystemTime>,
    /// One status per envelope recipient, in the same order.
    pub recipients: Vec<RecipientStatus>,
    /// A delay warning was sent to the sender.
    #[serde(default)]
    pub delay_warned: bool,
    /// On hold: not attempted (and not expiring) until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Hold>,
    /// Time spent on hold before, which does not count toward `max_age`.
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub held_for: Duration,
}

/// Why and since when a message is on hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Who held it and why.
    pub reason: String,
    /// Since when.
    pub since: SystemTime,
}

impl DeliveryState {
    /// The state of a message nobody has tried to deliver yet.
    pub fn new(recipients: usize) -> Self {
        Self {
            attempts: 0,
            next_attempt: None,
            recipients: vec![RecipientStatus::Pending { last_error: None }; recipients],
            delay_warned: false,
            held: None,
            held_for: Duration::ZERO,
        }
    }

    /// The state of a new message: on hold from its arrival when a plugin
    /// held it at the data stage (so a crash before the state is first
    /// written cannot let it go).
    pub fn for_envelope(envelope: &Envelope) -> Self {
        let mut state = Self::new(envelope.recipients.len());
        state.held = envelope.hold.as_ref().map(|reason| Hold {
            reason: reason.clone(),
            since: envelope.received_at,
        });
        state
    }

    /// Releases a hold: the time held stops counting toward `max_age`.
    pub fn release(&mut self, now: SystemTime) {
        if let Some(hold) = self.held.take() {
            self.held_for += now.duration_since(hold.since).unwrap_or_default();
        }
    }

    /// True when no recipient is still pending.
    pub fn is_finished(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| !matches!(r, RecipientStatus::Pending { .. }))
    }
}

/// Where delivery to one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not delivered yet; the last transient error, if any attempt was made.
    Pending {
        /// Why the last attempt failed.
        last_error: Option<String>,
    },
    /// Accepted by the next hop.
    Delivered,
    /// Failed for good; a bounce was sent unless the sender was null.
    Failed {
        /// The reply or error that decided it.
        reason: String,
    },
}
