//! The built-in relay policy (DESIGN section 6): anyone may send to the
//! accepted domains; relaying anywhere else needs an authenticated user or
//! a trusted network. The default is not an open relay.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::smtp::Mailbox;
use crate::smtp::address::DomainPattern;

/// Who may send where.
#[derive(Clone, Debug, Default)]
pub struct RelayPolicy {
    accepted_domains: Vec<DomainPattern>,
    trusted_networks: Vec<IpNet>,
}

impl RelayPolicy {
    /// A policy accepting mail for `accepted_domains` from anyone and for
    /// any domain from `trusted_networks`.
    pub fn new(accepted_domains: Vec<DomainPattern>, trusted_networks: Vec<IpNet>) -> Self {
        Self {
            accepted_domains,
            trusted_networks,
        }
    }

    /// True when `peer` is in a trusted network.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_networks.iter().any(|net| net.contains(&peer))
    }

    /// True when `peer`, authenticated or not, may send to `recipient`.
    pub fn allows(&self, peer: IpAddr, authenticated: bool, recipient: &Mailbox) -> bool {
        if authenticated || self.is_trusted(peer) {
            return true;
        }
        let domain = recipient.domain_key();
        self.accepted_domains.iter().any(|p| p.matches(&domain))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, from a dual-stack
/// socket) is checked as the IPv4 address it is.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RelayPolicy {
        RelayPolicy::new(
            vec![
                DomainPattern::parse("example.test").unwrap(),
                DomainPattern::parse("*.example.test").unwrap(),
            ],
            vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        )
    }

    #[test]
    fn accepted_domains_are_open_to_anyone() {
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(policy().allows(stranger, false, &Mailbox::parse("a@example.test").unwrap()));
        assert!(policy().allows(stranger, false, &Mailbox::parse("a@Sub.Example.TEST").unwrap()));
        assert!(!policy().allows(stranger, false, &Mailbox::parse("a@elsewhere.test").unwrap()));
    }

    #[test]
    fn trusted_networks_may_relay_anywhere() {
        assert!(policy().allows(
            "10.1.2.3".parse().unwrap(),
            false,
            &Mailbox::parse("a@elsewhere.test").unwrap()
        ));
        assert!(policy().allows(
            "::ffff:10.1.2.3".parse().unwrap(),
            false,
            &Mailbox::parse("a@elsewhere.test").unwrap()
        ));
        assert!(policy().allows(
            "::1".parse().unwrap(),
            false,
            &Mailbox::parse("a@elsewhere.test").unwrap()
        ));
    }

    #[test]
    fn authenticated_users_may_relay_anywhere() {
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(policy().allows(stranger, true, &Mailbox::parse("a@elsewhere.test").unwrap()));
    }

    #[test]
    fn default_policy_relays_nothing() {
        assert!(!RelayPolicy::default().allows(
            "127.0.0.1".parse().unwrap(),
            false,
            &Mailbox::parse("a@x.test").unwrap()
        ));
    }
}
