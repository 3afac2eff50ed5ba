//! dkim: signs mail sent by the organisation (authenticated users and
//! trusted networks) with the gateway's DKIM keys, and verifies the rest:
//! DKIM signatures, SPF and DMARC, recorded in an Authentication-Results
//! field, with the sender domain's DMARC policy applied when it fails.
//!
//! Runs at the `data` stage with the `dkim` capability (plus `log` and
//! `metrics`). The cryptography and DNS work happen in the gateway (see
//! `wit/dkim.wit` for why); this plugin holds the policy. See README.md.

use std::net::IpAddr;

use ipnet::IpNet;
use mailgate_plugin_sdk::dkim::{self, Policy, Status, Verification};
use mailgate_plugin_sdk::{Message, Plugin, Settings, Transaction, Verdict, export_plugin, log, metrics};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dkim {
    /// Sign mail from clients that authenticated (SMTP AUTH).
    #[serde(default = "yes")]
    sign_authenticated: bool,
    /// Sign mail from clients in these networks.
    #[serde(default)]
    sign_networks: Vec<IpNet>,
    /// Sign only for these From domains (default: any the gateway holds a
    /// key for).
    #[serde(default)]
    sign_domains: Vec<String>,
    /// When signing fails: `tempfail` (451 4.3.0, the client retries) or
    /// `continue` (send unsigned).
    #[serde(default)]
    on_sign_error: OnSignError,
    /// Verify mail that is not signed here.
    #[serde(default = "yes")]
    verify: bool,
    /// Apply the sender domain's DMARC policy when DMARC fails: reject
    /// (550 5.7.26) for p=reject, quarantine for p=quarantine.
    #[serde(default = "yes")]
    enforce_dmarc: bool,
    /// Remove incoming Authentication-Results fields that claim to be this
    /// gateway's (RFC 8601 section 5).
    #[serde(default = "yes")]
    remove_forged_results: bool,
    /// ARC-seal the mail this plugin verifies, for this domain (RFC 8617),
    /// after the chain's modifications: for a gateway that passes mail on
    /// after changing it. Needs an RSA key for the domain in
    /// `[[dkim.key]]`.
    #[serde(default)]
    arc_seal: Option<String>,
}

fn yes() -> bool {
    true
}

/// What a signing failure does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnSignError {
    /// 451 4.3.0: the client keeps the message and retries.
    #[default]
    Tempfail,
    /// Send it unsigned.
    Continue,
}

/// Which way a message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sign it, for this domain.
    Sign(String),
    /// From our side but no domain to sign for.
    Skip,
    /// Verify it.
    Verify,
    /// Neither.
    Ignore,
}

impl Dkim {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let mut dkim: Self = settings.parse()?;
        for domain in &mut dkim.sign_domains {
            *domain = domain.to_ascii_lowercase();
            if !is_domain(domain) {
                return Err(format!("sign_domains: {domain:?} is not a domain"));
            }
        }
        if let Some(domain) = &mut dkim.arc_seal {
            *domain = domain.to_ascii_lowercase();
            if !is_domain(domain) {
                return Err(format!("arc_seal: {domain:?} is not a domain"));
            }
        }
        Ok(dkim)
    }

    /// Sign (and for which domain) or verify, given the client and the
    /// From field.
    pub fn direction(&self, ip: Option<IpAddr>, authenticated: bool, from: Option<&str>) -> Direction {
        let ours = (authenticated && self.sign_authenticated)
            || ip.is_some_and(|ip| self.sign_networks.iter().any(|net| net.contains(&ip)));
        if ours {
            match from.and_then(from_domain) {
                Some(domain) if self.sign_domains.is_empty() || self.sign_domains.contains(&domain) => {
                    Direction::Sign(domain)
                }
                _ => Direction::Skip,
            }
        } else if self.verify {
            Direction::Verify
        } else {
            Direction::Ignore
        }
    }

    /// The verdict for a verified message.
    pub fn judge(&self, found: &Verification) -> Verdict {
        if !self.enforce_dmarc || found.dmarc != Status::Fail {
            return Verdict::Continue;
        }
        match found.dmarc_policy {
            Policy::Reject => Verdict::reject(
                550,
                "5.7.26",
                &format!(
                    "Message rejected: it fails the DMARC policy of {} (p=reject)",
                    found.dmarc_domain
                ),
            ),
            Policy::Quarantine => Verdict::Quarantine(format!("DMARC p=quarantine of {}", found.dmarc_domain)),
            Policy::None | Policy::Unspecified => Verdict::Continue,
        }
    }
}

fn is_domain(domain: &str) -> bool {
    !domain.is_empty() && !domain.contains(['@', ' '])
}

/// The domain of a From field's (first) address, lower case.
pub fn from_domain(field: &str) -> Option<String> {
    let address = match (field.rfind('<'), field.rfind('>')) {
        (Some(open), Some(close)) if open < close => &field[open + 1..close],
        _ => field.split(',').next().unwrap_or(field),
    };
    let domain = address.trim().rsplit_once('@')?.1.trim().trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b >= 0x80);
    valid.then(|| domain.to_ascii_lowercase())
}

/// The indexes of Authentication-Results fields whose authserv-id is ours.
pub fn forged_results(values: &[String], authserv_id: &str) -> Vec<u32> {
    values
        .iter()
        .enumerate()
        .filter(|(_, value)| {
            let id = value
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            id.eq_ignore_ascii_case(authserv_id)
        })
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

impl Dkim {
    fn sign(&self, message: &Message, txn: &Transaction, domain: &str) -> Verdict {
        match dkim::sign(message, domain) {
            Ok(fields) if fields.is_empty() => {
                log::debug(&format!("no DKIM key for {domain}; sent unsigned"));
                metrics::count("dkim_signed", &[("result", "no_key")]);
            }
            Ok(fields) => {
                for field in &fields {
                    txn.add_header(&field.name, &field.value);
                }
                metrics::count("dkim_signed", &[("result", "signed")]);
            }
            Err(e) => {
                log::warn(&format!("signing for {domain} failed: {e}"));
                metrics::count("dkim_signed", &[("result", "error")]);
                if self.on_sign_error == OnSignError::Tempfail {
                    return Verdict::tempfail(451, "4.3.0", "Temporary failure signing the message; try again later");
                }
            }
        }
        Verdict::Continue
    }

    fn verify(&self, message: &Message, txn: &Transaction) -> Verdict {
        // The `spf` plugin, when it runs before this one, leaves its result.
        let spf = txn.metadata("spf").and_then(|s| s.parse::<Status>().ok());
        let envelope = dkim::Envelope::of(txn, spf);
        let found = dkim::verify(message, &envelope);
        if self.remove_forged_results {
            let values = message.header("Authentication-Results");
            // From the last, so that earlier indexes stay valid.
            for index in forged_results(&values, &found.authserv_id).into_iter().rev() {
                txn.remove_header_at("Authentication-Results", index);
            }
        }
        txn.add_header("Authentication-Results", &found.authentication_results);
        txn.set_metadata("dmarc", found.dmarc.name());
        txn.set_metadata("arc", found.arc.name());
        metrics::count("dmarc_results", &[("result", found.dmarc.name())]);
        metrics::count("arc_results", &[("result", found.arc.name())]);
        let verdict = self.judge(&found);
        if verdict == Verdict::Continue
            && let Some(domain) = &self.arc_seal
            && let Err(e) = dkim::seal(domain, &envelope)
        {
            log::warn(&format!("cannot ARC-seal for {domain}: {e}"));
        }
        if verdict != Verdict::Continue {
            log::info(&format!(
                "DMARC {} for {} (policy {:?}): {}",
                found.dmarc, found.dmarc_domain, found.dmarc_policy, found.authentication_results
            ));
        }
        verdict
    }
}

impl Plugin for Dkim {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        let client = txn.client();
        let ip = client.ip.parse().ok();
        let from = message.first_header("From");
        match self.direction(ip, client.authenticated.is_some(), from.as_deref()) {
            Direction::Sign(domain) => self.sign(message, txn, &domain),
            Direction::Verify => self.verify(message, txn),
            Direction::Skip | Direction::Ignore => Verdict::Continue,
        }
    }
}

export_plugin!(Dkim);

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim(json: &str) -> Dkim {
        Dkim::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn verification(dmarc: Status, policy: Policy) -> Verification {
        Verification {
            signatures: Vec::new(),
            spf: Status::Fail,
            dmarc,
            dmarc_domain: "bank.example".into(),
            dmarc_policy: policy,
            arc: Status::None,
            arc_instance: 0,
            authserv_id: "mx.example.com".into(),
            authentication_results: "mx.example.com; dmarc=fail".into(),
        }
    }

    #[test]
    fn from_domains_are_read_from_the_field() {
        for (field, domain) in [
            ("Alice <alice@Example.COM>", Some("example.com")),
            ("alice@example.com", Some("example.com")),
            ("\"Smith, A\" <a@x.example>", Some("x.example")),
            ("a@one.example, b@two.example", Some("one.example")),
            ("undisclosed", None),
            ("<a@bad domain>", None),
        ] {
            assert_eq!(from_domain(field).as_deref(), domain, "{field}");
        }
    }

    #[test]
    fn our_clients_are_signed_and_others_verified() {
        let plugin = dkim(r#"{"sign_networks": ["10.0.0.0/8"], "sign_domains": ["Example.com"]}"#);
        let inside = "10.1.2.3".parse().ok();
        let outside = "192.0.2.1".parse().ok();
        let from = Some("<a@example.com>");
        assert_eq!(
            plugin.direction(inside, false, from),
            Direction::Sign("example.com".into())
        );
        assert_eq!(
            plugin.direction(outside, true, from),
            Direction::Sign("example.com".into())
        );
        assert_eq!(
            plugin.direction(inside, false, Some("a@other.example")),
            Direction::Skip
        );
        assert_eq!(plugin.direction(outside, false, from), Direction::Verify);
        let quiet = dkim(r#"{"sign_authenticated": false, "verify": false}"#);
        assert_eq!(quiet.direction(outside, true, from), Direction::Ignore);
    }

    #[test]
    fn dmarc_policies_are_applied_on_failure_only() {
        let plugin = dkim("{}");
        let reject = plugin.judge(&verification(Status::Fail, Policy::Reject));
        assert_eq!(
            reject,
            Verdict::reject(
                550,
                "5.7.26",
                "Message rejected: it fails the DMARC policy of bank.example (p=reject)"
            )
        );
        assert_eq!(
            plugin.judge(&verification(Status::Fail, Policy::Quarantine)),
            Verdict::Quarantine("DMARC p=quarantine of bank.example".into())
        );
        for (status, policy) in [
            (Status::Fail, Policy::None),
            (Status::Pass, Policy::Reject),
            (Status::Temperror, Policy::Reject),
            (Status::None, Policy::Unspecified),
        ] {
            assert_eq!(plugin.judge(&verification(status, policy)), Verdict::Continue);
        }
        let lenient = dkim(r#"{"enforce_dmarc": false}"#);
        assert_eq!(
            lenient.judge(&verification(Status::Fail, Policy::Reject)),
            Verdict::Continue
        );
    }

    #[test]
    fn only_results_claiming_our_name_are_forged() {
        let values = [
            "mx.example.com; dkim=pass header.d=bank.example".to_owned(),
            "other.example; spf=pass".to_owned(),
            "MX.EXAMPLE.COM ; dmarc=pass".to_owned(),
        ];
        assert_eq!(forged_results(&values, "mx.example.com"), [0, 2]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let error = Dkim::from_settings(&Settings::from_json(r#"{"on_sign_error": "drop"}"#)).unwrap_err();
        assert!(error.contains("unknown variant `drop`"), "{error}");
        let error = Dkim::from_settings(&Settings::from_json(r#"{"sign_domains": ["a@b"]}"#)).unwrap_err();
        assert!(error.contains("is not a domain"), "{error}");
        let error = Dkim::from_settings(&Settings::from_json(r#"{"arc_seal": ""}"#)).unwrap_err();
        assert!(error.contains("arc_seal: \"\" is not a domain"), "{error}");
    }
}
