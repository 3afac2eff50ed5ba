//! The host side of the plugin world's imports. Each method converts and
//! delegates; a missing resource is a trap.

use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use super::bindings::mailgate::plugin::{clock, dkim, dns, kv, log, metrics, types};
use super::host::{AuthEnvelope, AuthStatus, DmarcPolicy, DnsAnswer, DnsFailure, DnsKind, DnsRecord, SealRequest};
use super::message::MessageHandle;
use super::state::State;
use super::transcript::{Bytes, HostCall};

/// Longest log line a plugin may write.
const MAX_LOG_LINE: usize = 4096;

impl types::Host for State {}

impl types::HostMessage for State {
    async fn size(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size())
    }

    async fn headers(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.table.get(&this)?.headers())
    }

    async fn header(&mut self, this: Resource<MessageHandle>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.header(&name))
    }

    async fn parts(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<types::Part>> {
        Ok(self.table.get(&this)?.parts())
    }

    async fn text(&mut self, this: Resource<MessageHandle>, index: u32) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&this)?.text(index))
    }

    async fn read_body(
        &mut self,
        this: Resource<MessageHandle>,
        offset: u64,
        length: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.read_body(offset, length))
    }

    async fn drop(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl log::Host for State {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for State {
    async fn now_millis(&mut self) -> wasmtime::Result<u64> {
        let millis = self.host.clock.now_millis();
        self.note(|| HostCall::Now { millis });
        Ok(millis)
    }

    async fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        let nanos = self.host.clock.monotonic_nanos();
        self.note(|| HostCall::Monotonic { nanos });
        Ok(nanos)
    }
}

impl State {
    /// Time spent waiting on the host (DNS, the store) does not count
    /// against the plugin's time budget: its deadline moves by that much.
    fn excuse(&mut self, since: Instant) {
        self.deadline += since.elapsed();
    }

    async fn lookup(&mut self, kind: DnsKind, name: String) -> DnsAnswer {
        let key = (kind, name.to_ascii_lowercase());
        if let Some(answer) = self.dns_cache.get(&key) {
            return answer.clone();
        }
        let answer = if let Err(reason) = valid_query(kind, &key.1) {
            Err(DnsFailure::Invalid(reason))
        } else if self.dns_lookups >= MAX_DNS_LOOKUPS {
            return Err(DnsFailure::Temporary(format!(
                "more than {MAX_DNS_LOOKUPS} lookups in one transaction"
            )));
        } else {
            self.dns_lookups += 1;
            let started = Instant::now();
            let answer = self.host.dns.lookup(kind, key.1.clone()).await;
            self.excuse(started);
            self.note(|| HostCall::Dns {
                kind,
                name: key.1.clone(),
                answer: answer.clone(),
            });
            answer
        };
        self.dns_cache.insert(key, answer.clone());
        answer
    }
}

/// Uncached lookups one transaction may make.
pub const MAX_DNS_LOOKUPS: u32 = 64;

/// A name a resolver can be asked about: 1 to 253 octets of printable
/// ASCII in labels of 1 to 63; for PTR, an IP address.
fn valid_query(kind: DnsKind, name: &str) -> Result<(), String> {
    if kind == DnsKind::Ptr {
        return name
            .parse::<std::net::IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("{name:?} is not an IP address"));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed
            .split('.')
            .all(|label| (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_graphic()));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid domain name"))
    }
}

fn dns_error(failure: DnsFailure) -> dns::Error {
    match failure {
        DnsFailure::NoSuchName => dns::Error::NoSuchName,
        DnsFailure::Invalid(reason) => dns::Error::Invalid(reason),
        DnsFailure::Temporary(reason) => dns::Error::Temporary(reason),
    }
}

/// The strings of an answer's records of one shape.
fn strings(answer: DnsAnswer, pick: impl Fn(DnsRecord) -> Option<String>) -> Result<Vec<String>, dns::Error> {
    answer
        .map(|records| records.into_iter().filter_map(pick).collect())
        .map_err(dns_error)
}

impl dns::Host for State {
    async fn a(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::Error>> {
        let answer = self.lookup(DnsKind::A, name).await;
        Ok(strings(answer, |r| match r {
            DnsRecord::Ip(ip @ std::net::IpAddr::V4(_)) => Some(ip.to_string()),
            _ => None,
        }))
    }

    async fn aaaa(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::Error>> {
        let answer = self.lookup(DnsKind::Aaaa, name).await;
        Ok(strings(answer, |r| match r {
            DnsRecord::Ip(ip @ std::net::IpAddr::V6(_)) => Some(ip.to_string()),
            _ => None,
        }))
    }

    async fn mx(&mut self, name: String) -> wasmtime::Result<Result<Vec<dns::MxRecord>, dns::Error>> {
        let answer = self.lookup(DnsKind::Mx, name).await;
        Ok(answer
            .map(|records| {
                records
                    .into_iter()
                    .filter_map(|r| match r {
                        DnsRecord::Mx { preference, exchange } => Some(dns::MxRecord { preference, exchange }),
                        _ => None,
                    })
                    .collect()
            })
            .map_err(dns_error))
    }

    async fn txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::Error>> {
        let answer = self.lookup(DnsKind::Txt, name).await;
        Ok(strings(answer, |r| match r {
            DnsRecord::Txt(text) => Some(text),
            _ => None,
        }))
    }

    async fn ptr(&mut self, ip: String) -> wasmtime::Result<Result<Vec<String>, dns::Error>> {
        let answer = self.lookup(DnsKind::Ptr, ip).await;
        Ok(strings(answer, |r| match r {
            DnsRecord::Name(name) => Some(name),
            _ => None,
        }))
    }
}

/// Longest key a plugin may use.
const MAX_KEY: usize = 512;
/// Largest value a plugin may store.
const MAX_VALUE: usize = 64 << 10;

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err(format!("a key must be 1 to {MAX_KEY} octets long"))
    } else {
        Ok(())
    }
}

fn ttl(seconds: u32) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)))
}

impl kv::Host for State {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let started = Instant::now();
        let result = self.host.kv.get(&self.plugin, &key).await;
        self.excuse(started);
        self.note(|| HostCall::KvGet {
            key,
            value: result.clone().map(|v| v.as_deref().map(Bytes::of)),
        });
        Ok(result)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_seconds: u32) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        if value.len() > MAX_VALUE {
            return Ok(Err(format!("a value must be at most {MAX_VALUE} octets long")));
        }
        let started = Instant::now();
        let result = self.host.kv.set(&self.plugin, &key, value, ttl(ttl_seconds)).await;
        self.excuse(started);
        Ok(result)
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_seconds: u32) -> wasmtime::Result<Result<i64, String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let started = Instant::now();
        let result = self
            .host
            .kv
            .increment(&self.plugin, &key, delta, ttl(ttl_seconds))
            .await;
        self.excuse(started);
        Ok(result)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let started = Instant::now();
        let result = self.host.kv.delete(&self.plugin, &key).await;
        self.excuse(started);
        Ok(result)
    }
}

impl metrics::Host for State {
    async fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) -> wasmtime::Result<()> {
        crate::metrics::metrics().plugin_counter_add(&self.plugin, &name, &labels, value);
        Ok(())
    }

    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<()> {
        crate::metrics::metrics().plugin_histogram_observe(&self.plugin, &name, &labels, value);
        Ok(())
    }
}

impl From<AuthStatus> for dkim::Status {
    fn from(status: AuthStatus) -> Self {
        match status {
            AuthStatus::None => Self::None,
            AuthStatus::Pass => Self::Pass,
            AuthStatus::Fail => Self::Fail,
            AuthStatus::Softfail => Self::Softfail,
            AuthStatus::Neutral => Self::Neutral,
            AuthStatus::Temperror => Self::Temperror,
            AuthStatus::Permerror => Self::Permerror,
        }
    }
}

impl From<dkim::Status> for AuthStatus {
    fn from(status: dkim::Status) -> Self {
        match status {
            dkim::Status::None => Self::None,
            dkim::Status::Pass => Self::Pass,
            dkim::Status::Fail => Self::Fail,
            dkim::Status::Softfail => Self::Softfail,
            dkim::Status::Neutral => Self::Neutral,
            dkim::Status::Temperror => Self::Temperror,
            dkim::Status::Permerror => Self::Permerror,
        }
    }
}

impl dkim::Host for State {
    async fn sign(
        &mut self,
        message: Resource<MessageHandle>,
        domain: String,
    ) -> wasmtime::Result<Result<Vec<types::Header>, String>> {
        let message = std::sync::Arc::clone(&self.table.get(&message)?.0);
        let started = Instant::now();
        let fields = self.host.dkim.sign(message.raw(), &domain);
        self.excuse(started);
        self.note(|| HostCall::DkimSign {
            domain: domain.clone(),
            fields: fields.clone(),
        });
        Ok(fields.map(|values| {
            values
                .into_iter()
                .map(|value| types::Header {
                    name: "DKIM-Signature".to_owned(),
                    value,
                })
                .collect()
        }))
    }

    async fn verify(
        &mut self,
        message: Resource<MessageHandle>,
        envelope: dkim::Envelope,
    ) -> wasmtime::Result<dkim::Verification> {
        let message = std::sync::Arc::clone(&self.table.get(&message)?.0);
        let envelope = auth_envelope(envelope)?;
        let started = Instant::now();
        let found = self.host.dkim.verify(message.raw(), &envelope).await;
        self.excuse(started);
        self.note(|| HostCall::DkimVerify {
            verification: found.clone(),
        });
        Ok(dkim::Verification {
            signatures: found
                .signatures
                .into_iter()
                .map(|s| dkim::Signature {
                    domain: s.domain,
                    selector: s.selector,
                    status: s.status.into(),
                    reason: s.reason,
                })
                .collect(),
            spf: found.spf.into(),
            dmarc: found.dmarc.into(),
            dmarc_domain: found.dmarc_domain,
            dmarc_policy: match found.dmarc_policy {
                DmarcPolicy::Unspecified => dkim::Policy::Unspecified,
                DmarcPolicy::None => dkim::Policy::None,
                DmarcPolicy::Quarantine => dkim::Policy::Quarantine,
                DmarcPolicy::Reject => dkim::Policy::Reject,
            },
            arc: found.arc.into(),
            arc_instance: found.arc_instance,
            authserv_id: found.authserv_id,
            authentication_results: found.authentication_results,
        })
    }

    async fn seal(&mut self, domain: String, envelope: dkim::Envelope) -> wasmtime::Result<Result<(), String>> {
        let envelope = auth_envelope(envelope)?;
        let domain = domain.to_ascii_lowercase();
        let answer = self.host.dkim.can_seal(&domain);
        self.note(|| HostCall::DkimSeal {
            domain: domain.clone(),
            answer: answer.clone(),
        });
        if answer.is_ok() {
            self.seal = Some(SealRequest { domain, envelope });
        }
        Ok(answer)
    }
}

/// The gateway's form of a plugin's `dkim.envelope`.
fn auth_envelope(envelope: dkim::Envelope) -> wasmtime::Result<AuthEnvelope> {
    let client_ip = envelope
        .client_ip
        .parse()
        .map_err(|_| wasmtime::format_err!("dkim: client-ip {:?} is not an IP address", envelope.client_ip))?;
    Ok(AuthEnvelope {
        client_ip,
        helo: envelope.helo,
        mail_from: envelope.mail_from,
        spf: envelope.spf.map(AuthStatus::from),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::plugin::host::{BoxFuture, DnsService, HostServices};

    /// Answers every lookup with one address and counts the lookups.
    #[derive(Default)]
    struct Counting(AtomicU32);

    impl DnsService for Counting {
        fn lookup(&self, _: DnsKind, _: String) -> BoxFuture<'_, DnsAnswer> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(vec![DnsRecord::Ip("192.0.2.1".parse().unwrap())]) })
        }
    }

    fn state(dns: Arc<Counting>) -> State {
        let host = HostServices {
            dns,
            ..HostServices::none()
        };
        State::new(Arc::from("p"), 1 << 20, host)
    }

    #[tokio::test]
    async fn lookups_are_cached_per_transaction_and_bounded() {
        let dns = Arc::new(Counting::default());
        let mut state = state(Arc::clone(&dns));
        for name in ["a.test", "A.test", "a.test."] {
            let answer = dns::Host::a(&mut state, name.into()).await.unwrap();
            assert!(matches!(answer.as_deref(), Ok([ip]) if ip == "192.0.2.1"), "{answer:?}");
        }
        assert_eq!(
            dns.0.load(Ordering::SeqCst),
            2,
            "a.test and a.test. are cached apart, case is not"
        );
        assert!(matches!(
            dns::Host::a(&mut state, "a..test".into()).await.unwrap(),
            Err(dns::Error::Invalid(_))
        ));
        assert!(matches!(
            dns::Host::ptr(&mut state, "not-an-ip".into()).await.unwrap(),
            Err(dns::Error::Invalid(_))
        ));
        assert_eq!(
            dns.0.load(Ordering::SeqCst),
            2,
            "invalid names never reach the resolver"
        );
        // An AAAA lookup answered with an IPv4 address shows nothing.
        let answer = dns::Host::aaaa(&mut state, "a.test".into()).await.unwrap();
        assert!(matches!(answer.as_deref(), Ok([])), "{answer:?}");

        for n in 0..MAX_DNS_LOOKUPS {
            let _ = dns::Host::txt(&mut state, format!("n{n}.test")).await.unwrap();
        }
        assert!(matches!(
            dns::Host::txt(&mut state, "one-more.test".into()).await.unwrap(),
            Err(dns::Error::Temporary(_))
        ));
        assert_eq!(
            dns.0.load(Ordering::SeqCst),
            MAX_DNS_LOOKUPS,
            "the limit counts lookups that went out"
        );

        state.end_transaction();
        let _ = dns::Host::a(&mut state, "a.test".into()).await.unwrap();
        assert_eq!(
            dns.0.load(Ordering::SeqCst),
            MAX_DNS_LOOKUPS + 1,
            "a new transaction asks again"
        );
    }

    #[test]
    fn names_a_resolver_may_be_asked() {
        assert!(valid_query(DnsKind::A, "1.0.0.127.zen.spamhaus.org").is_ok());
        assert!(valid_query(DnsKind::Txt, "sel._domainkey.example.com.").is_ok());
        assert!(valid_query(DnsKind::A, "").is_err());
        assert!(valid_query(DnsKind::A, "a b.test").is_err());
        assert!(valid_query(DnsKind::A, &"a".repeat(64)).is_err());
        assert!(valid_query(DnsKind::Ptr, "2001:db8::1").is_ok());
    }
}
