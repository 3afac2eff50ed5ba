//! End-to-end tests: the real gateway over real sockets on loopback, a real
//! downstream SMTP server recording what is relayed, and the real binary
//! where crashes are involved.

use std::time::Duration;

mod admin;
mod authentication;
mod capabilities;
mod config;
mod delivery;
mod deploy;
mod durability;
mod example_plugins;
mod extensions;
mod hostile;
mod inbound;
mod limits;
mod logs;
mod milters;
mod mx;
mod operations;
mod plugins;
mod quarantine;
mod queue;
mod relay;
mod smuggling;
mod standards;
mod tls;
mod versions;

/// How long a test waits for something to arrive.
const WAIT: Duration = Duration::from_secs(30);

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
