//! The end-to-end test harness: the real gateway (in-process or as the real
//! binary), a real downstream SMTP server that records what it receives,
//! and a raw SMTP client. Everything talks over real sockets on loopback.

mod client;
mod gateway;
mod sink;

use std::time::Duration;

pub use client::{SmtpClient, TestReply, stuff};
pub use gateway::{Gateway, GatewayProcess, Setup, count_queued};
pub use sink::{Behavior, Received, SinkServer};

/// Waits until `condition` holds, polling; fails after `deadline`.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            anyhow::bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the gateway's logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Paths of the plugins `build.rs` compiled from source.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}
