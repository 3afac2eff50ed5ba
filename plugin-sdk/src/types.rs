//! Plain types plugins work with.

use std::fmt;

use crate::bindings::mailgate::plugin::types as wit;

/// A plugin's decision for one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub enum Verdict {
    /// No opinion: the next plugin decides, then the gateway's own policy.
    Continue,
    /// The stage succeeds; later plugins are not asked for it. The
    /// gateway's relay policy still applies.
    Accept,
    /// Refuse for good with a 5xx reply.
    Reject(Reply),
    /// Refuse for now with a 4xx reply.
    Tempfail(Reply),
    /// Send a 421 or 554 reply and close the connection.
    Disconnect(Reply),
    /// Data stage only: answer 250 and deliver nothing.
    Discard,
    /// Data stage only: answer 250 and keep the message in the quarantine.
    Quarantine(String),
    /// Data stage only: answer 250 and queue the message on hold, not
    /// delivered until an operator releases it.
    Hold(String),
}

impl Verdict {
    /// `Reject` with a 5xx code, an enhanced status code such as "5.7.1", and text.
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Self {
        Self::Reject(Reply::new(code, enhanced, text))
    }

    /// `Tempfail` with a 4xx code, an enhanced status code such as "4.7.1", and text.
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Self {
        Self::Tempfail(Reply::new(code, enhanced, text))
    }

    /// `Disconnect` with 421 or 554, an enhanced status code, and text.
    pub fn disconnect(code: u16, enhanced: &str, text: &str) -> Self {
        Self::Disconnect(Reply::new(code, enhanced, text))
    }
}

/// An SMTP reply the gateway sends for the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code; it must fit the verdict.
    pub code: u16,
    /// The enhanced status code (RFC 3463), or none for the gateway's default.
    pub enhanced: Option<String>,
    /// One line of text.
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        Self {
            code,
            enhanced: Some(enhanced.to_owned()),
            text: text.to_owned(),
        }
    }
}

impl From<Reply> for wit::Reply {
    fn from(reply: Reply) -> Self {
        Self {
            code: reply.code,
            enhanced: reply.enhanced,
            text: reply.text,
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Continue => Self::Continue,
            Verdict::Accept => Self::Accept,
            Verdict::Reject(r) => Self::Reject(r.into()),
            Verdict::Tempfail(r) => Self::Tempfail(r.into()),
            Verdict::Disconnect(r) => Self::Disconnect(r.into()),
            Verdict::Discard => Self::Discard,
            Verdict::Quarantine(reason) => Self::Quarantine(reason),
            Verdict::Hold(reason) => Self::Hold(reason),
        }
    }
}

/// A mailbox address, `local-part@domain`, as the gateway has it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox(String);

impl Mailbox {
    /// Wraps an address given by the gateway.
    pub fn new(address: String) -> Self {
        Self(address)
    }

    /// The whole address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The local part (before the last `@`).
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(self.0.as_str(), |(local, _)| local)
    }

    /// The domain (after the last `@`), as written.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reverse-path of MAIL FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReversePath {
    /// `<>`: a bounce or other automatic message.
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// From the gateway's string form ("" for the null path).
    pub fn parse(text: &str) -> Self {
        if text.is_empty() {
            Self::Null
        } else {
            Self::Mailbox(Mailbox::new(text.to_owned()))
        }
    }
}

/// The body type declared in MAIL FROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyType {
    /// 7-bit (the default).
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// What a failure report returns of the message: DSN's `RET=` (RFC 3461).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header section.
    Hdrs,
}

/// The parameters of MAIL FROM.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailParameters {
    /// `SIZE=`, the client's estimate.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: BodyType,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// DSN's `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// DSN's `ENVID=`, decoded (RFC 3461).
    pub envid: Option<String>,
    /// `REQUIRETLS` was given (RFC 8689): relayed only over verified TLS.
    pub requiretls: bool,
}

impl From<wit::MailParameters> for MailParameters {
    fn from(p: wit::MailParameters) -> Self {
        Self {
            size: p.size,
            body: match p.body {
                wit::BodyType::SevenBit => BodyType::SevenBit,
                wit::BodyType::EightBitMime => BodyType::EightBitMime,
            },
            smtputf8: p.smtputf8,
            ret: p.ret.map(|ret| match ret {
                wit::DsnRet::Full => Ret::Full,
                wit::DsnRet::Hdrs => Ret::Hdrs,
            }),
            envid: p.envid,
            requiretls: p.requiretls,
        }
    }
}

/// When the sender wants a delivery status notification for a recipient:
/// DSN's `NOTIFY=` (RFC 3461). All false is `NOTIFY=NEVER`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// `SUCCESS`: report delivery.
    pub success: bool,
    /// `FAILURE`: report failure.
    pub failure: bool,
    /// `DELAY`: report delay.
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Self = Self {
        success: false,
        failure: false,
        delay: false,
    };
}

impl From<wit::Notify> for Notify {
    fn from(flags: wit::Notify) -> Self {
        Self {
            success: flags.contains(wit::Notify::SUCCESS),
            failure: flags.contains(wit::Notify::FAILURE),
            delay: flags.contains(wit::Notify::DELAY),
        }
    }
}

impl From<Notify> for wit::Notify {
    fn from(notify: Notify) -> Self {
        let mut flags = Self::empty();
        for (on, flag) in [
            (notify.success, Self::SUCCESS),
            (notify.failure, Self::FAILURE),
            (notify.delay, Self::DELAY),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

/// The parameters of RCPT TO: DSN's `NOTIFY=` and `ORCPT=` (RFC 3461).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RcptParameters {
    /// `NOTIFY=`; none when the client gave none.
    pub notify: Option<Notify>,
    /// `ORCPT=`: the address type (e.g. `rfc822`) and the address as the
    /// original sender gave it.
    pub orcpt: Option<(String, String)>,
}

impl From<wit::RcptParameters> for RcptParameters {
    fn from(p: wit::RcptParameters) -> Self {
        Self {
            notify: p.notify.map(Into::into),
            orcpt: p.orcpt.map(|o| (o.addr_type, o.address)),
        }
    }
}

/// Where mail should go next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NextHop {
    /// A `[[route]]` of the gateway's configuration, by name.
    Route(String),
    /// A smarthost, `"host:port"`.
    Smarthost(String),
}

impl From<NextHop> for wit::NextHop {
    fn from(hop: NextHop) -> Self {
        match hop {
            NextHop::Route(name) => Self::Route(name),
            NextHop::Smarthost(host) => Self::Smarthost(host),
        }
    }
}

/// The SMTP client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Its IP address.
    pub ip: String,
    /// Its port.
    pub port: u16,
    /// The listener it connected to.
    pub listener: String,
    /// The connection uses TLS.
    pub tls: bool,
    /// The EHLO/HELO name, once given.
    pub helo: Option<String>,
    /// The authenticated user, once authenticated.
    pub authenticated: Option<String>,
}

/// A header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name.
    pub name: String,
    /// The value, unfolded and decoded.
    pub value: String,
}
