//! Test-only plugin that does what its settings say, per stage:
//!
//! ```toml
//! [plugin.settings.rcpt]
//! when = "blocked"                     # only if the recipient contains this
//! verdict = "reject"                   # continue, accept, reject, tempfail,
//! code = 550                           # disconnect, discard, quarantine
//! enhanced = "5.7.1"
//! text = "no thanks"
//! modifications = [{ kind = "route", smarthost = "127.0.0.1:2525" }]
//! ```
//!
//! So the end-to-end tests can produce every verdict at every stage and
//! every modification, and see settings and metadata reach plugins.

use std::collections::HashMap;

use mailgate_plugin_sdk::{
    MailParameters, Mailbox, Message, NextHop, Notify, Plugin, Reply, ReversePath, Settings, Transaction, Verdict,
    export_plugin,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    /// Apply only when the stage's address (sender, recipient) or name
    /// (HELO) contains this.
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    code: u16,
    #[serde(default)]
    enhanced: Option<String>,
    #[serde(default)]
    text: String,
    #[serde(default)]
    modifications: Vec<Change>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum Change {
    SetReversePath {
        value: String,
    },
    SetRecipient {
        value: String,
    },
    /// rcpt: replace the recipient and its NOTIFY ("never" or a list
    /// such as "success,failure").
    SetRecipientNotify {
        value: String,
        notify: String,
    },
    /// data: add a recipient with this NOTIFY.
    AddRecipientNotify {
        value: String,
        notify: String,
    },
    /// mail, rcpt: a metadata entry describing the command's parameters.
    MetadataFromParameters {
        key: String,
    },
    Route {
        route: Option<String>,
        smarthost: Option<String>,
    },
    RouteRecipient {
        recipient: String,
        route: Option<String>,
        smarthost: Option<String>,
    },
    AddRecipient {
        value: String,
    },
    RemoveRecipient {
        value: String,
    },
    AddHeader {
        name: String,
        value: String,
    },
    RemoveHeader {
        name: String,
    },
    RemoveHeaderAt {
        name: String,
        index: u32,
    },
    SetHeader {
        name: String,
        value: String,
    },
    ReplaceBody {
        value: String,
    },
    SetMetadata {
        key: String,
        value: String,
    },
    /// data: a header carrying a metadata value (or "none").
    HeaderFromMetadata {
        name: String,
        key: String,
    },
    /// data: a header carrying this plugin's settings as JSON.
    HeaderFromSettings {
        name: String,
    },
    /// data: a header summarising what the message handle shows.
    HeaderFromMessage {
        name: String,
    },
    /// any stage: a metadata entry naming the context the hook saw.
    MetadataFromContext {
        key: String,
    },
    /// data: a header counting the messages this instance has seen, which
    /// tells fresh instances (always 1) from reused ones.
    Counter {
        name: String,
    },
    /// any stage: trap (a deliberate crash of the instance).
    Trap,
}

thread_local! {
    static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

struct Scripted {
    stages: HashMap<String, Script>,
    settings: String,
}

impl Scripted {
    /// `parameters` describes the stage's command parameters, for
    /// `metadata-from-parameters`.
    fn run(
        &self,
        stage: &str,
        subject: &str,
        txn: &Transaction,
        message: Option<&Message>,
        parameters: &str,
    ) -> Verdict {
        let Some(script) = self.stages.get(stage) else {
            return Verdict::Continue;
        };
        if script.when.as_deref().is_some_and(|w| !subject.contains(w)) {
            return Verdict::Continue;
        }
        for change in &script.modifications {
            self.apply(change, txn, message, parameters);
        }
        let reply = || Reply {
            code: script.code,
            enhanced: script.enhanced.clone(),
            text: script.text.clone(),
        };
        match script.verdict.as_deref().unwrap_or("continue") {
            "accept" => Verdict::Accept,
            "reject" => Verdict::Reject(reply()),
            "tempfail" => Verdict::Tempfail(reply()),
            "disconnect" => Verdict::Disconnect(reply()),
            "discard" => Verdict::Discard,
            "quarantine" => Verdict::Quarantine(script.text.clone()),
            "hold" => Verdict::Hold(script.text.clone()),
            _ => Verdict::Continue,
        }
    }

    fn apply(&self, change: &Change, txn: &Transaction, message: Option<&Message>, parameters: &str) {
        match change {
            Change::SetReversePath { value } => txn.set_reverse_path(value),
            Change::SetRecipient { value } => txn.set_recipient(value),
            Change::SetRecipientNotify { value, notify } => txn.set_recipient_notify(value, parse_notify(notify)),
            Change::AddRecipientNotify { value, notify } => txn.add_recipient_notify(value, parse_notify(notify)),
            Change::MetadataFromParameters { key } => txn.set_metadata(key, parameters),
            Change::Route { route, smarthost } => txn.route(hop(route, smarthost)),
            Change::RouteRecipient {
                recipient,
                route,
                smarthost,
            } => txn.route_recipient(recipient, hop(route, smarthost)),
            Change::AddRecipient { value } => txn.add_recipient(value),
            Change::RemoveRecipient { value } => txn.remove_recipient(value),
            Change::AddHeader { name, value } => txn.add_header(name, value),
            Change::RemoveHeader { name } => txn.remove_header(name),
            Change::RemoveHeaderAt { name, index } => txn.remove_header_at(name, *index),
            Change::SetHeader { name, value } => txn.set_header(name, value),
            Change::ReplaceBody { value } => txn.replace_body(value.as_bytes()),
            Change::SetMetadata { key, value } => txn.set_metadata(key, value),
            Change::HeaderFromMetadata { name, key } => txn.add_header(name, txn.metadata(key).unwrap_or("none")),
            Change::HeaderFromSettings { name } => txn.add_header(name, &self.settings),
            Change::HeaderFromMessage { name } => {
                if let Some(message) = message {
                    txn.add_header(name, &summary(message));
                }
            }
            Change::Counter { name } => {
                let seen = SEEN.with(|seen| {
                    seen.set(seen.get() + 1);
                    seen.get()
                });
                txn.add_header(name, &seen.to_string());
            }
            Change::Trap => std::process::abort(),
            Change::MetadataFromContext { key } => {
                let client = txn.client();
                let value = format!(
                    "ip={} listener={} tls={} auth={} helo={} from={} rcpts={}",
                    client.ip,
                    client.listener,
                    client.tls,
                    client.authenticated.as_deref().unwrap_or("-"),
                    client.helo.unwrap_or_default(),
                    match txn.reverse_path() {
                        Some(ReversePath::Mailbox(m)) => m.to_string(),
                        Some(_) => "<>".into(),
                        None => "-".into(),
                    },
                    txn.recipients().len()
                );
                txn.set_metadata(key, &value);
            }
        }
    }
}

/// "never", or a comma-separated list of success, failure, delay.
fn parse_notify(text: &str) -> Notify {
    let has = |word: &str| text.split(',').any(|w| w.trim().eq_ignore_ascii_case(word));
    Notify {
        success: has("success"),
        failure: has("failure"),
        delay: has("delay"),
    }
}

fn hop(route: &Option<String>, smarthost: &Option<String>) -> NextHop {
    match (route, smarthost) {
        (Some(name), _) => NextHop::Route(name.clone()),
        (None, Some(host)) => NextHop::Smarthost(host.clone()),
        (None, None) => NextHop::Route(String::new()),
    }
}

/// What the message handle shows: subject, parts, decoded texts, body size.
fn summary(message: &Message) -> String {
    let parts: Vec<String> = message
        .parts()
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}",
                p.content_type,
                p.filename.clone().unwrap_or_default(),
                p.size
            )
        })
        .collect();
    let texts = message.texts().join("|").replace(['\r', '\n'], " ");
    let body: usize = message.body_chunks().map(|c| c.len()).sum();
    format!(
        "subject={} headers={} parts={} texts={} body={}",
        message.first_header("Subject").unwrap_or_default(),
        message.headers().len(),
        parts.join(","),
        texts.trim(),
        body
    )
}

impl Plugin for Scripted {
    fn init(settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            stages: settings.parse()?,
            settings: settings.json().to_owned(),
        })
    }

    fn on_connect(&self, txn: &Transaction) -> Verdict {
        self.run("connect", &txn.client().ip, txn, None, "")
    }

    fn on_helo(&self, name: &str, txn: &Transaction) -> Verdict {
        self.run("helo", name, txn, None, "")
    }

    fn on_mail_from(&self, from: &ReversePath, params: &MailParameters, txn: &Transaction) -> Verdict {
        let subject = match from {
            ReversePath::Mailbox(m) => m.to_string(),
            _ => String::new(),
        };
        let parameters = format!(
            "ret={:?} envid={} requiretls={}",
            params.ret,
            params.envid.as_deref().unwrap_or("-"),
            params.requiretls
        );
        self.run("mail", &subject, txn, None, &parameters)
    }

    fn on_rcpt_to(&self, rcpt: &Mailbox, txn: &Transaction) -> Verdict {
        let parameters = txn.rcpt_parameters().map_or_else(String::new, |p| {
            let orcpt = p
                .orcpt
                .as_ref()
                .map_or_else(|| "-".to_owned(), |(t, a)| format!("{t};{a}"));
            format!("notify={:?} orcpt={orcpt}", p.notify)
        });
        self.run("rcpt", rcpt.as_str(), txn, None, &parameters)
    }

    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        let subject = message.first_header("Subject").unwrap_or_default();
        self.run("data", &subject, txn, Some(message), "")
    }
}

export_plugin!(Scripted);
