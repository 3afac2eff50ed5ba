//! `RedisServer`: a real Redis (Debian's `redis-server`, which
//! `tests/setup` installs) on a free loopback port, with no persistence,
//! stopped when dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The server.
#[derive(Debug)]
pub struct RedisServer {
    addr: SocketAddr,
    _child: Child,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> Result<Self> {
        let port = crate::free_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run redis-server (tests/setup installs Debian's redis-server)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Self { addr, _child: child };
        for _ in 0..200 {
            if server
                .command("PING")
                .await
                .is_ok_and(|reply| reply.starts_with("+PONG"))
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("redis-server did not answer on {addr}")
    }

    /// `redis://127.0.0.1:PORT/0`, for `kv.url`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Sends one inline command and returns the raw reply.
    pub async fn command(&self, line: &str) -> Result<String> {
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        let reply = self.command(&format!("KEYS {pattern}")).await?;
        // *N, then $len / key pairs.
        Ok(reply
            .split("\r\n")
            .skip(1)
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|pair| pair.get(1).filter(|k| !k.is_empty()).map(|k| (*k).to_owned()))
            .collect())
    }
}
