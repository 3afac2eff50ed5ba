//! `SignedDns`: a real DNSSEC-signed DNS on loopback, served by BIND
//! (Debian's `bind9`, which `tests/setup` installs) with keys made at
//! test time by `dnssec-keygen` and zones signed by `dnssec-signzone`.
//! BIND because it is the reference implementation the DNSSEC tools come
//! with, and it answers the DS, DNSKEY and NSEC queries a validating stub
//! resolver sends for a zone cut without any recursion set up.
//!
//! The server is authoritative for a root zone of its own, signed with a
//! key the tests use as the trust anchor (`anchor_file`), which delegates
//! to each zone of the test: securely (a DS for the zone's key), insecurely
//! (no DS: an NSEC proves the zone unsigned), or bogusly (a DS for a key
//! the zone does not use). Every name server is 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How a zone is delegated from the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed, with a DS in the root: answers validate as secure.
    Secure,
    /// Unsigned, no DS: answers are insecure.
    Insecure,
    /// Signed, but the root's DS names another key: answers are bogus.
    Bogus,
}

/// A zone for the server: its name (no trailing dot), how it is signed,
/// and its records in zone-file syntax, names relative to the zone.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The zone's name.
    pub name: String,
    /// Its signing.
    pub signing: Signing,
    /// Its records (besides SOA and NS).
    pub records: Vec<String>,
}

impl Zone {
    /// A zone with no records yet.
    pub fn new(name: &str, signing: Signing) -> Self {
        Self {
            name: name.to_owned(),
            signing,
            records: Vec::new(),
        }
    }

    /// Adds a record line, e.g. `"@ MX 10 mx"` or `"mx A 127.0.0.1"`.
    pub fn record(mut self, line: &str) -> Self {
        self.records.push(line.to_owned());
        self
    }
}

/// The running server.
#[derive(Debug)]
pub struct SignedDns {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: Child,
}

impl SignedDns {
    /// Makes the keys, signs the zones, starts `named` on a free port and
    /// waits until it has loaded them.
    pub async fn start(zones: &[Zone]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path();
        let mut root = zone_head(".");
        root.push_str("ns.test. IN A 127.0.0.1\n");
        for zone in zones {
            let origin = format!("{}.", zone.name);
            let mut text = zone_head(&origin);
            for record in &zone.records {
                text.push_str(record);
                text.push('\n');
            }
            root.push_str(&format!("{origin} IN NS ns.test.\n"));
            let file = format!("{}.zone", zone.name);
            match zone.signing {
                Signing::Insecure => std::fs::write(path.join(&file), text)?,
                Signing::Secure | Signing::Bogus => {
                    let ksk = keygen(path, &origin, true).await?;
                    let zsk = keygen(path, &origin, false).await?;
                    sign(path, &origin, &file, text, &[&ksk, &zsk]).await?;
                    // The DS: of the zone's key, or of one it never uses.
                    let ds_key = match zone.signing {
                        Signing::Bogus => keygen(path, &origin, true).await?,
                        _ => ksk,
                    };
                    root.push_str(&run(path, "dnssec-dsfromkey", &["-2", &format!("{ds_key}.key")]).await?);
                }
            }
        }
        let root_ksk = keygen(path, ".", true).await?;
        let root_zsk = keygen(path, ".", false).await?;
        sign(path, ".", "root.zone", root, &[&root_ksk, &root_zsk]).await?;
        let anchor: String = std::fs::read_to_string(path.join(format!("{root_ksk}.key")))?
            .lines()
            .filter(|l| !l.starts_with(';'))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path.join("anchor.txt"), anchor)?;

        let port = crate::free_port()?;
        let mut conf = format!(
            "options {{ directory \"{dir}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; \
             recursion no; dnssec-validation no; pid-file \"{dir}/named.pid\"; }};\n\
             zone \".\" {{ type primary; file \"root.zone.signed\"; }};\n",
            dir = path.display()
        );
        for zone in zones {
            let file = match zone.signing {
                Signing::Insecure => format!("{}.zone", zone.name),
                _ => format!("{}.zone.signed", zone.name),
            };
            conf.push_str(&format!(
                "zone \"{}.\" {{ type primary; file \"{file}\"; }};\n",
                zone.name
            ));
        }
        std::fs::write(path.join("named.conf"), conf)?;
        let mut command = Command::new("named");
        command.arg("-g").arg("-c").arg(path.join("named.conf"));
        if is_root() {
            command.args(["-u", "root"]);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run named (tests/setup installs Debian's bind9)")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                let running = line.ends_with(" running");
                log.push(line);
                if running {
                    return Ok::<bool, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(started, Ok(Ok(true))) {
            bail!("named did not start:\n{}", log.join("\n"));
        }
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            _child: child,
        })
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root key as a DNSKEY record, for `[dns] trust_anchor`.
    pub fn anchor_file(&self) -> PathBuf {
        self.dir.path().join("anchor.txt")
    }
}

fn zone_head(origin: &str) -> String {
    format!("$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns.test. admin.test. 1 3600 600 86400 300\n@ IN NS ns.test.\n")
}

/// A new ECDSA P-256 key for `origin`; its file base name.
async fn keygen(dir: &Path, origin: &str, ksk: bool) -> Result<String> {
    let mut args = vec!["-q", "-a", "ECDSAP256SHA256"];
    if ksk {
        args.extend(["-f", "KSK"]);
    }
    args.push(origin);
    Ok(run(dir, "dnssec-keygen", &args).await?.trim().to_owned())
}

/// Writes `text` with the keys' DNSKEY records to `file` and signs it into
/// `file.signed`.
async fn sign(dir: &Path, origin: &str, file: &str, mut text: String, keys: &[&str]) -> Result<()> {
    for key in keys {
        text.push_str(&std::fs::read_to_string(dir.join(format!("{key}.key")))?);
    }
    std::fs::write(dir.join(file), text)?;
    let signed = format!("{file}.signed");
    let mut args = vec!["-q", "-o", origin, "-f", &signed, file];
    args.extend(keys.iter().copied());
    run(dir, "dnssec-signzone", &args).await?;
    Ok(())
}

async fn run(dir: &Path, program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .with_context(|| format!("cannot run {program} (tests/setup installs Debian's bind9-utils)"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}
