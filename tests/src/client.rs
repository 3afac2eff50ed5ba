//! `SmtpClient`: a deliberately simple SMTP client for tests, which can
//! also send raw bytes the protocol forbids, and speaks TLS (STARTTLS or
//! implicit) with rustls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailgate::net::Stream;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a test waits for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A reply: its code and its text lines (without the code prefixes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestReply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl TestReply {
    /// The text of the last line (where the enhanced code sits on one-line replies).
    pub fn text(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }

    /// `"250 2.0.0 Ok"` style, first line.
    pub fn first_line(&self) -> String {
        format!("{} {}", self.code, self.lines.first().map_or("", String::as_str))
    }
}

/// One client connection.
#[derive(Debug)]
pub struct SmtpClient {
    stream: BufReader<Stream>,
}

impl SmtpClient {
    /// Connects without reading the greeting.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(Stream::Plain(stream)),
        })
    }

    /// Connects to an implicit-TLS listener, checking its certificate
    /// for `name`, without reading the greeting.
    pub async fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Self> {
        Self::connect(addr).await?.tls_handshake(config, name).await
    }

    /// Sends STARTTLS, expects 220, and does the handshake.
    pub async fn starttls(mut self, config: Arc<ClientConfig>, name: &str) -> Result<Self> {
        self.expect("STARTTLS", 220).await?;
        self.tls_handshake(config, name).await
    }

    /// The TLS handshake, from where the connection stands.
    pub async fn tls_handshake(self, config: Arc<ClientConfig>, name: &str) -> Result<Self> {
        if !self.stream.buffer().is_empty() {
            bail!("the server sent data before the TLS handshake");
        }
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            bail!("already inside TLS");
        };
        let name = ServerName::try_from(name.to_owned())?;
        let tls = tokio::time::timeout(REPLY_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
            .await
            .context("timed out in the TLS handshake")?
            .context("TLS handshake")?;
        Ok(Self {
            stream: BufReader::new(Stream::Tls(Box::new(tls.into()))),
        })
    }

    /// The server's certificate (DER), once inside TLS.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self.stream.get_ref() {
            Stream::Tls(tls) => Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec()),
            Stream::Plain(_) => None,
        }
    }

    /// Connects, reads the 220 greeting and says EHLO.
    pub async fn greeted(addr: SocketAddr) -> Result<Self> {
        let mut client = Self::connect(addr).await?;
        client.expect_reply(220).await?;
        client.expect("EHLO client.test", 250).await?;
        Ok(client)
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .await
            .context("writing to the gateway")
    }

    /// Reads one reply.
    pub async fn reply(&mut self) -> Result<TestReply> {
        tokio::time::timeout(REPLY_TIMEOUT, self.read_reply())
            .await
            .context("timed out waiting for a reply")?
    }

    async fn read_reply(&mut self) -> Result<TestReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed while waiting for a reply (got {lines:?})");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.len() < 3 {
                bail!("malformed reply line {line:?}");
            }
            let code: u16 = line[..3].parse().with_context(|| format!("bad reply line {line:?}"))?;
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(TestReply { code, lines });
            }
        }
    }

    /// Reads one reply and checks its code.
    pub async fn expect_reply(&mut self, code: u16) -> Result<TestReply> {
        let reply = self.reply().await?;
        if reply.code != code {
            bail!("expected {code}, got {}", reply.first_line());
        }
        Ok(reply)
    }

    /// Sends a command line (CRLF added) and reads the reply.
    pub async fn command(&mut self, line: &str) -> Result<TestReply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Sends a command line and checks the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Result<TestReply> {
        let reply = self.command(line).await?;
        if reply.code != code {
            bail!("{line:?}: expected {code}, got {}", reply.first_line());
        }
        Ok(reply)
    }

    /// A whole transaction: MAIL, RCPTs (each must get 250), DATA, the
    /// content dot-stuffed, and the reply to the final dot.
    pub async fn send_message(&mut self, from: &str, to: &[&str], content: &[u8]) -> Result<TestReply> {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await?;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await?;
        }
        self.expect("DATA", 354).await?;
        self.send(&stuff(content)).await?;
        self.reply().await
    }

    /// Connects to `addr`, sends one message and insists on its 250.
    pub async fn deliver(addr: SocketAddr, from: &str, to: &[&str], content: &[u8]) -> Result<()> {
        let reply = Self::greeted(addr).await?.send_message(from, to, content).await?;
        anyhow::ensure!(reply.code == 250, "not accepted: {}", reply.text());
        Ok(())
    }

    /// Reads until the server closes the connection; returns what it sent.
    pub async fn read_to_close(&mut self) -> Result<Vec<u8>> {
        let mut rest = Vec::new();
        tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_to_end(&mut rest))
            .await
            .context("timed out waiting for the server to close")??;
        Ok(rest)
    }
}

/// Dot-stuffs content (which must use CRLF line endings) and appends the
/// final `.` line.
pub fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
