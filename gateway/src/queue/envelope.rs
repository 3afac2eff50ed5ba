//! What the spool keeps beside the content: the envelope (fixed once the
//! message is accepted) and the delivery state (rewritten after attempts).

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::smtp::command::BodyType;
use crate::smtp::{Mailbox, ReversePath};

/// The envelope of a spooled message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM; `Null` for bounces.
    pub reverse_path: ReversePath,
    /// RCPT TO, in order.
    pub recipients: Vec<Mailbox>,
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
}

impl DeliveryState {
    /// The state of a message nobody has tried to deliver yet.
    pub fn new(recipients: usize) -> Self {
        Self {
            attempts: 0,
            next_attempt: None,
            recipients: vec![RecipientStatus::Pending { last_error: None }; recipients],
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
