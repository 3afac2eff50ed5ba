//! DANE for SMTP (RFC 7672) on delivery over MX: the MX, address and TLSA
//! lookups go through a resolver that validates DNSSEC (hickory's
//! validation, from the root's anchors or `[dns] trust_anchor`). A host
//! whose address and `_25._tcp` TLSA records are secure gets mandatory
//! STARTTLS with its certificate matched against the usable records
//! (`verify`); a secure TLSA set with no usable record still makes TLS
//! mandatory, unauthenticated (section 2.2); an insecure or absent set
//! leaves the host to MTA-STS or opportunistic TLS; a bogus answer is a
//! temporary failure, never a silent downgrade (section 2.1.1).

mod verify;

use std::path::Path;
use std::sync::Arc;

use hickory_resolver::net::{DnsError as NetDnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::rdata::tlsa;
use hickory_resolver::proto::rr::{RData, RecordType};
use tracing::{debug, warn};

pub use verify::{DaneVerifier, Matching, Selector, Tlsa, Usage};

use crate::dns::{DnsError, DnsSettings, Mx, Resolver, classify, fqdn};

/// What DANE says about one MX host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostTlsa {
    /// No DANE: its addresses or TLSA records are insecure, or it
    /// publishes none.
    None,
    /// Secure TLSA records at `owner`: STARTTLS is mandatory, and the
    /// certificate must match one of `usable` (when there is none, TLS is
    /// mandatory but unauthenticated).
    Secure {
        /// `_25._tcp.<host>`.
        owner: String,
        /// The DANE-TA and DANE-EE records.
        usable: Arc<Vec<Tlsa>>,
    },
    /// The answers could not be validated (bogus) or obtained: the host is
    /// not tried now.
    Failed(String),
}

/// The validating resolver.
#[derive(Clone, Debug)]
pub struct Dane {
    resolver: Resolver,
}

impl Dane {
    /// DNSSEC validation with the resolver `settings`, from the anchors in
    /// `anchor_file` (DNSKEY records in zone-file form) or the root's.
    pub fn new(settings: DnsSettings, anchor_file: Option<&Path>) -> Result<Self, String> {
        let anchors = match anchor_file {
            Some(file) => TrustAnchors::from_file(file)
                .map_err(|e| format!("cannot read DNSSEC trust anchors from {}: {e}", file.display()))?,
            None => TrustAnchors::default(),
        };
        Ok(Self {
            resolver: Resolver::validating(settings, Arc::new(anchors)),
        })
    }

    /// The MX records of `domain`, validated, and whether they are secure:
    /// a bogus answer is a temporary failure that says so.
    pub async fn mx(&self, domain: &str) -> Result<(Vec<Mx>, bool), DnsError> {
        let lookup = self.lookup(domain, RecordType::MX).await?;
        let secure = lookup.iter().all(|(_, proof)| *proof == Proof::Secure);
        let records: Vec<Mx> = lookup.iter().filter_map(|(data, _)| Mx::of(data)).collect();
        if records.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok((records, secure))
    }

    /// DANE for `host` on `port`: its address records must be secure for
    /// its TLSA records to count (RFC 7672 section 2.2.2).
    pub async fn host(&self, host: &str, port: u16) -> HostTlsa {
        let mut secure = true;
        let mut found = false;
        for kind in [RecordType::A, RecordType::AAAA] {
            match self.lookup(host, kind).await {
                Ok(records) => {
                    found |= !records.is_empty();
                    secure &= records.iter().all(|(_, proof)| *proof == Proof::Secure);
                }
                Err(DnsError::NoRecords | DnsError::NoSuchName) => {}
                Err(DnsError::Temporary(reason)) => return HostTlsa::Failed(format!("{host}: {reason}")),
                Err(e @ DnsError::Bogus(_)) => return HostTlsa::Failed(format!("{host}: {e}")),
            }
        }
        if !found || !secure {
            debug!(host, "DANE: the host's addresses are not DNSSEC-secure; no TLSA lookup");
            return HostTlsa::None;
        }
        let owner = format!("_{port}._tcp.{host}");
        let records = match self.lookup(&owner, RecordType::TLSA).await {
            Ok(records) => records,
            Err(DnsError::NoRecords | DnsError::NoSuchName) => return HostTlsa::None,
            Err(DnsError::Temporary(reason)) => return HostTlsa::Failed(format!("{owner}: {reason}")),
            Err(e @ DnsError::Bogus(_)) => return HostTlsa::Failed(format!("{owner}: {e}")),
        };
        if records.is_empty() || records.iter().any(|(_, proof)| *proof != Proof::Secure) {
            return HostTlsa::None;
        }
        let usable: Vec<Tlsa> = records
            .iter()
            .filter_map(|(data, _)| match data {
                RData::TLSA(record) => usable(record),
                _ => None,
            })
            .collect();
        if usable.is_empty() {
            warn!(
                owner,
                "DANE: TLSA records published but none is usable; TLS is mandatory, unauthenticated"
            );
        }
        HostTlsa::Secure {
            owner,
            usable: Arc::new(usable),
        }
    }

    /// The answers of `name`'s `kind` records with their proofs (signatures
    /// left out); bogus answers are temporary failures that say so.
    async fn lookup(&self, name: &str, kind: RecordType) -> Result<Vec<(RData, Proof)>, DnsError> {
        let resolver = self.resolver.hickory()?;
        match resolver.lookup(fqdn(name), kind).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == kind)
                .map(|r| (r.data.clone(), r.proof))
                .collect()),
            Err(NetError::Dns(NetDnsError::DnssecBogus)) => {
                Err(DnsError::Bogus(format!("the {kind} records of {name}")))
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// The record as DANE for SMTP uses it; `None` for the usages SMTP does
/// not use (PKIX-TA, PKIX-EE: RFC 7672 section 3.1.3) and unknown values.
fn usable(record: &tlsa::TLSA) -> Option<Tlsa> {
    let usage = match record.cert_usage {
        tlsa::CertUsage::DaneTa => Usage::DaneTa,
        tlsa::CertUsage::DaneEe => Usage::DaneEe,
        _ => return None,
    };
    let selector = match record.selector {
        tlsa::Selector::Full => Selector::Cert,
        tlsa::Selector::Spki => Selector::Spki,
        _ => return None,
    };
    let matching = match record.matching {
        tlsa::Matching::Raw => Matching::Full,
        tlsa::Matching::Sha256 => Matching::Sha256,
        tlsa::Matching::Sha512 => Matching::Sha512,
        _ => return None,
    };
    Some(Tlsa {
        usage,
        selector,
        matching,
        data: record.cert_data.clone(),
    })
}
