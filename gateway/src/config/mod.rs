//! The configuration: one TOML file, read into raw serde structs and
//! converted once into validated types (parse, don't validate). Every error
//! names the file, line, column and key; semantic errors are all reported in
//! one pass. Relative paths are taken relative to the configuration file.

mod admin;
mod delivery;
mod error;
mod inbound;
mod plugins;
mod raw;
mod units;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

pub use error::{ConfigError, Problem};
pub use raw::LogFormat;
use raw::{KvBackend, RawConfig};

use crate::delivery::DeliverySettings;
use crate::delivery::tls::TlsConfigs;
use crate::dkim::{DkimKey, DkimSettings, MailAuth};
use crate::dns::DnsSettings;
use crate::kv::{Kv, KvSettings};
use crate::plugin::{
    Chain, Fault, HostServices, HttpClient, PluginConfig, PluginError, Runtime, RuntimeSettings, SystemClock,
};
use crate::server::tls::ServerTls;
use crate::server::{ListenerConfig, ServerSettings};

/// What loading a configuration may take over from the one serving.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reuse<'a> {
    /// The plugin engine, kept when `[plugins]` is unchanged.
    pub runtime: Option<&'a Arc<Runtime>>,
    /// The key-value store, kept when `[kv]` is unchanged.
    pub kv: Option<&'a Arc<Kv>>,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Our host name.
    pub hostname: String,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// How spool commits are made durable.
    pub spool_sync: crate::queue::SpoolSync,
    /// Log output format.
    pub log_format: LogFormat,
    /// How long shutdown waits for work in flight.
    pub shutdown_grace_period: Duration,
    /// Addresses to listen on.
    pub listeners: Vec<ListenerConfig>,
    /// Inbound settings.
    pub server: ServerSettings,
    /// Outbound settings.
    pub delivery: DeliverySettings,
    /// The plugin chain as configured, in order.
    pub plugins: Vec<PluginConfig>,
    /// Engine-wide plugin settings.
    pub plugin_runtime: RuntimeSettings,
    /// Where the admin API listens, if anywhere.
    pub admin: Option<std::net::SocketAddr>,
    /// Where its control endpoints listen, when apart from `admin`.
    pub admin_control: Option<std::net::SocketAddr>,
    /// Who may use the control endpoints, and what the CLI sends.
    pub admin_auth: crate::admin::AdminAuth,
    /// The plugins' key-value store (opened on first use).
    pub kv: Arc<Kv>,
    /// DKIM keys and the authserv-id, for the `dkim` capability.
    pub dkim: Arc<DkimSettings>,
    /// The roots plugins' HTTPS requests trust (`[plugins] http_ca_file`).
    pub plugin_http_tls: Arc<rustls::ClientConfig>,
}

impl Config {
    /// Reads and validates the file at `path`, then compiles and starts the
    /// plugins (each one's `init` runs once with its settings), so that a
    /// broken plugin stops start-up with the file, line and key.
    pub async fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_reusing(path, Reuse::default()).await
    }

    /// Like `load`, but plugins are compiled with `runtime` (the running
    /// gateway's engine) when the engine-wide settings did not change: a
    /// reload then shares the instance pool instead of reserving another.
    pub async fn load_reusing(path: &Path, reuse: Reuse<'_>) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (mut config, spans) = Self::parse(path, &source)?;
        // The store stays open across reloads (its settings need a
        // restart): a second handle on the same file could not open it.
        if let Some(kv) = reuse.kv.filter(|kv| kv.settings() == config.kv.settings()) {
            config.kv = Arc::clone(kv);
        }
        if !config.plugins.is_empty() {
            // A plugin refusing its settings is located at its settings
            // table, anything else at its path.
            let located = |index: usize, error: PluginError| {
                let settings = spans.settings.get(index).cloned().flatten();
                let span = match (&error, settings) {
                    (
                        PluginError::Start {
                            fault: Fault::Init(_), ..
                        },
                        Some(span),
                    ) => Some(span),
                    _ => spans.plugins.get(index).cloned(),
                };
                Problem::at(&source, span, error.to_string())
            };
            let runtime = match reuse.runtime.filter(|r| r.settings == config.plugin_runtime) {
                Some(runtime) => Arc::clone(runtime),
                None => Runtime::new(&config.plugin_runtime).map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    problems: vec![Problem::at(
                        &source,
                        spans.cache_dir.clone(),
                        format!(
                            "`plugins.cache_dir` ({}; by default `plugin-cache` in `server.spool_dir`): {e}",
                            config.plugin_runtime.cache_dir.display()
                        ),
                    )],
                })?,
            };
            let routes = config.delivery.routes.names().map(str::to_owned).collect();
            let host = HostServices {
                dns: Arc::new(config.delivery.resolver.clone()),
                kv: config.kv.clone(),
                clock: Arc::new(SystemClock),
                dkim: Arc::new(MailAuth::new(config.delivery.resolver.clone(), config.dkim.clone())),
                http: Arc::new(HttpClient::new(
                    config.delivery.resolver.clone(),
                    Arc::clone(&config.plugin_http_tls),
                )),
                http_policy: Arc::default(),
            };
            let chain = Chain::load(runtime, host, config.plugins.clone(), routes)
                .await
                .map_err(|errors| ConfigError::Invalid {
                    path: path.to_owned(),
                    problems: errors.into_iter().map(|(i, e)| located(i, e)).collect(),
                })?;
            if config.plugins.iter().any(|p| !p.outbound.is_empty()) {
                config.delivery.chain = Some(Arc::clone(&chain));
            }
            config.server.chain = Some(chain);
        }
        Ok(config)
    }

    /// Validates `source` as if read from `path`, without loading plugins.
    pub fn from_source(path: &Path, source: &str) -> Result<Self, ConfigError> {
        Self::parse(path, source).map(|(config, _)| config)
    }

    /// Parses and validates; also returns where the keys that loading
    /// plugins depends on are written, to locate its errors.
    fn parse(path: &Path, source: &str) -> Result<(Self, PluginSpans), ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawConfig =
            toml::from_str(source).map_err(|e| invalid(vec![Problem::at(source, e.span(), e.message())]))?;
        let mut check = Checker {
            source,
            base: base_dir(path),
            problems: Vec::new(),
            tls_configs: HashMap::new(),
            server_tls: HashMap::new(),
        };
        let written = |span: Range<usize>| (span.end > 0).then_some(span);
        let spans = PluginSpans {
            plugins: raw
                .plugin
                .iter()
                .map(|p| p.get_ref().path.as_ref().map_or_else(|| p.span(), Spanned::span))
                .collect(),
            settings: raw
                .plugin
                .iter()
                .map(|p| written(p.get_ref().settings.span()))
                .collect(),
            cache_dir: raw
                .plugins
                .cache_dir
                .as_ref()
                .map(Spanned::span)
                .or_else(|| written(raw.server.spool_dir.span())),
        };
        let config = check.convert(path, raw);
        if check.problems.is_empty() {
            Ok((config, spans))
        } else {
            check.problems.sort_by_key(|p| (p.line, p.column));
            Err(invalid(check.problems))
        }
    }
}

/// Where the keys that loading plugins depends on are written.
struct PluginSpans {
    /// Each `[[plugin]]`'s `path` (or the entry, when it has none).
    plugins: Vec<Range<usize>>,
    /// Each `[[plugin]]`'s `settings` table, when written.
    settings: Vec<Option<Range<usize>>>,
    /// `plugins.cache_dir`, else `server.spool_dir`, when written.
    cache_dir: Option<Range<usize>>,
}

/// Collects problems while converting, so all are reported at once.
struct Checker<'a> {
    source: &'a str,
    base: PathBuf,
    problems: Vec<Problem>,
    /// Client TLS configurations by CA file and `danger_` setting: built
    /// once each (reading the system's roots is not free), shared by the
    /// routes that agree.
    tls_configs: HashMap<(Option<PathBuf>, bool), TlsConfigs>,
    /// Server certificates by certificate and key file: listeners that
    /// share files share one loaded certificate.
    server_tls: HashMap<(PathBuf, PathBuf), Arc<ServerTls>>,
}

impl Checker<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, reason: impl Into<String>) {
        let span = at.span();
        let span = (span.end > 0).then_some(span);
        self.problems.push(Problem::at(self.source, span, reason));
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        }
    }

    fn convert(&mut self, path: &Path, raw: RawConfig) -> Config {
        let hostname = raw.server.hostname.clone().unwrap_or_else(system_hostname);
        if hostname.is_empty() || hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problems.push(Problem::at(
                self.source,
                None,
                format!("`server.hostname`: invalid host name {hostname:?}"),
            ));
        }
        let listeners = self.listeners(&raw);
        let server = self.server_settings(&raw, hostname.clone());
        let delivery = self.delivery_settings(&raw, hostname.clone());
        let spool_dir = self.resolve(raw.server.spool_dir.get_ref());
        let plugins = self.plugins(&raw, &hostname);
        let cache_dir = raw
            .plugins
            .cache_dir
            .as_ref()
            .map_or_else(|| spool_dir.join("plugin-cache"), |dir| self.resolve(dir.get_ref()));
        if raw.plugins.max_instances == 0 {
            self.problems.push(Problem::at(
                self.source,
                None,
                "`plugins.max_instances` must be at least 1",
            ));
        }
        let kv = Kv::new(self.kv(&raw, &spool_dir));
        let dkim = Arc::new(self.dkim(&raw, &hostname));
        let plugin_runtime = RuntimeSettings {
            cache_dir,
            max_instances: raw.plugins.max_instances,
            max_memory_bytes: plugins.iter().map(|p| p.memory_limit).max().unwrap_or(0),
        };
        Config {
            path: path.to_owned(),
            hostname,
            spool_dir,
            spool_sync: raw.server.spool_sync,
            log_format: raw.server.log_format,
            shutdown_grace_period: raw.server.shutdown_grace_period.0,
            listeners,
            server,
            delivery,
            plugins,
            plugin_runtime,
            admin: raw.admin.address.as_ref().map(|a| a.get_ref().0),
            admin_control: raw.admin.control_address.as_ref().map(|a| a.get_ref().0),
            admin_auth: self.admin_auth(&raw),
            kv,
            dkim,
            plugin_http_tls: self.plugin_http_tls(&raw),
        }
    }

    fn dkim(&mut self, raw: &RawConfig, hostname: &str) -> DkimSettings {
        let authserv_id = match &raw.dkim.authserv_id {
            Some(id) => {
                let value = id.get_ref();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                    self.problem(id, format!("`dkim.authserv_id`: {value:?} is not a host name"));
                }
                value.clone()
            }
            None => hostname.to_owned(),
        };
        let mut keys = Vec::new();
        for spanned in &raw.dkim.keys {
            let key = spanned.get_ref();
            let domain_ok = !key.domain.is_empty()
                && key
                    .domain
                    .split('.')
                    .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            let selector_ok = !key.selector.is_empty()
                && key
                    .selector
                    .split('.')
                    .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !domain_ok {
                self.problem(
                    spanned,
                    format!("`dkim.key.domain`: {:?} is not a domain name", key.domain),
                );
            } else if !selector_ok {
                self.problem(
                    spanned,
                    format!("`dkim.key.selector`: {:?} is not a selector", key.selector),
                );
            } else {
                match DkimKey::load(&key.domain, &key.selector, &self.resolve(&key.private_key)) {
                    Ok(loaded) => keys.push(loaded),
                    Err(e) => self.problem(spanned, format!("`dkim.key.private_key`: {e}")),
                }
            }
        }
        DkimSettings { authserv_id, keys }
    }

    fn kv(&mut self, raw: &RawConfig, spool_dir: &Path) -> KvSettings {
        let kv = &raw.kv;
        match kv.backend.get_ref() {
            KvBackend::Embedded => {
                if let Some(url) = &kv.url {
                    self.problem(url, "`url` is for `backend = \"redis\"`");
                }
                KvSettings::Embedded {
                    path: kv
                        .path
                        .as_ref()
                        .map_or_else(|| spool_dir.join("kv.redb"), |p| self.resolve(p.get_ref())),
                }
            }
            KvBackend::Redis => {
                if let Some(path) = &kv.path {
                    self.problem(path, "`path` is for `backend = \"embedded\"`");
                }
                let url = match &kv.url {
                    Some(url) => {
                        if let Err(e) = crate::kv::check_redis_url(url.get_ref()) {
                            self.problem(url, format!("not a Redis URL: {e}"));
                        }
                        url.get_ref().clone()
                    }
                    None => {
                        self.problem(&kv.backend, "`backend = \"redis\"` needs `url`");
                        String::new()
                    }
                };
                KvSettings::Redis {
                    url,
                    key_prefix: kv.key_prefix.clone(),
                    timeout: kv.timeout.0.max(Duration::from_millis(1)),
                }
            }
        }
    }

    fn dns(&mut self, raw: &RawConfig) -> DnsSettings {
        let nameservers = raw.dns.nameservers.as_ref().map(|servers| {
            if servers.is_empty() {
                self.problems.push(Problem::at(
                    self.source,
                    None,
                    "`dns.nameservers` is empty; leave it out to use the system's",
                ));
            }
            servers
                .iter()
                .filter_map(|server| match parse_nameserver(server.get_ref()) {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        self.problem(server, e);
                        None
                    }
                })
                .collect()
        });
        if raw.dns.attempts == 0 {
            self.problems
                .push(Problem::at(self.source, None, "`dns.attempts` must be at least 1"));
        }
        DnsSettings {
            nameservers,
            timeout: raw.dns.timeout.0,
            attempts: raw.dns.attempts.max(1),
        }
    }
}

/// The users file a configuration names (`[auth] users_file`), resolved
/// against the file's directory, without validating the rest: `mailgate
/// user add` must work before the users file exists.
pub fn users_file(path: &Path) -> Result<PathBuf, ConfigError> {
    named_file(path, "auth.users_file", |raw| raw.auth.users_file)
}

/// The tokens file a configuration names (`[admin] tokens_file`), the
/// same way: `mailgate admin token add` creates it.
pub fn tokens_file(path: &Path) -> Result<PathBuf, ConfigError> {
    named_file(path, "admin.tokens_file", |raw| raw.admin.tokens_file)
}

/// The spool directory a configuration names (`[server] spool_dir`),
/// without loading the rest of it.
pub fn spool_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    named_file(path, "server.spool_dir", |raw| Some(raw.server.spool_dir))
}

fn named_file(
    path: &Path,
    key: &str,
    pick: impl FnOnce(RawConfig) -> Option<Spanned<PathBuf>>,
) -> Result<PathBuf, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problem| ConfigError::Invalid {
        path: path.to_owned(),
        problems: vec![problem],
    };
    let raw: RawConfig = toml::from_str(&source).map_err(|e| invalid(Problem::at(&source, e.span(), e.message())))?;
    let file = pick(raw).ok_or_else(|| invalid(Problem::at(&source, None, format!("`{key}` is not set"))))?;
    Ok(base_dir(path).join(file.get_ref()))
}

/// The directory relative paths in the configuration at `path` are
/// resolved against. Absolute, so that paths stay right whatever the
/// working directory later is (and wasmtime's cache insists on it).
fn base_dir(path: &Path) -> PathBuf {
    // A bare file name's parent is the empty path: the working directory.
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned())
}

/// Parses `ip`, `ip:port` or `[v6]:port` (port 53 by default).
fn parse_nameserver(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    text.parse()
        .map_err(|_| format!("invalid name server {text:?}: expected \"ip\" or \"ip:port\""))
}

/// The system host name, or `localhost` if it cannot be read.
fn system_hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() { "localhost".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> String {
        match Config::from_source(Path::new("test.toml"), source) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n";

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = Config::from_source(Path::new("/etc/mailgate/m.toml"), MINIMAL).unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.server.session.max_recipients, 1000);
        assert_eq!(config.server.session.data.max_bytes, 25 * 1024 * 1024);
        assert_eq!(config.delivery.retry.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(config.spool_dir, PathBuf::from("/var/spool/mailgate"));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let source = format!("{MINIMAL}[smtp]\nmax_mesage_bytes = 10\n");
        let text = problems(&source);
        assert!(
            text.starts_with("test.toml:5:1: `smtp.max_mesage_bytes`: unknown field `max_mesage_bytes`"),
            "{text}"
        );
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let source = format!("{MINIMAL}[delivery]\nretry_initial = \"5 minutes\"\n");
        let text = problems(&source);
        assert!(
            text.starts_with("test.toml:5:17: `delivery.retry_initial`: invalid duration"),
            "{text}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let source = format!(
            "{MINIMAL}[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2526\"\n[smtp]\nmax_recipients = 10\n[[route]]\ndomains = [\"*\"]\nsmarthost = \"host:notaport\"\n[[route]]\ndomains = [\"bad domain\"]\nmaildir = \"m\"\n"
        );
        let text = problems(&source);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("test.toml:4:1: `listener[1]`: duplicate listener name"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("test.toml:8:18: `smtp.max_recipients`: must be at least 100"),
            "{text}"
        );
        assert!(lines[2].starts_with("test.toml:11:13: `route[0].smarthost`:"), "{text}");
        assert!(
            lines[3].starts_with("test.toml:13:12: `route[1].domains[0]`:"),
            "{text}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let source =
            format!("{MINIMAL}[server]\nspool_dir = \"spool\"\n[[route]]\ndomains = [\"*\"]\nmaildir = \"maildir\"\n");
        let config = Config::from_source(Path::new("/srv/mg/mailgate.toml"), &source).unwrap();
        assert_eq!(config.spool_dir, PathBuf::from("/srv/mg/spool"));
    }

    #[test]
    fn toml_syntax_error_is_located() {
        let text = problems("[[listener]\nname = 1\n");
        assert!(text.starts_with("test.toml:1:"), "{text}");
    }
}
