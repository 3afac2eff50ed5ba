//! ARC (RFC 8617) with the mail-auth crate: the incoming chain's
//! validation, reported beside DKIM, SPF and DMARC, and the sealing of a
//! message as it leaves, after the plugins' modifications. A seal is
//! made with an RSA key of `[[dkim.key]]` (RFC 8617 section 4.1.3 allows
//! rsa-sha256 only); its ARC-Authentication-Results carry the results of
//! verifying the message as received, and its `cv=` the incoming chain's
//! validation.

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};
use rustls_pki_types::PrivateKeyDer;

use crate::plugin::{ArcSet, AuthStatus};

/// The header fields an ARC-Message-Signature covers besides those a
/// DKIM signature does (`super::SIGNED_HEADERS`, From once): the DKIM
/// signatures and the results already on the message.
const ALSO_SEALED: [&str; 2] = ["DKIM-Signature", "Authentication-Results"];

/// An RSA key ready to seal for its domain and selector.
pub struct Sealer(ArcSealer<RsaKey<Sha256>, Done>);

impl Sealer {
    /// The sealer of an RSA private key.
    pub fn new(der: PrivateKeyDer<'_>, domain: &str, selector: &str) -> Result<Self, String> {
        let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
        Ok(Self(
            ArcSealer::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(super::SIGNED_HEADERS.iter().skip(1).chain(&ALSO_SEALED).copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
        ))
    }

    /// The ARC set for `message` (as it leaves), given what verifying the
    /// message as received found: `results` and the incoming `chain`.
    pub fn seal(
        &self,
        message: &[u8],
        results: &AuthenticationResults<'_>,
        chain: &ArcOutput<'_>,
    ) -> Result<ArcSet, String> {
        if let DkimResult::TempError(e) = chain.result() {
            // cv=fail would end the chain for good over a passing DNS fault.
            return Err(format!("the incoming ARC chain could not be validated ({e})"));
        }
        let parsed = AuthenticatedMessage::parse(message).ok_or("the message has no header section")?;
        let set = self.0.seal(&parsed, results, chain).map_err(|e| e.to_string())?;
        let cv = if chain.sets().is_empty() {
            "none"
        } else if *chain.result() == DkimResult::Pass {
            "pass"
        } else {
            "fail"
        };
        Ok(ArcSet {
            fields: set.to_header(),
            instance: set.seal.i,
            cv,
        })
    }
}

/// The chain's validation, as the `dkim` capability reports it, and the
/// latest instance.
pub fn status(chain: &ArcOutput<'_>) -> (AuthStatus, u32) {
    let status = match chain.result() {
        DkimResult::None => AuthStatus::None,
        DkimResult::Pass => AuthStatus::Pass,
        DkimResult::TempError(_) => AuthStatus::Temperror,
        // RFC 8617 knows none, pass and fail: a broken chain, a bad seal,
        // a body that changed after the last set all fail it.
        DkimResult::Fail(_) | DkimResult::Neutral(_) | DkimResult::PermError(_) => AuthStatus::Fail,
    };
    let instance = chain.sets().last().map_or(0, |set| set.seal.header.i);
    (status, instance)
}

#[cfg(test)]
mod tests {
    use mail_auth::{DnsError, Error};
    use rustls_pki_types::pem::PemObject as _;

    use super::*;

    fn sealer() -> Sealer {
        let (pem, _) =
            super::super::generate(super::super::Algorithm::Rsa, 1024).unwrap_or_else(|e| unreachable!("{e}"));
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        Sealer::new(der, "relay.test", "arc1").unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn a_first_seal_is_instance_1_with_cv_none_and_a_dns_failure_seals_nothing() {
        let message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
        let results = AuthenticationResults::new("relay.test");
        let set = sealer()
            .seal(message, &results, &ArcOutput::default())
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((set.instance, set.cv), (1, "none"));
        for (field, tags) in [
            (
                "ARC-Seal: ",
                &["i=1", "cv=none", "d=relay.test", "s=arc1", "a=rsa-sha256"][..],
            ),
            ("ARC-Message-Signature: ", &["i=1", "c=relaxed/relaxed", "bh="][..]),
            ("ARC-Authentication-Results: ", &["i=1; relay.test"][..]),
        ] {
            let line = set.fields.lines().position(|l| l.starts_with(field));
            assert!(line.is_some(), "{field} in {}", set.fields);
            for tag in tags {
                assert!(set.fields.contains(tag), "{tag} in {}", set.fields);
            }
        }
        assert!(set.fields.ends_with("\r\n"), "{}", set.fields);

        let unknown = ArcOutput::default().with_result(DkimResult::TempError(Error::Dns(DnsError::Resolver(
            "timed out".into(),
        ))));
        let error = sealer().seal(message, &results, &unknown).err().unwrap_or_default();
        assert!(
            error.starts_with("the incoming ARC chain could not be validated"),
            "{error}"
        );
        assert_eq!(status(&unknown), (AuthStatus::Temperror, 0));
    }
}
