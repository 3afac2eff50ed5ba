//! The operator's view of a plugin's key-value namespace: `mailgate kv
//! list|delete` and the admin API's `GET /kv/PLUGIN` and `DELETE
//! /kv/PLUGIN/KEY`, for example to see and lift the `suppression`
//! plugin's entries.

use hyper::{Method, StatusCode};
use serde_json::json;
use tracing::info;

use super::Kv;
use crate::plugin::KvService as _;

/// A request about one plugin's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvRequest {
    /// Every live entry.
    List(String),
    /// Remove one key.
    Delete(String, String),
}

impl KvRequest {
    /// The HTTP method and path.
    pub fn http(&self) -> (Method, String) {
        match self {
            Self::List(plugin) => (Method::GET, format!("/kv/{}", escape(plugin))),
            Self::Delete(plugin, key) => (Method::DELETE, format!("/kv/{}/{}", escape(plugin), escape(key))),
        }
    }

    /// The request for a method and path, if it is one.
    pub fn parse(method: &Method, path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/kv/")?;
        match (method, rest.split_once('/')) {
            (&Method::GET, None) => Some(Self::List(unescape(rest)?)),
            (&Method::DELETE, Some((plugin, key))) => Some(Self::Delete(unescape(plugin)?, unescape(key)?)),
            _ => None,
        }
    }
}

/// Carries out `request` on `kv`.
pub async fn answer(kv: &Kv, request: &KvRequest) -> (StatusCode, serde_json::Value) {
    let failed = |e: String| (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e }));
    match request {
        KvRequest::List(plugin) => match kv.entries(plugin).await {
            Ok(entries) => {
                let entries: Vec<serde_json::Value> = entries
                    .into_iter()
                    .map(|(key, value)| json!({ "key": key, "value": String::from_utf8_lossy(&value) }))
                    .collect();
                (StatusCode::OK, json!(entries))
            }
            Err(e) => failed(e),
        },
        KvRequest::Delete(plugin, key) => match kv.get(plugin, key).await {
            Ok(None) => (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no key {key:?} for plugin {plugin}") }),
            ),
            Ok(Some(_)) => match kv.delete(plugin, key).await {
                Ok(()) => {
                    info!(
                        plugin,
                        key,
                        action = "kv delete",
                        "key-value entry removed by the operator"
                    );
                    (StatusCode::OK, json!({ "result": "deleted" }))
                }
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        },
    }
}

/// Percent-encodes what may not stand in a path segment.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+=:,".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_as_paths_and_back() {
        for request in [
            KvRequest::List("suppression".into()),
            KvRequest::Delete("suppression".into(), "a b/c%d@example.com".into()),
        ] {
            let (method, path) = request.http();
            assert_eq!(KvRequest::parse(&method, &path), Some(request.clone()), "{path}");
        }
        assert_eq!(KvRequest::parse(&Method::GET, "/kv/"), None);
        assert_eq!(KvRequest::parse(&Method::POST, "/kv/x"), None);
        assert_eq!(KvRequest::parse(&Method::GET, "/kv/x/%zz"), None);
    }
}
