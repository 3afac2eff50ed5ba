//! Prometheus scrapes of a gateway's admin endpoint, read by an
//! independent parser, for the tests that check metrics.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use mailgate_tests::http;

use crate::WAIT;

/// A scrape, parsed by an independent parser (`prometheus-parse`).
pub(crate) struct Scrape(pub(crate) prometheus_parse::Scrape);

impl Scrape {
    pub(crate) async fn take(admin: SocketAddr) -> Result<Self> {
        let (status, body) = http(admin, "GET", "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Ok(Self(prometheus_parse::Scrape::parse(lines)?))
    }

    /// The value of the sample `name` whose labels include `labels`; 0
    /// when there is none (a counter never incremented).
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// Scrapes until the sample `name` with `labels` reaches `at_least`;
    /// fails after [`WAIT`].
    pub(crate) async fn once(admin: SocketAddr, name: &str, labels: &[(&str, &str)], at_least: f64) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let scrape = Self::take(admin).await?;
            if scrape.value(name, labels) >= at_least {
                return Ok(scrape);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{name} {labels:?} did not reach {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether a sample whose name starts with `name` is there.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric.starts_with(name))
    }
}
