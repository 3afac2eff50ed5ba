//! The `metrics` capability: counters and histograms the plugin defines by
//! using them, exported on the gateway's `/metrics` with a `plugin` label.
//! A counter `name` becomes `mailgate_plugin_<name>_total`, a histogram
//! `mailgate_plugin_<name>`. Names and label names are `[a-z][a-z0-9_]*`;
//! the label names of a metric are fixed by its first use. The plugin must
//! be granted `metrics` in the configuration.
//!
//! ```no_run
//! use mailgate_plugin_sdk::metrics;
//!
//! metrics::count("listed", &[("zone", "bl.example")]);
//! metrics::observe("lookup_seconds", &[], 0.012);
//! ```

use crate::bindings::mailgate::plugin::metrics as wit;

fn labels(given: &[(&str, &str)]) -> Vec<(String, String)> {
    given.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Adds `value` to the counter `name`.
pub fn add(name: &str, labels_: &[(&str, &str)], value: u64) {
    wit::counter_add(name, &labels(labels_), value);
}

/// Adds one to the counter `name`.
pub fn count(name: &str, labels_: &[(&str, &str)]) {
    add(name, labels_, 1);
}

/// Records `value` in the histogram `name`.
pub fn observe(name: &str, labels_: &[(&str, &str)], value: f64) {
    wit::histogram_observe(name, &labels(labels_), value);
}
