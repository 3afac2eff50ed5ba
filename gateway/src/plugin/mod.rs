//! The plugin host.

pub mod bindings;
pub mod message;
