//! The route table: domain patterns to next hops, tried in the order the
//! configuration lists them.

use std::path::PathBuf;
use std::sync::Arc;

use super::tls::SmtpPolicy;
use crate::queue::RouteOverride;
use crate::smtp::address::DomainPattern;

/// What a route says about where mail goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Relay over SMTP to this host and port.
    Smarthost {
        /// A host name or IP address.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// Relay over SMTP to the recipient domain's MX hosts.
    Mx,
    /// Drop into this maildir, one file per recipient.
    Maildir(PathBuf),
}

impl Target {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (port 25 by default).
    pub fn parse_smarthost(text: &str) -> Result<Self, String> {
        match RouteOverride::parse_smarthost(text)? {
            RouteOverride::Smarthost { host, port } => Ok(Self::Smarthost { host, port }),
            RouteOverride::Named(_) => Err(format!("invalid smarthost {text:?}")),
        }
    }
}

/// Where an SMTP connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One host (its addresses tried in order).
    Host {
        /// A host name or IP address.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// The MX hosts of a domain (lower case).
    Mx(String),
}

impl Destination {
    /// The key under which connections here are pooled and counted against
    /// the per-destination limit: the destination and the policy (two
    /// routes to one host with different credentials do not share).
    pub fn pool_key(&self, policy: &SmtpPolicy) -> String {
        format!("{self}#{}", policy.id)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Mx(domain) => write!(f, "mx:{domain}"),
        }
    }
}

/// Where mail for one recipient goes next; recipients with equal next
/// hops share a transaction.
#[derive(Clone, Debug)]
pub enum NextHop {
    /// Over SMTP, with the TLS, AUTH and concurrency policy of the route.
    Smtp {
        /// The host or domain.
        destination: Destination,
        /// How to talk to it.
        policy: Arc<SmtpPolicy>,
    },
    /// Into a maildir.
    Maildir(PathBuf),
}

impl PartialEq for NextHop {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Smtp { destination, policy },
                Self::Smtp {
                    destination: other_destination,
                    policy: other_policy,
                },
            ) => destination == other_destination && Arc::ptr_eq(policy, other_policy),
            (Self::Maildir(a), Self::Maildir(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for NextHop {}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp { destination, .. } => destination.fmt(f),
            Self::Maildir(path) => write!(f, "maildir:{}", path.display()),
        }
    }
}

/// One `[[route]]`.
#[derive(Clone, Debug)]
pub struct Route {
    /// Its name, by which plugins can route to it.
    pub name: Option<String>,
    /// The domains it applies to.
    pub patterns: Vec<DomainPattern>,
    /// Where they go.
    pub target: Target,
    /// How SMTP targets are spoken to.
    pub policy: Arc<SmtpPolicy>,
}

impl Route {
    fn hop(&self, domain: &str) -> NextHop {
        hop(&self.target, &self.policy, domain)
    }
}

fn hop(target: &Target, policy: &Arc<SmtpPolicy>, domain: &str) -> NextHop {
    let destination = match target {
        Target::Smarthost { host, port } => Destination::Host {
            host: host.clone(),
            port: *port,
        },
        Target::Mx => Destination::Mx(domain.to_owned()),
        Target::Maildir(path) => return NextHop::Maildir(path.clone()),
    };
    NextHop::Smtp {
        destination,
        policy: Arc::clone(policy),
    }
}

/// All routes, in order, and the policy for everything else (MX delivery
/// when no route matches, smarthosts chosen by plugins).
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_policy: Arc<SmtpPolicy>,
}

impl RouteTable {
    /// A table trying `routes` in order.
    pub fn new(routes: Vec<Route>, default_policy: Arc<SmtpPolicy>) -> Self {
        Self { routes, default_policy }
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route with this name.
    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name.as_deref() == Some(name))
    }

    /// The names of all named routes.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().filter_map(|r| r.name.as_deref())
    }

    /// Where a recipient goes: the plugin's choice if any, else the first
    /// route whose pattern matches its (lower-case) domain, else the
    /// domain's MX hosts. `None` only for a plugin's route name that is
    /// no longer configured.
    pub fn next_hop(&self, domain: &str, chosen: Option<&RouteOverride>) -> Option<NextHop> {
        match chosen {
            Some(RouteOverride::Named(name)) => self.by_name(name).map(|r| r.hop(domain)),
            Some(RouteOverride::Smarthost { host, port }) => Some(NextHop::Smtp {
                destination: Destination::Host {
                    host: host.clone(),
                    port: *port,
                },
                policy: Arc::clone(&self.default_policy),
            }),
            None => Some(match self.lookup(domain) {
                Some(route) => route.hop(domain),
                None => hop(&Target::Mx, &self.default_policy, domain),
            }),
        }
    }

    /// The first route with a pattern matching a (lower-case) domain.
    pub fn lookup(&self, domain: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(domain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smarthost(host: &str, port: u16) -> Target {
        Target::Smarthost {
            host: host.into(),
            port,
        }
    }

    fn route(name: Option<&str>, pattern: &str, target: Target) -> Route {
        Route {
            name: name.map(Into::into),
            patterns: vec![DomainPattern::parse(pattern).unwrap()],
            target,
            policy: Arc::new(SmtpPolicy::default()),
        }
    }

    fn destination(hop: Option<NextHop>) -> String {
        hop.map(|h| h.to_string()).unwrap_or_default()
    }

    #[test]
    fn parses_smarthost_forms() {
        assert_eq!(
            Target::parse_smarthost("relay.test:2525"),
            Ok(smarthost("relay.test", 2525))
        );
        assert_eq!(Target::parse_smarthost("relay.test"), Ok(smarthost("relay.test", 25)));
        assert_eq!(Target::parse_smarthost("127.0.0.1:25"), Ok(smarthost("127.0.0.1", 25)));
        assert_eq!(Target::parse_smarthost("[::1]:2525"), Ok(smarthost("::1", 2525)));
        assert_eq!(Target::parse_smarthost("[::1]"), Ok(smarthost("::1", 25)));
        for bad in ["", ":25", "host:0", "host:x", "host:70000", "::1:25", "[::1", "a b:25"] {
            assert!(Target::parse_smarthost(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_matching_route_wins_and_mx_is_the_default() {
        let table = RouteTable::new(
            vec![
                route(Some("local"), "local.test", Target::Maildir("/m".into())),
                route(None, "*.corp.test", smarthost("corp", 25)),
                route(Some("direct"), "direct.test", Target::Mx),
            ],
            Arc::new(SmtpPolicy::default()),
        );
        assert_eq!(destination(table.next_hop("local.test", None)), "maildir:/m");
        assert_eq!(destination(table.next_hop("a.corp.test", None)), "corp:25");
        assert_eq!(destination(table.next_hop("direct.test", None)), "mx:direct.test");
        assert_eq!(destination(table.next_hop("other.test", None)), "mx:other.test");
        let local = RouteOverride::Named("local".into());
        assert_eq!(destination(table.next_hop("other.test", Some(&local))), "maildir:/m");
        let direct = RouteOverride::Named("direct".into());
        assert_eq!(destination(table.next_hop("x.test", Some(&direct))), "mx:x.test");
        assert_eq!(
            table.next_hop("other.test", Some(&RouteOverride::Named("nope".into()))),
            None
        );
    }

    #[test]
    fn hops_are_equal_only_with_the_same_policy() {
        let a = route(None, "*", smarthost("h", 25));
        let b = route(None, "*", smarthost("h", 25));
        assert_eq!(a.hop("x.test"), a.hop("y.test"));
        assert_ne!(a.hop("x.test"), b.hop("x.test"));
        let mx = route(None, "*", Target::Mx);
        assert_ne!(mx.hop("x.test"), mx.hop("y.test"));
    }
}
