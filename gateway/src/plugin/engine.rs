//! The wasmtime engine and linker shared by every plugin: component model,
//! pooling allocator, epoch interruption driven by the ticker thread
//! (`ticker.rs`), and the on-disk compilation cache.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::error::PluginError;
use super::state::State;
use super::ticker::Ticker;

/// Engine-wide plugin settings (`[plugins]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Where compiled components are cached between restarts.
    pub cache_dir: PathBuf,
    /// Plugin instances alive at once, over all plugins and connections.
    pub max_instances: u32,
    /// The largest memory limit of any plugin, which sizes the pool's slots.
    pub max_memory_bytes: usize,
}

/// The engine and the linker that satisfies the plugin world.
pub struct Runtime {
    /// The engine.
    pub engine: Engine,
    /// WASI (no files, env, sockets) plus the gateway's imports.
    pub linker: Linker<State>,
    /// What it was built for.
    pub settings: RuntimeSettings,
    /// Advances the epoch while calls are armed.
    pub ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(settings: &RuntimeSettings) -> Result<Arc<Self>, PluginError> {
        let engine_error = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);

        let n = settings.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // Heavy runtimes (componentize-py, StarlingMonkey) are components of
        // many core modules, each with a memory and tables.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(4))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_tables_per_module(8)
            .table_elements(100_000)
            .max_memory_size(settings.max_memory_bytes)
            // A fresh instance per transaction means a slot is recycled per
            // message: reset only the pages the plugin dirtied (PAGEMAP_SCAN,
            // Linux 6.7+) instead of decommitting and faulting them back in.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        std::fs::create_dir_all(&settings.cache_dir).map_err(|e| {
            PluginError::Engine(format!(
                "cannot create the plugin cache {}: {e}",
                settings.cache_dir.display()
            ))
        })?;
        let mut cache = CacheConfig::new();
        cache.with_directory(settings.cache_dir.clone());
        config.cache(Some(Cache::new(cache).map_err(engine_error)?));

        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state).map_err(engine_error)?;
        // Plugins built against 0.1.0 link to its names (see `compat.rs`).
        bindings::v0_1::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(engine_error)?;
        let ticker =
            Ticker::start(&engine).map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(Self {
            engine,
            ticker,
            linker,
            settings: settings.clone(),
        }))
    }
}
