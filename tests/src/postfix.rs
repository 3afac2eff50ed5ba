//! `Postfix`: a private instance of Debian's Postfix (which `tests/setup`
//! installs) on a free loopback port, relaying everything to one next hop,
//! stopped when dropped. It runs its own master with its own queue under a
//! temporary directory; the system's Postfix service is not touched. It
//! needs root (its daemons drop to the `postfix` user).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

/// A running private Postfix.
#[derive(Debug)]
pub struct Postfix {
    /// Its SMTP listener.
    pub addr: SocketAddr,
    conf: PathBuf,
    dir: TempDir,
}

impl Postfix {
    /// Whether this process can run Postfix (root), with the reason when not.
    pub fn unavailable() -> Option<&'static str> {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        (!root).then_some("a private Postfix needs root")
    }

    /// Starts an instance that relays all mail (bounces included) to
    /// `relayhost`, and waits until it greets.
    pub async fn start(relayhost: SocketAddr) -> Result<Self> {
        ensure!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed (tests/setup installs Debian's postfix)"
        );
        let dir = tempfile::tempdir()?;
        // Postfix's daemons run as the postfix user and must reach the queue.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let conf = dir.path().join("conf");
        let queue = dir.path().join("queue");
        let data = dir.path().join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy("/etc/postfix/master.cf", conf.join("master.cf"))?;
        let port = crate::free_port()?;
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = postfix.test\n\
             mydomain = postfix.test\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             local_recipient_maps =\n\
             relayhost = [{relay_ip}]:{relay_port}\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtpd_peername_lookup = no\n\
             smtp_dns_support_level = disabled\n\
             smtp_host_lookup = native\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n\
             maximal_queue_lifetime = 1h\n",
            queue = queue.display(),
            data = data.display(),
            relay_ip = relayhost.ip(),
            relay_port = relayhost.port(),
            log = dir.path().join("maillog").display(),
            dir = dir.path().display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf)?;
        let c = conf.display().to_string();
        run(&["postconf", "-c", &c, "-M#", "smtp/inet"])?;
        run(&[
            "postconf",
            "-c",
            &c,
            "-M",
            &format!("127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd"),
        ])?;
        run(&["postconf", "-c", &c, "-F", "*/*/chroot = n"])?;
        // Creates the queue's subdirectories with their owners.
        run(&["postfix", "-c", &c, "set-permissions"])?;
        run(&["postfix", "-c", &c, "start"])?;
        let server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            dir,
        };
        for _ in 0..200 {
            if let Ok(stream) = tokio::net::TcpStream::connect(server.addr).await {
                let mut greeting = [0u8; 3];
                let mut stream = stream;
                if tokio::io::AsyncReadExt::read_exact(&mut stream, &mut greeting)
                    .await
                    .is_ok()
                    && &greeting == b"220"
                {
                    return Ok(server);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("Postfix did not greet on {}: {}", server.addr, server.log())
    }

    /// Its mail log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .args(["-c", &self.conf.display().to_string(), "stop"])
            .output();
    }
}

fn run(args: &[&str]) -> Result<()> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    ensure!(
        output.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
