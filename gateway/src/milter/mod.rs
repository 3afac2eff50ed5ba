//! The milter client: a chain entry of kind `milter` speaks the Sendmail
//! milter protocol (version 6) to an existing milter (OpenDKIM, rspamd's
//! proxy, ...), over TCP or a Unix socket, one milter connection per SMTP
//! connection, and turns its answers into the chain's verdicts and
//! modifications. Macros are sent as Postfix sends them by default.

pub mod protocol;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::plugin::{
    Fault, HeaderField, HookContext, Modification, ParsedMessage, StageCall, Verdict, canonical_line_endings,
    fields_and_body, header_name, mailbox,
};
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};
use protocol::{Options, Packet, action, command, flag, response};

/// Where a milter listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MilterAddress {
    /// `inet:host:port` (Postfix's form) or `inet:port@host` (Sendmail's).
    Inet(String),
    /// `unix:/path` (or just `/path`).
    Unix(PathBuf),
}

impl MilterAddress {
    /// Parses an address as Postfix and Sendmail write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a milter address: write \"inet:HOST:PORT\" or \"unix:/PATH\"");
        if let Some(path) = text.strip_prefix("unix:").or_else(|| text.strip_prefix("local:")) {
            return if path.starts_with('/') {
                Ok(Self::Unix(PathBuf::from(path)))
            } else {
                Err(bad())
            };
        }
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        let inet = text
            .strip_prefix("inet:")
            .or_else(|| text.strip_prefix("inet6:"))
            .unwrap_or(text);
        let (host, port) = match inet.split_once('@') {
            Some((port, host)) => (host.to_owned(), port),
            None => {
                let (host, port) = inet.rsplit_once(':').ok_or_else(bad)?;
                (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port)
            }
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(Self::Inet(format!("{host}:{port}")))
    }
}

impl std::fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inet(addr) => write!(f, "inet:{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A milter chain entry's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilterSettings {
    /// Where it listens.
    pub address: MilterAddress,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one answer may take (a progress packet restarts it).
    pub timeout: Duration,
    /// The gateway's host name (macro `j`).
    pub hostname: String,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What the milter said about a stage.
pub type Answer = (Verdict, Vec<Modification>);

static TRANSACTIONS: AtomicU64 = AtomicU64::new(1);

/// One SMTP connection's conversation with a milter.
pub struct MilterSession {
    settings: std::sync::Arc<MilterSettings>,
    stream: Option<Box<dyn Stream>>,
    options: Options,
    /// The milter accepted the connection, or the session broke: it is
    /// asked nothing more on this connection.
    done: bool,
    /// A transaction is open on the milter's side (MAIL sent, no end yet).
    in_message: bool,
    /// The milter accepted this message: asked nothing more until it ends.
    message_done: bool,
    /// The milter asked to discard this message.
    discard: bool,
    /// The milter's transaction id macro (`i`).
    queue_id: String,
}

impl std::fmt::Debug for MilterSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterSession")
            .field("address", &self.settings.address)
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

fn broken(e: impl std::fmt::Display) -> Fault {
    Fault::Milter(e.to_string())
}

impl MilterSession {
    /// A session that connects on first use.
    pub fn new(settings: std::sync::Arc<MilterSettings>) -> Self {
        Self {
            settings,
            stream: None,
            options: Options {
                version: protocol::VERSION,
                actions: 0,
                protocol: 0,
            },
            done: false,
            in_message: false,
            message_done: false,
            discard: false,
            queue_id: String::new(),
        }
    }

    /// Runs one stage through the milter. After a failure the milter
    /// connection is dropped; the next stage connects again and catches up
    /// (connection, greeting, envelope) before asking.
    pub async fn stage(&mut self, call: StageCall<'_>, ctx: &HookContext) -> Result<Answer, Fault> {
        if self.done {
            return Ok((Verdict::Continue, Vec::new()));
        }
        let result = self.converse(call, ctx).await;
        if result.is_err() {
            self.stream = None;
            self.in_message = false;
        }
        result
    }

    async fn converse(&mut self, call: StageCall<'_>, ctx: &HookContext) -> Result<Answer, Fault> {
        if self.stream.is_none() {
            self.open().await?;
            if !matches!(call, StageCall::Connect)
                && let Some(stop) = self.catch_up(call, ctx).await?
            {
                return Ok(stop);
            }
        }
        match call {
            StageCall::Connect => self.connect(ctx).await,
            StageCall::Helo(name) => self.helo(name).await,
            StageCall::Mail(path, parameters) => self.mail(path, &parameters.esmtp_args(), ctx).await,
            StageCall::Rcpt(rcpt, dsn) if !self.message_done => self.rcpt(rcpt, &esmtp_args(&dsn.wire())).await,
            StageCall::Data(message) if !self.message_done => self.message(message).await,
            StageCall::Data(_) => Ok((self.final_discard(), Vec::new())),
            StageCall::Rcpt(..) => Ok((Verdict::Continue, Vec::new())),
        }
    }

    /// Tells a newly connected milter what happened before `call`.
    async fn catch_up(&mut self, call: StageCall<'_>, ctx: &HookContext) -> Result<Option<Answer>, Fault> {
        let mut steps = vec![self.connect(ctx).await?];
        if let (Some(helo), false) = (&ctx.helo, matches!(call, StageCall::Helo(_))) {
            steps.push(self.helo(helo).await?);
        }
        // The parameters of the earlier commands are not kept for a
        // milter that connects late: they are left out.
        if let (Some(path), StageCall::Rcpt(..) | StageCall::Data(_)) = (&ctx.reverse_path, call) {
            steps.push(self.mail(path, &[], ctx).await?);
            if matches!(call, StageCall::Data(_)) {
                for rcpt in &ctx.recipients {
                    steps.push(self.rcpt(rcpt, &[]).await?);
                }
            }
        }
        Ok(steps.into_iter().find(|(verdict, _)| *verdict != Verdict::Continue))
    }

    /// MAIL with its ESMTP arguments (SMFIC_MAIL: the path, then each argument).
    async fn mail(&mut self, path: &ReversePath, esmtp: &[String], ctx: &HookContext) -> Result<Answer, Fault> {
        if self.in_message {
            self.abort().await?;
        }
        self.message_done = false;
        self.discard = false;
        self.queue_id = format!("{:X}", TRANSACTIONS.fetch_add(1, Ordering::Relaxed));
        self.in_message = true;
        let mut macros = vec![("i", self.queue_id.clone()), ("{mail_addr}", path.to_string())];
        if let Some(user) = &ctx.authenticated {
            macros.push(("{auth_authen}", user.clone()));
        }
        self.macros(command::MAIL, &macros).await?;
        let mut args = vec![format!("<{path}>")];
        args.extend_from_slice(esmtp);
        self.ask(flag::NOMAIL, flag::NR_MAIL, Packet::strings(command::MAIL, &args))
            .await
    }

    /// RCPT with its ESMTP arguments (SMFIC_RCPT: the path, then each argument).
    async fn rcpt(&mut self, rcpt: &Mailbox, esmtp: &[String]) -> Result<Answer, Fault> {
        let macros = [("i", self.queue_id.clone()), ("{rcpt_addr}", rcpt.to_string())];
        self.macros(command::RCPT, &macros).await?;
        let mut args = vec![format!("<{rcpt}>")];
        args.extend_from_slice(esmtp);
        self.ask(flag::NORCPT, flag::NR_RCPT, Packet::strings(command::RCPT, &args))
            .await
    }

    /// The SMTP transaction is over (queued, refused, RSET). The milter is
    /// told (SMFIC_ABORT) before the next MAIL, if it has not finished the
    /// message itself.
    pub fn end_transaction(&mut self) {
        self.message_done = false;
        self.discard = false;
    }

    async fn open(&mut self) -> Result<(), Fault> {
        let limit = self.settings.connect_timeout;
        let address = &self.settings.address;
        let connecting = async {
            Ok::<Box<dyn Stream>, std::io::Error>(match address {
                MilterAddress::Inet(addr) => {
                    let stream = TcpStream::connect(addr.as_str()).await?;
                    let _ = stream.set_nodelay(true);
                    Box::new(stream)
                }
                MilterAddress::Unix(path) => Box::new(UnixStream::connect(path).await?),
            })
        };
        let stream = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| broken(format!("connecting to {address} timed out after {limit:?}")))?
            .map_err(|e| broken(format!("cannot connect to {address}: {e}")))?;
        self.stream = Some(stream);
        self.send(&Options::offer()).await?;
        let answer = self.receive().await?;
        self.options = Options::parse(&answer).map_err(broken)?;
        Ok(())
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), Fault> {
        let limit = self.settings.timeout;
        let stream = self.stream.as_mut().ok_or_else(|| broken("not connected"))?;
        tokio::time::timeout(limit, protocol::write(stream, packet))
            .await
            .map_err(|_| Fault::Timeout(limit))?
            .map_err(|e| broken(format!("writing to {}: {e}", self.settings.address)))
    }

    /// The next packet other than a progress report.
    async fn receive(&mut self) -> Result<Packet, Fault> {
        let limit = self.settings.timeout;
        loop {
            let stream = self.stream.as_mut().ok_or_else(|| broken("not connected"))?;
            let packet = tokio::time::timeout(limit, protocol::read(stream))
                .await
                .map_err(|_| Fault::Timeout(limit))?
                .map_err(|e| broken(format!("reading from {}: {e}", self.settings.address)))?;
            if packet.code != response::PROGRESS {
                return Ok(packet);
            }
        }
    }

    async fn macros(&mut self, stage: u8, macros: &[(&str, String)]) -> Result<(), Fault> {
        let mut data = vec![stage];
        for (name, value) in macros {
            data.extend_from_slice(name.as_bytes());
            data.push(0);
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        self.send(&Packet {
            code: command::MACRO,
            data,
        })
        .await
    }

    /// Sends a command the milter may skip (`skip`) or not answer
    /// (`no_reply`), and reads its answer.
    async fn ask(&mut self, skip: u32, no_reply: u32, packet: Packet) -> Result<Answer, Fault> {
        if self.options.has(skip) {
            return Ok((Verdict::Continue, Vec::new()));
        }
        self.send(&packet).await?;
        if self.options.has(no_reply) {
            return Ok((Verdict::Continue, Vec::new()));
        }
        let answer = self.receive().await?;
        self.verdict(&answer, packet.code).map(|v| (v, Vec::new()))
    }

    async fn connect(&mut self, ctx: &HookContext) -> Result<Answer, Fault> {
        let ip = ctx.client.ip().to_canonical();
        self.macros(
            command::CONNECT,
            &[
                ("j", self.settings.hostname.clone()),
                ("{daemon_name}", ctx.listener.to_string()),
                ("v", format!("mailgate {}", env!("CARGO_PKG_VERSION"))),
                ("_", format!("[{ip}]")),
            ],
        )
        .await?;
        let family = if ip.is_ipv4() { b'4' } else { b'6' };
        let mut data = format!("[{ip}]").into_bytes();
        data.push(0);
        data.push(family);
        data.extend_from_slice(&ctx.client.port().to_be_bytes());
        data.extend_from_slice(ip.to_string().as_bytes());
        data.push(0);
        self.ask(
            flag::NOCONNECT,
            flag::NR_CONN,
            Packet {
                code: command::CONNECT,
                data,
            },
        )
        .await
    }

    async fn helo(&mut self, name: &str) -> Result<Answer, Fault> {
        self.macros(command::HELO, &[]).await?;
        self.ask(flag::NOHELO, flag::NR_HELO, Packet::strings(command::HELO, &[name]))
            .await
    }

    async fn abort(&mut self) -> Result<(), Fault> {
        self.send(&Packet::empty(command::ABORT)).await
    }

    /// DATA, the header fields, EOH, the body in chunks, and the end of
    /// the message, whose answer carries the modifications.
    async fn message(&mut self, message: &ParsedMessage) -> Result<Answer, Fault> {
        let id = self.queue_id.clone();
        self.macros(command::DATA, &[("i", id.clone())]).await?;
        let data = Packet::empty(command::DATA);
        if let Some(stop) = self.ask_until_done(flag::NODATA, flag::NR_DATA, data).await? {
            return Ok(stop);
        }
        let (fields, body) = split(message.raw());
        for (name, value) in &fields {
            let packet = Packet::strings(command::HEADER, &[name.as_bytes(), value.as_bytes()]);
            if let Some(stop) = self.ask_until_done(flag::NOHDRS, flag::NR_HDR, packet).await? {
                return Ok(stop);
            }
        }
        self.macros(command::EOH, &[("i", id.clone())]).await?;
        let eoh = self.ask(flag::NOEOH, flag::NR_EOH, Packet::empty(command::EOH)).await?;
        if eoh.0 != Verdict::Continue {
            return Ok(eoh);
        }
        if !self.options.has(flag::NOBODY) {
            for chunk in body.chunks(protocol::BODY_CHUNK) {
                self.send(&Packet {
                    code: command::BODY,
                    data: chunk.to_vec(),
                })
                .await?;
                if self.options.has(flag::NR_BODY) {
                    continue;
                }
                let answer = self.receive().await?;
                if answer.code == response::SKIP {
                    break;
                }
                let verdict = self.verdict(&answer, command::BODY)?;
                if verdict != Verdict::Continue {
                    return Ok((verdict, Vec::new()));
                }
                if self.message_done {
                    return Ok((self.final_discard(), Vec::new()));
                }
            }
        }
        self.macros(command::BODYEOB, &[("i", id)]).await?;
        self.send(&Packet::empty(command::BODYEOB)).await?;
        let mut changes = Changes::default();
        loop {
            let packet = self.receive().await?;
            if changes.take(&packet, self.options.actions).map_err(Fault::Illegal)? {
                continue;
            }
            let verdict = self.verdict(&packet, command::BODYEOB)?;
            // The milter's side of the transaction ends with its answer.
            self.in_message = false;
            return Ok(changes.finish(verdict, self.discard));
        }
    }

    /// `ask` inside a message: the answer when it stops the message (a
    /// verdict other than continue, or the milter accepting or discarding
    /// the rest), none to go on.
    async fn ask_until_done(&mut self, skip: u32, no_reply: u32, packet: Packet) -> Result<Option<Answer>, Fault> {
        let answer = self.ask(skip, no_reply, packet).await?;
        if answer.0 != Verdict::Continue {
            return Ok(Some(answer));
        }
        Ok(self.message_done.then(|| (self.final_discard(), Vec::new())))
    }

    fn final_discard(&self) -> Verdict {
        if self.discard {
            Verdict::Discard
        } else {
            Verdict::Continue
        }
    }

    /// An accept/reject answer to `command`.
    fn verdict(&mut self, packet: &Packet, command: u8) -> Result<Verdict, Fault> {
        let connection = matches!(command, command::CONNECT | command::HELO);
        let illegal = |what: &str| Fault::Illegal(format!("milter answered {what} to {:?}", char::from(command)));
        match packet.code {
            response::CONTINUE => Ok(Verdict::Continue),
            response::ACCEPT => {
                if connection {
                    self.done = true;
                } else {
                    self.message_done = true;
                }
                Ok(if command == command::BODYEOB {
                    self.final_discard()
                } else {
                    Verdict::Continue
                })
            }
            response::REJECT if command == command::CONNECT => Ok(Verdict::Disconnect(Reply::new(
                554,
                EnhancedCode::new(5, 7, 1),
                "Connection rejected",
            ))),
            response::REJECT => Ok(Verdict::Reject(Reply::new(
                550,
                EnhancedCode::new(5, 7, 1),
                "Command rejected",
            ))),
            response::TEMPFAIL if command == command::CONNECT => Ok(Verdict::Disconnect(Reply::new(
                421,
                EnhancedCode::new(4, 7, 0),
                "Service unavailable - try again later",
            ))),
            response::TEMPFAIL => Ok(Verdict::Tempfail(Reply::new(
                451,
                EnhancedCode::new(4, 7, 1),
                "Service unavailable - try again later",
            ))),
            response::REPLYCODE => {
                let reply = reply_code(&packet.data).ok_or_else(|| illegal("a malformed reply code"))?;
                Ok(match reply.code() {
                    421 => Verdict::Disconnect(reply),
                    c if command == command::CONNECT && c >= 500 => Verdict::Disconnect(reply),
                    c if c >= 500 => Verdict::Reject(reply),
                    _ => Verdict::Tempfail(reply),
                })
            }
            response::DISCARD => {
                self.discard = true;
                self.message_done = true;
                if connection {
                    return Err(illegal("discard"));
                }
                Ok(if command == command::BODYEOB {
                    Verdict::Discard
                } else {
                    Verdict::Continue
                })
            }
            other => Err(illegal(&format!("{:?}", char::from(other)))),
        }
    }

    /// Says goodbye (the connection is closing).
    pub async fn quit(&mut self) {
        if self.stream.is_some() && !self.done {
            let _ = self.send(&Packet::empty(command::QUIT)).await;
        }
        self.stream = None;
    }
}

/// `NNN [x.y.z] text`, with `%%` for `%`; 4xx or 5xx only.
fn reply_code(data: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(data)).replace("%%", "%");
    let lines: Vec<&str> = text.split(['\r', '\n']).filter(|l| !l.is_empty()).collect();
    let first = lines.first()?;
    let code: u16 = first.get(..3)?.parse().ok()?;
    if !(400..600).contains(&code) {
        return None;
    }
    // Multi-line replies come as "550-5.7.1 first\r\n550 5.7.1 last".
    let texts: Vec<String> = lines.iter().map(|l| l.get(4..).unwrap_or("").to_owned()).collect();
    Some(Reply::parsed(code, texts))
}

/// The modifications of an end-of-message answer, checked against the
/// negotiated actions.
#[derive(Debug, Default)]
struct Changes {
    modifications: Vec<Modification>,
    body: Option<Vec<u8>>,
    quarantine: Option<String>,
}

impl Changes {
    /// Takes `packet` if it is a modification; false when it is the final
    /// answer.
    fn take(&mut self, packet: &Packet, actions: u32) -> Result<bool, String> {
        let allowed = |bit: u32, what: &str| {
            if actions & bit == 0 {
                Err(format!("milter did not negotiate {what}"))
            } else {
                Ok(())
            }
        };
        let strings = protocol::split_strings;
        match packet.code {
            response::ADDHEADER => {
                allowed(action::ADDHDRS, "adding headers")?;
                let s = strings(&packet.data);
                self.modifications.push(Modification::AddHeader(field(&s)?));
            }
            response::INSHEADER | response::CHGHEADER => {
                let (index, rest) = index_and_rest(&packet.data)?;
                let s = strings(rest);
                if packet.code == response::INSHEADER {
                    allowed(action::ADDHDRS, "inserting headers")?;
                    self.modifications.push(Modification::InsertHeader(index, field(&s)?));
                } else {
                    allowed(action::CHGHDRS, "changing headers")?;
                    // Indexes are 1-based; 0 is taken as the first too.
                    let occurrence = index.saturating_sub(1);
                    match s.get(1).map(String::as_str) {
                        None | Some("") => {
                            let name = s.first().cloned().unwrap_or_default();
                            self.modifications.push(Modification::RemoveHeaderAt(name, occurrence));
                        }
                        Some(_) => self
                            .modifications
                            .push(Modification::ChangeHeader(occurrence, field(&s)?)),
                    }
                }
            }
            response::REPLBODY => {
                allowed(action::CHGBODY, "replacing the body")?;
                self.body.get_or_insert_with(Vec::new).extend_from_slice(&packet.data);
            }
            response::CHGFROM => {
                allowed(action::CHGFROM, "changing the sender")?;
                let s = strings(&packet.data);
                let path = unbracket(s.first().map_or("", String::as_str));
                let path = if path.is_empty() {
                    ReversePath::Null
                } else {
                    ReversePath::Mailbox(mailbox(path)?)
                };
                self.modifications.push(Modification::SetReversePath(path));
            }
            response::ADDRCPT | response::ADDRCPT_PAR => {
                allowed(action::ADDRCPT | action::ADDRCPT_PAR, "adding recipients")?;
                let s = strings(&packet.data);
                let rcpt = mailbox(unbracket(s.first().map_or("", String::as_str)))?;
                self.modifications.push(Modification::AddRecipient(rcpt, None));
            }
            response::DELRCPT => {
                allowed(action::DELRCPT, "removing recipients")?;
                let s = strings(&packet.data);
                let rcpt = mailbox(unbracket(s.first().map_or("", String::as_str)))?;
                self.modifications.push(Modification::RemoveRecipient(rcpt));
            }
            response::QUARANTINE => {
                allowed(action::QUARANTINE, "quarantining")?;
                let s = strings(&packet.data);
                let reason = s.first().cloned().unwrap_or_default();
                self.quarantine = Some(if reason.is_empty() { "milter".to_owned() } else { reason });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(mut self, verdict: Verdict, discard: bool) -> Answer {
        if let Some(body) = self.body.take() {
            self.modifications
                .push(Modification::ReplaceBody(canonical_line_endings(&body)));
        }
        let verdict = match verdict {
            Verdict::Continue | Verdict::Accept if discard => Verdict::Discard,
            Verdict::Continue | Verdict::Accept => match self.quarantine {
                Some(reason) => Verdict::Quarantine(reason),
                None => Verdict::Continue,
            },
            other => return (other, Vec::new()),
        };
        (verdict, self.modifications)
    }
}

fn index_and_rest(data: &[u8]) -> Result<(u32, &[u8]), String> {
    let (index, rest) = data
        .split_first_chunk::<4>()
        .ok_or("a header change without an index")?;
    Ok((u32::from_be_bytes(*index), rest))
}

fn unbracket(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(text)
}

/// A header field from a milter: a valid name, and a value whose lines
/// (separated by LF or CRLF) continue with whitespace. Folding is kept.
fn field(strings: &[String]) -> Result<HeaderField, String> {
    let name = header_name(strings.first().cloned().unwrap_or_default())?;
    let value = strings.get(1).cloned().unwrap_or_default();
    let value = value.replace("\r\n", "\n");
    let lines: Vec<&str> = value.split('\n').collect();
    let folded_ok = lines
        .iter()
        .skip(1)
        .all(|l| l.starts_with([' ', '\t']) && l.trim() != "");
    if !folded_ok || value.contains(['\r', '\0']) || value.len() > 64 * 1024 {
        return Err(format!(
            "invalid value for header {name}: a line that does not continue the field"
        ));
    }
    Ok(HeaderField {
        name,
        value: lines.join("\r\n"),
    })
}

/// The header fields (name, value as the milter protocol carries it: no
/// leading space, lines joined by LF) and the body.
fn split(raw: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (fields, body) = fields_and_body(raw);
    let fields = fields
        .iter()
        .map(|field| {
            let text = String::from_utf8_lossy(field);
            let text = text.trim_end_matches(['\r', '\n']).replace("\r\n", "\n");
            match text.split_once(':') {
                Some((name, value)) => (
                    name.trim_end().to_owned(),
                    value.strip_prefix(' ').unwrap_or(value).to_owned(),
                ),
                None => (text, String::new()),
            }
        })
        .collect();
    (fields, body)
}

/// ESMTP parameters as separate arguments.
fn esmtp_args(wire: &str) -> Vec<String> {
    wire.split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_postfix_and_sendmail_write_them() {
        for (text, parsed) in [
            ("inet:127.0.0.1:8891", MilterAddress::Inet("127.0.0.1:8891".into())),
            ("inet:8891@localhost", MilterAddress::Inet("localhost:8891".into())),
            ("inet6:[::1]:11332", MilterAddress::Inet("[::1]:11332".into())),
            ("127.0.0.1:11332", MilterAddress::Inet("127.0.0.1:11332".into())),
            (
                "unix:/run/opendkim/opendkim.sock",
                MilterAddress::Unix("/run/opendkim/opendkim.sock".into()),
            ),
            ("/run/milter.sock", MilterAddress::Unix("/run/milter.sock".into())),
        ] {
            assert_eq!(MilterAddress::parse(text), Ok(parsed), "{text}");
        }
        for bad in ["inet:nohost", "unix:relative", "inet:host:0", "inet::25", "x"] {
            assert!(MilterAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_split_into_protocol_fields() {
        let (fields, body) = split(b"Received: from a\r\n\tby b\r\nSubject:  two spaces\r\nX-Empty:\r\n\r\nbody\r\n");
        assert_eq!(
            fields,
            [
                ("Received".to_owned(), "from a\n\tby b".to_owned()),
                ("Subject".to_owned(), " two spaces".to_owned()),
                ("X-Empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(body, b"body\r\n");
    }

    #[test]
    fn reply_codes_are_parsed_and_bounded() {
        let reply = reply_code(b"554 5.7.1 Spam message rejected; 100%% sure\0").unwrap_or_else(|| unreachable!());
        assert_eq!(reply.code(), 554);
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(reply.lines(), ["Spam message rejected; 100% sure"]);
        assert!(reply_code(b"250 ok\0").is_none());
        assert!(reply_code(b"5x0 no\0").is_none());
        let multi = reply_code(b"550-5.7.1 first\r\n550 5.7.1 second\0").unwrap_or_else(|| unreachable!());
        assert_eq!(multi.lines().len(), 2);
    }

    #[test]
    fn modifications_are_checked_against_the_negotiation() {
        let mut changes = Changes::default();
        let packet = |code: u8, data: &[u8]| Packet {
            code,
            data: data.to_vec(),
        };
        let header = packet(response::ADDHEADER, b"X-Spam\0yes\n\tfolded\0");
        assert!(changes.take(&header, 0).is_err(), "not negotiated");
        assert_eq!(changes.take(&header, action::ALL), Ok(true));
        let mut insert = 0u32.to_be_bytes().to_vec();
        insert.extend_from_slice(b"DKIM-Signature\0v=1; a=rsa-sha256\0");
        assert_eq!(
            changes.take(&packet(response::INSHEADER, &insert), action::ALL),
            Ok(true)
        );
        let mut delete = 2u32.to_be_bytes().to_vec();
        delete.extend_from_slice(b"Received\0\0");
        assert_eq!(
            changes.take(&packet(response::CHGHEADER, &delete), action::ALL),
            Ok(true)
        );
        assert_eq!(
            changes.take(&packet(response::ADDRCPT, b"<new@example.com>\0"), action::ALL),
            Ok(true)
        );
        assert_eq!(
            changes.take(&packet(response::REPLBODY, b"new\nbody\n"), action::ALL),
            Ok(true)
        );
        assert!(
            changes
                .take(&packet(response::ADDHEADER, b"Bad\0x\nInjected: yes\0"), action::ALL)
                .is_err()
        );
        assert_eq!(changes.take(&packet(response::CONTINUE, b""), action::ALL), Ok(false));
        let (verdict, mods) = changes.finish(Verdict::Continue, false);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(
            mods,
            [
                Modification::AddHeader(HeaderField {
                    name: "X-Spam".into(),
                    value: "yes\r\n\tfolded".into()
                }),
                Modification::InsertHeader(
                    0,
                    HeaderField {
                        name: "DKIM-Signature".into(),
                        value: "v=1; a=rsa-sha256".into()
                    }
                ),
                Modification::RemoveHeaderAt("Received".into(), 1),
                Modification::AddRecipient(mailbox("new@example.com").unwrap_or_else(|e| unreachable!("{e}")), None),
                Modification::ReplaceBody(b"new\r\nbody\r\n".to_vec()),
            ]
        );
    }
}
