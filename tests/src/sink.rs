//! `SinkServer`: a real SMTP server on loopback that records what the
//! gateway relays. Its DATA parsing is written independently of the
//! gateway's, so a bug in one cannot hide a bug in the other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One message as the sink received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The MAIL FROM path, without brackets (empty for the null sender).
    pub mail_from: String,
    /// The parameters of MAIL FROM, as sent.
    pub mail_params: String,
    /// The accepted RCPT TO paths, without brackets.
    pub rcpt_to: Vec<String>,
    /// The parameters of each accepted RCPT TO, as sent.
    pub rcpt_params: Vec<String>,
    /// The content came in BDAT chunks (RFC 3030), not after DATA.
    pub bdat: bool,
    /// The DATA section as it crossed the wire, final `.` line included.
    pub raw: Vec<u8>,
    /// The content with dot-stuffing undone and the final `.` line removed.
    pub content: Vec<u8>,
    /// It arrived inside TLS.
    pub tls: bool,
    /// The user the client authenticated as.
    pub auth: Option<String>,
    /// Which connection it came on (1 for the first the sink accepted).
    pub connection: usize,
}

impl Received {
    /// The content as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.content).into_owned()
    }

    /// The content with the first header removed if it is our `Received:`
    /// trace header (and its continuation lines).
    pub fn without_trace(&self) -> Vec<u8> {
        let content = &self.content;
        if !content.starts_with(b"Received: ") {
            return content.clone();
        }
        let mut pos = 0;
        loop {
            let Some(end) = content[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Vec::new();
            };
            pos += end + 2;
            if !matches!(content.get(pos), Some(b' ' | b'\t')) {
                return content[pos..].to_vec();
            }
        }
    }
}

/// How the sink answers; change it while tests run.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Replies for specific recipients (lower case), e.g. `"550 5.1.1 no such user"`.
    pub rcpt_replies: HashMap<String, String>,
    /// Answer `451 4.3.0` to this many MAIL commands, then accept.
    pub tempfail_mail: usize,
    /// Close this many connections right after accepting them, then serve.
    pub drop_connections: usize,
    /// Offer PIPELINING.
    pub pipelining: bool,
    /// Offer 8BITMIME and SMTPUTF8.
    pub eight_bit: bool,
    /// Answer MAIL with this (every time) instead of 250.
    pub mail_reply: Option<String>,
    /// Close the connection right after accepting each message.
    pub close_after_message: bool,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN and LOGIN (inside TLS only) and require it for
    /// MAIL, accepting this user name and password.
    pub auth: Option<(String, String)>,
    /// Refuse EHLO (a pre-ESMTP server): only HELO works.
    pub refuse_ehlo: bool,
    /// Offer only AUTH LOGIN (not PLAIN).
    pub auth_login_only: bool,
    /// Hold each transaction this long before answering the final dot
    /// (to observe concurrency).
    pub data_delay: std::time::Duration,
    /// Offer DSN (RFC 3461).
    pub dsn: bool,
    /// Offer CHUNKING (RFC 3030) and take BDAT.
    pub chunking: bool,
    /// Offer REQUIRETLS (RFC 8689) inside TLS.
    pub requiretls: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            rcpt_replies: HashMap::new(),
            tempfail_mail: 0,
            drop_connections: 0,
            pipelining: true,
            eight_bit: true,
            mail_reply: None,
            close_after_message: false,
            tls: None,
            auth: None,
            auth_login_only: false,
            refuse_ehlo: false,
            data_delay: std::time::Duration::ZERO,
            dsn: false,
            chunking: false,
            requiretls: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<Received>,
    connections: usize,
    mail_commands: usize,
    active_transactions: usize,
    max_active_transactions: usize,
    auth_failures: usize,
}

impl State {
    /// A transaction ended with this message.
    fn received(&mut self, message: Received) {
        self.messages.push(message);
        self.active_transactions -= 1;
    }
}

/// The recording SMTP server.
#[derive(Debug)]
pub struct SinkServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    behavior: Arc<Mutex<Behavior>>,
    task: JoinHandle<()>,
}

impl SinkServer {
    /// Starts a sink on 127.0.0.1 with a free port.
    pub async fn start() -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts a sink on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.context("binding the sink")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let behavior = Arc::new(Mutex::new(Behavior::default()));
        let task = {
            let (state, behavior) = (Arc::clone(&state), Arc::clone(&behavior));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (state, behavior) = (Arc::clone(&state), Arc::clone(&behavior));
                    tokio::spawn(async move {
                        let _ = serve(stream, state, behavior).await;
                    });
                }
            })
        };
        Ok(Self {
            addr,
            state,
            behavior,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how it answers.
    pub fn behave(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut lock(&self.behavior));
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.state).messages.clone()
    }

    /// How many messages were received.
    pub fn count(&self) -> usize {
        lock(&self.state).messages.len()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// How many MAIL commands were seen (each delivery attempt sends one).
    pub fn mail_commands(&self) -> usize {
        lock(&self.state).mail_commands
    }

    /// The most transactions (MAIL to the final reply) that were in
    /// progress at once.
    pub fn max_concurrent_transactions(&self) -> usize {
        lock(&self.state).max_active_transactions
    }

    /// How many AUTH attempts failed.
    pub fn auth_failures(&self) -> usize {
        lock(&self.state).auth_failures
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection before or after STARTTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, behavior: Arc<Mutex<Behavior>>) -> Result<()> {
    // Behavior before state, always (as at MAIL): the other order deadlocks.
    let dropped = {
        let mut b = lock(&behavior);
        let dropped = b.drop_connections > 0;
        b.drop_connections = b.drop_connections.saturating_sub(1);
        dropped
    };
    let connection = {
        let mut state = lock(&state);
        state.connections += 1;
        state.connections
    };
    if dropped {
        return Ok(());
    }
    let mut stream: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    stream.get_mut().write_all(b"220 sink.test ESMTP test sink\r\n").await?;
    let mut mail_from = String::new();
    let mut mail_params = String::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut rcpt_params: Vec<String> = Vec::new();
    let mut chunks: Vec<u8> = Vec::new();
    let mut in_transaction = false;
    let mut tls = false;
    let mut user: Option<String> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            if in_transaction {
                lock(&state).active_transactions -= 1;
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let upper = text.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") && lock(&behavior).refuse_ehlo {
            "502 5.5.1 EHLO not supported".into()
        } else if upper.starts_with("EHLO") {
            let b = lock(&behavior).clone();
            let mut reply = String::from("250-sink.test\r\n");
            if b.pipelining {
                reply.push_str("250-PIPELINING\r\n");
            }
            if b.eight_bit {
                reply.push_str("250-8BITMIME\r\n250-SMTPUTF8\r\n");
            }
            if b.dsn {
                reply.push_str("250-DSN\r\n");
            }
            if b.chunking {
                reply.push_str("250-CHUNKING\r\n");
            }
            if b.requiretls && tls {
                reply.push_str("250-REQUIRETLS\r\n");
            }
            if b.tls.is_some() && !tls {
                reply.push_str("250-STARTTLS\r\n");
            }
            if b.auth.is_some() && tls {
                reply.push_str(if b.auth_login_only {
                    "250-AUTH LOGIN\r\n"
                } else {
                    "250-AUTH PLAIN LOGIN\r\n"
                });
            }
            reply.push_str("250 SIZE 100000000");
            reply
        } else if upper == "STARTTLS" {
            let config = lock(&behavior).tls.clone();
            match config {
                Some(config) if !tls => {
                    stream.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                    // Anything pipelined after STARTTLS is discarded.
                    let plain = stream.into_inner();
                    let secured = tokio_rustls::TlsAcceptor::from(config).accept(plain).await?;
                    stream = BufReader::new(Box::new(secured));
                    tls = true;
                    user = None;
                    in_transaction = false;
                    continue;
                }
                _ => "502 5.5.1 not available".into(),
            }
        } else if upper.starts_with("AUTH ") {
            let expected = lock(&behavior).auth.clone();
            match expected {
                Some((name, password)) if tls => {
                    let given = authenticate(&mut stream, &text).await?;
                    if given == Some((name.clone(), password)) {
                        user = Some(name);
                        "235 2.7.0 authenticated".into()
                    } else {
                        lock(&state).auth_failures += 1;
                        "535 5.7.8 authentication credentials invalid".into()
                    }
                }
                _ => "503 5.5.1 AUTH not available".into(),
            }
        } else if upper.starts_with("HELO") {
            "250 sink.test".into()
        } else if upper.starts_with("MAIL FROM:") {
            let mut b = lock(&behavior);
            lock(&state).mail_commands += 1;
            if b.auth.is_some() && user.is_none() {
                "530 5.7.0 authentication required".into()
            } else if b.tempfail_mail > 0 {
                b.tempfail_mail -= 1;
                "451 4.3.0 try again later".into()
            } else if let Some(reply) = &b.mail_reply {
                reply.clone()
            } else {
                let (path, params) = split_path(&text["MAIL FROM:".len()..]);
                mail_from = path;
                mail_params = params;
                rcpt_to.clear();
                rcpt_params.clear();
                chunks.clear();
                if !in_transaction {
                    let mut state = lock(&state);
                    state.active_transactions += 1;
                    state.max_active_transactions = state.max_active_transactions.max(state.active_transactions);
                }
                in_transaction = true;
                "250 2.1.0 ok".into()
            }
        } else if upper.starts_with("RCPT TO:") && !in_transaction {
            "503 5.5.1 need MAIL".into()
        } else if upper.starts_with("RCPT TO:") {
            let (path, params) = split_path(&text["RCPT TO:".len()..]);
            let configured = lock(&behavior).rcpt_replies.get(&path.to_lowercase()).cloned();
            match configured {
                Some(reply) => reply,
                None => {
                    rcpt_to.push(path);
                    rcpt_params.push(params);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper.starts_with("BDAT ") && lock(&behavior).chunking {
            let mut words = upper.split_whitespace().skip(1);
            let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0u8; size];
            stream.read_exact(&mut chunk).await?;
            chunks.extend_from_slice(&chunk);
            if !in_transaction || rcpt_to.is_empty() {
                "503 5.5.1 need RCPT".into()
            } else if !last {
                format!("250 2.0.0 {size} octets received")
            } else {
                let content = std::mem::take(&mut chunks);
                lock(&state).received(Received {
                    mail_from: mail_from.clone(),
                    mail_params: mail_params.clone(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    rcpt_params: std::mem::take(&mut rcpt_params),
                    bdat: true,
                    raw: content.clone(),
                    content,
                    tls,
                    auth: user.clone(),
                    connection,
                });
                in_transaction = false;
                "250 2.0.0 ok: queued".into()
            }
        } else if upper == "DATA" {
            if !in_transaction {
                "503 5.5.1 need MAIL".into()
            } else if rcpt_to.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                stream.get_mut().write_all(b"354 go ahead\r\n").await?;
                let raw = read_data(&mut stream).await?;
                let content = unstuff(&raw);
                let delay = lock(&behavior).data_delay;
                tokio::time::sleep(delay).await;
                lock(&state).received(Received {
                    mail_from: mail_from.clone(),
                    mail_params: mail_params.clone(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    rcpt_params: std::mem::take(&mut rcpt_params),
                    bdat: false,
                    raw,
                    content,
                    tls,
                    auth: user.clone(),
                    connection,
                });
                in_transaction = false;
                if lock(&behavior).close_after_message {
                    stream.get_mut().write_all(b"250 2.0.0 ok: queued\r\n").await?;
                    return Ok(());
                }
                "250 2.0.0 ok: queued".into()
            }
        } else if upper == "RSET" {
            rcpt_to.clear();
            if in_transaction {
                lock(&state).active_transactions -= 1;
            }
            in_transaction = false;
            "250 2.0.0 ok".into()
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            stream.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            if in_transaction {
                lock(&state).active_transactions -= 1;
            }
            return Ok(());
        } else {
            "500 5.5.2 unrecognized".into()
        };
        stream.get_mut().write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Reads AUTH PLAIN (initial response) or LOGIN; the user and password.
async fn authenticate(stream: &mut BufReader<Box<dyn Io>>, command: &str) -> Result<Option<(String, String)>> {
    use base64::Engine as _;
    let decode = |text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut words = command.split_whitespace().skip(1);
    let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
    match mechanism.as_str() {
        "PLAIN" => {
            let Some(token) = words.next().and_then(decode) else {
                return Ok(None);
            };
            let mut parts = token.split('\0').skip(1);
            Ok(parts
                .next()
                .zip(parts.next())
                .map(|(u, p)| (u.to_owned(), p.to_owned())))
        }
        "LOGIN" => {
            let mut answers = Vec::new();
            for prompt in ["VXNlcm5hbWU6", "UGFzc3dvcmQ6"] {
                stream
                    .get_mut()
                    .write_all(format!("334 {prompt}\r\n").as_bytes())
                    .await?;
                let mut line = String::new();
                stream.read_line(&mut line).await?;
                answers.push(decode(&line).unwrap_or_default());
            }
            Ok(Some((answers[0].clone(), answers[1].clone())))
        }
        _ => Ok(None),
    }
}

fn split_path(rest: &str) -> (String, String) {
    let rest = rest.trim_start();
    match (rest.find('<'), rest.find('>')) {
        (Some(open), Some(close)) if open < close => {
            (rest[open + 1..close].to_owned(), rest[close + 1..].trim().to_owned())
        }
        _ => (rest.to_owned(), String::new()),
    }
}

/// Reads until a line that is exactly `.` terminated by CRLF, at the start
/// of the data or after a CRLF. Reads line by line, so commands a client
/// pipelines after the final dot (Postfix sends QUIT that way) stay
/// buffered for the command loop.
async fn read_data(stream: &mut BufReader<Box<dyn Io>>) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            anyhow::bail!("connection closed during DATA");
        }
        raw.extend_from_slice(&line);
        let at_line_start = raw.len() == line.len() || raw[..raw.len() - line.len()].ends_with(b"\r\n");
        if line == b".\r\n" && at_line_start {
            return Ok(raw);
        }
    }
}

/// Removes the final `.` line and one leading dot from every line.
fn unstuff(raw: &[u8]) -> Vec<u8> {
    let body = raw.strip_suffix(b".\r\n").unwrap_or(raw);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}
