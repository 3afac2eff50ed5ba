//! The runner's side of TLS reporting: the session tallies written every
//! few seconds, and once a report period is over, each recipient domain's
//! report sent to the `rua` of its `_smtp._tls` record (mailed reports go
//! through this queue; posted ones run on a task of their own).

use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::Runner;
use crate::delivery::tls_rpt::{ReportDestination, Reporter, gzip, report_destinations};
use crate::dns::{DnsError, Resolver};
use crate::queue::Envelope;
use crate::smtp::{Mailbox, ReversePath};

/// How often the tallies are written and finished periods reported.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

impl Runner {
    /// Writes the changed tallies.
    pub(super) async fn flush_tls_reports(&self) {
        if let Some(reports) = &self.settings.tls_reports {
            reports.flush().await;
        }
    }

    /// Writes the changed tallies, and sends the reports of the periods
    /// that are over.
    pub(super) async fn send_tls_reports(&mut self) {
        let Some(reports) = self.settings.tls_reports.clone() else {
            return;
        };
        reports.flush().await;
        for (start, domain, tally) in reports.finished() {
            let Some(reporter) = &reports.reporter else {
                reports.forget(start, &domain);
                continue;
            };
            let destinations = match self.settings.resolver.txt(&format!("_smtp._tls.{domain}")).await {
                Ok(records) => report_destinations(&records),
                Err(DnsError::NoSuchName | DnsError::NoRecords) => Vec::new(),
                Err(e) => {
                    debug!(domain, error = %e, "TLS-RPT: the _smtp._tls lookup failed; trying again later");
                    continue;
                }
            };
            if destinations.is_empty() {
                debug!(domain, "TLS-RPT: the domain asks for no reports");
                reports.forget(start, &domain);
                continue;
            }
            let end = start + reports.period();
            let json = reporter.json(&domain, start, end, &tally).to_string();
            let packed = gzip(json.as_bytes());
            for destination in destinations {
                match destination {
                    ReportDestination::Mail(to) => self.mail_report(reporter, &to, &domain, start, end, &packed).await,
                    ReportDestination::Https(url) => {
                        post_report(self.settings.resolver.clone(), reporter, url, domain.clone(), &packed);
                    }
                }
            }
            info!(
                domain,
                period_start = start,
                successful = tally.successful,
                failed = tally.failed(),
                "TLS report sent"
            );
            reports.forget(start, &domain);
        }
    }

    /// Queues a mailed report.
    async fn mail_report(&mut self, reporter: &Reporter, to: &str, domain: &str, start: u64, end: u64, packed: &[u8]) {
        let (Ok(sender), Ok(recipient)) = (Mailbox::parse(&reporter.contact), Mailbox::parse(to)) else {
            warn!(domain, to, "TLS-RPT: not a usable mailto address");
            return;
        };
        let content = reporter.message(to, domain, start, end, packed);
        let envelope = Envelope::generated(ReversePath::Mailbox(sender), recipient, &content, SystemTime::now());
        let mut writer = self.spool.create();
        writer.write(&content).await;
        match self.spool.commit(writer, envelope).await {
            Ok(stored) => {
                info!(queue_id = %stored.id, domain, to, "TLS report queued");
                self.ready.push_back(stored);
            }
            Err(e) => warn!(domain, to, error = %e, "TLS-RPT: cannot queue the report"),
        }
    }
}

/// Posts a report on a task of its own, so the runner does not wait.
fn post_report(resolver: Resolver, reporter: &Reporter, url: String, domain: String, packed: &[u8]) {
    let (reporter, packed) = (reporter.clone(), packed.to_vec());
    tokio::spawn(async move {
        match reporter.post(&resolver, &url, packed).await {
            Ok(()) => info!(domain, url, "TLS report posted"),
            Err(e) => warn!(domain, url, error = %e, "TLS-RPT: posting the report failed"),
        }
    });
}
