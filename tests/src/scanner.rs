//! An MTA Hooks scanner for the tests: `fixtures/mta_hooks_scanner.py`,
//! Python's standard library on loopback, answering on cues (see the
//! script) and logging every request it gets.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mta_hooks_scanner.py");

/// A running scanner; stopped when dropped.
pub struct MtaHooksScanner {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MtaHooksScanner {
    /// Starts one that wants `token` (if any), offers the `offer`ed stages
    /// (draft names, comma separated; all of them when empty) and takes
    /// `slow` seconds over a message with the subject `slow`.
    pub fn start(token: Option<&str>, offer: &str, slow: f64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("requests.jsonl");
        let mut command = Command::new("python3");
        command
            .arg(SCRIPT)
            .arg("--log")
            .arg(&log)
            .arg("--slow")
            .arg(slow.to_string())
            .stdout(Stdio::piped());
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        if !offer.is_empty() {
            command.args(["--offer", offer]);
        }
        let mut child = command.spawn().context("running python3 for the MTA Hooks scanner")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .parse()
            .with_context(|| format!("the scanner printed {line:?}"))?;
        Ok(Self {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request it got, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The bodies of the hook calls it got for `stage`.
    pub fn calls(&self, stage: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v1/hooks/")) && r["body"]["stage"] == stage)
            .map(|r| r["body"].clone())
            .collect()
    }

    /// Makes it forget its registrations before the next call.
    pub fn forget(&self) -> Result<()> {
        let mut flag = self.log.clone().into_os_string();
        flag.push(".forget");
        std::fs::write(flag, b"")?;
        Ok(())
    }
}

impl Drop for MtaHooksScanner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
