//! Opening a session to a destination: MX lookup (or the smarthost), each
//! host's addresses in turn, then the route's STARTTLS and AUTH policy.
//! What fails before a transaction starts moves on to the next address or
//! MX host; the last error is what the recipients see if all fail.

use std::net::SocketAddr;

use tracing::{debug, warn};

use super::DeliverySettings;
use super::client::SmtpClient;
use super::error::DeliveryError;
use super::route::Destination;
use super::tls::{SmtpPolicy, TlsMode};
use crate::dns::{DnsError, order_mx};
use crate::smtp::EnhancedCode;

/// A session to `destination`, greeted, secured and authenticated as
/// `policy` says, ready for MAIL. With `requiretls` (RFC 8689) TLS with a
/// verified certificate is required whatever the route says, and a next
/// hop without STARTTLS fails the message for good.
pub async fn open(
    settings: &DeliverySettings,
    destination: &Destination,
    policy: &SmtpPolicy,
    requiretls: bool,
) -> Result<SmtpClient, DeliveryError> {
    let hosts = hosts(settings, destination).await?;
    let mut last_error = None;
    for (host, port) in hosts {
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
            match session(settings, policy, requiretls, address, &host).await {
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

/// The hosts to try, in order, with the port for each.
async fn hosts(settings: &DeliverySettings, destination: &Destination) -> Result<Vec<(String, u16)>, DeliveryError> {
    match destination {
        Destination::Host { host, port } => Ok(vec![(host.clone(), *port)]),
        Destination::Mx(domain) => {
            let port = settings.remote_port;
            match settings.resolver.mx(domain).await {
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
    address: SocketAddr,
    host: &str,
) -> Result<SmtpClient, DeliveryError> {
    let connect = || SmtpClient::connect(address, host, &settings.hostname, settings.timeouts);
    let client = connect().await?;
    let mode = if requiretls { TlsMode::Require } else { policy.tls };
    let mut client = match mode {
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
                reason: format!("{host} does not offer STARTTLS, which the route requires"),
            });
        }
        TlsMode::Require => {
            let config = policy.tls_config.verified.clone();
            client.starttls(config, policy.tls_config.authenticates).await?
        }
        TlsMode::Opportunistic if client.offers_starttls() => {
            match client.starttls(policy.tls_config.unverified.clone(), false).await {
                Ok(client) => client,
                Err(e) => {
                    // RFC 7435: opportunistic TLS falls back to clear text.
                    warn!(host, %address, error = %e, "STARTTLS failed; delivering without TLS");
                    connect().await?
                }
            }
        }
        TlsMode::Opportunistic => client,
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
