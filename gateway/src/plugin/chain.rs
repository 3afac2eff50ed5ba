//! The chain: the configured plugins in order. `ChainSession` is one
//! connection's use of it: it runs a stage through the plugins configured
//! for it, stops at the first verdict other than `continue`, answers
//! faults with each plugin's `on_error`, and holds the connection's
//! instances until the transaction ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, debug, debug_span, warn};

use super::bindings::mailgate::plugin::types::{Context, MetadataEntry, Outcome};
use super::convert::{self, Verdict};
use super::engine::Runtime;
use super::error::{Fault, PluginError};
use super::host::{HostServices, SealRequest};
use super::load::{EntryKind, EntryMode, Live, LoadedPlugin, OnError, PluginConfig, arm, classify, disarm};
use super::message::ParsedMessage;
use super::outcome::{Decision, HookContext, Modification, StageResult};
use super::transcript::Journal;
use crate::milter::{MilterSession, MilterSettings};
use crate::smtp::command::MailParameters;
use crate::smtp::dsn::RcptDsn;
use crate::smtp::session::Stage;
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};

/// A chain entry: a wasm plugin, a milter or an MTA Hooks scanner.
#[derive(Debug)]
pub(super) enum Entry {
    Wasm(Box<LoadedPlugin>),
    Milter(Box<MilterEntry>),
    Scanner(Box<ScannerEntry>),
}

/// An MTA Hooks scanner entry: one registration shared by the chain.
#[derive(Debug)]
pub(super) struct ScannerEntry {
    pub(super) config: PluginConfig,
    pub(super) scanner: crate::mta_hooks::Scanner,
    pub(super) metrics: crate::metrics::PluginMetrics,
}

/// A milter entry: reached per connection, nothing loaded.
#[derive(Debug)]
pub(super) struct MilterEntry {
    config: PluginConfig,
    settings: Arc<MilterSettings>,
    metrics: crate::metrics::PluginMetrics,
}

impl Entry {
    pub(super) fn config(&self) -> &PluginConfig {
        match self {
            Self::Wasm(plugin) => &plugin.config,
            Self::Milter(milter) => &milter.config,
            Self::Scanner(scanner) => &scanner.config,
        }
    }

    pub(super) fn metrics(&self) -> &crate::metrics::PluginMetrics {
        match self {
            Self::Wasm(plugin) => &plugin.metrics,
            Self::Milter(milter) => &milter.metrics,
            Self::Scanner(scanner) => &scanner.metrics,
        }
    }

    pub(super) fn is_shadow(&self) -> bool {
        self.config().mode == EntryMode::Shadow
    }

    /// True when the entry is called at `stage` on `listener`: configured
    /// for it, and not a wasm hook known to do nothing.
    fn calls(&self, stage: Stage, listener: &str) -> bool {
        self.config().runs(stage, listener) && !matches!(self, Self::Wasm(plugin) if plugin.defaults.skips(stage))
    }
}

/// The plugins, in chain order.
#[derive(Debug)]
pub struct Chain {
    plugins: Vec<Entry>,
    routes: HashSet<String>,
    // Keeps the engine (and its epoch ticker) alive as long as the chain.
    runtime: Arc<Runtime>,
    host: HostServices,
}

impl Chain {
    /// Loads every plugin. `routes` are the configured route names plugins
    /// may route to. Errors come back with the index of the plugin.
    pub async fn load(
        runtime: Arc<Runtime>,
        host: HostServices,
        configs: Vec<PluginConfig>,
        routes: HashSet<String>,
    ) -> Result<Arc<Self>, Vec<(usize, PluginError)>> {
        let mut plugins = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for (index, config) in configs.into_iter().enumerate() {
            if let EntryKind::Milter(settings) = &config.kind {
                // Milters are reached when a connection needs them, as
                // Postfix does: one that is down at start-up is a fault
                // answered by its `on_error`, not a start-up failure.
                plugins.push(Entry::Milter(Box::new(MilterEntry {
                    settings: Arc::clone(settings),
                    metrics: crate::metrics::metrics().plugin(&config.name),
                    config,
                })));
                continue;
            }
            if let EntryKind::MtaHooks(settings) = &config.kind {
                // Discovered and registered with on first use, for the
                // same reason.
                let scanner = crate::mta_hooks::Scanner::new(
                    Arc::clone(&config.name),
                    Arc::clone(settings),
                    &config.stages,
                    &config.outbound,
                    Arc::clone(&host.http),
                );
                plugins.push(Entry::Scanner(Box::new(ScannerEntry {
                    scanner,
                    metrics: crate::metrics::metrics().plugin(&config.name),
                    config,
                })));
                continue;
            }
            match LoadedPlugin::load(&runtime, config, host.clone()).await {
                Ok(plugin) => plugins.push(Entry::Wasm(Box::new(plugin))),
                Err(e) => errors.push((index, e)),
            }
        }
        if errors.is_empty() {
            Ok(Arc::new(Self {
                plugins,
                routes,
                runtime,
                host,
            }))
        } else {
            Err(errors)
        }
    }

    /// The engine its plugins run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// What its plugins' capabilities reach.
    pub fn host(&self) -> &HostServices {
        &self.host
    }

    /// True when some plugin runs at `stage`: when none does (none is
    /// configured for it, or each one's hook does nothing), the stage
    /// needs no context, no parse and no instance.
    pub fn runs_at(&self, stage: Stage, listener: &str) -> bool {
        self.plugins.iter().any(|p| p.calls(stage, listener))
    }

    /// The route names plugins may route to.
    pub(super) fn route_names(&self) -> &HashSet<String> {
        &self.routes
    }

    /// The wasm plugins and scanners that run at the outbound `stage`, in
    /// order.
    pub(super) fn outbound_entries(&self, stage: super::outbound::OutboundStage) -> impl Iterator<Item = &Entry> {
        self.plugins
            .iter()
            .filter(move |entry| entry.config().outbound.contains(&stage))
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|p| &*p.config().name)
    }

    /// A connection's session with the chain.
    pub fn session(self: &Arc<Self>) -> ChainSession {
        ChainSession {
            live: self.plugins.iter().map(|_| None).collect(),
            milters: self.plugins.iter().map(|_| None).collect(),
            chain: Arc::clone(self),
            journal: None,
        }
    }
}

/// The stage being decided and its argument.
#[derive(Clone, Copy, Debug)]
pub enum StageCall<'a> {
    /// A client connected.
    Connect,
    /// EHLO/HELO with this name.
    Helo(&'a str),
    /// MAIL FROM.
    Mail(&'a ReversePath, &'a MailParameters),
    /// RCPT TO, with its DSN parameters.
    Rcpt(&'a Mailbox, &'a RcptDsn),
    /// The message was received.
    Data(&'a Arc<ParsedMessage>),
}

impl StageCall<'_> {
    /// The stage.
    pub fn stage(&self) -> Stage {
        match self {
            Self::Connect => Stage::Connect,
            Self::Helo(_) => Stage::Helo,
            Self::Mail(..) => Stage::Mail,
            Self::Rcpt(..) => Stage::Rcpt,
            Self::Data(_) => Stage::Data,
        }
    }
}

/// One connection's instances.
pub struct ChainSession {
    chain: Arc<Chain>,
    live: Vec<Option<Live>>,
    milters: Vec<Option<MilterSession>>,
    journal: Option<Journal>,
}

impl std::fmt::Debug for ChainSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSession").finish_non_exhaustive()
    }
}

impl ChainSession {
    /// Sends the host's answers to every instance's plugin to `journal`.
    pub fn record(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Runs `call` through the plugins configured for its stage, then the
    /// shadow entries, whose answers are only compared with the result.
    pub async fn run(&mut self, call: StageCall<'_>, ctx: &HookContext) -> StageResult {
        let result = self.run_live(call, ctx).await;
        if self.chain.plugins.iter().any(Entry::is_shadow) {
            self.run_shadows(call, ctx, &result).await;
        }
        result
    }

    async fn run_live(&mut self, call: StageCall<'_>, ctx: &HookContext) -> StageResult {
        let stage = call.stage();
        // Converted once per stage; metadata set by a plugin is appended
        // for the plugins after it.
        let mut wit_ctx = convert::context(ctx);
        let mut modifications = Vec::new();
        let mut faults = Vec::new();
        let chain = Arc::clone(&self.chain);
        for (index, plugin) in chain.plugins.iter().enumerate() {
            if !plugin.calls(stage, &ctx.listener) || plugin.is_shadow() {
                continue;
            }
            let checked = self.consult(&chain, index, call, ctx, &wit_ctx).await;
            let (verdict, mods) = match checked {
                Ok(checked) => checked,
                Err(fault) => {
                    faults.push(format!("{}: {fault}", plugin.config().name));
                    let reply = match plugin.config().on_error {
                        OnError::Continue => continue,
                        OnError::Tempfail => Reply::local_error(),
                        OnError::Reject => policy_refusal(),
                    };
                    return StageResult {
                        faults,
                        decided_by: Some(format!("plugin {} (fault)", plugin.config().name)),
                        ..refuse(reply)
                    };
                }
            };
            for m in &mods {
                if let Modification::SetMetadata(key, value) = m {
                    wit_ctx.metadata.push(MetadataEntry {
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
            }
            let decision = match verdict {
                Verdict::Continue => {
                    modifications.extend(mods);
                    continue;
                }
                Verdict::Accept => {
                    modifications.extend(mods);
                    break;
                }
                Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                    return StageResult {
                        faults,
                        decided_by: Some(format!("plugin {}", plugin.config().name)),
                        ..refuse(reply)
                    };
                }
                Verdict::Disconnect(reply) => Decision::Disconnect(reply),
                Verdict::Discard => Decision::Discard,
                Verdict::Quarantine(reason) => Decision::Quarantine(reason),
                Verdict::Hold(reason) => Decision::Hold(reason),
            };
            modifications.extend(mods);
            return StageResult {
                decision,
                modifications,
                faults,
                decided_by: Some(format!("plugin {}", plugin.config().name)),
            };
        }
        StageResult {
            decision: Decision::Proceed,
            modifications,
            faults,
            decided_by: None,
        }
    }

    /// Asks one entry about `call`: its checked verdict and modifications,
    /// or its fault (counted, logged, and its instance dropped).
    ///
    /// `chain` is this session's chain, held by the caller, so the entry
    /// and the route set are borrowed from it rather than from `self`.
    async fn consult(
        &mut self,
        chain: &Chain,
        index: usize,
        call: StageCall<'_>,
        ctx: &HookContext,
        wit_ctx: &Context,
    ) -> Result<(Verdict, Vec<Modification>), Fault> {
        let entry = &chain.plugins[index];
        let stage = call.stage();
        let config = entry.config();
        let span = debug_span!("hook", plugin = %config.name, name = stage.name());
        let started = Instant::now();
        let checked = match entry {
            Entry::Wasm(plugin) => {
                self.call(index, plugin, call, wit_ctx)
                    .instrument(span)
                    .await
                    .and_then(|(outcome, seal)| {
                        let (verdict, mut mods) =
                            convert::outcome(outcome, stage, &chain.routes).map_err(Fault::Illegal)?;
                        // A seal asked for through `dkim.seal` is applied with
                        // the data stage's other changes.
                        mods.extend(seal.filter(|_| stage == Stage::Data).map(Modification::ArcSeal));
                        Ok((verdict, mods))
                    })
            }
            Entry::Milter(milter) => {
                self.milters[index]
                    .get_or_insert_with(|| MilterSession::new(Arc::clone(&milter.settings)))
                    .stage(call, ctx)
                    .instrument(span)
                    .await
            }
            Entry::Scanner(entry) => entry.scanner.inbound(call, ctx).instrument(span).await,
        };
        let seconds = started.elapsed().as_secs_f64();
        match &checked {
            Ok((verdict, _)) => entry.metrics().call(stage.name(), verdict.name(), seconds),
            Err(fault) => {
                entry.metrics().call(stage.name(), "fault", seconds);
                entry.metrics().fault(fault.kind());
                // A faulted instance is never used again.
                self.live[index] = None;
                warn!(plugin = %config.name, stage = stage.name(), kind = fault.kind(), error = %fault, "plugin fault");
            }
        }
        checked
    }

    /// Runs the shadow entries of `call`'s stage and compares what each
    /// would have done with what the chain did.
    async fn run_shadows(&mut self, call: StageCall<'_>, ctx: &HookContext, result: &StageResult) {
        let stage = call.stage();
        let wit_ctx = convert::context(ctx);
        let chain = Arc::clone(&self.chain);
        for (index, entry) in chain.plugins.iter().enumerate() {
            if !entry.is_shadow() || !entry.calls(stage, &ctx.listener) {
                continue;
            }
            let answer = self.consult(&chain, index, call, ctx, &wit_ctx).await;
            let agreed = match &answer {
                Ok((verdict, mods)) => {
                    shadow_class(verdict) == decision_class(&result.decision)
                        && mods.iter().all(|m| result.modifications.contains(m))
                }
                Err(_) => false,
            };
            crate::metrics::metrics().shadow_decision(&entry.config().name, stage.name(), agreed);
            debug!(
                plugin = %entry.config().name,
                stage = stage.name(),
                agreed,
                shadow = ?answer,
                chain = ?result.decision,
                chain_modifications = ?result.modifications,
                "shadow decision"
            );
        }
    }

    /// Calls one plugin's hook, creating its instance if needed.
    async fn call(
        &mut self,
        index: usize,
        plugin: &LoadedPlugin,
        call: StageCall<'_>,
        wit_ctx: &Context,
    ) -> Result<(Outcome, Option<SealRequest>), Fault> {
        let mut live = match self.live.get_mut(index).and_then(Option::take) {
            Some(live) => live,
            None => plugin.instance().await?,
        };
        if self.journal.is_some() {
            live.store.data_mut().journal.clone_from(&self.journal);
        }
        let budget = plugin.config.time_budget;
        arm(&mut live.store, budget);
        live.store.data_mut().default_hook = false;
        let result = live.plugin.call(&mut live.store, call, wit_ctx).await;
        disarm(&mut live.store);
        match result {
            Ok(outcome) => {
                let said = live.store.data().default_hook;
                plugin.defaults.note(&plugin.config.name, call.stage(), said, &outcome);
                let seal = live.store.data_mut().seal.take();
                if let Some(slot) = self.live.get_mut(index) {
                    *slot = Some(live);
                }
                Ok((outcome, seal))
            }
            Err(e) => Err(classify(&e, live.store.data(), budget)),
        }
    }

    /// The transaction is over: fresh instances are dropped, reused ones go
    /// back to their pool.
    pub fn end_transaction(&mut self) {
        for (slot, entry) in self.live.iter_mut().zip(&self.chain.plugins) {
            if let (Some(live), Entry::Wasm(plugin)) = (slot.take(), entry) {
                plugin.release(live);
            }
        }
        for session in self.milters.iter_mut().flatten() {
            session.end_transaction();
        }
    }
}

impl Drop for ChainSession {
    fn drop(&mut self) {
        self.end_transaction();
    }
}

/// A decision's kind, for comparing a shadow entry with the chain.
fn decision_class(decision: &Decision) -> &'static str {
    match decision {
        Decision::Proceed => "proceed",
        Decision::Refuse(reply) if reply.code() >= 500 => "reject",
        Decision::Refuse(_) => "tempfail",
        Decision::Disconnect(_) => "disconnect",
        Decision::Discard => "discard",
        Decision::Quarantine(_) => "quarantine",
        Decision::Hold(_) => "hold",
    }
}

fn shadow_class(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Continue | Verdict::Accept => "proceed",
        Verdict::Reject(_) => "reject",
        Verdict::Tempfail(_) => "tempfail",
        Verdict::Disconnect(_) => "disconnect",
        Verdict::Discard => "discard",
        Verdict::Quarantine(_) => "quarantine",
        Verdict::Hold(_) => "hold",
    }
}

fn refuse(reply: Reply) -> StageResult {
    StageResult {
        decision: Decision::Refuse(reply),
        modifications: Vec::new(),
        faults: Vec::new(),
        decided_by: None,
    }
}

/// The reply for `on_error = "reject"`.
fn policy_refusal() -> Reply {
    Reply::new(554, EnhancedCode::new(5, 7, 0), "Refused by local policy")
}
