//! `[plugins]` and `[[plugin]]` as written: the chain's entries (wasm
//! plugins, milters, MTA Hooks scanners) with their defaults.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::units::HumanDuration;
use crate::plugin::{Capability, EntryMode, InstanceMode, OnError};

/// `[plugins]`: settings shared by all plugins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPlugins {
    /// `cache_dir`: compiled components are kept here so a restart does
    /// not recompile; default `plugin-cache` inside `spool_dir`.
    pub cache_dir: Option<Spanned<PathBuf>>,
    /// `max_instances`: plugin instances alive at once, over all plugins
    /// and connections (the pooling allocator's size); default 1000.
    pub max_instances: u32,
    /// `http_ca_file`: PEM CA certificates plugins' HTTPS requests trust
    /// besides the system's roots.
    pub http_ca_file: Option<Spanned<PathBuf>>,
}

impl Default for RawPlugins {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1000,
            http_ca_file: None,
        }
    }
}

/// `[[plugin]]`: one entry of the chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// `name`: unique; appears in logs and metrics.
    pub name: Spanned<String>,
    /// `kind`: `"wasm"` (default), `"milter"` or `"mta-hooks"`.
    #[serde(default = "default_kind")]
    pub kind: Spanned<RawKind>,
    /// `mode`: `"live"` (default) or `"shadow"` (run and compare, never apply).
    #[serde(default)]
    pub mode: EntryMode,
    /// `path`: the component (`.wasm`); wasm only.
    pub path: Option<Spanned<PathBuf>>,
    /// `sha256`: the component's expected SHA-256, hex (`mailgate plugin
    /// hash FILE` prints it); a file with another digest is refused; wasm
    /// only.
    pub sha256: Option<Spanned<String>>,
    /// `listeners`: the names of the listeners whose connections this
    /// entry runs for; default all of them.
    #[serde(default)]
    pub listeners: Vec<Spanned<String>>,
    /// `stages`: any of `"connect"`, `"helo"`, `"mail"`, `"rcpt"`, `"data"`
    /// and the outbound `"deliver"`, `"defer"`, `"bounce"`, `"delivered"`,
    /// `"quarantined"`; not for milters (a milter sees every inbound stage).
    pub stages: Option<Spanned<Vec<RawStage>>>,
    /// `address`: the milter's socket, `"inet:HOST:PORT"` or `"unix:/PATH"`;
    /// milter only.
    pub address: Option<Spanned<String>>,
    /// `connect_timeout`: milter only; default `"5s"`.
    pub connect_timeout: Option<HumanDuration>,
    /// `timeout`: the most one milter answer may take (default `"30s"`),
    /// or one MTA Hooks exchange, discovery and registration included
    /// (default `"10s"`); milter and mta-hooks only.
    pub timeout: Option<HumanDuration>,
    /// `url`: an MTA Hooks scanner's base URL (`http://` or `https://`);
    /// its discovery document is at `/.well-known/mta-hooks`; mta-hooks
    /// only.
    pub url: Option<Spanned<String>>,
    /// `token_file`: a file holding the bearer token sent to an MTA Hooks
    /// scanner; mta-hooks only.
    pub token_file: Option<Spanned<PathBuf>>,
    /// `settings`: a table handed to the plugin's `init` as JSON.
    #[serde(default = "no_settings")]
    pub settings: Spanned<toml::Table>,
    /// `memory_limit_bytes`: linear memory cap; default 67108864 (64 MiB).
    #[serde(default = "default_memory_limit")]
    pub memory_limit_bytes: Spanned<usize>,
    /// `time_budget`: the most one hook call may take; default `"1s"`.
    #[serde(default = "default_time_budget")]
    pub time_budget: HumanDuration,
    /// `on_error`: `"tempfail"` (default, 451 4.3.0), `"continue"` or `"reject"`.
    #[serde(default)]
    pub on_error: OnError,
    /// `instances`: `"fresh"` (default, one per transaction) or `"reused"`.
    #[serde(default)]
    pub instances: InstanceMode,
    /// `capabilities`: host imports it may use: `"log"`, `"clock"`; default none.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// `http_allow`: with the `http` capability, the host names
    /// (`api.example.com`, `*.example.com`) and URL prefixes
    /// (`https://hooks.example.com/v1/`) its requests may reach.
    #[serde(default)]
    pub http_allow: Vec<Spanned<String>>,
    /// `http_timeout`: the longest one request may take (never longer than
    /// what is left of `time_budget`); default `"10s"`.
    pub http_timeout: Option<HumanDuration>,
    /// `http_max_response_bytes`: the largest response body; default
    /// 1048576.
    pub http_max_response_bytes: Option<usize>,
}

/// `kind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawKind {
    /// A WebAssembly component.
    #[default]
    Wasm,
    /// A milter.
    Milter,
    /// An MTA Hooks scanner (draft-degennaro-mta-hooks-01).
    #[serde(rename = "mta-hooks")]
    MtaHooks,
}

/// An SMTP stage, as written in `stages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawStage {
    /// `"connect"`
    Connect,
    /// `"helo"`
    Helo,
    /// `"mail"`
    Mail,
    /// `"rcpt"`
    Rcpt,
    /// `"data"`
    Data,
    /// `"deliver"` (outbound)
    Deliver,
    /// `"defer"` (outbound)
    Defer,
    /// `"bounce"` (outbound)
    Bounce,
    /// `"delivered"` (outbound)
    Delivered,
    /// `"quarantined"` (outbound)
    Quarantined,
}

fn default_kind() -> Spanned<RawKind> {
    Spanned::new(0..0, RawKind::Wasm)
}

fn default_memory_limit() -> Spanned<usize> {
    Spanned::new(0..0, 64 * 1024 * 1024)
}

fn default_time_budget() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}

/// An absent `settings` table: empty, written nowhere.
fn no_settings() -> Spanned<toml::Table> {
    Spanned::new(0..0, toml::Table::new())
}
