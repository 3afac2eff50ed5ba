//! The `kv` capability: a key-value store that outlives the transaction
//! (embedded in the gateway, or Redis shared by several gateways). Keys
//! are in the plugin's own namespace. The plugin must be granted `kv` in
//! the configuration.
//!
//! Plugin logic takes a [`Store`], so that its unit tests can run on the
//! host against [`Memory`] while the built plugin uses [`Host`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::bindings::mailgate::plugin::kv as wit;

/// The store failed, could not be reached, or the key or value is too
/// long (keys up to 512 octets, values up to 64 KiB).
pub type Error = String;

/// A key-value store with expiry.
pub trait Store {
    /// The value of `key`, or `None` when absent or expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Sets `key` to `value`, expiring after `ttl` (never when `None`).
    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error>;
    /// Adds `delta` to the counter at `key` (absent: 0) and returns the new
    /// value. `ttl` applies when this creates the key: a fixed window.
    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), Error>;
}

/// The gateway's store, through the `kv` capability.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

fn seconds(ttl: Option<Duration>) -> u32 {
    ttl.map_or(0, |ttl| u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX))
}

impl Store for Host {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        wit::get(key)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        wit::set(key, value, seconds(ttl))
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
        wit::increment(key, delta, seconds(ttl))
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        wit::delete(key)
    }
}

/// A value and when it expires on the store's clock.
type Entry = (Vec<u8>, Option<Duration>);

/// An in-memory store for unit tests, with a clock the test moves
/// ([`Memory::advance`]); [`Memory::failing`] makes every call fail.
#[derive(Debug, Default)]
pub struct Memory {
    entries: RefCell<HashMap<String, Entry>>,
    now: RefCell<Duration>,
    failing: bool,
}

impl Memory {
    /// An empty store at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose every call fails, to test failing open or closed.
    pub fn failing() -> Self {
        Self {
            failing: true,
            ..Self::default()
        }
    }

    /// Moves the store's clock forward; entries past their TTL vanish.
    pub fn advance(&self, by: Duration) {
        *self.now.borrow_mut() += by;
    }

    fn check(&self) -> Result<(), Error> {
        if self.failing {
            Err("the store is down".into())
        } else {
            Ok(())
        }
    }

    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let now = *self.now.borrow();
        let mut entries = self.entries.borrow_mut();
        match entries.get(key) {
            Some((_, Some(expires))) if *expires <= now => {
                entries.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }
}

impl Store for Memory {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.check()?;
        Ok(self.live(key))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        self.check()?;
        let expires = ttl.map(|ttl| *self.now.borrow() + ttl);
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), expires));
        Ok(())
    }

    fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
        self.check()?;
        let value = match self.live(key) {
            Some(text) => {
                let current: i64 = std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("the value of {key:?} is not a counter"))?;
                let value = current.checked_add(delta).ok_or("overflow")?;
                if let Some(entry) = self.entries.borrow_mut().get_mut(key) {
                    entry.0 = value.to_string().into_bytes();
                }
                value
            }
            None => {
                let expires = ttl.map(|ttl| *self.now.borrow() + ttl);
                self.entries
                    .borrow_mut()
                    .insert(key.to_owned(), (delta.to_string().into_bytes(), expires));
                delta
            }
        };
        Ok(value)
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        self.check()?;
        self.entries.borrow_mut().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_counts_and_expires() {
        let store = Memory::new();
        assert_eq!(store.increment("n", 1, Some(Duration::from_secs(60))), Ok(1));
        store.advance(Duration::from_secs(30));
        assert_eq!(store.increment("n", 1, Some(Duration::from_secs(60))), Ok(2));
        store.advance(Duration::from_secs(30));
        assert_eq!(
            store.get("n"),
            Ok(None),
            "the window ended 60 s after the first increment"
        );
        store.set("k", b"v", None).unwrap();
        assert!(store.increment("k", 1, None).is_err());
        store.delete("k").unwrap();
        assert_eq!(store.get("k"), Ok(None));
        assert!(Memory::failing().get("k").is_err());
    }
}
