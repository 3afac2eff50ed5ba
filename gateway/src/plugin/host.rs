//! What the capabilities reach outside an instance: the resolver (`dns`),
//! the key-value store (`kv`), the clock (`clock`) and the DKIM signer and
//! verifier (`dkim`), as traits so that
//! `mailgate plugin test` can answer them from a recorded transcript. The
//! gateway's resolver (`crate::dns`), stores (`crate::kv`) and
//! `crate::dkim` implement them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A boxed future, for the object-safe service traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The record type of a `dns` lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsKind {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Mail exchangers.
    Mx,
    /// Text records.
    Txt,
    /// Names of an address.
    Ptr,
}

impl DnsKind {
    /// The record type's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::Aaaa => "aaaa",
            Self::Mx => "mx",
            Self::Txt => "txt",
            Self::Ptr => "ptr",
        }
    }
}

/// One record of an answer: an address (A, AAAA), an MX, a text (TXT) or
/// a name (PTR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRecord {
    /// An A or AAAA record's address.
    Ip(std::net::IpAddr),
    /// An MX record.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// The exchange without the trailing dot; "" for the root.
        exchange: String,
    },
    /// A TXT record's strings, joined.
    Txt(String),
    /// A PTR record's name, without the trailing dot.
    Name(String),
}

/// Why a lookup has no answer (NODATA is an empty answer, not a failure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum DnsFailure {
    /// NXDOMAIN.
    #[error("no such name")]
    NoSuchName,
    /// Not a valid name or address.
    #[error("invalid: {0}")]
    Invalid(String),
    /// SERVFAIL, a timeout, a network error.
    #[error("temporary failure: {0}")]
    Temporary(String),
}

/// A `dns` answer.
pub type DnsAnswer = Result<Vec<DnsRecord>, DnsFailure>;

/// Answers `dns` lookups. For `Ptr`, `name` is an IP address.
pub trait DnsService: Send + Sync {
    /// Looks up `name`.
    fn lookup(&self, kind: DnsKind, name: String) -> BoxFuture<'_, DnsAnswer>;
}

/// A `kv` failure, as the plugin sees it.
pub type KvError = String;

/// A key-value store with expiry. `namespace` is the plugin's name; stores
/// keep namespaces apart.
pub trait KvService: Send + Sync {
    /// The value of `key`, or `None` when absent or expired.
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>>;
    /// Sets `key`, expiring after `ttl` (never when `None`).
    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>>;
    /// Adds `delta` to the counter at `key` (absent: 0) and returns the new
    /// value; `ttl` applies when this creates the key.
    fn increment<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>>;
    /// Removes `key`.
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KvError>>;
}

/// The `clock` capability's source of time.
pub trait ClockService: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
    /// Nanoseconds since an arbitrary origin.
    fn monotonic_nanos(&self) -> u64;
}

/// The system's clocks.
#[derive(Debug, Default)]
pub struct SystemClock;

impl ClockService for SystemClock {
    fn now_millis(&self) -> u64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn monotonic_nanos(&self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A store for when no plugin was granted `kv`: every call fails.
#[derive(Debug, Default)]
pub struct NoKv;

impl KvService for NoKv {
    fn get<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>> {
        Box::pin(async { Err(no_kv()) })
    }
    fn set<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Vec<u8>,
        _: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async { Err(no_kv()) })
    }
    fn increment<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: i64,
        _: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(async { Err(no_kv()) })
    }
    fn delete<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async { Err(no_kv()) })
    }
}

fn no_kv() -> KvError {
    "no key-value store is configured".to_owned()
}

/// A resolver for when none is configured: every lookup fails for now.
#[derive(Debug, Default)]
pub struct NoDns;

impl DnsService for NoDns {
    fn lookup(&self, _: DnsKind, _: String) -> BoxFuture<'_, DnsAnswer> {
        Box::pin(async { Err(DnsFailure::Temporary("no resolver".into())) })
    }
}

/// A DKIM, SPF, ARC or DMARC result, as Authentication-Results writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthStatus {
    /// Nothing to evaluate.
    #[default]
    None,
    /// Verified.
    Pass,
    /// Verification failed.
    Fail,
    /// SPF's weak failure.
    Softfail,
    /// No assertion.
    Neutral,
    /// A temporary error.
    Temperror,
    /// A permanent error.
    Permerror,
}

/// The policy of a DMARC record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    /// No record.
    Unspecified,
    /// p=none.
    None,
    /// p=quarantine.
    Quarantine,
    /// p=reject.
    Reject,
}

/// One DKIM-Signature's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    /// d=
    pub domain: String,
    /// s=
    pub selector: String,
    /// The result.
    pub status: AuthStatus,
    /// Why it did not pass.
    pub reason: Option<String>,
}

/// What verifying a message found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Each signature.
    pub signatures: Vec<SignatureCheck>,
    /// The SPF result used.
    pub spf: AuthStatus,
    /// The DMARC result.
    pub dmarc: AuthStatus,
    /// The From domain evaluated.
    pub dmarc_domain: String,
    /// Its policy.
    pub dmarc_policy: DmarcPolicy,
    /// The incoming ARC chain's validation (transcripts recorded before
    /// ARC read as none).
    #[serde(default)]
    pub arc: AuthStatus,
    /// The latest ARC set's instance (0: none).
    #[serde(default)]
    pub arc_instance: u32,
    /// The authserv-id.
    pub authserv_id: String,
    /// The Authentication-Results value.
    pub authentication_results: String,
}

/// The SMTP facts verification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthEnvelope {
    /// The client's address.
    pub client_ip: std::net::IpAddr,
    /// The EHLO name.
    pub helo: String,
    /// The reverse-path.
    pub mail_from: String,
    /// An SPF result a plugin already has.
    pub spf: Option<AuthStatus>,
}

/// A plugin's request to ARC-seal the message after the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealRequest {
    /// The sealing domain (d=), lower case.
    pub domain: String,
    /// The SMTP facts for the ARC-Authentication-Results.
    pub envelope: AuthEnvelope,
}

/// An ARC set made for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcSet {
    /// The three header fields, each ending in CRLF, to put on top.
    pub fields: String,
    /// Its instance number (i=).
    pub instance: u32,
    /// Its chain validation (cv=): none, pass or fail.
    pub cv: &'static str,
}

/// Signs and verifies for the `dkim` capability.
pub trait DkimService: Send + Sync {
    /// DKIM-Signature field values over `message`, one per key configured
    /// for `domain` (none when there is no key).
    fn sign(&self, message: &[u8], domain: &str) -> Result<Vec<String>, String>;
    /// Verifies `message`'s signatures and ARC chain and evaluates DMARC.
    fn verify<'a>(&'a self, message: &'a [u8], envelope: &'a AuthEnvelope) -> BoxFuture<'a, Verification>;
    /// Whether an ARC seal for `domain` can be made (an RSA key is
    /// configured for it); why not, when not.
    fn can_seal(&self, domain: &str) -> Result<(), String> {
        Err(format!("no ARC sealing key for {domain}"))
    }
    /// The ARC set for `message` (the content as it leaves), with the
    /// results of verifying `received` (the content as it came in).
    fn seal<'a>(
        &'a self,
        received: &'a [u8],
        message: &'a [u8],
        request: &'a SealRequest,
    ) -> BoxFuture<'a, Result<ArcSet, String>> {
        let _ = (received, message);
        Box::pin(async move { Err(format!("no ARC sealing key for {}", request.domain)) })
    }
}

/// DKIM for tools without a configuration: no keys; verification answers
/// temperror.
#[derive(Debug, Default)]
pub struct NoDkim;

impl DkimService for NoDkim {
    fn sign(&self, _: &[u8], _: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn verify<'a>(&'a self, _: &'a [u8], _: &'a AuthEnvelope) -> BoxFuture<'a, Verification> {
        Box::pin(async { Verification::unavailable("localhost", "no verifier") })
    }
}

impl Verification {
    /// The answer when verification could not run at all.
    pub fn unavailable(authserv_id: &str, why: &str) -> Self {
        Self {
            signatures: Vec::new(),
            spf: AuthStatus::Temperror,
            dmarc: AuthStatus::Temperror,
            dmarc_domain: String::new(),
            dmarc_policy: DmarcPolicy::Unspecified,
            arc: AuthStatus::Temperror,
            arc_instance: 0,
            authserv_id: authserv_id.to_owned(),
            authentication_results: format!("{authserv_id}; dkim=temperror reason=\"{why}\""),
        }
    }
}

/// The services plugin instances reach through their capabilities.
#[derive(Clone)]
pub struct HostServices {
    /// For `dns`.
    pub dns: Arc<dyn DnsService>,
    /// For `kv`.
    pub kv: Arc<dyn KvService>,
    /// For `clock`.
    pub clock: Arc<dyn ClockService>,
    /// For `dkim`.
    pub dkim: Arc<dyn DkimService>,
    /// For `http`.
    pub http: Arc<dyn super::http::HttpService>,
    /// What the plugin's `http` requests may reach (set per plugin when
    /// it is loaded).
    pub http_policy: Arc<super::http::HttpPolicy>,
}

impl HostServices {
    /// Services that answer nothing (tests, tools without a resolver).
    pub fn none() -> Self {
        Self {
            dns: Arc::new(NoDns),
            kv: Arc::new(NoKv),
            clock: Arc::new(SystemClock),
            dkim: Arc::new(NoDkim),
            http: Arc::new(super::http::NoHttp),
            http_policy: Arc::default(),
        }
    }
}

impl fmt::Debug for HostServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostServices").finish_non_exhaustive()
    }
}
