//! The `dns` capability: lookups through the gateway's resolver, cached
//! for the rest of the transaction. The plugin must be granted `dns` in
//! the configuration.
//!
//! Plugin logic takes a [`Resolver`], so that its unit tests can run on
//! the host against a [`StaticZone`] while the built plugin uses [`Host`].
//!
//! ```no_run
//! use mailgate_plugin_sdk::dns::{self, Resolver};
//!
//! fn listed(resolver: &impl Resolver, query: &str) -> bool {
//!     matches!(resolver.a(query), Ok(addresses) if !addresses.is_empty())
//! }
//! let _ = listed(&dns::Host, "2.0.0.127.bl.example");
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bindings::mailgate::plugin::dns as wit;

/// Why a lookup has no answer. A name without records of the type asked
/// for (NODATA) is an empty answer, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// NXDOMAIN: the name does not exist.
    NoSuchName,
    /// The name (or, for PTR, the address) is not valid.
    Invalid(String),
    /// SERVFAIL, a timeout, a network error or the lookup limit.
    Temporary(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSuchName => f.write_str("no such name"),
            Self::Invalid(reason) => write!(f, "invalid: {reason}"),
            Self::Temporary(reason) => write!(f, "temporary failure: {reason}"),
        }
    }
}

/// An MX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The host, without the trailing dot; "" for a null MX.
    pub exchange: String,
}

/// Answers lookups: [`Host`] in the gateway, [`StaticZone`] in tests.
pub trait Resolver {
    /// IPv4 addresses of `name`.
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, Error>;
    /// IPv6 addresses of `name`.
    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, Error>;
    /// MX records of `name`.
    fn mx(&self, name: &str) -> Result<Vec<Mx>, Error>;
    /// TXT records of `name`, each record's strings joined.
    fn txt(&self, name: &str) -> Result<Vec<String>, Error>;
    /// Names of `ip` (PTR).
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, Error>;
}

/// The gateway's resolver, through the `dns` capability.
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

fn error(e: wit::Error) -> Error {
    match e {
        wit::Error::NoSuchName => Error::NoSuchName,
        wit::Error::Invalid(reason) => Error::Invalid(reason),
        wit::Error::Temporary(reason) => Error::Temporary(reason),
    }
}

fn parsed<T: std::str::FromStr>(answer: Result<Vec<String>, wit::Error>) -> Result<Vec<T>, Error> {
    answer
        .map(|list| list.iter().filter_map(|s| s.parse().ok()).collect())
        .map_err(error)
}

impl Resolver for Host {
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, Error> {
        parsed(wit::a(name))
    }

    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, Error> {
        parsed(wit::aaaa(name))
    }

    fn mx(&self, name: &str) -> Result<Vec<Mx>, Error> {
        wit::mx(name)
            .map(|list| {
                list.into_iter()
                    .map(|r| Mx {
                        preference: r.preference,
                        exchange: r.exchange,
                    })
                    .collect()
            })
            .map_err(error)
    }

    fn txt(&self, name: &str) -> Result<Vec<String>, Error> {
        wit::txt(name).map_err(error)
    }

    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, Error> {
        wit::ptr(&ip.to_string()).map_err(error)
    }
}

/// A zone written by a test: names without records are NXDOMAIN, names
/// marked with [`StaticZone::with_failure`] fail temporarily.
#[derive(Clone, Debug, Default)]
pub struct StaticZone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    aaaa: HashMap<String, Vec<Ipv6Addr>>,
    mx: HashMap<String, Vec<Mx>>,
    txt: HashMap<String, Vec<String>>,
    ptr: HashMap<IpAddr, Vec<String>>,
    failing: Vec<String>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl StaticZone {
    /// An empty zone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an A or AAAA record.
    pub fn with_ip(mut self, name: &str, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => self.a.entry(key(name)).or_default().push(v4),
            IpAddr::V6(v6) => self.aaaa.entry(key(name)).or_default().push(v6),
        }
        self
    }

    /// Adds an MX record.
    pub fn with_mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        self.mx.entry(key(name)).or_default().push(Mx {
            preference,
            exchange: key(exchange),
        });
        self
    }

    /// Adds a TXT record.
    pub fn with_txt(mut self, name: &str, text: &str) -> Self {
        self.txt.entry(key(name)).or_default().push(text.to_owned());
        self
    }

    /// Adds a PTR record.
    pub fn with_ptr(mut self, ip: IpAddr, name: &str) -> Self {
        self.ptr.entry(ip).or_default().push(key(name));
        self
    }

    /// Makes every lookup of `name` fail temporarily.
    pub fn with_failure(mut self, name: &str) -> Self {
        self.failing.push(key(name));
        self
    }

    fn exists(&self, name: &str) -> bool {
        self.a.contains_key(name)
            || self.aaaa.contains_key(name)
            || self.mx.contains_key(name)
            || self.txt.contains_key(name)
    }

    fn answer<T: Clone>(&self, map: &HashMap<String, Vec<T>>, name: &str) -> Result<Vec<T>, Error> {
        let name = key(name);
        if self.failing.contains(&name) {
            return Err(Error::Temporary("SERVFAIL".into()));
        }
        match map.get(&name) {
            Some(records) => Ok(records.clone()),
            None if self.exists(&name) => Ok(Vec::new()),
            None => Err(Error::NoSuchName),
        }
    }
}

impl Resolver for StaticZone {
    fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, Error> {
        self.answer(&self.a, name)
    }

    fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, Error> {
        self.answer(&self.aaaa, name)
    }

    fn mx(&self, name: &str) -> Result<Vec<Mx>, Error> {
        self.answer(&self.mx, name)
    }

    fn txt(&self, name: &str) -> Result<Vec<String>, Error> {
        self.answer(&self.txt, name)
    }

    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, Error> {
        self.ptr.get(&ip).cloned().ok_or(Error::NoSuchName)
    }
}

/// The DNSBL query name of `ip` under `zone`: the octets reversed for
/// IPv4 (`2.0.0.127.zone`), the nibbles reversed for IPv6 (RFC 5782).
pub fn reversed_query(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push(nibble(byte & 0xf));
                name.push('.');
                name.push(nibble(byte >> 4));
                name.push('.');
            }
            name.push_str(zone);
            name
        }
    }
}

fn nibble(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_queries() {
        assert_eq!(
            reversed_query("192.0.2.1".parse().unwrap(), "bl.example."),
            "1.2.0.192.bl.example"
        );
        assert_eq!(
            reversed_query("2001:db8::1".parse().unwrap(), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
    }

    #[test]
    fn static_zone_answers_like_dns() {
        let zone = StaticZone::new()
            .with_ip("a.example", "192.0.2.1".parse().unwrap())
            .with_txt("a.example", "v=spf1 -all")
            .with_failure("broken.example");
        assert_eq!(
            zone.a("A.example.").unwrap(),
            ["192.0.2.1".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(zone.mx("a.example"), Ok(Vec::new()), "NODATA");
        assert_eq!(zone.a("b.example"), Err(Error::NoSuchName));
        assert!(matches!(zone.txt("broken.example"), Err(Error::Temporary(_))));
    }
}
