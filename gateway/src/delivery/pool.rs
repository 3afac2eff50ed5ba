//! Outbound connection reuse: after a message is sent, its connection
//! waits here for the next message to the same host, so a busy route pays
//! for TCP setup, the greeting and EHLO once rather than per message.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::client::SmtpClient;

/// Idle connections kept per destination.
const MAX_IDLE_PER_HOST: usize = 32;

/// Where a connection goes: host and port.
type Destination = (String, u16);

/// A connection and when it became idle, oldest first in each list.
type Idle = Vec<(SmtpClient, Instant)>;

/// Idle connections by destination.
#[derive(Debug)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<Destination, Idle>>,
    idle_timeout: Duration,
}

impl ConnectionPool {
    /// A pool whose connections are dropped after `idle_timeout` unused.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// A connection to `host:port` that was idle for less than the timeout.
    pub fn take(&self, host: &str, port: u16) -> Option<SmtpClient> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = idle.get_mut(&(host.to_owned(), port))?;
        while let Some((client, since)) = connections.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(client);
            }
            tokio::spawn(client.quit());
        }
        None
    }

    /// Keeps a connection that just finished a transaction cleanly.
    pub fn put(&self, host: &str, port: u16, client: SmtpClient) {
        if self.idle_timeout.is_zero() {
            tokio::spawn(client.quit());
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = idle.entry((host.to_owned(), port)).or_default();
        // Oldest first: drop what expired, and the oldest when full.
        let timeout = self.idle_timeout;
        let (expired, kept): (Vec<_>, Vec<_>) =
            connections.drain(..).partition(|(_, since)| since.elapsed() >= timeout);
        *connections = kept;
        for (client, _) in expired {
            tokio::spawn(client.quit());
        }
        if connections.len() >= MAX_IDLE_PER_HOST {
            let (oldest, _) = connections.remove(0);
            tokio::spawn(oldest.quit());
        }
        connections.push((client, Instant::now()));
    }
}
