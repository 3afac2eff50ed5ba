//! Outbound connections by destination: idle connections wait here for
//! the next message to the same destination, so a busy route pays for TCP
//! setup, the greeting, EHLO, TLS and AUTH once rather than per message;
//! and a semaphore per destination caps the transactions in flight to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::SmtpClient;

/// Idle connections kept per destination.
const MAX_IDLE_PER_HOST: usize = 32;

/// Destinations whose limiter is kept although nobody uses it, before
/// unused ones are forgotten.
const MAX_IDLE_LIMITERS: usize = 10_000;

/// A connection and when it became idle, oldest first in each list.
type Idle = Vec<(SmtpClient, Instant)>;

/// Idle connections and concurrency limits by destination key
/// (`Destination::pool_key`).
#[derive(Debug)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<String, Idle>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle_timeout: Duration,
}

impl ConnectionPool {
    /// A pool whose connections are dropped after `idle_timeout` unused.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// Waits until fewer than `limit` transactions to `key` are in flight;
    /// the permit ends this one's turn when dropped.
    pub async fn acquire(&self, key: &str, limit: usize) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
            match limits.get(key) {
                Some(semaphore) => Arc::clone(semaphore),
                None => {
                    if limits.len() > MAX_IDLE_LIMITERS {
                        limits.retain(|_, s| Arc::strong_count(s) > 1);
                    }
                    let semaphore = Arc::new(Semaphore::new(limit.max(1)));
                    limits.insert(key.to_owned(), Arc::clone(&semaphore));
                    semaphore
                }
            }
        };
        semaphore.acquire_owned().await.ok()
    }

    /// A connection to `key` that was idle for less than the timeout.
    pub fn take(&self, key: &str) -> Option<SmtpClient> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = idle.get_mut(key)?;
        while let Some((client, since)) = connections.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(client);
            }
            tokio::spawn(client.quit());
        }
        idle.remove(key);
        None
    }

    /// Closes connections idle for longer than the timeout.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, connections| {
            close_expired(connections, self.idle_timeout);
            !connections.is_empty()
        });
    }

    /// Keeps a connection that just finished a transaction cleanly.
    pub fn put(&self, key: &str, client: SmtpClient) {
        if self.idle_timeout.is_zero() {
            tokio::spawn(client.quit());
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = idle.entry(key.to_owned()).or_default();
        // Oldest first: drop what expired, and the oldest when full.
        close_expired(connections, self.idle_timeout);
        if connections.len() >= MAX_IDLE_PER_HOST {
            let (oldest, _) = connections.remove(0);
            tokio::spawn(oldest.quit());
        }
        connections.push((client, Instant::now()));
    }
}

/// Closes (politely, in the background) the connections idle for `timeout`
/// or longer.
fn close_expired(connections: &mut Idle, timeout: Duration) {
    let (expired, kept): (Vec<_>, Vec<_>) = connections.drain(..).partition(|(_, since)| since.elapsed() >= timeout);
    *connections = kept;
    for (client, _) in expired {
        tokio::spawn(client.quit());
    }
}
