//! The RFC 5321 server dialogue as an explicit state machine that does no
//! I/O. The driver (`server::connection`) feeds it command lines and the
//! outcomes of what it asked for (a stage check, a DATA transfer, a spool
//! commit); each call returns the next `Step` for the driver to carry out.
//! Sequence errors, recipient caps, size and line limits live here so that
//! transcript tests cover them without sockets.

use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::address::{Mailbox, ReversePath};
use super::chunking::ChunkReader;
use super::command::{self, Bdat, Command, ForwardPath, MailParameters, RcptParameters};
use super::data::{DataOutcome, DataPolicy, DataReader, MessageInfo};
use super::dsn::RcptDsn;
use super::extensions::{Offered, ehlo_keywords};
use super::reply::Reply;
use super::trace::Trace;
use crate::net::TlsInfo;

mod auth;

use auth::AuthStep;
pub use auth::{AuthAttempt, AuthOutcome};

/// The longest command line, CRLF included (RFC 5321 section 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// Extra octets a MAIL command may use for the parameters we advertise
/// (SIZE, BODY and SMTPUTF8: RFC 1870 section 3, RFC 6152, RFC 6531 each
/// raise the limit).
const MAIL_PARAMETER_ALLOWANCE: usize = 64;

/// Settings the state machine needs, fixed for a listener.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our host name, for the greeting, EHLO reply and trace header.
    pub hostname: String,
    /// Recipients accepted per transaction before 452 4.5.3.
    pub max_recipients: usize,
    /// Size limit and line policies for DATA.
    pub data: DataPolicy,
    /// Error replies (4xx, 5xx) a client may get before 421 and close;
    /// the count restarts when a message is queued.
    pub max_errors: u32,
    /// Commands outside MAIL, RCPT and DATA (NOOP, RSET, EHLO, ...) before
    /// 421 and close; the count restarts when a message is queued.
    pub max_idle_commands: u32,
    /// Where `RCPT TO:<Postmaster>` and `postmaster@<hostname>` go.
    pub postmaster: Mailbox,
}

/// What a listener offers and requires of its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// STARTTLS is offered while the connection is in clear.
    pub starttls: bool,
    /// AUTH is offered once the connection is encrypted.
    pub auth: bool,
    /// MAIL needs AUTH first (the submission roles).
    pub auth_required: bool,
}

/// Where the connection comes from and arrived.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address and port.
    pub peer: SocketAddr,
    /// Our address and port.
    pub local: SocketAddr,
    /// The name of the listener that accepted the connection.
    pub listener: Arc<str>,
}

/// Which greeting command the client used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloKind {
    /// `HELO`: plain SMTP.
    Helo,
    /// `EHLO`: extended SMTP.
    Ehlo,
}

/// The client's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// HELO or EHLO.
    pub kind: HelloKind,
    /// The name it gave.
    pub name: String,
}

/// A mail transaction: from MAIL to the end of DATA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The reverse-path of MAIL FROM.
    pub reverse_path: ReversePath,
    /// The parameters of MAIL FROM.
    pub parameters: MailParameters,
    /// Recipients accepted so far, in order, each address once.
    pub recipients: Vec<Rcpt>,
    /// Recipients refused so far; decides 554 over 503 at DATA (RFC 2920 section 3.1).
    refused: usize,
}

/// One accepted recipient with its DSN parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rcpt {
    /// The forward-path (after any plugin rewrite).
    pub address: Mailbox,
    /// `NOTIFY=` and `ORCPT=`.
    pub dsn: RcptDsn,
}

impl Transaction {
    /// The recipients' addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &Mailbox> {
        self.recipients.iter().map(|r| &r.address)
    }
}

/// An SMTP stage whose outcome the driver decides (policy, plugins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A client connected; nothing has been sent yet.
    Connect,
    /// EHLO or HELO; see `Session::pending_hello`.
    Helo,
    /// MAIL FROM; see `Session::transaction`.
    Mail,
    /// RCPT TO; see `Session::pending_recipient`.
    Rcpt,
    /// The message has been received; see `Session::message`.
    Data,
}

impl Stage {
    /// Lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Helo => "helo",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
        }
    }
}

/// What the driver decided about a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The stage succeeds with its usual reply.
    Proceed,
    /// The stage fails with this 4xx or 5xx reply; the session goes on.
    Refuse(Reply),
    /// Send this reply and close the connection.
    Disconnect(Reply),
}

/// How committing the message to the spool went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOutcome {
    /// Durably spooled under this queue id.
    Queued(String),
    /// Not spooled (I/O error); the client should retry.
    Failed,
}

/// What the driver must do next.
#[derive(Debug)]
#[must_use]
pub enum Step {
    /// Send the reply, then go on reading commands.
    Reply(Reply),
    /// Send the reply, flush, and close the connection.
    Close(Reply),
    /// Decide this stage, then call `Session::decide`.
    Check(Stage),
    /// Send the 354 reply, then stream the message through the reader
    /// until it reports the end, then call `Session::data_end`.
    ReceiveData(Reply, DataReader),
    /// Stream the BDAT chunk that follows the command line through the
    /// reader (exactly its size in octets), then call `Session::chunk_end`.
    ReceiveChunk(ChunkReader),
    /// Read and throw away the BDAT chunk of this many octets that follows
    /// the command line (RFC 3030 section 3: it must be consumed even when
    /// refused), then send the reply and go on reading commands.
    DiscardChunk(u64, Reply),
    /// Commit the message and envelope to the spool, then call `Session::queued`.
    Queue,
    /// Send the reply and flush it, throw away any input already read
    /// (RFC 3207 section 4.2: it was sent before TLS and cannot be
    /// trusted), do the TLS handshake, then call `Session::tls_started`;
    /// close the connection if the handshake fails.
    StartTls(Reply),
    /// Check the user name and password, then call `Session::auth_checked`.
    Authenticate(AuthAttempt),
}

#[derive(Debug)]
enum State {
    /// Banner sent; waiting for EHLO/HELO.
    Greeted,
    /// Greeted, no transaction open.
    Ready(Hello),
    /// MAIL accepted, no recipient yet.
    Mail(Hello, Transaction),
    /// At least one recipient accepted; DATA allowed.
    Rcpt(Hello, Transaction),
    /// Inside an AUTH exchange: the next line is a response, not a command.
    Auth(Hello, AuthStep),
    /// The driver is streaming the message (DATA or one BDAT chunk).
    Data(Hello, Transaction),
    /// BDAT chunks received, LAST not yet: the content so far went
    /// through this reader (RFC 3030).
    Chunking(Hello, Transaction, DataReader),
    /// A stage is out with the driver.
    Pending(Pending),
    /// QUIT, a disconnect decision or a fatal error: nothing more is read.
    Closing,
}

#[derive(Debug)]
enum Pending {
    Connect,
    Helo(Hello),
    Mail(Hello, Transaction),
    Rcpt(Hello, Transaction, Rcpt),
    Data(Hello, Transaction, MessageInfo),
    Queue(Hello, Transaction, MessageInfo),
    /// The driver is doing the TLS handshake.
    StartTls,
    /// The driver is checking credentials for this user.
    Auth(Hello, String),
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    state: State,
    config: Arc<SessionConfig>,
    connection: ConnectionInfo,
    security: Security,
    /// Set once the connection is encrypted.
    tls: Option<TlsInfo>,
    /// The authenticated user.
    user: Option<String>,
    /// Error replies since the last queued message.
    errors: u32,
    /// Recipients refused for the recipient limit since the last queued
    /// message; up to `max_recipients` of them are not errors.
    over_limit: usize,
    /// Commands outside a transaction since the last queued message.
    idle_commands: u32,
    /// The verb of the command being answered, for metrics.
    verb: Option<&'static str>,
}

impl Session {
    /// A new session on a listener without TLS or AUTH; the first step is
    /// always `Check(Stage::Connect)`.
    pub fn new(config: Arc<SessionConfig>, connection: ConnectionInfo) -> (Self, Step) {
        Self::with_security(config, connection, Security::default(), None)
    }

    /// A new session on a listener offering `security`; `tls` is set when
    /// the connection is encrypted from the start (implicit TLS).
    pub fn with_security(
        config: Arc<SessionConfig>,
        connection: ConnectionInfo,
        security: Security,
        tls: Option<TlsInfo>,
    ) -> (Self, Step) {
        let session = Self {
            state: State::Pending(Pending::Connect),
            config,
            connection,
            security,
            tls,
            user: None,
            errors: 0,
            over_limit: 0,
            idle_commands: 0,
            verb: None,
        };
        (session, Step::Check(Stage::Connect))
    }

    /// Handles one line from the client, without its CRLF: a command, or a
    /// response inside an AUTH exchange.
    pub fn command(&mut self, line: &[u8]) -> Step {
        self.verb = Some(if matches!(self.state, State::Auth(..)) {
            "AUTH"
        } else {
            command::verb(line)
        });
        if let Some((hello, step)) = self.take_auth() {
            let (state, step) = self.auth_response(hello, step, line);
            self.state = state;
            return self.counted(step);
        }
        if line.len() + 2 > line_limit(line) {
            return self.counted(Step::Reply(Reply::line_too_long()));
        }
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => return self.counted(Step::Reply(error.reply())),
        };
        if !matches!(
            command,
            Command::Mail(..) | Command::Rcpt(..) | Command::Data | Command::Bdat(_) | Command::Quit
        ) {
            self.idle_commands += 1;
            if self.idle_commands > self.config.max_idle_commands {
                self.state = State::Closing;
                return Step::Close(Reply::abuse_limit(
                    &self.config.hostname,
                    "too many commands without a transaction",
                ));
            }
        }
        let state = mem::replace(&mut self.state, State::Closing);
        let (state, step) = self.on_command(state, command);
        self.state = state;
        self.counted(step)
    }

    /// Counts error replies; past the limit the connection is closed with
    /// 421 instead (Postfix's `smtpd_hard_error_limit`).
    fn counted(&mut self, step: Step) -> Step {
        let (Step::Reply(reply) | Step::DiscardChunk(_, reply)) = &step else {
            return step;
        };
        if reply.code() < 400 {
            return step;
        }
        // Recipients past the limit are not the client's error (RFC 5321
        // section 4.5.3.1.10): a client pipelining many RCPTs must still
        // be able to send to the ones accepted. Only a flood far past any
        // client's batch counts.
        if *reply == Reply::too_many_recipients() {
            self.over_limit += 1;
            if self.over_limit <= self.config.max_recipients {
                return step;
            }
        }
        self.errors += 1;
        if self.errors <= self.config.max_errors {
            return step;
        }
        self.state = State::Closing;
        Step::Close(Reply::abuse_limit(&self.config.hostname, "too many errors"))
    }

    /// The driver saw a command line longer than it buffers.
    pub fn line_too_long(&mut self) -> Step {
        self.verb = Some("OTHER");
        // Inside an AUTH exchange the line was a response: the exchange fails.
        if let Some((hello, _)) = self.take_auth() {
            self.state = State::Ready(hello);
        }
        let step = Step::Reply(Reply::line_too_long());
        self.counted(step)
    }

    /// Takes the state out if it is inside an AUTH exchange.
    fn take_auth(&mut self) -> Option<(Hello, AuthStep)> {
        match mem::replace(&mut self.state, State::Closing) {
            State::Auth(hello, step) => Some((hello, step)),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The TLS handshake after STARTTLS succeeded. Everything learnt
    /// before it is forgotten (RFC 3207 section 4.2): the client must
    /// greet again.
    pub fn tls_started(&mut self, tls: TlsInfo) {
        self.tls = Some(tls);
        self.user = None;
        self.state = State::Greeted;
    }

    /// The verb of the command the next reply answers (once: after DATA,
    /// the driver takes it for the reply after the final dot).
    pub fn take_verb(&mut self) -> Option<&'static str> {
        self.verb.take()
    }

    /// The connection is encrypted.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The authenticated user.
    pub fn authenticated(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The client was silent past the timeout.
    pub fn timeout(&mut self) -> Step {
        self.state = State::Closing;
        Step::Close(Reply::timeout(&self.config.hostname))
    }

    /// The gateway is shutting down (at a command boundary).
    pub fn shutdown(&mut self) -> Step {
        self.state = State::Closing;
        Step::Close(Reply::unavailable(&self.config.hostname))
    }

    fn on_command(&self, state: State, command: Command) -> (State, Step) {
        use State as S;
        let reply = |state: State, reply: Reply| (state, Step::Reply(reply));
        match (state, command) {
            (state @ (S::Data(..) | S::Pending(_) | S::Auth(..) | S::Closing), Command::Bdat(bdat)) => {
                // Not reached: the driver only sends commands when the session awaits one.
                (state, Step::DiscardChunk(bdat.size, Reply::local_error()))
            }
            (state @ (S::Data(..) | S::Pending(_) | S::Auth(..) | S::Closing), _) => {
                // The driver only sends commands when the session awaits one.
                (state, Step::Reply(Reply::local_error()))
            }
            (_, Command::Ehlo(name)) => greeting(HelloKind::Ehlo, name),
            (_, Command::Helo(name)) => greeting(HelloKind::Helo, name),
            (S::Greeted, Command::Mail(..)) => reply(S::Greeted, Reply::bad_sequence("send HELO/EHLO first")),
            (S::Ready(hello), Command::Mail(..)) if self.security.auth_required && self.user.is_none() => {
                reply(S::Ready(hello), Reply::auth_required())
            }
            (S::Ready(hello), Command::Mail(reverse_path, parameters)) => self.mail(hello, reverse_path, parameters),
            (state @ (S::Mail(..) | S::Rcpt(..) | S::Chunking(..)), Command::Mail(..)) => {
                reply(state, Reply::bad_sequence("nested MAIL command"))
            }
            (state @ (S::Greeted | S::Ready(_)), Command::Rcpt(..) | Command::Data) => {
                reply(state, Reply::bad_sequence("need MAIL command"))
            }
            (state @ (S::Greeted | S::Ready(_)), Command::Bdat(bdat)) => (
                state,
                Step::DiscardChunk(bdat.size, Reply::bad_sequence("need MAIL command")),
            ),
            (S::Mail(hello, txn) | S::Rcpt(hello, txn), Command::Rcpt(rcpt, parameters)) => {
                self.rcpt(hello, txn, rcpt, parameters)
            }
            (state @ S::Chunking(..), Command::Rcpt(..)) => reply(state, Reply::bad_sequence("RCPT after BDAT")),
            (S::Mail(hello, txn), Command::Data) => {
                let answer = no_recipients(&txn);
                reply(S::Mail(hello, txn), answer)
            }
            (S::Mail(hello, txn), Command::Bdat(bdat)) => {
                let answer = no_recipients(&txn);
                (S::Mail(hello, txn), Step::DiscardChunk(bdat.size, answer))
            }
            (S::Rcpt(hello, txn), Command::Bdat(bdat)) => {
                let reader = DataReader::chunked(self.config.data);
                self.bdat(hello, txn, reader, bdat)
            }
            (S::Chunking(hello, txn, reader), Command::Bdat(bdat)) => self.bdat(hello, txn, reader, bdat),
            // RFC 3030 section 3: DATA and BDAT may not be mixed in one
            // transaction; it fails, and the client must start again.
            (S::Chunking(hello, _, _), Command::Data) => reply(
                S::Ready(hello),
                Reply::bad_sequence("DATA after BDAT; the transaction is abandoned"),
            ),
            (S::Rcpt(hello, txn), Command::Data) => (
                S::Data(hello, txn),
                Step::ReceiveData(Reply::start_data(), DataReader::new(self.config.data)),
            ),
            (S::Greeted, Command::Rset) => reply(S::Greeted, Reply::ok()),
            (S::Ready(hello) | S::Mail(hello, _) | S::Rcpt(hello, _) | S::Chunking(hello, ..), Command::Rset) => {
                reply(S::Ready(hello), Reply::ok())
            }
            (state, Command::Noop) => reply(state, Reply::ok()),
            (state, Command::Vrfy) => reply(state, Reply::cannot_verify()),
            (state, Command::Help) => reply(state, Reply::help()),
            (state, Command::NotImplemented) => reply(state, Reply::not_implemented()),
            (state, Command::StartTls) => self.starttls(state),
            (S::Ready(hello), Command::Auth(mechanism, initial)) => self.auth(hello, &mechanism, initial.as_deref()),
            (S::Greeted, Command::Auth(..)) => reply(S::Greeted, Reply::bad_sequence("send EHLO first")),
            (state @ (S::Mail(..) | S::Rcpt(..) | S::Chunking(..)), Command::Auth(..)) => reply(
                state,
                Reply::bad_sequence("AUTH not permitted during a mail transaction"),
            ),
            (_, Command::Quit) => (S::Closing, Step::Close(Reply::closing())),
        }
    }

    fn starttls(&self, state: State) -> (State, Step) {
        let refusal = if self.tls.is_some() {
            Reply::bad_sequence("TLS already active")
        } else if !self.security.starttls {
            Reply::not_implemented()
        } else if matches!(state, State::Mail(..) | State::Rcpt(..) | State::Chunking(..)) {
            Reply::bad_sequence("STARTTLS not permitted during a mail transaction")
        } else {
            return (State::Pending(Pending::StartTls), Step::StartTls(Reply::start_tls()));
        };
        (state, Step::Reply(refusal))
    }

    fn mail(&self, hello: Hello, reverse_path: ReversePath, parameters: MailParameters) -> (State, Step) {
        if parameters.size.is_some_and(|size| size > self.config.data.max_bytes) {
            return (State::Ready(hello), Step::Reply(Reply::message_too_big()));
        }
        if !parameters.smtputf8 && !reverse_path.is_ascii() {
            return (State::Ready(hello), Step::Reply(Reply::needs_smtputf8()));
        }
        // RFC 8689 section 2: REQUIRETLS is offered only inside TLS.
        if parameters.requiretls && self.tls.is_none() {
            return (State::Ready(hello), Step::Reply(Reply::requiretls_needs_tls()));
        }
        let txn = Transaction {
            reverse_path,
            parameters,
            recipients: Vec::new(),
            refused: 0,
        };
        (State::Pending(Pending::Mail(hello, txn)), Step::Check(Stage::Mail))
    }

    fn rcpt(&self, hello: Hello, mut txn: Transaction, path: ForwardPath, parameters: RcptParameters) -> (State, Step) {
        let address = match path {
            ForwardPath::Postmaster => self.config.postmaster.clone(),
            ForwardPath::Mailbox(m) if is_postmaster_at(&m, &self.config.hostname) => self.config.postmaster.clone(),
            ForwardPath::Mailbox(m) => m,
        };
        let rcpt = Rcpt {
            address,
            dsn: parameters.dsn,
        };
        let refuse = if txn.recipients.len() >= self.config.max_recipients {
            Some(Reply::too_many_recipients())
        } else if !txn.parameters.smtputf8 && !rcpt.address.is_ascii() {
            Some(Reply::needs_smtputf8())
        } else {
            None
        };
        match refuse {
            Some(reply) => {
                txn.refused += 1;
                (after_recipient(hello, txn), Step::Reply(reply))
            }
            None => (
                State::Pending(Pending::Rcpt(hello, txn, rcpt)),
                Step::Check(Stage::Rcpt),
            ),
        }
    }

    /// The driver's decision about the pending stage.
    pub fn decide(&mut self, decision: Decision) -> Step {
        let state = mem::replace(&mut self.state, State::Closing);
        let State::Pending(pending) = state else {
            self.state = state;
            return Step::Reply(Reply::local_error());
        };
        let (state, step) = self.on_decision(pending, decision);
        self.state = state;
        step
    }

    fn on_decision(&self, pending: Pending, decision: Decision) -> (State, Step) {
        use Pending as P;
        let refuse = match decision {
            Decision::Disconnect(reply) => return (State::Closing, Step::Close(reply)),
            Decision::Refuse(reply) => reply,
            Decision::Proceed => return self.proceed(pending),
        };
        let state = match pending {
            // A refused connection is closed (DESIGN section 3: 421 or 554, then close).
            P::Connect => return (State::Closing, Step::Close(refuse)),
            P::Helo(_) => State::Greeted,
            P::Mail(hello, _) | P::Data(hello, ..) => State::Ready(hello),
            P::Rcpt(hello, mut txn, _) => {
                txn.refused += 1;
                after_recipient(hello, txn)
            }
            P::Queue(..) | P::StartTls | P::Auth(..) => {
                return (State::Pending(pending), Step::Reply(Reply::local_error()));
            }
        };
        (state, Step::Reply(refuse))
    }

    fn proceed(&self, pending: Pending) -> (State, Step) {
        use Pending as P;
        let host = &self.config.hostname;
        match pending {
            P::Connect => (State::Greeted, Step::Reply(Reply::greeting(host))),
            P::Helo(hello) => {
                let reply = match hello.kind {
                    HelloKind::Ehlo => Reply::ehlo(
                        host,
                        &hello.name,
                        ehlo_keywords(Offered {
                            max_message_bytes: self.config.data.max_bytes,
                            starttls: self.security.starttls && self.tls.is_none(),
                            auth: self.security.auth && self.tls.is_some(),
                            requiretls: self.tls.is_some(),
                        }),
                    ),
                    HelloKind::Helo => Reply::helo(host),
                };
                (State::Ready(hello), Step::Reply(reply))
            }
            P::Mail(hello, txn) => (State::Mail(hello, txn), Step::Reply(Reply::sender_ok())),
            P::Rcpt(hello, mut txn, rcpt) => {
                // A repeated recipient is accepted and delivered once
                // (RFC 5321 section 2.4: domains compare case-insensitively,
                // local parts as given).
                if !txn.recipients.iter().any(|r| r.address.same_mailbox(&rcpt.address)) {
                    txn.recipients.push(rcpt);
                }
                (State::Rcpt(hello, txn), Step::Reply(Reply::recipient_ok()))
            }
            P::Data(hello, txn, info) => (State::Pending(P::Queue(hello, txn, info)), Step::Queue),
            P::Queue(..) | P::StartTls | P::Auth(..) => (State::Pending(pending), Step::Reply(Reply::local_error())),
        }
    }

    /// The DATA transfer ended; `outcome` comes from the reader.
    pub fn data_end(&mut self, outcome: DataOutcome) -> Step {
        let state = mem::replace(&mut self.state, State::Closing);
        let State::Data(hello, txn) = state else {
            self.state = state;
            return Step::Reply(Reply::local_error());
        };
        let (state, step) = message_end(hello, txn, outcome);
        self.state = state;
        step
    }

    /// `BDAT` with recipients accepted: the chunk goes through `reader`,
    /// unless the message would exceed the size limit, in which case the
    /// chunk is discarded unread and the transaction fails (RFC 3030
    /// section 3: later chunks are refused too).
    fn bdat(&self, hello: Hello, txn: Transaction, reader: DataReader, bdat: Bdat) -> (State, Step) {
        if reader.size().saturating_add(bdat.size) > self.config.data.max_bytes {
            return (
                State::Ready(hello),
                Step::DiscardChunk(bdat.size, Reply::message_too_big()),
            );
        }
        (
            State::Data(hello, txn),
            Step::ReceiveChunk(ChunkReader::new(reader, bdat)),
        )
    }

    /// A BDAT chunk was read.
    pub fn chunk_end(&mut self, chunk: ChunkReader) -> Step {
        let state = mem::replace(&mut self.state, State::Closing);
        let State::Data(hello, txn) = state else {
            self.state = state;
            return Step::Reply(Reply::local_error());
        };
        let (size, last, reader) = chunk.into_parts();
        let (state, step) = if last {
            message_end(hello, txn, reader.outcome())
        } else {
            (
                State::Chunking(hello, txn, reader),
                Step::Reply(Reply::chunk_received(size)),
            )
        };
        self.state = state;
        self.counted(step)
    }

    /// The spool commit finished.
    pub fn queued(&mut self, outcome: QueueOutcome) -> Step {
        let state = mem::replace(&mut self.state, State::Closing);
        let State::Pending(Pending::Queue(hello, ..)) = state else {
            self.state = state;
            return Step::Reply(Reply::local_error());
        };
        self.state = State::Ready(hello);
        match outcome {
            QueueOutcome::Queued(id) => {
                self.errors = 0;
                self.over_limit = 0;
                self.idle_commands = 0;
                Step::Reply(Reply::queued(&id))
            }
            QueueOutcome::Failed => self.counted(Step::Reply(Reply::local_error())),
        }
    }

    /// Replaces the reverse-path of the MAIL being decided (a plugin's
    /// rewrite). Returns false when no MAIL is being decided.
    pub fn rewrite_reverse_path(&mut self, reverse_path: ReversePath) -> bool {
        match &mut self.state {
            State::Pending(Pending::Mail(_, txn)) => {
                txn.reverse_path = reverse_path;
                true
            }
            _ => false,
        }
    }

    /// Replaces the recipient being decided (a plugin's rewrite). Returns
    /// false when no RCPT is being decided.
    /// A NOTIFY given with it replaces the client's (RFC 3461).
    pub fn rewrite_pending_recipient(&mut self, recipient: Mailbox, notify: Option<super::dsn::Notify>) -> bool {
        match &mut self.state {
            State::Pending(Pending::Rcpt(_, _, rcpt)) => {
                rcpt.address = recipient;
                if notify.is_some() {
                    rcpt.dsn.notify = notify;
                }
                true
            }
            _ => false,
        }
    }

    /// True when the recipient being decided is this server's postmaster,
    /// which RFC 5321 section 4.5.1 says must be accepted whatever the
    /// relay policy.
    pub fn pending_is_postmaster(&self) -> bool {
        self.pending_recipient()
            .is_some_and(|rcpt| rcpt.same_mailbox(&self.config.postmaster))
    }

    /// Where the connection comes from.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// The greeting in effect, or the one being decided at the helo stage.
    pub fn hello(&self) -> Option<&Hello> {
        match &self.state {
            State::Ready(h)
            | State::Mail(h, _)
            | State::Rcpt(h, _)
            | State::Data(h, _)
            | State::Chunking(h, ..)
            | State::Auth(h, _) => Some(h),
            State::Pending(
                Pending::Helo(h)
                | Pending::Mail(h, _)
                | Pending::Rcpt(h, ..)
                | Pending::Data(h, ..)
                | Pending::Queue(h, ..)
                | Pending::Auth(h, _),
            ) => Some(h),
            State::Greeted | State::Closing | State::Pending(Pending::Connect | Pending::StartTls) => None,
        }
    }

    /// The open transaction, including one whose MAIL is being decided.
    pub fn transaction(&self) -> Option<&Transaction> {
        match &self.state {
            State::Mail(_, t) | State::Rcpt(_, t) | State::Data(_, t) | State::Chunking(_, t, _) => Some(t),
            State::Pending(
                Pending::Mail(_, t) | Pending::Rcpt(_, t, _) | Pending::Data(_, t, _) | Pending::Queue(_, t, _),
            ) => Some(t),
            _ => None,
        }
    }

    /// The recipient whose RCPT is being decided, with its parameters.
    pub fn pending_rcpt(&self) -> Option<&Rcpt> {
        match &self.state {
            State::Pending(Pending::Rcpt(_, _, rcpt)) => Some(rcpt),
            _ => None,
        }
    }

    /// The recipient whose RCPT is being decided.
    pub fn pending_recipient(&self) -> Option<&Mailbox> {
        match &self.state {
            State::Pending(Pending::Rcpt(_, _, rcpt)) => Some(&rcpt.address),
            _ => None,
        }
    }

    /// Facts about the received message, from the data stage until it is queued.
    pub fn message(&self) -> Option<MessageInfo> {
        match &self.state {
            State::Pending(Pending::Data(_, _, info) | Pending::Queue(_, _, info)) => Some(*info),
            _ => None,
        }
    }

    /// The `Received:` header for the message now being received.
    pub fn trace_header(&self, id: &str, date: SystemTime) -> String {
        let hello = self.hello();
        let txn = self.transaction();
        // RFC 3848 and RFC 6531: S for TLS, A for an authenticated client.
        let extended = hello.is_some_and(|h| h.kind == HelloKind::Ehlo);
        let utf8 = txn.is_some_and(|t| t.parameters.smtputf8);
        let protocol = match (extended, utf8, self.tls.is_some(), self.user.is_some()) {
            (false, ..) => "SMTP",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        };
        let recipient = match txn.map(|t| t.recipients.as_slice()) {
            Some([only]) => Some(&only.address),
            _ => None,
        };
        Trace {
            helo: hello.map_or("unknown", |h| h.name.as_str()),
            peer: self.connection.peer.ip(),
            host: &self.config.hostname,
            protocol,
            tls: self.tls.as_ref(),
            id,
            recipient,
            date,
        }
        .header()
    }
}

/// EHLO/HELO: a new greeting also resets any transaction (RFC 5321 section 4.1.4).
fn greeting(kind: HelloKind, name: String) -> (State, Step) {
    (
        State::Pending(Pending::Helo(Hello { kind, name })),
        Step::Check(Stage::Helo),
    )
}

/// DATA or BDAT without an accepted recipient: 554 when some were refused
/// (RFC 2920 section 3.1), else 503.
fn no_recipients(txn: &Transaction) -> Reply {
    if txn.refused > 0 {
        Reply::no_valid_recipients()
    } else {
        Reply::bad_sequence("need RCPT command")
    }
}

/// The end of the message's content, by DATA or the last BDAT chunk.
fn message_end(hello: Hello, txn: Transaction, outcome: DataOutcome) -> (State, Step) {
    let refusal = match outcome {
        DataOutcome::Complete(info) => {
            return (
                State::Pending(Pending::Data(hello, txn, info)),
                Step::Check(Stage::Data),
            );
        }
        DataOutcome::TooBig => Reply::message_too_big(),
        DataOutcome::BareLineEnding => Reply::bare_line_ending(),
        DataOutcome::LineTooLong => Reply::line_too_long_in_data(),
        DataOutcome::TooManyHops(hops) => Reply::too_many_hops(hops),
    };
    (State::Ready(hello), Step::Reply(refusal))
}

/// `postmaster@<our host name>`, any letter case.
fn is_postmaster_at(mailbox: &Mailbox, hostname: &str) -> bool {
    mailbox.local_part().eq_ignore_ascii_case("postmaster") && mailbox.domain().eq_ignore_ascii_case(hostname)
}

/// The state after a RCPT was refused: recipients accepted before still stand.
fn after_recipient(hello: Hello, txn: Transaction) -> State {
    if txn.recipients.is_empty() {
        State::Mail(hello, txn)
    } else {
        State::Rcpt(hello, txn)
    }
}

fn line_limit(line: &[u8]) -> usize {
    let is_mail = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL");
    if is_mail {
        MAX_COMMAND_LINE + MAIL_PARAMETER_ALLOWANCE
    } else {
        MAX_COMMAND_LINE
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::smtp::data::{BareLineEndings, Feed, LongLines};

    /// A queued message as the transcript driver saw it.
    #[derive(Debug)]
    struct Queued {
        reverse_path: String,
        recipients: Vec<String>,
        content: Vec<u8>,
    }

    fn config() -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_recipients: 3,
            data: DataPolicy {
                max_bytes: 100,
                bare_line_endings: BareLineEndings::Normalize,
                long_lines: LongLines::Reject,
                max_hops: 100,
            },
            max_errors: 20,
            max_idle_commands: 30,
            postmaster: Mailbox::parse("hostmaster@admin.test").unwrap(),
        })
    }

    fn connection() -> ConnectionInfo {
        ConnectionInfo {
            peer: "192.0.2.1:4000".parse().unwrap(),
            local: "192.0.2.2:25".parse().unwrap(),
            listener: "test".into(),
        }
    }

    /// A session that has accepted EHLO, MAIL and one RCPT, then DATA.
    fn receiving_data() -> Session {
        let (mut session, _) = Session::new(config(), connection());
        let _ = session.decide(Decision::Proceed);
        for line in [&b"EHLO c"[..], b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@y.test>"] {
            let _ = session.command(line);
            let _ = session.decide(Decision::Proceed);
        }
        assert!(matches!(session.command(b"DATA"), Step::ReceiveData(..)));
        session
    }

    /// Drives a session from client bytes, the way `server::connection`
    /// does, deciding stages with `policy`; returns what the server wrote
    /// and what it queued.
    fn transcript(input: &[u8], policy: impl Fn(Stage, &Session) -> Decision) -> (String, Vec<Queued>) {
        secure_transcript(Security::default(), input, policy, |_| AuthOutcome::Unavailable)
    }

    /// `transcript` on a listener offering `security`: STARTTLS succeeds
    /// at once (the input after it stands for what is sent inside TLS),
    /// and `auth` decides each AUTH attempt.
    fn secure_transcript(
        security: Security,
        input: &[u8],
        policy: impl Fn(Stage, &Session) -> Decision,
        auth: impl Fn(&AuthAttempt) -> AuthOutcome,
    ) -> (String, Vec<Queued>) {
        transcript_on(config(), security, input, policy, auth)
    }

    /// `secure_transcript` under another configuration.
    fn transcript_on(
        config: Arc<SessionConfig>,
        security: Security,
        input: &[u8],
        policy: impl Fn(Stage, &Session) -> Decision,
        auth: impl Fn(&AuthAttempt) -> AuthOutcome,
    ) -> (String, Vec<Queued>) {
        let (mut session, mut step) = Session::with_security(config, connection(), security, None);
        let mut output = Vec::new();
        let mut queued = Vec::new();
        let mut content = Vec::new();
        let mut rest = input;
        loop {
            step = match step {
                Step::Reply(reply) => {
                    reply.write_to(&mut output);
                    if session.transaction().is_none() {
                        // BDAT chunks collect here until the transaction ends.
                        content.clear();
                    }
                    let Some(line) = next_line(&mut rest) else {
                        break;
                    };
                    session.command(line)
                }
                Step::StartTls(reply) => {
                    reply.write_to(&mut output);
                    session.tls_started(TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "TLS13_AES_128_GCM_SHA256".into(),
                    });
                    let Some(line) = next_line(&mut rest) else {
                        break;
                    };
                    session.command(line)
                }
                Step::Authenticate(attempt) => session.auth_checked(auth(&attempt)),
                Step::Close(reply) => {
                    reply.write_to(&mut output);
                    break;
                }
                Step::Check(stage) => session.decide(policy(stage, &session)),
                Step::ReceiveData(reply, mut reader) => {
                    reply.write_to(&mut output);
                    content.clear();
                    match reader.feed(rest, &mut content) {
                        Feed::Done { consumed } => rest = &rest[consumed..],
                        Feed::More => break,
                    }
                    session.data_end(reader.outcome())
                }
                Step::ReceiveChunk(mut chunk) => {
                    match chunk.feed(rest, &mut content) {
                        Feed::Done { consumed } => rest = &rest[consumed..],
                        Feed::More => break,
                    }
                    session.chunk_end(chunk)
                }
                Step::DiscardChunk(size, reply) => {
                    let mut discard = crate::smtp::chunking::Discard::new(size);
                    let (consumed, done) = discard.feed(rest);
                    rest = &rest[consumed..];
                    if !done {
                        break;
                    }
                    reply.write_to(&mut output);
                    let Some(line) = next_line(&mut rest) else {
                        break;
                    };
                    session.command(line)
                }
                Step::Queue => {
                    let txn = session.transaction().unwrap();
                    queued.push(Queued {
                        reverse_path: txn.reverse_path.to_string(),
                        recipients: txn.addresses().map(ToString::to_string).collect(),
                        content: content.clone(),
                    });
                    session.queued(QueueOutcome::Queued(format!("Q{}", queued.len())))
                }
            };
        }
        (String::from_utf8(output).unwrap(), queued)
    }

    /// Takes one CRLF-terminated line off the front of `rest`.
    fn next_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        *rest = &rest[end + 2..];
        Some(line)
    }

    fn proceed(_: Stage, _: &Session) -> Decision {
        Decision::Proceed
    }

    /// Asserts the replies, one per line, code and enhanced code only.
    fn assert_codes(output: &str, expected: &[&str]) {
        let got: Vec<String> = output
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                let code = parts.next().unwrap_or("");
                match parts.next() {
                    Some(enh) if enh.chars().next().is_some_and(|c| c.is_ascii_digit()) && enh.contains('.') => {
                        format!("{code} {enh}")
                    }
                    _ => code.to_owned(),
                }
            })
            .collect();
        assert_eq!(got, expected, "full output:\n{output}");
    }

    /// Pieces of client input: real commands, line ends, DATA terminators
    /// and raw garbage, so that random sequences reach every state.
    fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"EHLO c\r\n".to_vec()),
            Just(b"HELO c\r\n".to_vec()),
            Just(b"MAIL FROM:<a@x.test>\r\n".to_vec()),
            Just(b"RCPT TO:<b@y.test>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            Just(b"STARTTLS\r\n".to_vec()),
            Just(b"AUTH PLAIN AGFsaWNlAHB3\r\n".to_vec()),
            Just(b"AUTH LOGIN\r\n".to_vec()),
            Just(b"*\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn no_input_panics_the_session(input in client_bytes(), secure in any::<bool>()) {
            let security = if secure { SUBMISSION } else { Security::default() };
            let (output, _) = secure_transcript(security, &input, proceed, check_password);
            // Every reply line is well formed.
            for line in output.split_terminator("\r\n") {
                prop_assert!(line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit), "{line:?}");
            }
        }
    }

    const SUBMISSION: Security = Security {
        starttls: true,
        auth: true,
        auth_required: true,
    };

    /// alice's password is "pw"; "blocked" is a client past its failures.
    fn check_password(attempt: &AuthAttempt) -> AuthOutcome {
        match (attempt.username.as_str(), attempt.password.as_slice()) {
            ("alice", b"pw") => AuthOutcome::Success,
            ("blocked", _) => AuthOutcome::Blocked,
            _ => AuthOutcome::Failure,
        }
    }

    fn base64(text: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn starttls_is_offered_in_clear_and_resets_the_session() {
        let input = format!(
            "EHLO c\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\nMAIL FROM:<a@x.test>\r\nEHLO c\r\nSTARTTLS\r\nQUIT\r\n",
            base64(b"\0alice\0pw")
        );
        let (out, _) = secure_transcript(SUBMISSION, input.as_bytes(), proceed, check_password);
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "538 5.7.11",
                "530 5.7.0",
                "220 2.0.0",
                "503 5.5.1",
                "250",
                "503 5.5.1",
                "221 2.0.0",
            ],
        );
        let ehlo_replies: Vec<&str> = out.split("250 CHUNKING\r\n").collect();
        assert!(
            ehlo_replies[0].contains("250-STARTTLS\r\n") && !ehlo_replies[0].contains("AUTH"),
            "{out}"
        );
        assert!(
            ehlo_replies[1].contains("250-AUTH PLAIN LOGIN\r\n") && !ehlo_replies[1].contains("STARTTLS"),
            "{out}"
        );
        assert!(out.contains("503 5.5.1 Error: send HELO/EHLO first"), "{out}");
        assert!(out.contains("503 5.5.1 Error: TLS already active"), "{out}");
    }

    #[test]
    fn starttls_is_refused_where_not_offered() {
        let (out, _) = transcript(b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN\r\n", proceed);
        assert!(!out.contains("STARTTLS"), "{out}");
        assert_codes(&out, &["220", "250", "502 5.5.1", "503 5.5.1"]);
    }

    #[test]
    fn auth_plain_and_login_in_every_form() {
        let plain = base64(b"\0alice\0pw");
        let alice = base64(b"alice");
        let pw = base64(b"pw");
        let cases = [
            format!("AUTH PLAIN {plain}\r\n"),
            format!("AUTH PLAIN\r\n{plain}\r\n"),
            format!("AUTH LOGIN\r\n{alice}\r\n{pw}\r\n"),
            format!("AUTH LOGIN {alice}\r\n{pw}\r\n"),
            format!("auth plain {}\r\n", base64(b"alice\0alice\0pw")),
        ];
        for auth in cases {
            let input =
                format!("STARTTLS\r\nEHLO c\r\n{auth}MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
            let (out, queued) = secure_transcript(SUBMISSION, input.as_bytes(), proceed, check_password);
            assert!(out.contains("235 2.7.0 Authentication successful\r\n"), "{auth}: {out}");
            assert!(out.ends_with("250 2.0.0 Ok: queued as Q1\r\n"), "{auth}: {out}");
            assert_eq!(queued.len(), 1);
        }
        let (out, _) = secure_transcript(
            SUBMISSION,
            format!("STARTTLS\r\nEHLO c\r\nAUTH LOGIN\r\n{alice}\r\n").as_bytes(),
            proceed,
            check_password,
        );
        assert!(out.ends_with("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"), "{out}");
    }

    #[test]
    fn auth_refusals() {
        let input = format!(
            "STARTTLS\r\nAUTH PLAIN\r\nEHLO c\r\nAUTH CRAM-MD5\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@x.test>\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\nRSET\r\nAUTH PLAIN {}\r\n",
            base64(b"\0alice\0wrong"),
            base64(b"bob\0alice\0pw"),
            base64(b"\0alice\0pw"),
            base64(b"\0alice\0pw"),
            base64(b"\0alice\0pw"),
            base64(b"\0alice\0pw"),
        );
        let (out, _) = secure_transcript(SUBMISSION, input.as_bytes(), proceed, check_password);
        assert_codes(
            &out,
            &[
                "220",
                "220 2.0.0",
                "503 5.5.1",
                "250",
                "504 5.5.4",
                "334",
                "501 5.7.0",
                "334",
                "501 5.5.2",
                "535 5.7.8",
                "501 5.5.2",
                "235 2.7.0",
                "250 2.1.0",
                "503 5.5.1",
                "503 5.5.1",
                "250 2.0.0",
                "503 5.5.1",
            ],
        );
        assert!(out.contains("AUTH not permitted during a mail transaction"), "{out}");
        assert!(out.contains("already authenticated"), "{out}");
    }

    #[test]
    fn too_many_auth_failures_close_the_connection() {
        let input = format!(
            "STARTTLS\r\nEHLO c\r\nAUTH PLAIN {}\r\nNOOP\r\n",
            base64(b"\0blocked\0pw")
        );
        let (out, _) = secure_transcript(SUBMISSION, input.as_bytes(), proceed, check_password);
        assert_codes(&out, &["220", "220 2.0.0", "250", "421 4.7.0"]);
    }

    #[test]
    fn authenticated_sessions_are_traced_as_esmtpsa() {
        let (mut session, _) = Session::with_security(config(), connection(), SUBMISSION, None);
        let _ = session.decide(Decision::Proceed);
        assert!(matches!(session.command(b"STARTTLS"), Step::StartTls(_)));
        session.tls_started(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        });
        let _ = session.command(b"EHLO c.test");
        let _ = session.decide(Decision::Proceed);
        let Step::Authenticate(attempt) = session.command(format!("AUTH PLAIN {}", base64(b"\0alice\0pw")).as_bytes())
        else {
            panic!("AUTH must ask for a check")
        };
        assert_eq!(
            format!("{attempt:?}"),
            "AuthAttempt { mechanism: \"PLAIN\", username: \"alice\", password: \"<redacted>\" }"
        );
        let _ = session.auth_checked(AuthOutcome::Success);
        assert_eq!(session.authenticated(), Some("alice"));
        let _ = session.command(b"MAIL FROM:<a@x.test>");
        let _ = session.decide(Decision::Proceed);
        let header = session.trace_header("ID1", std::time::UNIX_EPOCH);
        assert!(
            header.contains("(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)"),
            "{header}"
        );
        assert!(header.contains("with ESMTPSA id ID1"), "{header}");
    }

    #[test]
    fn too_many_errors_close_the_connection() {
        // config(): 20 error replies are answered; the 21st closes.
        let input = "FOO\r\n".repeat(25);
        let (out, _) = transcript(input.as_bytes(), proceed);
        let mut expected = vec!["220"];
        expected.extend(std::iter::repeat_n("500 5.5.2", 20));
        expected.push("421 4.7.0");
        assert_codes(&out, &expected);
        assert!(out.ends_with("421 4.7.0 mx.test Error: too many errors\r\n"), "{out}");
    }

    #[test]
    fn recipients_past_the_limit_do_not_end_the_session() {
        // 3 recipients and 2 errors allowed: 3 extra recipients are refused
        // with 452 4.5.3 without counting as errors, and DATA delivers to
        // the first 3 (RFC 5321 section 4.5.3.1.10).
        let mut config = (*config()).clone();
        config.max_errors = 2;
        let config = Arc::new(config);
        let rcpts = |n: usize| {
            let mut input = String::from("EHLO c\r\nMAIL FROM:<a@x.test>\r\n");
            for i in 0..n {
                input.push_str(&format!("RCPT TO:<r{i}@y.test>\r\n"));
            }
            input.push_str("DATA\r\nx\r\n.\r\n");
            input
        };
        let run = |input: String| {
            let auth = |_: &AuthAttempt| AuthOutcome::Unavailable;
            transcript_on(
                Arc::clone(&config),
                Security::default(),
                input.as_bytes(),
                proceed,
                auth,
            )
        };
        let (out, queued) = run(rcpts(6));
        assert_eq!(out.matches("452 4.5.3").count(), 3, "{out}");
        assert!(!out.contains("421"), "{out}");
        assert_eq!(queued[0].recipients, ["r0@y.test", "r1@y.test", "r2@y.test"]);
        // A flood far past the limit still ends at the error cap.
        let (out, queued) = run(rcpts(20));
        assert!(queued.is_empty());
        assert!(out.ends_with("421 4.7.0 mx.test Error: too many errors\r\n"), "{out}");
    }

    #[test]
    fn a_repeated_recipient_is_accepted_and_kept_once() {
        let input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<b@Y.TEST>\r\nRCPT TO:<B@y.test>\r\nDATA\r\nx\r\n.\r\n";
        let (out, queued) = transcript(input, proceed);
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.1.5",
                "250 2.1.5",
                "354",
                "250 2.0.0",
            ],
        );
        // The local part is compared as given: B@ and b@ are two mailboxes.
        assert_eq!(queued[0].recipients, ["b@y.test", "B@y.test"]);
    }

    #[test]
    fn postmaster_goes_to_the_configured_address() {
        let input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<PostMaster>\r\nRCPT TO:<postmaster@MX.test>\r\nDATA\r\nx\r\n.\r\n";
        let (_, queued) = transcript(input, |stage, session| {
            // The driver's relay check would let only the postmaster through.
            if stage == Stage::Rcpt && !session.pending_is_postmaster() {
                return Decision::Refuse(Reply::relay_denied());
            }
            Decision::Proceed
        });
        assert_eq!(queued[0].recipients, ["hostmaster@admin.test"]);
    }

    #[test]
    fn mail_loops_are_refused_at_the_end_of_data() {
        let mut config = (*config()).clone();
        config.data.max_hops = 3;
        let hops = |n: usize| {
            let mut input = String::from("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
            input.push_str(&"Received: x\r\n".repeat(n));
            input.push_str("\r\nbody\r\n.\r\nQUIT\r\n");
            input
        };
        let run = |input: String| {
            transcript_on(
                Arc::new(config.clone()),
                Security::default(),
                input.as_bytes(),
                proceed,
                |_| AuthOutcome::Unavailable,
            )
        };
        let (out, queued) = run(hops(4));
        assert!(queued.is_empty());
        assert!(
            out.contains("554 5.4.6 Too many hops (4 Received header fields)"),
            "{out}"
        );
        let (_, queued) = run(hops(3));
        assert_eq!(queued.len(), 1);
    }

    #[test]
    fn bdat_chunks_make_the_same_message_as_data() {
        let chunked = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 12\r\nSubject: a\r\nBDAT 9\r\n\r\n.body\r\nBDAT 0 LAST\r\nQUIT\r\n";
        let (out, by_bdat) = transcript(chunked, proceed);
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "250 2.0.0",
                "250 2.0.0",
                "221 2.0.0",
            ],
        );
        assert!(out.contains("250 2.0.0 12 octets received\r\n"), "{out}");
        let dotted =
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: a\r\n\r\n..body\r\n.\r\n";
        let (_, by_data) = transcript(dotted, proceed);
        assert_eq!(by_bdat[0].content, by_data[0].content);
        assert_eq!(by_bdat[0].content, b"Subject: a\r\n\r\n.body\r\n");
    }

    #[test]
    fn bdat_errors_consume_the_chunk() {
        // Before MAIL, before RCPT, after a refused chunk, and mixed with DATA:
        // each chunk's octets are read and thrown away, never taken as commands.
        let input = b"EHLO c\r\nBDAT 6\r\nQUIT\r\nMAIL FROM:<a@x.test>\r\nBDAT 6 LAST\r\nQUIT\r\n\
RCPT TO:<b@y.test>\r\nBDAT 200\r\n"
            .to_vec();
        let mut input = input;
        input.extend(std::iter::repeat_n(b'Q', 200));
        input.extend_from_slice(
            b"BDAT 4 LAST\r\nQUITRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3\r\nabcDATA\r\nNOOP\r\n",
        );
        let (out, queued) = transcript(&input, proceed);
        assert!(queued.is_empty());
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "503 5.5.1",
                "250 2.1.0",
                "503 5.5.1",
                "250 2.1.5",
                "552 5.3.4",
                "503 5.5.1",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "503 5.5.1",
                "250 2.0.0",
            ],
        );
    }

    #[test]
    fn empty_reverse_path_is_a_syntax_error() {
        let (out, _) = transcript(b"EHLO c\r\nMAIL FROM:\r\nMAIL FROM: \r\nMAIL FROM:<>\r\n", proceed);
        assert_codes(&out, &["220", "250", "501 5.5.4", "501 5.5.4", "250 2.1.0"]);
    }

    #[test]
    fn requiretls_only_inside_tls_and_dsn_parameters_are_kept() {
        let (out, _) = transcript(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\n", proceed);
        assert!(out.contains("530 5.7.10"), "{out}");
        assert!(!out.contains("REQUIRETLS\r\n"), "offered in clear: {out}");
        let (mut session, _) = Session::with_security(
            config(),
            connection(),
            Security::default(),
            Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
        );
        let _ = session.decide(Decision::Proceed);
        let Step::Check(_) = session.command(b"EHLO c") else {
            panic!()
        };
        let Step::Reply(ehlo) = session.decide(Decision::Proceed) else {
            panic!()
        };
        assert!(ehlo.lines().iter().any(|l| l == "REQUIRETLS"), "{ehlo:?}");
        assert!(ehlo.lines().iter().any(|l| l == "DSN") && ehlo.lines().iter().any(|l| l == "CHUNKING"));
        let _ = session.command(b"MAIL FROM:<a@x.test> REQUIRETLS RET=HDRS ENVID=e+2B1");
        let _ = session.decide(Decision::Proceed);
        let _ = session.command(b"RCPT TO:<b@y.test> NOTIFY=NEVER ORCPT=rfc822;b@y.test");
        let _ = session.decide(Decision::Proceed);
        let txn = session.transaction().unwrap();
        assert!(txn.parameters.requiretls);
        assert_eq!(txn.parameters.dsn.envid.as_deref(), Some("e+1"));
        assert!(!txn.recipients[0].dsn.wants_failure());
        assert_eq!(txn.recipients[0].dsn.orcpt.as_ref().unwrap().address, "b@y.test");
    }

    #[test]
    fn errors_are_forgiven_when_a_message_is_queued() {
        let mut input = "FOO\r\n".repeat(15);
        input.push_str("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
        input.push_str(&"FOO\r\n".repeat(15));
        let (out, queued) = transcript(input.as_bytes(), proceed);
        assert_eq!(queued.len(), 1);
        assert!(!out.contains("421"), "{out}");
    }

    #[test]
    fn too_many_commands_without_a_transaction_close_the_connection() {
        // config(): 30 such commands are answered; the 31st closes.
        let input = "NOOP\r\n".repeat(31);
        let (out, _) = transcript(input.as_bytes(), proceed);
        assert_eq!(out.matches("250 2.0.0 Ok\r\n").count(), 30, "{out}");
        assert!(
            out.ends_with("421 4.7.0 mx.test Error: too many commands without a transaction\r\n"),
            "{out}"
        );
        // Transactions do not count.
        let message = "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n";
        let input = format!("EHLO c\r\n{}", message.repeat(40));
        let (out, queued) = transcript(input.as_bytes(), proceed);
        assert_eq!(queued.len(), 40);
        assert!(!out.contains("421"), "{out}");
    }

    #[test]
    fn full_transaction_is_queued() {
        let (out, queued) = transcript(
            b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
            proceed,
        );
        assert!(out.starts_with("220 mx.test ESMTP mailgate\r\n250-mx.test greets client.test\r\n250-PIPELINING\r\n250-SIZE 100\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 CHUNKING\r\n"));
        assert_codes(
            &out,
            &["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
        );
        assert!(out.contains("250 2.0.0 Ok: queued as Q1\r\n"));
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].reverse_path, "a@x.test");
        assert_eq!(queued[0].recipients, ["b@y.test"]);
        assert_eq!(queued[0].content, b"Subject: hi\r\n\r\nbody\r\n");
    }

    #[test]
    fn helo_gives_a_plain_reply() {
        let (out, _) = transcript(b"HELO client.test\r\nQUIT\r\n", proceed);
        assert_eq!(out, "220 mx.test ESMTP mailgate\r\n250 mx.test\r\n221 2.0.0 Bye\r\n");
    }

    #[test]
    fn commands_out_of_sequence_get_503() {
        let (out, _) = transcript(
            b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nRCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "503 5.5.1",
                "250",
                "503 5.5.1",
                "503 5.5.1",
                "250 2.1.0",
                "503 5.5.1",
                "503 5.5.1",
                "221 2.0.0",
            ],
        );
        assert!(out.contains("503 5.5.1 Error: send HELO/EHLO first"));
        assert!(out.contains("503 5.5.1 Error: need MAIL command"));
        assert!(out.contains("503 5.5.1 Error: need RCPT command"));
        assert!(out.contains("503 5.5.1 Error: nested MAIL command"));
    }

    #[test]
    fn unknown_syntax_and_parameter_errors() {
        let (out, _) = transcript(
            b"EHLO c\r\nFROB\r\nMAIL FROM:<a@x.test> FOO=BAR\r\nMAIL TO:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> FOO\r\nRCPT TO:<nobody>\r\nEXPN list\r\nQUIT\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "500 5.5.2",
                "555 5.5.4",
                "501 5.5.4",
                "250 2.1.0",
                "555 5.5.4",
                "501 5.1.3",
                "502 5.5.1",
                "221 2.0.0",
            ],
        );
    }

    #[test]
    fn commands_are_case_insensitive() {
        let (out, queued) = transcript(
            b"ehlo c\r\nmail from:<a@x.test>\r\nrcpt to:<b@y.test>\r\ndata\r\nx\r\n.\r\nquit\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"],
        );
        assert_eq!(queued.len(), 1);
    }

    #[test]
    fn rset_noop_vrfy_help() {
        let (out, _) = transcript(
            b"RSET\r\nNOOP\r\nEHLO c\r\nMAIL FROM:<a@x.test>\r\nRSET\r\nRCPT TO:<b@y.test>\r\nVRFY a\r\nHELP\r\nQUIT\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250 2.0.0",
                "250 2.0.0",
                "250",
                "250 2.1.0",
                "250 2.0.0",
                "503 5.5.1",
                "252 2.0.0",
                "214 2.0.0",
                "221 2.0.0",
            ],
        );
    }

    #[test]
    fn recipient_cap_gives_452() {
        let (out, queued) = transcript(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<1@y.test>\r\nRCPT TO:<2@y.test>\r\nRCPT TO:<3@y.test>\r\nRCPT TO:<4@y.test>\r\nDATA\r\nx\r\n.\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.1.5",
                "250 2.1.5",
                "452 4.5.3",
                "354",
                "250 2.0.0",
            ],
        );
        assert_eq!(queued[0].recipients.len(), 3);
    }

    #[test]
    fn size_limits_at_mail_and_in_data() {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=101\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 200));
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (out, queued) = transcript(&input, proceed);
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "552 5.3.4",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "552 5.3.4",
                "250 2.0.0",
            ],
        );
        assert!(queued.is_empty());
    }

    #[test]
    fn overlong_command_line_gets_500_and_session_survives() {
        let mut input = b"NOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 600));
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let (out, _) = transcript(&input, proceed);
        assert_codes(&out, &["220", "500 5.5.6", "250 2.0.0"]);
        // A MAIL line may use the parameter allowance.
        let mut line = format!("MAIL FROM:<{}@x.test> SIZE=10 BODY=8BITMIME SMTPUTF8", "a".repeat(200));
        line.push_str(&" ".repeat(540 - line.len()));
        let (out, _) = transcript(format!("EHLO c\r\n{line}\r\n").as_bytes(), proceed);
        assert_codes(&out, &["220", "250", "250 2.1.0"]);
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let (out, queued) = transcript(
            "EHLO c\r\nMAIL FROM:<jos\u{e9}@x.test>\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<jos\u{e9}@y.test>\r\nRSET\r\nMAIL FROM:<jos\u{e9}@x.test> SMTPUTF8\r\nRCPT TO:<jos\u{e9}@y.test>\r\nDATA\r\nx\r\n.\r\n".as_bytes(),
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "553 5.6.7",
                "250 2.1.0",
                "553 5.6.7",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "250 2.0.0",
            ],
        );
        assert_eq!(queued[0].recipients, ["jos\u{e9}@y.test"]);
    }

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let (out, queued) = transcript(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n1\r\n.\r\nMAIL FROM:<d@x.test>\r\nRCPT TO:<e@y.test>\r\nDATA\r\n2\r\n.\r\nQUIT\r\n",
            proceed,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.1.5",
                "354",
                "250 2.0.0",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "250 2.0.0",
                "221 2.0.0",
            ],
        );
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[1].content, b"2\r\n");
    }

    #[test]
    fn data_after_all_recipients_refused_gets_554() {
        let policy = |stage: Stage, session: &Session| match stage {
            Stage::Rcpt
                if session
                    .pending_recipient()
                    .is_some_and(|r| r.domain() == "blocked.test") =>
            {
                Decision::Refuse(Reply::relay_denied())
            }
            _ => Decision::Proceed,
        };
        let (out, queued) = transcript(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@blocked.test>\r\nDATA\r\nRCPT TO:<b@ok.test>\r\nRCPT TO:<c@blocked.test>\r\nDATA\r\nx\r\n.\r\n",
            policy,
        );
        assert_codes(
            &out,
            &[
                "220",
                "250",
                "250 2.1.0",
                "554 5.7.1",
                "554 5.5.1",
                "250 2.1.5",
                "554 5.7.1",
                "354",
                "250 2.0.0",
            ],
        );
        assert_eq!(queued[0].recipients, ["b@ok.test"]);
    }

    #[test]
    fn refusals_and_disconnects_at_each_stage() {
        let refuse_data = |stage: Stage, _: &Session| match stage {
            Stage::Data => Decision::Refuse(Reply::new(550, crate::smtp::reply::EnhancedCode::new(5, 7, 1), "no")),
            _ => Decision::Proceed,
        };
        let (out, queued) = transcript(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@x.test>\r\n",
            refuse_data,
        );
        assert_codes(
            &out,
            &["220", "250", "250 2.1.0", "250 2.1.5", "354", "550 5.7.1", "250 2.1.0"],
        );
        assert!(queued.is_empty());

        let refuse_connect = |_: Stage, _: &Session| Decision::Refuse(Reply::unavailable("mx.test"));
        let (out, _) = transcript(b"EHLO c\r\n", refuse_connect);
        assert_codes(&out, &["421 4.3.2"]);

        let drop_on_mail = |stage: Stage, _: &Session| match stage {
            Stage::Mail => Decision::Disconnect(Reply::new(421, crate::smtp::reply::EnhancedCode::new(4, 7, 0), "bye")),
            _ => Decision::Proceed,
        };
        let (out, _) = transcript(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nNOOP\r\n", drop_on_mail);
        assert_codes(&out, &["220", "250", "421 4.7.0"]);
    }

    #[test]
    fn timeout_and_shutdown_close_with_421() {
        let (mut session, _) = Session::new(config(), connection());
        let _ = session.decide(Decision::Proceed);
        let Step::Close(reply) = session.timeout() else {
            panic!("timeout must close")
        };
        assert_eq!(reply.one_line(), "421 4.4.2 mx.test Error: timeout exceeded");
        let (mut session, _) = Session::new(config(), connection());
        let _ = session.decide(Decision::Proceed);
        let Step::Close(reply) = session.shutdown() else {
            panic!("shutdown must close")
        };
        assert_eq!(
            reply.one_line(),
            "421 4.3.2 mx.test Service not available, closing transmission channel"
        );
    }

    #[test]
    fn data_outcomes_map_to_their_replies() {
        for (outcome, expected) in [
            (DataOutcome::TooBig, "552 5.3.4"),
            (DataOutcome::BareLineEnding, "550 5.6.0"),
            (DataOutcome::LineTooLong, "550 5.6.0"),
        ] {
            let mut session = receiving_data();
            let Step::Reply(reply) = session.data_end(outcome) else {
                panic!("{outcome:?}")
            };
            assert!(reply.one_line().starts_with(expected), "{outcome:?}: {reply}");
            // The transaction is over: RCPT needs a new MAIL.
            let Step::Reply(reply) = session.command(b"RCPT TO:<b@y.test>") else {
                panic!("RCPT must reply")
            };
            assert_eq!(reply.code(), 503);
        }
    }

    #[test]
    fn spool_failure_gives_451() {
        let mut session = receiving_data();
        let _ = session.data_end(DataOutcome::Complete(MessageInfo {
            size: 1,
            eight_bit: false,
            hops: 0,
            tls_optional: false,
        }));
        assert!(matches!(session.decide(Decision::Proceed), Step::Queue));
        let Step::Reply(reply) = session.queued(QueueOutcome::Failed) else {
            panic!("queued must reply")
        };
        assert_eq!(reply.one_line(), "451 4.3.0 Error: local error in processing");
    }

    #[test]
    fn ehlo_resets_the_transaction() {
        let (out, _) = transcript(
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nEHLO d\r\nRCPT TO:<b@y.test>\r\n",
            proceed,
        );
        assert_codes(&out, &["220", "250", "250 2.1.0", "250", "503 5.5.1"]);
    }

    #[test]
    fn trace_header_names_single_recipient_and_protocol() {
        let connection = ConnectionInfo {
            peer: "[2001:db8::1]:4000".parse().unwrap(),
            local: "[2001:db8::2]:25".parse().unwrap(),
            listener: "test".into(),
        };
        let (mut session, _) = Session::new(config(), connection);
        let _ = session.decide(Decision::Proceed);
        let _ = session.command(b"EHLO c.test");
        let _ = session.decide(Decision::Proceed);
        let _ = session.command(b"MAIL FROM:<a@x.test> SMTPUTF8");
        let _ = session.decide(Decision::Proceed);
        let _ = session.command(b"RCPT TO:<b@y.test>");
        let _ = session.decide(Decision::Proceed);
        let header = session.trace_header("ID1", std::time::UNIX_EPOCH);
        assert!(header.starts_with("Received: from c.test ([IPv6:2001:db8::1])\r\n\tby mx.test (mailgate) with UTF8SMTP id ID1\r\n\tfor <b@y.test>;"), "{header}");
    }
}
