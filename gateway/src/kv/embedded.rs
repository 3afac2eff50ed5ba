//! The embedded backend: one redb file. Values are stored with their
//! expiry time; expired ones read as absent and are swept every few
//! minutes. Writes commit without fsync and a flusher makes them durable
//! at most a second later (group commit), so a crash loses at most the
//! last second of counters, never the file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::task::spawn_blocking;
use tracing::warn;

use crate::plugin::KvError;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// How often pending writes are made durable.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often expired keys are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// The open store.
pub struct Embedded {
    db: Arc<Database>,
    dirty: Arc<AtomicBool>,
}

fn now_millis() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A stored value: the expiry (ms since the epoch, 0 for never), big
/// endian, then the value.
fn encode(expires: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The value and its expiry, or `None` when expired (or unreadable).
fn decode(stored: &[u8], now: u64) -> Option<(u64, &[u8])> {
    let (head, value) = stored.split_at_checked(8)?;
    let expires = u64::from_be_bytes(head.try_into().ok()?);
    (expires == 0 || expires > now).then_some((expires, value))
}

fn expiry(ttl: Option<Duration>, now: u64) -> u64 {
    ttl.map_or(0, |ttl| {
        now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    })
}

fn failed(e: impl std::fmt::Display) -> KvError {
    format!("embedded store: {e}")
}

impl Embedded {
    /// Opens (or creates) the file and starts the flusher.
    pub async fn open(path: PathBuf) -> Result<Self, KvError> {
        let shown = path.display().to_string();
        let db = spawn_blocking(move || -> Result<Database, String> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            let db = Database::create(&path).map_err(|e| e.to_string())?;
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.open_table(TABLE).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())?;
            Ok(db)
        })
        .await
        .map_err(failed)?
        .map_err(|e| format!("cannot open the key-value store {shown}: {e}"))?;
        let store = Self {
            db: Arc::new(db),
            dirty: Arc::new(AtomicBool::new(false)),
        };
        store.start_flusher();
        Ok(store)
    }

    /// Makes pending writes durable every `FLUSH_EVERY` and sweeps expired
    /// keys every `SWEEP_EVERY`. Ends when the store is dropped.
    fn start_flusher(&self) {
        let db = Arc::downgrade(&self.db);
        let dirty = Arc::clone(&self.dirty);
        tokio::spawn(async move {
            let mut since_sweep = Duration::ZERO;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                since_sweep += FLUSH_EVERY;
                let sweep = since_sweep >= SWEEP_EVERY;
                if sweep {
                    since_sweep = Duration::ZERO;
                }
                if !sweep && !dirty.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let Some(db) = db.upgrade() else { break };
                let done = spawn_blocking(move || commit(&db, sweep)).await;
                if let Ok(Err(e)) | Err(e) = done.map_err(failed) {
                    warn!(error = %e, "cannot flush the key-value store");
                }
            }
        });
    }

    async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>, u64) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = Arc::clone(&self.db);
        let result = spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(failed)?;
            txn.set_durability(Durability::None).map_err(failed)?;
            let result = {
                let mut table = txn.open_table(TABLE).map_err(failed)?;
                change(&mut table, now_millis())?
            };
            txn.commit().map_err(failed)?;
            Ok(result)
        })
        .await
        .map_err(failed)?;
        self.dirty.store(true, Ordering::Release);
        result
    }

    /// A durable commit now.
    pub async fn flush(&self) -> Result<(), KvError> {
        let db = Arc::clone(&self.db);
        self.dirty.store(false, Ordering::Release);
        spawn_blocking(move || commit(&db, false)).await.map_err(failed)?
    }

    /// The value of `key`.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let db = Arc::clone(&self.db);
        spawn_blocking(move || {
            let txn = db.begin_read().map_err(failed)?;
            let table = txn.open_table(TABLE).map_err(failed)?;
            let stored = table.get(key.as_str()).map_err(failed)?;
            Ok(stored.and_then(|guard| decode(guard.value(), now_millis()).map(|(_, value)| value.to_vec())))
        })
        .await
        .map_err(failed)?
    }

    /// Sets `key`.
    pub async fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        self.write(move |table, now| {
            table
                .insert(key.as_str(), encode(expiry(ttl, now), &value).as_slice())
                .map_err(failed)?;
            Ok(())
        })
        .await
    }

    /// Adds to the counter at `key`; counters are stored as decimal text,
    /// as Redis stores them.
    pub async fn increment(&self, key: String, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        self.write(move |table, now| {
            let current = match table.get(key.as_str()).map_err(failed)? {
                Some(guard) => decode(guard.value(), now).map(|(expires, value)| (expires, value.to_vec())),
                None => None,
            };
            let (expires, value) = match current {
                Some((expires, text)) => {
                    let value = std::str::from_utf8(&text)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or_else(|| format!("the value of {key:?} is not a counter"))?;
                    let value = value
                        .checked_add(delta)
                        .ok_or_else(|| format!("the counter {key:?} would overflow"))?;
                    (expires, value)
                }
                None => (expiry(ttl, now), delta),
            };
            table
                .insert(key.as_str(), encode(expires, value.to_string().as_bytes()).as_slice())
                .map_err(failed)?;
            Ok(value)
        })
        .await
    }

    /// The live keys starting with `prefix`, with their values.
    pub async fn entries(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let db = Arc::clone(&self.db);
        spawn_blocking(move || {
            let txn = db.begin_read().map_err(failed)?;
            let table = txn.open_table(TABLE).map_err(failed)?;
            let now = now_millis();
            let mut found = Vec::new();
            for entry in table.range(prefix.as_str()..).map_err(failed)? {
                let (key, value) = entry.map_err(failed)?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                if let Some((_, value)) = decode(value.value(), now) {
                    found.push((key.value().to_owned(), value.to_vec()));
                }
            }
            Ok(found)
        })
        .await
        .map_err(failed)?
    }

    /// Removes `key`.
    pub async fn delete(&self, key: String) -> Result<(), KvError> {
        self.write(move |table, _| {
            table.remove(key.as_str()).map_err(failed)?;
            Ok(())
        })
        .await
    }
}

/// A durable commit of everything before it, removing expired keys first
/// when `sweep`.
fn commit(db: &Database, sweep: bool) -> Result<(), KvError> {
    let txn = db.begin_write().map_err(failed)?;
    if sweep {
        let now = now_millis();
        let mut table = txn.open_table(TABLE).map_err(failed)?;
        table
            .retain(|_, stored| decode(stored, now).is_some())
            .map_err(failed)?;
    }
    txn.commit().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_counters_expiry_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let store = Embedded::open(path.clone()).await.unwrap();
        assert_eq!(store.get("p:a".into()).await.unwrap(), None);
        store.set("p:a".into(), b"x".to_vec(), None).await.unwrap();
        assert_eq!(store.get("p:a".into()).await.unwrap(), Some(b"x".to_vec()));
        assert_eq!(store.increment("p:n".into(), 2, None).await.unwrap(), 2);
        assert_eq!(store.increment("p:n".into(), -5, None).await.unwrap(), -3);
        assert_eq!(store.get("p:n".into()).await.unwrap(), Some(b"-3".to_vec()));
        assert!(store.increment("p:a".into(), 1, None).await.is_err(), "not a counter");
        store
            .set("p:short".into(), b"y".to_vec(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(
            store
                .increment("p:w".into(), 1, Some(Duration::from_millis(50)))
                .await
                .unwrap(),
            1
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.get("p:short".into()).await.unwrap(), None);
        // An expired counter starts again from nothing.
        assert_eq!(store.increment("p:w".into(), 1, None).await.unwrap(), 1);
        store.delete("p:a".into()).await.unwrap();
        store.delete("p:absent".into()).await.unwrap();
        assert_eq!(store.get("p:a".into()).await.unwrap(), None);
        commit(&store.db, true).unwrap();
        drop(store);
        // The flusher holds only a weak reference; give it a tick to end.
        tokio::time::sleep(Duration::from_millis(10)).await;

        let reopened = Embedded::open(path).await.unwrap();
        assert_eq!(reopened.get("p:n".into()).await.unwrap(), Some(b"-3".to_vec()));
        assert_eq!(reopened.get("p:a".into()).await.unwrap(), None);
    }
}
