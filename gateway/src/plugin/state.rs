//! What a plugin instance's store holds: a WASI context with no files,
//! environment, arguments, stdin or network, whose stdout and stderr are
//! kept (bounded) to explain faults; the resource table (the
//! message handle lives there during `on-data`); the memory limiter; the
//! deadline of the call in progress; and what the capabilities reach, with
//! the transaction's DNS cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::host::{DnsAnswer, DnsKind, HostServices, SealRequest};
use super::output::Output;
use super::ticker::{Armed, Ticker};
use super::transcript::{HostCall, Journal};

/// Store data of one plugin instance.
pub struct State {
    /// The plugin's name, for its log lines.
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    /// Host resources lent to the guest.
    pub table: ResourceTable,
    /// Caps linear memory and records when the cap was hit.
    pub limiter: MemoryLimiter,
    /// When the call in progress must have returned.
    pub deadline: Instant,
    /// What the capabilities reach.
    pub host: HostServices,
    /// DNS answers of the current transaction.
    pub dns_cache: HashMap<(DnsKind, String), DnsAnswer>,
    /// DNS lookups of the current transaction that were not cached.
    pub dns_lookups: u32,
    /// Where the host's answers go while the listener records.
    pub journal: Option<Journal>,
    /// What the plugin wrote to stdout and stderr during the current call.
    pub output: Output,
    /// An ARC seal asked for during the current call (`dkim.seal`).
    pub seal: Option<SealRequest>,
    /// The call in progress said its hook does nothing (`defaults`).
    pub default_hook: bool,
    /// The epoch ticker, told of every armed call (none in tests that
    /// never interrupt).
    pub ticker: Option<Arc<Ticker>>,
    /// The call in progress, counted by the ticker until it returns.
    pub armed: Option<Armed>,
}

impl State {
    /// Fresh state for an instance of `plugin` allowed `memory_limit` bytes.
    pub fn new(plugin: Arc<str>, memory_limit: usize, host: HostServices) -> Self {
        let output = Output::default();
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.clone())
            .stderr(output.clone())
            .build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                exceeded: false,
            },
            deadline: Instant::now(),
            host,
            dns_cache: HashMap::new(),
            dns_lookups: 0,
            journal: None,
            output,
            seal: None,
            default_hook: false,
            ticker: None,
            armed: None,
        }
    }

    /// Notes an answer of the host, when recording.
    pub fn note(&self, call: impl FnOnce() -> HostCall) {
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(call());
        }
    }

    /// Forgets the transaction's DNS answers (a reused instance starts the
    /// next transaction afresh).
    pub fn end_transaction(&mut self) {
        self.dns_cache.clear();
        self.dns_lookups = 0;
        self.journal = None;
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the plugin's limit, trapping the guest, and
/// remembers it so the fault is reported as memory exhaustion.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    /// The limit was hit during the current instance's life.
    pub exceeded: bool,
}

/// Tables are bounded too, so a guest cannot grow host memory through them.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} bytes exceeded (wanted {desired})", self.limit);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
