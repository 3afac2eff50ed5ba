//! Per-client abuse limits shared by every connection: connections per
//! client address, and messages per authenticated user per time window.
//! Counts are kept in memory, per process.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::policy::canonical;

/// The address per-client limits count by: an IPv4 address, or the /64
/// an IPv6 address is in (one customer's allocation, so that hopping
/// through the addresses of one network does not escape a limit).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Connections open per client address.
#[derive(Debug)]
pub struct ConnectionCounts {
    max: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<ConnectionCounts>,
    key: IpAddr,
}

impl ConnectionCounts {
    /// At most `max` connections per client address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Changes the limit (a reload); open connections stay.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A slot for a connection from `ip`, or `None` when it has `max` open.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max.load(Ordering::Relaxed) {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut entry) = open.entry(self.key) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// Messages per authenticated user in a fixed window.
#[derive(Debug)]
pub struct UserRates {
    limit: AtomicU32,
    window: Mutex<Duration>,
    sent: Mutex<HashMap<String, (Instant, u32)>>,
}

impl UserRates {
    /// At most `limit` messages per user per `window`; 0 means no limit.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            window: Mutex::new(window),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the limit and window (a reload); counts so far stay.
    pub fn set_limit(&self, limit: u32, window: Duration) {
        self.limit.store(limit, Ordering::Relaxed);
        *self.window.lock().unwrap_or_else(PoisonError::into_inner) = window;
    }

    fn limits(&self) -> (u32, Duration) {
        let window = *self.window.lock().unwrap_or_else(PoisonError::into_inner);
        (self.limit.load(Ordering::Relaxed), window)
    }

    /// True when `user` may send another message now.
    pub fn allows(&self, user: &str) -> bool {
        self.allows_at(user, Instant::now())
    }

    /// Counts one message accepted from `user`.
    pub fn record(&self, user: &str) {
        self.record_at(user, Instant::now());
    }

    fn allows_at(&self, user: &str, now: Instant) -> bool {
        let (limit, window) = self.limits();
        if limit == 0 {
            return true;
        }
        let sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        match sent.get(user) {
            Some((start, count)) => now.duration_since(*start) >= window || *count < limit,
            None => true,
        }
    }

    fn record_at(&self, user: &str, now: Instant) {
        let (limit, window) = self.limits();
        if limit == 0 {
            return;
        }
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = sent.entry(user.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let other = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn connection_slots_are_counted_and_freed() {
        let counts = ConnectionCounts::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.try_acquire(ip).unwrap();
        let _second = counts.try_acquire(ip).unwrap();
        assert!(counts.try_acquire(ip).is_none());
        assert!(counts.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(counts.try_acquire(ip).is_some());
    }

    #[test]
    fn user_rates_reset_after_the_window() {
        let rates = UserRates::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert!(rates.allows_at("alice", start));
        rates.record_at("alice", start);
        rates.record_at("alice", start + Duration::from_secs(1));
        assert!(!rates.allows_at("alice", start + Duration::from_secs(59)));
        assert!(rates.allows_at("bob", start));
        let later = start + Duration::from_secs(60);
        assert!(rates.allows_at("alice", later));
        rates.record_at("alice", later);
        assert!(rates.allows_at("alice", later));
        assert!(UserRates::new(0, Duration::ZERO).allows("anyone"));
    }
}
