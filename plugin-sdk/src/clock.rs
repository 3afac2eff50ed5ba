//! The `clock` capability. The plugin must be granted `clock` in the
//! configuration.

use crate::bindings::mailgate::plugin::clock;

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    clock::now_millis()
}

/// A monotonic clock in nanoseconds, for measuring durations.
pub fn monotonic_nanos() -> u64 {
    clock::monotonic_nanos()
}
