//! `mailgate plugin test`: the plugin author's test loop. Replays recorded
//! transcripts against a plugin (the host answering DNS, time and
//! key-value reads from the transcript), prints the verdict and
//! modifications per stage, and checks expectations.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::plugin::transcript::{self, ReplayHost, Replayed, Transcript};
use crate::plugin::{
    Capability, Chain, HostServices, InstanceMode, OnError, OutboundStage, PluginConfig, Runtime, RuntimeSettings,
};

/// The outbound stages' verdicts, besides `continue`, `hold` and `fault`.
const OUTBOUND_VERDICTS: [&str; 10] = [
    "reroute",
    "tls",
    "defer-until",
    "bounce",
    "default",
    "retry-at",
    "send",
    "suppress",
    "explain",
    "retry",
];
use crate::smtp::session::Stage;

/// What `mailgate plugin test` was asked.
#[derive(Debug)]
pub struct TestRun {
    /// The component.
    pub plugin: PathBuf,
    /// Its settings: a TOML file (the `[plugin.settings]` table's keys) or JSON.
    pub settings: Option<PathBuf>,
    /// Transcript files, or directories of them.
    pub transcripts: Vec<PathBuf>,
    /// A message to test with instead of (or besides) transcripts.
    pub message: Option<Message>,
    /// `VERDICT` (the transaction's) or `STAGE=VERDICT`.
    pub expect: Vec<String>,
    /// `Name: value` header fields the plugin must add or set.
    pub expect_header: Vec<String>,
}

/// A message file with the envelope to test it with.
#[derive(Debug)]
pub struct Message {
    /// The `.eml` file.
    pub eml: PathBuf,
    /// The reverse-path ("" for the null path).
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
}

/// A usage problem: exit 64.
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(64)
}

/// The settings file as JSON: a JSON object as it is, else TOML, whatever
/// the file is called (a process substitution has no extension).
fn settings_json(path: Option<&Path>) -> Result<String, String> {
    let Some(path) = path else { return Ok("{}".to_owned()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::to_value(table).map_err(|e| e.to_string())?
    };
    Ok(value.to_string())
}

fn transcript_files(given: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in given {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err("no transcript given (a .json file or a directory of them)".into());
    }
    Ok(files)
}

/// The transaction's verdict: the first one other than `continue`.
fn overall(report: &[Replayed]) -> &str {
    report
        .iter()
        .map(|r| r.verdict.as_str())
        .find(|v| !matches!(*v, "continue" | "not reached" | "default" | "send"))
        .unwrap_or("continue")
}

/// Checks the expectations; the failures, described.
fn failed_expectations(expect: &[String], headers: &[String], report: &[Replayed]) -> Vec<String> {
    let mut failures = Vec::new();
    let added: Vec<&String> = report.iter().flat_map(|r| &r.headers).collect();
    for wanted in headers {
        let matches = |field: &&String| {
            let (name, value) = field.split_once(": ").unwrap_or((field, ""));
            let (wanted_name, wanted_value) = wanted.split_once(':').unwrap_or((wanted, ""));
            name.eq_ignore_ascii_case(wanted_name.trim()) && value == wanted_value.trim()
        };
        if !added.iter().any(matches) {
            let got: Vec<&str> = added.iter().map(|h| h.as_str()).collect();
            failures.push(format!("expected header {wanted:?}, the plugin added or set {got:?}"));
        }
    }
    for expectation in expect {
        let (stage, wanted) = match expectation.split_once('=') {
            Some((stage, wanted)) => (Some(stage), wanted),
            None => (None, expectation.as_str()),
        };
        let got = match stage {
            None => overall(report).to_owned(),
            Some(stage) => match report.iter().find(|r| r.stage == stage) {
                Some(line) => line.verdict.clone(),
                None => "absent".to_owned(),
            },
        };
        if got != wanted {
            failures.push(format!("expected {expectation}, got {got}"));
        }
    }
    failures
}

async fn replay_one(
    runtime: &Arc<Runtime>,
    config: &PluginConfig,
    transcript: &Transcript,
) -> Result<Vec<Replayed>, String> {
    let host = Arc::new(ReplayHost::new(transcript));
    let services = HostServices {
        dns: host.clone(),
        kv: host.clone(),
        clock: host.clone(),
        dkim: host,
        http: Arc::new(crate::plugin::ReplayHttp::new(&transcript.host_calls)),
        http_policy: Arc::default(),
    };
    let mut config = config.clone();
    if !transcript.outbound.is_empty() {
        // Recorded at the outbound stages: the plugin must export them.
        config.outbound = vec![
            OutboundStage::Deliver,
            OutboundStage::Defer,
            OutboundStage::Bounce,
            OutboundStage::Delivered,
            OutboundStage::Quarantined,
        ];
    }
    // The routes the recording named: where mail came from, and where a
    // plugin sent it (`reroute route NAME`).
    let routes = transcript
        .outbound
        .iter()
        .flat_map(|e| {
            let rerouted = e.outcome.strip_prefix("reroute route ").map(str::to_owned);
            e.delivery.route.clone().into_iter().chain(rerouted)
        })
        .collect();
    let chain = Chain::load(Arc::clone(runtime), services, vec![config], routes)
        .await
        .map_err(|errors| {
            errors
                .into_iter()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
    let mut report = transcript::replay(&chain, transcript).await;
    report.extend(crate::plugin::replay_outbound(&chain, &transcript.outbound).await);
    Ok(report)
}

/// A message file with every line ending in CRLF, as SMTP would carry it.
fn canonical(bytes: &[u8]) -> Vec<u8> {
    crate::plugin::canonical_line_endings(bytes)
}

/// Runs `mailgate plugin test`.
pub async fn run(test: TestRun) -> ExitCode {
    for expectation in &test.expect {
        let verdict = expectation.split_once('=').map_or(expectation.as_str(), |(_, v)| v);
        let stage_ok = expectation
            .split_once('=')
            .is_none_or(|(s, _)| crate::metrics::HOOKS.contains(&s) || OutboundStage::named(s).is_some());
        // Every verdict a plugin can give, but `accept`, which a replay
        // shows as `continue` (the chain's decision is the same), and the
        // outbound stages' verdicts.
        let known: Vec<&str> = crate::metrics::VERDICTS
            .into_iter()
            .filter(|v| *v != "accept")
            .chain(OUTBOUND_VERDICTS)
            .collect();
        if !stage_ok || !known.contains(&verdict) {
            return usage(format!(
                "--expect {expectation}: give VERDICT or STAGE=VERDICT, with a stage of connect, helo, mail, rcpt, data, deliver, defer, bounce, delivered and a verdict of {}",
                known.join(", ")
            ));
        }
    }
    let settings = match settings_json(test.settings.as_deref()) {
        Ok(settings) => settings,
        Err(e) => return usage(e),
    };
    let mut transcripts: Vec<(String, Transcript)> = Vec::new();
    if let Some(message) = &test.message {
        let bytes = match std::fs::read(&message.eml) {
            Ok(bytes) => canonical(&bytes),
            Err(e) => return usage(format!("cannot read {}: {e}", message.eml.display())),
        };
        let made = transcript::from_message(&bytes, &message.from, &message.to);
        transcripts.push((message.eml.display().to_string(), made));
    }
    if !test.transcripts.is_empty() {
        let files = match transcript_files(&test.transcripts) {
            Ok(files) => files,
            Err(e) => return usage(e),
        };
        for file in files {
            match transcript::read(&file) {
                Ok(transcript) => transcripts.push((file.display().to_string(), transcript)),
                Err(e) => return usage(e),
            }
        }
    }
    let memory = 256 << 20;
    let runtime = match Runtime::new(&RuntimeSettings {
        cache_dir: std::env::temp_dir().join("mailgate-plugin-cache"),
        max_instances: 4,
        max_memory_bytes: memory,
    }) {
        Ok(runtime) => runtime,
        Err(e) => return usage(e),
    };
    let config = PluginConfig {
        name: Arc::from("under-test"),
        kind: crate::plugin::EntryKind::Wasm,
        mode: crate::plugin::EntryMode::Live,
        path: test.plugin.clone(),
        stages: vec![Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data],
        outbound: Vec::new(),
        settings,
        memory_limit: memory,
        time_budget: Duration::from_secs(5),
        on_error: OnError::Tempfail,
        instances: InstanceMode::Fresh,
        capabilities: vec![
            Capability::Log,
            Capability::Clock,
            Capability::Dns,
            Capability::Kv,
            Capability::Metrics,
            Capability::Dkim,
            Capability::Http,
        ],
        sha256: None,
        listeners: Vec::new(),
        // Replay answers what was recorded, wherever it went.
        http: crate::plugin::HttpPolicy {
            allow: vec!["*".to_owned()],
            ..crate::plugin::HttpPolicy::default()
        },
    };
    let mut failures = 0;
    for (name, transcript) in &transcripts {
        let report = match replay_one(&runtime, &config, transcript).await {
            Ok(report) => report,
            Err(e) => return usage(e),
        };
        println!("{name}");
        for line in &report {
            let detail = match (line.detail.is_empty(), line.verdict.as_str()) {
                (true, _) => String::new(),
                // "not reached: the client was turned away at mail"
                (false, "not reached") => format!(": {}", line.detail),
                (false, _) => format!(" {}", line.detail),
            };
            println!("  {:<40} {}{detail}", line.label, line.verdict);
            for m in &line.modifications {
                println!("  {:<40}   + {m}", "");
            }
            if !line.recorded.is_empty() {
                println!("  {:<40}   (recorded: {})", "", line.recorded);
            }
        }
        let verdict = overall(&report);
        let failed = failed_expectations(&test.expect, &test.expect_header, &report);
        if failed.is_empty() {
            println!("  result: {verdict}");
        } else {
            failures += 1;
            for failure in failed {
                println!("  FAILED: {failure}");
            }
        }
    }
    if failures > 0 {
        println!(
            "{failures} of {} transcript(s) failed their expectations",
            transcripts.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
