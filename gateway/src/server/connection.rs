//! The connection driver: reads the socket, feeds the session state
//! machine, and carries out its steps (send replies, decide stages, stream
//! DATA into the spool, commit). Replies to pipelined commands are buffered
//! and flushed when no further complete command is waiting (RFC 2920
//! section 3.2), before any wait for input, and at the 354. STARTTLS
//! throws away whatever the client sent after it in clear (RFC 3207
//! section 4.2; the CVE-2011-0411 command injection).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::spawn_blocking;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, error, field, info_span, warn};

mod decision_log;
mod transfer;

use super::filters::{Disposition, Filters, TransactionEdits};
use super::{Accepted, ConnectionError, Generation, Inbound, PREAMBLE_TIMEOUT, handshake};
use crate::metrics::{ListenerMetrics, metrics};
use crate::net::{Stream, TlsInfo};
use crate::plugin::ParsedMessage;
use crate::queue::{Client, Envelope, Recipient, SpoolWriter};
use crate::smtp::Reply;
use crate::smtp::session::{AuthOutcome, ConnectionInfo, Decision, QueueOutcome, Session, Stage, Step};
use decision_log::{MessageLog, log_refusal, refusal, session_decider};
use transfer::{ChunkEnd, DataEnd};

/// A command line longer than this is not buffered: it is skipped up to its
/// LF and answered 500 5.5.6. The session enforces the exact limits below it.
pub(crate) const MAX_BUFFERED_LINE: usize = 2048;
/// Read size, and the most DATA held in memory per connection at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Replies are flushed at least this often even if input keeps coming.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

struct Connection {
    stream: Stream,
    input: BytesMut,
    output: Vec<u8>,
    /// Skipping the rest of an overlong command line.
    discarding: bool,
    /// The generation of settings in use: taken again at each MAIL.
    settings: Arc<Generation>,
    inbound: Arc<Inbound>,
    shutdown: CancellationToken,
    counters: ListenerMetrics,
    /// The listener's transcript directory, when it records.
    record: Option<Arc<std::path::Path>>,
    /// The refusal being answered was logged where it was decided.
    refusal_logged: bool,
    /// The listener's name: which chain entries run for this connection.
    listener: Arc<str>,
}

/// Serves one connection to its end; `tls` is set when it is encrypted
/// from the start.
pub(super) async fn handle(
    stream: Stream,
    info: ConnectionInfo,
    tls: Option<TlsInfo>,
    accepted: Accepted,
    inbound: Arc<Inbound>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let Accepted {
        listener,
        generation: settings,
        counters,
    } = accepted;
    let (mut session, mut step) =
        Session::with_security(Arc::clone(&settings.settings.session), info, listener.security(), tls);
    let record = listener.record.clone();
    let mut filters = settings
        .settings
        .chain
        .as_ref()
        .map(|chain| Filters::new(chain, record.as_ref(), &listener.name));
    let mut conn = Connection {
        stream,
        input: BytesMut::with_capacity(4096),
        output: Vec::with_capacity(1024),
        discarding: false,
        settings,
        inbound,
        shutdown,
        counters,
        record,
        refusal_logged: false,
        listener: Arc::clone(&listener.name),
    };
    // The message between the end of DATA and its commit. Held here rather
    // than in the session because the session does no I/O.
    let mut message: Option<SpoolWriter> = None;
    // The span of the current transaction, from MAIL to its end.
    let mut txn: Option<Span> = None;
    let mut transactions: u32 = 0;
    loop {
        if let Some(filters) = filters.as_mut() {
            filters.follow(&session);
        }
        if session.transaction().is_none() {
            // The transaction ended (refused, RSET, a failed BDAT): its
            // partial content goes.
            message = None;
        }
        match (session.transaction().is_some(), &txn) {
            (true, None) => {
                transactions += 1;
                txn = Some(info_span!("txn", n = transactions, queue_id = field::Empty));
            }
            (false, Some(_)) => txn = None,
            _ => {}
        }
        let span = txn.clone().unwrap_or_else(Span::none);
        step = match step {
            Step::Reply(reply) => {
                conn.answer(&mut session, &reply);
                conn.next_command(&mut session).await?
            }
            Step::Close(reply) => {
                conn.answer(&mut session, &reply);
                conn.flush().await?;
                let _ = conn.stream.shutdown().await;
                return Ok(());
            }
            Step::Check(stage) => {
                if stage == Stage::Mail {
                    conn.renew(&mut filters);
                }
                let to = session.pending_recipient().map(ToString::to_string);
                let (decision, decided_by) = conn
                    .check(stage, &mut session, filters.as_mut(), message.as_ref())
                    .instrument(span.clone())
                    .await;
                if let Decision::Refuse(reply) | Decision::Disconnect(reply) = &decision {
                    metrics().message(stage.name(), refusal(reply));
                    let _entered = span.enter();
                    match (stage, message.take()) {
                        (Stage::Data, Some(writer)) => MessageLog {
                            decided_by,
                            ..MessageLog::new(&writer, &session, refusal(reply))
                        }
                        .emit(reply),
                        _ => {
                            let decided_by = decided_by.unwrap_or_else(|| "policy".to_owned());
                            log_refusal(stage.name(), &session, to.as_deref(), reply, &decided_by);
                            conn.refusal_logged = true;
                        }
                    }
                }
                session.decide(decision)
            }
            Step::ReceiveData(reply, reader) => {
                conn.answer(&mut session, &reply);
                conn.flush().await?;
                let mut writer = conn.inbound.spool.create();
                span.record("queue_id", writer.id().as_str());
                let trace = session.trace_header(writer.id().as_str(), SystemTime::now());
                writer.write(trace.as_bytes()).await;
                match conn.receive_data(reader, &mut writer).await? {
                    DataEnd::TimedOut => session.timeout(),
                    DataEnd::Read(outcome) => {
                        let mut log = MessageLog::new(&writer, &session, "rejected");
                        log.reason = outcome.refusal_reason();
                        let step = session.data_end(outcome);
                        content_end(&session, &step, writer, &mut message, log, &span);
                        step
                    }
                }
            }
            Step::ReceiveChunk(chunk) => {
                let mut writer = match message.take() {
                    Some(writer) => writer,
                    None => {
                        let mut writer = conn.inbound.spool.create();
                        span.record("queue_id", writer.id().as_str());
                        let trace = session.trace_header(writer.id().as_str(), SystemTime::now());
                        writer.write(trace.as_bytes()).await;
                        writer
                    }
                };
                match conn.receive_chunk(chunk, &mut writer).await? {
                    ChunkEnd::TimedOut => session.timeout(),
                    ChunkEnd::Read(chunk) => {
                        let mut log = MessageLog::new(&writer, &session, "rejected");
                        log.reason = chunk.outcome().and_then(|o| o.refusal_reason());
                        let step = session.chunk_end(chunk);
                        content_end(&session, &step, writer, &mut message, log, &span);
                        step
                    }
                }
            }
            Step::DiscardChunk(size, reply) => {
                if conn.discard_chunk(size).await? {
                    conn.answer(&mut session, &reply);
                    conn.next_command(&mut session).await?
                } else {
                    session.timeout()
                }
            }
            Step::Queue => {
                let edits = filters.as_mut().map(Filters::take_transaction).unwrap_or_default();
                let (outcome, log) = match message.take() {
                    Some(writer) => conn.commit(&session, writer, edits).instrument(span.clone()).await,
                    None => (QueueOutcome::Failed, None),
                };
                if let (QueueOutcome::Queued(_), Some(user)) = (&outcome, session.authenticated()) {
                    conn.inbound.user_rates.record(user);
                }
                let step = session.queued(outcome);
                if let (Some(log), Step::Reply(reply)) = (log, &step) {
                    metrics().message("data", log.outcome);
                    let _entered = span.enter();
                    log.emit(reply);
                }
                step
            }
            Step::StartTls(reply) => {
                conn.answer(&mut session, &reply);
                conn.flush().await?;
                let Some(tls) = listener.tls.as_ref() else {
                    return Ok(());
                };
                if !conn.input.is_empty() {
                    warn!(
                        octets = conn.input.len(),
                        "discarding input sent in clear after STARTTLS"
                    );
                    conn.input.clear();
                }
                // The session never asks for TLS twice; end it if it did.
                let Stream::Plain(tcp) = conn.stream else {
                    return Ok(());
                };
                let wait = conn.settings.settings.command_timeout.min(PREAMBLE_TIMEOUT);
                let Some((stream, parameters)) = handshake(tls, tcp, wait).await? else {
                    return Ok(());
                };
                conn.stream = stream;
                session.tls_started(parameters);
                conn.next_command(&mut session).await?
            }
            Step::Authenticate(attempt) => {
                conn.flush().await?;
                let outcome = match conn.settings.settings.auth.as_ref() {
                    Some(auth) => auth.check(session.connection().peer.ip(), attempt).await,
                    None => AuthOutcome::Unavailable,
                };
                session.auth_checked(outcome)
            }
        };
    }
}

/// After the message's content ended (DATA, or a BDAT chunk): keeps the
/// writer while the transaction goes on, or logs and counts the refusal.
fn content_end(
    session: &Session,
    step: &Step,
    writer: SpoolWriter,
    message: &mut Option<SpoolWriter>,
    mut log: MessageLog,
    span: &Span,
) {
    if session.transaction().is_some() {
        *message = Some(writer);
    } else if let Step::Reply(reply) = step {
        metrics().message("data", refusal(reply));
        let _entered = span.enter();
        log.decided_by = Some(session_decider(reply).to_owned());
        log.emit(reply);
    }
}

/// Messages up to this size are parsed for plugins when one asks (on the
/// runtime); larger ones are parsed at once on the blocking pool.
const PARSE_INLINE_BYTES: usize = 256 * 1024;

async fn parse(content: Vec<u8>) -> Option<Arc<ParsedMessage>> {
    let message = Arc::new(ParsedMessage::new(content));
    if message.raw().len() <= PARSE_INLINE_BYTES {
        return Some(message);
    }
    spawn_blocking(move || {
        message.parse_now();
        message
    })
    .await
    .ok()
}

impl Connection {
    /// Decides a stage: the built-in relay policy first (plugins can only
    /// tighten it), then the plugin chain. With the decision comes who
    /// made it, when it was not the default.
    async fn check(
        &self,
        stage: Stage,
        session: &mut Session,
        filters: Option<&mut Filters>,
        message: Option<&SpoolWriter>,
    ) -> (Decision, Option<String>) {
        let decided = |decision, by: &str| (decision, Some(by.to_owned()));
        // The postmaster is always accepted (RFC 5321 section 4.5.1).
        if let (Stage::Rcpt, Some(rcpt)) = (stage, session.pending_recipient())
            && !session.pending_is_postmaster()
            && !self.settings.settings.relay.allows(
                session.connection().peer.ip(),
                session.authenticated().is_some(),
                rcpt,
            )
        {
            return decided(Decision::Refuse(Reply::relay_denied()), "policy relay");
        }
        if let (Stage::Mail, Some(user)) = (stage, session.authenticated())
            && !self.inbound.user_rates.allows(user)
        {
            warn!(user, "message rate limit reached");
            return decided(Decision::Refuse(Reply::user_rate_limited()), "limit user_message_limit");
        }
        let Some(filters) = filters.filter(|f| f.runs_at(stage)) else {
            return (Decision::Proceed, None);
        };
        let parsed = match (stage, message) {
            (Stage::Data, Some(writer)) => match writer.contents().await {
                Ok(content) => parse(content).await,
                Err(e) => {
                    error!(error = %e, "cannot read the message back for plugins");
                    return decided(Decision::Refuse(Reply::local_error()), "local error");
                }
            },
            _ => None,
        };
        filters.check(stage, session, parsed.as_ref()).await
    }

    /// Returns the step for the next command, reading as needed. The
    /// command timeout is a deadline for the whole line, not for each read,
    /// so a client trickling a byte at a time (slowloris) cannot hold the
    /// connection past it.
    async fn next_command(&mut self, session: &mut Session) -> Result<Step, ConnectionError> {
        let deadline = tokio::time::Instant::now() + self.settings.settings.command_timeout;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(session.shutdown());
            }
            if let Some(step) = self.take_line(session) {
                if self.output.len() >= MAX_PENDING_OUTPUT {
                    self.flush().await?;
                }
                return Ok(step);
            }
            self.flush().await?;
            self.input.reserve(4096);
            let read = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(session.shutdown()),
                read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)) => read,
            };
            match read {
                Err(_) => return Ok(session.timeout()),
                Ok(Ok(0)) => return Err(ConnectionError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Hands one complete buffered line to the session. A line may end in
    /// LF alone: only DATA is strict about CRLF (see `smtp::data`).
    fn take_line(&mut self, session: &mut Session) -> Option<Step> {
        let newline = self.input.iter().position(|&b| b == b'\n');
        if self.discarding {
            match newline {
                Some(end) => {
                    self.input.advance(end + 1);
                    self.discarding = false;
                    return Some(session.line_too_long());
                }
                None => {
                    self.input.clear();
                    return None;
                }
            }
        }
        let Some(end) = newline else {
            if self.input.len() > MAX_BUFFERED_LINE {
                self.input.clear();
                self.discarding = true;
            }
            return None;
        };
        let line = self.input.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some(session.command(line))
    }

    /// Applies the plugins' edits, then spools the message and tells the
    /// delivery engine (or drops or quarantines it, as a plugin decided).
    /// Returns the outcome and what to log once the reply is known.
    async fn commit(
        &self,
        session: &Session,
        mut writer: SpoolWriter,
        edits: TransactionEdits,
    ) -> (QueueOutcome, Option<MessageLog>) {
        let (Some(txn), Some(info)) = (session.transaction(), session.message()) else {
            return (QueueOutcome::Failed, None);
        };
        let mut envelope = Envelope {
            reverse_path: txn.reverse_path.clone(),
            recipients: txn
                .recipients
                .iter()
                .map(|r| Recipient {
                    dsn: r.dsn.clone(),
                    ..Recipient::new(r.address.clone())
                })
                .collect(),
            received_at: SystemTime::now(),
            size: writer.len(),
            body: txn.parameters.body,
            smtputf8: txn.parameters.smtputf8,
            eight_bit: info.eight_bit,
            client: Some(Client {
                ip: session.connection().peer.ip(),
                helo: session.hello().map(|h| h.name.clone()).unwrap_or_default(),
            }),
            quarantine: None,
            quarantined_by: None,
            hold: None,
            dsn: txn.parameters.dsn.clone(),
            requiretls: txn.parameters.requiretls,
            tls_optional: info.tls_optional,
        };
        edits.apply_to(&mut envelope);
        if let Some(content) = edits.content().await {
            envelope.eight_bit = content.iter().any(|&b| b >= 0x80);
            writer.rewrite(&content).await;
            envelope.size = writer.len();
        }
        let id = writer.id().to_string();
        let log = |outcome| MessageLog {
            id: id.clone(),
            size: envelope.size,
            from: envelope.reverse_path.to_string(),
            rcpts: envelope.recipients.len(),
            outcome,
            reason: None,
            decided_by: None,
        };
        match edits.disposition {
            Disposition::Discard => (QueueOutcome::Queued(id.clone()), Some(log("discarded"))),
            // Every recipient was removed by plugins.
            Disposition::Deliver if envelope.recipients.is_empty() => {
                (QueueOutcome::Queued(id.clone()), Some(log("discarded")))
            }
            Disposition::Quarantine(reason, by) => {
                let log = MessageLog {
                    reason: Some(reason.clone()),
                    ..log("quarantined")
                };
                envelope.quarantine = Some(reason);
                envelope.quarantined_by = by;
                let told = envelope.clone();
                match self.inbound.spool.quarantine(writer, envelope).await {
                    Ok(_) => {
                        super::filters::notify_quarantined(edits.chain.as_ref(), &id, &told);
                        (QueueOutcome::Queued(id), Some(log))
                    }
                    Err(e) => {
                        error!(error = %e, "cannot quarantine message; answering 451");
                        (
                            QueueOutcome::Failed,
                            Some(MessageLog {
                                outcome: "tempfailed",
                                ..log
                            }),
                        )
                    }
                }
            }
            Disposition::Deliver | Disposition::Hold(_) => {
                let log = match &edits.disposition {
                    Disposition::Hold(reason) => {
                        // Spooled on hold: the runner keeps it back until an
                        // operator releases it.
                        envelope.hold = Some(reason.clone());
                        MessageLog {
                            reason: Some(reason.clone()),
                            ..log("held")
                        }
                    }
                    _ => log("queued"),
                };
                match self.inbound.spool.commit(writer, envelope).await {
                    Ok(stored) => {
                        // If the engine is gone (shutdown), the message stays
                        // spooled and is delivered after the restart.
                        let _ = self.inbound.queue.send(stored).await;
                        (QueueOutcome::Queued(id), Some(log))
                    }
                    Err(e) => {
                        error!(error = %e, "cannot spool message; answering 451");
                        (
                            QueueOutcome::Failed,
                            Some(MessageLog {
                                outcome: "tempfailed",
                                ..log
                            }),
                        )
                    }
                }
            }
        }
    }

    /// A transaction starts: it runs on the current generation, so after
    /// a reload the new plugin chain and policy apply from this MAIL on.
    fn renew(&mut self, filters: &mut Option<Filters>) {
        let current = self.inbound.current();
        if Arc::ptr_eq(&current, &self.settings) {
            return;
        }
        *filters = match (filters.take(), &current.settings.chain) {
            (Some(mut old), Some(chain)) => {
                old.rechain(chain);
                Some(old)
            }
            (None, Some(chain)) => Some(Filters::new(chain, self.record.as_ref(), &self.listener)),
            (_, None) => None,
        };
        self.settings = current;
    }

    /// Queues a reply, counting it against the command it answers.
    fn answer(&mut self, session: &mut Session, reply: &Reply) {
        // DATA is counted by its final reply, after the dot, not by the 354.
        let verb = if reply.code() == 354 { None } else { session.take_verb() };
        if let Some(verb) = verb {
            metrics().command(verb, reply.code());
        }
        // A refusal of the session's own (a limit, a sequence or syntax
        // error) is logged here; one decided by a policy or plugin was
        // logged where it was decided.
        let logged = std::mem::take(&mut self.refusal_logged);
        if let Some(verb @ ("MAIL" | "RCPT" | "BDAT")) = verb
            && reply.code() >= 400
            && !logged
        {
            log_refusal(&verb.to_ascii_lowercase(), session, None, reply, session_decider(reply));
        }
        reply.write_to(&mut self.output);
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        if self.output.is_empty() {
            return Ok(());
        }
        let wait = self.settings.settings.command_timeout;
        match timeout(wait, self.stream.write_all(&self.output)).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnectionError::WriteTimeout),
        }
        self.output.clear();
        Ok(())
    }
}
