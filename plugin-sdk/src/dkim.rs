//! The `dkim` capability: DKIM signing with keys the gateway holds
//! (`[[dkim.key]]`), DKIM verification with SPF, ARC and DMARC
//! evaluation, done by the gateway (with the mail-auth crate) on the
//! message it received, and ARC sealing of the message as it leaves
//! ([`seal`]). The plugin decides when to sign or seal, and what the
//! results mean for the message. It must be granted `dkim` in the
//! configuration.
//!
//! ```no_run
//! use mailgate_plugin_sdk::{Message, Transaction, dkim};
//!
//! fn stamp(message: &Message, txn: &Transaction) {
//!     let envelope = dkim::Envelope::of(txn, None);
//!     let found = dkim::verify(message, &envelope);
//!     txn.add_header("Authentication-Results", &found.authentication_results);
//! }
//! ```

use std::fmt;
use std::str::FromStr;

use crate::bindings::mailgate::plugin::dkim as wit;
use crate::{Header, Message, ReversePath, Transaction};

/// A result of DKIM, SPF or DMARC, named as in Authentication-Results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing to evaluate.
    None,
    /// Verified.
    Pass,
    /// Verification failed.
    Fail,
    /// SPF only: a weak failure.
    Softfail,
    /// No assertion.
    Neutral,
    /// A temporary error.
    Temperror,
    /// A permanent error.
    Permerror,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 7] = [
        Self::None,
        Self::Pass,
        Self::Fail,
        Self::Softfail,
        Self::Neutral,
        Self::Temperror,
        Self::Permerror,
    ];

    /// Its name: "pass", "softfail", ...
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Softfail => "softfail",
            Self::Neutral => "neutral",
            Self::Temperror => "temperror",
            Self::Permerror => "permerror",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown result {s:?}"))
    }
}

/// The policy a DMARC record asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No DMARC record.
    Unspecified,
    /// p=none.
    None,
    /// p=quarantine.
    Quarantine,
    /// p=reject.
    Reject,
}

/// The SMTP facts verification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The client's address.
    pub client_ip: String,
    /// The EHLO name.
    pub helo: String,
    /// The reverse-path ("" for the null path).
    pub mail_from: String,
    /// An SPF result already known (none: the gateway checks SPF).
    pub spf: Option<Status>,
}

impl Envelope {
    /// The envelope of `txn`, with an SPF result already known.
    pub fn of(txn: &Transaction, spf: Option<Status>) -> Self {
        let client = txn.client();
        Self {
            client_ip: client.ip,
            helo: client.helo.unwrap_or_default(),
            mail_from: match txn.reverse_path() {
                Some(ReversePath::Mailbox(mailbox)) => mailbox.as_str().to_owned(),
                Some(ReversePath::Null) | None => String::new(),
            },
            spf,
        }
    }
}

impl Envelope {
    fn wit(&self) -> wit::Envelope {
        wit::Envelope {
            client_ip: self.client_ip.clone(),
            helo: self.helo.clone(),
            mail_from: self.mail_from.clone(),
            spf: self.spf.map(wit_status),
        }
    }
}

/// One DKIM-Signature's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Its d= domain.
    pub domain: String,
    /// Its s= selector.
    pub selector: String,
    /// The result.
    pub status: Status,
    /// Why it did not pass.
    pub reason: Option<String>,
}

/// What verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Each signature, in order.
    pub signatures: Vec<Signature>,
    /// The SPF result DMARC used.
    pub spf: Status,
    /// The DMARC result.
    pub dmarc: Status,
    /// The From domain DMARC evaluated.
    pub dmarc_domain: String,
    /// That domain's policy.
    pub dmarc_policy: Policy,
    /// The incoming ARC chain's validation: none (no chain), pass, fail
    /// or temperror.
    pub arc: Status,
    /// The latest ARC set's instance number (0: no chain).
    pub arc_instance: u32,
    /// The gateway's name in Authentication-Results.
    pub authserv_id: String,
    /// The Authentication-Results value.
    pub authentication_results: String,
}

fn status(s: wit::Status) -> Status {
    match s {
        wit::Status::None => Status::None,
        wit::Status::Pass => Status::Pass,
        wit::Status::Fail => Status::Fail,
        wit::Status::Softfail => Status::Softfail,
        wit::Status::Neutral => Status::Neutral,
        wit::Status::Temperror => Status::Temperror,
        wit::Status::Permerror => Status::Permerror,
    }
}

fn wit_status(s: Status) -> wit::Status {
    match s {
        Status::None => wit::Status::None,
        Status::Pass => wit::Status::Pass,
        Status::Fail => wit::Status::Fail,
        Status::Softfail => wit::Status::Softfail,
        Status::Neutral => wit::Status::Neutral,
        Status::Temperror => wit::Status::Temperror,
        Status::Permerror => wit::Status::Permerror,
    }
}

/// DKIM-Signature fields for `message`, one per key the gateway holds for
/// `domain` (none when it holds none). Add them with
/// [`Transaction::add_header`].
pub fn sign(message: &Message<'_>, domain: &str) -> Result<Vec<Header>, String> {
    wit::sign(message.inner(), domain).map(|fields| {
        fields
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    })
}

/// Verifies `message`'s DKIM signatures and evaluates DMARC.
pub fn verify(message: &Message<'_>, envelope: &Envelope) -> Verification {
    let found = wit::verify(message.inner(), &envelope.wit());
    Verification {
        signatures: found
            .signatures
            .into_iter()
            .map(|s| Signature {
                domain: s.domain,
                selector: s.selector,
                status: status(s.status),
                reason: s.reason,
            })
            .collect(),
        spf: status(found.spf),
        dmarc: status(found.dmarc),
        dmarc_domain: found.dmarc_domain,
        dmarc_policy: match found.dmarc_policy {
            wit::Policy::Unspecified => Policy::Unspecified,
            wit::Policy::None => Policy::None,
            wit::Policy::Quarantine => Policy::Quarantine,
            wit::Policy::Reject => Policy::Reject,
        },
        arc: status(found.arc),
        arc_instance: found.arc_instance,
        authserv_id: found.authserv_id,
        authentication_results: found.authentication_results,
    }
}

/// Asks the gateway to ARC-seal the message for `domain` (RFC 8617) after
/// the whole chain has run and its modifications are applied, so that the
/// seal covers the message as it leaves. The ARC-Authentication-Results
/// carry the results of verifying the message as received with
/// `envelope`. An error when the gateway holds no RSA key for `domain`.
/// Call it from `on_data`.
pub fn seal(domain: &str, envelope: &Envelope) -> Result<(), String> {
    wit::seal(domain, &envelope.wit())
}
