//! rate-limit: limits how many messages a client address, a sender, a
//! sender domain or an authenticated user may start per time window.
//! Counters live in the `kv` store: with the Redis backend, every gateway
//! of a fleet counts against the same limit.
//!
//! Runs at the `mail` stage with the `kv` and `clock` capabilities (plus
//! `log` and `metrics`). See README.md.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use mailgate_plugin_sdk::kv::{self, Store};
use mailgate_plugin_sdk::{
    Client, MailParameters, Plugin, ReversePath, Settings, Transaction, Verdict, clock, duration, export_plugin, log,
    metrics,
};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The limits; a message must be within all of them.
    limits: Vec<Limit>,
    /// Clients never limited.
    #[serde(default)]
    pass_networks: Vec<IpNet>,
    /// When the store fails: `pass` (default) or `tempfail`.
    #[serde(default)]
    on_store_error: StoreError,
}

/// One limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// What is counted.
    by: By,
    /// Messages allowed per window.
    limit: u32,
    /// The window (fixed windows, aligned to the epoch).
    #[serde(deserialize_with = "duration")]
    window: Duration,
}

/// What a limit counts by.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// The client's address (an IPv6 client's /64).
    Ip,
    /// The sender's address (bounces are not counted).
    Sender,
    /// The sender's domain.
    SenderDomain,
    /// The authenticated user (unauthenticated sessions are not counted).
    User,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Sender => "sender",
            Self::SenderDomain => "sender_domain",
            Self::User => "user",
        }
    }
}

/// What a store failure means.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreError {
    /// Let the message through (fail open).
    #[default]
    Pass,
    /// Ask for a retry (fail closed).
    Tempfail,
}

/// Who sends, as far as the limits care.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The sender, lower case; none for the null sender.
    pub sender: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
}

impl Subject {
    /// From the hook's arguments.
    pub fn of(client: &Client, from: &ReversePath) -> Self {
        Self {
            ip: client.ip.parse().ok(),
            sender: match from {
                ReversePath::Mailbox(sender) => Some(sender.as_str().to_ascii_lowercase()),
                _ => None,
            },
            user: client.authenticated.clone(),
        }
    }

    fn value(&self, by: By) -> Option<String> {
        match by {
            By::Ip => self.ip.map(|ip| match ip {
                IpAddr::V4(_) => ip.to_string(),
                IpAddr::V6(_) => IpNet::new(ip, 64).map_or_else(|_| ip.to_string(), |n| n.trunc().to_string()),
            }),
            By::Sender => self.sender.clone(),
            By::SenderDomain => self
                .sender
                .as_deref()
                .and_then(|s| s.rsplit_once('@'))
                .map(|(_, domain)| domain.to_owned()),
            By::User => self.user.clone(),
        }
    }
}

/// The outcome of counting one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Within every limit.
    Within,
    /// Over limit number `.0`.
    Over(usize),
    /// The store failed.
    StoreFailed(String),
}

impl RateLimit {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let limits: Self = settings.parse()?;
        if limits.limits.is_empty() {
            return Err("`limits` is empty".into());
        }
        for (i, limit) in limits.limits.iter().enumerate() {
            if limit.window.as_secs() == 0 {
                return Err(format!("limits[{i}]: `window` must be at least one second"));
            }
        }
        Ok(limits)
    }

    /// Counts one message from `subject` at `now` (ms since the epoch)
    /// against every limit that applies.
    pub fn count(&self, store: &impl Store, subject: &Subject, now: u64) -> Outcome {
        if subject
            .ip
            .is_some_and(|ip| self.pass_networks.iter().any(|net| net.contains(&ip)))
        {
            return Outcome::Within;
        }
        for (i, limit) in self.limits.iter().enumerate() {
            let Some(value) = subject.value(limit.by) else { continue };
            let window = limit.window.as_secs();
            let index = now / 1000 / window;
            let key = format!("{}:{window}:{value}:{index}", limit.by.name());
            match store.increment(&key, 1, Some(limit.window)) {
                Ok(count) if count > i64::from(limit.limit) => return Outcome::Over(i),
                Ok(_) => {}
                Err(e) => return Outcome::StoreFailed(e),
            }
        }
        Outcome::Within
    }

    /// The verdict for an outcome.
    pub fn verdict(&self, outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Within => Verdict::Continue,
            Outcome::Over(i) => {
                let limit = &self.limits[*i];
                Verdict::tempfail(
                    451,
                    "4.7.1",
                    &format!(
                        "Rate limit exceeded: at most {} messages per {} s per {}; please try again later",
                        limit.limit,
                        limit.window.as_secs(),
                        limit.by.name().replace('_', " ")
                    ),
                )
            }
            Outcome::StoreFailed(_) if self.on_store_error == StoreError::Tempfail => {
                Verdict::tempfail(451, "4.3.0", "Rate limiting is unavailable, please try again later")
            }
            Outcome::StoreFailed(_) => Verdict::Continue,
        }
    }
}

impl Plugin for RateLimit {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_mail_from(&self, from: &ReversePath, _params: &MailParameters, txn: &Transaction) -> Verdict {
        let subject = Subject::of(&txn.client(), from);
        let outcome = self.count(&kv::Host, &subject, clock::now_millis());
        match &outcome {
            Outcome::Within => metrics::count("rate_limit_messages", &[("result", "within")]),
            Outcome::Over(i) => {
                let by = self.limits[*i].by.name();
                metrics::count("rate_limit_messages", &[("result", "over")]);
                log::info(&format!(
                    "over the {by} limit: {}",
                    subject.value(self.limits[*i].by).unwrap_or_default()
                ));
            }
            Outcome::StoreFailed(e) => {
                metrics::count("rate_limit_messages", &[("result", "error")]);
                log::warn(&format!("store failed: {e}"));
            }
        }
        self.verdict(&outcome)
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::kv::Memory;

    fn limits(json: &str) -> RateLimit {
        RateLimit::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn subject(ip: &str, sender: Option<&str>, user: Option<&str>) -> Subject {
        Subject {
            ip: ip.parse().ok(),
            sender: sender.map(str::to_owned),
            user: user.map(str::to_owned),
        }
    }

    #[test]
    fn the_limit_holds_per_window() {
        let r = limits(r#"{"limits": [{"by": "ip", "limit": 3, "window": "1m"}]}"#);
        let store = Memory::new();
        let s = subject("192.0.2.1", Some("a@x.test"), None);
        for _ in 0..3 {
            assert_eq!(r.count(&store, &s, 0), Outcome::Within);
        }
        assert_eq!(r.count(&store, &s, 59_000), Outcome::Over(0));
        assert!(matches!(r.verdict(&Outcome::Over(0)), Verdict::Tempfail(_)));
        // Another client has its own counter; the next window starts afresh.
        assert_eq!(
            r.count(&store, &subject("192.0.2.2", None, None), 1_000),
            Outcome::Within
        );
        assert_eq!(r.count(&store, &s, 60_000), Outcome::Within);
    }

    #[test]
    fn senders_domains_users_and_exemptions() {
        let r = limits(
            r#"{"limits": [
                {"by": "sender_domain", "limit": 2, "window": "1h"},
                {"by": "user", "limit": 1, "window": "1h"}
            ], "pass_networks": ["10.0.0.0/8"]}"#,
        );
        let store = Memory::new();
        assert_eq!(
            r.count(&store, &subject("192.0.2.1", Some("a@x.test"), None), 0),
            Outcome::Within
        );
        assert_eq!(
            r.count(&store, &subject("192.0.2.2", Some("b@x.test"), None), 0),
            Outcome::Within
        );
        assert_eq!(
            r.count(&store, &subject("192.0.2.3", Some("c@x.test"), None), 0),
            Outcome::Over(0)
        );
        assert_eq!(
            r.count(&store, &subject("192.0.2.3", None, Some("u")), 0),
            Outcome::Within,
            "bounces are not counted by sender"
        );
        assert_eq!(
            r.count(&store, &subject("192.0.2.3", None, Some("u")), 0),
            Outcome::Over(1)
        );
        assert_eq!(
            r.count(&store, &subject("10.0.0.1", Some("c@x.test"), Some("u")), 0),
            Outcome::Within
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_store_failures() {
        let r = limits(r#"{"limits": [{"by": "ip", "limit": 1, "window": "1h"}]}"#);
        let store = Memory::new();
        assert_eq!(r.count(&store, &subject("2001:db8::1", None, None), 0), Outcome::Within);
        assert_eq!(
            r.count(&store, &subject("2001:db8::2", None, None), 0),
            Outcome::Over(0)
        );
        let failed = r.count(&Memory::failing(), &subject("192.0.2.1", None, None), 0);
        assert!(matches!(failed, Outcome::StoreFailed(_)));
        assert_eq!(r.verdict(&failed), Verdict::Continue);
        assert!(RateLimit::from_settings(&Settings::from_json(r#"{"limits": []}"#)).is_err());
        assert!(
            RateLimit::from_settings(&Settings::from_json(
                r#"{"limits": [{"by": "moon", "limit": 1, "window": "1h"}]}"#
            ))
            .is_err()
        );
    }
}
