//! The end-to-end test harness: the real gateway (in-process or as the real
//! binary), a real downstream SMTP server that records what it receives,
//! and a raw SMTP client. Everything talks over real sockets on loopback.

mod bind;
mod client;
mod dns;
mod gateway;
mod http;
mod https;
mod milter;
mod postfix;
mod redis;
mod scanner;
mod sink;
mod tls;

use std::time::Duration;

pub use bind::{SignedDns, Signing, Zone};
pub use client::{SmtpClient, TestReply, stuff};
pub use dns::DnsServer;
pub use gateway::{Gateway, GatewayProcess, Setup, count_queued};
pub use http::{http, http_with, https};
pub use https::{HttpsServer, Request as HttpsRequest};
pub use milter::{OpenDkim, Rspamd, Script, Seen, TestMilter};
pub use postfix::Postfix;
pub use redis::RedisServer;
pub use scanner::MtaHooksScanner;
pub use sink::{Behavior, Received, SinkServer};
pub use tls::TestCa;

/// A free TCP port on loopback, for a server the tests start (bound,
/// read, and released for the server).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `condition` holds, polling; fails after `deadline`.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            anyhow::bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of header `name` in a message's header section, unfolded.
pub fn header(text: &str, name: &str) -> Option<String> {
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

/// Every value of header `name` in a message's header section (ASCII case
/// ignored), unfolded, in order.
pub fn header_values(text: &str, name: &str) -> Vec<String> {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    unfolded
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
        .collect()
}

/// A DSN parsed with mail-parser: it must be a multipart/report; returns
/// the text of its message/delivery-status part and of its headers part
/// (empty when it has none).
pub fn dsn_parts(content: &[u8]) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    use mail_parser::MimeHeaders as _;
    let parsed = mail_parser::MessageParser::default()
        .parse(content)
        .context("the DSN does not parse")?;
    anyhow::ensure!(
        parsed.content_type().and_then(|c| c.subtype()) == Some("report"),
        "not a multipart/report"
    );
    let part = |subtype: &str| {
        parsed
            .parts
            .iter()
            .find(|p| p.content_type().and_then(|c| c.subtype()) == Some(subtype))
            .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
    };
    let status = part("delivery-status").context("no message/delivery-status part")?;
    Ok((status, part("rfc822-headers").unwrap_or_default()))
}

/// Sends the gateway's logs to the test output when `RUST_LOG` is set.
/// A loopback address nothing listens on now (bound, then let go): a next
/// hop, milter or store that refuses connections, or a free address to
/// give the gateway.
pub fn unused_port() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Paths of the plugins `build.rs` compiled from source.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
