//! `Gateway`: the real server started in-process on 127.0.0.1:0 with a
//! temporary spool, configured through a real TOML file; and
//! `GatewayProcess`: the real binary as a child process, for the tests
//! that kill it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mailgate::config::Config;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::wait_until;

/// Builds a test configuration, section by section. Defaults: host name
/// `gw.test`, a listener on 127.0.0.1:0, short retries, and no routes.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    server: Vec<String>,
    smtp: Vec<String>,
    relay: Vec<String>,
    delivery: Vec<String>,
    dns: Vec<String>,
    kv: Vec<String>,
    tables: String,
    routes: String,
    plugins: Vec<String>,
    admin: Option<SocketAddr>,
    admin_lines: Vec<String>,
    listeners: String,
    auth: Vec<String>,
    certificate: Option<(String, String)>,
    users: Vec<(String, String)>,
    max_instances: Option<u32>,
}

impl Setup {
    /// A fresh setup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `key = value` line to `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to `[smtp]`.
    pub fn smtp(mut self, line: &str) -> Self {
        self.smtp.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to `[relay]`.
    pub fn relay(mut self, line: &str) -> Self {
        self.relay.push(line.to_owned());
        self
    }

    /// Retries an hour apart (`retry_initial` and `retry_max`): a
    /// deferred message stays queued for the rest of the test.
    pub fn hourly_retries(self) -> Self {
        self.delivery("retry_initial = \"1h\"").delivery("retry_max = \"1h\"")
    }

    /// Adds a `[[listener]]` on a free loopback port; `body` holds its
    /// keys after `name` and `address` (`role`, `proxy_protocol`...).
    pub fn listener(self, name: &str, body: &str) -> Self {
        self.listener_at(name, "127.0.0.1:0", body)
    }

    /// Adds a `[[listener]]` on `address` (`"[::1]:0"`: a free port on
    /// the IPv6 loopback).
    pub fn listener_at(mut self, name: &str, address: &str, body: &str) -> Self {
        let _ = writeln!(
            self.listeners,
            "[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\n{body}"
        );
        self
    }

    /// Sets `[tls]` to this certificate and key (PEM), written next to
    /// the configuration as `cert.pem` and `key.pem`.
    pub fn certificate(mut self, (cert, key): (String, String)) -> Self {
        self.certificate = Some((cert, key));
        self
    }

    /// Adds a user to the users file (`[auth] users_file = "users"`).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Adds a `key = value` line to `[auth]`.
    pub fn auth(mut self, line: &str) -> Self {
        self.auth.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to `[delivery]`.
    pub fn delivery(mut self, line: &str) -> Self {
        self.delivery.push(line.to_owned());
        self
    }

    /// Points the resolver at a test DNS server (by default it points at
    /// a closed port on loopback, so no test ever asks real DNS).
    pub fn dns(mut self, server: SocketAddr) -> Self {
        self.dns.push(format!("nameservers = [\"{server}\"]"));
        self
    }

    /// Adds a `key = value` line to `[dns]`.
    pub fn dns_line(mut self, line: &str) -> Self {
        self.dns.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to `[kv]` (by default the embedded store
    /// in the spool directory).
    pub fn kv(mut self, line: &str) -> Self {
        self.kv.push(line.to_owned());
        self
    }

    /// Adds whole tables, as TOML text (e.g. `[dkim]` and its
    /// `[[dkim.key]]`s).
    pub fn tables(mut self, toml: &str) -> Self {
        self.tables.push_str(toml);
        self.tables.push('\n');
        self
    }

    /// Adds a `[[route]]` with this TOML body.
    pub fn route(mut self, body: &str) -> Self {
        let _ = writeln!(self.routes, "[[route]]\n{body}");
        self
    }

    /// Turns on the admin API on a free loopback port (a fixed one, so
    /// that the CLI reading the file can reach it).
    pub fn admin(mut self) -> Result<Self> {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        self.admin = Some(probe.local_addr()?);
        Ok(self)
    }

    /// Adds a `key = value` line to `[admin]` (after `admin`).
    pub fn admin_line(mut self, line: &str) -> Self {
        self.admin_lines.push(line.to_owned());
        self
    }

    /// The admin API's address, when `admin` was called.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Routes `domains` to a smarthost.
    pub fn route_to(mut self, domains: &str, smarthost: SocketAddr) -> Self {
        let _ = write!(
            self.routes,
            "[[route]]\ndomains = [{domains}]\nsmarthost = \"{smarthost}\"\n"
        );
        self
    }

    /// Routes everything to a smarthost.
    pub fn route_all_to(self, smarthost: SocketAddr) -> Self {
        self.route_to("\"*\"", smarthost)
    }

    /// Adds a `[[plugin]]` entry; `body` is its TOML (keys, then any
    /// `[plugin.settings]` table).
    pub fn plugin(mut self, body: &str) -> Self {
        self.plugins.push(body.to_owned());
        self
    }

    /// Sizes the plugin pool (`plugins.max_instances`; 32 unless set): a
    /// test with more transactions in a plugin at once needs more.
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = Some(n);
        self
    }

    /// Adds a named route to a smarthost, with no domains (for plugins).
    pub fn named_route(mut self, name: &str, smarthost: SocketAddr) -> Self {
        let _ = write!(
            self.routes,
            "[[route]]\nname = \"{name}\"\nsmarthost = \"{smarthost}\"\n"
        );
        self
    }

    /// Routes `domains` to a maildir.
    pub fn route_to_maildir(mut self, domains: &str, dir: &Path) -> Self {
        let _ = write!(
            self.routes,
            "[[route]]\ndomains = [{domains}]\nmaildir = \"{}\"\n",
            dir.display()
        );
        self
    }

    /// The TOML text, with the spool under `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let mut text = String::new();
        let section = |text: &mut String, name: &str, defaults: &[&str], lines: &[String]| {
            let _ = writeln!(text, "[{name}]");
            for default in defaults {
                let key = default.split('=').next().unwrap_or("").trim();
                if !lines.iter().any(|l| l.split('=').next().unwrap_or("").trim() == key) {
                    let _ = writeln!(text, "{default}");
                }
            }
            // A key given twice takes its last value.
            let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
            for (i, line) in lines.iter().enumerate() {
                if !lines[i + 1..].iter().any(|later| key(later) == key(line)) {
                    let _ = writeln!(text, "{line}");
                }
            }
        };
        let spool = format!("spool_dir = \"{}\"", dir.join("spool").display());
        section(
            &mut text,
            "server",
            &["hostname = \"gw.test\"", &spool, "shutdown_grace_period = \"5s\""],
            &self.server,
        );
        text.push_str("[[listener]]\nname = \"test\"\naddress = \"127.0.0.1:0\"\n");
        text.push_str(&self.listeners);
        section(&mut text, "smtp", &[], &self.smtp);
        if self.certificate.is_some() {
            let _ = writeln!(text, "[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"");
        }
        let users = (!self.users.is_empty()).then_some("users_file = \"users\"");
        section(&mut text, "auth", users.as_slice(), &self.auth);
        section(&mut text, "relay", &[], &self.relay);
        section(
            &mut text,
            "delivery",
            &[
                "retry_initial = \"200ms\"",
                "retry_max = \"1s\"",
                "connect_timeout = \"2s\"",
                "command_timeout = \"10s\"",
            ],
            &self.delivery,
        );
        section(
            &mut text,
            "dns",
            &["nameservers = [\"127.0.0.1:9\"]", "timeout = \"1s\"", "attempts = 1"],
            &self.dns,
        );
        section(&mut text, "kv", &[], &self.kv);
        if let Some(admin) = self.admin {
            let _ = writeln!(text, "[admin]\naddress = \"{admin}\"");
            for line in &self.admin_lines {
                let _ = writeln!(text, "{line}");
            }
        }
        text.push_str(&self.tables);
        text.push_str(&self.routes);
        if !self.plugins.is_empty() {
            // One compile cache for all tests; a small pool, since many
            // gateways share the test process's address space.
            let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache");
            let _ = write!(
                text,
                "[plugins]\ncache_dir = \"{}\"\nmax_instances = {}\n",
                cache.display(),
                self.max_instances.unwrap_or(32)
            );
            for plugin in &self.plugins {
                let _ = write!(text, "[[plugin]]\n{plugin}\n");
            }
        }
        text
    }

    /// Writes the configuration and the files it names (certificate,
    /// users) into `dir`; returns the configuration's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        if let Some((cert, key)) = &self.certificate {
            std::fs::write(dir.join("cert.pem"), cert)?;
            std::fs::write(dir.join("key.pem"), key)?;
        }
        if !self.users.is_empty() {
            let mut text = String::new();
            for (name, password) in &self.users {
                let hash = mailgate::server::auth::hash_password(password.as_bytes()).map_err(anyhow::Error::msg)?;
                let _ = writeln!(text, "{name}:{hash}");
            }
            std::fs::write(dir.join("users"), text)?;
        }
        let path = dir.join("mailgate.toml");
        std::fs::write(&path, self.render(dir))?;
        Ok(path)
    }

    /// Starts the gateway in-process.
    pub async fn start(self) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        Gateway::start_in(self, dir).await
    }
}

/// The gateway running in this process.
#[derive(Debug)]
pub struct Gateway {
    /// The SMTP listener's address.
    pub addr: SocketAddr,
    /// The admin API's address, when configured.
    pub admin: Option<SocketAddr>,
    /// Every listener's name and address.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Holds the spool and config; removed on drop.
    pub dir: TempDir,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<mailgate::Stopped, mailgate::StartError>>>,
}

impl Gateway {
    /// Starts with `setup`, keeping files in `dir`.
    pub async fn start_in(setup: Setup, dir: TempDir) -> Result<Self> {
        crate::init_logging();
        let path = setup.write(dir.path())?;
        let config = Config::load(&path).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let bound = mailgate::bind(&config).await?;
        let addr = bound.listeners.first().context("no listener")?.socket.local_addr()?;
        let listeners = bound
            .listeners
            .iter()
            .map(|l| Ok((l.config.name.to_string(), l.socket.local_addr()?)))
            .collect::<Result<_>>()?;
        let admin = bound.admin.as_ref().map(|a| a.local_addr()).transpose()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(mailgate::run(config, bound, shutdown.clone()));
        Ok(Self {
            addr,
            admin,
            listeners,
            dir,
            shutdown,
            task: Some(task),
        })
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.addr, |(_, addr)| *addr)
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mailgate.toml")
    }

    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Messages currently in the spool queue.
    pub fn queued(&self) -> usize {
        count_queued(&self.spool())
    }

    /// Stops the gateway and waits for it to finish draining.
    pub async fn stop(mut self) -> Result<TempDir> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(std::mem::replace(&mut self.dir, tempfile::tempdir()?))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Messages queued in a spool: files of their own in `queue/`, and the
/// records of `segments/SEQ.log` not listed in `SEQ.done`.
pub fn count_queued(spool: &Path) -> usize {
    let files = std::fs::read_dir(spool.join("queue"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".msg"))
                .count()
        })
        .unwrap_or(0);
    let logs = std::fs::read_dir(spool.join("segments"))
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    let records: usize = logs
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|log| {
            let done = std::fs::read_to_string(log.with_extension("done")).unwrap_or_default();
            let done: HashSet<&str> = done.lines().collect();
            let bytes = std::fs::read(log).unwrap_or_default();
            segment_ids(&bytes).filter(|id| !done.contains(id.as_str())).count()
        })
        .sum();
    files + records
}

/// The ids of a segment's whole records, in the format documented in
/// `gateway/src/queue/spool/segments.rs`: `MGR1`, id length (u8), content
/// length (u64), envelope length (u32), CRC-32, then the id, the content
/// and the envelope.
fn segment_ids(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let head = bytes.get(at..at + 21).filter(|h| h.starts_with(b"MGR1"))?;
        let id_len = usize::from(head[4]);
        let content_len = usize::try_from(u64::from_le_bytes(head[5..13].try_into().ok()?)).ok()?;
        let json_len = usize::try_from(u32::from_le_bytes(head[13..17].try_into().ok()?)).ok()?;
        let id = bytes.get(at + 21..at + 21 + id_len)?;
        let end = at + 21 + id_len + content_len + json_len;
        (end <= bytes.len()).then_some(())?;
        at = end;
        Some(String::from_utf8_lossy(id).into_owned())
    })
}

/// The real `mailgate` binary as a child process.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// The SMTP listener's address, read from the log.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Runs `binary run --config config` and waits until it listens.
    pub async fn start(binary: &Path, config: &Path) -> Result<Self> {
        Self::start_logging(binary, config, "info").await
    }

    /// Like `start`, with `RUST_LOG` set to `filter`.
    pub async fn start_logging(binary: &Path, config: &Path, filter: &str) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[mailgate] {line}");
                    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
                }
            });
        }
        let mut process = Self {
            child,
            addr: "0.0.0.0:0".parse()?,
            log,
        };
        wait_until(Duration::from_secs(30), || process.listening_address().is_some())
            .await
            .context("the gateway did not start listening")?;
        process.addr = process.listening_address().context("no address")?;
        Ok(process)
    }

    /// The address of the first listener that logged "listening".
    fn listening_address(&self) -> Option<SocketAddr> {
        self.logged_address(None)
    }

    /// The address of the listener called `name`, read from the log.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.logged_address(Some(name))
    }

    /// The address in the first "listening" log line (text or JSON) of
    /// the listener called `name`, or of any listener.
    fn logged_address(&self, name: Option<&str>) -> Option<SocketAddr> {
        let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.iter().find_map(|line| {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                let fields = &json["fields"];
                let wanted = name.is_none_or(|name| fields["listener"] == name);
                return (fields["message"] == "listening" && wanted)
                    .then(|| fields["address"].as_str()?.parse().ok())
                    .flatten();
            }
            let wanted = name.is_none_or(|name| line.contains(&format!("listener={name} ")));
            if !line.contains("listening") || !wanted {
                return None;
            }
            line.split("address=").nth(1)?.split_whitespace().next()?.parse().ok()
        })
    }

    /// The log, shared: it goes on filling until the process's stderr
    /// closes, after the process is gone.
    pub fn log_handle(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.log)
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGHUP: reload the configuration.
    pub fn hangup(&self) -> Result<()> {
        self.signal("HUP")
    }

    /// Sends the signal called `name` (`TERM`, `HUP`...).
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed");
        }
        Ok(())
    }

    /// SIGTERM, and wait for the exit status.
    pub async fn terminate(self) -> Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        self.wait().await
    }

    /// Waits (30 s at most) for the process to exit.
    pub async fn wait(mut self) -> Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }
}
