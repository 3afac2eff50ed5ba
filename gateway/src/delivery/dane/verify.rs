//! Matching a server's certificate chain against TLSA records (RFC 6698
//! section 2.1, RFC 7671, RFC 7672 section 3): DANE-EE(3) matches the
//! end-entity certificate alone, with no name or validity check; DANE-TA(2)
//! matches a certificate of the chain the server sent, which then anchors
//! an ordinary chain validation with the host name checked (section 3.2).
//! PKIX-TA(0) and PKIX-EE(1) are not usable for SMTP (section 3.1.3) and
//! are left out before records reach here.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256, Sha512};

/// A TLSA record's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// DANE-TA(2): a trust anchor of the chain.
    DaneTa,
    /// DANE-EE(3): the server's own certificate or key.
    DaneEe,
}

/// What a record's data is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Cert(0): the whole certificate.
    Cert,
    /// SPKI(1): its SubjectPublicKeyInfo.
    Spki,
}

/// How a record's data is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matching {
    /// Full(0): the selected content itself.
    Full,
    /// SHA2-256(1).
    Sha256,
    /// SHA2-512(2).
    Sha512,
}

/// A usable TLSA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    /// Its usage.
    pub usage: Usage,
    /// Its selector.
    pub selector: Selector,
    /// Its matching type.
    pub matching: Matching,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    /// As in a zone file: `3 1 1 <hex>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let usage = match self.usage {
            Usage::DaneTa => 2,
            Usage::DaneEe => 3,
        };
        let selector = match self.selector {
            Selector::Cert => 0,
            Selector::Spki => 1,
        };
        let matching = match self.matching {
            Matching::Full => 0,
            Matching::Sha256 => 1,
            Matching::Sha512 => 2,
        };
        write!(f, "{usage} {selector} {matching} ")?;
        self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Tlsa {
    /// Whether `cert` (DER) is what this record describes.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            Selector::Cert => cert.to_vec(),
            Selector::Spki => match x509_parser::parse_x509_certificate(cert) {
                Ok((_, parsed)) => parsed.tbs_certificate.subject_pki.raw.to_vec(),
                Err(_) => return false,
            },
        };
        match self.matching {
            Matching::Full => selected == self.data,
            Matching::Sha256 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            Matching::Sha512 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
        }
    }
}

/// Verifies a server's certificate against its host's usable TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Arc<Vec<Tlsa>>,
    /// The TLSA owner, for error messages.
    owner: String,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A client configuration that accepts only a server matching
    /// `records` (published at `owner`).
    pub fn config(
        records: Arc<Vec<Tlsa>>,
        owner: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<ClientConfig>, String> {
        let verifier = Self {
            records,
            owner: owner.to_owned(),
            provider: Arc::clone(&provider),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A DANE-TA match: the chain from `end_entity` through `intermediates`
    /// up to the certificate `anchor` validates, for `server_name`.
    fn anchored(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("DANE-TA certificate unusable as an anchor: {e}")))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, &[], now)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the key or certificate itself; names and dates do not
        // matter (RFC 7672 section 3.1.1).
        let ee = self.records.iter().filter(|r| r.usage == Usage::DaneEe);
        if ee.clone().any(|r| r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate the server sent (RFC 7672 section 3.1.2
        // requires servers to send the anchor), then a chain to it.
        let mut last_error = None;
        for anchor in intermediates.iter().chain(std::iter::once(end_entity)) {
            let ta = self.records.iter().filter(|r| r.usage == Usage::DaneTa);
            if ta.clone().any(|r| r.matches(anchor)) {
                match self.anchored(anchor, end_entity, intermediates, server_name, now) {
                    Ok(verified) => return Ok(verified),
                    Err(e) => last_error = Some(e),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(NoMatch(format!(
                "DANE: the certificate chain matches none of the {} usable TLSA records of {}",
                self.records.len(),
                self.owner
            ))))))
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate matches no record.
#[derive(Debug)]
struct NoMatch(String);

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoMatch {}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    fn cert(name: &str) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| unreachable!("{e}"));
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap_or_else(|e| unreachable!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| unreachable!("{e}"));
        // The SPKI from the key itself, not from parsing the certificate.
        let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_slice(key.public_key_pem().as_bytes())
            .unwrap_or_else(|e| unreachable!("{e}"));
        (cert.der().to_vec(), spki.to_vec())
    }

    #[test]
    fn every_selector_and_matching_type_matches_its_own_certificate_only() {
        let (der, spki) = cert("mx.example");
        let (other, _) = cert("mx.example");
        for (selector, content) in [(Selector::Cert, der.clone()), (Selector::Spki, spki)] {
            for (matching, data) in [
                (Matching::Full, content.clone()),
                (Matching::Sha256, Sha256::digest(&content).to_vec()),
                (Matching::Sha512, Sha512::digest(&content).to_vec()),
            ] {
                let record = Tlsa {
                    usage: Usage::DaneEe,
                    selector,
                    matching,
                    data,
                };
                assert!(record.matches(&der), "{record:?}");
                assert!(!record.matches(&other), "{record:?} on another certificate");
            }
        }
        let garbage = Tlsa {
            usage: Usage::DaneEe,
            selector: Selector::Spki,
            matching: Matching::Sha256,
            data: vec![0; 32],
        };
        assert!(!garbage.matches(b"not a certificate"));
    }
}
