//! The aggregate report (RFC 8460 section 4): JSON, gzipped, sent to each
//! `rua` of the domain's `_smtp._tls` record: by mail (section 5.3, a
//! `multipart/report; report-type="tlsrpt"` message with the report as an
//! `application/tlsrpt+gzip` attachment, queued like any other message)
//! or by HTTPS POST (section 5.4).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::json;

use super::Tally;
use crate::dns::Resolver;

/// Who sends the reports, and how HTTPS ones are posted.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// `organization-name` and the submitter: the gateway's host name.
    pub hostname: String,
    /// `contact-info`, and the sender of mailed reports.
    pub contact: String,
    /// Certificates trusted for HTTPS report endpoints.
    pub tls: Arc<ClientConfig>,
    /// The longest a POST may take.
    pub timeout: Duration,
}

/// Where a report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `mailto:ADDRESS`.
    Mail(String),
    /// `https://...`.
    Https(String),
}

/// The `rua` destinations of a `v=TLSRPTv1; rua=...` record, when exactly
/// one of the records is one.
pub fn report_destinations(records: &[String]) -> Vec<Destination> {
    let mut reporting = records.iter().filter(|r| r.trim_start().starts_with("v=TLSRPTv1"));
    let (Some(record), None) = (reporting.next(), reporting.next()) else {
        return Vec::new();
    };
    let Some(rua) = record
        .split(';')
        .map(str::trim)
        .find_map(|field| field.strip_prefix("rua="))
    else {
        return Vec::new();
    };
    rua.split(',')
        .map(str::trim)
        .filter_map(|uri| {
            if let Some(address) = uri.strip_prefix("mailto:") {
                Some(Destination::Mail(address.to_owned()))
            } else if uri.starts_with("https://") {
                Some(Destination::Https(uri.to_owned()))
            } else {
                None
            }
        })
        .collect()
}

impl Reporter {
    /// The report-id of a domain's report for the period from `start`.
    pub fn report_id(&self, start: u64, domain: &str) -> String {
        format!("{start}.{domain}@{}", self.hostname)
    }

    /// The JSON report of `domain`'s `tally` for the period `start` to
    /// `end` (seconds since the epoch).
    pub fn json(&self, domain: &str, start: u64, end: u64, tally: &Tally) -> serde_json::Value {
        let time =
            |secs: u64| mail_parser::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).to_rfc3339();
        let main = (!tally.policy_type.is_empty()).then_some(tally);
        let policies: Vec<serde_json::Value> = main
            .into_iter()
            .chain(tally.tlsa.as_deref())
            .map(|tally| policy_entry(domain, tally))
            .collect();
        json!({
            "organization-name": self.hostname,
            "date-range": { "start-datetime": time(start), "end-datetime": time(end.saturating_sub(1)) },
            "contact-info": self.contact,
            "report-id": self.report_id(start, domain),
            "policies": policies,
        })
    }

    /// The mail carrying the gzipped `report` to `to` (section 5.3).
    pub fn message(&self, to: &str, domain: &str, start: u64, end: u64, report: &[u8]) -> Vec<u8> {
        let host = &self.hostname;
        let id = self.report_id(start, domain);
        let boundary = format!("tlsrpt.{start}.{host}");
        let file = format!("{host}!{domain}!{start}!{}.json.gz", end.saturating_sub(1));
        let encoded = base64::engine::general_purpose::STANDARD.encode(report);
        let mut text = String::new();
        text.push_str(&format!("From: TLS reporting <{}>\r\n", self.contact));
        text.push_str(&format!("To: <{to}>\r\n"));
        text.push_str(&format!(
            "Subject: Report Domain: {domain} Submitter: {host} Report-ID: <{id}>\r\n"
        ));
        text.push_str(&format!(
            "TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {host}\r\n"
        ));
        text.push_str(&format!(
            "Date: {}\r\n",
            crate::smtp::trace::rfc5322_date(std::time::SystemTime::now())
        ));
        text.push_str(&format!(
            "Message-ID: <{id}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
        ));
        text.push_str(&format!(
            "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n"
        ));
        text.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
             This is an aggregate TLS report (RFC 8460) from {host} for {domain}.\r\n\r\n"
        ));
        text.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/tlsrpt+gzip; name=\"{file}\"\r\n\
             Content-Disposition: attachment; filename=\"{file}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ));
        for line in encoded.as_bytes().chunks(76) {
            text.push_str(&String::from_utf8_lossy(line));
            text.push_str("\r\n");
        }
        text.push_str(&format!("\r\n--{boundary}--\r\n"));
        text.into_bytes()
    }

    /// POSTs the gzipped `report` to `url` (section 5.4): any 2xx is done.
    pub async fn post(&self, resolver: &Resolver, url: &str, report: Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.post_once(resolver, url, report)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from {url} within {:?}", self.timeout)),
        }
    }

    async fn post_once(&self, resolver: &Resolver, url: &str, report: Vec<u8>) -> Result<(), String> {
        let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| format!("bad port in {url}"))?),
            None => (authority, 443),
        };
        let ip = *resolver
            .addresses(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .first()
            .ok_or_else(|| format!("no address for {host}"))?;
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(Full::new(bytes::Bytes::from(report)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    }
}

/// `bytes`, gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// One policy of a report (section 4.4): the policy, its summary and its
/// failure details.
fn policy_entry(domain: &str, tally: &Tally) -> serde_json::Value {
    let failures: Vec<serde_json::Value> = tally
        .failures
        .iter()
        .map(|f| {
            let mut detail = json!({ "result-type": f.result_type, "failed-session-count": f.count });
            for (key, value) in [
                ("receiving-mx-hostname", &f.receiving_mx_hostname),
                ("receiving-ip", &f.receiving_ip),
                ("failure-reason-code", &f.failure_reason_code),
            ] {
                if let Some(value) = value {
                    detail[key] = json!(value);
                }
            }
            detail
        })
        .collect();
    let mut policy = json!({
        "policy-type": tally.policy_type,
        "policy-domain": domain,
    });
    if tally.policy_type == "sts" || tally.policy_type == "tlsa" {
        policy["policy-string"] = json!(tally.policy_string);
        policy["mx-host"] = json!(tally.mx_host);
    }
    json!({
        "policy": policy,
        "summary": {
            "total-successful-session-count": tally.successful,
            "total-failure-session-count": tally.failed(),
        },
        "failure-details": failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_destinations_are_read_from_exactly_one_record() {
        let records = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            report_destinations(&records(&[
                "v=TLSRPTv1; rua=mailto:tls@example.com,https://rep.example.com/v1, ftp://x"
            ])),
            [
                Destination::Mail("tls@example.com".into()),
                Destination::Https("https://rep.example.com/v1".into())
            ]
        );
        assert!(
            report_destinations(&records(&["v=TLSRPTv1; rua=mailto:a@x", "v=TLSRPTv1; rua=mailto:b@x"])).is_empty()
        );
        assert!(report_destinations(&records(&["v=spf1 -all"])).is_empty());
    }

    #[test]
    fn gzip_round_trips() {
        let packed = gzip(b"{\"a\":1}");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text).unwrap();
        assert_eq!(text, "{\"a\":1}");
    }
}
