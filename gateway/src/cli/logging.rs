//! The gateway's log: text or JSON lines on stderr, filtered by
//! `RUST_LOG` (`info` when unset).
//!
//! The usual `RUST_LOG` (levels by target, `info,mailgate::plugin=debug`)
//! is a `Targets` filter, decided once per call site. Only directives
//! that name spans or fields (`mailgate[conn]=debug`) need `EnvFilter`,
//! which also does work each time a span is entered or left: on every
//! poll of a connection's task, measurable at several thousand messages
//! a second (BENCHMARKS.md, issue 21).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub(super) fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_ansi(ansi).with_writer(std::io::stderr);
    match (format, log_filter(std::env::var("RUST_LOG").ok())) {
        (LogFormat::Text, LogFilter::Targets(targets)) => builder.finish().with(*targets).init(),
        (LogFormat::Text, LogFilter::Env(filter)) => builder.with_env_filter(*filter).init(),
        (LogFormat::Json, LogFilter::Targets(targets)) => builder.json().finish().with(*targets).init(),
        (LogFormat::Json, LogFilter::Env(filter)) => builder.json().with_env_filter(*filter).init(),
    }
}

/// How log lines are filtered.
#[derive(Debug)]
enum LogFilter {
    /// Levels by target: what `RUST_LOG` usually says, checked once per
    /// call site, with nothing to do as spans are entered and left.
    Targets(Box<tracing_subscriber::filter::Targets>),
    /// `RUST_LOG` with span or field directives (`[span{field=value}]`),
    /// which only `EnvFilter` understands.
    Env(Box<EnvFilter>),
}

/// The filter for `RUST_LOG` (`info` when unset, empty or invalid).
fn log_filter(directives: Option<String>) -> LogFilter {
    let directives = directives.unwrap_or_default();
    let info = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    if directives.contains(['[', '{']) {
        let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
        return LogFilter::Env(Box::new(filter));
    }
    if directives.trim().is_empty() {
        return LogFilter::Targets(Box::new(info()));
    }
    LogFilter::Targets(Box::new(directives.parse().unwrap_or_else(|_| info())))
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn targets(directives: Option<&str>) -> tracing_subscriber::filter::Targets {
        match log_filter(directives.map(str::to_owned)) {
            LogFilter::Targets(targets) => *targets,
            LogFilter::Env(filter) => panic!("{directives:?} gave {filter}"),
        }
    }

    #[test]
    fn levels_by_target_are_a_targets_filter_and_info_is_the_default() {
        for unset in [None, Some(""), Some("  "), Some("=nonsense=")] {
            let filter = targets(unset);
            assert!(filter.would_enable("mailgate::server", &Level::INFO), "{unset:?}");
            assert!(!filter.would_enable("mailgate::server", &Level::DEBUG), "{unset:?}");
        }
        let filter = targets(Some("warn,mailgate::plugin=debug"));
        assert!(filter.would_enable("mailgate::plugin::chain", &Level::DEBUG));
        assert!(!filter.would_enable("mailgate::server", &Level::INFO));
        assert!(filter.would_enable("mailgate::server", &Level::WARN));
        assert!(!targets(Some("off")).would_enable("mailgate", &Level::ERROR));
    }

    #[test]
    fn span_and_field_directives_need_env_filter() {
        for directives in ["mailgate[conn]=debug", "[txn{queue_id}]=trace", "mailgate[=bad"] {
            assert!(
                matches!(log_filter(Some(directives.to_owned())), LogFilter::Env(_)),
                "{directives}"
            );
        }
    }
}
