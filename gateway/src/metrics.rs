//! Prometheus metrics (the `prometheus` crate), served as text at
//! `/metrics` on the admin listener.
//!
//! Names follow prometheus.io/docs/practices/naming: the `mailgate_`
//! prefix, base units, `_total` on counters. Labels are bounded: listener,
//! command, reply class, stage, plugin, hook, verdict, fault kind, state,
//! result. Never addresses, domains, IPs or queue ids.
//!
//! One registry per process (`metrics()`): a process runs one gateway,
//! and a reload keeps the counters. Hot paths hold handles created once
//! (per listener, per plugin, fixed tables), not label lookups per event.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// A metric's name, help text and label names.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The full name.
    pub name: &'static str,
    /// The help text (also in the README).
    pub help: &'static str,
    /// Its label names.
    pub labels: &'static [&'static str],
}

/// `mailgate_build_info{version}`: always 1.
pub const BUILD_INFO: Metric = Metric {
    name: "mailgate_build_info",
    help: "Always 1; the version label says which build is running.",
    labels: &["version"],
};
/// `mailgate_smtp_connections_total{listener,result}`.
pub const SMTP_CONNECTIONS: Metric = Metric {
    name: "mailgate_smtp_connections_total",
    help: "SMTP connections by listener; result is accepted, or refused at a connection limit.",
    labels: &["listener", "result"],
};
/// `mailgate_smtp_sessions_active{listener}`.
pub const SMTP_SESSIONS_ACTIVE: Metric = Metric {
    name: "mailgate_smtp_sessions_active",
    help: "SMTP sessions open now, by listener.",
    labels: &["listener"],
};
/// `mailgate_smtp_commands_total{command,result}`.
pub const SMTP_COMMANDS: Metric = Metric {
    name: "mailgate_smtp_commands_total",
    help: "SMTP commands by verb (OTHER for unknown ones) and the class of their reply (2xx, 3xx, 4xx, 5xx).",
    labels: &["command", "result"],
};
/// `mailgate_smtp_received_bytes_total{listener}`.
pub const SMTP_RECEIVED_BYTES: Metric = Metric {
    name: "mailgate_smtp_received_bytes_total",
    help: "Octets of message content received in DATA, by listener.",
    labels: &["listener"],
};
/// `mailgate_messages_total{stage,result}`.
pub const MESSAGES: Metric = Metric {
    name: "mailgate_messages_total",
    help: "Messages accepted at data (queued, discarded, quarantined) or refused (rejected 5xx, tempfailed 4xx) by the relay policy, a plugin or a limit, by the stage that decided.",
    labels: &["stage", "result"],
};
/// `mailgate_plugin_calls_total{plugin,hook,verdict}`.
pub const PLUGIN_CALLS: Metric = Metric {
    name: "mailgate_plugin_calls_total",
    help: "Plugin hook calls by plugin, hook and verdict (fault when the call faulted).",
    labels: &["plugin", "hook", "verdict"],
};
/// `mailgate_plugin_call_duration_seconds{plugin,hook}`.
pub const PLUGIN_CALL_DURATION: Metric = Metric {
    name: "mailgate_plugin_call_duration_seconds",
    help: "Time spent in one plugin hook call, instantiation included.",
    labels: &["plugin", "hook"],
};
/// `mailgate_plugin_faults_total{plugin,kind}`.
pub const PLUGIN_FAULTS: Metric = Metric {
    name: "mailgate_plugin_faults_total",
    help: "Plugin faults by plugin and kind (trap, timeout, memory, illegal_outcome, init, instantiate, milter).",
    labels: &["plugin", "kind"],
};
/// `mailgate_plugin_shadow_decisions_total{plugin,stage,agreed}`.
pub const PLUGIN_SHADOW_DECISIONS: Metric = Metric {
    name: "mailgate_plugin_shadow_decisions_total",
    help: "Decisions of shadow-mode chain entries by plugin, stage, and whether they agreed with what the chain did.",
    labels: &["plugin", "stage", "agreed"],
};
/// `mailgate_queue_messages{state}`.
pub const QUEUE_MESSAGES: Metric = Metric {
    name: "mailgate_queue_messages",
    help: "Messages in the delivery queue by state: waiting (for a retry), ready (due, waiting for a slot), delivering, held.",
    labels: &["state"],
};
/// `mailgate_quarantine_messages`.
pub const QUARANTINE_MESSAGES: Metric = Metric {
    name: "mailgate_quarantine_messages",
    help: "Messages held in the quarantine.",
    labels: &[],
};
/// `mailgate_quarantine_oldest_age_seconds`.
pub const QUARANTINE_OLDEST: Metric = Metric {
    name: "mailgate_quarantine_oldest_age_seconds",
    help: "Age of the oldest message in the quarantine (0 when it is empty).",
    labels: &[],
};
/// `mailgate_delivery_attempts_total{result}`.
pub const DELIVERY_ATTEMPTS: Metric = Metric {
    name: "mailgate_delivery_attempts_total",
    help: "Delivery attempts of a message by result: delivered (every recipient done), deferred (some retried later), failed (the rest bounced).",
    labels: &["result"],
};
/// `mailgate_delivery_duration_seconds{result}`.
pub const DELIVERY_DURATION: Metric = Metric {
    name: "mailgate_delivery_duration_seconds",
    help: "Time one delivery attempt of a message took, by result.",
    labels: &["result"],
};
/// `mailgate_dns_lookups_total{type,result}`.
pub const DNS_LOOKUPS: Metric = Metric {
    name: "mailgate_dns_lookups_total",
    help: "DNS lookups by type (mx and ip for delivery; a, aaaa, mx, txt and ptr for plugins) and result (found, nxdomain, nodata, error).",
    labels: &["type", "result"],
};
/// `mailgate_tls_handshakes_total{direction,result}`.
pub const TLS_HANDSHAKES: Metric = Metric {
    name: "mailgate_tls_handshakes_total",
    help: "TLS handshakes by direction (inbound, outbound) and result (ok, failed).",
    labels: &["direction", "result"],
};
/// `mailgate_delivery_tls_total{policy,result}`.
pub const DELIVERY_TLS: Metric = Metric {
    name: "mailgate_delivery_tls_total",
    help: "Outbound SMTP sessions by TLS policy (dane, mta-sts, require, opportunistic, none) and result (success, or the RFC 8460 failure type).",
    labels: &["policy", "result"],
};
/// The policies of `mailgate_delivery_tls_total`.
pub const TLS_POLICIES: [&str; 5] = ["dane", "mta-sts", "require", "opportunistic", "none"];
/// Its results: success, then the failure types of RFC 8460.
pub const TLS_RESULTS: [&str; 7] = [
    "success",
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "sts-policy-fetch-error",
];
/// `mailgate_config_reloads_total{result}`.
pub const CONFIG_RELOADS: Metric = Metric {
    name: "mailgate_config_reloads_total",
    help: "Configuration reloads by result (success, failure).",
    labels: &["result"],
};
/// `mailgate_config_last_reload_successful`.
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: Metric = Metric {
    name: "mailgate_config_last_reload_successful",
    help: "1 when the last reload succeeded (or none was tried), 0 when it failed and the previous configuration is serving.",
    labels: &[],
};

/// Every metric, in the README's order.
pub const ALL: &[Metric] = &[
    BUILD_INFO,
    SMTP_CONNECTIONS,
    SMTP_SESSIONS_ACTIVE,
    SMTP_COMMANDS,
    SMTP_RECEIVED_BYTES,
    MESSAGES,
    PLUGIN_CALLS,
    PLUGIN_CALL_DURATION,
    PLUGIN_FAULTS,
    PLUGIN_SHADOW_DECISIONS,
    QUEUE_MESSAGES,
    QUARANTINE_MESSAGES,
    QUARANTINE_OLDEST,
    DELIVERY_ATTEMPTS,
    DELIVERY_DURATION,
    DNS_LOOKUPS,
    TLS_HANDSHAKES,
    DELIVERY_TLS,
    CONFIG_RELOADS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
];

/// The verbs `mailgate_smtp_commands_total` names; anything else is `OTHER`.
pub const COMMANDS: &[&str] = &[
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "BDAT",
    "OTHER",
];

/// Reply classes, by the first digit of the code.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Hooks, by `Stage::name`.
pub const HOOKS: [&str; 5] = ["connect", "helo", "mail", "rcpt", "data"];

/// Plugin verdicts, plus `fault`.
pub const VERDICTS: [&str; 9] = [
    "continue",
    "accept",
    "reject",
    "tempfail",
    "disconnect",
    "discard",
    "quarantine",
    "hold",
    "fault",
];

/// Fault kinds, by `Fault::kind`.
pub const FAULT_KINDS: [&str; 7] = [
    "trap",
    "timeout",
    "memory",
    "illegal_outcome",
    "init",
    "instantiate",
    "milter",
];

/// Seconds: 50 µs to 2.5 s, for plugin calls.
const PLUGIN_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Seconds: 5 ms to 10 min, for deliveries.
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The registry and its metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: IntCounterVec,
    sessions: IntGaugeVec,
    received: IntCounterVec,
    commands: Vec<[IntCounter; 4]>,
    messages: IntCounterVec,
    plugin_calls: IntCounterVec,
    plugin_duration: HistogramVec,
    plugin_faults: IntCounterVec,
    plugin_shadow: IntCounterVec,
    /// `mailgate_queue_messages` by state: waiting, ready, delivering.
    pub queue: [IntGauge; 4],
    /// `mailgate_quarantine_messages` and `mailgate_quarantine_oldest_age_seconds`.
    pub quarantine: [IntGauge; 2],
    delivery_attempts: [IntCounter; 3],
    delivery_duration: [Histogram; 3],
    dns: [[IntCounter; 4]; 6],
    tls: [[IntCounter; 2]; 2],
    delivery_tls: [[IntCounter; 7]; 5],
    reloads: [IntCounter; 2],
    /// `mailgate_config_last_reload_successful`.
    pub last_reload_successful: IntGauge,
    plugin_defined: Mutex<PluginDefined>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn opts(metric: Metric) -> Opts {
    Opts::new(metric.name, metric.help)
}

impl Metrics {
    #[allow(
        clippy::expect_used,
        reason = "the names and labels are the constants above, which a unit test registers"
    )]
    fn new() -> Self {
        let registry = Registry::new();
        let register = |collector: Box<dyn prometheus::core::Collector>| {
            registry.register(collector).expect("valid, unique metric");
        };
        let counter = |metric: Metric| {
            let vec = IntCounterVec::new(opts(metric), metric.labels).expect("valid metric");
            register(Box::new(vec.clone()));
            vec
        };
        let gauge = |metric: Metric| {
            let vec = IntGaugeVec::new(opts(metric), metric.labels).expect("valid metric");
            register(Box::new(vec.clone()));
            vec
        };
        let histogram = |metric: Metric, buckets: &[f64]| {
            let opts = HistogramOpts::new(metric.name, metric.help).buckets(buckets.to_vec());
            let vec = HistogramVec::new(opts, metric.labels).expect("valid metric");
            register(Box::new(vec.clone()));
            vec
        };

        gauge(BUILD_INFO).with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let commands = counter(SMTP_COMMANDS);
        let commands = COMMANDS
            .iter()
            .map(|verb| CLASSES.map(|class| commands.with_label_values(&[*verb, class])))
            .collect();
        let queue = gauge(QUEUE_MESSAGES);
        let attempts = counter(DELIVERY_ATTEMPTS);
        let durations = histogram(DELIVERY_DURATION, DELIVERY_BUCKETS);
        let results = ["delivered", "deferred", "failed"];
        let dns = counter(DNS_LOOKUPS);
        let tls = counter(TLS_HANDSHAKES);
        let delivery_tls = counter(DELIVERY_TLS);
        let reloads = counter(CONFIG_RELOADS);
        let last = IntGauge::with_opts(opts(CONFIG_LAST_RELOAD_SUCCESSFUL)).expect("valid metric");
        register(Box::new(last.clone()));
        last.set(1);
        let quarantine = [QUARANTINE_MESSAGES, QUARANTINE_OLDEST].map(|metric| {
            let gauge = IntGauge::with_opts(opts(metric)).expect("valid metric");
            register(Box::new(gauge.clone()));
            gauge
        });
        Self {
            connections: counter(SMTP_CONNECTIONS),
            sessions: gauge(SMTP_SESSIONS_ACTIVE),
            received: counter(SMTP_RECEIVED_BYTES),
            commands,
            messages: counter(MESSAGES),
            plugin_calls: counter(PLUGIN_CALLS),
            plugin_duration: histogram(PLUGIN_CALL_DURATION, PLUGIN_BUCKETS),
            plugin_faults: counter(PLUGIN_FAULTS),
            plugin_shadow: counter(PLUGIN_SHADOW_DECISIONS),
            queue: ["waiting", "ready", "delivering", "held"].map(|state| queue.with_label_values(&[state])),
            quarantine,
            delivery_attempts: results.map(|r| attempts.with_label_values(&[r])),
            delivery_duration: results.map(|r| durations.with_label_values(&[r])),
            dns: DNS_KINDS.map(|kind| {
                ["found", "nxdomain", "nodata", "error"].map(|result| dns.with_label_values(&[kind, result]))
            }),
            tls: ["inbound", "outbound"]
                .map(|direction| ["ok", "failed"].map(|r| tls.with_label_values(&[direction, r]))),
            delivery_tls: TLS_POLICIES.map(|p| TLS_RESULTS.map(|r| delivery_tls.with_label_values(&[p, r]))),
            reloads: ["success", "failure"].map(|r| reloads.with_label_values(&[r])),
            last_reload_successful: last,
            plugin_defined: Mutex::default(),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The handles of one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: self.connections.with_label_values(&[name, "accepted"]),
            refused: self.connections.with_label_values(&[name, "refused"]),
            sessions: self.sessions.with_label_values(&[name]),
            received: self.received.with_label_values(&[name]),
        }
    }

    /// Counts a command by its verb (one of `COMMANDS`) and reply code.
    pub fn command(&self, verb: &str, code: u16) {
        let row = COMMANDS.iter().position(|v| *v == verb).unwrap_or(COMMANDS.len() - 1);
        let class = usize::from(code / 100).clamp(2, 5) - 2;
        if let Some(counter) = self.commands.get(row).and_then(|r| r.get(class)) {
            counter.inc();
        }
    }

    /// Counts a message decided at `stage` with `result`.
    pub fn message(&self, stage: &str, result: &str) {
        self.messages.with_label_values(&[stage, result]).inc();
    }

    /// Counts a shadow entry's decision at `stage`.
    pub fn shadow_decision(&self, plugin: &str, stage: &str, agreed: bool) {
        let agreed = if agreed { "true" } else { "false" };
        self.plugin_shadow.with_label_values(&[plugin, stage, agreed]).inc();
    }

    /// The handles of one plugin.
    pub fn plugin(&self, name: &str) -> PluginMetrics {
        PluginMetrics {
            calls: HOOKS
                .map(|hook| VERDICTS.map(|verdict| self.plugin_calls.with_label_values(&[name, hook, verdict]))),
            duration: HOOKS.map(|hook| self.plugin_duration.with_label_values(&[name, hook])),
            faults: FAULT_KINDS.map(|kind| self.plugin_faults.with_label_values(&[name, kind])),
        }
    }

    /// Counts a delivery attempt that took `seconds`.
    pub fn delivery(&self, result: DeliveryResult, seconds: f64) {
        let i = result as usize;
        self.delivery_attempts[i].inc();
        self.delivery_duration[i].observe(seconds);
    }

    /// Counts a DNS lookup.
    pub fn dns(&self, kind: DnsKind, result: DnsResult) {
        self.dns[kind as usize][result as usize].inc();
    }

    /// Counts a TLS handshake.
    pub fn tls(&self, direction: Direction, ok: bool) {
        self.tls[direction as usize][usize::from(!ok)].inc();
    }

    /// Counts an outbound session under TLS `policy` with `result` (both
    /// from `TLS_POLICIES` and `TLS_RESULTS`; others are not counted).
    pub fn delivery_tls(&self, policy: &str, result: &str) {
        let p = TLS_POLICIES.iter().position(|x| *x == policy);
        let r = TLS_RESULTS.iter().position(|x| *x == result);
        if let (Some(p), Some(r)) = (p, r) {
            self.delivery_tls[p][r].inc();
        }
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
        self.last_reload_successful.set(i64::from(ok));
    }
}

/// How a delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Every recipient is done.
    Delivered = 0,
    /// Some recipients are retried later.
    Deferred = 1,
    /// The pending recipients failed for good (bounced).
    Failed = 2,
}

/// The `type` label of `mailgate_dns_lookups_total`, by `DnsKind`.
const DNS_KINDS: [&str; 6] = ["mx", "ip", "a", "aaaa", "txt", "ptr"];

/// The type of a DNS lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsKind {
    /// MX records (delivery or a plugin).
    Mx = 0,
    /// A and AAAA records of a next hop (delivery).
    Ip = 1,
    /// A records (a plugin).
    A = 2,
    /// AAAA records (a plugin).
    Aaaa = 3,
    /// TXT records (a plugin).
    Txt = 4,
    /// PTR records (a plugin).
    Ptr = 5,
}

/// How a DNS lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsResult {
    /// Records found.
    Found = 0,
    /// NXDOMAIN.
    NxDomain = 1,
    /// The name has no records of the type.
    NoData = 2,
    /// SERVFAIL, timeout, network error.
    Error = 3,
}

/// The direction of a TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A client's STARTTLS or implicit TLS.
    Inbound = 0,
    /// Our STARTTLS to a next hop.
    Outbound = 1,
}

/// One listener's handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Connections served.
    pub accepted: IntCounter,
    /// Connections refused at a limit.
    pub refused: IntCounter,
    /// Sessions open now.
    pub sessions: IntGauge,
    /// DATA octets received.
    pub received: IntCounter,
}

impl ListenerMetrics {
    /// Counts a session as active until the guard drops.
    pub fn session(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard(self.sessions.clone())
    }
}

/// Decrements `mailgate_smtp_sessions_active` when dropped.
#[derive(Debug)]
pub struct SessionGuard(IntGauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One plugin's handles.
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    calls: [[IntCounter; 9]; 5],
    duration: [Histogram; 5],
    faults: [IntCounter; 7],
}

impl PluginMetrics {
    /// Counts a call to `hook` (a `HOOKS` name) that ended with `verdict`
    /// (a `VERDICTS` name) after `seconds`.
    pub fn call(&self, hook: &str, verdict: &str, seconds: f64) {
        let Some(h) = HOOKS.iter().position(|x| *x == hook) else {
            return;
        };
        if let Some(v) = VERDICTS.iter().position(|x| *x == verdict) {
            self.calls[h][v].inc();
        }
        self.duration[h].observe(seconds);
    }

    /// Counts a fault of `kind` (a `FAULT_KINDS` name).
    pub fn fault(&self, kind: &str) {
        if let Some(k) = FAULT_KINDS.iter().position(|x| *x == kind) {
            self.faults[k].inc();
        }
    }
}

/// Most label combinations one plugin may create over all its metrics.
pub const MAX_PLUGIN_SERIES: usize = 1000;

/// The metrics plugins define by using them (the `metrics` capability).
#[derive(Debug, Default)]
struct PluginDefined {
    /// By exported name.
    families: HashMap<String, Family>,
    /// Per plugin, the (family, label values) it created.
    series: HashMap<String, HashSet<(String, Vec<String>)>>,
    /// (plugin, problem) already logged.
    warned: HashSet<(String, String)>,
}

#[derive(Debug)]
enum Family {
    Counter(IntCounterVec, Vec<String>),
    Histogram(HistogramVec, Vec<String>),
}

/// A plugin's metric or label name: `[a-z][a-z0-9_]{0,63}`.
fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Metrics {
    /// Adds to a plugin's counter `name` (`mailgate_plugin_<name>_total`).
    pub fn plugin_counter_add(&self, plugin: &str, name: &str, labels: &[(String, String)], value: u64) {
        let exported = format!("mailgate_plugin_{}_total", name.strip_suffix("_total").unwrap_or(name));
        self.plugin_metric(plugin, name, exported, labels, true, |family, values| {
            if let Family::Counter(vec, _) = family {
                vec.with_label_values(values).inc_by(value);
            }
        });
    }

    /// Records a value in a plugin's histogram `name` (`mailgate_plugin_<name>`).
    pub fn plugin_histogram_observe(&self, plugin: &str, name: &str, labels: &[(String, String)], value: f64) {
        let exported = format!("mailgate_plugin_{name}");
        self.plugin_metric(plugin, name, exported, labels, false, |family, values| {
            if let Family::Histogram(vec, _) = family {
                vec.with_label_values(values).observe(value);
            }
        });
    }

    fn plugin_metric(
        &self,
        plugin: &str,
        name: &str,
        exported: String,
        labels: &[(String, String)],
        counter: bool,
        record: impl FnOnce(&Family, &[&str]),
    ) {
        let mut defined = self.plugin_defined.lock().unwrap_or_else(PoisonError::into_inner);
        let problem = match self.plugin_series(&mut defined, plugin, name, &exported, labels, counter) {
            Ok(values) => {
                if let Some(family) = defined.families.get(&exported) {
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    record(family, &values);
                }
                return;
            }
            Err(problem) => problem,
        };
        if defined.warned.insert((plugin.to_owned(), problem.clone())) {
            tracing::warn!(plugin, metric = name, "plugin metric ignored: {problem}");
        }
    }

    /// The label values in the family's order, creating the family on
    /// first use; an error says why the use is ignored.
    fn plugin_series(
        &self,
        defined: &mut PluginDefined,
        plugin: &str,
        name: &str,
        exported: &str,
        labels: &[(String, String)],
        counter: bool,
    ) -> Result<Vec<String>, String> {
        if !valid_plugin_name(name) {
            return Err(format!(
                "{name:?} is not a valid metric name ([a-z][a-z0-9_]*, at most 64)"
            ));
        }
        for (label, _) in labels {
            if !valid_plugin_name(label) || label == "plugin" {
                return Err(format!("{label:?} is not a valid label name for {name}"));
            }
        }
        if !defined.families.contains_key(exported) {
            let mut names = vec!["plugin".to_owned()];
            names.extend(labels.iter().map(|(label, _)| label.clone()));
            let unique: HashSet<&String> = names.iter().collect();
            if unique.len() != names.len() {
                return Err(format!("{name} repeats a label"));
            }
            let help = format!(
                "Plugin-defined {} `{name}`.",
                if counter { "counter" } else { "histogram" }
            );
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let family = if counter {
                IntCounterVec::new(Opts::new(exported, help), &refs).map(|vec| {
                    let _ = self.registry.register(Box::new(vec.clone()));
                    Family::Counter(vec, names)
                })
            } else {
                HistogramVec::new(HistogramOpts::new(exported, help), &refs).map(|vec| {
                    let _ = self.registry.register(Box::new(vec.clone()));
                    Family::Histogram(vec, names)
                })
            };
            let family = family.map_err(|e| format!("cannot define {name}: {e}"))?;
            defined.families.insert(exported.to_owned(), family);
        }
        let names = match defined.families.get(exported) {
            Some(Family::Counter(_, names)) if counter => names,
            Some(Family::Histogram(_, names)) if !counter => names,
            _ => return Err(format!("{exported} is already defined as another kind of metric")),
        };
        if names.len() != labels.len() + 1 {
            return Err(format!("{name} was first used with the labels {:?}", &names[1..]));
        }
        let mut values = vec![plugin.to_owned()];
        for label in &names[1..] {
            match labels.iter().find(|(given, _)| given == label) {
                Some((_, value)) => values.push(value.clone()),
                None => return Err(format!("{name} was first used with the labels {:?}", &names[1..])),
            }
        }
        let series = defined.series.entry(plugin.to_owned()).or_default();
        let key = (exported.to_owned(), values.clone());
        if !series.contains(&key) {
            if series.len() >= MAX_PLUGIN_SERIES {
                return Err(format!("more than {MAX_PLUGIN_SERIES} label combinations"));
            }
            series.insert(key);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_once_with_help_and_type() {
        let m = metrics();
        m.listener("test").accepted.inc();
        m.command("MAIL", 250);
        m.command("XYZZY", 500);
        m.message("rcpt", "rejected");
        let p = m.plugin("p");
        p.call("mail", "continue", 0.001);
        p.fault("trap");
        m.shadow_decision("p", "mail", true);
        m.delivery(DeliveryResult::Delivered, 0.2);
        m.dns(DnsKind::Mx, DnsResult::Found);
        m.tls(Direction::Inbound, true);
        m.reload(true);
        let text = m.render();
        for metric in ALL {
            let help = format!("# HELP {} ", metric.name);
            assert_eq!(text.matches(&help).count(), 1, "{}", metric.name);
            assert!(text.contains(&format!("# TYPE {} ", metric.name)), "{}", metric.name);
        }
        assert!(text.contains(r#"mailgate_smtp_commands_total{command="OTHER",result="5xx"} 1"#));
        assert!(text.contains(r#"mailgate_build_info{version=""#));
    }

    /// The metric names an expression or a text mentions, with histogram
    /// series suffixes taken off.
    fn mentioned(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("mailgate_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| ALL.iter().any(|m| m.name == *base))
                .unwrap_or(name);
            names.push(base.to_owned());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        for metric in ALL {
            assert!(
                readme.contains(&format!("`{}`", metric.name)),
                "README.md does not document {}",
                metric.name
            );
        }
    }

    #[test]
    fn the_dashboard_charts_every_metric_and_only_real_ones() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json")).unwrap();
        let mut charted = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                charted.extend(mentioned(target["expr"].as_str().unwrap()));
            }
        }
        for name in &charted {
            assert!(
                ALL.iter().any(|m| m.name == name),
                "the dashboard charts {name}, which does not exist"
            );
        }
        for metric in ALL {
            assert!(
                charted.iter().any(|c| c == metric.name),
                "the dashboard lacks {}",
                metric.name
            );
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        for metric in ALL {
            assert!(metric.name.starts_with("mailgate_"), "{}", metric.name);
            let counter = metric.name.ends_with("_total");
            let counters = [
                SMTP_CONNECTIONS.name,
                SMTP_COMMANDS.name,
                SMTP_RECEIVED_BYTES.name,
                MESSAGES.name,
                PLUGIN_CALLS.name,
                PLUGIN_FAULTS.name,
                PLUGIN_SHADOW_DECISIONS.name,
                DELIVERY_ATTEMPTS.name,
                DNS_LOOKUPS.name,
                TLS_HANDSHAKES.name,
                DELIVERY_TLS.name,
                CONFIG_RELOADS.name,
            ];
            assert_eq!(counter, counters.contains(&metric.name), "{}", metric.name);
            for label in metric.labels {
                assert!(
                    !["ip", "address", "domain", "queue_id", "sender", "recipient"].contains(label),
                    "{}: unbounded label {label}",
                    metric.name
                );
            }
        }
    }
}
