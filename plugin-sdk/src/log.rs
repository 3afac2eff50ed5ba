//! The `log` capability: lines in the gateway's log under the plugin's name.
//! The plugin must be granted `log` in the configuration.

use crate::bindings::mailgate::plugin::log::{Level, write};

/// Logs at error level.
pub fn error(message: &str) {
    write(Level::Error, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}
