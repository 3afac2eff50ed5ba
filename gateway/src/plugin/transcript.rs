//! Recording (the replay is in `replay.rs`). A listener with `record =
//! "dir"` writes one JSON transcript per transaction: the client, every stage with its argument
//! (the message at DATA) and what the chain decided, and every answer the
//! host gave a plugin (DNS results, the time, key-value reads). `mailgate
//! plugin test` replays a transcript against a plugin with the host
//! answering from it, so a run is deterministic and needs no network.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::chain::StageCall;
use super::host::{DnsAnswer, DnsKind, KvError, Verification};
use super::outcome::{Decision, HookContext};
pub use super::replay::{ReplayHost, Replayed, replay};
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
