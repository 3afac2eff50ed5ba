//! The admin listener: HTTP/1.1 for Prometheus, health checks, reloads
//! and queue operations (what `mailgate queue` and `mailgate reload` use
//! against a running gateway). The read-only endpoints (metrics, health)
//! and the control endpoints (everything else) may listen apart; the
//! control endpoints need a bearer token when `[admin] tokens_file` is set,
//! or a TLS client certificate when `client_ca_file` is (either one will
//! do when both are), which is required off loopback. Every control
//! request is logged with the token's or the certificate's name.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves HTTP at all |
//! | `GET /readyz` | 200 while accepting mail, 503 once shutting down |
//! | `POST /reload` | reload the configuration; 200, or 422 with why not |
//! | `GET /queue` | every queued message |
//! | `GET /queue/ID` | one message, 404 if not queued |
//! | `POST /queue/retry` | retry everything waiting now |
//! | `POST /queue/ID/retry` | retry one message now |
//! | `DELETE /queue/ID` | remove a message without notice |
//! | `POST /queue/ID/bounce` | fail its pending recipients, bounce to the sender |

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::delivery::{HoldTarget, QuarantineCommand, QueueCommand, QueueControl};
use crate::metrics::metrics;
use crate::queue::QueueId;
use crate::reload::Reloader;

mod auth;
pub mod tls;

pub use auth::Tokens;

/// Who may use the control endpoints (`[admin]`).
#[derive(Clone, Debug, Default)]
pub struct AdminAuth {
    /// The file of the tokens the control endpoints require, read at each
    /// request (a token added is usable at once); none: unauthenticated
    /// (allowed on loopback only).
    pub tokens_file: Option<std::path::PathBuf>,
    /// `/metrics` needs a token too.
    pub protect_metrics: bool,
    /// Where the CLI reads the token it sends.
    pub client_token_file: Option<std::path::PathBuf>,
    /// HTTPS on the admin listeners, with client certificates verified
    /// when `client_certificates`.
    pub tls: Option<Arc<crate::server::tls::ServerTls>>,
    /// A verified client certificate authenticates a control request.
    pub client_certificates: bool,
    /// How the CLI speaks TLS to the admin API (when `tls` is set).
    pub client_tls: tls::ClientTls,
}

impl AdminAuth {
    /// Whether control requests need a credential at all.
    fn required(&self) -> bool {
        self.tokens_file.is_some() || self.client_certificates
    }

    /// What a refused request is told it lacks.
    fn wanted(&self) -> &'static str {
        match (self.tokens_file.is_some(), self.client_certificates) {
            (true, true) => "a valid bearer token or client certificate is required",
            (false, true) => "a valid client certificate is required",
            _ => "a valid bearer token is required",
        }
    }

    /// The token the CLI sends: `MAILGATE_ADMIN_TOKEN`, else the first
    /// line of `client_token_file`.
    pub fn client_token(&self) -> Option<String> {
        if let Some(token) = std::env::var("MAILGATE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()) {
            return Some(token);
        }
        let text = std::fs::read_to_string(self.client_token_file.as_ref()?).ok()?;
        text.lines()
            .next()
            .map(|l| l.trim().to_owned())
            .filter(|t| !t.is_empty())
    }
}

/// What one admin listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Metrics and health checks only.
    ReadOnly,
    /// The control endpoints only.
    Control,
    /// Both.
    All,
}

/// What the admin API acts on.
#[derive(Debug)]
pub struct AdminState {
    /// The queue runner.
    pub queue: QueueControl,
    /// Reloads the configuration.
    pub reloader: Arc<Reloader>,
    /// Cancelled once the gateway is shutting down (not ready any more).
    pub draining: CancellationToken,
    /// Who may use the control endpoints.
    pub auth: AdminAuth,
    /// The plugins' key-value store (`/kv/PLUGIN`).
    pub kv: Arc<crate::kv::Kv>,
}

/// Serves the admin API's `role` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, role: Role, stop: CancellationToken) {
    loop {
        let (stream, client) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some(server_tls) = state.auth.tls.clone() else {
                return connection(TokioIo::new(stream), state, role, None, stop).await;
            };
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, server_tls.acceptor().accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => {
                    let peer = tls::peer_name(tls.get_ref().1);
                    connection(TokioIo::new(tls), state, role, peer, stop).await;
                }
                Ok(Err(e)) => warn!(%client, error = %e, "admin TLS handshake failed"),
                Err(_) => warn!(%client, "admin TLS handshake timed out"),
            }
        });
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1.1 on one connection; `peer` is who its verified client
/// certificate names.
async fn connection<S>(
    io: TokioIo<S>,
    state: Arc<AdminState>,
    role: Role,
    peer: Option<String>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer: Option<Arc<str>> = peer.map(Into::into);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(guarded(request, &state, role, peer.as_deref()).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        result = connection => if let Err(e) = result {
            debug!(error = %e, "admin connection ended with an error");
        },
        () = stop.cancelled() => {}
    }
}

/// A queue operation, as the API and the CLI name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueRequest {
    /// `GET /queue`
    List,
    /// `GET /queue/ID`
    Show(QueueId),
    /// `POST /queue/retry` (`None`) or `POST /queue/ID/retry`
    Retry(Option<QueueId>),
    /// `DELETE /queue/ID`
    Delete(QueueId),
    /// `POST /queue/ID/bounce`
    Bounce(QueueId),
    /// `POST /queue/ID/hold`, `POST /queue/domain/DOMAIN/hold`, `POST /queue/hold`
    Hold(HoldTarget),
    /// `POST /queue/ID/release`, `POST /queue/domain/DOMAIN/release`, `POST /queue/release`
    Release(HoldTarget),
    /// `GET /quarantine`
    QuarantineList,
    /// `GET /quarantine/ID` (headers) or `GET /quarantine/ID/message`
    /// (the whole message, `true`)
    QuarantineShow(QueueId, bool),
    /// `POST /quarantine/ID/release`
    QuarantineRelease(QueueId),
    /// `DELETE /quarantine/ID`
    QuarantineDelete(QueueId),
}

impl QueueRequest {
    /// The HTTP method and path of this request.
    pub fn http(&self) -> (Method, String) {
        match self {
            Self::List => (Method::GET, "/queue".into()),
            Self::Show(id) => (Method::GET, format!("/queue/{id}")),
            Self::Retry(None) => (Method::POST, "/queue/retry".into()),
            Self::Retry(Some(id)) => (Method::POST, format!("/queue/{id}/retry")),
            Self::Delete(id) => (Method::DELETE, format!("/queue/{id}")),
            Self::Bounce(id) => (Method::POST, format!("/queue/{id}/bounce")),
            Self::Hold(target) => (Method::POST, format!("{}/hold", target_path(target))),
            Self::Release(target) => (Method::POST, format!("{}/release", target_path(target))),
            Self::QuarantineList => (Method::GET, "/quarantine".into()),
            Self::QuarantineShow(id, false) => (Method::GET, format!("/quarantine/{id}")),
            Self::QuarantineShow(id, true) => (Method::GET, format!("/quarantine/{id}/message")),
            Self::QuarantineRelease(id) => (Method::POST, format!("/quarantine/{id}/release")),
            Self::QuarantineDelete(id) => (Method::DELETE, format!("/quarantine/{id}")),
        }
    }

    /// The request for an HTTP method and path; an error response for
    /// anything else.
    fn parse(method: &Method, path: &str) -> Result<Self, (StatusCode, serde_json::Value)> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let id = |text: &str| {
            QueueId::parse(text).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("invalid queue id {text:?}") }),
                )
            })
        };
        match (method, segments.as_slice()) {
            (&Method::GET, ["queue"]) => Ok(Self::List),
            (&Method::POST, ["queue", "retry"]) => Ok(Self::Retry(None)),
            (&Method::GET, ["queue", text]) => Ok(Self::Show(id(text)?)),
            (&Method::POST, ["queue", text, "retry"]) => Ok(Self::Retry(Some(id(text)?))),
            (&Method::DELETE, ["queue", text]) => Ok(Self::Delete(id(text)?)),
            (&Method::POST, ["queue", text, "bounce"]) => Ok(Self::Bounce(id(text)?)),
            (&Method::POST, ["queue", "hold"]) => Ok(Self::Hold(HoldTarget::All)),
            (&Method::POST, ["queue", "release"]) => Ok(Self::Release(HoldTarget::All)),
            (&Method::POST, ["queue", "domain", domain, "hold"]) => {
                Ok(Self::Hold(HoldTarget::Domain(domain.to_ascii_lowercase())))
            }
            (&Method::POST, ["queue", "domain", domain, "release"]) => {
                Ok(Self::Release(HoldTarget::Domain(domain.to_ascii_lowercase())))
            }
            (&Method::POST, ["queue", text, "hold"]) => Ok(Self::Hold(HoldTarget::One(id(text)?))),
            (&Method::POST, ["queue", text, "release"]) => Ok(Self::Release(HoldTarget::One(id(text)?))),
            (&Method::GET, ["quarantine"]) => Ok(Self::QuarantineList),
            (&Method::GET, ["quarantine", text]) => Ok(Self::QuarantineShow(id(text)?, false)),
            (&Method::GET, ["quarantine", text, "message"]) => Ok(Self::QuarantineShow(id(text)?, true)),
            (&Method::POST, ["quarantine", text, "release"]) => Ok(Self::QuarantineRelease(id(text)?)),
            (&Method::DELETE, ["quarantine", text]) => Ok(Self::QuarantineDelete(id(text)?)),
            _ => Err((StatusCode::NOT_FOUND, json!({ "error": "no such endpoint" }))),
        }
    }
}

/// Checks the listener's role and the credentials, then handles the
/// request; control requests are logged with who made them.
async fn guarded(
    request: Request<Incoming>,
    state: &AdminState,
    role: Role,
    peer: Option<&str>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let read_only = matches!(path, "/metrics" | "/healthz" | "/readyz");
    let allowed = match role {
        Role::All => true,
        Role::ReadOnly => read_only,
        Role::Control => !read_only,
    };
    if !allowed {
        return reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "no such endpoint on this listener" }),
        );
    }
    let needs_credential = !read_only || (path == "/metrics" && state.auth.protect_metrics);
    let who = match (state.auth.required() && needs_credential, peer) {
        (false, _) => "unauthenticated (loopback)".to_owned(),
        (true, Some(peer)) if state.auth.client_certificates => peer.to_owned(),
        (true, _) => {
            let header = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let tokens = match &state.auth.tokens_file {
                Some(file) => Tokens::load(file).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot read the admin tokens; refusing control requests");
                    Tokens::default()
                }),
                None => Tokens::default(),
            };
            match tokens.check(header) {
                Some(name) => format!("token {name}"),
                None => {
                    warn!(method = %request.method(), path, "admin request refused: no valid credentials");
                    let mut response = reply(StatusCode::UNAUTHORIZED, json!({ "error": state.auth.wanted() }));
                    response.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                    return response;
                }
            }
        }
    };
    let (method, path) = (request.method().clone(), path.to_owned());
    let response = handle(request, state).await;
    if !read_only {
        tracing::info!(who, %method, path, status = response.status().as_u16(), "admin request");
    }
    response
}

async fn handle(request: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let (method, path) = (request.method(), request.uri().path());
    match (method, path) {
        (&Method::GET, "/metrics") => {
            return text(StatusCode::OK, "text/plain; version=0.0.4", metrics().render());
        }
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") if state.draining.is_cancelled() => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".into());
        }
        (&Method::GET, "/readyz") => return text(StatusCode::OK, "text/plain", "ready\n".into()),
        (&Method::GET, "/config") => {
            let path = state.reloader.config_path();
            return reply(StatusCode::OK, json!({ "path": path.display().to_string() }));
        }
        (&Method::POST, "/reload") => {
            return match state.reloader.reload().await {
                Ok(generation) => reply(
                    StatusCode::OK,
                    json!({ "result": "reloaded", "generation": generation }),
                ),
                Err(error) => reply(StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": error })),
            };
        }
        _ => {}
    }
    if let Some(request) = crate::kv::control::KvRequest::parse(method, path) {
        let (status, body) = crate::kv::control::answer(&state.kv, &request).await;
        return reply(status, body);
    }
    let (status, body) = match QueueRequest::parse(method, path) {
        Ok(request) => execute(&state.queue, request).await,
        Err(answer) => answer,
    };
    reply(status, body)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Carries out a request through the queue runner: the answer's status
/// and JSON body, the same for the API and the offline CLI.
pub async fn execute(queue: &QueueControl, request: QueueRequest) -> (StatusCode, serde_json::Value) {
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the queue runner is shutting down" }),
        )
    };
    let outcome = |answer: Option<Result<String, String>>| match answer {
        Some(Ok(result)) => (StatusCode::OK, json!({ "result": result })),
        Some(Err(error)) => (StatusCode::NOT_FOUND, json!({ "error": error })),
        None => unavailable(),
    };
    match request {
        QueueRequest::List => match ask(queue, QueueCommand::List).await {
            Some(entries) => (StatusCode::OK, json!(entries)),
            None => unavailable(),
        },
        QueueRequest::Show(id) => match ask(queue, |tx| QueueCommand::Show(id.clone(), tx)).await {
            Some(Some(entry)) => (StatusCode::OK, json!(entry)),
            Some(None) => (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no message {id} in the queue") }),
            ),
            None => unavailable(),
        },
        QueueRequest::Retry(id) => match ask(queue, |tx| QueueCommand::Retry(id, tx)).await {
            Some(retried) => (StatusCode::OK, json!({ "retried": retried })),
            None => unavailable(),
        },
        QueueRequest::Delete(id) => outcome(ask(queue, |tx| QueueCommand::Delete(id, tx)).await),
        QueueRequest::Bounce(id) => outcome(ask(queue, |tx| QueueCommand::Bounce(id, tx)).await),
        QueueRequest::Hold(target) => {
            let reason = "held by the operator".to_owned();
            match ask(queue, |tx| QueueCommand::Hold(target, reason, tx)).await {
                Some(count) => (StatusCode::OK, json!({ "held": count })),
                None => unavailable(),
            }
        }
        QueueRequest::Release(target) => match ask(queue, |tx| QueueCommand::Release(target, tx)).await {
            Some(count) => (StatusCode::OK, json!({ "released": count })),
            None => unavailable(),
        },
        QueueRequest::QuarantineList => {
            match ask(queue, |tx| QueueCommand::Quarantine(QuarantineCommand::List(tx))).await {
                Some(Ok(entries)) => (StatusCode::OK, json!(entries)),
                Some(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": error })),
                None => unavailable(),
            }
        }
        QueueRequest::QuarantineShow(id, whole) => {
            match ask(queue, |tx| QueueCommand::Quarantine(QuarantineCommand::Show(id, tx))).await {
                Some(Ok((entry, content))) => {
                    // The header section: up to the blank line.
                    let end = content
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(content.len(), |p| p + 2);
                    let mut body = json!({
                        "entry": entry,
                        "headers": String::from_utf8_lossy(&content[..end]),
                    });
                    if whole {
                        body["message"] = json!(String::from_utf8_lossy(&content));
                    }
                    (StatusCode::OK, body)
                }
                Some(Err(error)) => (StatusCode::NOT_FOUND, json!({ "error": error })),
                None => unavailable(),
            }
        }
        QueueRequest::QuarantineRelease(id) => {
            outcome(ask(queue, |tx| QueueCommand::Quarantine(QuarantineCommand::Release(id, tx))).await)
        }
        QueueRequest::QuarantineDelete(id) => {
            outcome(ask(queue, |tx| QueueCommand::Quarantine(QuarantineCommand::Delete(id, tx))).await)
        }
    }
}

/// The path of a hold target: `/queue/ID`, `/queue/domain/DOMAIN`, `/queue`.
fn target_path(target: &HoldTarget) -> String {
    match target {
        HoldTarget::One(id) => format!("/queue/{id}"),
        HoldTarget::Domain(domain) => format!("/queue/domain/{domain}"),
        HoldTarget::All => "/queue".to_owned(),
    }
}

/// Sends a command to the runner and waits for its answer; `None` when
/// the runner is gone (shutting down).
async fn ask<T>(queue: &QueueControl, command: impl FnOnce(oneshot::Sender<T>) -> QueueCommand) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    queue.send(command(tx)).await.ok()?;
    rx.await.ok()
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", body.to_string())
}
