//! A minimal HTTP/1.1 client for the admin API: one request per
//! connection, so that tests see exactly what a scraper or `curl` would.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `method path` to `addr`; returns the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    http_with(addr, method, path, None).await
}

/// `http` with `Authorization: Bearer TOKEN` when a token is given.
pub async fn http_with(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    exchange(stream, addr, method, path, token).await
}

/// `http_with` over TLS with the client configuration `tls` (which may
/// present a client certificate); the server must name `addr`'s IP.
pub async fn https(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, stream).await?;
    exchange(stream, addr, method, path, token).await
}

async fn exchange<S>(
    mut stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response).context("the response is not UTF-8")?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no status code")?;
    anyhow::ensure!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "unexpected chunked response"
    );
    Ok((status, body.to_owned()))
}
