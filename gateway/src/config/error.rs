//! Configuration errors. Each problem names the file, the line and column,
//! and the dotted key (`delivery.retry_initial`, `route[1].smarthost`).

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", Problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

/// One thing wrong with the configuration, located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when the position is unknown.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, empty when the error is not inside a key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    /// Locates `span` of `source` and names the key it falls in.
    pub fn at(source: &str, span: Option<Range<usize>>, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let Some(span) = span else {
            return Self {
                line: 0,
                column: 0,
                key: String::new(),
                reason,
            };
        };
        let before = &source.as_bytes()[..span.start.min(source.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        Self {
            line,
            column,
            key: key_path(source, span.start),
            reason,
        }
    }
}

struct Problems<'a>(&'a PathBuf, &'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.0.display();
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.key.is_empty()) {
                (0, _) => write!(f, "{file}: {}", p.reason)?,
                (_, true) => write!(f, "{file}:{}:{}: {}", p.line, p.column, p.reason)?,
                (_, false) => write!(f, "{file}:{}:{}: `{}`: {}", p.line, p.column, p.key, p.reason)?,
            }
        }
        Ok(())
    }
}

/// The dotted path of the deepest key whose name or value contains `offset`.
fn key_path(source: &str, offset: usize) -> String {
    let Ok(doc) = DeTable::parse(source) else {
        return String::new();
    };
    let mut best = Vec::new();
    walk_table(doc.get_ref(), offset, &mut Vec::new(), &mut best);
    let mut out = String::new();
    for segment in best {
        if !segment.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&segment);
    }
    out
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if (key.span().contains(&offset) || contains(value, offset)) && path.len() > best.len() {
            best.clone_from(path);
        }
        walk_value(value.get_ref(), offset, path, best);
        path.pop();
    }
}

fn walk_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
    match value {
        DeValue::Table(table) => walk_table(table, offset, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if contains(item, offset) && path.len() > best.len() {
                    best.clone_from(path);
                }
                walk_value(item.get_ref(), offset, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn contains<T>(spanned: &Spanned<T>, offset: usize) -> bool {
    let span = spanned.span();
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}
