//! Plugin errors: loading failures (which stop start-up, naming the plugin
//! and file) and faults during calls (which the plugin's `on_error`
//! policy answers).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why plugins could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The wasmtime engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The component file could not be read.
    #[error("plugin `{plugin}`: cannot read {}: {source}", path.display())]
    Read {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a WebAssembly component wasmtime can compile.
    #[error("plugin `{plugin}`: {} is not a valid WebAssembly component: {reason}", path.display())]
    Compile {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// What the compiler said.
        reason: String,
    },
    /// The component imports a capability it was not granted.
    #[error("plugin `{plugin}`: {} imports `{import}`, but its capabilities are [{granted}]", path.display())]
    NotGranted {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The import.
        import: String,
        /// What it was granted.
        granted: String,
    },
    /// The component does not match the `mailgate:plugin` world.
    #[error("plugin `{plugin}`: {} does not match the mailgate:plugin@0.2.0 world (nor @0.1.0): {reason}", path.display())]
    WorldMismatch {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The missing or mismatched import or export.
        reason: String,
    },
    /// The plugin's `init` refused its settings, or faulted.
    /// The file is not the one the configuration pins (`sha256`).
    #[error(
        "plugin `{plugin}`: {} has SHA-256 {actual}, but the configuration pins {expected}",
        path.display()
    )]
    Pinned {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The digest configured.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    #[error("plugin `{plugin}` failed to start: {fault}")]
    Start {
        /// The plugin's name.
        plugin: String,
        /// What happened.
        fault: Fault,
    },
}

/// A plugin fault during a call: answered by the plugin's `on_error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its time budget.
    #[error("time budget of {0:?} exceeded")]
    Timeout(Duration),
    /// The guest tried to grow its memory past its limit.
    #[error("memory limit exceeded")]
    Memory,
    /// The outcome broke the contract (a reject with a 2xx, a modification
    /// not allowed at this stage, a malformed address...).
    #[error("illegal outcome: {0}")]
    Illegal(String),
    /// `init` returned an error.
    #[error("init refused the settings: {0}")]
    Init(String),
    /// No instance could be created (the instance pool is exhausted, ...).
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// A milter could not be reached, or broke the protocol.
    #[error("milter: {0}")]
    Milter(String),
    /// An MTA Hooks scanner could not be reached, or broke the protocol.
    #[error("scanner: {0}")]
    Scanner(String),
}

impl Fault {
    /// A short, bounded name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Timeout(_) => "timeout",
            Self::Memory => "memory",
            Self::Illegal(_) => "illegal_outcome",
            Self::Init(_) => "init",
            Self::Instantiate(_) => "instantiate",
            Self::Milter(_) => "milter",
            Self::Scanner(_) => "scanner",
        }
    }
}
