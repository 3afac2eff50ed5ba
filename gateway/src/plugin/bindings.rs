//! The only `bindgen!` in the gateway: host bindings for the WIT world in
//! `wit/`. A wasmtime upgrade touches this file and `imports.rs`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "mailgate:plugin/types.message": super::message::MessageHandle,
    },
});
