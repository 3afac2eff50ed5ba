//! Milters for the tests: Debian's OpenDKIM and rspamd (its proxy worker
//! in milter mode), started on free loopback ports and stopped when
//! dropped, and `TestMilter`, a scripted milter that records what it is
//! sent and answers from markers in the message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailgate::milter::protocol::{self, Packet, action, command, response};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::free_port;

async fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Child) -> Result<()> {
    for _ in 0..600 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {addr} within 30 s")
}

/// Debian's `opendkim`, signing for one domain.
#[derive(Debug)]
pub struct OpenDkim {
    addr: SocketAddr,
    _child: Child,
}

impl OpenDkim {
    /// Starts opendkim in `dir`, signing mail from 127.0.0.1 for `domain`
    /// with `selector` and the PEM key at `key`, relaxed/relaxed.
    pub async fn start(dir: &Path, domain: &str, selector: &str, key: &Path) -> Result<Self> {
        let port = free_port()?;
        let config = dir.join("opendkim.conf");
        std::fs::write(
            &config,
            format!(
                "Syslog no\nSocket inet:{port}@127.0.0.1\nPidFile {pid}\nDomain {domain}\nSelector {selector}\n\
                 KeyFile {key}\nCanonicalization relaxed/relaxed\nMode sv\nInternalHosts 127.0.0.1\n\
                 UserID root\nRequireSafeKeys no\n",
                pid = dir.join("opendkim.pid").display(),
                key = key.display(),
            ),
        )?;
        let mut child = Command::new("opendkim")
            .arg("-f")
            .arg("-x")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run opendkim (tests/setup installs Debian's opendkim)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "opendkim", &mut child).await?;
        Ok(Self { addr, _child: child })
    }

    /// `inet:127.0.0.1:PORT`, for `address`.
    pub fn address(&self) -> String {
        format!("inet:{}", self.addr)
    }
}

/// Debian's `rspamd`, only its proxy worker, in milter mode, scanning
/// itself; DNS goes to a closed port on loopback, so no rule asks the
/// internet.
#[derive(Debug)]
pub struct Rspamd {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    /// Starts rspamd and waits until its proxy listens.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("rspamd.conf");
        std::fs::write(
            &config,
            format!(
                ".include \"$CONFDIR/common.conf\"\n\
                 options {{\n  pidfile = \"$RUNDIR/rspamd.pid\";\n  .include \"$CONFDIR/options.inc\"\n  \
                 dns {{ nameserver = [\"127.0.0.1:9\"]; timeout = 0.2s; retransmits = 1; }}\n}}\n\
                 logging {{ type = \"console\"; level = \"error\"; }}\n\
                 worker \"rspamd_proxy\" {{\n  bind_socket = \"127.0.0.1:{port}\";\n  milter = yes;\n  \
                 timeout = 120s;\n  count = 1;\n  reject_message = \"Spam message rejected\";\n  \
                 upstream \"local\" {{ default = yes; self_scan = yes; }}\n}}\n"
            ),
        )?;
        let var = |name: &str| format!("--var={name}={}", dir.path().display());
        let mut child = Command::new("rspamd")
            .args(["-f", "-u", "root", "-g", "root", "-c"])
            .arg(&config)
            .args([var("DBDIR"), var("RUNDIR"), var("LOGDIR")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run rspamd (tests/setup installs Debian's rspamd)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, "rspamd", &mut child).await?;
        Ok(Self { addr, child, _dir: dir })
    }

    /// `inet:127.0.0.1:PORT`, for `address`.
    pub fn address(&self) -> String {
        format!("inet:{}", self.addr)
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The main process is stopped first so that it cannot fork new
            // workers, then its workers go, then it does.
            let pid = pid.to_string();
            let run = |program: &str, args: &[&str]| {
                let _ = std::process::Command::new(program).args(args).status();
            };
            run("kill", &["-STOP", &pid]);
            run("pkill", &["-KILL", "-P", &pid]);
            run("kill", &["-KILL", &pid]);
        }
    }
}

/// One command a `TestMilter` received, with the macros sent before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The command byte, as a char ('C', 'H', 'M', 'R', 'L', 'B', 'E', ...).
    pub command: char,
    /// Its strings (the header name and value, the address...).
    pub args: Vec<String>,
    /// The macros defined for it.
    pub macros: HashMap<String, String>,
}

/// How a `TestMilter` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// By markers in the message (see `TestMilter`).
    Markers,
    /// Adds `X-Test-Milter: seen` to every message, nothing else.
    Stamp,
    /// Rejects every message at its end with 550 5.7.1.
    RejectAll,
    /// Never answers the end of a message.
    Silent,
}

/// A scripted milter. With `Script::Markers`, at the end of a message:
/// - body contains `REJECTME`: `550 5.7.1 Milter says no`;
/// - `TEMPFAILME`: a bare tempfail; `DISCARDME`: discard;
/// - `QUARANTINEME`: quarantine "test milter";
/// - otherwise it edits: inserts `X-First: top` at the top, adds
///   `X-Test-Milter: seen`, changes `Subject` to `[milter] <old>`,
///   deletes the first `X-Remove`, adds recipient `added@dest.test`,
///   removes `removed@dest.test`, sets the sender to `bounce@example.com`,
///   and replaces the body with the old one plus `-- scanned\r\n`.
///
/// RCPT TO `blocked@dest.test` is rejected (bare reject).
#[derive(Debug)]
pub struct TestMilter {
    address: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl TestMilter {
    /// Starts one on a free loopback port.
    pub async fn start(script: Script) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("inet:{}", listener.local_addr()?);
        Ok(Self::serving(address, script, listener))
    }

    /// Starts one on a Unix socket at `path`.
    pub async fn start_unix(script: Script, path: &Path) -> Result<Self> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let address = format!("unix:{}", path.display());
        Ok(Self::serving(address, script, listener))
    }

    fn serving(address: String, script: Script, listener: impl Accept) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                while let Ok(stream) = listener.next().await {
                    let seen = Arc::clone(&seen);
                    tokio::spawn(async move {
                        let _ = serve(stream, script, &seen).await;
                    });
                }
            })
        };
        Self { address, seen, task }
    }

    /// `inet:127.0.0.1:PORT` or `unix:/PATH`, for `address`.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Everything received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for TestMilter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listening socket, TCP or Unix.
trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn next(&self) -> std::io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

async fn serve(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    script: Script,
    seen: &Mutex<Vec<Seen>>,
) -> Result<()> {
    let mut macros = HashMap::new();
    let mut body = Vec::new();
    loop {
        let packet = protocol::read(&mut stream).await?;
        let reply = |code: u8| Packet { code, data: Vec::new() };
        let args = protocol::split_strings(&packet.data);
        match packet.code {
            command::OPTNEG => {
                let mut data = Vec::new();
                for word in [6, action::ALL & !action::SETSYMLIST, 0] {
                    data.extend_from_slice(&u32::to_be_bytes(word));
                }
                protocol::write(
                    &mut stream,
                    &Packet {
                        code: response::OPTNEG,
                        data,
                    },
                )
                .await?;
                continue;
            }
            command::MACRO => {
                let strings = protocol::split_strings(packet.data.get(1..).unwrap_or_default());
                macros = strings
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
                    .collect();
                continue;
            }
            command::QUIT => return Ok(()),
            command::ABORT => {
                body.clear();
                seen.lock().unwrap_or_else(PoisonError::into_inner).push(Seen {
                    command: 'A',
                    args: Vec::new(),
                    macros: HashMap::new(),
                });
                continue;
            }
            _ => {}
        }
        let command = char::from(packet.code);
        if packet.code == command::BODY {
            body.extend_from_slice(&packet.data);
        }
        seen.lock().unwrap_or_else(PoisonError::into_inner).push(Seen {
            command,
            args: if packet.code == command::BODY {
                Vec::new()
            } else {
                args.clone()
            },
            macros: std::mem::take(&mut macros),
        });
        let answers = match packet.code {
            command::RCPT if args.first().is_some_and(|a| a == "<blocked@dest.test>") => {
                vec![reply(response::REJECT)]
            }
            command::BODYEOB => end_of_message(script, &std::mem::take(&mut body)),
            _ => vec![reply(response::CONTINUE)],
        };
        for answer in answers {
            protocol::write(&mut stream, &answer).await?;
        }
    }
}

fn end_of_message(script: Script, body: &[u8]) -> Vec<Packet> {
    let text = String::from_utf8_lossy(body);
    let strings = |code: u8, s: &[&str]| Packet::strings(code, s);
    let indexed = |code: u8, index: u32, s: &[&str]| {
        let mut data = index.to_be_bytes().to_vec();
        data.extend_from_slice(&Packet::strings(code, s).data);
        Packet { code, data }
    };
    let done = Packet {
        code: response::CONTINUE,
        data: Vec::new(),
    };
    match script {
        Script::RejectAll => return vec![strings(response::REPLYCODE, &["550 5.7.1 Rejected by the canary"])],
        Script::Stamp => return vec![strings(response::ADDHEADER, &["X-Test-Milter", "seen"]), done],
        Script::Silent => return Vec::new(),
        Script::Markers => {}
    }
    if text.contains("REJECTME") {
        return vec![strings(response::REPLYCODE, &["550 5.7.1 Milter says no"])];
    }
    if text.contains("TEMPFAILME") {
        return vec![Packet {
            code: response::TEMPFAIL,
            data: Vec::new(),
        }];
    }
    if text.contains("DISCARDME") {
        return vec![Packet {
            code: response::DISCARD,
            data: Vec::new(),
        }];
    }
    if text.contains("QUARANTINEME") {
        return vec![strings(response::QUARANTINE, &["test milter"]), done];
    }
    let mut new_body = body.to_vec();
    new_body.extend_from_slice(b"-- scanned\r\n");
    vec![
        indexed(response::INSHEADER, 0, &["X-First", "top"]),
        strings(response::ADDHEADER, &["X-Test-Milter", "seen"]),
        indexed(response::CHGHEADER, 1, &["Subject", "[milter] hello"]),
        indexed(response::CHGHEADER, 1, &["X-Remove", ""]),
        strings(response::ADDRCPT, &["<added@dest.test>"]),
        strings(response::DELRCPT, &["<removed@dest.test>"]),
        strings(response::CHGFROM, &["<bounce@example.com>"]),
        Packet {
            code: response::REPLBODY,
            data: new_body,
        },
        done,
    ]
}
