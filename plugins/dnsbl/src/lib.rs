//! dnsbl: checks the client's address against DNS blocklists (RFC 5782)
//! when it connects, and refuses it, naming the list, when one lists it.
//!
//! Runs at the `connect` stage with the `dns` capability (plus `log` and
//! `metrics` for its log lines and counters). See README.md.

use std::net::IpAddr;

use ipnet::IpNet;
use mailgate_plugin_sdk::dns::{self, Resolver};
use mailgate_plugin_sdk::{Plugin, Settings, Transaction, Verdict, export_plugin, log, metrics};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dnsbl {
    /// The lists, asked in order.
    zones: Vec<Zone>,
    /// `reject` (554 at connect) or `tag` (metadata only).
    #[serde(default)]
    action: Action,
    /// Clients never checked (own networks, partners).
    #[serde(default)]
    pass_networks: Vec<IpNet>,
    /// Ask the list for its TXT reason and include it in the reply.
    #[serde(default = "yes")]
    reason: bool,
}

fn yes() -> bool {
    true
}

/// A list, written as `"zone"` or `{ zone = "...", name = "...", answers = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Zone {
    /// Just the zone.
    Plain(String),
    /// With a display name and the answers that count as listed.
    Detailed {
        /// The DNS zone, e.g. `zen.spamhaus.org`.
        zone: String,
        /// The name in replies and metrics; default the zone.
        #[serde(default)]
        name: Option<String>,
        /// Answers that mean "listed"; default any 127.0.0.0/8 address
        /// except 127.255.255.0/24 (errors such as "public resolver").
        #[serde(default)]
        answers: Vec<std::net::Ipv4Addr>,
    },
}

impl Zone {
    fn zone(&self) -> &str {
        match self {
            Self::Plain(zone) | Self::Detailed { zone, .. } => zone,
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Detailed { name: Some(name), .. } => name,
            _ => self.zone(),
        }
    }

    fn counts(&self, answer: std::net::Ipv4Addr) -> bool {
        match self {
            Self::Detailed { answers, .. } if !answers.is_empty() => answers.contains(&answer),
            _ => answer.octets()[0] == 127 && answer.octets()[..3] != [127, 255, 255],
        }
    }
}

/// What a listing does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the connection: 554 5.7.1.
    #[default]
    Reject,
    /// Set the metadata key `dnsbl.listed` to the lists' names and go on.
    Tag,
}

/// The result of checking one client.
#[derive(Debug, PartialEq, Eq)]
pub struct Listing {
    /// The list's name.
    pub list: String,
    /// Its TXT reason, if asked for and given.
    pub reason: Option<String>,
}

impl Dnsbl {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let dnsbl: Self = settings.parse()?;
        if dnsbl.zones.is_empty() {
            return Err("`zones` is empty".into());
        }
        for zone in &dnsbl.zones {
            let z = zone.zone();
            if z.is_empty() || z.starts_with('.') || z.contains(char::is_whitespace) {
                return Err(format!("{z:?} is not a DNS zone"));
            }
        }
        Ok(dnsbl)
    }

    /// The lists that list `ip`, in order, or why a list could not be asked
    /// (those are skipped: a list that is down must not stop mail).
    pub fn check(&self, resolver: &impl Resolver, ip: IpAddr) -> (Vec<Listing>, Vec<String>) {
        let mut listed = Vec::new();
        let mut problems = Vec::new();
        if self.pass_networks.iter().any(|net| net.contains(&ip)) {
            return (listed, problems);
        }
        for zone in &self.zones {
            let query = dns::reversed_query(ip, zone.zone());
            match resolver.a(&query) {
                Ok(answers) if answers.iter().any(|a| zone.counts(*a)) => {
                    let reason = if self.reason {
                        resolver.txt(&query).ok().and_then(|texts| texts.into_iter().next())
                    } else {
                        None
                    };
                    listed.push(Listing {
                        list: zone.name().to_owned(),
                        reason,
                    });
                }
                Ok(_) | Err(dns::Error::NoSuchName) => {}
                Err(e) => problems.push(format!("{}: {e}", zone.name())),
            }
        }
        (listed, problems)
    }

    /// The reply for a listed client.
    pub fn refusal(ip: IpAddr, listing: &Listing) -> Verdict {
        let mut text = format!("Service unavailable; client [{ip}] blocked using {}", listing.list);
        if let Some(reason) = &listing.reason {
            text.push_str("; ");
            text.push_str(reason);
        }
        Verdict::reject(554, "5.7.1", &text)
    }
}

impl Plugin for Dnsbl {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_connect(&self, txn: &Transaction) -> Verdict {
        let client = txn.client();
        let Ok(ip) = client.ip.parse::<IpAddr>() else {
            return Verdict::Continue;
        };
        let (listed, problems) = self.check(&dns::Host, ip);
        for problem in &problems {
            log::warn(&format!("list skipped: {problem}"));
            metrics::count("dnsbl_errors", &[]);
        }
        for listing in &listed {
            metrics::count("dnsbl_listed", &[("list", &listing.list)]);
        }
        let Some(first) = listed.first() else {
            return Verdict::Continue;
        };
        match self.action {
            Action::Reject => {
                log::info(&format!("client [{ip}] listed by {}", first.list));
                Self::refusal(ip, first)
            }
            Action::Tag => {
                let names: Vec<&str> = listed.iter().map(|l| l.list.as_str()).collect();
                txn.set_metadata("dnsbl.listed", &names.join(","));
                Verdict::Continue
            }
        }
    }
}

export_plugin!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::dns::StaticZone;

    fn dnsbl(json: &str) -> Dnsbl {
        Dnsbl::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn listed_clients_are_named_with_the_lists_reason() {
        let zone = StaticZone::new()
            .with_ip("2.0.0.127.bl.test", ip("127.0.0.2"))
            .with_txt("2.0.0.127.bl.test", "listed for spam, see https://bl.test")
            .with_ip("2.0.0.127.other.test", ip("127.0.0.4"));
        let d = dnsbl(r#"{"zones": ["bl.test", {"zone": "other.test", "name": "Other"}]}"#);
        let (listed, problems) = d.check(&zone, ip("127.0.0.2"));
        assert!(problems.is_empty());
        assert_eq!(
            listed,
            [
                Listing {
                    list: "bl.test".into(),
                    reason: Some("listed for spam, see https://bl.test".into())
                },
                Listing {
                    list: "Other".into(),
                    reason: None
                },
            ]
        );
        assert_eq!(
            Dnsbl::refusal(ip("127.0.0.2"), &listed[0]),
            Verdict::reject(
                554,
                "5.7.1",
                "Service unavailable; client [127.0.0.2] blocked using bl.test; listed for spam, see https://bl.test"
            )
        );
    }

    #[test]
    fn unlisted_errors_and_passed_networks() {
        let zone = StaticZone::new()
            .with_ip("5.0.0.127.bl.test", ip("127.255.255.254"))
            .with_failure("6.0.0.127.bl.test")
            .with_ip("7.0.0.127.bl.test", ip("127.0.0.2"));
        let d = dnsbl(r#"{"zones": ["bl.test"], "pass_networks": ["127.0.0.7/32"]}"#);
        assert_eq!(
            d.check(&zone, ip("127.0.0.1")),
            (vec![], vec![]),
            "NXDOMAIN: not listed"
        );
        assert_eq!(
            d.check(&zone, ip("127.0.0.5")),
            (vec![], vec![]),
            "127.255.255.x is the list's error code"
        );
        let (listed, problems) = d.check(&zone, ip("127.0.0.6"));
        assert!(listed.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(d.check(&zone, ip("127.0.0.7")), (vec![], vec![]), "passed network");
    }

    #[test]
    fn ipv6_clients_and_exact_answers() {
        let query = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test";
        let zone = StaticZone::new().with_ip(query, ip("127.0.0.3"));
        let any = dnsbl(r#"{"zones": ["bl.test"], "reason": false}"#);
        assert_eq!(any.check(&zone, ip("2001:db8::1")).0.len(), 1);
        let exact = dnsbl(r#"{"zones": [{"zone": "bl.test", "answers": ["127.0.0.2"]}]}"#);
        assert!(exact.check(&zone, ip("2001:db8::1")).0.is_empty());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Dnsbl::from_settings(&Settings::from_json(r#"{"zones": []}"#)).is_err());
        assert!(Dnsbl::from_settings(&Settings::from_json(r#"{"zones": [".bl"]}"#)).is_err());
        assert!(Dnsbl::from_settings(&Settings::from_json(r#"{"zones": ["a"], "action": "nuke"}"#)).is_err());
    }
}
