//! Record and replay. A listener with `record = "dir"` writes one JSON
//! transcript per transaction: the client, every stage with its argument
//! (the message at DATA) and what the chain decided, and every answer the
//! host gave a plugin (DNS results, the time, key-value reads). `mailgate
//! plugin test` replays a transcript against a plugin with the host
//! answering from it, so a run is deterministic and needs no network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::chain::StageCall;
use super::host::{
    AuthEnvelope, BoxFuture, ClockService, DkimService, DnsAnswer, DnsFailure, DnsKind, DnsService, KvError, KvService,
    Verification,
};
use super::outcome::{Decision, HookContext};
use crate::smtp::command::BodyType;
use crate::smtp::dsn::{MailDsn, RcptDsn};

/// The transcript format's version.
pub const VERSION: u32 = 1;

/// Octets: text when they are UTF-8, else base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bytes {
    /// UTF-8 text.
    Text(String),
    /// Anything else.
    Base64(String),
}

impl Bytes {
    /// Wraps `octets`.
    pub fn of(octets: &[u8]) -> Self {
        match std::str::from_utf8(octets) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::Base64(BASE64.encode(octets)),
        }
    }

    /// The octets (empty when the base64 is broken).
    pub fn octets(&self) -> Vec<u8> {
        match self {
            Self::Text(text) => text.clone().into_bytes(),
            Self::Base64(text) => BASE64.decode(text).unwrap_or_default(),
        }
    }
}

/// One answer the host gave a plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum HostCall {
    /// A `dns` lookup.
    Dns {
        /// The record type.
        kind: DnsKind,
        /// The name (an address for PTR), lower case.
        name: String,
        /// The answer.
        answer: DnsAnswer,
    },
    /// `clock.now-millis`.
    Now {
        /// The time given.
        millis: u64,
    },
    /// `clock.monotonic-nanos`.
    Monotonic {
        /// The value given.
        nanos: u64,
    },
    /// `kv.get`.
    KvGet {
        /// The key.
        key: String,
        /// The value found.
        value: Result<Option<Bytes>, KvError>,
    },
    /// `kv.increment`.
    KvIncrement {
        /// The key.
        key: String,
        /// What was added.
        delta: i64,
        /// The new value.
        value: Result<i64, KvError>,
    },
    /// `dkim.sign`.
    DkimSign {
        /// The signing domain asked for.
        domain: String,
        /// The DKIM-Signature values given.
        fields: Result<Vec<String>, String>,
    },
    /// `dkim.verify`.
    DkimVerify {
        /// What verification found.
        verification: Verification,
    },
    /// `dkim.seal`.
    DkimSeal {
        /// The sealing domain asked for.
        domain: String,
        /// Whether it could be sealed for.
        answer: Result<(), String>,
    },
    /// `http.fetch`.
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The response, or why there was none.
        answer: super::http::HttpAnswer,
    },
}

/// Host answers being collected, shared by a connection's instances.
pub type Journal = Arc<Mutex<Vec<HostCall>>>;

/// The client, as of the last stage recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedClient {
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// The listener.
    pub listener: String,
    /// TLS was on.
    pub tls: bool,
    /// The authenticated user.
    #[serde(default)]
    pub authenticated: Option<String>,
}

/// One stage as it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum RecordedStage {
    /// The client connected.
    Connect {
        /// What the chain decided.
        outcome: String,
    },
    /// EHLO or HELO.
    Helo {
        /// The name given.
        name: String,
        /// What the chain decided.
        outcome: String,
    },
    /// MAIL FROM.
    Mail {
        /// The reverse-path ("" for the null path).
        reverse_path: String,
        /// `SIZE=`.
        #[serde(default)]
        size: Option<u64>,
        /// `BODY=8BITMIME`.
        #[serde(default)]
        eight_bit: bool,
        /// `SMTPUTF8`.
        #[serde(default)]
        smtputf8: bool,
        /// `RET=` and `ENVID=`.
        #[serde(default, skip_serializing_if = "MailDsn::is_empty")]
        dsn: MailDsn,
        /// `REQUIRETLS`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        requiretls: bool,
        /// What the chain decided.
        outcome: String,
    },
    /// RCPT TO.
    Rcpt {
        /// The recipient.
        recipient: String,
        /// `NOTIFY=` and `ORCPT=`.
        #[serde(default, skip_serializing_if = "RcptDsn::is_empty")]
        dsn: RcptDsn,
        /// What the chain decided.
        outcome: String,
    },
    /// The message (as spooled, trace header included).
    Data {
        /// The content.
        message: Bytes,
        /// What the chain decided.
        outcome: String,
    },
}

/// A recorded transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The format's version.
    pub version: u32,
    /// When recording started, ms since the epoch.
    pub recorded_at_ms: u64,
    /// The client.
    pub client: RecordedClient,
    /// The stages, in order.
    pub stages: Vec<RecordedStage>,
    /// The host's answers, in order.
    pub host_calls: Vec<HostCall>,
    /// Outbound plugin calls (`[delivery] record`): then `client` is the
    /// delivery engine's placeholder and `stages` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<RecordedOutbound>,
}

/// One outbound stage call as it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutbound {
    /// `deliver`, `defer`, `bounce` or `delivered`.
    pub stage: String,
    /// What the plugins were told.
    pub delivery: super::outbound::DeliveryFacts,
    /// The failure (`defer`, `bounce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<super::outbound::FailureFacts>,
    /// The next hop's reply (`delivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// What the chain decided: the verdict, then its detail.
    pub outcome: String,
}

/// Writes one outbound call's transcript into `dir`, with the host's
/// answers collected in `journal`.
pub fn record_outbound(dir: &Arc<Path>, entry: RecordedOutbound, journal: &Journal, now_ms: u64) {
    let calls = std::mem::take(&mut *journal.lock().unwrap_or_else(PoisonError::into_inner));
    let transcript = Transcript {
        version: VERSION,
        recorded_at_ms: now_ms,
        client: RecordedClient {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 0,
            listener: "delivery".to_owned(),
            tls: false,
            authenticated: None,
        },
        stages: Vec::new(),
        host_calls: calls,
        outbound: vec![entry],
    };
    write_transcript(dir, &transcript, now_ms);
}

/// Writes `transcript` as a new file in `dir`, off the async runtime.
fn write_transcript(dir: &Arc<Path>, transcript: &Transcript, stamp_ms: u64) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{stamp_ms}-{}-{n}.json", std::process::id()));
    let text = match serde_json::to_vec_pretty(transcript) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a transcript");
            return;
        }
    };
    let dir = Arc::clone(dir);
    tokio::task::spawn_blocking(move || {
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "cannot write a transcript");
        }
    });
}

/// How a decision reads in a transcript and in `mailgate plugin test`.
pub fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Proceed => "proceed".to_owned(),
        Decision::Refuse(reply) => format!("refuse {}", reply.to_string().trim_end()),
        Decision::Disconnect(reply) => format!("disconnect {}", reply.to_string().trim_end()),
        Decision::Discard => "discard".to_owned(),
        Decision::Quarantine(reason) => format!("quarantine {reason}"),
        Decision::Hold(reason) => format!("hold {reason}"),
    }
}

fn stage_record(call: StageCall<'_>, outcome: String) -> RecordedStage {
    match call {
        StageCall::Connect => RecordedStage::Connect { outcome },
        StageCall::Helo(name) => RecordedStage::Helo {
            name: name.to_owned(),
            outcome,
        },
        StageCall::Mail(path, parameters) => RecordedStage::Mail {
            reverse_path: path.to_string(),
            size: parameters.size,
            eight_bit: parameters.body == BodyType::EightBitMime,
            smtputf8: parameters.smtputf8,
            dsn: parameters.dsn.clone(),
            requiretls: parameters.requiretls,
            outcome,
        },
        StageCall::Rcpt(rcpt, dsn) => RecordedStage::Rcpt {
            recipient: rcpt.to_string(),
            dsn: dsn.clone(),
            outcome,
        },
        StageCall::Data(message) => RecordedStage::Data {
            message: Bytes::of(message.raw()),
            outcome,
        },
    }
}

/// Records one connection's transactions into a directory.
#[derive(Debug)]
pub struct Recorder {
    dir: Arc<Path>,
    journal: Journal,
    started_ms: u64,
    client: Option<RecordedClient>,
    /// Connect and helo, with their host calls: repeated in every
    /// transcript of the connection.
    connection: (Vec<RecordedStage>, Vec<HostCall>),
    transaction: (Vec<RecordedStage>, Vec<HostCall>),
    written: bool,
}

impl Recorder {
    /// Records into `dir`.
    pub fn new(dir: Arc<Path>, now_ms: u64) -> Self {
        Self {
            dir,
            journal: Journal::default(),
            started_ms: now_ms,
            client: None,
            connection: (Vec::new(), Vec::new()),
            transaction: (Vec::new(), Vec::new()),
            written: false,
        }
    }

    /// The journal the instances write their host calls to.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Adds a stage the chain decided, with the host calls made for it.
    pub fn stage(&mut self, call: StageCall<'_>, ctx: &HookContext, decision: &Decision) {
        self.client = Some(RecordedClient {
            ip: ctx.client.ip(),
            port: ctx.client.port(),
            listener: ctx.listener.to_string(),
            tls: ctx.tls,
            authenticated: ctx.authenticated.clone(),
        });
        let calls = std::mem::take(&mut *self.journal.lock().unwrap_or_else(PoisonError::into_inner));
        let part = match call {
            StageCall::Connect | StageCall::Helo(_) => &mut self.connection,
            _ => &mut self.transaction,
        };
        part.0.push(stage_record(call, describe(decision)));
        part.1.extend(calls);
    }

    /// The transaction ended: its transcript is written, if it got as far
    /// as MAIL.
    pub fn end_transaction(&mut self) {
        if self.transaction.0.is_empty() {
            return;
        }
        let (stages, calls) = std::mem::take(&mut self.transaction);
        self.write(stages, calls);
    }

    /// The connection ended: a connection refused before any transaction
    /// is written too.
    pub fn end_connection(&mut self) {
        self.end_transaction();
        if !self.written && !self.connection.0.is_empty() {
            self.write(Vec::new(), Vec::new());
        }
    }

    fn write(&mut self, stages: Vec<RecordedStage>, calls: Vec<HostCall>) {
        let Some(client) = self.client.clone() else { return };
        self.written = true;
        let transcript = Transcript {
            version: VERSION,
            recorded_at_ms: self.started_ms,
            client,
            stages: self.connection.0.iter().cloned().chain(stages).collect(),
            host_calls: self.connection.1.iter().cloned().chain(calls).collect(),
            outbound: Vec::new(),
        };
        write_transcript(&self.dir, &transcript, self.started_ms);
    }
}

/// The host as a transcript remembers it: DNS answers by query, the
/// clock's readings in order (the last one repeated), key-value reads
/// seeding an in-memory store that the replayed plugin's writes change.
#[derive(Debug)]
pub struct ReplayHost {
    dns: HashMap<(DnsKind, String), DnsAnswer>,
    now: Mutex<(Vec<u64>, usize)>,
    monotonic: Mutex<(Vec<u64>, usize)>,
    kv_seen: HashMap<String, Result<Option<Vec<u8>>, KvError>>,
    kv_counters: HashMap<String, i64>,
    kv: Mutex<HashMap<String, Vec<u8>>>,
    dkim_signatures: HashMap<String, Result<Vec<String>, String>>,
    seals: HashMap<String, Result<(), String>>,
    verifications: Mutex<(Vec<Verification>, usize)>,
}

impl ReplayHost {
    /// The host of `transcript`.
    pub fn new(transcript: &Transcript) -> Self {
        let mut dns = HashMap::new();
        let mut now = Vec::new();
        let mut monotonic = Vec::new();
        let mut kv_seen = HashMap::new();
        let mut kv_counters = HashMap::new();
        let mut dkim_signatures = HashMap::new();
        let mut seals = HashMap::new();
        let mut verifications = Vec::new();
        for call in &transcript.host_calls {
            match call {
                HostCall::Dns { kind, name, answer } => {
                    dns.entry((*kind, name.clone())).or_insert_with(|| answer.clone());
                }
                HostCall::Now { millis } => now.push(*millis),
                HostCall::Monotonic { nanos } => monotonic.push(*nanos),
                HostCall::KvGet { key, value } => {
                    let value = value.clone().map(|v| v.map(|b| b.octets()));
                    kv_seen.entry(key.clone()).or_insert(value);
                }
                HostCall::KvIncrement { key, delta, value } => {
                    // The counter as it was before the first recorded increment.
                    if let Ok(value) = value {
                        kv_counters.entry(key.clone()).or_insert(value - delta);
                    }
                }
                HostCall::DkimSign { domain, fields } => {
                    dkim_signatures.entry(domain.clone()).or_insert_with(|| fields.clone());
                }
                HostCall::DkimVerify { verification } => verifications.push(verification.clone()),
                HostCall::DkimSeal { domain, answer } => {
                    seals.entry(domain.clone()).or_insert_with(|| answer.clone());
                }
                // Replayed by `ReplayHttp`.
                HostCall::Http { .. } => {}
            }
        }
        if now.is_empty() {
            now.push(transcript.recorded_at_ms);
        }
        if monotonic.is_empty() {
            monotonic.push(0);
        }
        Self {
            dns,
            now: Mutex::new((now, 0)),
            monotonic: Mutex::new((monotonic, 0)),
            kv_seen,
            kv_counters,
            kv: Mutex::new(HashMap::new()),
            dkim_signatures,
            seals,
            verifications: Mutex::new((verifications, 0)),
        }
    }

    fn next(readings: &Mutex<(Vec<u64>, usize)>) -> u64 {
        let mut guard = readings.lock().unwrap_or_else(PoisonError::into_inner);
        let (values, at) = &mut *guard;
        let value = values.get(*at).or(values.last()).copied().unwrap_or(0);
        *at += 1;
        value
    }

    fn stored(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(value) = self.kv.lock().unwrap_or_else(PoisonError::into_inner).get(key) {
            return Ok(Some(value.clone()));
        }
        if let Some(seen) = self.kv_seen.get(key) {
            return seen.clone();
        }
        Ok(self.kv_counters.get(key).map(|n| n.to_string().into_bytes()))
    }
}

impl DnsService for ReplayHost {
    fn lookup(&self, kind: DnsKind, name: String) -> BoxFuture<'_, DnsAnswer> {
        let answer = self.dns.get(&(kind, name.clone())).cloned().unwrap_or_else(|| {
            Err(DnsFailure::Temporary(format!(
                "{} {name} is not in the transcript",
                kind.name()
            )))
        });
        Box::pin(async move { answer })
    }
}

/// Signatures and verifications are answered as recorded (a message
/// replayed against a changed plugin is the recorded message, so the
/// recorded answers still hold).
impl DkimService for ReplayHost {
    fn sign(&self, _: &[u8], domain: &str) -> Result<Vec<String>, String> {
        self.dkim_signatures
            .get(domain)
            .cloned()
            .unwrap_or_else(|| Err(format!("signing for {domain} is not in the transcript")))
    }

    fn verify<'a>(&'a self, _: &'a [u8], _: &'a AuthEnvelope) -> BoxFuture<'a, Verification> {
        let mut guard = self.verifications.lock().unwrap_or_else(PoisonError::into_inner);
        let (recorded, at) = &mut *guard;
        let found = recorded.get(*at).or(recorded.last()).cloned();
        *at += 1;
        let found =
            found.unwrap_or_else(|| Verification::unavailable("replay", "verification is not in the transcript"));
        Box::pin(async move { found })
    }

    fn can_seal(&self, domain: &str) -> Result<(), String> {
        self.seals
            .get(domain)
            .cloned()
            .unwrap_or_else(|| Err(format!("sealing for {domain} is not in the transcript")))
    }
}

impl ClockService for ReplayHost {
    fn now_millis(&self) -> u64 {
        Self::next(&self.now)
    }

    fn monotonic_nanos(&self) -> u64 {
        Self::next(&self.monotonic)
    }
}

impl KvService for ReplayHost {
    fn get<'a>(&'a self, _: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvError>> {
        let value = self.stored(key);
        Box::pin(async move { value })
    }

    fn set<'a>(
        &'a self,
        _: &'a str,
        key: &'a str,
        value: Vec<u8>,
        _: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), KvError>> {
        self.kv
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), value);
        Box::pin(async { Ok(()) })
    }

    fn increment<'a>(
        &'a self,
        _: &'a str,
        key: &'a str,
        delta: i64,
        _: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        let result = (|| {
            let current = match self.stored(key)? {
                Some(text) => std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| format!("the value of {key:?} is not a counter"))?,
                None => 0,
            };
            let value = current.checked_add(delta).ok_or("overflow")?;
            self.kv
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.to_owned(), value.to_string().into_bytes());
            Ok(value)
        })();
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, _: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        self.kv.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        Box::pin(async { Ok(()) })
    }
}

/// A transcript made from a message and an envelope rather than recorded
/// traffic: a client on loopback greeting as `eml.test`, then MAIL, each
/// RCPT and the message; no host answers (DNS lookups find nothing).
pub fn from_message(message: &[u8], from: &str, to: &[String]) -> Transcript {
    let outcome = String::new();
    let mut stages = vec![
        RecordedStage::Connect {
            outcome: outcome.clone(),
        },
        RecordedStage::Helo {
            name: "eml.test".to_owned(),
            outcome: outcome.clone(),
        },
        RecordedStage::Mail {
            reverse_path: from.to_owned(),
            size: Some(message.len() as u64),
            eight_bit: message.iter().any(|&b| b >= 0x80),
            smtputf8: false,
            dsn: MailDsn::default(),
            requiretls: false,
            outcome: outcome.clone(),
        },
    ];
    stages.extend(to.iter().map(|recipient| RecordedStage::Rcpt {
        recipient: recipient.clone(),
        dsn: RcptDsn::default(),
        outcome: outcome.clone(),
    }));
    stages.push(RecordedStage::Data {
        message: Bytes::of(message),
        outcome,
    });
    Transcript {
        version: VERSION,
        recorded_at_ms: 0,
        client: RecordedClient {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 25,
            listener: "eml".to_owned(),
            tls: false,
            authenticated: None,
        },
        stages,
        host_calls: Vec::new(),
        outbound: Vec::new(),
    }
}

/// Reads a transcript file.
pub fn read(path: &Path) -> Result<Transcript, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let transcript: Transcript =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a transcript: {e}", path.display()))?;
    if transcript.version != VERSION {
        return Err(format!(
            "{}: transcript version {} (this mailgate reads version {VERSION})",
            path.display(),
            transcript.version
        ));
    }
    Ok(transcript)
}

/// One stage of a replay.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The stage's name (`connect`, ..., `data`).
    pub stage: &'static str,
    /// The stage and its argument, for people.
    pub label: String,
    /// `continue`, `reject`, `tempfail`, `disconnect`, `discard`,
    /// `quarantine`, `fault`, or `not reached`.
    pub verdict: String,
    /// The reply or reason, if any.
    pub detail: String,
    /// The modifications asked for.
    pub modifications: Vec<String>,
    /// The header fields the modifications add or set, `Name: value`.
    pub headers: Vec<String>,
    /// What the chain decided when the transcript was recorded.
    pub recorded: String,
}

/// The verdict word of a decision: what `--expect` compares.
fn verdict(result: &super::outcome::StageResult) -> (String, String) {
    if !result.faults.is_empty() {
        return ("fault".to_owned(), result.faults.join("; "));
    }
    match &result.decision {
        Decision::Proceed => ("continue".to_owned(), String::new()),
        Decision::Refuse(reply) if reply.code() >= 500 => {
            ("reject".to_owned(), reply.to_string().trim_end().to_owned())
        }
        Decision::Refuse(reply) => ("tempfail".to_owned(), reply.to_string().trim_end().to_owned()),
        Decision::Disconnect(reply) => ("disconnect".to_owned(), reply.to_string().trim_end().to_owned()),
        Decision::Discard => ("discard".to_owned(), String::new()),
        Decision::Quarantine(reason) => ("quarantine".to_owned(), reason.clone()),
        Decision::Hold(reason) => ("hold".to_owned(), reason.clone()),
    }
}

/// Replays `transcript` against `chain`, whose host must answer from it
/// (a [`ReplayHost`]): the stages in order, as the gateway would run them,
/// stopping where the client would have been turned away.
pub async fn replay(chain: &Arc<super::Chain>, transcript: &Transcript) -> Vec<Replayed> {
    use super::message::ParsedMessage;
    use super::outcome::Modification;
    use crate::smtp::command::MailParameters;
    use crate::smtp::{Mailbox, ReversePath};

    let client = &transcript.client;
    let mut ctx = HookContext {
        client: std::net::SocketAddr::new(client.ip, client.port),
        listener: Arc::from(client.listener.as_str()),
        tls: client.tls,
        helo: None,
        authenticated: client.authenticated.clone(),
        reverse_path: None,
        recipients: Vec::new(),
        metadata: Vec::new(),
    };
    let mut session = chain.session();
    let mut report = Vec::new();
    let mut stopped: Option<String> = None;
    for stage in &transcript.stages {
        let (name, label, recorded) = match stage {
            RecordedStage::Connect { outcome } => ("connect", format!("connect from {}", client.ip), outcome),
            RecordedStage::Helo { name, outcome } => ("helo", format!("helo {name}"), outcome),
            RecordedStage::Mail {
                reverse_path, outcome, ..
            } => ("mail", format!("mail from <{reverse_path}>"), outcome),
            RecordedStage::Rcpt { recipient, outcome, .. } => ("rcpt", format!("rcpt to <{recipient}>"), outcome),
            RecordedStage::Data { message, outcome } => {
                ("data", format!("data ({} octets)", message.octets().len()), outcome)
            }
        };
        let mut line = Replayed {
            stage: name,
            label,
            verdict: "not reached".to_owned(),
            detail: String::new(),
            modifications: Vec::new(),
            headers: Vec::new(),
            recorded: recorded.clone(),
        };
        if let Some(why) = &stopped {
            line.detail.clone_from(why);
            report.push(line);
            continue;
        }
        let result = match stage {
            RecordedStage::Connect { .. } => session.run(StageCall::Connect, &ctx).await,
            RecordedStage::Helo { name, .. } => {
                ctx.helo = Some(name.clone());
                session.run(StageCall::Helo(name), &ctx).await
            }
            RecordedStage::Mail {
                reverse_path,
                size,
                eight_bit,
                smtputf8,
                dsn,
                requiretls,
                ..
            } => {
                let Ok(path) = ReversePath::try_from(reverse_path.clone()) else {
                    line.detail = format!("unparsable reverse-path {reverse_path:?}");
                    report.push(line);
                    continue;
                };
                let parameters = MailParameters {
                    size: *size,
                    body: if *eight_bit {
                        BodyType::EightBitMime
                    } else {
                        BodyType::SevenBit
                    },
                    smtputf8: *smtputf8,
                    dsn: dsn.clone(),
                    requiretls: *requiretls,
                };
                let result = session.run(StageCall::Mail(&path, &parameters), &ctx).await;
                ctx.reverse_path = Some(path);
                result
            }
            RecordedStage::Rcpt { recipient, dsn, .. } => {
                let Ok(rcpt) = Mailbox::parse(recipient) else {
                    line.detail = format!("unparsable recipient {recipient:?}");
                    report.push(line);
                    continue;
                };
                let result = session.run(StageCall::Rcpt(&rcpt, dsn), &ctx).await;
                if result.decision == Decision::Proceed {
                    let rewritten = result.modifications.iter().rev().find_map(|m| match m {
                        Modification::SetRecipient(to, _) => Some(to.clone()),
                        _ => None,
                    });
                    ctx.recipients.push(rewritten.unwrap_or(rcpt));
                }
                result
            }
            RecordedStage::Data { message, .. } => {
                if ctx.recipients.is_empty() {
                    line.detail = "no recipient was accepted".to_owned();
                    report.push(line);
                    continue;
                }
                let parsed = Arc::new(ParsedMessage::new(message.octets()));
                session.run(StageCall::Data(&parsed), &ctx).await
            }
        };
        for m in &result.modifications {
            if let Modification::SetMetadata(key, value) = m {
                ctx.metadata.push((key.clone(), value.clone()));
            }
        }
        let (word, detail) = verdict(&result);
        line.verdict = word;
        line.detail = detail;
        line.modifications = result.modifications.iter().map(|m| format!("{m:?}")).collect();
        line.headers = result
            .modifications
            .iter()
            .filter_map(|m| match m {
                Modification::AddHeader(h) | Modification::SetHeader(h) | Modification::InsertHeader(_, h) => {
                    Some(format!("{}: {}", h.name, h.value))
                }
                _ => None,
            })
            .collect();
        let turned_away = matches!(
            (&result.decision, name),
            (Decision::Disconnect(_), _) | (Decision::Refuse(_), "connect" | "helo" | "mail")
        );
        if turned_away {
            stopped = Some(format!("the client was turned away at {name}"));
        }
        report.push(line);
    }
    session.end_transaction();
    report
}
