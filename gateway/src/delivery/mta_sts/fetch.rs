//! Fetching `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461
//! section 3.3): HTTPS with a certificate valid for that name (PKIX, the
//! system's roots plus an optional extra bundle), status 200 only (no
//! redirect is followed), `text/plain`, at most 64 KiB, within a timeout.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::dns::Resolver;

/// The largest policy accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// How policies are fetched.
#[derive(Clone, Debug)]
pub struct Fetcher {
    tls: Arc<ClientConfig>,
    /// 443; other values only for tests.
    port: u16,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher trusting the system's roots and those in `extra_ca_file`.
    pub fn new(extra_ca_file: Option<&std::path::Path>, port: u16, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            tls: crate::delivery::tls::web_client(extra_ca_file)?,
            port,
            timeout,
        })
    }

    /// The client configuration (also used to post TLS reports).
    pub fn tls(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// The policy text of `domain`, or why it could not be had.
    pub async fn fetch(&self, resolver: &Resolver, domain: &str) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(self.timeout, self.get(resolver, &host)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no policy from https://{host}/ within {:?}", self.timeout)),
        }
    }

    async fn get(&self, resolver: &Resolver, host: &str) -> Result<String, String> {
        let addresses = resolver
            .addresses(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let mut last = format!("no address for {host}");
        for ip in addresses {
            let tcp = match tokio::net::TcpStream::connect((ip, self.port)).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = format!("cannot connect to {host} ({ip}): {e}");
                    continue;
                }
            };
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            return request(tls, host).await;
        }
        Err(last)
    }
}

async fn request<S>(stream: S, host: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |e: hyper::Error| format!("HTTP with {host}: {e}");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "mailgate")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "https://{host}/.well-known/mta-sts.txt redirects ({status}), which is not followed"
        ));
    }
    if status != StatusCode::OK {
        return Err(format!("https://{host}/.well-known/mta-sts.txt answered {status}"));
    }
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("text/plain") {
        return Err(format!("the policy's media type is {content_type:?}, not text/plain"));
    }
    let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the policy from {host}: {e} (at most {MAX_POLICY_BYTES} octets)"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("the policy from {host} is not UTF-8"))
}
