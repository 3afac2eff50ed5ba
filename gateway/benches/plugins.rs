//! Plugin cost per transaction and per hook call, through the gateway's own
//! plugin host (no sockets): a transaction is the five stages run through
//! the chain on a fresh `ChainSession`, which instantiates each plugin on
//! its first call (or takes a warm one in `reused` mode), then ends.
//!
//! Run with `bench/plugins.sh`, which builds the plugins first:
//!
//! ```text
//! cargo bench -p mailgate --bench plugins -- RUST_DIR PYTHON_WASM
//! ```
//!
//! Prints median and p99 per scenario: the whole transaction, the cost it
//! adds per plugin over an empty chain, and one warm hook call; then the
//! cost of one outbound hook per delivery (`on-deliver` on a fresh
//! instance of a Rust plugin, which answers `continue`).

#![allow(clippy::panic, clippy::expect_used, reason = "a benchmark stops on a setup failure")]

mod common;

use common::plugin;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailgate::plugin::{
    Answer, Chain, DeliveryFacts, HostServices, InstanceMode, OutboundStage, ParsedMessage, PluginConfig, Runtime,
    RuntimeSettings, StageCall,
};
use mailgate::smtp::command::MailParameters;
use mailgate::smtp::{Mailbox, ReversePath};

struct Scenario {
    label: &'static str,
    plugins: Vec<PluginConfig>,
    transactions: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

struct Measured {
    transactions: Vec<Duration>,
    warm_calls: Vec<Duration>,
}

async fn measure(scenario: &Scenario, cache: &Path, message: &Arc<ParsedMessage>) -> Measured {
    let chain = common::chain(scenario.plugins.clone(), cache).await;
    let ctx = common::context();
    let sender = ReversePath::Mailbox(Mailbox::parse("sender@example.org").expect("a mailbox"));
    let rcpt = Mailbox::parse("rcpt@example.com").expect("a mailbox");
    let rcpt_dsn = mailgate::smtp::dsn::RcptDsn::default();
    let params = MailParameters::default();
    let mut measured = Measured {
        transactions: Vec::with_capacity(scenario.transactions),
        warm_calls: Vec::with_capacity(scenario.transactions * 4),
    };
    let warmup = scenario.transactions / 10 + 5;
    for i in 0..warmup + scenario.transactions {
        let started = Instant::now();
        let mut session = chain.session();
        let calls = [
            StageCall::Connect,
            StageCall::Helo("client.example"),
            StageCall::Mail(&sender, &params),
            StageCall::Rcpt(&rcpt, &rcpt_dsn),
            StageCall::Data(message),
        ];
        for (n, call) in calls.into_iter().enumerate() {
            let call_started = Instant::now();
            let result = session.run(call, &ctx).await;
            assert_eq!(
                result.decision,
                mailgate::plugin::Decision::Proceed,
                "{}: {result:?}",
                scenario.label
            );
            if n > 0 && i >= warmup {
                measured.warm_calls.push(call_started.elapsed());
            }
        }
        session.end_transaction();
        drop(session);
        if i >= warmup {
            measured.transactions.push(started.elapsed());
        }
    }
    measured.transactions.sort();
    measured.warm_calls.sort();
    measured
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let (Some(rust_dir), Some(python)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: cargo bench -p mailgate --bench plugins -- RUST_PLUGIN_DIR PYTHON_PLUGIN_WASM");
        std::process::exit(2);
    };
    let rust = |name: &str| PathBuf::from(rust_dir).join(format!("{name}.wasm"));
    let python = PathBuf::from(python);
    let cache = std::env::temp_dir().join("mailgate-bench-cache");
    let (router, rewrite, spam) = (common::ROUTER, common::REWRITE, common::SPAM);
    let tagger = r#"{"internal_domains": ["example.com"]}"#;
    let scenarios = [
        Scenario {
            label: "empty chain (baseline)",
            plugins: vec![],
            transactions: 20_000,
        },
        Scenario {
            label: "Rust header-rewrite, fresh",
            plugins: vec![plugin(
                "rewrite",
                &rust("header_rewrite"),
                rewrite,
                InstanceMode::Fresh,
                false,
            )],
            transactions: 20_000,
        },
        Scenario {
            label: "Rust header-rewrite, reused",
            plugins: vec![plugin(
                "rewrite",
                &rust("header_rewrite"),
                rewrite,
                InstanceMode::Reused,
                false,
            )],
            transactions: 20_000,
        },
        Scenario {
            label: "3 Rust plugins, fresh",
            plugins: vec![
                plugin("router", &rust("smarthost_router"), router, InstanceMode::Fresh, false),
                plugin("rewrite", &rust("header_rewrite"), rewrite, InstanceMode::Fresh, false),
                plugin("spam", &rust("spam_score"), spam, InstanceMode::Fresh, false),
            ],
            transactions: 10_000,
        },
        Scenario {
            label: "Python external-tagger, fresh",
            plugins: vec![plugin("tagger", &python, tagger, InstanceMode::Fresh, true)],
            transactions: 500,
        },
        Scenario {
            label: "Python external-tagger, reused",
            plugins: vec![plugin("tagger", &python, tagger, InstanceMode::Reused, true)],
            transactions: 5_000,
        },
    ];
    let message = common::message();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "{:<32} {:>8} {:>12} {:>12} {:>16} {:>12} {:>12}",
        "scenario", "txns", "txn p50", "txn p99", "added/plugin p50", "call p50", "call p99"
    );
    let mut baseline = Duration::ZERO;
    // BENCH_FILTER=text runs only the scenarios whose label contains it
    // (and the baseline).
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    for scenario in scenarios
        .iter()
        .filter(|s| s.plugins.is_empty() || s.label.contains(&filter))
    {
        let m = runtime.block_on(measure(scenario, &cache, &message));
        let p50 = percentile(&m.transactions, 0.5);
        if scenario.plugins.is_empty() {
            baseline = p50;
        }
        let added = p50.saturating_sub(baseline) / u32::try_from(scenario.plugins.len().max(1)).unwrap_or(1);
        println!(
            "{:<32} {:>8} {:>12} {:>12} {:>16} {:>12} {:>12}",
            scenario.label,
            m.transactions.len(),
            micros(p50),
            micros(percentile(&m.transactions, 0.99)),
            micros(added),
            micros(percentile(&m.warm_calls, 0.5)),
            micros(percentile(&m.warm_calls, 0.99)),
        );
    }
    if filter.is_empty() || "outbound".contains(&filter) {
        let config = PluginConfig {
            stages: Vec::new(),
            outbound: vec![OutboundStage::Deliver, OutboundStage::Delivered],
            ..plugin("rewrite", &rust("header_rewrite"), rewrite, InstanceMode::Fresh, false)
        };
        let (deliver, delivered) = runtime.block_on(outbound(config, &cache, 20_000));
        for (label, calls) in [
            ("outbound on-deliver, fresh", deliver),
            ("outbound on-delivered, fresh", delivered),
        ] {
            println!(
                "{:<32} {:>8} {:>12} {:>12} {:>16} {:>12} {:>12}",
                label,
                calls.len(),
                "",
                "",
                "",
                micros(percentile(&calls, 0.5)),
                micros(percentile(&calls, 0.99)),
            );
        }
    }
}

/// `calls` timings of `on-deliver` and of `on-delivered` on `config`'s
/// plugin, each on a fresh instance (as the delivery engine calls them).
async fn outbound(config: PluginConfig, cache: &Path, calls: usize) -> (Vec<Duration>, Vec<Duration>) {
    let settings = RuntimeSettings {
        cache_dir: cache.to_owned(),
        max_instances: 64,
        max_memory_bytes: config.memory_limit,
    };
    let runtime = Runtime::new(&settings).expect("the engine starts");
    let chain = Chain::load(runtime, HostServices::none(), vec![config], HashSet::new())
        .await
        .unwrap_or_else(|e| panic!("outbound: {e:?}"));
    let facts = DeliveryFacts {
        queue_id: "0123456789abcdef".into(),
        reverse_path: "sender@example.org".into(),
        recipients: vec!["rcpt@example.com".into()],
        destination: "mx:example.com".into(),
        route: None,
        attempt: 1,
        age_seconds: 2,
        size: 1_200,
    };
    let (mut deliver, mut delivered) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls + calls / 10 {
        let started = Instant::now();
        let answer = chain.on_deliver(&facts, None).await;
        let took = started.elapsed();
        assert_eq!(answer, Answer::Neutral, "on-deliver");
        let started = Instant::now();
        let faults = chain.on_delivered(&facts, "250 2.0.0 ok", None).await;
        assert!(faults.is_empty(), "on-delivered: {faults:?}");
        if i >= calls / 10 {
            deliver.push(took);
            delivered.push(started.elapsed());
        }
    }
    deliver.sort();
    delivered.sort();
    (deliver, delivered)
}
