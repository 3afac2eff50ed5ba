//! The epoch ticker: a thread that advances the engine's epoch every
//! [`TICK`] while a plugin call runs, and sleeps otherwise.
//!
//! A call's time budget is enforced by the epoch: the store's callback
//! runs at the first tick after the call was armed and interrupts the guest
//! once its deadline (an `Instant`) has passed, or yields to the runtime
//! until the next tick. So ticks are needed only while some call is still
//! running. Every call is armed through [`Ticker::arm`] (from `load::arm`),
//! which counts it as running until its [`Armed`] is dropped (by
//! `load::disarm` when the call returns, or with the store).
//!
//! When no call runs, the thread naps for [`NAP`] at a time and looks
//! again, for as long as calls were armed lately (until the latest armed
//! deadline), then sleeps until woken. An arm wakes it only if it sleeps
//! for good or the new deadline comes before it next looks (a budget
//! shorter than a nap). So a call that returns within its first
//! nap, as almost every call does, costs the thread nothing: at 100
//! messages a second, through three plugins at five stages, it wakes
//! about 100 times a second instead of 1,000 (once a tick while the
//! latest 1 s budget lasted). Under load, calls run most of the time and
//! it ticks as before. A guest that spins is seen running at the next
//! look at the latest (within a nap), then ticks find it past its deadline
//! as before.
//!
//! It is a thread of its own, not a runtime task: a guest that spins must be
//! interrupted even when every runtime worker is busy running guests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances while a call runs, in milliseconds.
const TICK_MS: u64 = 1;
/// How often the epoch advances while a call runs: the granularity of
/// time budgets.
pub const TICK: Duration = Duration::from_millis(TICK_MS);
/// How long the thread sleeps between looks while no call runs, in
/// milliseconds.
const NAP_MS: u64 = 10;
/// How long the thread sleeps between looks while no call runs.
const NAP: Duration = Duration::from_millis(NAP_MS);
/// `next_look` while the thread sleeps until woken.
const NEVER: u64 = u64::MAX;

/// The handle of the ticker thread: the runtime, each loaded plugin and
/// each store hold one, and the thread ends when the last is dropped
/// (whoever still runs a guest keeps it ticking).
#[derive(Debug)]
pub struct Ticker(Arc<Shared>);

/// A call counted as running (see [`Ticker::arm`]) until this is dropped.
#[derive(Debug)]
pub struct Armed(Arc<Shared>);

/// What the arming side and the ticker thread share.
#[derive(Debug)]
struct Shared {
    origin: Instant,
    /// Calls armed and not yet returned.
    running: AtomicUsize,
    /// The latest deadline armed, in milliseconds after `origin` (plus a
    /// tick): until then the thread naps rather than sleeping for good.
    busy_until: AtomicU64,
    /// When the thread looks next, in milliseconds after `origin`
    /// ([`NEVER`]: it sleeps, or is about to, until woken).
    next_look: AtomicU64,
    /// Every handle is gone: the thread ends.
    stopped: AtomicBool,
    thread: OnceLock<Thread>,
    /// Epoch increments so far (for the tests).
    ticks: AtomicU64,
}

impl Ticker {
    /// Starts the thread for `engine`; it ends when the last handle is
    /// dropped (or at its next tick once the engine is gone).
    pub fn start(engine: &Engine) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            running: AtomicUsize::new(0),
            busy_until: AtomicU64::new(0),
            next_look: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            thread: OnceLock::new(),
            ticks: AtomicU64::new(0),
        });
        let running = Arc::clone(&shared);
        let weak = engine.weak();
        let handle = std::thread::Builder::new()
            .name("mailgate-epoch".into())
            .spawn(move || running.run(&weak))?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Arc::new(Self(shared)))
    }

    /// A call starts and may run until `deadline`: the epoch advances
    /// every tick while it runs, that is until the returned guard is
    /// dropped.
    pub fn arm(&self, deadline: Instant) -> Armed {
        let shared = &self.0;
        shared.running.fetch_add(1, SeqCst);
        let until = shared.millis(deadline).saturating_add(TICK_MS);
        shared.busy_until.fetch_max(until, SeqCst);
        // After the count, so that a thread about to sleep either sees
        // this call or is woken (both sides use SeqCst).
        if until < shared.next_look.load(SeqCst) {
            shared.wake();
        }
        Armed(Arc::clone(shared))
    }

    /// Epoch increments so far.
    #[cfg(test)]
    pub fn ticks(&self) -> u64 {
        self.0.ticks.load(SeqCst)
    }

    /// True while the thread sleeps until woken.
    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.0.next_look.load(SeqCst) == NEVER
    }

    /// True while the thread naps between looks (no call runs, but calls
    /// were armed lately).
    #[cfg(test)]
    fn is_napping(&self) -> bool {
        let shared = &self.0;
        let next = shared.next_look.load(SeqCst);
        next != NEVER && next > shared.millis(Instant::now()) + TICK_MS
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.stopped.store(true, SeqCst);
        self.0.wake();
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Shared {
    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(NEVER - 1)
    }

    fn run(&self, engine: &EngineWeak) {
        while !self.stopped.load(SeqCst) {
            let now = self.millis(Instant::now());
            if self.running.load(SeqCst) > 0 {
                self.next_look.store(now.saturating_add(TICK_MS), SeqCst);
                std::thread::park_timeout(TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
                self.ticks.fetch_add(1, SeqCst);
                continue;
            }
            // No call runs. Announce when the thread looks next, then look
            // at the count again: an arm that counted its call before this
            // store is seen here, one after it reads the new `next_look`
            // (and wakes the thread if it must; the wake-up is kept if it
            // comes before the park).
            let recent = now <= self.busy_until.load(SeqCst);
            let next = if recent { now.saturating_add(NAP_MS) } else { NEVER };
            self.next_look.store(next, SeqCst);
            if self.running.load(SeqCst) > 0 || self.stopped.load(SeqCst) {
                continue;
            }
            if recent {
                std::thread::park_timeout(NAP);
            } else {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting: {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn ticks_while_a_call_runs_and_sleeps_after() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        // Nothing armed: it sleeps after its first look and stays asleep.
        wait_for("first sleep", || ticker.is_parked());
        let asleep = ticker.ticks();
        // A call armed for 300 ms, still running: ticks resume.
        let armed = Instant::now();
        let budget = Duration::from_millis(300);
        let call = ticker.arm(armed + budget);
        wait_for("ticks while the call runs", || ticker.ticks() > asleep + 5);
        // It returns: the ticks stop though its deadline is ahead; the
        // thread naps until then (unless a slow machine is past it
        // already), and sleeps for good after.
        drop(call);
        wait_for("a nap or the sleep", || ticker.is_napping() || ticker.is_parked());
        let returned = ticker.ticks();
        wait_for("sleep after the deadline", || {
            ticker.is_parked() && armed.elapsed() > budget
        });
        assert_eq!(ticker.ticks(), returned, "ticks after the call returned");
    }

    /// What the thread saves: a call that returns at once leaves no ticks
    /// behind for the rest of its (long) budget, only naps.
    #[test]
    fn a_call_that_returned_is_not_ticked_for() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        wait_for("first sleep", || ticker.is_parked());
        drop(ticker.arm(Instant::now() + Duration::from_secs(5)));
        wait_for("a nap", || ticker.is_napping());
        let before = ticker.ticks();
        // Six naps' worth of looks: none ticks, none sleeps for good.
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_millis(60) {
            assert_eq!(ticker.ticks(), before, "ticked with no call running");
            assert!(!ticker.is_parked(), "asleep for good though a deadline is ahead");
            std::thread::yield_now();
        }
    }

    /// The point of it all: a guest that spins is interrupted at its
    /// budget, whether the ticker slept for good when the call was armed
    /// (the arm woke it), napped (it saw the call at its next look), or
    /// napped past a budget shorter than a nap (the arm woke it).
    #[tokio::test]
    async fn a_spinning_guest_is_interrupted_however_the_ticker_slept() {
        spin_until_interrupted(false, Duration::from_millis(30)).await;
        spin_until_interrupted(true, Duration::from_millis(30)).await;
        spin_until_interrupted(true, Duration::from_millis(2)).await;
    }

    async fn spin_until_interrupted(napping: bool, budget: Duration) {
        use wasmtime::{Instance, Module, Store, UpdateDeadline};

        use crate::plugin::engine::{Runtime, RuntimeSettings};
        use crate::plugin::host::HostServices;
        use crate::plugin::load::arm;
        use crate::plugin::state::State;

        let cache = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(&RuntimeSettings {
            cache_dir: cache.path().to_owned(),
            max_instances: 2,
            max_memory_bytes: 1 << 20,
        })
        .unwrap();
        let wasm = wat::parse_str(r#"(module (func (export "spin") (loop (br 0))))"#).unwrap();
        let module = Module::new(&runtime.engine, wasm).unwrap();
        let mut state = State::new(Arc::from("spinner"), 1 << 20, HostServices::none());
        state.ticker = Some(Arc::clone(&runtime.ticker));
        let mut store = Store::new(&runtime.engine, state);
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let instance = Instance::new_async(&mut store, &module, &[]).await.unwrap();
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        wait_for("the ticker asleep", || runtime.ticker.is_parked());
        if napping {
            drop(runtime.ticker.arm(Instant::now() + Duration::from_secs(5)));
            wait_for("a nap", || runtime.ticker.is_napping());
        }
        let started = Instant::now();
        // Without a tick the guest would spin for ever: a watchdog ticks
        // after 10 s so that the test fails instead of hanging.
        let engine = runtime.engine.clone();
        let done = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(SeqCst) {
                    if started.elapsed() > Duration::from_secs(10) {
                        engine.increment_epoch();
                    }
                    std::thread::yield_now();
                }
            })
        };
        arm(&mut store, budget);
        let error = spin.call_async(&mut store, ()).await.unwrap_err();
        done.store(true, SeqCst);
        watchdog.join().unwrap();
        assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt));
        let took = started.elapsed();
        assert!(
            took >= budget && took < Duration::from_secs(5),
            "napping {napping}, budget {budget:?}: {took:?}"
        );
    }

    #[test]
    fn the_thread_ends_with_the_last_handle_even_asleep() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        wait_for("first sleep", || ticker.is_parked());
        let shared = Arc::clone(&ticker.0);
        let second = Arc::clone(&ticker);
        drop(ticker);
        assert!(!shared.stopped.load(SeqCst), "a handle is left");
        drop(second);
        // The thread holds the only other reference; it drops it on exit.
        wait_for("thread exit", || Arc::strong_count(&shared) == 1);
    }
}
