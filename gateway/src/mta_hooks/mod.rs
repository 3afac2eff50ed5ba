//! MTA Hooks scanners (draft-degennaro-mta-hooks-01): a chain entry of
//! kind `mta-hooks` is an HTTP service that the gateway discovers
//! (`GET /.well-known/mta-hooks`), registers with (`POST` to the
//! registration endpoint the discovery document names, asking for the
//! configured stages the scanner offers), then calls at each of those
//! stages with a JSON description of the session, envelope and message
//! (`request.rs`). The scanner answers `204` (no change) or `200` with
//! operations on that description (`set`, `add`, `delete` by JSON
//! Pointer), which `response.rs` turns into the chain's verdicts and
//! modifications. A registration the scanner no longer knows (`404`,
//! `410`) is renewed once. Every exchange, discovery and registration
//! included, is bounded by the entry's `timeout`; a failure is a fault
//! answered by `on_error`, like a wasm plugin's.

mod request;
mod response;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::plugin::{
    DeliveryFacts, FailureFacts, Fault, HookContext, HttpHeader, HttpRequest, HttpResponse, HttpService, Modification,
    OutboundStage, StageCall, Verdict,
};
use crate::smtp::session::Stage;
pub use response::{Outcome, Patch};

/// Where a scanner publishes its discovery document (RFC 8615).
pub const DISCOVERY_PATH: &str = "/.well-known/mta-hooks";

/// The largest response body read from a scanner.
const MAX_RESPONSE: usize = 1 << 20;

/// An `mta-hooks` entry's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ScannerSettings {
    /// The scanner's origin, `http(s)://host[:port]`, without a path.
    pub origin: String,
    /// The bearer token sent with every request, if any.
    pub token: Option<String>,
    /// The most one exchange may take, discovery and registration included.
    pub timeout: Duration,
}

impl std::fmt::Debug for ScannerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ScannerSettings")
            .field("origin", &self.origin)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ScannerSettings {
    /// The origin of `url` (`http(s)://host[:port]`), or why it is not
    /// one a scanner can have.
    pub fn origin_of(url: &str) -> Result<String, String> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if authority.is_empty() || authority.contains(['@', ' ']) {
            return Err(format!("{url:?} has no valid host"));
        }
        Ok(url[..url.len() - rest.len() + authority.len()].to_owned())
    }
}

/// The draft's name for an inbound stage.
pub fn inbound_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Connect => "connect",
        Stage::Helo => "ehlo",
        Stage::Mail => "mail",
        Stage::Rcpt => "rcpt",
        Stage::Data => "data",
    }
}

/// The draft's name for an outbound stage, if it has one: `route` before
/// an attempt, `delivery` after a delivery, `defer` after a temporary
/// failure, `dsn` before a bounce.
pub fn outbound_name(stage: OutboundStage) -> Option<&'static str> {
    match stage {
        OutboundStage::Deliver => Some("route"),
        OutboundStage::Delivered => Some("delivery"),
        OutboundStage::Defer => Some("defer"),
        OutboundStage::Bounce => Some("dsn"),
        OutboundStage::Quarantined => None,
    }
}

/// A registration the scanner granted.
#[derive(Debug)]
struct Registration {
    id: String,
    /// The hook endpoint, absolute.
    endpoint: String,
    /// The stages negotiated (draft names).
    stages: Vec<String>,
    /// The request properties negotiated (`/stage`, `/envelope`, ...);
    /// none: everything is sent.
    properties: Option<Vec<String>>,
    /// When it expires (Unix seconds), if it does.
    expires: Option<i64>,
}

impl Registration {
    fn expired(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.expires
            .is_some_and(|at| at <= i64::try_from(now).unwrap_or(i64::MAX).saturating_add(5))
    }

    /// `body` with only the negotiated properties.
    fn filter(&self, mut body: Value) -> Value {
        if let (Some(properties), Some(object)) = (&self.properties, body.as_object_mut()) {
            object.retain(|key, _| properties.iter().any(|p| p.strip_prefix('/') == Some(key.as_str())));
        }
        body
    }
}

/// One scanner, shared by every connection and delivery of a chain.
pub struct Scanner {
    name: Arc<str>,
    settings: Arc<ScannerSettings>,
    /// The configured stages, as the draft names them.
    inbound: Vec<&'static str>,
    outbound: Vec<&'static str>,
    http: Arc<dyn HttpService>,
    registration: Mutex<Option<Arc<Registration>>>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("name", &self.name)
            .field("origin", &self.settings.origin)
            .finish_non_exhaustive()
    }
}

fn scanner(e: impl std::fmt::Display) -> Fault {
    Fault::Scanner(e.to_string())
}

fn header(name: &str, value: impl Into<String>) -> HttpHeader {
    HttpHeader {
        name: name.to_owned(),
        value: value.into(),
    }
}

fn json_body(response: &HttpResponse, what: &str) -> Result<Value, Fault> {
    serde_json::from_slice(&response.body.octets()).map_err(|e| scanner(format!("{what} is not JSON: {e}")))
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    value
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

impl Scanner {
    /// The scanner of entry `name`, configured for these stages, reached
    /// through `http`. Nothing is sent until the first call.
    pub fn new(
        name: Arc<str>,
        settings: Arc<ScannerSettings>,
        inbound: &[Stage],
        outbound: &[OutboundStage],
        http: Arc<dyn HttpService>,
    ) -> Self {
        Self {
            name,
            settings,
            inbound: inbound.iter().map(|&s| inbound_name(s)).collect(),
            outbound: outbound.iter().filter_map(|&s| outbound_name(s)).collect(),
            http,
            registration: Mutex::new(None),
        }
    }

    /// Asks the scanner about an inbound stage.
    pub async fn inbound(&self, call: StageCall<'_>, ctx: &HookContext) -> Result<(Verdict, Vec<Modification>), Fault> {
        let stage = call.stage();
        let patch = self.invoke(inbound_name(stage), request::inbound(call, ctx)).await?;
        let message = match call {
            StageCall::Data(message) => Some(&**message),
            _ => None,
        };
        response::inbound(patch, stage, message, &ctx.recipients).map_err(Fault::Illegal)
    }

    /// Asks the scanner about an outbound stage: `failure` for `defer`
    /// and `dsn`, the downstream's `reply` for `delivery`.
    pub async fn outbound(
        &self,
        stage: OutboundStage,
        delivery: &DeliveryFacts,
        failure: Option<&FailureFacts>,
        reply: Option<&str>,
    ) -> Result<Outcome, Fault> {
        let name =
            outbound_name(stage).ok_or_else(|| Fault::Illegal(format!("no MTA Hooks stage for {}", stage.name())))?;
        let patch = self
            .invoke(name, request::outbound(name, delivery, failure, reply))
            .await?;
        response::outbound(patch).map_err(Fault::Illegal)
    }

    /// Sends `body` to the hook endpoint for `stage`, registering first
    /// if needed; a stage the scanner did not take is not sent, and reads
    /// as no change.
    async fn invoke(&self, stage: &'static str, body: Value) -> Result<Patch, Fault> {
        let limit = self.settings.timeout;
        match tokio::time::timeout(limit, self.exchange(stage, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(Fault::Timeout(limit)),
        }
    }

    async fn exchange(&self, stage: &'static str, body: Value) -> Result<Patch, Fault> {
        let mut registration = self.registered(None).await?;
        for renewed in [false, true] {
            if !registration.stages.iter().any(|s| s == stage) {
                return Ok(Patch::default());
            }
            let request = registration.filter(body.clone());
            let response = self
                .send("POST", &registration.endpoint, Some(&request), Some(&registration.id))
                .await?;
            match response.status {
                200 => {
                    let value = json_body(&response, "the hook response")?;
                    return serde_json::from_value(value)
                        .map_err(|e| Fault::Illegal(format!("the hook response is not an operation object: {e}")));
                }
                204 => return Ok(Patch::default()),
                404 | 410 if !renewed => {
                    info!(scanner = %self.name, registration = registration.id, status = response.status, "the MTA Hooks scanner no longer knows this registration; registering again");
                    registration = self.registered(Some(&registration.id)).await?;
                }
                status => return Err(scanner(format!("the hook endpoint answered HTTP {status}"))),
            }
        }
        Err(scanner("the scanner refused a fresh registration"))
    }

    /// The current registration, made when there is none, it expired, or
    /// it is `stale` (the one the scanner no longer knows).
    async fn registered(&self, stale: Option<&str>) -> Result<Arc<Registration>, Fault> {
        let mut slot = self.registration.lock().await;
        if let Some(current) = slot.as_ref()
            && !current.expired()
            && stale != Some(current.id.as_str())
        {
            return Ok(Arc::clone(current));
        }
        let fresh = Arc::new(self.register().await?);
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Discovery, then registration.
    async fn register(&self) -> Result<Registration, Fault> {
        let origin = &self.settings.origin;
        let discovery_url = format!("{origin}{DISCOVERY_PATH}");
        let response = self.send("GET", &discovery_url, None, None).await?;
        if response.status != 200 {
            return Err(scanner(format!(
                "discovery at {discovery_url} answered HTTP {}",
                response.status
            )));
        }
        let discovery = json_body(&response, "the discovery document")?;
        let offers_json = strings(discovery.get("serialization")).is_none_or(|s| s.iter().any(|f| f == "json"));
        if !offers_json {
            return Err(scanner(
                "the scanner offers no JSON serialization (mailgate speaks JSON only)",
            ));
        }
        let registration_url = discovery
            .pointer("/endpoints/registration")
            .and_then(Value::as_str)
            .ok_or_else(|| scanner("the discovery document names no registration endpoint"))
            .and_then(|reference| self.resolve(reference))?;
        let mut subscription = json!({
            "name": "mailgate",
            "version": env!("CARGO_PKG_VERSION"),
            "timeoutMs": u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX),
            "serialization": "json",
        });
        for (direction, wanted, properties) in [
            ("inbound", &self.inbound, request::INBOUND_PROPERTIES),
            ("outbound", &self.outbound, request::OUTBOUND_PROPERTIES),
        ] {
            let offered = discovery.pointer(&format!("/capabilities/{direction}"));
            let stages = strings(offered.and_then(|o| o.get("stages"))).unwrap_or_default();
            let taken: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|s| stages.iter().any(|o| o == s))
                .collect();
            let missing: Vec<&str> = wanted.iter().copied().filter(|s| !taken.contains(s)).collect();
            if !missing.is_empty() {
                warn!(scanner = %self.name, ?missing, "the MTA Hooks scanner does not offer these configured stages; they are not called");
            }
            let fetchable = strings(offered.and_then(|o| o.get("fetchProperties")));
            let properties: Vec<&str> = properties
                .iter()
                .copied()
                .filter(|p| fetchable.as_ref().is_none_or(|f| f.iter().any(|o| o == p)))
                .collect();
            subscription[direction] = if taken.is_empty() {
                Value::Null
            } else {
                json!({"stages": taken, "properties": properties})
            };
        }
        let response = self.send("POST", &registration_url, Some(&subscription), None).await?;
        if !matches!(response.status, 200 | 201) {
            return Err(scanner(format!(
                "registration at {registration_url} answered HTTP {}",
                response.status
            )));
        }
        let granted = json_body(&response, "the registration response")?;
        let registration = self.granted(&granted, &subscription)?;
        info!(scanner = %self.name, registration = registration.id, stages = ?registration.stages, endpoint = registration.endpoint, "registered with the MTA Hooks scanner");
        Ok(registration)
    }

    /// Reads a registration response; what it does not negotiate is taken
    /// as asked in `asked`.
    fn granted(&self, granted: &Value, asked: &Value) -> Result<Registration, Fault> {
        let id = granted
            .get("registrationId")
            .and_then(Value::as_str)
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 255
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
            })
            .ok_or_else(|| scanner("the registration response has no valid registrationId"))?;
        if let Some(status) = granted.get("status").and_then(Value::as_str)
            && status != "active"
        {
            return Err(scanner(format!("the registration is {status:?}, not active")));
        }
        let endpoint = granted
            .get("hookEndpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| scanner("the registration response names no hookEndpoint"))
            .and_then(|reference| self.resolve(reference))?;
        let negotiated = granted.get("negotiated").unwrap_or(asked);
        let mut stages = Vec::new();
        let mut properties: Option<Vec<String>> = None;
        for direction in ["inbound", "outbound"] {
            let part = negotiated.get(direction).or_else(|| asked.get(direction));
            stages.extend(strings(part.and_then(|p| p.get("stages"))).unwrap_or_default());
            if let Some(list) = strings(part.and_then(|p| p.get("properties"))) {
                properties.get_or_insert_with(Vec::new).extend(list);
            }
        }
        let expires = granted
            .get("expiresAt")
            .and_then(Value::as_str)
            .and_then(mail_parser::DateTime::parse_rfc3339)
            .map(|at| at.to_timestamp());
        Ok(Registration {
            id: id.to_owned(),
            endpoint,
            stages,
            properties,
            expires,
        })
    }

    /// An endpoint the scanner named, made absolute; one on another origin
    /// is refused (the token would go there).
    fn resolve(&self, reference: &str) -> Result<String, Fault> {
        let origin = &self.settings.origin;
        if reference.starts_with('/') {
            return Ok(format!("{origin}{reference}"));
        }
        match ScannerSettings::origin_of(reference) {
            Ok(other) if other.eq_ignore_ascii_case(origin) => Ok(reference.to_owned()),
            Ok(other) => Err(scanner(format!(
                "the scanner named an endpoint on another origin ({other}); refused"
            ))),
            Err(_) => Ok(format!("{origin}/{reference}")),
        }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        registration: Option<&str>,
    ) -> Result<HttpResponse, Fault> {
        let mut headers = vec![header("Accept", "application/json")];
        if body.is_some() {
            headers.push(header("Content-Type", "application/json"));
        }
        if let Some(token) = &self.settings.token {
            headers.push(header("Authorization", format!("Bearer {token}")));
        }
        if let Some(id) = registration {
            headers.push(header("X-MTA-Hooks-Registration", id));
            headers.push(header(
                "X-MTA-Hooks-Request-Id",
                format!("{:032x}", rand::random::<u128>()),
            ));
        }
        let request = HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            headers,
            body: body
                .map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default(),
        };
        self.http
            .fetch(request, self.settings.timeout, MAX_RESPONSE)
            .await
            .map_err(|e| scanner(format!("{method} {url}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_scheme_host_and_port_only() {
        assert_eq!(
            ScannerSettings::origin_of("http://127.0.0.1:8080/x/y").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert_eq!(
            ScannerSettings::origin_of("https://scanner.example").as_deref(),
            Ok("https://scanner.example")
        );
        for bad in ["ftp://x", "http://", "http://user@host/", "scanner.example"] {
            assert!(ScannerSettings::origin_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_negotiated_properties_are_sent() {
        let registration = Registration {
            id: "r".into(),
            endpoint: "http://s/hook".into(),
            stages: vec!["data".into()],
            properties: Some(vec!["/stage".into(), "/envelope".into()]),
            expires: None,
        };
        let body = json!({"stage": "data", "envelope": {}, "rawMessage": "eA=="});
        assert_eq!(registration.filter(body), json!({"stage": "data", "envelope": {}}));
    }
}
