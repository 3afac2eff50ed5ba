//! HTTPS on the admin listeners, and TLS client certificates as
//! credentials for the control endpoints (`[admin] tls_cert_file`,
//! `tls_key_file`, `client_ca_file`); the CLI's side of it
//! (`client_cert_file`, `client_key_file`, `server_ca_file`).
//!
//! A client certificate is asked for but not required at the handshake,
//! so that Prometheus and health checks need none; one that is presented
//! must verify against `client_ca_file`, or the handshake fails. A
//! verified certificate authenticates a control request as its subject's
//! common name (else its first subject alternative name, else its
//! SHA-256 fingerprint), which is what the log says did it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

/// How the CLI reaches the admin API over HTTPS.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The certificate it presents, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its key, PEM.
    pub key_file: Option<PathBuf>,
    /// The CA it verifies the admin listener against; none: the system's.
    pub server_ca_file: Option<PathBuf>,
}

/// A stream the CLI's HTTP client runs on: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl ClientTls {
    /// Connects to the admin listener at `address` over TLS; its
    /// certificate must name the address's IP.
    pub async fn connect(&self, address: SocketAddr) -> anyhow::Result<Box<dyn Stream>> {
        let roots = crate::delivery::tls::roots(self.server_ca_file.as_deref()).map_err(anyhow::Error::msg)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let (chain, key) = read_pair(cert, key)?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = ServerName::IpAddress(address.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS handshake with the admin API")?;
        Ok(Box::new(tls))
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading a private key from {}", key.display()))?;
    Ok((chain, key))
}

/// Who a verified client certificate names: `certificate CN`.
pub fn peer_name(connection: &rustls::ServerConnection) -> Option<String> {
    let der = connection.peer_certificates()?.first()?;
    let name = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => common_name(&cert).or_else(|| alternative_name(&cert)),
        Err(_) => None,
    };
    let name = name.unwrap_or_else(|| {
        let digest = Sha256::digest(der.as_ref());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    });
    Some(format!("certificate {name}"))
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn alternative_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let names = cert.subject_alternative_name().ok()??;
    names.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(n) | GeneralName::RFC822Name(n) => Some((*n).to_owned()),
        GeneralName::IPAddress(octets) => match octets.len() {
            4 => <[u8; 4]>::try_from(*octets)
                .ok()
                .map(|o| std::net::Ipv4Addr::from(o).to_string()),
            16 => <[u8; 16]>::try_from(*octets)
                .ok()
                .map(|o| std::net::Ipv6Addr::from(o).to_string()),
            _ => None,
        },
        _ => None,
    })
}
