//! End-to-end tests: the real gateway over real sockets on loopback, a real
//! downstream SMTP server recording what is relayed, and the real binary
//! where crashes are involved.

use std::time::Duration;

mod admin;
mod arc;
mod authentication;
mod capabilities;
mod config;
mod dane;
mod delivery;
mod deploy;
mod durability;
mod example_plugins;
mod extensions;
mod hook_calls;
mod hostile;
mod http_capability;
mod inbound;
mod isolation;
mod limits;
mod logs;
mod milters;
mod mta_hooks;
mod mta_sts;
mod mx;
mod operations;
mod outbound;
mod plugin_loading;
mod plugins;
mod quarantine;
mod queue;
mod relay;
mod reload;
mod scaffold;
mod scrape;
mod smuggling;
mod standards;
mod tls;
mod tls_rpt;
mod versions;

/// How long a test waits for something to arrive.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `mailgate check --config CONFIG` (a relative CONFIG from `dir`,
/// when given), synchronously.
fn mailgate_check(
    config: impl AsRef<std::ffi::OsStr>,
    dir: Option<&std::path::Path>,
) -> std::io::Result<std::process::Output> {
    let mut command = std::process::Command::new(binary());
    command.args(["check", "--config"]).arg(config);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.output()
}

/// `mailgate check --config CONFIG`, which must fail: what it printed.
fn mailgate_check_refuses(config: &std::path::Path) -> anyhow::Result<String> {
    let output = mailgate_check(config, None)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(!output.status.success(), "check passed: {text}");
    Ok(text)
}

/// Runs `mailgate COMMAND --config CONFIG ARGS...`: (success, stdout and
/// stderr together).
async fn mailgate_cli(command: &str, config: &std::path::Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(binary())
        .arg(command)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// The `mailgate` program built for the tests.
fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_mailgate-e2e"))
}
