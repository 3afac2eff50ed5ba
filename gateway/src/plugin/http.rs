//! The `http` capability: a plugin's HTTP and HTTPS requests, only to the
//! URLs its `http_allow` list names (checked before any connection), each
//! bounded by `http_timeout` and by what is left of the call's time budget
//! (the wait counts against the budget), with responses of at most
//! `http_max_response_bytes`. Redirects are not followed. Requests and
//! responses are recorded in transcripts and replayed by `mailgate plugin
//! test` (`ReplayHttp`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use super::bindings::mailgate::plugin::{http, types};
use super::host::BoxFuture;
use super::state::State;
use super::transcript::{Bytes, HostCall};
use crate::dns::Resolver;

/// What a plugin's requests may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Host names (`api.example.com`, `*.example.com`) or URL prefixes
    /// (`https://hooks.example.com/v1/`); `*` allows anything (only
    /// `mailgate plugin test` uses it, to replay what was recorded).
    pub allow: Vec<String>,
    /// The longest a request may take.
    pub timeout: Duration,
    /// The largest response body.
    pub max_response_bytes: usize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: Duration::from_secs(10),
            max_response_bytes: 1 << 20,
        }
    }
}

impl HttpPolicy {
    /// Whether `url` is allowed: its host is named, or it starts with an
    /// allowed prefix at a path boundary.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(parsed) = Url::parse(url) else {
            return false;
        };
        self.allow.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            if entry.contains("://") {
                let rest = url.strip_prefix(entry.as_str());
                return rest
                    .is_some_and(|rest| entry.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']));
            }
            let entry = entry.to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(parent) => parsed
                    .host
                    .strip_suffix(parent)
                    .is_some_and(|label| label.ends_with('.') && label.len() > 1),
                None => parsed.host == entry,
            }
        })
    }
}

/// A request, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// A response, or why there is none.
pub type HttpAnswer = Result<HttpResponse, String>;

/// Makes requests (the real client, or a transcript's answers).
pub trait HttpService: Send + Sync {
    /// Sends a request, waiting at most `limit` and taking at most
    /// `max_bytes` of body.
    fn fetch(&self, request: http::Request, limit: Duration, max_bytes: usize) -> BoxFuture<'_, HttpAnswer>;
}

/// No client: every request fails.
#[derive(Debug)]
pub struct NoHttp;

impl HttpService for NoHttp {
    fn fetch(&self, _: http::Request, _: Duration, _: usize) -> BoxFuture<'_, HttpAnswer> {
        Box::pin(async { Err("no HTTP client here".to_owned()) })
    }
}

/// The real client: names resolved by the gateway's resolver, HTTPS
/// verified against the system's roots (plus `[plugins] http_ca_file`).
#[derive(Debug)]
pub struct HttpClient {
    resolver: Resolver,
    tls: Arc<ClientConfig>,
}

impl HttpClient {
    /// A client resolving with `resolver`, trusting `tls`'s roots.
    pub fn new(resolver: Resolver, tls: Arc<ClientConfig>) -> Self {
        Self { resolver, tls }
    }

    async fn send(&self, request: http::Request, max_bytes: usize) -> HttpAnswer {
        let url = Url::parse(&request.url)?;
        let ip = match url.host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => ip,
            Err(_) => *self
                .resolver
                .addresses(&url.host)
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
                .first()
                .ok_or_else(|| format!("no address for {}", url.host))?,
        };
        let tcp = tokio::net::TcpStream::connect((ip, url.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", url.host))?;
        if !url.https {
            return exchange(TokioIo::new(tcp), &url, request, max_bytes).await;
        }
        let name = ServerName::try_from(url.host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", url.host))?;
        exchange(TokioIo::new(tls), &url, request, max_bytes).await
    }
}

impl HttpService for HttpClient {
    fn fetch(&self, request: http::Request, limit: Duration, max_bytes: usize) -> BoxFuture<'_, HttpAnswer> {
        Box::pin(async move {
            match tokio::time::timeout(limit, self.send(request, max_bytes)).await {
                Ok(answer) => answer,
                Err(_) => Err("timeout".to_owned()),
            }
        })
    }
}

async fn exchange<S>(io: TokioIo<S>, url: &Url, request: http::Request, max_bytes: usize) -> HttpAnswer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let method = hyper::Method::from_bytes(request.method.as_bytes()).map_err(|_| "invalid method".to_owned())?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(&url.path)
        .header(hyper::header::HOST, &url.authority);
    // `Host` and `Content-Length` are the gateway's to set.
    let own = |name: &str| name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length");
    for header in request.headers.iter().filter(|h| !own(&h.name)) {
        builder = builder.header(header.name.as_str(), header.value.as_str());
    }
    let outgoing = builder
        .body(Full::new(bytes::Bytes::from(request.body)))
        .map_err(|e| format!("invalid request: {e}"))?;
    let response = sender.send_request(outgoing).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|_| "response too large".to_owned())?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: Bytes::of(&body),
    })
}

/// The responses a transcript recorded, given back in order to the same
/// method and URL.
#[derive(Debug, Default)]
pub struct ReplayHttp {
    recorded: Mutex<Vec<(String, String, HttpAnswer)>>,
}

impl ReplayHttp {
    /// The answers of `calls`.
    pub fn new(calls: &[HostCall]) -> Self {
        let recorded = calls
            .iter()
            .filter_map(|call| match call {
                HostCall::Http { method, url, answer } => Some((method.clone(), url.clone(), answer.clone())),
                _ => None,
            })
            .collect();
        Self {
            recorded: Mutex::new(recorded),
        }
    }
}

impl HttpService for ReplayHttp {
    fn fetch(&self, request: http::Request, _: Duration, _: usize) -> BoxFuture<'_, HttpAnswer> {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        let found = recorded
            .iter()
            .position(|(method, url, _)| *method == request.method && *url == request.url);
        let answer = match found {
            Some(i) => recorded.remove(i).2,
            None => Err(format!("{} {} is not in the transcript", request.method, request.url)),
        };
        Box::pin(async move { answer })
    }
}

impl http::Host for State {
    async fn fetch(&mut self, request: http::Request) -> wasmtime::Result<Result<http::Response, String>> {
        let policy = Arc::clone(&self.host.http_policy);
        let (method, url) = (request.method.clone(), request.url.clone());
        let answer = if policy.allows(&request.url) {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let limit = policy.timeout.min(left);
            let service = Arc::clone(&self.host.http);
            service.fetch(request, limit, policy.max_response_bytes).await
        } else {
            Err(format!("denied: {url} is not in this plugin's http_allow"))
        };
        let plugin = &self.plugin;
        match &answer {
            Ok(response) => {
                tracing::debug!(plugin = &**plugin, %method, url, status = response.status, "plugin HTTP request")
            }
            Err(error) => tracing::info!(plugin = &**plugin, %method, url, error, "plugin HTTP request failed"),
        }
        self.note(|| HostCall::Http {
            method,
            url,
            answer: answer.clone(),
        });
        Ok(answer.map(|response| http::Response {
            status: response.status,
            headers: response
                .headers
                .into_iter()
                .map(|(name, value)| types::Header { name, value })
                .collect(),
            body: response.body.octets(),
        }))
    }
}

/// The parts of a URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    https: bool,
    /// Lower case; an IPv6 literal keeps its brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` field.
    authority: String,
    /// The path and query, `/` at least.
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("not an http or https URL: {url}"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
            return Err(format!("invalid host in {url}"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, port.parse().map_err(|_| format!("invalid port in {url}"))?)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let path = path.split('#').next().unwrap_or("");
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_owned(),
            path: if path.is_empty() || path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_owned()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> HttpPolicy {
        HttpPolicy {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            ..HttpPolicy::default()
        }
    }

    #[test]
    fn urls_are_allowed_by_host_or_prefix_only() {
        let p = policy(&["api.example.com", "*.hooks.test", "https://svc.test/v1"]);
        assert!(p.allows("https://api.example.com/x"));
        assert!(p.allows("http://API.example.com:8080/"));
        assert!(!p.allows("https://api.example.com.evil.test/"));
        assert!(p.allows("https://a.hooks.test/"));
        assert!(!p.allows("https://hooks.test/"), "the wildcard needs a label");
        assert!(p.allows("https://svc.test/v1"));
        assert!(p.allows("https://svc.test/v1/events?x=1"));
        assert!(!p.allows("https://svc.test/v10"), "a prefix ends at a path boundary");
        assert!(!p.allows("https://svc.test/v1@evil.test/"));
        assert!(!p.allows("https://user@api.example.com/"), "no user info");
        assert!(!p.allows("ftp://api.example.com/"));
        assert!(!policy(&[]).allows("https://api.example.com/"));
    }

    #[test]
    fn urls_are_split_for_the_request() {
        let url = Url::parse("https://Hooks.Test:8443/a/b?c=d#frag").unwrap();
        assert_eq!(
            url,
            Url {
                https: true,
                host: "hooks.test".into(),
                port: 8443,
                authority: "Hooks.Test:8443".into(),
                path: "/a/b?c=d".into(),
            }
        );
        assert_eq!(Url::parse("http://[::1]:8080").unwrap().host, "[::1]");
        assert_eq!(Url::parse("http://x.test?q").unwrap().path, "/?q");
        assert!(Url::parse("http://x.test:notaport/").is_err());
    }
}
