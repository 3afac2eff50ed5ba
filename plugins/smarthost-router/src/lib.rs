//! smarthost-router: routes recipients to next hops by recipient domain,
//! and optionally by sender domain. The smarthost-forwarding case: mail for
//! partners goes to their relays, everything else to the company relay.
//!
//! Runs at the `rcpt` stage. See README.md for the settings.

use mailgate_plugin_sdk::{Mailbox, NextHop, Plugin, ReversePath, Settings, Transaction, Verdict, export_plugin};
use serde::Deserialize;

/// The settings: rules tried in order; the first match routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    rules: Vec<Rule>,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Recipient domains: `example.com`, `*.example.com`, `*`.
    domains: Vec<String>,
    /// Sender domains; when given, the rule applies only to these senders.
    #[serde(default)]
    senders: Vec<String>,
    /// A `[[route]]` of the gateway's configuration, by name...
    #[serde(default)]
    route: Option<String>,
    /// ...or a smarthost, `host:port`.
    #[serde(default)]
    smarthost: Option<String>,
}

/// True when `domain` matches `pattern` (ASCII case ignored).
pub fn matches(pattern: &str, domain: &str) -> bool {
    let (pattern, domain) = (pattern.to_ascii_lowercase(), domain.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        _ if pattern == "*" => true,
        Some(parent) => domain.ends_with(&format!(".{parent}")),
        None => pattern == domain,
    }
}

impl Router {
    /// Parses and checks the settings.
    pub fn from_json(json: &Settings) -> Result<Self, String> {
        let router: Router = json.parse()?;
        for (i, rule) in router.rules.iter().enumerate() {
            if rule.domains.is_empty() {
                return Err(format!("rule {i}: `domains` is empty"));
            }
            if rule.route.is_some() == rule.smarthost.is_some() {
                return Err(format!("rule {i}: give exactly one of `route` and `smarthost`"));
            }
        }
        Ok(router)
    }

    /// The next hop for a recipient domain and an optional sender domain.
    pub fn next_hop(&self, rcpt_domain: &str, sender_domain: Option<&str>) -> Option<(usize, NextHop)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            let rcpt_ok = rule.domains.iter().any(|p| matches(p, rcpt_domain));
            let sender_ok =
                rule.senders.is_empty() || sender_domain.is_some_and(|d| rule.senders.iter().any(|p| matches(p, d)));
            if !(rcpt_ok && sender_ok) {
                return None;
            }
            let hop = match (&rule.route, &rule.smarthost) {
                (Some(route), _) => NextHop::Route(route.clone()),
                (None, Some(host)) => NextHop::Smarthost(host.clone()),
                (None, None) => return None,
            };
            Some((i, hop))
        })
    }
}

impl Plugin for Router {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_json(settings)
    }

    fn on_rcpt_to(&self, rcpt: &Mailbox, txn: &Transaction) -> Verdict {
        let sender = match txn.reverse_path() {
            Some(ReversePath::Mailbox(sender)) => Some(sender),
            _ => None,
        };
        if let Some((rule, hop)) = self.next_hop(rcpt.domain(), sender.as_ref().map(Mailbox::domain)) {
            txn.route(hop);
            txn.set_metadata("smarthost-router.rule", &rule.to_string());
        }
        Verdict::Continue
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;

    fn router(json: &str) -> Result<Router, String> {
        Router::from_json(&Settings::from_json(json))
    }

    #[test]
    fn patterns() {
        assert!(matches("example.com", "EXAMPLE.com"));
        assert!(!matches("example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "badexample.com"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn first_matching_rule_routes() {
        let r = router(
            r#"{"rules": [
                {"domains": ["partner.test"], "senders": ["sales.test"], "smarthost": "sales-relay:25"},
                {"domains": ["partner.test", "*.partner.test"], "smarthost": "partner-relay:2525"},
                {"domains": ["*"], "route": "outbound"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            r.next_hop("partner.test", Some("sales.test")),
            Some((0, NextHop::Smarthost("sales-relay:25".into())))
        );
        assert_eq!(
            r.next_hop("mx.partner.test", Some("other.test")),
            Some((1, NextHop::Smarthost("partner-relay:2525".into())))
        );
        assert_eq!(
            r.next_hop("elsewhere.test", None),
            Some((2, NextHop::Route("outbound".into())))
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(router(r#"{"rules": [{"domains": [], "route": "x"}]}"#).is_err());
        assert!(router(r#"{"rules": [{"domains": ["a"], "route": "x", "smarthost": "h:25"}]}"#).is_err());
        assert!(router(r#"{"rules": [{"domains": ["a"]}]}"#).is_err());
        assert!(router(r#"{"rulez": []}"#).is_err());
    }
}
