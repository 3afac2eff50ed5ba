//! greylist: tempfails the first delivery attempt of an unknown (client
//! network, sender, recipient) triplet and accepts retries made after a
//! delay. Real MTAs retry; much spam software does not. State lives in
//! the `kv` store, so gateways sharing a Redis backend share it.
//!
//! Runs at the `rcpt` stage with the `kv` and `clock` capabilities (plus
//! `log` and `metrics`). See README.md.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use mailgate_plugin_sdk::kv::{self, Store};
use mailgate_plugin_sdk::{
    Mailbox, Plugin, ReversePath, Settings, Transaction, Verdict, clock, duration, export_plugin, log, metrics,
};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Greylist {
    /// How long a sender must wait before a retry passes.
    #[serde(deserialize_with = "duration")]
    delay: Duration,
    /// How long a first attempt is remembered; a retry after that starts over.
    #[serde(deserialize_with = "duration")]
    retry_window: Duration,
    /// How long a triplet that passed stays known (renewed by each message).
    #[serde(deserialize_with = "duration")]
    pass_ttl: Duration,
    /// The client network of a triplet: IPv4 prefix length.
    ipv4_prefix: u8,
    /// The client network of a triplet: IPv6 prefix length.
    ipv6_prefix: u8,
    /// Clients never greylisted.
    pass_networks: Vec<IpNet>,
    /// When the store fails: `pass` (default) or `tempfail`.
    on_store_error: StoreError,
}

/// What a store failure means.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreError {
    /// Let the recipient through (fail open).
    #[default]
    Pass,
    /// Ask for a retry (fail closed).
    Tempfail,
}

impl Default for Greylist {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(24 * 3600),
            pass_ttl: Duration::from_secs(36 * 86_400),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            pass_networks: Vec::new(),
            on_store_error: StoreError::Pass,
        }
    }
}

/// What the greylist decided for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not greylisted (passed network, authenticated).
    Exempt,
    /// First attempt: recorded, retry after the delay.
    New,
    /// A retry before the delay; this many seconds remain.
    Early(u64),
    /// A retry after the delay: passes from now on.
    Passed,
    /// Passed before.
    Known,
    /// The store failed.
    StoreFailed(String),
}

impl Decision {
    fn name(&self) -> &'static str {
        match self {
            Self::Exempt => "exempt",
            Self::New => "new",
            Self::Early(_) => "early",
            Self::Passed => "passed",
            Self::Known => "known",
            Self::StoreFailed(_) => "error",
        }
    }
}

const PASSED: &[u8] = b"passed";

impl Greylist {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let greylist: Self = settings.parse()?;
        if greylist.ipv4_prefix > 32 || greylist.ipv6_prefix > 128 {
            return Err("`ipv4_prefix` is at most 32 and `ipv6_prefix` at most 128".into());
        }
        if greylist.retry_window <= greylist.delay {
            return Err("`retry_window` must be longer than `delay`".into());
        }
        Ok(greylist)
    }

    /// The triplet's key: the client's network, the sender and the
    /// recipient, lower case.
    pub fn key(&self, ip: IpAddr, sender: &str, recipient: &str) -> String {
        let prefix = if ip.is_ipv4() {
            self.ipv4_prefix
        } else {
            self.ipv6_prefix
        };
        let network = IpNet::new(ip, prefix).map_or_else(|_| ip.to_string(), |n| n.trunc().to_string());
        format!(
            "{network}|{}|{}",
            sender.to_ascii_lowercase(),
            recipient.to_ascii_lowercase()
        )
    }

    /// Decides for one recipient at `now` (ms since the epoch).
    pub fn decide(&self, store: &impl Store, ip: IpAddr, sender: &str, recipient: &str, now: u64) -> Decision {
        if self.pass_networks.iter().any(|net| net.contains(&ip)) {
            return Decision::Exempt;
        }
        let key = self.key(ip, sender, recipient);
        match self.step(store, &key, now) {
            Ok(decision) => decision,
            Err(e) => Decision::StoreFailed(e),
        }
    }

    fn step(&self, store: &impl Store, key: &str, now: u64) -> Result<Decision, kv::Error> {
        let seen = store.get(key)?;
        let first = match seen.as_deref() {
            Some(PASSED) => {
                store.set(key, PASSED, Some(self.pass_ttl))?;
                return Ok(Decision::Known);
            }
            Some(text) => std::str::from_utf8(text).ok().and_then(|t| t.parse::<u64>().ok()),
            None => None,
        };
        let Some(first) = first else {
            store.set(key, now.to_string().as_bytes(), Some(self.retry_window))?;
            return Ok(Decision::New);
        };
        let waited = Duration::from_millis(now.saturating_sub(first));
        if waited < self.delay {
            return Ok(Decision::Early((self.delay - waited).as_secs().max(1)));
        }
        store.set(key, PASSED, Some(self.pass_ttl))?;
        Ok(Decision::Passed)
    }

    /// The verdict for a decision.
    pub fn verdict(&self, decision: &Decision) -> Verdict {
        let wait = match decision {
            Decision::New => self.delay.as_secs(),
            Decision::Early(remaining) => *remaining,
            Decision::StoreFailed(_) if self.on_store_error == StoreError::Tempfail => {
                return Verdict::tempfail(451, "4.3.0", "Greylisting is unavailable, please try again later");
            }
            _ => return Verdict::Continue,
        };
        Verdict::tempfail(451, "4.7.1", &format!("Greylisted, please try again in {wait} seconds"))
    }
}

impl Plugin for Greylist {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_rcpt_to(&self, rcpt: &Mailbox, txn: &Transaction) -> Verdict {
        let client = txn.client();
        if client.authenticated.is_some() {
            return Verdict::Continue;
        }
        let Ok(ip) = client.ip.parse::<IpAddr>() else {
            return Verdict::Continue;
        };
        let sender = match txn.reverse_path() {
            Some(ReversePath::Mailbox(sender)) => sender.as_str().to_owned(),
            _ => String::new(),
        };
        let decision = self.decide(&kv::Host, ip, &sender, rcpt.as_str(), clock::now_millis());
        metrics::count("greylist_decisions", &[("result", decision.name())]);
        if let Decision::StoreFailed(e) = &decision {
            log::warn(&format!("store failed: {e}"));
        }
        self.verdict(&decision)
    }
}

export_plugin!(Greylist);

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::kv::Memory;

    fn greylist(json: &str) -> Greylist {
        Greylist::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn first_attempt_waits_then_passes_and_is_remembered() {
        let g = greylist(r#"{"delay": "5m"}"#);
        let store = Memory::new();
        let at = |minutes: u64| minutes * 60_000;
        let from = ip("192.0.2.10");
        assert_eq!(g.decide(&store, from, "a@x.test", "b@y.test", at(0)), Decision::New);
        assert_eq!(
            g.verdict(&Decision::New),
            Verdict::tempfail(451, "4.7.1", "Greylisted, please try again in 300 seconds")
        );
        assert_eq!(
            g.decide(&store, from, "a@x.test", "b@y.test", at(2)),
            Decision::Early(180)
        );
        // Another host of the same /24 retries: same triplet.
        assert_eq!(
            g.decide(&store, ip("192.0.2.99"), "A@X.test", "b@y.test", at(6)),
            Decision::Passed
        );
        assert_eq!(g.decide(&store, from, "a@x.test", "b@y.test", at(7)), Decision::Known);
        assert_eq!(g.verdict(&Decision::Known), Verdict::Continue);
        // A different recipient is a different triplet.
        assert_eq!(g.decide(&store, from, "a@x.test", "c@y.test", at(7)), Decision::New);
    }

    #[test]
    fn a_retry_after_the_window_starts_over() {
        let g = greylist(r#"{"delay": "5m", "retry_window": "1h"}"#);
        let store = Memory::new();
        let from = ip("2001:db8::1");
        assert_eq!(g.decide(&store, from, "", "b@y.test", 0), Decision::New);
        store.advance(Duration::from_secs(3601));
        assert_eq!(g.decide(&store, from, "", "b@y.test", 3_601_000), Decision::New);
    }

    #[test]
    fn networks_keys_and_failures() {
        let g = greylist(r#"{"pass_networks": ["10.0.0.0/8"], "ipv6_prefix": 48}"#);
        assert_eq!(g.key(ip("192.0.2.77"), "A@B", "C@D"), "192.0.2.0/24|a@b|c@d");
        assert_eq!(g.key(ip("2001:db8:1:2::5"), "", "c@d"), "2001:db8:1::/48||c@d");
        assert_eq!(
            g.decide(&Memory::new(), ip("10.1.2.3"), "a@b", "c@d", 0),
            Decision::Exempt
        );
        let failed = g.decide(&Memory::failing(), ip("192.0.2.1"), "a@b", "c@d", 0);
        assert!(matches!(failed, Decision::StoreFailed(_)));
        assert_eq!(g.verdict(&failed), Verdict::Continue, "fails open by default");
        let closed = greylist(r#"{"on_store_error": "tempfail"}"#);
        assert!(matches!(closed.verdict(&failed), Verdict::Tempfail(_)));
        assert!(Greylist::from_settings(&Settings::from_json(r#"{"delay": "2h", "retry_window": "1h"}"#)).is_err());
    }
}
