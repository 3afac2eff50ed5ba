//! The `http` capability: HTTP and HTTPS requests to the URLs the
//! plugin's `http_allow` names (others fail with `denied: ...` before any
//! connection). Each request is bounded by the plugin's `http_timeout` and
//! what is left of its time budget; redirects are not followed. The plugin
//! must be granted `http` in the configuration.
//!
//! ```no_run
//! use mailgate_plugin_sdk::http;
//!
//! let response = http::post("https://hooks.example.com/v1/events", "application/json", br#"{"event":"x"}"#);
//! match response {
//!     Ok(response) if response.status < 300 => {}
//!     Ok(response) => mailgate_plugin_sdk::log::warn(&format!("webhook answered {}", response.status)),
//!     Err(e) => mailgate_plugin_sdk::log::warn(&format!("webhook failed: {e}")),
//! }
//! ```

use crate::bindings::mailgate::plugin::http as wit;
use crate::bindings::mailgate::plugin::types::Header;

/// A response: the status, the header fields, the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (a 4xx or 5xx is a response, not an error).
    pub status: u16,
    /// The header fields, as received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header field called `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method` to `url` with `headers` and `body`; an `Err` says why
/// there is no response (`denied: ...`, `timeout`, `response too large`,
/// or the network error).
pub fn fetch(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, String> {
    let request = wit::Request {
        method: method.to_owned(),
        url: url.to_owned(),
        headers: headers
            .iter()
            .map(|(name, value)| Header {
                name: (*name).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        body: body.to_vec(),
    };
    wit::fetch(&request).map(|response| Response {
        status: response.status,
        headers: response.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        body: response.body,
    })
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, String> {
    fetch("GET", url, &[], &[])
}

/// `POST url` with a body of `content_type`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
    fetch("POST", url, &[("Content-Type", content_type)], body)
}
