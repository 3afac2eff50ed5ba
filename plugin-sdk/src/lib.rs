//! The guest-side SDK for mailgate filter plugins.
//!
//! Placeholder: the WIT contract, the `Plugin` trait and `export_plugin!`
//! arrive with the plugin-host work (issue 3). The crate exists now so the
//! workspace has its final shape.
