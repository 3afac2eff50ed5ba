//! Test-only plugin that exercises the capabilities at the data stage and
//! reports what it saw in headers, for the end-to-end tests:
//!
//! ```toml
//! [plugin.settings]
//! lookups = [["a", "host.test"], ["ptr", "127.0.0.1"]]   # X-Dns: a host.test = 192.0.2.1
//! repeat = 2                                             # do each lookup this often
//! counter = "messages"                                   # X-Kv: messages = N (kv increment)
//! metrics = true                                         # count and observe
//! sandbox = true                                         # X-Sandbox: what WASI lets it reach
//! fetch = ["http://127.0.0.1:8080/x"]                    # X-Http: GET url = STATUS BODY, or the error
//! carry = true                                           # X-Carried: transactions this instance has seen
//! ```

use std::net::IpAddr;

use mailgate_plugin_sdk::dns::{self, Resolver};
use mailgate_plugin_sdk::kv::{self, Store};
use mailgate_plugin_sdk::{Message, Plugin, Settings, Transaction, Verdict, export_plugin, http, metrics};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Probe {
    lookups: Vec<(String, String)>,
    repeat: u32,
    counter: Option<String>,
    metrics: bool,
    sandbox: bool,
    fetch: Vec<String>,
    carry: bool,
}

/// Transactions seen by this instance, in linear memory: 1 on a fresh
/// instance every time; counting up on a reused one.
static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The same, on the heap: a buffer that grows by one octet per transaction.
static TRAIL: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// What the plugin can reach through WASI without any capability: files,
/// sockets, name resolution, the environment, the clocks and randomness.
fn sandbox() -> String {
    let outcome = |result: Result<String, String>| match result {
        Ok(value) => format!("allowed({value})"),
        Err(error) => format!("denied({error})"),
    };
    let file = std::fs::read_to_string("/etc/passwd")
        .map(|t| t.len().to_string())
        .map_err(|e| e.kind().to_string());
    let socket = std::net::TcpStream::connect(("127.0.0.1", 25))
        .map(|_| "connected".to_owned())
        .map_err(|e| e.kind().to_string());
    let resolve = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 25))
        .map(|addrs| addrs.count().to_string())
        .map_err(|e| e.kind().to_string());
    let env = std::env::vars().count();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() > 1_600_000_000).to_string())
        .map_err(|e| e.to_string());
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(1);
        Ok::<_, String>((hasher.finish() != 0).to_string())
    };
    format!(
        "file={} socket={} resolve={} env={env} clock={} random={}",
        outcome(file),
        outcome(socket),
        outcome(resolve),
        outcome(clock),
        outcome(random)
    )
}

fn shown<T: ToString>(answer: Result<Vec<T>, dns::Error>) -> String {
    match answer {
        Ok(list) => list.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        Err(dns::Error::NoSuchName) => "NXDOMAIN".to_owned(),
        Err(dns::Error::Invalid(_)) => "INVALID".to_owned(),
        Err(dns::Error::Temporary(_)) => "TEMPFAIL".to_owned(),
    }
}

fn lookup(kind: &str, name: &str) -> String {
    let host = dns::Host;
    match kind {
        "a" => shown(host.a(name)),
        "aaaa" => shown(host.aaaa(name)),
        "mx" => shown(host.mx(name).map(|list| {
            list.into_iter()
                .map(|mx| format!("{}:{}", mx.preference, mx.exchange))
                .collect::<Vec<_>>()
        })),
        "txt" => shown(host.txt(name)),
        "ptr" => match name.parse::<IpAddr>() {
            Ok(ip) => shown(host.ptr(ip)),
            Err(_) => "INVALID".to_owned(),
        },
        _ => "UNKNOWN".to_owned(),
    }
}

impl Plugin for Probe {
    fn init(settings: &Settings) -> Result<Self, String> {
        settings.parse()
    }

    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        for (kind, name) in &self.lookups {
            let mut answer = String::new();
            for _ in 0..self.repeat.max(1) {
                answer = lookup(kind, name);
            }
            txn.add_header("X-Dns", &format!("{kind} {name} = {answer}"));
        }
        if let Some(counter) = &self.counter {
            let value = match kv::Host.increment(counter, 1, None) {
                Ok(n) => n.to_string(),
                Err(e) => format!("error: {e}"),
            };
            txn.add_header("X-Kv", &format!("{counter} = {value}"));
        }
        if self.sandbox {
            txn.add_header("X-Sandbox", &sandbox());
        }
        if self.carry {
            let seen = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let trail = TRAIL.lock().map_or(0, |mut trail| {
                trail.push(b'x');
                trail.len()
            });
            txn.add_header("X-Carried", &format!("static {seen} heap {trail}"));
        }
        for url in &self.fetch {
            let shown = match http::get(url) {
                Ok(response) => format!("{} {}", response.status, response.text().trim()),
                Err(e) => format!("error {e}"),
            };
            txn.add_header("X-Http", &format!("GET {url} = {shown}"));
        }
        if self.metrics {
            metrics::count("probe_messages", &[("listener", &txn.client().listener)]);
            // Precision is not the point: sizes in KiB.
            #[allow(clippy::cast_precision_loss, reason = "a test metric")]
            let kib = message.size() as f64 / 1024.0;
            metrics::observe("probe_size_kib", &[], kib);
            metrics::count("Bad-Name", &[]);
        }
        Verdict::Continue
    }
}

export_plugin!(Probe);
