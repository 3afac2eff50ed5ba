//! The outbound side of the configuration: `[delivery]` and the
//! `[[route]]`s, with each route's SMTP policy (TLS, CA, credentials).

use std::collections::HashSet;
use std::sync::Arc;

use toml::Spanned;

use super::raw::{self, RawConfig, RawRoute};
use super::{Checker, Problem};
use crate::delivery::dane::Dane;
use crate::delivery::mta_sts::{Fetcher, MtaSts};
use crate::delivery::route::{Route, RouteTable, Target};
use crate::delivery::tls::{Credentials, SmtpPolicy, TlsConfigs, TlsMode};
use crate::delivery::tls_rpt::{Reporter, TlsReports};
use crate::delivery::{ClientTimeouts, DeliverySettings};
use crate::dns::Resolver;
use crate::queue::RetrySchedule;
use crate::smtp::address::DomainPattern;

impl Checker<'_> {
    pub(super) fn delivery_settings(&mut self, raw: &RawConfig, hostname: String) -> DeliverySettings {
        let d = &raw.delivery;
        if d.retry_initial.0 > d.retry_max.0 {
            self.problems.push(Problem::at(
                self.source,
                None,
                "`delivery.retry_initial` is longer than `delivery.retry_max`",
            ));
        }
        let concurrency = self.at_least_one(d.concurrency, "delivery.concurrency");
        let mut names = HashSet::new();
        for name in raw.routes.iter().filter_map(|r| r.get_ref().name.as_ref()) {
            if !names.insert(name.get_ref().clone()) {
                self.problem(name, format!("duplicate route name {:?}", name.get_ref()));
            }
        }
        if *d.max_connections_per_destination.get_ref() == 0 {
            self.problem(&d.max_connections_per_destination, "must be at least 1");
        }
        let default_policy = Arc::new(self.policy(0, &raw.delivery, None));
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i + 1, &raw.delivery, r))
            .collect();
        let dns = self.dns(raw);
        let dane = self.dane(raw, &dns);
        let resolver = Resolver::new(dns);
        let mta_sts = self.mta_sts(raw);
        let tls_reports = mta_sts
            .as_ref()
            .map(|(_, fetcher)| self.tls_reports(raw, fetcher, &hostname));
        DeliverySettings {
            hostname,
            concurrency,
            retry: RetrySchedule {
                initial: d.retry_initial.0,
                max: d.retry_max.0,
                max_age: d.max_age.0,
            },
            timeouts: ClientTimeouts {
                connect: d.connect_timeout.0,
                command: d.command_timeout.0,
                data_init: d.data_init_timeout.0,
                data: d.data_timeout.0,
                data_done: d.data_done_timeout.0,
                idle: d.idle_timeout.0,
            },
            routes: RouteTable::new(routes, default_policy),
            resolver,
            remote_port: d.mx_port,
            delay_warning: Some(d.delay_warning.0).filter(|d| !d.is_zero()),
            quarantine_max_age: d.quarantine_max_age.0,
            mta_sts: mta_sts.map(|(mta_sts, _)| mta_sts),
            dane,
            chain: None,
            record: d
                .record
                .as_ref()
                .map(|dir| std::sync::Arc::from(self.resolve(dir.get_ref()).as_path())),
            tls_reports,
        }
    }

    /// DANE's validating resolver, when `[dns] dnssec` asks for it; a
    /// route with `tls = "dane"` needs it.
    fn dane(&mut self, raw: &RawConfig, dns: &crate::dns::DnsSettings) -> Option<Arc<Dane>> {
        if !raw.dns.dnssec {
            if let Some(anchor) = &raw.dns.trust_anchor {
                self.problem(anchor, "`dns.trust_anchor` needs `dns.dnssec = true`");
            }
            let dane_routes =
                raw.delivery.tls == TlsMode::Dane || raw.routes.iter().any(|r| r.get_ref().tls == Some(TlsMode::Dane));
            if dane_routes {
                self.problems.push(Problem::at(
                    self.source,
                    None,
                    "`tls = \"dane\"` needs DNSSEC validation: set `dns.dnssec = true`",
                ));
            }
            return None;
        }
        let anchor = raw.dns.trust_anchor.as_ref().map(|f| (f, self.resolve(f.get_ref())));
        match Dane::new(dns.clone(), anchor.as_ref().map(|(_, path)| path.as_path())) {
            Ok(dane) => Some(Arc::new(dane)),
            Err(e) => {
                match anchor {
                    Some((file, _)) => self.problem(file, e),
                    None => self.problems.push(Problem::at(self.source, None, e)),
                }
                None
            }
        }
    }

    /// MTA-STS policies, cached in `<spool_dir>/mta-sts`, and the HTTPS
    /// client that fetches them.
    fn mta_sts(&mut self, raw: &RawConfig) -> Option<(Arc<MtaSts>, Fetcher)> {
        let d = &raw.delivery;
        let ca_file = d.mta_sts_ca_file.as_ref().map(|f| self.resolve(f.get_ref()));
        match Fetcher::new(ca_file.as_deref(), d.mta_sts_port, d.mta_sts_timeout.0) {
            Ok(fetcher) => {
                let dir = self.resolve(raw.server.spool_dir.get_ref()).join("mta-sts");
                Some((Arc::new(MtaSts::new(dir, fetcher.clone())), fetcher))
            }
            Err(e) => {
                match &d.mta_sts_ca_file {
                    Some(file) => self.problem(file, e),
                    None => self.problems.push(Problem::at(self.source, None, e)),
                }
                None
            }
        }
    }

    /// TLS reporting: tallies in `<spool_dir>/tls-rpt`, reports posted
    /// with the MTA-STS client's certificates.
    fn tls_reports(&mut self, raw: &RawConfig, fetcher: &Fetcher, hostname: &str) -> Arc<TlsReports> {
        let d = &raw.delivery;
        let dir = self.resolve(raw.server.spool_dir.get_ref()).join("tls-rpt");
        let reporter = d.tls_reports.then(|| Reporter {
            hostname: hostname.to_owned(),
            contact: self.postmaster(raw, hostname).to_string(),
            tls: fetcher.tls(),
            timeout: d.mta_sts_timeout.0,
        });
        Arc::new(TlsReports::new(dir, d.tls_report_period.0.as_secs(), reporter))
    }

    /// The SMTP policy of route number `id` (0: the default), from the
    /// `[delivery]` settings and the route's overrides.
    fn policy(&mut self, id: usize, d: &raw::RawDelivery, route: Option<&RawRoute>) -> SmtpPolicy {
        let tls = route.and_then(|r| r.tls).unwrap_or(d.tls);
        let ca_file = route.and_then(|r| r.ca_file.as_ref()).or(d.ca_file.as_ref());
        let danger = route
            .and_then(|r| r.danger_accept_invalid_certs)
            .unwrap_or(d.danger_accept_invalid_certs);
        let key = (ca_file.map(|f| self.resolve(f.get_ref())), danger);
        let built = match self.tls_configs.get(&key) {
            Some(configs) => Ok(configs.clone()),
            None => TlsConfigs::new(key.0.as_deref(), danger),
        };
        let tls_config = match built {
            Ok(configs) => {
                self.tls_configs.entry(key).or_insert_with(|| configs.clone());
                Some(configs)
            }
            Err(e) => {
                match ca_file {
                    Some(file) => self.problem(file, e),
                    None => self.problems.push(Problem::at(self.source, None, e)),
                }
                None
            }
        };
        let max_connections = match route.and_then(|r| r.max_connections.as_ref()) {
            Some(n) if *n.get_ref() == 0 => {
                self.problem(n, "must be at least 1");
                1
            }
            Some(n) => *n.get_ref(),
            None => *d.max_connections_per_destination.get_ref(),
        };
        let auth = route.and_then(|r| self.credentials(r));
        if auth.is_some() && tls == TlsMode::Disabled {
            self.problems.push(Problem::at(
                self.source,
                None,
                format!(
                    "route[{}]: AUTH needs TLS; `tls = \"disabled\"` would never send the credentials",
                    id - 1
                ),
            ));
        }
        SmtpPolicy {
            id,
            tls,
            // With a problem recorded the configuration is refused anyway;
            // the fallback only keeps the conversion going.
            tls_config: tls_config.unwrap_or_else(TlsConfigs::encrypt_only),
            auth,
            max_connections,
        }
    }

    fn credentials(&mut self, route: &RawRoute) -> Option<Credentials> {
        let username = route.auth_username.as_ref();
        let password = match (&route.auth_password, &route.auth_password_file) {
            (Some(p), None) => Some(p.get_ref().clone()),
            (None, Some(file)) => match std::fs::read_to_string(self.resolve(file.get_ref())) {
                Ok(text) => Some(text.lines().next().unwrap_or("").to_owned()),
                Err(e) => {
                    self.problem(file, format!("cannot read the password file: {e}"));
                    None
                }
            },
            (Some(_), Some(file)) => {
                self.problem(file, "a route has `auth_password` or `auth_password_file`, not both");
                None
            }
            (None, None) => None,
        };
        match (username, password) {
            (Some(user), Some(password)) => Some(Credentials {
                username: user.get_ref().clone(),
                password,
            }),
            (Some(user), None) => {
                if route.auth_password_file.is_none() && route.auth_password.is_none() {
                    self.problem(user, "`auth_username` needs `auth_password` or `auth_password_file`");
                }
                None
            }
            (None, Some(_)) => {
                let at = route
                    .auth_password
                    .as_ref()
                    .map(Spanned::span)
                    .or(route.auth_password_file.as_ref().map(Spanned::span));
                self.problems
                    .push(Problem::at(self.source, at, "a password needs `auth_username`"));
                None
            }
            (None, None) => None,
        }
    }

    fn route(&mut self, id: usize, delivery: &raw::RawDelivery, spanned: &Spanned<RawRoute>) -> Option<Route> {
        let raw = spanned.get_ref();
        if raw.domains.is_empty() && raw.name.is_none() {
            self.problem(spanned, "a route needs a `name` or at least one pattern in `domains`");
        }
        let mut patterns = Vec::new();
        for pattern in &raw.domains {
            match DomainPattern::parse(pattern.get_ref()) {
                Ok(p) => patterns.push(p),
                Err(e) => self.problem(pattern, e),
            }
        }
        let mx = raw.mx.as_ref().filter(|mx| *mx.get_ref());
        let target = match (&raw.smarthost, &raw.maildir, mx) {
            (Some(host), None, None) => match Target::parse_smarthost(host.get_ref()) {
                Ok(target) => target,
                Err(e) => {
                    self.problem(host, e);
                    return None;
                }
            },
            (None, Some(dir), None) => Target::Maildir(self.resolve(dir.get_ref())),
            (None, None, Some(_)) => Target::Mx,
            (None, None, None) => {
                self.problem(spanned, "a route needs `smarthost`, `maildir` or `mx = true`");
                return None;
            }
            (_, maildir, mx) => {
                let reason = "a route has exactly one of `smarthost`, `maildir` and `mx = true`";
                match (maildir, mx) {
                    (_, Some(mx)) => self.problem(mx, reason),
                    (Some(dir), None) => self.problem(dir, reason),
                    (None, None) => self.problem(spanned, reason),
                }
                return None;
            }
        };
        let policy = Arc::new(self.policy(id, delivery, Some(raw)));
        Some(Route {
            name: raw.name.as_ref().map(|n| n.get_ref().clone()),
            patterns,
            target,
            policy,
        })
    }
}
