//! The configuration file as written: serde structs that mirror the TOML,
//! with defaults next to them. Unknown keys are errors. `config::load`
//! turns these into validated types once.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{HumanDuration, ListenAddress, Network};
use crate::delivery::tls::TlsMode;
use crate::queue::SpoolSync;
use crate::server::ListenerRole;
use crate::smtp::data::{BareLineEndings, LongLines};

mod plugin;

pub use plugin::{RawKind, RawPlugin, RawPlugins, RawStage};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[server]`
    pub server: RawServer,
    /// `[[listener]]`, at least one.
    #[serde(rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    /// `[smtp]`
    pub smtp: RawSmtp,
    /// `[relay]`
    pub relay: RawRelay,
    /// `[tls]`
    pub tls: RawTls,
    /// `[auth]`
    pub auth: RawAuth,
    /// `[delivery]`
    pub delivery: RawDelivery,
    /// `[dns]`
    pub dns: RawDns,
    /// `[kv]`
    pub kv: RawKv,
    /// `[dkim]`
    pub dkim: RawDkim,
    /// `[admin]`
    pub admin: RawAdmin,
    /// `[[route]]`, tried in order.
    #[serde(rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    /// `[plugins]`
    pub plugins: RawPlugins,
    /// `[[plugin]]`, in chain order.
    #[serde(rename = "plugin")]
    pub plugin: Vec<Spanned<RawPlugin>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// `hostname`: our name in the greeting, EHLO and trace headers; default the system host name.
    pub hostname: Option<String>,
    /// `spool_dir`: where accepted mail is kept until delivered; default `"/var/spool/mailgate"`.
    /// Relative paths are relative to the configuration file.
    pub spool_dir: Spanned<PathBuf>,
    /// `spool_sync`: how a commit is made durable before its 250:
    /// `"filesystem"` (one `syncfs` of the spool's filesystem covers every
    /// commit waiting at the time) or `"file"` (an `fdatasync` per message
    /// and a shared directory fsync); default `"filesystem"`.
    pub spool_sync: SpoolSync,
    /// `max_connections`: inbound connections open at once, over all listeners; default 1000.
    pub max_connections: usize,
    /// `max_connections_per_ip`: connections open at once from one client
    /// address (an IPv6 /64); default 50.
    pub max_connections_per_ip: usize,
    /// `connection_limit_exempt`: client networks `max_connections_per_ip`
    /// does not apply to (a load balancer, a big internal network); default
    /// the same as `relay.trusted_networks`.
    pub connection_limit_exempt: Option<Vec<Network>>,
    /// `postmaster`: where mail to `<Postmaster>` and
    /// `postmaster@<hostname>` goes (RFC 5321 section 4.5.1: always
    /// accepted); default `postmaster@<hostname>`.
    pub postmaster: Option<Spanned<String>>,
    /// `log_format`: `"text"` or `"json"`; default `"text"`.
    pub log_format: LogFormat,
    /// `shutdown_grace_period`: how long SIGTERM waits for work in flight; default `"30s"`.
    pub shutdown_grace_period: HumanDuration,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            hostname: None,
            spool_dir: Spanned::new(0..0, PathBuf::from("/var/spool/mailgate")),
            spool_sync: SpoolSync::default(),
            max_connections: 1000,
            max_connections_per_ip: 50,
            connection_limit_exempt: None,
            postmaster: None,
            log_format: LogFormat::Text,
            shutdown_grace_period: HumanDuration(std::time::Duration::from_secs(30)),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `name`: shown in logs and metrics; unique.
    pub name: String,
    /// `address`: `"ip:port"` to listen on.
    pub address: ListenAddress,
    /// `role`: `"relay"` (default), `"submission"` or `"submissions"`.
    pub role: Option<Spanned<ListenerRole>>,
    /// `tls_cert_file`: this listener's certificate chain (PEM), instead of `tls.cert_file`.
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    /// `tls_key_file`: its private key (PEM), instead of `tls.key_file`.
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// `proxy_protocol`: every connection starts with a PROXY header (v1
    /// or v2) naming the real client; default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// `record`: a directory to write one transcript per transaction into,
    /// for `mailgate plugin test`; off by default. Relative paths are
    /// relative to the configuration file.
    #[serde(default)]
    pub record: Option<PathBuf>,
}

/// `[tls]`: the certificate listeners use unless they name their own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// `cert_file`: certificate chain, PEM, leaf first.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// `key_file`: the private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<Spanned<PathBuf>>,
}

/// `[auth]`: SMTP AUTH for clients of the submission listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// `users_file`: `name:argon2-hash` lines, written by `mailgate user add`.
    pub users_file: Option<Spanned<PathBuf>>,
    /// `failure_delay`: the wait before answering a client's first failed
    /// AUTH; it doubles with each failure; default `"1s"`.
    pub failure_delay: HumanDuration,
    /// `max_failures`: failed AUTH per client address before it is
    /// disconnected and refused for `failure_window`; default 5.
    pub max_failures: Spanned<u32>,
    /// `failure_window`: how long failures are remembered; default `"15m"`.
    pub failure_window: HumanDuration,
    /// `user_message_limit`: messages one user may send per
    /// `user_message_window`; 0 for no limit; default 1000.
    pub user_message_limit: u32,
    /// `user_message_window`: default `"1h"`.
    pub user_message_window: HumanDuration,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            users_file: None,
            failure_delay: HumanDuration(std::time::Duration::from_secs(1)),
            max_failures: Spanned::new(0..0, 5),
            failure_window: minutes(15),
            user_message_limit: 1000,
            user_message_window: minutes(60),
        }
    }
}

/// `[smtp]`: inbound protocol limits and timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSmtp {
    /// `max_message_bytes`: largest message accepted; default 26214400 (25 MiB).
    pub max_message_bytes: u64,
    /// `max_recipients`: recipients per message before 452 4.5.3; default 1000, at least 100.
    pub max_recipients: Spanned<usize>,
    /// `bare_line_endings`: `"normalize"` (default) or `"reject"`.
    pub bare_line_endings: BareLineEndings,
    /// `long_lines`: `"reject"` (default) or `"fold"` for lines over 998 octets in DATA.
    pub long_lines: LongLines,
    /// `command_timeout`: wait for the next command; default `"5m"` (RFC 5321 section 4.5.3.2.7).
    pub command_timeout: HumanDuration,
    /// `data_timeout`: wait for the next chunk of DATA; default `"5m"`.
    pub data_timeout: HumanDuration,
    /// `max_errors`: error replies a client may get before 421 4.7.0 and
    /// close; counted from the last queued message; default 20.
    pub max_errors: u32,
    /// `max_idle_commands`: commands other than MAIL, RCPT and DATA (NOOP,
    /// RSET, EHLO...) before 421 4.7.0 and close; counted from the last
    /// queued message; default 100.
    pub max_idle_commands: u32,
    /// `max_hops`: the most `Received:` header fields a message may carry
    /// when it arrives; more is refused with 554 5.4.6 as a mail loop
    /// (RFC 5321 section 6.3); default 100, at least 10.
    pub max_hops: Spanned<usize>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        Self {
            max_message_bytes: 25 * 1024 * 1024,
            max_recipients: Spanned::new(0..0, 1000),
            bare_line_endings: BareLineEndings::Normalize,
            long_lines: LongLines::Reject,
            command_timeout: minutes(5),
            data_timeout: minutes(5),
            max_errors: 20,
            max_idle_commands: 100,
            max_hops: Spanned::new(0..0, 100),
        }
    }
}

/// `[relay]`: who may send where.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRelay {
    /// `accepted_domains`: domains anyone may send to (`"example.com"`,
    /// `"*.example.com"` for subdomains); default none.
    pub accepted_domains: Vec<Spanned<String>>,
    /// `trusted_networks`: clients that may relay anywhere; default loopback only.
    pub trusted_networks: Vec<Network>,
}

impl Default for RawRelay {
    fn default() -> Self {
        Self {
            accepted_domains: Vec::new(),
            trusted_networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .map(Network)
                .collect(),
        }
    }
}

/// `[delivery]`: the outbound side.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDelivery {
    /// `concurrency`: deliveries in flight at once; default 100.
    pub concurrency: usize,
    /// `retry_initial`: wait before the first retry; default `"5m"`.
    pub retry_initial: HumanDuration,
    /// `retry_max`: longest wait between retries; default `"1h"`.
    pub retry_max: HumanDuration,
    /// `max_age`: give up and bounce after this long in the queue; default `"5d"`.
    pub max_age: HumanDuration,
    /// `connect_timeout`: default `"30s"`.
    pub connect_timeout: HumanDuration,
    /// `command_timeout`: greeting, EHLO, MAIL, RCPT replies; default `"5m"`.
    pub command_timeout: HumanDuration,
    /// `data_init_timeout`: the 354 reply to DATA; default `"2m"`.
    pub data_init_timeout: HumanDuration,
    /// `data_timeout`: each block of content written; default `"3m"`.
    pub data_timeout: HumanDuration,
    /// `data_done_timeout`: the reply after the final dot; default `"10m"`.
    pub data_done_timeout: HumanDuration,
    /// `idle_timeout`: how long a connection waits for another message to
    /// the same host; default `"30s"`, `"0s"` turns reuse off.
    pub idle_timeout: HumanDuration,
    /// `delay_warning`: send the sender a delay DSN once, when a message
    /// has been queued this long; default `"4h"`, `"0s"` turns it off.
    pub delay_warning: HumanDuration,
    /// `quarantine_max_age`: quarantined messages older than this are
    /// deleted; default `"30d"`.
    pub quarantine_max_age: HumanDuration,
    /// `max_connections_per_destination`: transactions in flight to one
    /// smarthost or MX domain at once; default 20.
    pub max_connections_per_destination: Spanned<usize>,
    /// `mx_port`: the port MX hosts are contacted on; default 25 (change
    /// it only to test against servers on loopback).
    pub mx_port: u16,
    /// `tls`: `"auto"` (default: MTA-STS for MX delivery where published,
    /// else opportunistic), `"mta-sts"`, `"opportunistic"`, `"require"` or
    /// `"disabled"`.
    pub tls: TlsMode,
    /// `ca_file`: PEM certificates to verify servers against instead of
    /// the system's roots.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `danger_accept_invalid_certs`: with `tls = "require"`, encrypt but
    /// accept any certificate; default false.
    pub danger_accept_invalid_certs: bool,
    /// `mta_sts_ca_file`: PEM certificates trusted for MTA-STS policy
    /// fetches besides the system's roots.
    pub mta_sts_ca_file: Option<Spanned<PathBuf>>,
    /// `mta_sts_timeout`: the longest a policy fetch may take; default
    /// `"60s"`.
    pub mta_sts_timeout: HumanDuration,
    /// `mta_sts_port`: the HTTPS port policies are fetched from; default
    /// 443 (change it only to test against servers on loopback).
    pub mta_sts_port: u16,
    /// `tls_reports`: send TLS reports (RFC 8460) to the domains that ask
    /// for them; default true.
    pub tls_reports: bool,
    /// `tls_report_period`: the period a report covers; default `"1d"`
    /// (UTC days; shorter only to test).
    pub tls_report_period: HumanDuration,
    /// `record`: a directory where each outbound plugin call is written
    /// as a transcript, for `mailgate plugin test`.
    pub record: Option<Spanned<PathBuf>>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            concurrency: 100,
            retry_initial: minutes(5),
            retry_max: minutes(60),
            max_age: minutes(5 * 24 * 60),
            connect_timeout: HumanDuration(std::time::Duration::from_secs(30)),
            command_timeout: minutes(5),
            data_init_timeout: minutes(2),
            data_timeout: minutes(3),
            data_done_timeout: minutes(10),
            idle_timeout: HumanDuration(std::time::Duration::from_secs(30)),
            delay_warning: minutes(4 * 60),
            quarantine_max_age: minutes(30 * 24 * 60),
            max_connections_per_destination: Spanned::new(0..0, 20),
            mx_port: 25,
            tls: TlsMode::Auto,
            ca_file: None,
            danger_accept_invalid_certs: false,
            mta_sts_ca_file: None,
            mta_sts_timeout: HumanDuration(std::time::Duration::from_secs(60)),
            mta_sts_port: 443,
            tls_reports: true,
            tls_report_period: minutes(24 * 60),
            record: None,
        }
    }
}

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// `address`: `"ip:port"` for the admin API: metrics and health
    /// checks, and the control endpoints unless `control_address` is set;
    /// none by default.
    pub address: Option<Spanned<ListenAddress>>,
    /// `control_address`: `"ip:port"` for the control endpoints (queue,
    /// quarantine, reload) apart from metrics; default on `address`.
    pub control_address: Option<Spanned<ListenAddress>>,
    /// `tokens_file`: `name:sha256` lines of the bearer tokens the control
    /// endpoints require (`mailgate admin token add`); none by default,
    /// which is allowed only on loopback.
    pub tokens_file: Option<Spanned<PathBuf>>,
    /// `protect_metrics`: `/metrics` needs a token too; default false.
    pub protect_metrics: bool,
    /// `client_token_file`: where the CLI (`mailgate queue`, `reload`,
    /// `quarantine`) reads its token; `MAILGATE_ADMIN_TOKEN` wins.
    pub client_token_file: Option<PathBuf>,
    /// `tls_cert_file`: the admin listeners' certificate chain (PEM): they
    /// speak HTTPS; none by default (plain HTTP).
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    /// `tls_key_file`: its private key (PEM).
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// `client_ca_file`: CA certificates (PEM); a client certificate they
    /// sign authenticates a control request, like a token. Needs
    /// `tls_cert_file`.
    pub client_ca_file: Option<Spanned<PathBuf>>,
    /// `client_cert_file`: the certificate the CLI presents (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// `client_key_file`: its private key (PEM).
    pub client_key_file: Option<PathBuf>,
    /// `server_ca_file`: the CA the CLI verifies the admin listener's
    /// certificate against (PEM); default the system's roots.
    pub server_ca_file: Option<PathBuf>,
}

/// `[dns]`: the resolver used for MX and host lookups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// `nameservers`: `"ip"` or `"ip:port"` (`"[v6]:port"`); default the
    /// system's (`/etc/resolv.conf`).
    pub nameservers: Option<Vec<Spanned<String>>>,
    /// `timeout`: per query; default `"5s"`.
    pub timeout: HumanDuration,
    /// `attempts`: tries per query; default 2.
    pub attempts: usize,
    /// `dnssec`: validate DNSSEC for DANE (MX, address and TLSA lookups
    /// of delivery over MX); default false.
    pub dnssec: bool,
    /// `trust_anchor`: DNSKEY records (zone-file form) to validate from;
    /// default the root zone's anchors.
    pub trust_anchor: Option<Spanned<PathBuf>>,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            nameservers: None,
            timeout: HumanDuration(std::time::Duration::from_secs(5)),
            attempts: 2,
            dnssec: false,
            trust_anchor: None,
        }
    }
}

/// `[kv]`: the store behind the plugins' `kv` capability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKv {
    /// `backend`: `"embedded"` (one file on local disk) or `"redis"`
    /// (shared by several gateways); default `"embedded"`.
    pub backend: Spanned<KvBackend>,
    /// `path`: the embedded store's file; default `kv.redb` in `spool_dir`.
    /// Relative paths are relative to the configuration file.
    pub path: Option<Spanned<PathBuf>>,
    /// `url`: the Redis server, `"redis://host:port/db"`; required with
    /// `backend = "redis"`.
    pub url: Option<Spanned<String>>,
    /// `key_prefix`: put before every Redis key; default `"mailgate:"`.
    pub key_prefix: String,
    /// `timeout`: how long one Redis operation may take; default `"1s"`.
    pub timeout: HumanDuration,
}

/// `[dkim]`: keys and names for the plugins' `dkim` capability.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDkim {
    /// `authserv_id`: the name in Authentication-Results; default
    /// `server.hostname`.
    pub authserv_id: Option<Spanned<String>>,
    /// `[[dkim.key]]`: signing keys.
    #[serde(rename = "key")]
    pub keys: Vec<Spanned<RawDkimKey>>,
}

/// `[[dkim.key]]`: one signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkimKey {
    /// `domain`: the signing domain (d=).
    pub domain: String,
    /// `selector`: the selector (s=); the public key is published at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// `private_key`: PEM file, RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8),
    /// as `mailgate dkim keygen` writes it. Relative paths are relative to
    /// the configuration file.
    pub private_key: PathBuf,
}

/// `kv.backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvBackend {
    /// redb, in one file.
    #[default]
    Embedded,
    /// A Redis server.
    Redis,
}

impl Default for RawKv {
    fn default() -> Self {
        Self {
            backend: Spanned::new(0..0, KvBackend::Embedded),
            path: None,
            url: None,
            key_prefix: "mailgate:".to_owned(),
            timeout: HumanDuration(std::time::Duration::from_secs(1)),
        }
    }
}

/// `[[route]]`: where mail for some domains goes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `name`: optional and unique; plugins route to a route by its name.
    pub name: Option<Spanned<String>>,
    /// `domains`: patterns: `"example.com"`, `"*.example.com"`, or `"*"` for
    /// everything. May be empty for a route used only by name.
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    /// `smarthost`: `"host:port"` (port 25 if left out) to relay to over SMTP.
    pub smarthost: Option<Spanned<String>>,
    /// `maildir`: a directory to drop messages into, one file per recipient.
    pub maildir: Option<Spanned<PathBuf>>,
    /// `mx = true`: relay to the recipient domain's MX hosts.
    pub mx: Option<Spanned<bool>>,
    /// `tls`: overrides `delivery.tls` for this route.
    pub tls: Option<TlsMode>,
    /// `ca_file`: overrides `delivery.ca_file`.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// `danger_accept_invalid_certs`: overrides the `[delivery]` setting.
    pub danger_accept_invalid_certs: Option<bool>,
    /// `max_connections`: overrides `delivery.max_connections_per_destination`.
    pub max_connections: Option<Spanned<usize>>,
    /// `auth_username`: AUTH to the smarthost as this user (needs TLS).
    pub auth_username: Option<Spanned<String>>,
    /// `auth_password`: its password.
    pub auth_password: Option<Spanned<String>>,
    /// `auth_password_file`: a file whose first line is the password
    /// (instead of `auth_password`).
    pub auth_password_file: Option<Spanned<PathBuf>>,
}

fn minutes(n: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(n * 60))
}
