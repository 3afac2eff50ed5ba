//! MTA-STS (RFC 8461) for delivery over MX: which policy a recipient
//! domain publishes, kept in a cache that survives restarts
//! (`<spool_dir>/mta-sts/<domain>.json`).
//!
//! Per domain and attempt: the `_mta-sts.<domain>` TXT record is looked up;
//! when its `id` is the cached policy's and that policy has not expired,
//! the cache answers; otherwise the policy is fetched again. A failed fetch
//! (or an unusable policy) keeps the cached policy while it is unexpired
//! (section 5.1), and is not retried for `RETRY_FETCH_AFTER`. No TXT record
//! but an unexpired cached policy: the cached policy still applies, so an
//! attacker who removes the record does not switch it off.

mod fetch;
mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use fetch::Fetcher;
pub use policy::{Mode, Policy};

use crate::dns::Resolver;

/// After a failed fetch, the cached answer stands this long.
const RETRY_FETCH_AFTER: Duration = Duration::from_secs(300);

/// A policy as cached: its record id and when it was fetched.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cached {
    id: String,
    fetched_at: u64,
    policy: Policy,
}

impl Cached {
    fn fresh(&self, now: u64) -> bool {
        now < self.fetched_at.saturating_add(self.policy.max_age)
    }
}

/// The MTA-STS policies of recipient domains.
#[derive(Debug)]
pub struct MtaSts {
    dir: PathBuf,
    fetcher: Fetcher,
    memory: Mutex<HashMap<String, Cached>>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl MtaSts {
    /// Policies cached under `dir`, fetched with `fetcher`.
    pub fn new(dir: PathBuf, fetcher: Fetcher) -> Self {
        Self {
            dir,
            fetcher,
            memory: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The policy that applies to mail for `domain` now, if any (a policy
    /// in mode `none` is none).
    pub async fn policy(&self, resolver: &Resolver, domain: &str) -> Option<Policy> {
        self.lookup(resolver, domain).await.0
    }

    /// `policy`, and why a fetch failed if one did (for TLS reports).
    pub async fn lookup(&self, resolver: &Resolver, domain: &str) -> (Option<Policy>, Option<String>) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = unix_now();
        let cached = self.cached(&domain).filter(|c| c.fresh(now));
        let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => policy::record_id(&records),
            Err(e) => {
                if !matches!(e, crate::dns::DnsError::NoSuchName | crate::dns::DnsError::NoRecords) {
                    warn!(domain, error = %e, "MTA-STS: the TXT lookup failed; using the cached policy, if any");
                }
                None
            }
        };
        let (found, failed) = match (id, cached) {
            (None, cached) => (cached.map(|c| c.policy), None),
            (Some(id), Some(cached)) if cached.id == id => (Some(cached.policy), None),
            (Some(id), cached) => match self.refresh(resolver, &domain, id, now).await {
                Ok(Some(policy)) => (Some(policy), None),
                Ok(None) => (cached.map(|c| c.policy), None),
                Err(reason) => (cached.map(|c| c.policy), Some(reason)),
            },
        };
        (found.filter(|p| p.mode != Mode::None), failed)
    }

    /// Fetches the policy announced by record `id` and caches it; `None`
    /// when a fetch failed lately and is not tried again yet.
    async fn refresh(&self, resolver: &Resolver, domain: &str, id: String, now: u64) -> Result<Option<Policy>, String> {
        let recently_failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(domain)
            .is_some_and(|at| at.elapsed() < RETRY_FETCH_AFTER);
        if recently_failed {
            return Ok(None);
        }
        let parsed = match self.fetcher.fetch(resolver, domain).await {
            Ok(text) => Policy::parse(&text).map_err(|e| format!("unusable policy: {e}")),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(policy) => {
                info!(
                    domain,
                    id,
                    mode = policy.mode.name(),
                    mx = policy.mx.join(" "),
                    max_age = policy.max_age,
                    "MTA-STS policy fetched"
                );
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(domain);
                self.store(
                    domain,
                    Cached {
                        id,
                        fetched_at: now,
                        policy: policy.clone(),
                    },
                );
                Ok(Some(policy))
            }
            Err(reason) => {
                warn!(domain, %reason, "MTA-STS: cannot fetch the policy; keeping the cached one, if any");
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(domain.to_owned(), Instant::now());
                Err(reason)
            }
        }
    }

    /// The cached policy of `domain`: in memory, else on disk.
    fn cached(&self, domain: &str) -> Option<Cached> {
        if let Some(cached) = self.memory.lock().unwrap_or_else(PoisonError::into_inner).get(domain) {
            return Some(cached.clone());
        }
        let text = std::fs::read(self.file(domain)?).ok()?;
        let cached: Cached = serde_json::from_slice(&text).ok()?;
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_owned(), cached.clone());
        Some(cached)
    }

    /// Keeps `cached` in memory and on disk (a new file renamed into place).
    fn store(&self, domain: &str, cached: Cached) {
        if let Some(path) = self.file(domain) {
            let written = serde_json::to_vec(&cached)
                .map_err(std::io::Error::other)
                .and_then(|json| {
                    std::fs::create_dir_all(&self.dir)?;
                    let temporary = path.with_extension("json.new");
                    std::fs::write(&temporary, json)?;
                    std::fs::rename(&temporary, &path)
                });
            if let Err(e) = written {
                warn!(domain, path = %path.display(), error = %e, "MTA-STS: cannot write the policy cache");
            }
        }
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_owned(), cached);
    }

    /// The cache file of `domain`; none for a name that is not a plain
    /// host name.
    fn file(&self, domain: &str) -> Option<PathBuf> {
        let plain = !domain.is_empty()
            && !domain.starts_with('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        plain.then(|| self.dir.join(format!("{domain}.json")))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
