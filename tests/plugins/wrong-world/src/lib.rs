//! A component built against `mailgate:plugin@0.0.9`, which the gateway
//! does not serve: loading it must fail with a message naming the export.

#![allow(unsafe_code, reason = "wit-bindgen's generated export glue")]

wit_bindgen::generate!({ path: "wit", world: "plugin" });

struct Old;

impl exports::mailgate::plugin::hooks::Guest for Old {
    fn on_rcpt(_recipient: String) -> bool {
        true
    }
}

export!(Old);
