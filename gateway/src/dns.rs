//! The gateway's DNS resolver (hickory-resolver): MX lookups and next-hop
//! addresses for delivery, and the lookups of the plugins' `dns`
//! capability. Either the system's configuration (`/etc/resolv.conf`) or
//! the name servers listed in `[dns]`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::TrustAnchors;
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::seq::SliceRandom;
use tracing::warn;

use crate::metrics::{DnsKind, DnsResult, metrics};
use crate::plugin::{self, BoxFuture, DnsAnswer, DnsFailure, DnsRecord, DnsService};

/// `[dns]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask; `None` means the system's configuration.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// How long one query may take.
    pub timeout: Duration,
    /// Tries per query before giving up.
    pub attempts: usize,
}

/// Why a lookup found nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("the name does not exist (NXDOMAIN)")]
    NoSuchName,
    /// The name exists but has no records of the type asked for.
    #[error("no records of that type")]
    NoRecords,
    /// SERVFAIL, a timeout, a network error: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// The validating resolver (DANE) found the answer bogus: also a
    /// temporary failure, never taken as "no records". The payload names
    /// the query ("the MX records of example.com").
    #[error("temporary DNS failure: DNSSEC validation failed (bogus) for {0}")]
    Bogus(String),
}

/// An MX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The mail exchanger's host name, without the trailing dot; empty for
    /// the root (a null MX).
    pub exchange: String,
}

impl Mx {
    /// The MX record in `data`, if it is one.
    pub(crate) fn of(data: &RData) -> Option<Self> {
        match data {
            RData::MX(mx) => Some(Self {
                preference: mx.preference,
                exchange: mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
            }),
            _ => None,
        }
    }
}

/// The resolver, shared by all deliveries; built on first use, inside the
/// runtime.
#[derive(Clone)]
pub struct Resolver {
    settings: DnsSettings,
    /// Validates DNSSEC from these anchors (the DANE resolver only).
    anchors: Option<Arc<TrustAnchors>>,
    inner: Arc<OnceLock<Option<TokioResolver>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("settings", &self.settings).finish()
    }
}

impl Resolver {
    /// A resolver for `settings`.
    pub fn new(settings: DnsSettings) -> Self {
        Self {
            settings,
            anchors: None,
            inner: Arc::new(OnceLock::new()),
        }
    }

    /// A resolver for `settings` that validates DNSSEC from `anchors`:
    /// each record carries its proof (secure, insecure), and a bogus
    /// answer is an error.
    pub fn validating(settings: DnsSettings, anchors: Arc<TrustAnchors>) -> Self {
        Self {
            anchors: Some(anchors),
            ..Self::new(settings)
        }
    }

    /// When the system configuration cannot be read, lookups fail as
    /// temporary errors (mail stays queued) and a warning says why.
    fn build(settings: &DnsSettings, anchors: Option<&Arc<TrustAnchors>>) -> Option<TokioResolver> {
        let builder = match &settings.nameservers {
            Some(servers) => {
                let servers = servers
                    .iter()
                    .map(|addr| {
                        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                        for connection in &mut server.connections {
                            connection.port = addr.port();
                        }
                        server
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioRuntimeProvider::default(),
                )
            }
            None => match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(e) => {
                    warn!(error = %e, "cannot read the system resolver configuration; set `dns.nameservers`");
                    return None;
                }
            },
        };
        let mut builder = match anchors {
            Some(anchors) => builder.with_trust_anchor(Arc::clone(anchors)),
            None => builder,
        };
        let options = builder.options_mut();
        options.timeout = settings.timeout;
        options.attempts = settings.attempts;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        match builder.build() {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                warn!(error = %e, "cannot build the DNS resolver");
                None
            }
        }
    }

    fn resolver(&self) -> Result<&TokioResolver, DnsError> {
        self.inner
            .get_or_init(|| Self::build(&self.settings, self.anchors.as_ref()))
            .as_ref()
            .ok_or_else(|| DnsError::Temporary("no DNS resolver configured".into()))
    }

    /// The hickory resolver itself, for mail-auth (DKIM, SPF, DMARC).
    pub fn hickory(&self) -> Result<TokioResolver, DnsError> {
        self.resolver().cloned()
    }

    /// The MX records of `domain`, in the order received.
    pub async fn mx(&self, domain: &str) -> Result<Vec<Mx>, DnsError> {
        let result = self.lookup_mx(domain).await;
        count(DnsKind::Mx, &result);
        result
    }

    async fn lookup_mx(&self, domain: &str) -> Result<Vec<Mx>, DnsError> {
        let lookup = self.resolver()?.mx_lookup(fqdn(domain)).await.map_err(classify)?;
        let records: Vec<Mx> = lookup.answers().iter().filter_map(|r| Mx::of(&r.data)).collect();
        if records.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(records)
    }

    /// The TXT records of `name`, each one's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let result = async {
            let lookup = self
                .resolver()?
                .lookup(fqdn(name), RecordType::TXT)
                .await
                .map_err(classify)?;
            let records: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match record(&r.data) {
                    Some(DnsRecord::Txt(text)) => Some(text),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                return Err(DnsError::NoRecords);
            }
            Ok(records)
        }
        .await;
        count(DnsKind::Txt, &result);
        result
    }

    /// The addresses of `host` (A and AAAA, IPv4 first); an IP literal is
    /// its own answer.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let result = self.lookup_addresses(host).await;
        count(DnsKind::Ip, &result);
        result
    }

    async fn lookup_addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self.resolver()?.lookup_ip(fqdn(host)).await.map_err(classify)?;
        let addresses: Vec<IpAddr> = lookup.iter().collect();
        if addresses.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(addresses)
    }
}

impl Resolver {
    /// A plugin's lookup, bounded by the resolver's timeout times its
    /// attempts.
    async fn plugin_lookup(&self, kind: plugin::DnsKind, name: &str) -> DnsAnswer {
        let (query, record_type, metric) = match kind {
            plugin::DnsKind::A => (fqdn(name), RecordType::A, DnsKind::A),
            plugin::DnsKind::Aaaa => (fqdn(name), RecordType::AAAA, DnsKind::Aaaa),
            plugin::DnsKind::Mx => (fqdn(name), RecordType::MX, DnsKind::Mx),
            plugin::DnsKind::Txt => (fqdn(name), RecordType::TXT, DnsKind::Txt),
            plugin::DnsKind::Ptr => {
                let ip = name
                    .parse::<IpAddr>()
                    .map_err(|_| DnsFailure::Invalid(format!("{name:?} is not an IP address")))?;
                (reverse_name(ip), RecordType::PTR, DnsKind::Ptr)
            }
        };
        let limit = self.settings.timeout * u32::try_from(self.settings.attempts).unwrap_or(u32::MAX);
        let lookup = async {
            let resolver = self.resolver()?;
            resolver.lookup(query, record_type).await.map_err(classify)
        };
        let result = match tokio::time::timeout(limit, lookup).await {
            Ok(Ok(lookup)) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| record(&r.data))
                .collect::<Vec<_>>()),
            Ok(Err(DnsError::NoRecords)) => Ok(Vec::new()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DnsError::Temporary(format!("no answer within {limit:?}"))),
        };
        let counted = match &result {
            Ok(records) if records.is_empty() => DnsResult::NoData,
            Ok(_) => DnsResult::Found,
            Err(DnsError::NoSuchName) => DnsResult::NxDomain,
            Err(_) => DnsResult::Error,
        };
        metrics().dns(metric, counted);
        result.map_err(DnsFailure::from)
    }
}

impl From<DnsError> for DnsFailure {
    fn from(error: DnsError) -> Self {
        match error {
            DnsError::NoSuchName => Self::NoSuchName,
            DnsError::NoRecords => Self::Temporary("no records".into()),
            DnsError::Temporary(reason) => Self::Temporary(reason),
            DnsError::Bogus(_) => Self::Temporary(error.to_string()),
        }
    }
}

impl DnsService for Resolver {
    fn lookup(&self, kind: plugin::DnsKind, name: String) -> BoxFuture<'_, DnsAnswer> {
        Box::pin(async move { self.plugin_lookup(kind, &name).await })
    }
}

/// A record as plugins see it; other types (a CNAME on the way) are left out.
fn record(data: &RData) -> Option<DnsRecord> {
    Some(match data {
        RData::A(a) => DnsRecord::Ip(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => DnsRecord::Ip(IpAddr::V6(aaaa.0)),
        RData::MX(mx) => DnsRecord::Mx {
            preference: mx.preference,
            exchange: mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
        },
        RData::TXT(txt) => DnsRecord::Txt(
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part))
                .collect::<String>(),
        ),
        RData::PTR(ptr) => DnsRecord::Name(ptr.0.to_ascii().trim_end_matches('.').to_owned()),
        _ => return None,
    })
}

/// The PTR name of an address: `4.3.2.1.in-addr.arpa.` or the nibbles of
/// an IPv6 address under `ip6.arpa.`.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

/// Counts a lookup in `mailgate_dns_lookups_total`.
fn count<T>(kind: DnsKind, result: &Result<T, DnsError>) {
    let result = match result {
        Ok(_) => DnsResult::Found,
        Err(DnsError::NoSuchName) => DnsResult::NxDomain,
        Err(DnsError::NoRecords) => DnsResult::NoData,
        Err(DnsError::Temporary(_) | DnsError::Bogus(_)) => DnsResult::Error,
    };
    metrics().dns(kind, result);
}

/// A fully qualified name, so search domains never apply.
pub(crate) fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

pub(crate) fn classify(error: NetError) -> DnsError {
    if error.is_nx_domain() {
        DnsError::NoSuchName
    } else if error.is_no_records_found() {
        DnsError::NoRecords
    } else {
        // SERVFAIL, REFUSED, timeouts, network errors.
        DnsError::Temporary(error.to_string())
    }
}

/// Orders MX records for delivery (RFC 5321 section 5.1): by preference,
/// equal preferences shuffled. `None` for a null MX (RFC 7505: a single
/// record whose exchange is the root).
pub fn order_mx(mut records: Vec<Mx>) -> Option<Vec<String>> {
    if records.len() == 1 && records[0].exchange.is_empty() {
        return None;
    }
    records.retain(|r| !r.exchange.is_empty());
    if records.is_empty() {
        return None;
    }
    // Shuffle first, then sort stably by preference.
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|r| r.preference);
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for record in records {
        if !hosts.contains(&record.exchange) {
            hosts.push(record.exchange);
        }
    }
    Some(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> Mx {
        Mx {
            preference,
            exchange: exchange.into(),
        }
    }

    #[test]
    fn orders_by_preference_and_shuffles_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let hosts = order_mx(vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")]).unwrap();
            assert_eq!(hosts.len(), 4);
            assert_eq!(&hosts[2..], ["c", "d"]);
            seen_first.insert(hosts[0].clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
    }

    #[test]
    fn null_mx_means_no_mail() {
        assert_eq!(order_mx(vec![mx(0, "")]), None);
        // A root exchange next to real ones is ignored, not obeyed.
        assert_eq!(order_mx(vec![mx(0, ""), mx(10, "a")]), Some(vec!["a".into()]));
        assert_eq!(order_mx(vec![mx(10, "a"), mx(20, "a")]), Some(vec!["a".into()]));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("192.0.2.1".parse().unwrap()), "1.2.0.192.in-addr.arpa.");
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }

    #[test]
    fn names_become_fully_qualified() {
        assert_eq!(fqdn("example.com"), "example.com.");
        assert_eq!(fqdn("example.com."), "example.com.");
    }
}
