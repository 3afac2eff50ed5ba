//! The outbound SMTP client (RFC 5321): greeting, EHLO with HELO fallback,
//! STARTTLS (RFC 3207), AUTH PLAIN and LOGIN (RFC 4954), one transaction
//! with PIPELINING when offered (RFC 2920), SIZE, 8BITMIME and SMTPUTF8
//! rules, DSN parameters passed on (RFC 3461), REQUIRETLS (RFC 8689),
//! content dot-stuffed after DATA or sent whole in one `BDAT LAST` chunk
//! when the next hop offers CHUNKING (RFC 3030), per-recipient results.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::metrics::{Direction, metrics};

use super::ClientTimeouts;
use super::error::{DeliveryError, Handoff, Outcome};
use super::extensions::Extensions;
use super::tls::Credentials;
use crate::net::Stream;
use crate::queue::{Envelope, Recipient};
use crate::smtp::command::BodyType;
use crate::smtp::data::DotStuffer;
use crate::smtp::{EnhancedCode, Reply, ReplyClass};

/// The longest reply line we read, and the most lines in one reply.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;
/// Content is written in blocks of this size.
const BLOCK: usize = 64 * 1024;

/// A connection to a next hop, greeted and ready for a transaction.
#[derive(Debug)]
pub struct SmtpClient {
    stream: Stream,
    buffer: Vec<u8>,
    timeouts: ClientTimeouts,
    extensions: Extensions,
    host: String,
    helo: String,
    /// The TLS session authenticated the server's certificate.
    verified: bool,
    /// The TLS policy the session was opened under, for logs.
    tls_policy: &'static str,
}

impl SmtpClient {
    /// Connects to `address` (a host called `host`), reads the greeting
    /// and says EHLO (HELO if EHLO is refused).
    pub async fn connect(
        address: SocketAddr,
        host: &str,
        helo: &str,
        timeouts: ClientTimeouts,
    ) -> Result<Self, DeliveryError> {
        let stream = match timeout(timeouts.connect, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(DeliveryError::Connect {
                    host: format!("{host}[{}]", address.ip()),
                    source,
                });
            }
            Err(_) => {
                return Err(DeliveryError::Connect {
                    host: format!("{host}[{}]", address.ip()),
                    source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                });
            }
        };
        // SMTP is a ping-pong of small writes: never wait on delayed ACKs.
        let _ = stream.set_nodelay(true);
        let mut client = Self {
            stream: Stream::Plain(stream),
            buffer: Vec::new(),
            timeouts,
            extensions: Extensions::default(),
            host: host.to_owned(),
            helo: helo.to_owned(),
            verified: false,
            tls_policy: "opportunistic",
        };
        client.expect_positive("greeting", timeouts.command).await?;
        client.hello().await?;
        Ok(client)
    }

    /// The next hop's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// True when the server offered STARTTLS.
    pub fn offers_starttls(&self) -> bool {
        self.extensions.starttls
    }

    /// True once the connection is inside TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Names the TLS policy the session was opened under (for logs).
    pub fn set_tls_policy(&mut self, policy: &'static str) {
        self.tls_policy = policy;
    }

    /// What the session got: `verified TLS`, `TLS` or `clear text`.
    pub fn tls_use(&self) -> &'static str {
        match (self.is_tls(), self.verified) {
            (true, true) => "verified TLS",
            (true, false) => "TLS",
            (false, _) => "clear text",
        }
    }

    /// Upgrades with STARTTLS and says EHLO again (RFC 3207 section 4.2:
    /// everything learnt before TLS is forgotten). `verified` says whether
    /// `config` authenticates the server's certificate.
    pub async fn starttls(mut self, config: Arc<ClientConfig>, verified: bool) -> Result<Self, DeliveryError> {
        self.write("STARTTLS", b"STARTTLS\r\n").await?;
        let reply = self.read_reply("STARTTLS", self.timeouts.command).await?;
        if reply.code() != 220 {
            return Err(DeliveryError::Rejected {
                stage: "STARTTLS",
                reply,
            });
        }
        if !self.buffer.is_empty() {
            // Bytes after the 220 arrived in clear: someone is injecting.
            return Err(DeliveryError::Protocol(
                "the server sent data after its STARTTLS reply".into(),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(DeliveryError::Protocol("STARTTLS inside TLS".into()));
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| DeliveryError::Tls {
            host: self.host.clone(),
            reason: format!("invalid server name: {e}"),
        })?;
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let result = timeout(self.timeouts.command, handshake).await;
        metrics().tls(Direction::Outbound, matches!(result, Ok(Ok(_))));
        let tls = match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(DeliveryError::Tls {
                    host: self.host.clone(),
                    reason: e.to_string(),
                });
            }
            Err(_) => return Err(DeliveryError::Timeout("TLS handshake")),
        };
        self.stream = Stream::Tls(Box::new(tls.into()));
        self.verified = verified;
        self.extensions = Extensions::default();
        self.hello().await?;
        Ok(self)
    }

    /// AUTH PLAIN if offered, else AUTH LOGIN (RFC 4954).
    pub async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), DeliveryError> {
        let stage = "AUTH";
        if self.extensions.auth_plain {
            let token = BASE64.encode(format!("\0{}\0{}", credentials.username, credentials.password));
            self.write(stage, format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
        } else if self.extensions.auth_login {
            self.write(stage, b"AUTH LOGIN\r\n").await?;
            for secret in [&credentials.username, &credentials.password] {
                let reply = self.read_reply(stage, self.timeouts.command).await?;
                if reply.code() != 334 {
                    return Err(DeliveryError::Auth { reply });
                }
                self.write(stage, format!("{}\r\n", BASE64.encode(secret)).as_bytes())
                    .await?;
            }
        } else {
            return Err(DeliveryError::Security {
                status: EnhancedCode::new(4, 7, 4),
                reason: format!("{} offers no AUTH mechanism we support (PLAIN, LOGIN)", self.host),
            });
        }
        let reply = self.read_reply(stage, self.timeouts.command).await?;
        if reply.code() == 235 {
            Ok(())
        } else {
            Err(DeliveryError::Auth { reply })
        }
    }

    async fn hello(&mut self) -> Result<(), DeliveryError> {
        let ehlo = format!("EHLO {}\r\n", self.helo);
        self.write("EHLO", ehlo.as_bytes()).await?;
        let reply = self.read_reply("EHLO", self.timeouts.command).await?;
        if reply.class() == ReplyClass::Positive {
            self.extensions = Extensions::from_ehlo(&reply);
            return Ok(());
        }
        let helo = format!("HELO {}\r\n", self.helo);
        self.write("HELO", helo.as_bytes()).await?;
        self.expect_positive("HELO", self.timeouts.command).await?;
        Ok(())
    }

    /// Sends one message to `recipients`; returns one outcome per
    /// recipient, in order. An `Err` means the whole transaction failed.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        content: impl AsyncRead + Unpin,
        content_len: u64,
    ) -> Result<Vec<Outcome>, DeliveryError> {
        self.check_extensions(envelope, content_len)?;
        let mail = self.mail_command(envelope, content_len);
        let rcpts: Vec<Vec<u8>> = recipients.iter().map(|r| self.rcpt_command(r)).collect();
        // With CHUNKING the content follows BDAT, which is sent only once
        // some recipient is accepted; DATA is pipelined otherwise.
        let chunking = self.extensions.chunking;
        let (mail_reply, rcpt_replies, data_reply) = if self.extensions.pipelining {
            self.pipelined(&mail, &rcpts, !chunking).await?
        } else {
            self.lockstep(&mail, &rcpts).await?
        };
        if mail_reply.class() != ReplyClass::Positive {
            self.abandon(data_reply.as_ref()).await;
            return Err(DeliveryError::Rejected {
                stage: "MAIL",
                reply: mail_reply,
            });
        }
        let mut outcomes: Vec<Option<Outcome>> = rcpt_replies
            .into_iter()
            .map(|reply| match reply.class() {
                ReplyClass::Positive => None,
                _ => Some(DeliveryError::Rejected { stage: "RCPT", reply }.outcome(Some(&self.host))),
            })
            .collect();
        if outcomes.iter().all(Option::is_some) {
            self.abandon(data_reply.as_ref()).await;
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let final_reply = if chunking {
            self.send_chunk(content, content_len).await?
        } else {
            self.send_data(data_reply, content, content_len).await?
        };
        let accepted = match final_reply.class() {
            ReplyClass::Positive => Outcome::Delivered(Handoff::Relayed {
                dsn: self.extensions.dsn,
                tls: (self.tls_policy, self.tls_use()),
            }),
            _ => DeliveryError::Rejected {
                stage: "end of DATA",
                reply: final_reply,
            }
            .outcome(Some(&self.host)),
        };
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(accepted.clone());
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// DATA (unless its reply came pipelined), the dot-stuffed content and
    /// the final dot; the reply to the final dot.
    async fn send_data(
        &mut self,
        data_reply: Option<Reply>,
        content: impl AsyncRead + Unpin,
        content_len: u64,
    ) -> Result<Reply, DeliveryError> {
        let data_reply = match data_reply {
            Some(reply) => reply,
            None => {
                self.write("DATA", b"DATA\r\n").await?;
                self.read_reply("DATA", self.timeouts.data_init).await?
            }
        };
        if data_reply.code() != 354 {
            return Err(DeliveryError::Rejected {
                stage: "DATA",
                reply: data_reply,
            });
        }
        self.write_content(content, content_len, Some(DotStuffer::default()))
            .await?;
        self.read_reply("end of DATA", self.timeouts.data_done).await
    }

    /// The whole content as one `BDAT n LAST` chunk (RFC 3030): sent as
    /// stored, without dot-stuffing; the reply to the chunk.
    async fn send_chunk(&mut self, content: impl AsyncRead + Unpin, content_len: u64) -> Result<Reply, DeliveryError> {
        self.write("BDAT", format!("BDAT {content_len} LAST\r\n").as_bytes())
            .await?;
        self.write_content(content, content_len, None).await?;
        self.read_reply("BDAT", self.timeouts.data_done).await
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.write("QUIT", b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply("QUIT", self.timeouts.command).await;
        }
    }

    fn check_extensions(&self, envelope: &Envelope, content_len: u64) -> Result<(), DeliveryError> {
        if envelope.requiretls && !(self.verified && self.extensions.requiretls) {
            // RFC 8689 section 4.2.1: only over verified TLS, to a next hop
            // that takes the obligation on.
            let why = if self.verified {
                "does not offer REQUIRETLS"
            } else {
                "was not reached over verified TLS"
            };
            return Err(DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 7, 30),
                reason: format!("REQUIRETLS support required: {} {why}", self.host),
            });
        }
        if envelope.smtputf8 && !self.extensions.smtputf8 {
            // RFC 6531 section 3.2: never downgrade; the sender must hear of it.
            return Err(DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 6, 7),
                reason: format!("{} does not support SMTPUTF8, which the message needs", self.host),
            });
        }
        if envelope.eight_bit && !self.extensions.eight_bit_mime {
            // RFC 6152: 8-bit content only to servers that offer 8BITMIME;
            // we do not convert, so the sender hears of it.
            return Err(DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 6, 3),
                reason: format!(
                    "{} does not support 8BITMIME and the message has 8-bit content",
                    self.host
                ),
            });
        }
        if let Some(limit) = self.extensions.size.filter(|&limit| content_len > limit) {
            return Err(DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 3, 4),
                reason: format!(
                    "message of {content_len} octets exceeds {}'s limit of {limit}",
                    self.host
                ),
            });
        }
        Ok(())
    }

    fn mail_command(&self, envelope: &Envelope, content_len: u64) -> Vec<u8> {
        let mut mail = format!("MAIL FROM:<{}>", envelope.reverse_path);
        if self.extensions.size.is_some() {
            mail.push_str(&format!(" SIZE={content_len}"));
        }
        if self.extensions.eight_bit_mime && (envelope.body == BodyType::EightBitMime || envelope.eight_bit) {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.extensions.dsn {
            mail.push_str(&envelope.dsn.wire());
        }
        if envelope.requiretls {
            mail.push_str(" REQUIRETLS");
        }
        mail.push_str("\r\n");
        mail.into_bytes()
    }

    /// `RCPT TO`, with the recipient's DSN parameters when the next hop offers DSN.
    fn rcpt_command(&self, recipient: &Recipient) -> Vec<u8> {
        let params = if self.extensions.dsn {
            recipient.dsn.wire()
        } else {
            String::new()
        };
        format!("RCPT TO:<{}>{params}\r\n", recipient.address).into_bytes()
    }

    /// MAIL, every RCPT and (with `data`) DATA in one write, then the
    /// replies in order.
    async fn pipelined(
        &mut self,
        mail: &[u8],
        rcpts: &[Vec<u8>],
        data: bool,
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), DeliveryError> {
        let mut batch = mail.to_vec();
        for rcpt in rcpts {
            batch.extend_from_slice(rcpt);
        }
        if data {
            batch.extend_from_slice(b"DATA\r\n");
        }
        self.write("MAIL", &batch).await?;
        let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            rcpt_replies.push(self.read_reply("RCPT", self.timeouts.command).await?);
        }
        let data_reply = match data {
            true => Some(self.read_reply("DATA", self.timeouts.data_init).await?),
            false => None,
        };
        Ok((mail_reply, rcpt_replies, data_reply))
    }

    /// MAIL and each RCPT one after the other; DATA is left to the caller.
    async fn lockstep(
        &mut self,
        mail: &[u8],
        rcpts: &[Vec<u8>],
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), DeliveryError> {
        self.write("MAIL", mail).await?;
        let mail_reply = self.read_reply("MAIL", self.timeouts.command).await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        if mail_reply.class() == ReplyClass::Positive {
            for rcpt in rcpts {
                self.write("RCPT", rcpt).await?;
                rcpt_replies.push(self.read_reply("RCPT", self.timeouts.command).await?);
            }
        }
        Ok((mail_reply, rcpt_replies, None))
    }

    /// Leaves a failed transaction so the connection could be reused: if a
    /// pipelined DATA was accepted anyway, send an empty message's end, then RSET.
    async fn abandon(&mut self, data_reply: Option<&Reply>) {
        if data_reply.is_some_and(|r| r.code() == 354) && self.write("DATA", b".\r\n").await.is_ok() {
            let _ = self.read_reply("end of DATA", self.timeouts.data_done).await;
        }
        if self.write("RSET", b"RSET\r\n").await.is_ok() {
            let _ = self.read_reply("RSET", self.timeouts.command).await;
        }
    }

    /// Writes the spooled content: dot-stuffed and ended with the final
    /// dot after DATA (`stuffer`), or as it is in a BDAT chunk (`None`).
    async fn write_content(
        &mut self,
        mut content: impl AsyncRead + Unpin,
        content_len: u64,
        mut stuffer: Option<DotStuffer>,
    ) -> Result<(), DeliveryError> {
        let mut chunk = vec![0u8; BLOCK];
        let mut out = Vec::with_capacity(BLOCK + BLOCK / 16);
        let mut remaining = content_len;
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(BLOCK).min(BLOCK);
            let n = content.read(&mut chunk[..want]).await.map_err(DeliveryError::Content)?;
            if n == 0 {
                return Err(DeliveryError::Protocol("spooled content ended early".into()));
            }
            remaining -= n as u64;
            let Some(stuffer) = stuffer.as_mut() else {
                self.write_with("BDAT", &chunk[..n], self.timeouts.data).await?;
                continue;
            };
            out.clear();
            stuffer.stuff(&chunk[..n], &mut out);
            if remaining == 0 {
                stuffer.finish(&mut out);
            }
            self.write_with("DATA", &out, self.timeouts.data).await?;
        }
        if let (0, Some(stuffer)) = (content_len, stuffer.as_mut()) {
            out.clear();
            stuffer.finish(&mut out);
            self.write_with("DATA", &out, self.timeouts.data).await?;
        }
        Ok(())
    }

    async fn expect_positive(&mut self, stage: &'static str, wait: Duration) -> Result<(), DeliveryError> {
        let reply = self.read_reply(stage, wait).await?;
        if reply.class() == ReplyClass::Positive {
            Ok(())
        } else {
            Err(DeliveryError::Rejected { stage, reply })
        }
    }

    async fn write(&mut self, stage: &'static str, bytes: &[u8]) -> Result<(), DeliveryError> {
        self.write_with(stage, bytes, self.timeouts.command).await
    }

    async fn write_with(&mut self, stage: &'static str, bytes: &[u8], wait: Duration) -> Result<(), DeliveryError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match timeout(wait, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(DeliveryError::Io { stage, source }),
            Err(_) => Err(DeliveryError::Timeout(stage)),
        }
    }

    /// Reads one (possibly multi-line) reply.
    async fn read_reply(&mut self, stage: &'static str, wait: Duration) -> Result<Reply, DeliveryError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(stage, deadline).await?;
            let (code, last, text) = parse_reply_line(&line).ok_or_else(|| {
                DeliveryError::Protocol(format!(
                    "malformed reply to {stage}: {:?}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            if let Some(&(first, _)) = lines.first()
                && first != code
            {
                return Err(DeliveryError::Protocol(format!(
                    "reply code changed within a reply to {stage}"
                )));
            }
            lines.push((code, text));
            if last {
                break;
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(DeliveryError::Protocol(format!("reply to {stage} too long")));
            }
        }
        let code = lines.first().map_or(0, |&(code, _)| code);
        Ok(Reply::parsed(code, lines.into_iter().map(|(_, text)| text).collect()))
    }

    async fn read_line(
        &mut self,
        stage: &'static str,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, DeliveryError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffer.len() > MAX_REPLY_LINE {
                return Err(DeliveryError::Protocol(format!("reply line to {stage} too long")));
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(DeliveryError::Io {
                        stage,
                        source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
                    });
                }
                Ok(Ok(n)) => n,
                Ok(Err(source)) => return Err(DeliveryError::Io { stage, source }),
                Err(_) => return Err(DeliveryError::Timeout(stage)),
            };
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Splits `250-text` / `250 text` / `250` into code, last-line flag and text.
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = u16::from(digits[0] - b'0') * 100 + u16::from(digits[1] - b'0') * 10 + u16::from(digits[2] - b'0');
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
    Some((code, last, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Some((250, false, "PIPELINING".into()))
        );
        assert_eq!(parse_reply_line(b"550 5.1.1 no"), Some((550, true, "5.1.1 no".into())));
        assert_eq!(parse_reply_line(b"220"), Some((220, true, String::new())));
        assert_eq!(parse_reply_line(b"25"), None);
        assert_eq!(parse_reply_line(b"abc def"), None);
        assert_eq!(parse_reply_line(b"250xok"), None);
        assert_eq!(parse_reply_line(b"650 no"), None);
    }

    #[test]
    fn parsed_replies_keep_enhanced_codes() {
        let reply = Reply::parsed(550, vec!["5.1.1 no such user".into()]);
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(reply.one_line(), "550 5.1.1 no such user");
        let mismatched = Reply::parsed(450, vec!["5.1.1 odd".into()]);
        assert_eq!(mismatched.enhanced(), None);
    }
}
