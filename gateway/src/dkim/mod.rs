//! The `dkim` capability's gateway side, with the mail-auth crate: signing
//! with the keys of `[[dkim.key]]` (RSA-SHA256 and Ed25519-SHA256),
//! verification of DKIM, SPF, ARC and DMARC through the gateway's
//! resolver, and ARC sealing (`arc`).
//! mail-auth does not build for wasm32-wasip2 (it needs hickory's network
//! stack), so the cryptography runs here and plugins decide what to do
//! with it; private keys never enter a plugin. Also `mailgate dkim keygen`.

mod arc;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::common::verify::VerifySignature as _;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    MessageAuthenticator, SpfOutput, SpfResult,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::dns::Resolver;
use crate::plugin::{
    ArcSet, AuthEnvelope, AuthStatus, BoxFuture, DkimService, DmarcPolicy, SealRequest, SignatureCheck, Verification,
};

/// The header fields signed, when present (From twice: a second From
/// cannot be added without breaking the signature).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Signatures checked per message, at most (RFC 6376 section 6.1 lets a
/// verifier limit them; each costs DNS lookups).
const MAX_SIGNATURES: usize = 10;

/// A signing key's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// rsa-sha256.
    Rsa,
    /// ed25519-sha256 (RFC 8463).
    Ed25519,
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One `[[dkim.key]]`, loaded.
pub struct DkimKey {
    /// d=, lower case.
    pub domain: String,
    /// s=.
    pub selector: String,
    /// The key's algorithm.
    pub algorithm: Algorithm,
    signer: Signer,
    /// RSA keys also seal ARC sets.
    sealer: Option<arc::Sealer>,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Loads the PEM private key at `path` (RSA as PKCS#1 or PKCS#8,
    /// Ed25519 as PKCS#8) for `domain` and `selector`.
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PEM private key ({e})", path.display()))?;
        let domain = domain.to_ascii_lowercase();
        let ed25519 = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => Ed25519Key::from_pkcs8_der(pkcs8.secret_pkcs8_der()).ok(),
            _ => None,
        };
        let (algorithm, signer) = match ed25519 {
            Some(key) => (
                Algorithm::Ed25519,
                Signer::Ed25519(configure(DkimSigner::from_key(key), &domain, selector)),
            ),
            None => {
                let key = RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| format!("{}: neither an Ed25519 nor an RSA key ({e})", path.display()))?;
                (
                    Algorithm::Rsa,
                    Signer::Rsa(configure(DkimSigner::from_key(key), &domain, selector)),
                )
            }
        };
        let sealer = match algorithm {
            Algorithm::Rsa => {
                Some(arc::Sealer::new(der, &domain, selector).map_err(|e| format!("{}: {e}", path.display()))?)
            }
            Algorithm::Ed25519 => None,
        };
        Ok(Self {
            domain,
            selector: selector.to_owned(),
            algorithm,
            signer,
            sealer,
        })
    }

    /// The DKIM-Signature value over `message`, unfolded.
    fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match &self.signer {
            Signer::Rsa(signer) => signer.sign(message),
            Signer::Ed25519(signer) => signer.sign(message),
        }
        .map_err(|e| format!("signing for {} (selector {}): {e}", self.domain, self.selector))?;
        let field = signature.to_header();
        let value = field.split_once(':').map_or(field.as_str(), |(_, v)| v);
        Ok(unfold(value))
    }
}

fn configure<T: mail_auth::common::crypto::SigningKey<Hasher = Sha256>>(
    signer: DkimSigner<T, mail_auth::dkim::NeedDomain>,
    domain: &str,
    selector: &str,
) -> DkimSigner<T, Done> {
    signer
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// A header value on one line, each fold a space (the gateway folds the
/// fields it adds again; DKIM allows whitespace inside its tag values).
fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "\n")
        .split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[dkim]`, loaded.
#[derive(Debug, Default)]
pub struct DkimSettings {
    /// The name in Authentication-Results.
    pub authserv_id: String,
    /// The signing keys.
    pub keys: Vec<DkimKey>,
}

impl PartialEq for DkimSettings {
    fn eq(&self, other: &Self) -> bool {
        self.authserv_id == other.authserv_id
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| (&a.domain, &a.selector, a.algorithm) == (&b.domain, &b.selector, b.algorithm))
    }
}

/// The `dkim` capability on the gateway's resolver and keys.
#[derive(Debug)]
pub struct MailAuth {
    resolver: Resolver,
    settings: Arc<DkimSettings>,
}

impl MailAuth {
    /// Signs with `settings`' keys and verifies through `resolver`.
    pub fn new(resolver: Resolver, settings: Arc<DkimSettings>) -> Self {
        Self { resolver, settings }
    }

    async fn check(&self, message: &[u8], envelope: &AuthEnvelope) -> Verification {
        let authserv_id = self.settings.authserv_id.as_str();
        let authenticator = match self.resolver.hickory() {
            Ok(resolver) => MessageAuthenticator(resolver),
            Err(e) => return Verification::unavailable(authserv_id, &e.to_string()),
        };
        let Some(parsed) = parse(message) else {
            return Verification::unavailable(authserv_id, "the message has no header section");
        };
        let found = assess(&authenticator, &parsed, envelope, authserv_id).await;
        let (arc, arc_instance) = arc::status(&found.arc);
        Verification {
            signatures: found
                .dkim
                .iter()
                .map(|output| {
                    let (status, reason) = dkim_status(output.result());
                    let (domain, selector) = output
                        .signature()
                        .map(|s| (s.domain().to_owned(), s.selector().to_owned()))
                        .unwrap_or_default();
                    SignatureCheck {
                        domain,
                        selector,
                        status,
                        reason,
                    }
                })
                .collect(),
            spf: spf_status(found.spf.result()),
            dmarc: dmarc_status(&found.dmarc.result()),
            dmarc_domain: found.dmarc.domain().to_owned(),
            dmarc_policy: match found.dmarc.policy() {
                Policy::Reject => DmarcPolicy::Reject,
                Policy::Quarantine => DmarcPolicy::Quarantine,
                Policy::None => DmarcPolicy::None,
                Policy::Unspecified => DmarcPolicy::Unspecified,
            },
            arc,
            arc_instance,
            authserv_id: authserv_id.to_owned(),
            authentication_results: unfold(&found.results.to_string()),
        }
    }

    async fn seal_message(&self, received: &[u8], message: &[u8], request: &SealRequest) -> Result<ArcSet, String> {
        let sealer = self.sealer(&request.domain)?;
        let authserv_id = self.settings.authserv_id.as_str();
        let authenticator = MessageAuthenticator(self.resolver.hickory().map_err(|e| e.to_string())?);
        let parsed = parse(received).ok_or("the message has no header section")?;
        let found = assess(&authenticator, &parsed, &request.envelope, authserv_id).await;
        sealer.seal(message, &found.results, &found.arc)
    }

    fn sealer(&self, domain: &str) -> Result<&arc::Sealer, String> {
        self.settings
            .keys
            .iter()
            .filter(|key| key.domain.eq_ignore_ascii_case(domain))
            .find_map(|key| key.sealer.as_ref())
            .ok_or_else(|| format!("no RSA key in [[dkim.key]] for {domain} to seal with"))
    }
}

/// The message as mail-auth reads it, with at most `MAX_SIGNATURES`
/// DKIM signatures to check.
fn parse(message: &[u8]) -> Option<AuthenticatedMessage<'_>> {
    let mut parsed = AuthenticatedMessage::parse(message)?;
    parsed.dkim_headers.truncate(MAX_SIGNATURES);
    Some(parsed)
}

/// What verifying a message found, for Authentication-Results and for an
/// ARC seal's ARC-Authentication-Results.
struct Assessment<'x> {
    dkim: Vec<DkimOutput<'x>>,
    spf: SpfOutput,
    dmarc: DmarcOutput,
    arc: ArcOutput<'x>,
    results: AuthenticationResults<'x>,
}

/// Verifies DKIM, SPF (unless the envelope carries a result), the ARC
/// chain and DMARC.
async fn assess<'x>(
    authenticator: &MessageAuthenticator,
    parsed: &'x AuthenticatedMessage<'x>,
    envelope: &'x AuthEnvelope,
    authserv_id: &'x str,
) -> Assessment<'x> {
    let dkim = authenticator.verify_dkim(parsed).await;
    let arc = authenticator.verify_arc(parsed).await;
    let mail_from_domain = envelope
        .mail_from
        .rsplit_once('@')
        .map_or(envelope.helo.as_str(), |(_, domain)| domain)
        .to_ascii_lowercase();
    let spf = match envelope.spf {
        Some(status) => SpfOutput::new(mail_from_domain.clone()).with_result(spf_result(status)),
        None => {
            authenticator
                .verify_spf(SpfParameters::verify_mail_from(
                    envelope.client_ip,
                    &envelope.helo,
                    authserv_id,
                    &envelope.mail_from,
                ))
                .await
        }
    };
    let dmarc = authenticator
        .verify_dmarc(DmarcParameters::new(parsed, &dkim, &mail_from_domain, &spf))
        .await;
    let header_from = parsed.from.first().map_or("", String::as_str);
    let results = AuthenticationResults::new(authserv_id)
        .with_dkim_results(&dkim, header_from)
        .with_spf_mailfrom_result(&spf, envelope.client_ip, &envelope.mail_from, &envelope.helo)
        .with_arc_result(&arc, envelope.client_ip)
        .with_dmarc_result(&dmarc);
    Assessment {
        dkim,
        spf,
        dmarc,
        arc,
        results,
    }
}

impl DkimService for MailAuth {
    fn sign(&self, message: &[u8], domain: &str) -> Result<Vec<String>, String> {
        self.settings
            .keys
            .iter()
            .filter(|key| key.domain.eq_ignore_ascii_case(domain))
            .map(|key| key.sign(message))
            .collect()
    }

    fn verify<'a>(&'a self, message: &'a [u8], envelope: &'a AuthEnvelope) -> BoxFuture<'a, Verification> {
        Box::pin(self.check(message, envelope))
    }

    fn can_seal(&self, domain: &str) -> Result<(), String> {
        self.sealer(domain).map(|_| ())
    }

    fn seal<'a>(
        &'a self,
        received: &'a [u8],
        message: &'a [u8],
        request: &'a SealRequest,
    ) -> BoxFuture<'a, Result<ArcSet, String>> {
        Box::pin(self.seal_message(received, message, request))
    }
}

fn dkim_status(result: &DkimResult) -> (AuthStatus, Option<String>) {
    match result {
        DkimResult::Pass => (AuthStatus::Pass, None),
        DkimResult::None => (AuthStatus::None, None),
        DkimResult::Neutral(e) => (AuthStatus::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (AuthStatus::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (AuthStatus::Permerror, Some(e.to_string())),
        DkimResult::TempError(e) => (AuthStatus::Temperror, Some(e.to_string())),
    }
}

fn dmarc_status(result: &DmarcResult) -> AuthStatus {
    match result {
        DmarcResult::Pass => AuthStatus::Pass,
        DmarcResult::Fail(_) => AuthStatus::Fail,
        DmarcResult::TempError(_) => AuthStatus::Temperror,
        DmarcResult::PermError(_) => AuthStatus::Permerror,
        DmarcResult::None => AuthStatus::None,
    }
}

fn spf_status(result: SpfResult) -> AuthStatus {
    match result {
        SpfResult::Pass => AuthStatus::Pass,
        SpfResult::Fail => AuthStatus::Fail,
        SpfResult::SoftFail => AuthStatus::Softfail,
        SpfResult::Neutral => AuthStatus::Neutral,
        SpfResult::TempError => AuthStatus::Temperror,
        SpfResult::PermError => AuthStatus::Permerror,
        SpfResult::None => AuthStatus::None,
    }
}

fn spf_result(status: AuthStatus) -> SpfResult {
    match status {
        AuthStatus::Pass => SpfResult::Pass,
        AuthStatus::Fail => SpfResult::Fail,
        AuthStatus::Softfail => SpfResult::SoftFail,
        AuthStatus::Neutral => SpfResult::Neutral,
        AuthStatus::Temperror => SpfResult::TempError,
        AuthStatus::Permerror => SpfResult::PermError,
        AuthStatus::None => SpfResult::None,
    }
}

/// A new key pair: the private key as PEM and the DNS TXT record's value.
pub fn generate(algorithm: Algorithm, rsa_bits: usize) -> Result<(String, String), String> {
    let (pair, label, k) = match algorithm {
        Algorithm::Rsa => (DkimKeyPair::generate_rsa(rsa_bits), "RSA PRIVATE KEY", "rsa"),
        Algorithm::Ed25519 => (DkimKeyPair::generate_ed25519(), "PRIVATE KEY", "ed25519"),
    };
    let pair = pair.map_err(|e| e.to_string())?;
    let mut pem = format!("-----BEGIN {label}-----\n");
    let encoded = BASE64.encode(pair.private_key());
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    let public = match algorithm {
        Algorithm::Rsa => rsa_spki(pair.public_key()),
        Algorithm::Ed25519 => pair.public_key().to_vec(),
    };
    Ok((pem, format!("v=DKIM1; k={k}; p={}", BASE64.encode(public))))
}

/// A PKCS#1 RSAPublicKey wrapped as the SubjectPublicKeyInfo that DKIM
/// records carry (what opendkim-genkey publishes; every verifier reads it).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let octets: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
            out.push(0x80 | octets.len() as u8);
            out.extend(octets);
        }
        out.extend_from_slice(content);
        out
    }
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0];
    bits.extend_from_slice(pkcs1);
    let mut content = der(0x30, RSA_ENCRYPTION);
    content.extend(der(0x03, &bits));
    der(0x30, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(algorithm: Algorithm) -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("key.pem");
        let (pem, record) = generate(algorithm, 1024).unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(&path, pem).unwrap_or_else(|e| unreachable!("{e}"));
        (dir, path, record)
    }

    #[test]
    fn generated_keys_load_and_sign_with_their_algorithm() {
        let message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
        for (algorithm, a, k) in [
            (Algorithm::Rsa, "a=rsa-sha256", "k=rsa; p=MI"),
            (Algorithm::Ed25519, "a=ed25519-sha256", "k=ed25519; p="),
        ] {
            let (_dir, path, record) = key_file(algorithm);
            assert!(record.starts_with(&format!("v=DKIM1; {k}")), "{record}");
            let key = DkimKey::load("Example.COM", "s1", &path).unwrap_or_else(|e| unreachable!("{e}"));
            assert_eq!((key.algorithm, key.domain.as_str()), (algorithm, "example.com"));
            let value = key.sign(message).unwrap_or_else(|e| unreachable!("{e}"));
            assert!(!value.contains('\n'), "{value}");
            for tag in [a, "d=example.com", "s=s1", "c=relaxed/relaxed", "bh=", "b="] {
                assert!(value.contains(tag), "{tag} in {value}");
            }
            assert!(!value.contains('\t'), "{value}");
            assert!(value.to_ascii_lowercase().contains("from:from:"), "{value}");
        }
    }

    #[test]
    fn rsa_records_carry_a_subject_public_key_info() {
        let pkcs1 = [0x30, 0x03, 0x02, 0x01, 0x05];
        let spki = rsa_spki(&pkcs1);
        assert_eq!(spki[0], 0x30);
        assert_eq!(usize::from(spki[1]), spki.len() - 2);
        assert!(spki.ends_with(&[0x03, 0x06, 0x00, 0x30, 0x03, 0x02, 0x01, 0x05]));
        assert_eq!(&der_len_of(300)[..], &[0x82, 0x01, 0x2c]);
    }

    fn der_len_of(n: usize) -> Vec<u8> {
        let spki = rsa_spki(&vec![0; n - 1]);
        // tag, then the BIT STRING's length octets inside.
        let bit_string = spki.iter().position(|&b| b == 0x03).unwrap_or(0);
        spki[bit_string + 1..bit_string + 4].to_vec()
    }

    #[test]
    fn broken_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("broken.pem");
        std::fs::write(&path, "not a key").unwrap_or_else(|e| unreachable!("{e}"));
        let error = DkimKey::load("example.com", "s1", &path).err().unwrap_or_default();
        assert!(error.contains("broken.pem: not a PEM private key"), "{error}");
        let error = DkimKey::load("example.com", "s1", &dir.path().join("absent.pem"))
            .err()
            .unwrap_or_default();
        assert!(error.starts_with("cannot read "), "{error}");
    }
}
