//! spf: checks at MAIL FROM whether the client may send for the sender's
//! domain (SPF, RFC 7208), through the gateway's resolver (the `dns`
//! capability), and records the result in a `Received-SPF` or
//! `Authentication-Results` field at DATA. A `fail` is refused by default;
//! every result can be refused, tempfailed or only recorded.
//!
//! Runs at the `mail` and `data` stages with `dns` (plus `log` and
//! `metrics`). The result is also left in the metadata (`spf`), where the
//! `dkim` plugin's DMARC evaluation takes it. See README.md.

pub mod eval;

use std::net::IpAddr;

use eval::{Query, SpfResult, check_host};
use ipnet::IpNet;
use mailgate_plugin_sdk::dns::{self, Resolver};
use mailgate_plugin_sdk::{
    MailParameters, Message, Plugin, ReversePath, Settings, Transaction, Verdict, export_plugin, log, metrics,
};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spf {
    /// What a `fail` does; default `reject`.
    #[serde(default = "reject")]
    fail: Action,
    /// What a `softfail` does; default `record`.
    #[serde(default)]
    softfail: Action,
    /// What a `temperror` does; default `tempfail`.
    #[serde(default = "tempfail")]
    temperror: Action,
    /// What a `permerror` does; default `record`.
    #[serde(default)]
    permerror: Action,
    /// Which field records the result: `received-spf` (RFC 7208 section
    /// 9.1), `authentication-results` (RFC 8601) or `none`.
    #[serde(default)]
    header: HeaderKind,
    /// This server's name in the field (`receiver=`, the authserv-id).
    #[serde(default = "default_receiver")]
    receiver: String,
    /// Clients never checked (own networks; authenticated clients are
    /// never checked either).
    #[serde(default)]
    pass_networks: Vec<IpNet>,
}

fn default_receiver() -> String {
    "mailgate".into()
}

fn reject() -> Action {
    Action::Reject
}

fn tempfail() -> Action {
    Action::Tempfail
}

/// What a result does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse MAIL FROM: 550 5.7.23 (451 4.7.24 for temperror).
    Reject,
    /// 451 4.7.24: the client retries later.
    Tempfail,
    /// Accept and record the result.
    #[default]
    Record,
}

/// The field that records the result.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderKind {
    /// `Received-SPF`.
    #[default]
    ReceivedSpf,
    /// `Authentication-Results`.
    AuthenticationResults,
    /// No field; only the metadata.
    None,
}

/// The metadata keys the result is kept under between MAIL and DATA.
pub const RESULT_KEY: &str = "spf";
/// The field's value, kept for DATA.
pub const FIELD_KEY: &str = "spf.field";

/// A checked MAIL FROM: the result and the field recording it.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// The result.
    pub result: SpfResult,
    /// The field's value.
    pub field: String,
    /// The verdict for MAIL FROM.
    pub verdict: Verdict,
}

impl Spf {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let spf: Self = settings.parse()?;
        if spf.receiver.is_empty() || spf.receiver.contains(|c: char| c.is_whitespace() || c == ';') {
            return Err(format!("receiver: {:?} is not a host name", spf.receiver));
        }
        Ok(spf)
    }

    /// Checks `sender` (`""` for the null path, then the HELO identity is
    /// checked as `postmaster@helo`) sent by `ip`.
    pub fn check(&self, resolver: &impl Resolver, ip: IpAddr, helo: &str, sender: &str) -> Checked {
        let (identity, checked) = if sender.is_empty() {
            ("helo", format!("postmaster@{helo}"))
        } else {
            ("mailfrom", sender.to_owned())
        };
        let outcome = check_host(
            resolver,
            &Query {
                ip,
                sender: &checked,
                helo,
                receiver: &self.receiver,
            },
        );
        let result = outcome.result;
        let domain = checked.rsplit_once('@').map_or(checked.as_str(), |(_, d)| d);
        let comment = match result {
            SpfResult::Pass => format!("domain of {checked} designates {ip} as permitted sender"),
            SpfResult::Fail | SpfResult::Softfail => {
                format!("domain of {checked} does not designate {ip} as permitted sender")
            }
            SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {checked}"),
            SpfResult::None => format!("domain of {checked} does not provide an SPF record"),
            SpfResult::Temperror | SpfResult::Permerror => outcome.reason.clone(),
        };
        let field = match self.header {
            HeaderKind::AuthenticationResults => {
                let property = if identity == "helo" {
                    "smtp.helo"
                } else {
                    "smtp.mailfrom"
                };
                let value = if identity == "helo" { helo } else { sender };
                format!(
                    "{}; spf={} ({}) {property}={}",
                    self.receiver,
                    result.name(),
                    printable(&comment),
                    quoted(value)
                )
            }
            HeaderKind::ReceivedSpf | HeaderKind::None => format!(
                "{} ({}: {}) client-ip={ip}; envelope-from={}; helo={}; receiver={}; identity={identity};",
                result.name(),
                self.receiver,
                printable(&comment),
                quoted(sender),
                quoted(helo),
                self.receiver
            ),
        };
        let action = match result {
            SpfResult::Fail => self.fail,
            SpfResult::Softfail => self.softfail,
            SpfResult::Temperror => self.temperror,
            SpfResult::Permerror => self.permerror,
            SpfResult::Pass | SpfResult::Neutral | SpfResult::None => Action::Record,
        };
        let verdict = match (action, result) {
            (Action::Record, _) => Verdict::Continue,
            (Action::Tempfail, _) | (Action::Reject, SpfResult::Temperror) => Verdict::tempfail(
                451,
                "4.7.24",
                &format!("SPF check of {domain} failed temporarily; please try again later"),
            ),
            (Action::Reject, SpfResult::Permerror) => Verdict::reject(
                550,
                "5.7.24",
                &format!("SPF record of {domain} is broken: {}", printable(&outcome.reason)),
            ),
            (Action::Reject, _) => {
                let mut text = format!(
                    "SPF {}: {domain} does not designate {ip} as permitted sender",
                    result.name()
                );
                if let Some(explanation) = &outcome.explanation {
                    text.push_str(": ");
                    text.push_str(&printable(explanation));
                }
                Verdict::reject(550, "5.7.23", &text)
            }
        };
        Checked { result, field, verdict }
    }
}

/// One line of printable ASCII, at most 200 characters (it goes into a
/// reply or a header field).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .take(200)
        .collect()
}

/// A value as a quoted string when it is not a plain token.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_+".contains(&b));
    if plain {
        value.to_owned()
    } else {
        format!("\"{}\"", printable(value).replace(['"', '\\'], "?"))
    }
}

impl Plugin for Spf {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_mail_from(&self, from: &ReversePath, _params: &MailParameters, txn: &Transaction) -> Verdict {
        let client = txn.client();
        let Ok(ip) = client.ip.parse::<IpAddr>() else {
            return Verdict::Continue;
        };
        if client.authenticated.is_some() || self.pass_networks.iter().any(|net| net.contains(&ip)) {
            return Verdict::Continue;
        }
        let sender = match from {
            ReversePath::Mailbox(mailbox) => mailbox.as_str(),
            _ => "",
        };
        let checked = self.check(&dns::Host, ip, client.helo.as_deref().unwrap_or(""), sender);
        metrics::count("spf_results", &[("result", checked.result.name())]);
        log::debug(&format!("SPF {} for {sender:?} from {ip}", checked.result.name()));
        txn.set_metadata(RESULT_KEY, checked.result.name());
        if self.header != HeaderKind::None {
            txn.set_metadata(FIELD_KEY, &checked.field);
        }
        checked.verdict
    }

    fn on_data(&self, _message: &Message, txn: &Transaction) -> Verdict {
        if let Some(field) = txn.metadata(FIELD_KEY) {
            let name = match self.header {
                HeaderKind::AuthenticationResults => "Authentication-Results",
                HeaderKind::ReceivedSpf | HeaderKind::None => "Received-SPF",
            };
            txn.add_header(name, field);
        }
        Verdict::Continue
    }
}

export_plugin!(Spf);

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::dns::StaticZone;

    fn spf(json: &str) -> Spf {
        Spf::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn zone() -> StaticZone {
        StaticZone::new()
            .with_txt(
                "example.com",
                "v=spf1 ip4:192.0.2.0/24 ~ip4:198.51.100.0/24 -all exp=why.example.com",
            )
            .with_txt("why.example.com", "See https://example.com/spf for %{d}")
            .with_txt("mta.example.net", "v=spf1 a -all")
            .with_ip("mta.example.net", "203.0.113.5".parse().unwrap())
            .with_failure("down.example")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn results_become_verdicts_and_fields() {
        let plugin = spf(r#"{"receiver": "mx.example.com"}"#);
        let pass = plugin.check(&zone(), ip("192.0.2.10"), "mta.example.com", "a@example.com");
        assert_eq!(pass.verdict, Verdict::Continue);
        assert_eq!(
            pass.field,
            "pass (mx.example.com: domain of a@example.com designates 192.0.2.10 as permitted sender) \
             client-ip=192.0.2.10; envelope-from=a@example.com; helo=mta.example.com; receiver=mx.example.com; identity=mailfrom;"
        );
        let fail = plugin.check(&zone(), ip("203.0.113.9"), "x", "a@example.com");
        assert_eq!(
            fail.verdict,
            Verdict::reject(
                550,
                "5.7.23",
                "SPF fail: example.com does not designate 203.0.113.9 as permitted sender: See https://example.com/spf for example.com"
            )
        );
        let soft = plugin.check(&zone(), ip("198.51.100.1"), "x", "a@example.com");
        assert_eq!((soft.result, soft.verdict), (SpfResult::Softfail, Verdict::Continue));
        let temp = plugin.check(&zone(), ip("192.0.2.1"), "x", "a@down.example");
        assert_eq!(
            temp.verdict,
            Verdict::tempfail(
                451,
                "4.7.24",
                "SPF check of down.example failed temporarily; please try again later"
            )
        );
    }

    #[test]
    fn the_null_path_checks_the_helo_name() {
        let plugin = spf("{}");
        let pass = plugin.check(&zone(), ip("203.0.113.5"), "mta.example.net", "");
        assert_eq!(pass.result, SpfResult::Pass);
        assert!(
            pass.field
                .contains("envelope-from=\"\"; helo=mta.example.net; receiver=mailgate; identity=helo;"),
            "{}",
            pass.field
        );
    }

    #[test]
    fn actions_and_header_kinds_are_configurable() {
        let plugin = spf(
            r#"{"fail": "record", "softfail": "reject", "header": "authentication-results", "receiver": "mx.example.com"}"#,
        );
        let fail = plugin.check(&zone(), ip("203.0.113.9"), "x", "a@example.com");
        assert_eq!(fail.verdict, Verdict::Continue);
        assert_eq!(
            fail.field,
            "mx.example.com; spf=fail (domain of a@example.com does not designate 203.0.113.9 as permitted sender) smtp.mailfrom=a@example.com"
        );
        let soft = plugin.check(&zone(), ip("198.51.100.1"), "x", "a@example.com");
        assert!(matches!(soft.verdict, Verdict::Reject(_)));
        assert!(Spf::from_settings(&Settings::from_json(r#"{"receiver": "a b"}"#)).is_err());
        assert!(Spf::from_settings(&Settings::from_json(r#"{"fail": "drop"}"#)).is_err());
    }
}
