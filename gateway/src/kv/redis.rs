//! The Redis backend: every gateway that points at the same server (and
//! key prefix) shares the plugins' state. The connection is made on first
//! use and remade after a failure; each operation has a timeout.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Script};

use crate::plugin::KvError;

/// INCRBY, then an expiry when the key has none yet (it was just
/// created), in one atomic step.
const INCREMENT: &str = r"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return value
";

/// Whether the client accepts `url`.
pub fn check_url(url: &str) -> Result<(), String> {
    Client::open(url).map(|_| ()).map_err(|e| e.to_string())
}

/// The connection to the server.
pub struct Redis {
    connection: ConnectionManager,
    key_prefix: String,
    timeout: Duration,
    increment: Script,
}

fn failed(e: impl std::fmt::Display) -> KvError {
    format!("redis: {e}")
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Redis {
    /// A lazily connected client.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<Self, KvError> {
        let client = Client::open(url).map_err(failed)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(failed)?;
        Ok(Self {
            connection,
            key_prefix: key_prefix.to_owned(),
            timeout,
            increment: Script::new(INCREMENT),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    async fn bounded<T>(&self, op: impl Future<Output = redis::RedisResult<T>>) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result.map_err(failed),
            Err(_) => Err(format!("redis: no answer within {:?}", self.timeout)),
        }
    }

    /// GET.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let mut connection = self.connection.clone();
        let key = self.key(&key);
        self.bounded(connection.get(key)).await
    }

    /// SET, with PX when there is a TTL.
    pub async fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut connection = self.connection.clone();
        let key = self.key(&key);
        match ttl {
            Some(ttl) => self.bounded(connection.pset_ex(key, value, millis(ttl))).await,
            None => self.bounded(connection.set(key, value)).await,
        }
    }

    /// The increment script.
    pub async fn increment(&self, key: String, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        let mut connection = self.connection.clone();
        let key = self.key(&key);
        let ttl = ttl.map_or(0, millis);
        self.bounded(
            self.increment
                .key(key)
                .arg(delta)
                .arg(ttl)
                .invoke_async(&mut connection),
        )
        .await
    }

    /// The keys starting with `prefix` (SCAN MATCH, then GET), with their
    /// values, without the configured key prefix.
    pub async fn entries(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", self.key(&escape_glob(&prefix)));
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut connection),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let value: Option<Vec<u8>> = self.bounded(connection.get(&key)).await?;
            if let (Some(value), Some(bare)) = (value, key.strip_prefix(&self.key_prefix)) {
                found.push((bare.to_owned(), value));
            }
        }
        Ok(found)
    }

    /// DEL.
    pub async fn delete(&self, key: String) -> Result<(), KvError> {
        let mut connection = self.connection.clone();
        let key = self.key(&key);
        self.bounded(connection.del::<_, ()>(key)).await
    }
}

/// `text` with Redis glob characters escaped, for a literal prefix.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
