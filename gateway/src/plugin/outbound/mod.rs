//! The outbound stages (`wit/outbound.wit`): the delivery engine asks the
//! plugins configured for `deliver`, `defer`, `bounce` and `delivered`,
//! in chain order, with a fresh instance per call (an outbound call is not
//! part of an SMTP transaction; with `instances = "reused"` a warm one),
//! under the plugin's time budget and memory limit, and the MTA Hooks
//! scanners configured for them. The `outbound` export is optional in the
//! world, so it is called through wasmtime's dynamic component values
//! rather than bindings (`values.rs`).
//!
//! The first plugin that does not `continue` (or `default`, `send`)
//! decides; `on-delivered` goes to every plugin. A fault (a trap, a
//! timeout, an illegal value) is counted and logged, and with `on_error =
//! "continue"` (or a shadow entry) delivery goes on as if the plugin were
//! absent; with `tempfail` or `reject` the attempt is deferred, so a fault
//! never loses or bounces a message.

mod values;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use wasmtime::component::Val;

use super::chain::{Chain, Entry};
use super::error::Fault;
use super::load::{EntryMode, LoadedPlugin, OnError, arm, classify, disarm};
use super::transcript::Journal;
use crate::delivery::tls::TlsMode;
use crate::mta_hooks::Outcome as ScanOutcome;
use crate::queue::RouteOverride;
use values::{bounce_decision, defer_decision, deliver_decision, delivery_val, failure_val};

/// The exported interface.
pub const INTERFACE: &str = "mailgate:plugin/outbound@0.2.0";

/// An outbound stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboundStage {
    /// Before an attempt.
    Deliver,
    /// After a temporary failure.
    Defer,
    /// Before a bounce.
    Bounce,
    /// After a delivery.
    Delivered,
    /// A message was quarantined at `data`.
    Quarantined,
}

impl OutboundStage {
    /// The name in `stages` and in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deliver => "deliver",
            Self::Defer => "defer",
            Self::Bounce => "bounce",
            Self::Delivered => "delivered",
            Self::Quarantined => "quarantined",
        }
    }

    /// The verdict that decides nothing at this stage.
    pub fn neutral(self) -> &'static str {
        match self {
            Self::Deliver | Self::Delivered | Self::Quarantined => "continue",
            Self::Defer => "default",
            Self::Bounce => "send",
        }
    }

    /// The stage called `name` in `stages`.
    pub fn named(name: &str) -> Option<Self> {
        [
            Self::Deliver,
            Self::Defer,
            Self::Bounce,
            Self::Delivered,
            Self::Quarantined,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    fn function(self) -> &'static str {
        match self {
            Self::Deliver => "on-deliver",
            Self::Defer => "on-defer",
            Self::Bounce => "on-bounce",
            Self::Delivered => "on-delivered",
            Self::Quarantined => "on-quarantined",
        }
    }
}

/// One message's delivery to one destination, as plugins see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFacts {
    /// The queue id.
    pub queue_id: String,
    /// The reverse-path ("" for the null path).
    pub reverse_path: String,
    /// The recipients going there.
    pub recipients: Vec<String>,
    /// "mx:DOMAIN", "smarthost:HOST:PORT", "maildir:PATH" or "none".
    pub destination: String,
    /// The named route, if any.
    pub route: Option<String>,
    /// The attempt's number.
    pub attempt: u32,
    /// Seconds since it was received.
    pub age_seconds: u64,
    /// Its size.
    pub size: u64,
}

/// Why an attempt failed, as plugins see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureFacts {
    /// The reply code.
    pub code: Option<u16>,
    /// The enhanced status code.
    pub enhanced: Option<String>,
    /// The reply text or the error.
    pub text: String,
    /// Permanent.
    pub permanent: bool,
}

/// What `on-deliver` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliverDecision {
    /// As planned.
    Continue,
    /// Another next hop for this attempt.
    Reroute(RouteOverride),
    /// Another TLS policy for this attempt.
    Tls(TlsMode),
    /// On hold, with the reason.
    Hold(String),
    /// Not before this time.
    DeferUntil(SystemTime),
    /// Fail now, with the reason.
    Bounce(String),
}

/// What `on-defer` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeferDecision {
    /// The engine's schedule.
    Default,
    /// Retry at this time.
    RetryAt(SystemTime),
    /// Retry now there, within this attempt.
    Reroute(RouteOverride),
    /// Fail now, with the reason.
    Bounce(String),
}

/// What `on-bounce` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BounceDecision {
    /// Send the bounce.
    Send,
    /// Send none.
    Suppress,
    /// Send it with this explanation.
    Explain(String),
    /// Keep the recipients queued.
    Retry,
}

fn route_text(route: &RouteOverride) -> String {
    match route {
        RouteOverride::Named(name) => format!("route {name}"),
        RouteOverride::Smarthost { host, port } => format!("smarthost {host}:{port}"),
    }
}

fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How a decision reads in a transcript and in `mailgate plugin test`:
/// the verdict's name, then its detail.
pub trait Described {
    /// The verdict and detail.
    fn describe(&self) -> String;
}

impl Described for DeliverDecision {
    fn describe(&self) -> String {
        match self {
            Self::Continue => "continue".into(),
            Self::Reroute(route) => format!("reroute {}", route_text(route)),
            Self::Tls(mode) => format!("tls {mode:?}").to_ascii_lowercase(),
            Self::Hold(reason) => format!("hold {reason}"),
            Self::DeferUntil(at) => format!("defer-until {}", epoch_seconds(*at)),
            Self::Bounce(reason) => format!("bounce {reason}"),
        }
    }
}

impl Described for DeferDecision {
    fn describe(&self) -> String {
        match self {
            Self::Default => "default".into(),
            Self::RetryAt(at) => format!("retry-at {}", epoch_seconds(*at)),
            Self::Reroute(route) => format!("reroute {}", route_text(route)),
            Self::Bounce(reason) => format!("bounce {reason}"),
        }
    }
}

impl Described for BounceDecision {
    fn describe(&self) -> String {
        match self {
            Self::Send => "send".into(),
            Self::Suppress => "suppress".into(),
            Self::Explain(text) => format!("explain {text}"),
            Self::Retry => "retry".into(),
        }
    }
}

impl<D: Described> Answer<D> {
    /// The answer as `stage` reads in a transcript.
    pub fn describe(&self, stage: OutboundStage) -> String {
        match self {
            Self::Neutral => stage.neutral().to_owned(),
            Self::Decided(decision, _) => decision.describe(),
            Self::Fault(reason) => format!("fault {reason}"),
        }
    }
}

/// The answer of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<D> {
    /// No plugin decided anything: as the engine planned.
    Neutral,
    /// The plugin named decided.
    Decided(D, String),
    /// A plugin faulted and its `on_error` asks to try later.
    Fault(String),
}

impl Chain {
    /// `on-deliver` for `delivery`; the host's answers go to `journal`
    /// when recording.
    pub async fn on_deliver(&self, delivery: &DeliveryFacts, journal: Option<&Journal>) -> Answer<DeliverDecision> {
        let scanned = |outcome| match outcome {
            ScanOutcome::Continue(_) => None,
            ScanOutcome::Cancel(reason) => Some(DeliverDecision::Bounce(cancelled(reason))),
        };
        let read = |val| deliver_decision(val, self);
        self.decide(OutboundStage::Deliver, delivery, None, journal, read, scanned)
            .await
    }

    /// `on-defer` for `delivery`, which failed with `failure`.
    pub async fn on_defer(
        &self,
        delivery: &DeliveryFacts,
        failure: &FailureFacts,
        journal: Option<&Journal>,
    ) -> Answer<DeferDecision> {
        let scanned = |outcome| match outcome {
            ScanOutcome::Continue(_) => None,
            ScanOutcome::Cancel(reason) => Some(DeferDecision::Bounce(cancelled(reason))),
        };
        let read = |val| defer_decision(val, self);
        self.decide(OutboundStage::Defer, delivery, Some(failure), journal, read, scanned)
            .await
    }

    /// `on-bounce` for `delivery`, which failed with `failure`.
    pub async fn on_bounce(
        &self,
        delivery: &DeliveryFacts,
        failure: &FailureFacts,
        journal: Option<&Journal>,
    ) -> Answer<BounceDecision> {
        let scanned = |outcome| match outcome {
            ScanOutcome::Continue(None) => None,
            ScanOutcome::Continue(Some(text)) => Some(BounceDecision::Explain(text)),
            ScanOutcome::Cancel(_) => Some(BounceDecision::Suppress),
        };
        let read = bounce_decision;
        self.decide(OutboundStage::Bounce, delivery, Some(failure), journal, read, scanned)
            .await
    }

    /// `on-delivered` for `delivery`, accepted with `reply`; the faults,
    /// described.
    pub async fn on_delivered(&self, delivery: &DeliveryFacts, reply: &str, journal: Option<&Journal>) -> Vec<String> {
        self.notify(OutboundStage::Delivered, delivery, reply, journal).await
    }

    /// `on-quarantined` for `delivery`, quarantined for `reason`; the
    /// faults, described.
    pub async fn on_quarantined(
        &self,
        delivery: &DeliveryFacts,
        reason: &str,
        journal: Option<&Journal>,
    ) -> Vec<String> {
        self.notify(OutboundStage::Quarantined, delivery, reason, journal).await
    }

    /// Tells every plugin and scanner of `stage` (a notification, no
    /// verdict).
    pub(super) async fn notify(
        &self,
        stage: OutboundStage,
        delivery: &DeliveryFacts,
        text: &str,
        journal: Option<&Journal>,
    ) -> Vec<String> {
        let args = vec![delivery_val(delivery), Val::String(text.to_owned())];
        let mut faults = Vec::new();
        for entry in self.outbound_entries(stage) {
            let started = std::time::Instant::now();
            let result = match entry {
                Entry::Wasm(plugin) => call(plugin, stage, args.clone(), 0, journal).await.map(drop),
                Entry::Scanner(scanner) => scanner
                    .scanner
                    .outbound(stage, delivery, None, Some(text))
                    .await
                    .map(drop),
                Entry::Milter(_) => Ok(()),
            };
            let seconds = started.elapsed().as_secs_f64();
            let (name, metrics) = (&entry.config().name, entry.metrics());
            match result {
                Ok(()) => metrics.call(stage.name(), "continue", seconds),
                Err(fault) => {
                    metrics.call(stage.name(), "fault", seconds);
                    metrics.fault(fault.kind());
                    warn!(plugin = %name, stage = stage.name(), kind = fault.kind(), error = %fault, "plugin fault at an outbound stage; going on as if the plugin were absent");
                    faults.push(format!("{name}: {fault}"));
                }
            }
        }
        faults
    }

    /// Whether some plugin or scanner runs at `stage`.
    pub fn runs_outbound(&self, stage: OutboundStage) -> bool {
        self.outbound_entries(stage).next().is_some()
    }

    /// Asks the entries of `stage` about `delivery` (and its `failure`) in
    /// order: a plugin's answer is `read`, a scanner's `scanned`; the first
    /// decision that is not neutral wins.
    async fn decide<D: std::fmt::Debug>(
        &self,
        stage: OutboundStage,
        delivery: &DeliveryFacts,
        failure: Option<&FailureFacts>,
        journal: Option<&Journal>,
        read: impl Fn(Val) -> Result<Option<D>, String>,
        scanned: impl Fn(ScanOutcome) -> Option<D>,
    ) -> Answer<D> {
        let mut args = vec![delivery_val(delivery)];
        args.extend(failure.map(failure_val));
        for entry in self.outbound_entries(stage) {
            let config = entry.config();
            let name = config.name.to_string();
            let shadow = config.mode == EntryMode::Shadow;
            let started = std::time::Instant::now();
            let decided = match entry {
                Entry::Wasm(plugin) => match call(plugin, stage, args.clone(), 1, journal).await {
                    Ok(Some(val)) => read(val).map_err(Fault::Illegal),
                    Ok(None) => Err(Fault::Illegal(format!("{} returned nothing", stage.function()))),
                    Err(fault) => Err(fault),
                },
                Entry::Scanner(scanner) => scanner
                    .scanner
                    .outbound(stage, delivery, failure, None)
                    .await
                    .map(&scanned),
                Entry::Milter(_) => Ok(None),
            };
            let verdict = match &decided {
                Ok(Some(_)) => "decided",
                Ok(None) => "continue",
                Err(_) => "fault",
            };
            entry
                .metrics()
                .call(stage.name(), verdict, started.elapsed().as_secs_f64());
            match decided {
                Ok(Some(decision)) if shadow => {
                    info!(plugin = name, stage = stage.name(), decision = ?decision, "shadow outbound decision (not applied)");
                }
                Ok(Some(decision)) => {
                    info!(plugin = name, stage = stage.name(), decision = ?decision, "outbound plugin decision");
                    return Answer::Decided(decision, name);
                }
                Ok(None) => {}
                Err(fault) => {
                    entry.metrics().fault(fault.kind());
                    let defer = !shadow && config.on_error != OnError::Continue;
                    warn!(
                        plugin = name,
                        stage = stage.name(),
                        kind = fault.kind(),
                        error = %fault,
                        deferred = defer,
                        "plugin fault at an outbound stage; going on as if the plugin were absent"
                    );
                    if defer {
                        return Answer::Fault(format!("plugin {name} faulted at {}: {fault}", stage.name()));
                    }
                }
            }
        }
        Answer::Neutral
    }
}

/// The reason of a scanner's `cancel`.
fn cancelled(reason: Option<String>) -> String {
    reason.unwrap_or_else(|| "cancelled by an MTA Hooks scanner".to_owned())
}

/// Calls `stage`'s function on a fresh instance of `plugin`; `results`
/// values are expected back.
async fn call(
    plugin: &LoadedPlugin,
    stage: OutboundStage,
    args: Vec<Val>,
    results: usize,
    journal: Option<&Journal>,
) -> Result<Option<Val>, Fault> {
    let mut live = plugin.instance().await?;
    live.store.data_mut().journal = journal.cloned();
    let raw = live
        .raw
        .ok_or_else(|| Fault::Illegal(format!("no {INTERFACE} export")))?;
    let interface = raw
        .get_export_index(&mut live.store, None, INTERFACE)
        .ok_or_else(|| Fault::Illegal(format!("no {INTERFACE} export")))?;
    let index = raw
        .get_export_index(&mut live.store, Some(&interface), stage.function())
        .ok_or_else(|| Fault::Illegal(format!("no {} in {INTERFACE}", stage.function())))?;
    let func = raw
        .get_func(&mut live.store, index)
        .ok_or_else(|| Fault::Illegal(format!("{} is not a function", stage.function())))?;
    let budget = plugin.config.time_budget;
    arm(&mut live.store, budget);
    let mut out = vec![Val::Bool(false); results];
    let started = std::time::Instant::now();
    let result = func.call_async(&mut live.store, &args, &mut out).await;
    disarm(&mut live.store);
    debug!(plugin = %plugin.config.name, stage = stage.name(), elapsed = ?started.elapsed(), "outbound hook");
    match result {
        Ok(()) => {
            // Kept warm for the next call in `reused` mode (a plugin that
            // batches events), dropped otherwise; a faulted one never is.
            live.store.data_mut().journal = None;
            plugin.release(live);
            Ok(out.into_iter().next())
        }
        Err(e) => Err(classify(&e, live.store.data(), budget)),
    }
}
