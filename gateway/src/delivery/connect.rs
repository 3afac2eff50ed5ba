//! Opening a session to a destination: MX lookup (or the smarthost), each
//! host's addresses in turn, then the route's STARTTLS and AUTH policy.
//! What fails before a transaction starts moves on to the next address or
//! MX host; the last error is what the recipients see if all fail.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::DeliverySettings;
use super::client::SmtpClient;
use super::dane::{Dane, DaneVerifier, HostTlsa, Tlsa};
use super::error::DeliveryError;
use super::mta_sts::{Mode, Policy};
use super::route::Destination;
use super::tls::{SmtpPolicy, TlsMode};
use super::tls_rpt::{Counted, Failure, ResultType, tls_outcome};
use crate::dns::{DnsError, order_mx};
use crate::metrics::metrics;
use crate::queue::Envelope;
use crate::smtp::EnhancedCode;

/// A session to `destination`, greeted, secured and authenticated as
/// `policy` says, ready for MAIL. With REQUIRETLS (RFC 8689) TLS with a
/// verified certificate is required whatever the route says, and a next
/// hop without STARTTLS fails the message for good; with `TLS-Required:
/// No` the recipient domain's MTA-STS policy is not applied (section 5).
pub async fn open(
    settings: &DeliverySettings,
    destination: &Destination,
    policy: &SmtpPolicy,
    envelope: &Envelope,
) -> Result<SmtpClient, DeliveryError> {
    let requiretls = envelope.requiretls;
    // DANE where the route looks for recipient policies, unless the sender
    // lifted them (`TLS-Required: No`).
    let looks = requiretls || matches!(policy.tls, TlsMode::Auto | TlsMode::Dane);
    let dane = settings
        .dane
        .as_deref()
        .filter(|_| looks && (requiretls || !envelope.tls_optional) && matches!(destination, Destination::Mx(_)));
    let mut hosts = hosts(settings, destination, dane).await.inspect_err(|e| {
        if let (Some(reports), Destination::Mx(domain), DeliveryError::Dns { error, .. }) =
            (settings.tls_reports.as_deref(), destination, e)
            && dane.is_some()
            && matches!(error, DnsError::Bogus(_))
        {
            let failure = Failure {
                result: ResultType::DnssecInvalid,
                host: None,
                ip: None,
                reason: Some(error.to_string()),
            };
            reports.count_failure(domain, Counted::Tlsa(domain, &[]), failure);
        }
    })?;
    let scope = match envelope.tls_optional && !requiretls {
        true => None,
        false => recipient_policy(settings, destination, policy, requiretls).await,
    };
    let reports = settings.tls_reports.as_deref().zip(scope.as_ref());
    if let Some((reports, scope)) = reports
        && let Some(reason) = &scope.fetch_error
    {
        let failure = Failure {
            result: ResultType::StsPolicyFetchError,
            host: None,
            ip: None,
            reason: Some(reason.clone()),
        };
        reports.failure(scope.domain, scope.sts.as_ref(), failure);
    }
    if let Some(RecipientPolicy {
        domain, sts: Some(sts), ..
    }) = &scope
    {
        hosts = sts_hosts(domain, sts, hosts).inspect_err(|_| {
            if let Some(reports) = &settings.tls_reports {
                let failure = Failure {
                    result: ResultType::ValidationFailure,
                    host: None,
                    ip: None,
                    reason: Some("no MX host matches the policy's mx patterns".into()),
                };
                reports.failure(domain, Some(sts), failure);
            }
        })?;
    }
    // DANE sessions are reported under the recipient domain's `tlsa` policy.
    let dane_reports = match (settings.tls_reports.as_deref(), destination, dane) {
        (Some(reports), Destination::Mx(domain), Some(_)) => Some((reports, domain.as_str())),
        _ => None,
    };
    let mut last_error = None;
    for (host, port) in hosts {
        let tlsa = match dane {
            Some(dane) => dane.host(&host, port).await,
            None => HostTlsa::None,
        };
        // DANE, where the host has it, comes before MTA-STS (RFC 8461
        // section 2).
        let mode = match (&tlsa, &scope) {
            (HostTlsa::Failed(reason), _) => {
                warn!(
                    host,
                    reason, "DANE: the host's DNSSEC answers failed; not trying it now"
                );
                metrics().delivery_tls("dane", "dnssec-invalid");
                if let Some((reports, domain)) = dane_reports {
                    let failure = Failure {
                        result: ResultType::DnssecInvalid,
                        host: Some(&host),
                        ip: None,
                        reason: Some(reason.clone()),
                    };
                    reports.count_failure(domain, Counted::Tlsa(&host, &[]), failure);
                }
                last_error = Some(DeliveryError::Security {
                    status: EnhancedCode::new(4, 7, 5),
                    reason: format!("DANE: {reason}"),
                });
                continue;
            }
            (HostTlsa::Secure { owner, usable }, _) => Required::Dane(owner, usable),
            (
                _,
                Some(RecipientPolicy {
                    domain, sts: Some(sts), ..
                }),
            ) if sts.mode == Mode::Enforce => Required::MtaSts(domain),
            _ => Required::Route(policy.tls),
        };
        let addresses = match settings.resolver.addresses(&host).await {
            Ok(addresses) => addresses,
            Err(error) => {
                debug!(host, %error, "no address for next hop");
                last_error = Some(DeliveryError::Dns { name: host, error });
                continue;
            }
        };
        for ip in addresses {
            let address = SocketAddr::new(ip, port);
            let mut result = session(settings, policy, requiretls, mode, address, &host).await;
            match (mode, dane_reports, reports) {
                (Required::Dane(_, usable), Some((reports, domain)), _) => {
                    let records: Vec<String> = usable.iter().map(ToString::to_string).collect();
                    reports.session(domain, Counted::Tlsa(&host, &records), &host, ip, &result);
                }
                (_, _, Some((reports, scope))) => {
                    reports.session(scope.domain, Counted::Sts(scope.sts.as_ref()), &host, ip, &result);
                }
                _ => {}
            }
            let label = policy_label(requiretls, mode, scope.as_ref().is_some_and(|s| s.sts.is_some()));
            let counted = match (label, tls_outcome(&result)) {
                ("none", Some(_)) => Some("success"),
                (_, Some(Ok(()))) => Some("success"),
                (_, Some(Err((kind, _)))) => Some(kind.name()),
                (_, None) => None,
            };
            if let Some(counted) = counted {
                metrics().delivery_tls(label, counted);
            }
            if let Ok(client) = &mut result {
                client.set_tls_policy(label);
            }
            match result {
                Ok(client) => return Ok(client),
                // The same credentials fail everywhere; do not hammer.
                Err(e @ DeliveryError::Auth { .. }) => return Err(e),
                Err(e) => {
                    debug!(host, %address, error = %e, "next hop failed; trying the next one");
                    last_error = Some(e);
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| DeliveryError::Dns {
        name: destination.to_string(),
        error: DnsError::NoRecords,
    }))
}

/// The policy a session is counted and logged under.
fn policy_label(requiretls: bool, required: Required<'_>, has_sts: bool) -> &'static str {
    match required {
        Required::Dane(..) => "dane",
        Required::MtaSts(_) => "mta-sts",
        _ if requiretls => "require",
        Required::Route(TlsMode::Require) => "require",
        Required::Route(TlsMode::Disabled) => "none",
        _ if has_sts => "mta-sts",
        Required::Route(_) => "opportunistic",
    }
}

/// The recipient domain of delivery over MX on a route whose TLS setting
/// looks for its policies (`auto`, `mta-sts`, and every REQUIRETLS
/// message), with its MTA-STS policy if any.
struct RecipientPolicy<'a> {
    domain: &'a str,
    sts: Option<Policy>,
    /// Why the policy could not be fetched, when that failed now.
    fetch_error: Option<String>,
}

async fn recipient_policy<'a>(
    settings: &DeliverySettings,
    destination: &'a Destination,
    policy: &SmtpPolicy,
    requiretls: bool,
) -> Option<RecipientPolicy<'a>> {
    let looks = requiretls || matches!(policy.tls, TlsMode::Auto | TlsMode::MtaSts);
    let (Destination::Mx(domain), true, Some(mta_sts)) = (destination, looks, &settings.mta_sts) else {
        return None;
    };
    let (sts, fetch_error) = mta_sts.lookup(&settings.resolver, domain).await;
    Some(RecipientPolicy {
        domain: domain.as_str(),
        sts,
        fetch_error,
    })
}

/// The MX hosts an MTA-STS policy lets mail go to: those matching its `mx`
/// patterns when enforced (none: the attempt fails, temporarily); all of
/// them when testing, with a log line for each that would be refused.
fn sts_hosts(domain: &str, sts: &Policy, hosts: Vec<(String, u16)>) -> Result<Vec<(String, u16)>, DeliveryError> {
    let (matching, other): (Vec<_>, Vec<_>) = hosts.into_iter().partition(|(host, _)| sts.matches(host));
    match sts.mode {
        Mode::Enforce if matching.is_empty() => {
            let names: Vec<&str> = other.iter().map(|(h, _)| h.as_str()).collect();
            warn!(
                domain,
                mx = names.join(" "),
                patterns = sts.mx.join(" "),
                "MTA-STS (enforce): no MX host matches the policy"
            );
            Err(DeliveryError::Security {
                status: EnhancedCode::new(4, 7, 5),
                reason: format!(
                    "the MTA-STS policy of {domain} (mode enforce) matches none of its MX hosts ({}); it allows {}",
                    names.join(", "),
                    sts.mx.join(", ")
                ),
            })
        }
        Mode::Enforce => {
            for (host, _) in &other {
                info!(
                    domain,
                    host, "MTA-STS (enforce): skipping an MX host the policy does not name"
                );
            }
            Ok(matching)
        }
        _ => {
            for (host, _) in &other {
                info!(
                    domain,
                    host, "MTA-STS (testing): the policy does not name this MX host; delivering anyway"
                );
            }
            Ok(matching.into_iter().chain(other).collect())
        }
    }
}

/// What decides a session's TLS: the route's setting, an enforced
/// MTA-STS policy of the named domain (verified TLS, as `require`), or the
/// host's secure TLSA records (at the owner name).
#[derive(Clone, Copy, Debug)]
enum Required<'a> {
    Route(TlsMode),
    MtaSts(&'a str),
    Dane(&'a str, &'a Arc<Vec<Tlsa>>),
}

/// The hosts to try, in order, with the port for each.
async fn hosts(
    settings: &DeliverySettings,
    destination: &Destination,
    dane: Option<&Dane>,
) -> Result<Vec<(String, u16)>, DeliveryError> {
    match destination {
        Destination::Host { host, port } => Ok(vec![(host.clone(), *port)]),
        Destination::Mx(domain) => {
            let port = settings.remote_port;
            // Under DANE the MX answer is validated: a bogus one defers.
            let records = match dane {
                Some(dane) => dane.mx(domain).await.map(|(records, _)| records),
                None => settings.resolver.mx(domain).await,
            };
            match records {
                Ok(records) => match order_mx(records) {
                    Some(hosts) => Ok(hosts.into_iter().map(|h| (h, port)).collect()),
                    None => Err(DeliveryError::NullMx(domain.clone())),
                },
                // No MX: the domain itself is the implicit MX (RFC 5321 section 5.1).
                Err(DnsError::NoRecords) => Ok(vec![(domain.clone(), port)]),
                Err(DnsError::NoSuchName) => Err(DeliveryError::NoSuchDomain(domain.clone())),
                Err(error) => Err(DeliveryError::Dns {
                    name: domain.clone(),
                    error,
                }),
            }
        }
    }
}

/// One address: connect, greet, STARTTLS and AUTH.
async fn session(
    settings: &DeliverySettings,
    policy: &SmtpPolicy,
    requiretls: bool,
    required: Required<'_>,
    address: SocketAddr,
    host: &str,
) -> Result<SmtpClient, DeliveryError> {
    let connect = || SmtpClient::connect(address, host, &settings.hostname, settings.timeouts);
    let client = connect().await?;
    let mut client = match required {
        Required::Dane(owner, usable) if !(requiretls && usable.is_empty()) => {
            dane_starttls(client, owner, usable, address).await?
        }
        _ => route_starttls(client, connect, policy, requiretls, required, address).await?,
    };
    if let Some(credentials) = &policy.auth {
        if !client.is_tls() {
            return Err(DeliveryError::Security {
                status: EnhancedCode::new(4, 7, 10),
                reason: format!("refusing to send credentials to {host} without TLS"),
            });
        }
        client.authenticate(credentials).await?;
    }
    Ok(client)
}

/// STARTTLS under the host's TLSA records: mandatory, with a certificate
/// that matches a usable record (any certificate when none is usable).
async fn dane_starttls(
    client: SmtpClient,
    owner: &str,
    usable: &Arc<Vec<Tlsa>>,
    address: SocketAddr,
) -> Result<SmtpClient, DeliveryError> {
    let host = client.host().to_owned();
    if !client.offers_starttls() {
        warn!(host, %address, owner, "DANE: no STARTTLS offered; not delivering in clear");
        return Err(DeliveryError::Security {
            status: EnhancedCode::new(4, 7, 5),
            reason: format!("{host} does not offer STARTTLS, which its DANE TLSA records ({owner}) require"),
        });
    }
    let authenticates = !usable.is_empty();
    let config = match authenticates {
        true => DaneVerifier::config(Arc::clone(usable), owner, super::tls::crypto_provider()).map_err(|reason| {
            DeliveryError::Tls {
                host: host.clone(),
                reason,
            }
        })?,
        false => super::tls::TlsConfigs::encrypt_only().unverified,
    };
    client.starttls(config, authenticates).await.map_err(|e| {
        warn!(host, %address, owner, error = %e, "DANE: TLS failed; not delivering in clear");
        match e {
            DeliveryError::Tls { host, reason } => DeliveryError::Tls {
                host,
                reason: format!("{reason} (the DANE TLSA records of {owner} require a matching certificate)"),
            },
            other => other,
        }
    })
}

/// STARTTLS as the route, an enforced MTA-STS policy or REQUIRETLS say.
async fn route_starttls<F, Fut>(
    client: SmtpClient,
    connect: F,
    policy: &SmtpPolicy,
    requiretls: bool,
    required: Required<'_>,
    address: SocketAddr,
) -> Result<SmtpClient, DeliveryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<SmtpClient, DeliveryError>>,
{
    let host = client.host().to_owned();
    let host = host.as_str();
    let (mode, requirer) = match required {
        _ if requiretls => (TlsMode::Require, "REQUIRETLS".to_owned()),
        Required::MtaSts(domain) => (TlsMode::Require, format!("the MTA-STS policy of {domain}")),
        Required::Dane(owner, _) => (
            TlsMode::Require,
            format!("the DANE TLSA records of {owner} (none usable)"),
        ),
        Required::Route(mode) => (mode, "the route".to_owned()),
    };
    let client = match mode {
        _ if requiretls && !client.offers_starttls() => {
            return Err(DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 7, 30),
                reason: format!("REQUIRETLS support required: {host} does not offer STARTTLS"),
            });
        }
        TlsMode::Disabled => client,
        TlsMode::Require if !client.offers_starttls() => {
            return Err(DeliveryError::Security {
                status: EnhancedCode::new(4, 7, 4),
                reason: format!("{host} does not offer STARTTLS, which {requirer} requires"),
            });
        }
        TlsMode::Require => {
            let config = policy.tls_config.verified.clone();
            match client.starttls(config, policy.tls_config.authenticates).await {
                Ok(client) => client,
                Err(DeliveryError::Tls { host, reason }) => {
                    warn!(host, %address, error = reason, requirer, "verified TLS failed; not delivering in clear");
                    let reason = format!("{reason} ({requirer} requires a verified certificate)");
                    return Err(DeliveryError::Tls { host, reason });
                }
                Err(e) => {
                    warn!(host, %address, error = %e, requirer, "verified TLS failed; not delivering in clear");
                    return Err(e);
                }
            }
        }
        TlsMode::Auto | TlsMode::MtaSts | TlsMode::Dane | TlsMode::Opportunistic if client.offers_starttls() => {
            match client.starttls(policy.tls_config.unverified.clone(), false).await {
                Ok(client) => client,
                Err(e) => {
                    // RFC 7435: opportunistic TLS falls back to clear text.
                    warn!(host, %address, error = %e, "STARTTLS failed; delivering without TLS");
                    connect().await?
                }
            }
        }
        TlsMode::Auto | TlsMode::MtaSts | TlsMode::Dane | TlsMode::Opportunistic => client,
    };
    Ok(client)
}
