//! End-to-end tests: the real gateway over real sockets on loopback, a real
//! downstream SMTP server recording what is relayed, and the real binary
//! where crashes are involved.

use std::time::Duration;

mod authentication;
mod capabilities;
mod config;
mod delivery;
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

/// The `mailgate` program built for the tests.
fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_mailgate-e2e"))
}
