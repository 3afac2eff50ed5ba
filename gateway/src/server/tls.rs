//! Server certificates: a rustls configuration (TLS 1.2 and 1.3, ring)
//! built from PEM files, swapped in place when the files are reloaded so
//! that new handshakes use the new certificate and open ones are untouched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// A listener's certificate and key.
#[derive(Debug)]
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// CA certificates that client certificates are verified against
    /// (the admin API); a client without one is still let in.
    client_ca_file: Option<PathBuf>,
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the certificate chain and key (PEM) and builds the configuration.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, String> {
        Self::verifying_clients(cert_file, key_file, None)
    }

    /// `load`, asking clients for a certificate and verifying the ones
    /// presented against `client_ca_file` (PEM) when one is given.
    pub fn verifying_clients(cert_file: &Path, key_file: &Path, client_ca_file: Option<&Path>) -> Result<Self, String> {
        Ok(Self {
            config: RwLock::new(build(cert_file, key_file, client_ca_file)?),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            client_ca_file: client_ca_file.map(Path::to_owned),
        })
    }

    /// An acceptor for one handshake, with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Reads the files again; on failure the old certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.cert_file, &self.key_file, self.client_ca_file.as_deref())?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The certificate file, for logs.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

fn build(cert_file: &Path, key_file: &Path, client_ca_file: Option<&Path>) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let roots = crate::delivery::tls::roots(Some(ca_file))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "certificate {} with key {}: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Arc::new(config))
}
