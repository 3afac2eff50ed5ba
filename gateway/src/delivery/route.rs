//! The route table: domain patterns to next hops, tried in the order the
//! configuration lists them.

use std::path::PathBuf;

use crate::queue::RouteOverride;
use crate::smtp::address::DomainPattern;

/// Where mail for a recipient goes next.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Relay over SMTP to this host and port.
    Smarthost {
        /// A host name or IP address.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// Drop into this maildir, one file per recipient.
    Maildir(PathBuf),
}

impl NextHop {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (port 25 by default).
    pub fn parse_smarthost(text: &str) -> Result<Self, String> {
        match RouteOverride::parse_smarthost(text)? {
            RouteOverride::Smarthost { host, port } => Ok(Self::Smarthost { host, port }),
            RouteOverride::Named(_) => Err(format!("invalid smarthost {text:?}")),
        }
    }
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smarthost { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Smarthost { host, port } => write!(f, "{host}:{port}"),
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
    pub next_hop: NextHop,
}

/// All routes, in order.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table trying `routes` in order.
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The next hop of the route with this name.
    pub fn by_name(&self, name: &str) -> Option<&NextHop> {
        self.routes
            .iter()
            .find(|r| r.name.as_deref() == Some(name))
            .map(|r| &r.next_hop)
    }

    /// The names of all named routes.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().filter_map(|r| r.name.as_deref())
    }

    /// Where a recipient goes: the plugin's choice if any, else the first
    /// route whose pattern matches its (lower-case) domain.
    pub fn next_hop(&self, domain: &str, chosen: Option<&RouteOverride>) -> Option<NextHop> {
        match chosen {
            Some(RouteOverride::Named(name)) => self.by_name(name).cloned(),
            Some(RouteOverride::Smarthost { host, port }) => Some(NextHop::Smarthost {
                host: host.clone(),
                port: *port,
            }),
            None => self.lookup(domain).cloned(),
        }
    }

    /// The next hop for a (lower-case) domain: the first route with a
    /// matching pattern.
    pub fn lookup(&self, domain: &str) -> Option<&NextHop> {
        self.routes
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(domain)))
            .map(|r| &r.next_hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(host: &str, port: u16) -> NextHop {
        NextHop::Smarthost {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_smarthost_forms() {
        assert_eq!(NextHop::parse_smarthost("relay.test:2525"), Ok(hop("relay.test", 2525)));
        assert_eq!(NextHop::parse_smarthost("relay.test"), Ok(hop("relay.test", 25)));
        assert_eq!(NextHop::parse_smarthost("127.0.0.1:25"), Ok(hop("127.0.0.1", 25)));
        assert_eq!(NextHop::parse_smarthost("[::1]:2525"), Ok(hop("::1", 2525)));
        assert_eq!(NextHop::parse_smarthost("[::1]"), Ok(hop("::1", 25)));
        for bad in ["", ":25", "host:0", "host:x", "host:70000", "::1:25", "[::1", "a b:25"] {
            assert!(NextHop::parse_smarthost(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let table = RouteTable::new(vec![
            Route {
                name: Some("local".into()),
                patterns: vec![DomainPattern::parse("local.test").unwrap()],
                next_hop: NextHop::Maildir("/m".into()),
            },
            Route {
                name: None,
                patterns: vec![DomainPattern::parse("*.corp.test").unwrap()],
                next_hop: hop("corp", 25),
            },
            Route {
                name: None,
                patterns: vec![DomainPattern::parse("*").unwrap()],
                next_hop: hop("out", 25),
            },
        ]);
        assert_eq!(table.lookup("local.test"), Some(&NextHop::Maildir("/m".into())));
        assert_eq!(table.lookup("a.corp.test"), Some(&hop("corp", 25)));
        assert_eq!(table.lookup("other.test"), Some(&hop("out", 25)));
        assert_eq!(RouteTable::default().lookup("x.test"), None);
        assert_eq!(table.by_name("local"), Some(&NextHop::Maildir("/m".into())));
        let chosen = RouteOverride::Named("local".into());
        assert_eq!(
            table.next_hop("other.test", Some(&chosen)),
            Some(NextHop::Maildir("/m".into()))
        );
        assert_eq!(
            table.next_hop("other.test", Some(&RouteOverride::Named("nope".into()))),
            None
        );
    }
}
