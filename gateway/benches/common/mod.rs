//! What the plugin benchmarks share: a plugin's configuration, the hook
//! context, the messages, the example plugins' settings and a chain loaded
//! from them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailgate::plugin::{
    Capability, Chain, HookContext, HostServices, InstanceMode, OnError, ParsedMessage, PluginConfig, Runtime,
    RuntimeSettings,
};
use mailgate::smtp::session::Stage;

pub const ALL_STAGES: [Stage; 5] = [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data];

/// The example plugins' settings, as `bench/relay.py` configures them.
pub const ROUTER: &str = r#"{"rules": [{"domains": ["*"], "route": "sink"}]}"#;
pub const REWRITE: &str = r#"{"rules": [{"set": "X-Relayed-By", "value": "mailgate"}, {"remove": "X-Internal"}]}"#;
pub const SPAM: &str = r#"{"quarantine_at": 100, "reject_at": 200}"#;

/// A plugin at every inbound stage.
pub fn plugin(name: &str, path: &Path, settings: &str, instances: InstanceMode, python: bool) -> PluginConfig {
    PluginConfig {
        name: Arc::from(name),
        kind: mailgate::plugin::EntryKind::Wasm,
        mode: mailgate::plugin::EntryMode::Live,
        path: path.to_owned(),
        stages: ALL_STAGES.to_vec(),
        outbound: Vec::new(),
        settings: settings.to_owned(),
        memory_limit: if python { 256 << 20 } else { 64 << 20 },
        time_budget: Duration::from_secs(5),
        on_error: OnError::Tempfail,
        instances,
        capabilities: if python {
            vec![Capability::Log, Capability::Clock]
        } else {
            vec![]
        },
        sha256: None,
        listeners: Vec::new(),
        http: mailgate::plugin::HttpPolicy::default(),
    }
}

/// Loads `plugins` into a chain of their own, caching compiled code in
/// `cache`.
pub async fn chain(plugins: Vec<PluginConfig>, cache: &Path) -> Arc<Chain> {
    let settings = RuntimeSettings {
        cache_dir: cache.to_owned(),
        max_instances: 64,
        max_memory_bytes: plugins.iter().map(|p| p.memory_limit).max().unwrap_or(64 << 20),
    };
    let runtime = Runtime::new(&settings).expect("the engine starts");
    Chain::load(
        runtime,
        HostServices::none(),
        plugins,
        HashSet::from(["sink".to_owned()]),
    )
    .await
    .unwrap_or_else(|e| panic!("the chain loads: {e:?}"))
}

/// The context a client from 192.0.2.1 has at the first hook.
pub fn context() -> HookContext {
    HookContext {
        client: "192.0.2.1:40000".parse().expect("an address"),
        listener: Arc::from("bench"),
        tls: false,
        helo: Some("client.example".into()),
        authenticated: None,
        reverse_path: None,
        recipients: Vec::new(),
        metadata: Vec::new(),
    }
}

/// The header of the benchmark messages, with its trace field.
const HEADER: &[u8] = b"Received: from client.example ([192.0.2.1])\r\n\tby gw.example; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: sender@example.org\r\nTo: rcpt@example.com\r\nSubject: benchmark\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n";

/// A 1 KB message with its trace field.
pub fn message() -> Arc<ParsedMessage> {
    let mut content = HEADER.to_vec();
    content.extend(std::iter::repeat_n(b'x', 900));
    content.extend_from_slice(b"\r\n");
    Arc::new(ParsedMessage::new(content))
}

/// A message with a body of `size` bytes: lines of X as `smtp-source -l`
/// sends them (the relay benchmark's 100 KB workload), or, with `prose`,
/// English text, which gives a scan fewer bytes to skip.
#[allow(dead_code, reason = "the plugin_path benchmark uses it, the plugins one does not")]
pub fn large_message(size: usize, prose: bool) -> Arc<ParsedMessage> {
    const PROSE: &str = "Please find the minutes of this week's meeting attached; \
        the next one is on Monday at ten, in the usual room. ";
    let mut content = HEADER.to_vec();
    let mut line = 1;
    while content.len() < HEADER.len() + size {
        let text = if prose {
            PROSE.to_owned()
        } else {
            format!("{line}{}", "X".repeat(78))
        };
        content.extend_from_slice(text.trim_end().as_bytes());
        content.extend_from_slice(b"\r\n");
        line += 1;
    }
    Arc::new(ParsedMessage::new(content))
}
