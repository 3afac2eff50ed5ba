//! The `[[plugin]]` entries: wasm components, milters and MTA Hooks
//! scanners, their stages,
//! listeners, settings, limits and pinned digests.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawKind, RawPlugin, RawStage};
use super::{Checker, Problem};
use crate::delivery::tls::TlsConfigs;
use crate::milter::{MilterAddress, MilterSettings};
use crate::mta_hooks::ScannerSettings;
use crate::plugin::{Capability, EntryKind, HttpPolicy, OutboundStage, PluginConfig};
use crate::smtp::session::Stage;

impl Checker<'_> {
    fn entry_kind(&mut self, at: &Spanned<RawPlugin>, p: &RawPlugin, hostname: &str) -> EntryKind {
        let wasm_only = [
            ("path", p.path.is_some()),
            ("capabilities", !p.capabilities.is_empty()),
            ("settings", !p.settings.get_ref().is_empty()),
            ("sha256", p.sha256.is_some()),
        ];
        let milter_only = [
            ("address", p.address.is_some()),
            ("connect_timeout", p.connect_timeout.is_some()),
        ];
        let scanner_only = [("url", p.url.is_some()), ("token_file", p.token_file.is_some())];
        let kind = *p.kind.get_ref();
        if kind != RawKind::Milter {
            for (key, _) in milter_only.iter().filter(|(_, set)| *set) {
                self.problem(at, format!("`{key}` is for `kind = \"milter\"` entries"));
            }
        }
        if kind != RawKind::MtaHooks {
            for (key, _) in scanner_only.iter().filter(|(_, set)| *set) {
                self.problem(at, format!("`{key}` is for `kind = \"mta-hooks\"` entries"));
            }
        }
        match kind {
            RawKind::Wasm => {
                if p.timeout.is_some() {
                    self.problem(
                        at,
                        "`timeout` is for milters and MTA Hooks scanners; a wasm plugin has `time_budget`",
                    );
                }
                if p.path.is_none() {
                    self.problem(at, "a wasm plugin needs `path`");
                }
                EntryKind::Wasm
            }
            RawKind::Milter => {
                for (key, _) in wasm_only.iter().filter(|(_, set)| *set) {
                    self.problem(at, format!("`{key}` is for wasm plugins, not milters"));
                }
                let address = match &p.address {
                    Some(address) => match MilterAddress::parse(address.get_ref()) {
                        Ok(parsed) => parsed,
                        Err(e) => {
                            self.problem(address, e);
                            MilterAddress::Unix(PathBuf::new())
                        }
                    },
                    None => {
                        self.problem(
                            &p.kind,
                            "a milter needs `address` (\"inet:HOST:PORT\" or \"unix:/PATH\")",
                        );
                        MilterAddress::Unix(PathBuf::new())
                    }
                };
                EntryKind::Milter(Arc::new(MilterSettings {
                    address,
                    connect_timeout: p
                        .connect_timeout
                        .map_or(Duration::from_secs(5), |d| d.0.max(Duration::from_millis(1))),
                    timeout: p
                        .timeout
                        .map_or(Duration::from_secs(30), |d| d.0.max(Duration::from_millis(1))),
                    hostname: hostname.to_owned(),
                }))
            }
            RawKind::MtaHooks => {
                for (key, _) in wasm_only.iter().filter(|(_, set)| *set) {
                    self.problem(at, format!("`{key}` is for wasm plugins, not MTA Hooks scanners"));
                }
                self.scanner(&p.kind, p)
            }
        }
    }

    /// An `mta-hooks` entry's settings: its origin and its token.
    fn scanner(&mut self, kind: &Spanned<RawKind>, p: &RawPlugin) -> EntryKind {
        let origin = match &p.url {
            Some(url) => ScannerSettings::origin_of(url.get_ref()).unwrap_or_else(|e| {
                self.problem(url, e);
                String::new()
            }),
            None => {
                self.problem(
                    kind,
                    "an MTA Hooks scanner needs `url` (its base URL, http:// or https://)",
                );
                String::new()
            }
        };
        let token = p.token_file.as_ref().and_then(|file| {
            let path = self.resolve(file.get_ref());
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() && !text.trim().contains(char::is_control) => {
                    Some(text.trim().to_owned())
                }
                Ok(_) => {
                    let written = file.get_ref().display();
                    self.problem(
                        file,
                        format!("{written} holds no token (one line, no control characters)"),
                    );
                    None
                }
                Err(e) => {
                    self.problem(file, format!("cannot read {}: {e}", file.get_ref().display()));
                    None
                }
            }
        });
        EntryKind::MtaHooks(Arc::new(ScannerSettings {
            origin,
            token,
            timeout: p
                .timeout
                .map_or(Duration::from_secs(10), |d| d.0.max(Duration::from_millis(1))),
        }))
    }

    pub(super) fn plugins(&mut self, raw: &RawConfig, hostname: &str) -> Vec<PluginConfig> {
        let mut names = HashSet::new();
        raw.plugin
            .iter()
            .map(|spanned| {
                let p: &RawPlugin = spanned.get_ref();
                if !names.insert(p.name.get_ref().clone()) {
                    self.problem(&p.name, format!("duplicate plugin name {:?}", p.name.get_ref()));
                }
                if !valid_plugin_name(p.name.get_ref()) {
                    self.problem(
                        &p.name,
                        "a plugin name is 1 to 64 letters, digits, `-`, `_` or `.` (it names the plugin's logs, metrics and key-value namespace)",
                    );
                }
                let kind = self.entry_kind(spanned, p, hostname);
                let stages = match (&kind, &p.stages) {
                    (EntryKind::Wasm | EntryKind::MtaHooks(_), Some(stages)) => {
                        if stages.get_ref().is_empty() {
                            self.problem(stages, "a plugin needs at least one stage");
                        }
                        stages.get_ref().iter().filter_map(|&s| stage(s).ok()).collect()
                    }
                    (EntryKind::Wasm, None) => {
                        self.problem(spanned, "a wasm plugin needs `stages`");
                        Vec::new()
                    }
                    (EntryKind::MtaHooks(_), None) => {
                        self.problem(spanned, "an MTA Hooks scanner needs `stages`");
                        Vec::new()
                    }
                    (EntryKind::Milter(_), Some(stages)) => {
                        self.problem(stages, "a milter sees every stage: remove `stages`");
                        Vec::new()
                    }
                    (EntryKind::Milter(_), None) => {
                        vec![Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data]
                    }
                };
                let outbound: Vec<OutboundStage> = match (&kind, &p.stages) {
                    (EntryKind::Wasm | EntryKind::MtaHooks(_), Some(stages)) => {
                        stages.get_ref().iter().filter_map(|&s| stage(s).err()).collect()
                    }
                    _ => Vec::new(),
                };
                if let (EntryKind::MtaHooks(_), Some(at)) = (&kind, &p.stages)
                    && outbound.contains(&OutboundStage::Quarantined)
                {
                    self.problem(at, "the MTA Hooks draft has no stage for `quarantined`");
                }
                let memory = *p.memory_limit_bytes.get_ref();
                if !(1 << 20..=4 << 30).contains(&memory) {
                    self.problem(&p.memory_limit_bytes, "must be between 1 MiB and 4 GiB");
                }
                let settings = serde_json::to_string(p.settings.get_ref()).unwrap_or_else(|_| "{}".to_owned());
                let mut listeners: Vec<Arc<str>> = Vec::new();
                for name in &p.listeners {
                    let name_text = name.get_ref().as_str();
                    if raw.listeners.iter().any(|l| l.get_ref().name == name_text) {
                        listeners.push(Arc::from(name_text));
                    } else {
                        self.problem(name, format!("no [[listener]] is named {name_text:?}"));
                    }
                }
                let sha256 = p.sha256.as_ref().map(|digest| {
                    let hex = digest.get_ref().to_ascii_lowercase();
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        self.problem(digest, "a SHA-256 is 64 hex digits (`mailgate plugin hash FILE` prints it)");
                    }
                    hex
                });
                let http = self.http_policy(spanned, p);
                PluginConfig {
                    name: Arc::from(p.name.get_ref().as_str()),
                    path: p.path.as_ref().map(|path| self.resolve(path.get_ref())).unwrap_or_default(),
                    kind,
                    mode: p.mode,
                    stages,
                    outbound,
                    settings,
                    memory_limit: memory,
                    time_budget: p.time_budget.0.max(Duration::from_millis(1)),
                    on_error: p.on_error,
                    instances: p.instances,
                    capabilities: p.capabilities.clone(),
                    sha256,
                    listeners,
                    http,
                }
            })
            .collect()
    }
}

impl Checker<'_> {
    /// The system's roots plus `[plugins] http_ca_file`.
    pub(super) fn plugin_http_tls(&mut self, raw: &RawConfig) -> Arc<rustls::ClientConfig> {
        let ca_file = raw.plugins.http_ca_file.as_ref();
        let path = ca_file.map(|f| self.resolve(f.get_ref()));
        match crate::delivery::tls::web_client(path.as_deref()) {
            Ok(config) => config,
            Err(e) => {
                match ca_file {
                    Some(at) => self.problem(at, e),
                    None => self.problems.push(Problem::at(self.source, None, e)),
                }
                // Refused anyway; a placeholder that trusts nothing.
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    });
                match config {
                    Ok(config) => Arc::new(config),
                    Err(_) => TlsConfigs::encrypt_only().unverified,
                }
            }
        }
    }

    /// What a plugin's `http` requests may reach: `http_allow` entries are
    /// host names (`*.` for subdomains) or `http(s)://` URL prefixes, and
    /// the list is needed exactly when `http` is granted.
    fn http_policy(&mut self, at: &Spanned<RawPlugin>, p: &RawPlugin) -> HttpPolicy {
        let granted = p.capabilities.contains(&Capability::Http);
        for entry in &p.http_allow {
            let text = entry.get_ref();
            let valid = if text.contains("://") {
                text.starts_with("http://") || text.starts_with("https://")
            } else {
                let host = text.strip_prefix("*.").unwrap_or(text);
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
            };
            if !valid {
                self.problem(
                    entry,
                    "an http_allow entry is a host name (`api.example.com`, `*.example.com`) or an http:// or https:// URL prefix",
                );
            }
        }
        match (granted, p.http_allow.is_empty()) {
            (true, true) => self.problem(
                at,
                "the `http` capability needs `http_allow`: the hosts or URL prefixes its requests may reach",
            ),
            (false, false) => self.problem(&p.http_allow[0], "`http_allow` without the `http` capability"),
            _ => {}
        }
        let defaults = HttpPolicy::default();
        HttpPolicy {
            allow: p.http_allow.iter().map(|e| e.get_ref().clone()).collect(),
            timeout: p
                .http_timeout
                .map_or(defaults.timeout, |d| d.0.max(Duration::from_millis(1))),
            max_response_bytes: p.http_max_response_bytes.unwrap_or(defaults.max_response_bytes),
        }
    }
}

/// A plugin's name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An SMTP stage, or an outbound one.
fn stage(raw: RawStage) -> Result<Stage, OutboundStage> {
    match raw {
        RawStage::Connect => Ok(Stage::Connect),
        RawStage::Helo => Ok(Stage::Helo),
        RawStage::Mail => Ok(Stage::Mail),
        RawStage::Rcpt => Ok(Stage::Rcpt),
        RawStage::Data => Ok(Stage::Data),
        RawStage::Deliver => Err(OutboundStage::Deliver),
        RawStage::Defer => Err(OutboundStage::Defer),
        RawStage::Bounce => Err(OutboundStage::Bounce),
        RawStage::Delivered => Err(OutboundStage::Delivered),
        RawStage::Quarantined => Err(OutboundStage::Quarantined),
    }
}
