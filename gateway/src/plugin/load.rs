//! One configured plugin: its settings, loading (compile, check its
//! capabilities and that it matches the world, pre-instantiate, try `init`
//! once), and its instances: fresh per transaction, or warm ones reused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::spawn_blocking;
use tracing::info;
use wasmtime::component::Component;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use super::bindings::v0_1;
use super::defaults::DefaultHooks;
use super::engine::Runtime;
use super::error::{Fault, PluginError};
use super::hooks::{Instance, Pre};
use super::host::HostServices;
use super::snapshot::{self, NotSnapshotted};
use super::state::State;
use super::ticker::Ticker;
use crate::smtp::session::Stage;

/// Warm instances kept per plugin in `reused` mode.
const MAX_IDLE: usize = 256;

/// What a fault means for the client (`on_error`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Answer 451 4.3.0: the client tries again later.
    #[default]
    Tempfail,
    /// Ignore the plugin for this stage (fail open).
    Continue,
    /// Answer 554 5.7.0 (fail closed).
    Reject,
}

/// How instances are used (`instances`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMode {
    /// A fresh instance per transaction: nothing leaks between messages.
    #[default]
    Fresh,
    /// Warm instances serve successive transactions (for runtimes that are
    /// slow to start, such as Python or JavaScript). A faulted instance is
    /// always discarded.
    Reused,
}

/// A host capability a plugin may be granted (`capabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `mailgate:plugin/log`.
    Log,
    /// `mailgate:plugin/clock`.
    Clock,
    /// `mailgate:plugin/dns`.
    Dns,
    /// `mailgate:plugin/kv`.
    Kv,
    /// `mailgate:plugin/metrics`.
    Metrics,
    /// `mailgate:plugin/dkim`.
    Dkim,
    /// `mailgate:plugin/http`.
    Http,
}

impl Capability {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Clock => "clock",
            Self::Dns => "dns",
            Self::Kv => "kv",
            Self::Metrics => "metrics",
            Self::Dkim => "dkim",
            Self::Http => "http",
        }
    }

    fn interface(self) -> &'static str {
        match self {
            Self::Log => "mailgate:plugin/log@",
            Self::Clock => "mailgate:plugin/clock@",
            Self::Dns => "mailgate:plugin/dns@",
            Self::Kv => "mailgate:plugin/kv@",
            Self::Metrics => "mailgate:plugin/metrics@",
            Self::Dkim => "mailgate:plugin/dkim@",
            Self::Http => "mailgate:plugin/http@",
        }
    }
}

/// What a chain entry is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EntryKind {
    /// A WebAssembly component (`path`).
    #[default]
    Wasm,
    /// A milter, reached over the network.
    Milter(Arc<crate::milter::MilterSettings>),
    /// An MTA Hooks scanner, reached over HTTP.
    MtaHooks(Arc<crate::mta_hooks::ScannerSettings>),
}

/// Whether an entry's decisions count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryMode {
    /// Its verdicts and modifications apply.
    #[default]
    Live,
    /// It runs on live traffic, but what it decides is only compared with
    /// what the chain did (counted and logged), never applied.
    Shadow,
}

/// One `[[plugin]]`, validated.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Its name, for logs and metrics.
    pub name: Arc<str>,
    /// A wasm component or a milter.
    pub kind: EntryKind,
    /// Live or shadow.
    pub mode: EntryMode,
    /// The component file.
    pub path: PathBuf,
    /// The stages it runs at.
    pub stages: Vec<Stage>,
    /// The outbound stages it runs at (wasm plugins of the current
    /// version that export `outbound`).
    pub outbound: Vec<super::outbound::OutboundStage>,
    /// Its settings table as JSON, handed to `init`.
    pub settings: String,
    /// Linear memory cap, in bytes.
    pub memory_limit: usize,
    /// Time budget per call.
    pub time_budget: Duration,
    /// What a fault means.
    pub on_error: OnError,
    /// Fresh or reused instances.
    pub instances: InstanceMode,
    /// Granted capabilities.
    pub capabilities: Vec<Capability>,
    /// The component's SHA-256 (lower-case hex) it must have, when pinned.
    pub sha256: Option<String>,
    /// The listeners it runs for; empty for all of them.
    pub listeners: Vec<Arc<str>>,
    /// What its `http` requests may reach.
    pub http: super::http::HttpPolicy,
}

impl PluginConfig {
    /// True when the entry runs at `stage` for connections on `listener`.
    pub fn runs(&self, stage: Stage, listener: &str) -> bool {
        self.stages.contains(&stage) && (self.listeners.is_empty() || self.listeners.iter().any(|l| &**l == listener))
    }
}

/// An instance and its store.
pub struct Live {
    /// The store.
    pub store: Store<State>,
    /// The instance's exports.
    pub plugin: Instance,
    /// The component instance (current version only), for the optional
    /// `outbound` export.
    pub raw: Option<wasmtime::component::Instance>,
}

/// A compiled, checked plugin ready to instantiate.
pub struct LoadedPlugin {
    /// Its configuration.
    pub config: PluginConfig,
    engine: Engine,
    ticker: Arc<Ticker>,
    host: HostServices,
    pre: Pre,
    /// Instances start from a snapshot taken after `init`.
    initialized: bool,
    idle: Mutex<Vec<Live>>,
    /// Its hooks found to do nothing, no longer called.
    pub(super) defaults: DefaultHooks,
    /// Its counters, by hook and verdict.
    pub metrics: crate::metrics::PluginMetrics,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Compiles and checks the plugin, then creates one instance and calls
    /// `init` with its settings, so a broken plugin or bad settings stop
    /// start-up rather than the first message.
    pub async fn load(runtime: &Arc<Runtime>, config: PluginConfig, host: HostServices) -> Result<Self, PluginError> {
        let mut host = host;
        host.http_policy = Arc::new(config.http.clone());
        let plugin = config.name.to_string();
        let bytes = tokio::fs::read(&config.path)
            .await
            .map_err(|source| PluginError::Read {
                plugin: plugin.clone(),
                path: config.path.clone(),
                source,
            })?;
        if let Some(expected) = &config.sha256 {
            let actual = sha256_hex(&bytes);
            if actual != *expected {
                return Err(PluginError::Pinned {
                    plugin,
                    path: config.path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let compiled = compile(&runtime.engine, bytes.clone()).await;
        let component = compiled.map_err(|reason| compile_error(&config, reason))?;
        check_capabilities(&runtime.engine, &component, &config)?;
        let mismatch = |e: wasmtime::Error| PluginError::WorldMismatch {
            plugin: plugin.clone(),
            path: config.path.clone(),
            reason: format!("{e:#}"),
        };
        // Which package version it was built against decides its bindings.
        let legacy = component
            .component_type()
            .exports(&runtime.engine)
            .any(|(name, _)| name == Pre::HOOKS_0_1);
        if !config.outbound.is_empty() {
            let exported = component
                .component_type()
                .exports(&runtime.engine)
                .any(|(name, _)| name == super::outbound::INTERFACE);
            if legacy || !exported {
                let stages: Vec<&str> = config.outbound.iter().map(|s| s.name()).collect();
                return Err(mismatch(wasmtime::format_err!(
                    "it is configured for the outbound stages {} but does not export {} (build it for the world `outbound-plugin`)",
                    stages.join(", "),
                    super::outbound::INTERFACE
                )));
            }
        }
        // Checked against the world first, so that a mismatch is reported
        // as such rather than as a failed snapshot.
        let mut pre = runtime.linker.instantiate_pre(&component).map_err(mismatch)?;
        let initialized = match config.instances {
            InstanceMode::Fresh => {
                let mut store = new_store(&runtime.engine, &runtime.ticker, &config, &host);
                match snapshot::preinitialize(runtime, &mut store, &bytes, &config.settings, legacy).await {
                    Ok(snapshot) => {
                        info!(
                            plugin,
                            "plugin pre-initialized: fresh instances start from its state after init"
                        );
                        let compiled = compile(&runtime.engine, snapshot).await;
                        let snapshotted = compiled.map_err(|reason| compile_error(&config, reason))?;
                        pre = runtime.linker.instantiate_pre(&snapshotted).map_err(mismatch)?;
                        true
                    }
                    Err(NotSnapshotted::Refused(message)) => {
                        return Err(PluginError::Start {
                            plugin,
                            fault: Fault::Init(message),
                        });
                    }
                    Err(NotSnapshotted::Unsupported(reason)) => {
                        info!(
                            plugin,
                            reason, "plugin not pre-initialized: each fresh instance runs init"
                        );
                        false
                    }
                }
            }
            InstanceMode::Reused => false,
        };
        let pre = if legacy {
            Pre::V0_1(v0_1::PluginPre::new(pre).map_err(mismatch)?)
        } else {
            Pre::current(pre).map_err(mismatch)?
        };
        let loaded = Self {
            engine: runtime.engine.clone(),
            ticker: Arc::clone(&runtime.ticker),
            host,
            pre,
            initialized,
            idle: Mutex::new(Vec::new()),
            defaults: DefaultHooks::default(),
            metrics: crate::metrics::metrics().plugin(&config.name),
            config,
        };
        // The first instance is made warm whatever the mode: it checks the
        // types of every hook now, not at a fresh instance's first call.
        let first = loaded
            .make(true)
            .await
            .map_err(|fault| PluginError::Start { plugin, fault })?;
        loaded.release(first);
        Ok(loaded)
    }

    /// An instance with `init` done: a warm one in reused mode if any,
    /// otherwise a new one (from the pre-initialized snapshot when there
    /// is one).
    pub async fn instance(&self) -> Result<Live, Fault> {
        let warm = self.config.instances == InstanceMode::Reused;
        if warm && let Some(live) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(live);
        }
        self.make(warm).await
    }

    /// A new instance; `warm` ones have every hook type-checked at once
    /// (see `hooks.rs`).
    async fn make(&self, warm: bool) -> Result<Live, Fault> {
        let mut store = new_store(&self.engine, &self.ticker, &self.config, &self.host);
        let budget = self.config.time_budget;
        let (plugin, raw) = match self.pre.instantiate(&mut store, warm).await {
            Ok(instantiated) => instantiated,
            Err(e) => {
                return Err(match classify(&e, store.data(), budget) {
                    Fault::Trap(_) if e.downcast_ref::<Trap>().is_none() => Fault::Instantiate(format!("{e:#}")),
                    fault => fault,
                });
            }
        };
        disarm(&mut store);
        if self.initialized {
            return Ok(Live { store, plugin, raw });
        }
        arm(&mut store, budget);
        let init = plugin.init(&mut store, &self.config.settings).await;
        disarm(&mut store);
        match init {
            Ok(Ok(())) => Ok(Live { store, plugin, raw }),
            Ok(Err(message)) => Err(Fault::Init(message)),
            Err(e) => Err(classify(&e, store.data(), budget)),
        }
    }

    /// Ends an instance's use for a transaction: kept warm in reused mode,
    /// dropped otherwise. A warm one waits with no call armed, so that the
    /// epoch ticker never ticks for an idle instance.
    pub fn release(&self, mut live: Live) {
        if self.config.instances == InstanceMode::Reused {
            disarm(&mut live.store);
            live.store.data_mut().end_transaction();
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(live);
            }
        }
    }
}

/// The SHA-256 of `bytes`, lower-case hex (what `sha256` pins).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A store as a transaction's instance gets it: its memory limiter, the
/// epoch callback that enforces the time budget, the budget armed.
fn new_store(engine: &Engine, ticker: &Arc<Ticker>, config: &PluginConfig, host: &HostServices) -> Store<State> {
    let mut state = State::new(Arc::clone(&config.name), config.memory_limit, host.clone());
    state.ticker = Some(Arc::clone(ticker));
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    arm(&mut store, config.time_budget);
    store
}

/// Compiles a component on the blocking pool (or takes it from the cache).
async fn compile(engine: &Engine, bytes: Vec<u8>) -> Result<Component, String> {
    let engine = engine.clone();
    match spawn_blocking(move || Component::from_binary(&engine, &bytes)).await {
        Ok(Ok(component)) => Ok(component),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Starts the time budget of a call.
pub fn arm(store: &mut Store<State>, budget: Duration) {
    let deadline = Instant::now() + budget;
    let state = store.data_mut();
    state.output.clear();
    state.deadline = deadline;
    state.armed = state.ticker.as_ref().map(|ticker| ticker.arm(deadline));
    store.set_epoch_deadline(1);
}

/// The call armed last has returned: the ticker need not tick for it.
pub fn disarm(store: &mut Store<State>) {
    store.data_mut().armed = None;
}

/// Names a failed call: memory exhaustion (the limiter saw it), a timeout
/// (the epoch callback interrupted it), or another trap.
pub fn classify(error: &wasmtime::Error, state: &State, budget: Duration) -> Fault {
    if state.limiter.exceeded {
        return Fault::Memory;
    }
    let what = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return Fault::Timeout(budget),
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    // What the plugin printed (a panic message, a traceback) and where it
    // stopped say more than the trap.
    let mut explained = what;
    let output = state.output.text();
    if !output.is_empty() {
        explained.push_str(&format!("; plugin output: {output}"));
    }
    if let Some(trace) = super::output::backtrace(error) {
        explained.push_str(&format!("; wasm backtrace: {trace}"));
    }
    Fault::Trap(explained)
}

fn compile_error(config: &PluginConfig, reason: String) -> PluginError {
    PluginError::Compile {
        plugin: config.name.to_string(),
        path: config.path.clone(),
        reason,
    }
}

/// A plugin may import WASI (given with no files, env or network), the
/// shared types, `defaults`, and the capabilities it was granted; nothing
/// else.
fn check_capabilities(engine: &Engine, component: &Component, config: &PluginConfig) -> Result<(), PluginError> {
    for (name, _) in component.component_type().imports(engine) {
        let ungranted = name.starts_with("mailgate:plugin/")
            && !name.starts_with("mailgate:plugin/types@")
            && !name.starts_with("mailgate:plugin/defaults@")
            && !config.capabilities.iter().any(|c| name.starts_with(c.interface()));
        if ungranted {
            let granted: Vec<String> = config.capabilities.iter().map(|c| c.name().to_owned()).collect();
            return Err(PluginError::NotGranted {
                plugin: config.name.to_string(),
                path: config.path.clone(),
                import: name.to_owned(),
                granted: granted.join(", "),
            });
        }
    }
    Ok(())
}
