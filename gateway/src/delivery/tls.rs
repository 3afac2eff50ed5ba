//! How the outbound client talks to a destination: STARTTLS policy,
//! certificate verification, AUTH credentials, and the per-destination
//! connection limit. One `SmtpPolicy` per route (and one default).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

/// STARTTLS policy of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// For delivery over MX: DANE where the MX host publishes secure TLSA
    /// records (RFC 7672; with `[dns] dnssec = true`), else MTA-STS where
    /// the recipient domain publishes a policy (RFC 8461), else
    /// opportunistic. For a smarthost: opportunistic.
    #[default]
    Auto,
    /// MTA-STS where published, else opportunistic, even where DANE is
    /// published.
    #[serde(rename = "mta-sts")]
    MtaSts,
    /// DANE where published, else opportunistic, even where MTA-STS is
    /// published (needs `[dns] dnssec = true`).
    Dane,
    /// Use STARTTLS when the server offers it, without authenticating its
    /// certificate (RFC 7435); send in clear otherwise, or when the
    /// handshake fails.
    Opportunistic,
    /// Never send in clear: STARTTLS must be offered and the certificate
    /// must verify for the host name, else the message is deferred.
    Require,
    /// Never use STARTTLS.
    Disabled,
}

/// A user name and password for AUTH to a smarthost.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to speak SMTP to a destination.
#[derive(Clone, Debug)]
pub struct SmtpPolicy {
    /// Distinguishes policies in connection-pool keys.
    pub id: usize,
    /// STARTTLS policy.
    pub tls: TlsMode,
    /// Client TLS settings.
    pub tls_config: TlsConfigs,
    /// AUTH credentials, for smarthosts that want them.
    pub auth: Option<Credentials>,
    /// Connections (transactions) in flight to one destination at once.
    pub max_connections: usize,
}

/// A client configuration for HTTPS to the web (MTA-STS policies, TLS
/// reports, plugins' requests): the system's roots plus those in
/// `extra_ca_file`.
pub fn web_client(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(file) = extra_ca_file {
        roots.roots.extend(self::roots(Some(file))?.roots);
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificates `ca_file` (PEM) holds, or the system's roots when
/// `None`.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("no certificates in {}", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found; `tls = \"require\"` routes will defer unless they set `ca_file`"
                );
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
impl Default for SmtpPolicy {
    fn default() -> Self {
        Self {
            id: 0,
            tls: TlsMode::Auto,
            tls_config: TlsConfigs::encrypt_only(),
            auth: None,
            max_connections: 20,
        }
    }
}

/// The two client configurations a policy needs: one that verifies the
/// server's certificate and one that only encrypts.
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    /// Verifies against the CA file or the system roots (or nothing, when
    /// `danger_accept_invalid_certs` is set).
    pub verified: Arc<ClientConfig>,
    /// Encrypts without authenticating, for opportunistic TLS.
    pub unverified: Arc<ClientConfig>,
    /// `verified` really authenticates (not `danger_accept_invalid_certs`).
    pub authenticates: bool,
}

impl TlsConfigs {
    /// Encryption without verification for both (for a configuration that
    /// is being refused anyway, and for tests).
    pub fn encrypt_only() -> Self {
        let config = encrypt_only();
        Self {
            verified: Arc::clone(&config),
            unverified: config,
            authenticates: false,
        }
    }

    /// Configurations trusting `ca_file` (PEM), or the system's roots
    /// when `None`; `danger_accept_invalid_certs` turns verification off.
    pub fn new(ca_file: Option<&Path>, danger_accept_invalid_certs: bool) -> Result<Self, String> {
        let unverified = encrypt_only();
        if danger_accept_invalid_certs {
            return Ok(Self {
                verified: Arc::clone(&unverified),
                unverified,
                authenticates: false,
            });
        }
        let roots = roots(ca_file)?;
        let verified = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            verified: Arc::new(verified),
            unverified,
            authenticates: true,
        })
    }
}

/// A client configuration that encrypts without authenticating.
#[expect(
    clippy::expect_used,
    reason = "ring's default provider supports TLS 1.2 and 1.3, a fixed fact"
)]
fn encrypt_only() -> Arc<ClientConfig> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The crypto provider of every outbound TLS configuration.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    provider()
}

/// Accepts any certificate, still checking that the handshake is signed by
/// the key in it: encryption without authentication.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
