//! The command line: `mailgate run`, `mailgate check`, `mailgate reload`,
//! `mailgate queue`, `mailgate quarantine`, `mailgate admin`, `mailgate
//! user`, `mailgate plugin test` and `mailgate dkim keygen`. The commands
//! that act on a gateway or its spool are in `operate`, those that make
//! DKIM keys and AUTH users in `credentials`.
//! Exit codes: 0 success, 64 bad configuration (EX_USAGE), 1 any other
//! failure (for `run`: also a shutdown whose grace period ran out).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};
use credentials::{KeyAlgorithm, UserAction, dkim_keygen, user};
use logging::init_logging;
use operate::{kv, quarantine, queue, reload};

mod credentials;
mod logging;
mod operate;
mod scaffold;

/// A programmable SMTP relay gateway.
#[derive(Debug, Parser)]
#[command(name = "mailgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Reload the running gateway's configuration and plugins (what
    /// SIGHUP does), through its admin API; prints why when it fails. The
    /// gateway reloads the file it was started with: `--config` must name
    /// that file (its `[admin] address` says where the gateway is), or the
    /// command refuses.
    Reload {
        /// The running gateway's configuration file (checked here first,
        /// then reloaded by the gateway).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect or change the queue: through the admin API of the gateway
    /// running on the configured spool, or directly when none is running.
    Queue {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// What to do.
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Show the TLS reporting figures (RFC 8460) of the current period:
    /// per recipient domain, sessions that set up TLS and those that
    /// failed, by kind (as the running gateway last wrote them, at most 5
    /// seconds ago).
    TlsReport {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the admin API's bearer tokens (`[admin] tokens_file`).
    Admin {
        /// The configuration file naming the tokens file.
        #[arg(long, short)]
        config: PathBuf,
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
    /// See and remove a plugin's key-value entries (for example the
    /// `suppression` plugin's suppressed addresses): through the admin API
    /// of the gateway running on the configured spool, or directly in the
    /// store when none is running.
    Kv {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// What to do.
        #[command(subcommand)]
        action: KvAction,
    },
    /// Review the messages plugins quarantined: through the admin API of
    /// the gateway running on the configured spool, or directly when none
    /// is running.
    Quarantine {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// What to do.
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Manage the users file of SMTP AUTH (`[auth] users_file`). The
    /// running gateway reads it again on SIGHUP.
    User {
        /// The configuration file naming the users file.
        #[arg(long, short, required_unless_present = "file", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// The users file itself.
        #[arg(long)]
        file: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Plugin development tools.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        action: PluginAction,
    },
    /// DKIM keys for `[[dkim.key]]`.
    Dkim {
        /// What to do.
        #[command(subcommand)]
        action: DkimAction,
    },
}

#[derive(Debug, Subcommand)]
enum DkimAction {
    /// Write a new private key (PEM, mode 0600) and print the DNS TXT
    /// record to publish and the `[[dkim.key]]` to configure.
    Keygen {
        /// The signing domain (d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=).
        #[arg(long)]
        selector: String,
        /// `rsa` (rsa-sha256, understood everywhere) or `ed25519`
        /// (RFC 8463; sign with both for the best of each).
        #[arg(long, default_value = "rsa")]
        algorithm: KeyAlgorithm,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Replay recorded transcripts (`record = "dir"` on a listener)
    /// against a plugin, deterministically: DNS answers, the time and
    /// key-value reads come from the transcript. Prints the verdict and
    /// modifications per stage; exits 1 when an expectation fails.
    Test {
        /// The plugin component (.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// Its settings: a file (or `<(...)`) of the `[plugin.settings]`
        /// keys in TOML, or a JSON object.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// A transcript, or a directory of them; may be repeated.
        #[arg(long, required_unless_present = "eml")]
        transcript: Vec<PathBuf>,
        /// A message file (.eml) to test with instead of a recording, with
        /// `--from` and `--to` as its envelope.
        #[arg(long, requires = "to")]
        eml: Option<PathBuf>,
        /// The reverse-path for `--eml` (default: the null path).
        #[arg(long, default_value = "")]
        from: String,
        /// A recipient for `--eml`; may be repeated.
        #[arg(long)]
        to: Vec<String>,
        /// `Name: value`: a header field the plugin must add or set; may be
        /// repeated.
        #[arg(long)]
        expect_header: Vec<String>,
        /// `VERDICT` (the transaction's first verdict other than continue)
        /// or `STAGE=VERDICT`; may be repeated. Verdicts: continue, reject,
        /// tempfail, disconnect, discard, quarantine, fault.
        #[arg(long)]
        expect: Vec<String>,
    },
    /// Write a new plugin project into DIR (default ./NAME): the hooks for
    /// the stages asked for, its own copy of the WIT contract (and of the
    /// SDK, for Rust), build.sh, test.sh with a `mailgate plugin test` line
    /// that passes on the sample transcripts, plugin.toml and a README.
    New {
        /// The plugin's name: lower-case words joined by '-' (my-filter).
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        /// The stages it runs at, comma-separated: connect, helo, mail,
        /// rcpt, data.
        #[arg(long, value_delimiter = ',', default_value = "rcpt,data")]
        stages: Vec<String>,
        /// The capabilities it is granted, comma-separated: log, clock,
        /// dns, kv, metrics, dkim (or "" for none).
        #[arg(long, value_delimiter = ',', default_value = "log")]
        capabilities: Vec<String>,
        /// Where to write it (default ./NAME); must be empty or absent.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the WIT contract (`mailgate:plugin@0.2.0`) into a directory.
    Wit {
        /// The directory (created if absent).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a component's SHA-256 as the `sha256 = "..."` line that pins
    /// it in its `[[plugin]]`.
    Hash {
        /// The plugin component (.wasm).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Bearer tokens for the control endpoints.
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a token, add its digest to the tokens file, and print the
    /// token once (it is not kept anywhere else). A running gateway reads
    /// the file at each control request: the token works at once.
    Add {
        /// Who or what the token is for; it names the token in the log.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KvAction {
    /// List a plugin's live keys and values.
    List {
        /// The plugin's name (its namespace).
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove one key of a plugin.
    Delete {
        /// The plugin's name.
        plugin: String,
        /// The key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineAction {
    /// List quarantined messages: id, age, size, reason, who decided, envelope.
    List {
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope and headers (JSON).
    Show {
        /// The queue id.
        id: String,
        /// The whole message, body included.
        #[arg(long)]
        body: bool,
    },
    /// Queue a message for delivery as it was accepted (the chain does not
    /// run again).
    Release {
        /// The queue id.
        id: String,
    },
    /// Remove a message.
    Delete {
        /// The queue id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// List queued messages.
    List {
        /// Print the JSON the admin API returns.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope and delivery state (JSON).
    Show {
        /// The queue id.
        id: String,
    },
    /// Try a message (or all waiting ones) now.
    Retry {
        /// The queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every waiting message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message without telling its sender.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Fail a message's pending recipients and bounce it to its sender.
    Bounce {
        /// The queue id.
        id: String,
    },
    /// Keep messages back from delivery until released (they do not
    /// expire while held; the hold survives a restart).
    Hold(Selection),
    /// Release held messages into the queue.
    Release(Selection),
}

/// Which messages `queue hold` and `queue release` are for.
#[derive(Debug, clap::Args)]
struct Selection {
    /// The queue id.
    #[arg(required_unless_present_any = ["domain", "all"], conflicts_with_all = ["domain", "all"])]
    id: Option<String>,
    /// Every message with a pending recipient in this domain.
    #[arg(long, conflicts_with = "all")]
    domain: Option<String>,
    /// Every message.
    #[arg(long)]
    all: bool,
}

const EXIT_CONFIG: u8 = 64;

/// Each listener's chain, in order, with the stages each entry runs at.
fn print_chains(config: &Config) {
    for listener in &config.listeners {
        let entries: Vec<String> = config
            .plugins
            .iter()
            .filter(|p| p.listeners.is_empty() || p.listeners.contains(&listener.name))
            .map(|p| {
                let stages: Vec<&str> = p.stages.iter().map(|s| s.name()).collect();
                let shadow = if p.mode == crate::plugin::EntryMode::Shadow {
                    ", shadow"
                } else {
                    ""
                };
                format!("{} [{}{shadow}]", p.name, stages.join(" "))
            })
            .collect();
        let chain = if entries.is_empty() {
            "no plugins".to_owned()
        } else {
            entries.join(" -> ")
        };
        println!("  listener {} ({}): {chain}", listener.name, listener.address);
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => match runtime.block_on(Config::load(&config)) {
            Ok(loaded) => {
                println!(
                    "{}: OK ({} listener(s), {} route(s), {} plugin(s))",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.delivery.routes.len(),
                    loaded.plugins.len()
                );
                print_chains(&loaded);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => run(&runtime, &config),
        Command::Reload { config } => runtime.block_on(reload(&config)),
        Command::Queue { config, action } => runtime.block_on(queue(&config, action)),
        Command::TlsReport { config, json } => match crate::config::spool_dir(&config) {
            Ok(spool) => {
                print!("{}", crate::delivery::tls_rpt::show(&spool.join("tls-rpt"), json));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Quarantine { config, action } => runtime.block_on(quarantine(&config, action)),
        Command::Kv { config, action } => runtime.block_on(kv(&config, action)),
        Command::Admin {
            config,
            action: AdminAction::Token {
                action: TokenAction::Add { name },
            },
        } => {
            let added = crate::config::tokens_file(&config)
                .map_err(|e| e.to_string())
                .and_then(|file| crate::admin::Tokens::add(&file, &name));
            match added {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailgate: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::User { config, file, action } => user(config.as_deref(), file, action),
        Command::Plugin {
            action:
                PluginAction::Test {
                    plugin,
                    settings,
                    transcript,
                    eml,
                    from,
                    to,
                    expect,
                    expect_header,
                },
        } => runtime.block_on(crate::plugin_test::run(crate::plugin_test::TestRun {
            plugin,
            settings,
            transcripts: transcript,
            message: eml.map(|eml| crate::plugin_test::Message { eml, from, to }),
            expect,
            expect_header,
        })),
        Command::Plugin {
            action:
                PluginAction::New {
                    name,
                    lang,
                    stages,
                    capabilities,
                    dir,
                },
        } => {
            let request = scaffold::NewPlugin {
                name,
                lang,
                stages,
                capabilities: capabilities.into_iter().filter(|c| !c.is_empty()).collect(),
                dir,
            };
            match scaffold::new_plugin(&request) {
                Ok(dir) => {
                    println!(
                        "created {}: build with ./build.sh, test with ./test.sh; plugin.toml is its [[plugin]] entry",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mailgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Plugin {
            action: PluginAction::Wit { out },
        } => match scaffold::write_wit(&out) {
            Ok(()) => {
                println!("wrote mailgate:plugin@0.2.0 into {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mailgate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin {
            action: PluginAction::Hash { file },
        } => match std::fs::read(&file) {
            Ok(bytes) => {
                println!("sha256 = \"{}\"", crate::plugin::sha256_hex(&bytes));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mailgate: cannot read {}: {e}", file.display());
                ExitCode::FAILURE
            }
        },

        Command::Dkim {
            action:
                DkimAction::Keygen {
                    domain,
                    selector,
                    algorithm,
                    bits,
                    out,
                },
        } => dkim_keygen(&domain, &selector, algorithm, bits, &out),
    }
}

/// The configuration at `path`, validated without loading plugins; on
/// error it is printed and the exit code is 64.
fn validated(path: &std::path::Path) -> Result<Config, ExitCode> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|text| Config::from_source(path, &text).map_err(|e| e.to_string()))
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        })
}

fn run(runtime: &tokio::runtime::Runtime, path: &std::path::Path) -> ExitCode {
    // Logging starts before the configuration loads so that plugins'
    // log lines during `init` are not lost; the format is read first.
    let format = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| table.get("server")?.get("log_format")?.as_str().map(str::to_owned));
    init_logging(if format.as_deref() == Some("json") {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    let config = match runtime.block_on(Config::load(path)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    raise_file_limit(config.server.max_connections.get());
    let result = runtime.block_on(async {
        let bound = crate::bind(&config).await?;
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        crate::run(config, bound, shutdown).await
    });
    match result {
        Ok(crate::Stopped::Drained) => ExitCode::SUCCESS,
        Ok(crate::Stopped::GraceExpired) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("mailgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as a server that
/// holds thousands of connections must (systemd's default soft limit is
/// 1024), and warns when even the hard limit leaves no room for
/// `max_connections` plus delivery and spool files.
fn raise_file_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let current = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            limit.current
        }
    };
    let needed = max_connections as u64 + 1024;
    if let Some(current) = current.filter(|&c| c < needed) {
        tracing::warn!(
            limit = current,
            max_connections,
            "the open-file limit leaves too little room for server.max_connections; raise it (LimitNOFILE=)"
        );
    }
}
