//! The only `bindgen!` calls in the gateway: host bindings for the WIT
//! world in `wit/` (the current package version, re-exported here) and
//! for the 0.1.0 world kept in `wit/v0.1.0/`, which the gateway still
//! serves (see `compat.rs`). A wasmtime upgrade touches this file,
//! `imports.rs` and `compat.rs`.

mod current {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "mailgate:plugin/types.message": crate::plugin::message::MessageHandle,
        },
    });
}

pub use current::*;

/// `mailgate:plugin@0.1.0`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "mailgate:plugin/types.message": crate::plugin::message::MessageHandle,
        },
    });
}
