//! SMTP TLS reporting (RFC 8460): per recipient domain and report period
//! (a UTC day by default), how many sessions of delivery over MX set up
//! TLS as the domain's policy asked and how many failed, and why. The
//! tallies are kept in `<spool_dir>/tls-rpt/<period start>/<domain>.json`,
//! written at most every few seconds (`flush`), so a restart keeps them
//! (a crash loses the last seconds'). Once a period is over, each domain
//! that publishes `_smtp._tls` with `rua=` gets its aggregate report
//! (`report.rs`); the others' tallies are dropped.

mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

pub use report::{Destination as ReportDestination, Reporter, gzip, report_destinations};

use super::client::SmtpClient;
use super::error::DeliveryError;
use super::mta_sts::Policy;

/// Why a session failed, as RFC 8460 section 4.3 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultType {
    /// The MX host did not offer STARTTLS.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// Another failure (a handshake that failed, an MX host the policy
    /// does not name).
    ValidationFailure,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// DANE: the certificate matched none of the host's TLSA records.
    TlsaInvalid,
    /// DANE: the host's DNSSEC answers were bogus or could not be had.
    DnssecInvalid,
}

impl ResultType {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::StarttlsNotSupported => "starttls-not-supported",
            Self::CertificateHostMismatch => "certificate-host-mismatch",
            Self::CertificateExpired => "certificate-expired",
            Self::CertificateNotTrusted => "certificate-not-trusted",
            Self::ValidationFailure => "validation-failure",
            Self::StsPolicyFetchError => "sts-policy-fetch-error",
            Self::TlsaInvalid => "tlsa-invalid",
            Self::DnssecInvalid => "dnssec-invalid",
        }
    }

    /// The type of a failed TLS handshake, from rustls's reason.
    pub fn of_handshake(reason: &str) -> Self {
        // rustls writes these as variant names or as sentences.
        let reason = reason.to_ascii_lowercase().replace(' ', "");
        let has = |words: &[&str]| words.iter().any(|w| reason.contains(w));
        if has(&["notvalidforname"]) {
            Self::CertificateHostMismatch
        } else if has(&["expired"]) {
            Self::CertificateExpired
        } else if has(&["unknownissuer", "badsignature", "notvalidyet"]) {
            Self::CertificateNotTrusted
        } else {
            Self::ValidationFailure
        }
    }
}

/// One kind of failure and how often it happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    /// `result-type`.
    pub result_type: String,
    /// `receiving-mx-hostname`.
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-ip`.
    pub receiving_ip: Option<String>,
    /// `failure-reason-code`.
    pub failure_reason_code: Option<String>,
    /// `failed-session-count`.
    pub count: u64,
}

/// A domain's sessions in one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// `sts` or `no-policy-found` (empty when every session was DANE's).
    pub policy_type: String,
    /// The policy's lines (MTA-STS).
    pub policy_string: Vec<String>,
    /// Its `mx` patterns.
    pub mx_host: Vec<String>,
    /// Sessions that set up TLS as required.
    pub successful: u64,
    /// Failed sessions, by kind.
    pub failures: Vec<FailureCount>,
    /// The sessions to MX hosts with DANE TLSA records: a `tlsa` policy
    /// of its own, whose lines are the records and whose `mx_host` are
    /// the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlsa: Option<Box<Tally>>,
}

/// Which of a domain's policies a session counts under.
#[derive(Clone, Copy, Debug)]
pub enum Counted<'a> {
    /// The domain's MTA-STS policy (none: no policy found).
    Sts(Option<&'a Policy>),
    /// An MX host's DANE TLSA records, as text.
    Tlsa(&'a str, &'a [String]),
}

impl Tally {
    /// The failed sessions.
    pub fn failed(&self) -> u64 {
        self.failures.iter().map(|f| f.count).sum()
    }
}

/// A failed session.
#[derive(Debug)]
pub struct Failure<'a> {
    /// Why.
    pub result: ResultType,
    /// The MX host, when one was reached.
    pub host: Option<&'a str>,
    /// Its address.
    pub ip: Option<IpAddr>,
    /// More detail.
    pub reason: Option<String>,
}

type Key = (u64, String);

/// The tallies, and where they are kept.
#[derive(Debug)]
pub struct TlsReports {
    dir: PathBuf,
    period: u64,
    tallies: Mutex<HashMap<Key, Tally>>,
    dirty: Mutex<HashSet<Key>>,
    /// Sends the reports (none: tallies are kept, no report is sent).
    pub reporter: Option<Reporter>,
}

impl TlsReports {
    /// Tallies kept under `dir`, per `period` seconds (86,400: UTC days).
    pub fn new(dir: PathBuf, period: u64, reporter: Option<Reporter>) -> Self {
        Self {
            dir,
            period: period.max(1),
            tallies: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            reporter,
        }
    }

    /// The start of the current period, seconds since the epoch.
    pub fn current_period(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        now - now % self.period
    }

    /// The length of a period, seconds.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// A session to `domain` that set up TLS as `policy` (if any) asked.
    pub fn success(&self, domain: &str, policy: Option<&Policy>) {
        self.update(domain, Counted::Sts(policy), |tally| tally.successful += 1);
    }

    /// A session to `domain` that failed.
    pub fn failure(&self, domain: &str, policy: Option<&Policy>, failure: Failure<'_>) {
        self.count_failure(domain, Counted::Sts(policy), failure);
    }

    /// A session to `domain`, under `counted`, that failed.
    pub fn count_failure(&self, domain: &str, counted: Counted<'_>, failure: Failure<'_>) {
        self.update(domain, counted, |tally| {
            let (host, ip) = (failure.host.map(str::to_owned), failure.ip.map(|ip| ip.to_string()));
            let name = failure.result.name();
            let found = tally
                .failures
                .iter_mut()
                .find(|f| f.result_type == name && f.receiving_mx_hostname == host && f.receiving_ip == ip);
            match found {
                Some(entry) => entry.count += 1,
                None => tally.failures.push(FailureCount {
                    result_type: name.to_owned(),
                    receiving_mx_hostname: host,
                    receiving_ip: ip,
                    failure_reason_code: failure.reason,
                    count: 1,
                }),
            }
        });
    }

    /// Counts one session to MX host `host` (`ip`) of `domain`: a success
    /// when it set up TLS, a failure when it could not (STARTTLS missing,
    /// a certificate or handshake failure); other errors (a refused
    /// connection, a timeout) are not about TLS and are not counted.
    pub fn session(
        &self,
        domain: &str,
        counted: Counted<'_>,
        host: &str,
        ip: IpAddr,
        outcome: &Result<SmtpClient, DeliveryError>,
    ) {
        let (result, reason) = match (tls_outcome(outcome), counted) {
            (Some(Ok(())), _) => return self.update(domain, counted, |tally| tally.successful += 1),
            // Under DANE a failed handshake is a certificate that matches
            // no TLSA record.
            (Some(Err((ResultType::StarttlsNotSupported, reason))), _) => (ResultType::StarttlsNotSupported, reason),
            (Some(Err((_, reason))), Counted::Tlsa(..)) => (ResultType::TlsaInvalid, reason),
            (Some(Err(failure)), Counted::Sts(_)) => failure,
            (None, _) => return,
        };
        let failure = Failure {
            result,
            host: Some(host),
            ip: Some(ip),
            reason,
        };
        self.count_failure(domain, counted, failure);
    }

    fn update(&self, domain: &str, counted: Counted<'_>, change: impl FnOnce(&mut Tally)) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let plain = !domain.is_empty()
            && !domain.starts_with('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !plain {
            return;
        }
        let key = (self.current_period(), domain);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = tallies.entry(key.clone()).or_insert_with(|| {
            // A restart within the period goes on from what was kept.
            read_tally(&self.file(&key)).unwrap_or_default()
        });
        match counted {
            Counted::Sts(Some(policy)) => {
                tally.policy_type = "sts".to_owned();
                tally.policy_string = policy_lines(policy);
                tally.mx_host = policy.mx.clone();
                change(tally);
            }
            Counted::Sts(None) => {
                if tally.policy_type.is_empty() {
                    tally.policy_type = "no-policy-found".to_owned();
                }
                change(tally);
            }
            Counted::Tlsa(host, records) => {
                let tlsa = tally.tlsa.get_or_insert_with(|| {
                    Box::new(Tally {
                        policy_type: "tlsa".to_owned(),
                        ..Tally::default()
                    })
                });
                for record in records {
                    if !tlsa.policy_string.contains(record) {
                        tlsa.policy_string.push(record.clone());
                    }
                }
                if !tlsa.mx_host.iter().any(|h| h == host) {
                    tlsa.mx_host.push(host.to_owned());
                }
                change(tlsa);
            }
        }
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
    }

    /// Writes the tallies changed since the last flush; forgets those of
    /// past periods once written.
    pub async fn flush(&self) {
        let keys: Vec<Key> = self
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        let current = self.current_period();
        for key in keys {
            let tally = {
                let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
                let tally = tallies.get(&key).cloned();
                if key.0 < current {
                    tallies.remove(&key);
                }
                tally
            };
            let Some(tally) = tally else { continue };
            if let Err(e) = write_tally(&self.file(&key), &tally).await {
                warn!(domain = key.1, error = %e, "TLS-RPT: cannot keep the session counts");
                self.dirty.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
            }
        }
    }

    /// The tallies of periods that are over, as kept on disk: (period
    /// start, domain, tally).
    pub fn finished(&self) -> Vec<(u64, String, Tally)> {
        let current = self.current_period();
        periods(&self.dir)
            .into_iter()
            .filter(|(start, _)| *start < current)
            .flat_map(|(start, dir)| {
                domains(&dir)
                    .into_iter()
                    .filter_map(move |(domain, path)| Some((start, domain, read_tally(&path)?)))
            })
            .collect()
    }

    /// Forgets a period's tally of `domain` once reported.
    pub fn forget(&self, start: u64, domain: &str) {
        let dir = self.dir.join(start.to_string());
        let _ = std::fs::remove_file(dir.join(format!("{domain}.json")));
        let _ = std::fs::remove_dir(dir);
    }

    fn file(&self, (start, domain): &Key) -> PathBuf {
        self.dir.join(start.to_string()).join(format!("{domain}.json"))
    }
}

/// The tallies of the newest period kept under `dir` (what `mailgate
/// tls-report` shows): its start and each domain's tally.
pub fn latest(dir: &Path) -> Option<(u64, BTreeMap<String, Tally>)> {
    let (start, dir) = periods(dir).into_iter().max_by_key(|(start, _)| *start)?;
    let tallies = domains(&dir)
        .into_iter()
        .filter_map(|(domain, path)| Some((domain, read_tally(&path)?)))
        .collect();
    Some((start, tallies))
}

/// What a session's outcome says about TLS: `Ok` when it set up TLS, the
/// failure type (and detail) when TLS failed, `None` when the outcome is
/// not about TLS (a refused connection, a timeout).
pub fn tls_outcome(outcome: &Result<SmtpClient, DeliveryError>) -> Option<Result<(), (ResultType, Option<String>)>> {
    match outcome {
        Ok(client) if client.is_tls() => Some(Ok(())),
        Ok(_) => Some(Err((ResultType::StarttlsNotSupported, None))),
        Err(DeliveryError::Security { reason, .. } | DeliveryError::Unsupported { reason, .. })
            if reason.contains("STARTTLS") =>
        {
            Some(Err((ResultType::StarttlsNotSupported, None)))
        }
        Err(DeliveryError::Tls { reason, .. }) => Some(Err((ResultType::of_handshake(reason), Some(reason.clone())))),
        Err(_) => None,
    }
}

/// What `mailgate tls-report` prints: the newest period's tallies, as
/// text or JSON.
pub fn show(dir: &Path, json: bool) -> String {
    let Some((start, tallies)) = latest(dir) else {
        return match json {
            true => "{}\n".to_owned(),
            false => "no TLS sessions recorded yet\n".to_owned(),
        };
    };
    let since = mail_parser::DateTime::from_timestamp(i64::try_from(start).unwrap_or(i64::MAX)).to_rfc3339();
    if json {
        let body = serde_json::json!({ "period-start": since, "domains": tallies });
        return format!("{body}\n");
    }
    let mut out = format!("TLS sessions of delivery over MX since {since}\n");
    let each = tallies.iter().flat_map(|(domain, tally)| {
        let main = (!tally.policy_type.is_empty()).then_some((domain, tally));
        main.into_iter().chain(tally.tlsa.as_deref().map(|tlsa| (domain, tlsa)))
    });
    for (domain, tally) in each {
        let policy = match tally.policy_string.iter().find_map(|l| l.strip_prefix("mode: ")) {
            Some(mode) => format!("{} ({mode})", tally.policy_type),
            None if tally.policy_type == "tlsa" => format!("tlsa ({})", tally.mx_host.join(" ")),
            None => tally.policy_type.clone(),
        };
        out.push_str(&format!(
            "{domain}  policy {policy}  successful {}  failed {}\n",
            tally.successful,
            tally.failed()
        ));
        for failure in &tally.failures {
            let host = failure.receiving_mx_hostname.as_deref().unwrap_or("-");
            let ip = failure.receiving_ip.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "    {}  {host} ({ip})  {}\n",
                failure.result_type, failure.count
            ));
        }
    }
    out
}

/// The policy's lines, as a report quotes them.
fn policy_lines(policy: &Policy) -> Vec<String> {
    let mut lines = vec!["version: STSv1".to_owned(), format!("mode: {}", policy.mode.name())];
    lines.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", policy.max_age));
    lines
}

fn periods(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect()
}

fn domains(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
            Some((name, e.path()))
        })
        .collect()
}

fn read_tally(path: &Path) -> Option<Tally> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

async fn write_tally(path: &Path, tally: &Tally) -> std::io::Result<()> {
    let json = serde_json::to_vec(tally).map_err(std::io::Error::other)?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let temporary = path.with_extension("json.new");
    tokio::fs::write(&temporary, json).await?;
    tokio::fs::rename(&temporary, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_get_the_rfc_result_types() {
        for (reason, expected) in [
            (
                "invalid peer certificate: UnknownIssuer",
                ResultType::CertificateNotTrusted,
            ),
            (
                "invalid peer certificate: BadSignature",
                ResultType::CertificateNotTrusted,
            ),
            (
                "invalid peer certificate: certificate not valid for name \"mx.test\"; certificate is only valid for DnsName(\"x.test\")",
                ResultType::CertificateHostMismatch,
            ),
            (
                "invalid peer certificate: NotValidForName",
                ResultType::CertificateHostMismatch,
            ),
            (
                "invalid peer certificate: certificate expired: verification time 2, but certificate is not valid after 1",
                ResultType::CertificateExpired,
            ),
            ("received fatal alert: HandshakeFailure", ResultType::ValidationFailure),
        ] {
            assert_eq!(ResultType::of_handshake(reason), expected, "{reason}");
        }
    }

    #[test]
    fn dane_sessions_are_a_tlsa_policy_of_their_own_in_the_report() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let reports = TlsReports::new(dir.path().to_path_buf(), 86_400, None);
        let records = ["3 1 1 abcd".to_owned()];
        reports.update("example.com", Counted::Tlsa("mx.example.com", &records), |t| {
            t.successful += 1
        });
        let failure = Failure {
            result: ResultType::TlsaInvalid,
            host: Some("mx2.example.com"),
            ip: None,
            reason: None,
        };
        reports.count_failure("example.com", Counted::Tlsa("mx2.example.com", &[]), failure);
        let key = (reports.current_period(), "example.com".to_owned());
        let tally = || {
            reports
                .tallies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned()
                .unwrap_or_default()
        };
        let reporter = Reporter {
            hostname: "mx.sender.example".into(),
            contact: "postmaster@sender.example".into(),
            tls: crate::delivery::tls::TlsConfigs::encrypt_only().unverified,
            timeout: std::time::Duration::from_secs(1),
        };
        let json = reporter.json("example.com", 0, 86_400, &tally());
        let policies = json["policies"].as_array().cloned().unwrap_or_default();
        assert_eq!(policies.len(), 1, "only the tlsa policy: {json}");
        let policy = &policies[0];
        assert_eq!(policy["policy"]["policy-type"], "tlsa");
        assert_eq!(policy["policy"]["policy-string"], serde_json::json!(["3 1 1 abcd"]));
        assert_eq!(
            policy["policy"]["mx-host"],
            serde_json::json!(["mx.example.com", "mx2.example.com"])
        );
        assert_eq!(policy["summary"]["total-successful-session-count"], 1);
        assert_eq!(policy["summary"]["total-failure-session-count"], 1);
        assert_eq!(policy["failure-details"][0]["result-type"], "tlsa-invalid");

        // An MTA-STS (here: no policy) session adds the domain's own policy.
        reports.success("example.com", None);
        let json = reporter.json("example.com", 0, 86_400, &tally());
        let types: Vec<&str> = json["policies"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["policy"]["policy-type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(types, ["no-policy-found", "tlsa"]);
    }
}
