//! The plugin path under criterion, so that a regression shows in numbers:
//! for each example plugin (and the three together, as `bench/relay.py`
//! runs them), a new instance with its first call of the hooks it
//! implements, those calls on a warm instance, and a whole five-stage
//! transaction with fresh instances (the default) and with reused ones, and
//! (for spam-score and the chain) a fresh transaction of 100 KB. The
//! hooks a plugin leaves to the SDK's default are called once, then skipped
//! (`mailgate:plugin/defaults`), so the warm calls are the ones it
//! implements: `on-rcpt` for the router, `on-data` for the others.
//!
//! ```text
//! bench/plugins.sh --criterion        # builds the plugins, then runs this
//! MAILGATE_BENCH_PLUGINS=DIR cargo bench -p mailgate --bench plugin_path
//! ```
//!
//! `DIR` holds the plugins built for `wasm32-wasip2` (release); without
//! them the benchmark says so and measures nothing.

#![allow(clippy::panic, clippy::expect_used, reason = "a benchmark stops on a setup failure")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mailgate::plugin::{Chain, Decision, InstanceMode, PluginConfig, StageCall};
use mailgate::smtp::command::MailParameters;
use mailgate::smtp::dsn::RcptDsn;
use mailgate::smtp::{Mailbox, ReversePath};

fn plugins_dir() -> PathBuf {
    std::env::var_os("MAILGATE_BENCH_PLUGINS").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/wasm-plugins/wasm32-wasip2/release"
            ))
        },
        PathBuf::from,
    )
}

/// A hook a plugin implements.
#[derive(Clone, Copy)]
enum Hook {
    Rcpt,
    Data,
}

/// A case: its name, its chain, and the hooks its plugins implement.
type Case = (&'static str, Vec<PluginConfig>, &'static [Hook]);

/// The plugins measured one by one, and the chain of all three.
fn cases(instances: InstanceMode) -> Vec<Case> {
    let dir = plugins_dir();
    let one = |name: &str, file: &str, settings: &str| {
        common::plugin(name, &dir.join(format!("{file}.wasm")), settings, instances, false)
    };
    vec![
        (
            "header-rewrite",
            vec![one("rewrite", "header_rewrite", common::REWRITE)],
            &[Hook::Data],
        ),
        (
            "smarthost-router",
            vec![one("router", "smarthost_router", common::ROUTER)],
            &[Hook::Rcpt],
        ),
        (
            "spam-score",
            vec![one("spam", "spam_score", common::SPAM)],
            &[Hook::Data],
        ),
        (
            "chain-of-3",
            vec![
                one("router", "smarthost_router", common::ROUTER),
                one("rewrite", "header_rewrite", common::REWRITE),
                one("spam", "spam_score", common::SPAM),
            ],
            &[Hook::Rcpt, Hook::Data],
        ),
    ]
}

/// Runs the five stages on a new session of `chain`, then ends it.
async fn transaction(chain: &Arc<Chain>, message: &Arc<mailgate::plugin::ParsedMessage>) {
    let ctx = common::context();
    let sender = ReversePath::Mailbox(Mailbox::parse("sender@example.org").expect("a mailbox"));
    let rcpt = Mailbox::parse("rcpt@example.com").expect("a mailbox");
    let (dsn, params) = (RcptDsn::default(), MailParameters::default());
    let mut session = chain.session();
    for call in [
        StageCall::Connect,
        StageCall::Helo("client.example"),
        StageCall::Mail(&sender, &params),
        StageCall::Rcpt(&rcpt, &dsn),
        StageCall::Data(message),
    ] {
        let result = session.run(call, &ctx).await;
        assert_eq!(result.decision, Decision::Proceed, "{result:?}");
    }
    session.end_transaction();
}

/// The recipient of the `on-rcpt` calls, made once, outside the timings.
struct Rcpt(Mailbox, RcptDsn);

impl Rcpt {
    fn new() -> Self {
        Self(
            Mailbox::parse("rcpt@example.com").expect("a mailbox"),
            RcptDsn::default(),
        )
    }
}

/// Calls `hooks` on `session`.
async fn call(
    session: &mut mailgate::plugin::ChainSession,
    hooks: &[Hook],
    ctx: &mailgate::plugin::HookContext,
    rcpt: &Rcpt,
    message: &Arc<mailgate::plugin::ParsedMessage>,
) {
    for hook in hooks {
        let call = match hook {
            Hook::Rcpt => StageCall::Rcpt(&rcpt.0, &rcpt.1),
            Hook::Data => StageCall::Data(message),
        };
        let result = session.run(call, ctx).await;
        assert_eq!(result.decision, Decision::Proceed, "{result:?}");
    }
}

fn plugin_path(c: &mut Criterion) {
    if !plugins_dir().join("header_rewrite.wasm").exists() {
        eprintln!(
            "skipped: no plugins in {} (bench/plugins.sh builds them)",
            plugins_dir().display()
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let cache = std::env::temp_dir().join("mailgate-bench-cache");
    let message = common::message();
    // The relay benchmark's 100 KB workload, and the same size of prose.
    let large = [
        ("100k", common::large_message(100 << 10, false)),
        ("100k-prose", common::large_message(100 << 10, true)),
    ];
    let ctx = common::context();
    let mut group = c.benchmark_group("plugin_path");
    group.measurement_time(Duration::from_secs(3));
    for (instances, mode) in [(InstanceMode::Fresh, "fresh"), (InstanceMode::Reused, "reused")] {
        for (name, configs, hooks) in cases(instances) {
            let chain = rt.block_on(common::chain(configs, &cache));
            group.bench_function(BenchmarkId::new(format!("transaction/{mode}"), name), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (chain, message) = (Arc::clone(&chain), Arc::clone(&message));
                    async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            transaction(&chain, &message).await;
                        }
                        started.elapsed()
                    }
                });
            });
            if instances == InstanceMode::Reused {
                continue;
            }
            // What a plugin's scan of the text costs (spam-score reads it all).
            for (size, message) in large.iter().filter(|_| name == "spam-score" || name == "chain-of-3") {
                group.bench_function(BenchmarkId::new(format!("transaction-{size}/{mode}"), name), |b| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let (chain, message) = (Arc::clone(&chain), Arc::clone(message));
                        async move {
                            let started = Instant::now();
                            for _ in 0..iters {
                                transaction(&chain, &message).await;
                            }
                            started.elapsed()
                        }
                    });
                });
            }
            // A new instance (from the pool, with the post-init snapshot)
            // and its first calls.
            group.bench_function(BenchmarkId::new("new-instance-and-first-hook", name), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (chain, ctx, message) = (Arc::clone(&chain), ctx.clone(), Arc::clone(&message));
                    async move {
                        let rcpt = Rcpt::new();
                        let started = Instant::now();
                        for _ in 0..iters {
                            let mut session = chain.session();
                            call(&mut session, hooks, &ctx, &rcpt, &message).await;
                            session.end_transaction();
                        }
                        started.elapsed()
                    }
                });
            });
            // The calls on a warm instance: the session keeps it.
            group.bench_function(BenchmarkId::new("warm-hook-call", name), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (chain, ctx, message) = (Arc::clone(&chain), ctx.clone(), Arc::clone(&message));
                    async move {
                        let (rcpt, mut session) = (Rcpt::new(), chain.session());
                        call(&mut session, hooks, &ctx, &rcpt, &message).await;
                        let started = Instant::now();
                        for _ in 0..iters {
                            call(&mut session, hooks, &ctx, &rcpt, &message).await;
                        }
                        let elapsed = started.elapsed();
                        session.end_transaction();
                        elapsed
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, plugin_path);
criterion_main!(benches);
