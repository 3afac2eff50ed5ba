//! suppression: remembers the addresses that hard-bounced and keeps mail
//! from going to them again. At the outbound stage `bounce` a permanent
//! failure reported by the next hop with a "bad mailbox" status (5.1.x,
//! 5.2.1 by default) puts the recipient in the plugin's `kv` namespace;
//! later mail to it is refused at `rcpt` (550 5.1.1), or, with `action =
//! "drop"`, accepted and dropped at `data` with a log line. Operators list
//! and lift entries with `mailgate kv list|delete suppression`. See
//! README.md.

use std::time::Duration;

use mailgate_plugin_sdk::kv::{self, Store};
use mailgate_plugin_sdk::outbound::{BounceVerdict, Delivery, Failure};
use mailgate_plugin_sdk::{
    Mailbox, Message, Plugin, Settings, Transaction, Verdict, duration, export_plugin, log, metrics,
};
use serde::Deserialize;

/// What happens to mail for a suppressed address.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// 550 5.1.1 at RCPT.
    #[default]
    Reject,
    /// Accepted, then removed from the message at DATA, with a log line.
    Drop,
}

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    /// Reject or drop.
    #[serde(default)]
    action: Action,
    /// How long an address stays suppressed.
    #[serde(default = "default_ttl", deserialize_with = "duration")]
    ttl: Duration,
    /// Enhanced status codes (or their prefixes, "5.1.") that count as a
    /// hard bounce.
    #[serde(default = "default_codes")]
    codes: Vec<String>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(365 * 86_400)
}

fn default_codes() -> Vec<String> {
    vec!["5.1.".into(), "5.2.1".into()]
}

/// The key of an address.
pub fn key(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

impl Suppression {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let suppression: Self = settings.parse()?;
        if let Some(bad) = suppression.codes.iter().find(|c| !c.starts_with("5.")) {
            return Err(format!("codes: {bad:?} is not a permanent (5.x.y) status"));
        }
        Ok(suppression)
    }

    /// Whether `failure` is a hard bounce: permanent, reported by the next
    /// hop (a reply code), with one of the configured statuses.
    pub fn is_hard(&self, failure: &Failure) -> bool {
        let status = failure.enhanced.as_deref().unwrap_or("");
        failure.permanent && failure.code.is_some() && self.codes.iter().any(|c| status.starts_with(c.as_str()))
    }

    /// Records the recipients of a hard bounce in `store`.
    pub fn record(&self, store: &impl Store, delivery: &Delivery, failure: &Failure) -> Vec<String> {
        if !self.is_hard(failure) {
            return Vec::new();
        }
        let mut recorded = Vec::new();
        for recipient in &delivery.recipients {
            let reason = failure.text.replace(['\r', '\n'], " ");
            match store.set(&key(recipient), reason.as_bytes(), Some(self.ttl)) {
                Ok(()) => recorded.push(recipient.clone()),
                Err(e) => log::warn(&format!("cannot suppress {recipient}: {e}")),
            }
        }
        recorded
    }

    /// Why `address` is suppressed, if it is (a store error counts as not
    /// suppressed: mail is not refused on a guess).
    pub fn suppressed(&self, store: &impl Store, address: &str) -> Option<String> {
        match store.get(&key(address)) {
            Ok(found) => found.map(|reason| String::from_utf8_lossy(&reason).into_owned()),
            Err(e) => {
                log::warn(&format!("cannot check {address}: {e}"));
                None
            }
        }
    }
}

impl Plugin for Suppression {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_bounce(&self, delivery: &Delivery, failure: &Failure) -> BounceVerdict {
        for recipient in self.record(&kv::Host, delivery, failure) {
            log::info(&format!(
                "suppressing {recipient} after a hard bounce: {}",
                failure.text
            ));
            metrics::count("suppression_added", &[]);
        }
        BounceVerdict::Send
    }

    fn on_rcpt_to(&self, rcpt: &Mailbox, _txn: &Transaction) -> Verdict {
        if self.action != Action::Reject {
            return Verdict::Continue;
        }
        match self.suppressed(&kv::Host, rcpt.as_str()) {
            Some(_) => {
                metrics::count("suppression_refused", &[]);
                Verdict::reject(
                    550,
                    "5.1.1",
                    &format!("{rcpt}: suppressed after an earlier delivery failed for good"),
                )
            }
            None => Verdict::Continue,
        }
    }

    fn on_data(&self, _message: &Message, txn: &Transaction) -> Verdict {
        if self.action != Action::Drop {
            return Verdict::Continue;
        }
        for rcpt in txn.recipients() {
            if let Some(reason) = self.suppressed(&kv::Host, rcpt.as_str()) {
                log::info(&format!("dropping {rcpt}: suppressed ({reason})"));
                metrics::count("suppression_dropped", &[]);
                txn.remove_recipient(rcpt.as_str());
            }
        }
        Verdict::Continue
    }
}

export_plugin!(Suppression);

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::kv::Memory;

    fn suppression(json: &str) -> Suppression {
        Suppression::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn failure(code: Option<u16>, enhanced: &str, permanent: bool) -> Failure {
        Failure {
            code,
            enhanced: Some(enhanced.into()),
            text: format!("{} {enhanced} no such user", code.unwrap_or(0)),
            permanent,
        }
    }

    fn delivery(to: &str) -> Delivery {
        Delivery {
            queue_id: "q".into(),
            reverse_path: "a@x.test".into(),
            recipients: vec![to.into()],
            destination: "mx:y.test".into(),
            route: None,
            attempt: 1,
            age_seconds: 1,
            size: 10,
        }
    }

    #[test]
    fn only_hard_bounces_from_the_next_hop_are_recorded() {
        let plugin = suppression("{}");
        let store = Memory::new();
        assert!(plugin.record(&store, &delivery("Gone@Y.test"), &failure(Some(550), "5.1.1", true)) == ["Gone@Y.test"]);
        assert_eq!(
            plugin.suppressed(&store, "gone@y.test").as_deref(),
            Some("550 5.1.1 no such user")
        );
        for (what, f) in [
            ("a policy refusal", failure(Some(550), "5.7.1", true)),
            ("a temporary failure", failure(Some(450), "4.1.1", false)),
            ("a local failure", failure(None, "5.1.1", true)),
        ] {
            assert!(
                plugin.record(&store, &delivery("other@y.test"), &f).is_empty(),
                "{what}"
            );
        }
        assert_eq!(plugin.suppressed(&store, "other@y.test"), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let plugin = suppression(r#"{"ttl": "2d"}"#);
        let store = Memory::new();
        plugin.record(&store, &delivery("gone@y.test"), &failure(Some(550), "5.2.1", true));
        store.advance(Duration::from_secs(86_400));
        assert!(plugin.suppressed(&store, "gone@y.test").is_some());
        store.advance(Duration::from_secs(2 * 86_400));
        assert_eq!(plugin.suppressed(&store, "gone@y.test"), None);
    }

    #[test]
    fn bad_settings_are_refused() {
        let error = Suppression::from_settings(&Settings::from_json(r#"{"codes": ["4.1.1"]}"#))
            .err()
            .unwrap_or_default();
        assert!(error.contains("not a permanent"), "{error}");
        let error = Suppression::from_settings(&Settings::from_json(r#"{"action": "bounce"}"#))
            .err()
            .unwrap_or_default();
        assert!(error.contains("unknown variant"), "{error}");
    }
}
