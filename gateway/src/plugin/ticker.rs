//! The epoch ticker: a thread that advances the engine's epoch every
//! [`TICK`] while a plugin call may need interrupting, and sleeps
//! otherwise.
//!
//! A call's time budget is enforced by the epoch: the store's callback
//! runs at the first tick after the epoch deadline and interrupts the guest
//! once its deadline (an `Instant`) has passed. So ticks are only needed
//! until the latest deadline armed so far, plus a tick. Every call is armed
//! through [`Ticker::keep_until`] (from `load::arm`), which wakes the thread
//! if it sleeps. An idle gateway with plugins then has no thread waking
//! 1,000 times a second; under load nothing changes.
//!
//! It is a thread of its own, not a runtime task: a guest that spins must be
//! interrupted even when every runtime worker is busy running guests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances, in milliseconds.
const TICK_MS: u64 = 1;
/// How often the epoch advances: the granularity of time budgets.
pub const TICK: Duration = Duration::from_millis(TICK_MS);

/// The handle of the ticker thread: the runtime, each loaded plugin and
/// each store hold one, and the thread ends when the last is dropped
/// (whoever still runs a guest keeps it ticking).
#[derive(Debug)]
pub struct Ticker(Arc<Shared>);

/// What the arming side and the ticker thread share.
#[derive(Debug)]
struct Shared {
    origin: Instant,
    /// Ticks are needed until this many milliseconds after `origin`.
    busy_until: AtomicU64,
    /// The thread sleeps (or is about to) until woken.
    parked: AtomicBool,
    /// Every handle is gone: the thread ends.
    stopped: AtomicBool,
    thread: OnceLock<Thread>,
    /// Epoch increments so far (for the tests).
    ticks: AtomicU64,
}

impl Ticker {
    /// Starts the thread for `engine`; it ends when the last handle is
    /// dropped or the engine is.
    pub fn start(engine: &Engine) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            busy_until: AtomicU64::new(0),
            parked: AtomicBool::new(false),
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

    /// A call may run until `deadline`: tick until a tick past it.
    pub fn keep_until(&self, deadline: Instant) {
        let shared = &self.0;
        let until = shared.millis(deadline).saturating_add(2 * TICK_MS);
        shared.busy_until.fetch_max(until, SeqCst);
        if shared.parked.load(SeqCst) {
            shared.wake();
        }
    }

    /// Epoch increments so far.
    #[cfg(test)]
    pub fn ticks(&self) -> u64 {
        self.0.ticks.load(SeqCst)
    }

    /// True while the thread sleeps for want of armed calls.
    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.0.parked.load(SeqCst)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.stopped.store(true, SeqCst);
        self.0.wake();
    }
}

impl Shared {
    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn idle(&self) -> bool {
        self.millis(Instant::now()) > self.busy_until.load(SeqCst)
    }

    fn run(&self, engine: &EngineWeak) {
        while !self.stopped.load(SeqCst) {
            #[allow(
                clippy::disallowed_methods,
                reason = "a dedicated ticker thread, not a runtime worker"
            )]
            std::thread::sleep(TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
            self.ticks.fetch_add(1, SeqCst);
            if self.idle() {
                // Announce the sleep, then look again: an arm that raised
                // `busy_until` before this sees `parked` and wakes us (the
                // wake-up is kept if it comes before `park`).
                self.parked.store(true, SeqCst);
                if self.idle() && !self.stopped.load(SeqCst) {
                    std::thread::park();
                }
                self.parked.store(false, SeqCst);
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
    fn ticks_while_a_call_is_armed_and_sleeps_after() {
        let engine = Engine::default();
        let ticker = Ticker::start(&engine).unwrap();
        // Nothing armed: it sleeps after its first tick and stays asleep.
        wait_for("first sleep", || ticker.is_parked());
        let asleep = ticker.ticks();
        // A call armed for 50 ms: ticks resume, through the deadline.
        let armed = Instant::now();
        ticker.keep_until(armed + Duration::from_millis(50));
        wait_for("ticks past the deadline", || ticker.ticks() > asleep + 5);
        wait_for("sleep after the deadline", || {
            ticker.is_parked() && armed.elapsed() > Duration::from_millis(50)
        });
        let after = ticker.ticks();
        assert!(after > asleep + 5, "{asleep} -> {after}");
    }

    /// The point of it all: after the ticker went to sleep, a guest that
    /// spins is still interrupted at its budget, since arming the call
    /// woke the ticker.
    #[tokio::test]
    async fn a_spinning_guest_armed_while_the_ticker_sleeps_is_interrupted() {
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
        let started = Instant::now();
        // Without the wake-up the guest would spin for ever: a watchdog
        // ticks after 10 s so that the test fails instead of hanging.
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
        arm(&mut store, Duration::from_millis(30));
        let error = spin.call_async(&mut store, ()).await.unwrap_err();
        done.store(true, SeqCst);
        watchdog.join().unwrap();
        assert_eq!(error.downcast_ref::<wasmtime::Trap>(), Some(&wasmtime::Trap::Interrupt));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(5),
            "{took:?}"
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
