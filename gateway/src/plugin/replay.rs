//! Replay: the host a transcript remembers (`ReplayHost`: DNS answers,
//! the clock, key-value reads, DKIM results), and the replay of a
//! transcript's stages against a chain, for `mailgate plugin test`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::chain::Chain;
use super::chain::StageCall;
use super::host::{
    AuthEnvelope, BoxFuture, ClockService, DkimService, DnsAnswer, DnsFailure, DnsKind, DnsService, KvError, KvService,
    Verification,
};
use super::outbound::{FailureFacts, OutboundStage};
use super::outcome::{Decision, HookContext};
use super::transcript::{HostCall, RecordedOutbound, RecordedStage, Transcript};
use crate::smtp::command::BodyType;

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

/// Replays recorded outbound calls against `chain` (whose host answers
/// from the transcript), for `mailgate plugin test`.
pub async fn replay_outbound(chain: &Chain, entries: &[RecordedOutbound]) -> Vec<Replayed> {
    let mut report = Vec::new();
    for entry in entries {
        let Some(stage) = OutboundStage::named(&entry.stage) else {
            continue;
        };
        let failure = entry.failure.clone().unwrap_or(FailureFacts {
            code: None,
            enhanced: None,
            text: String::new(),
            permanent: stage == OutboundStage::Bounce,
        });
        let facts = &entry.delivery;
        let described = match stage {
            OutboundStage::Deliver => chain.on_deliver(facts, None).await.describe(stage),
            OutboundStage::Defer => chain.on_defer(facts, &failure, None).await.describe(stage),
            OutboundStage::Bounce => chain.on_bounce(facts, &failure, None).await.describe(stage),
            OutboundStage::Delivered | OutboundStage::Quarantined => {
                let faults = chain
                    .notify(stage, facts, entry.reply.as_deref().unwrap_or(""), None)
                    .await;
                match faults.is_empty() {
                    true => "continue".to_owned(),
                    false => format!("fault {}", faults.join("; ")),
                }
            }
        };
        let (verdict, detail) = described.split_once(' ').unwrap_or((described.as_str(), ""));
        report.push(Replayed {
            stage: stage.name(),
            label: format!(
                "{} {} to {}",
                stage.name(),
                facts.recipients.join(","),
                facts.destination
            ),
            verdict: verdict.to_owned(),
            detail: detail.to_owned(),
            modifications: Vec::new(),
            headers: Vec::new(),
            recorded: entry.outcome.clone(),
        });
    }
    report
}
