//! A plugin built against `mailgate:plugin@0.1.0`, straight from the WIT
//! kept in `wit/v0.1.0` (no SDK, which follows the current version). It
//! uses the 0.1.0 hooks, the message handle and two capabilities (log,
//! kv), so the tests see that an old plugin keeps loading and working:
//!
//! - rcpt: `refuse-*` recipients get 550 5.7.1; `rename-me@...` becomes
//!   `renamed@...` of the same domain;
//! - mail: the SIZE parameter goes into metadata;
//! - data: a header `X-Legacy` with the message size, its Subject, the
//!   metadata and a kv counter, and a log line.

#![allow(unsafe_code, reason = "wit-bindgen's generated export glue")]

wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "plugin" });

use exports::mailgate::plugin::hooks::Guest;
use mailgate::plugin::types::{
    Context, Header, MailParameters, Message, MetadataEntry, Modification, Outcome, Reply, Verdict,
};
use mailgate::plugin::{kv, log};

struct Legacy;

fn outcome(verdict: Verdict, modifications: Vec<Modification>) -> Outcome {
    Outcome { verdict, modifications }
}

fn proceed() -> Outcome {
    outcome(Verdict::Continue, Vec::new())
}

impl Guest for Legacy {
    fn init(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn on_connect(_ctx: Context) -> Outcome {
        proceed()
    }

    fn on_helo(_ctx: Context, _name: String) -> Outcome {
        proceed()
    }

    fn on_mail(_ctx: Context, _reverse_path: String, parameters: MailParameters) -> Outcome {
        let size = parameters.size.map_or_else(|| "-".to_owned(), |s| s.to_string());
        outcome(
            Verdict::Continue,
            vec![Modification::SetMetadata(MetadataEntry {
                key: "legacy-size".into(),
                value: size,
            })],
        )
    }

    fn on_rcpt(_ctx: Context, recipient: String) -> Outcome {
        if recipient.starts_with("refuse-") {
            return outcome(
                Verdict::Reject(Reply {
                    code: 550,
                    enhanced: Some("5.7.1".into()),
                    text: "refused by a 0.1.0 plugin".into(),
                }),
                Vec::new(),
            );
        }
        if let Some(domain) = recipient.strip_prefix("rename-me@") {
            return outcome(
                Verdict::Continue,
                vec![Modification::SetRecipient(format!("renamed@{domain}"))],
            );
        }
        proceed()
    }

    fn on_data(ctx: Context, message: &Message) -> Outcome {
        let count = kv::increment("messages", 1, 0).unwrap_or(-1);
        let subject = message.header("Subject").into_iter().next().unwrap_or_default();
        let size = ctx
            .metadata
            .iter()
            .rev()
            .find(|e| e.key == "legacy-size")
            .map_or("none", |e| e.value.as_str());
        log::write(log::Level::Info, &format!("legacy plugin saw message {count}"));
        let value = format!(
            "size={} subject={subject} mail-size={size} count={count}",
            message.size()
        );
        outcome(
            Verdict::Continue,
            vec![Modification::AddHeader(Header {
                name: "X-Legacy".into(),
                value,
            })],
        )
    }
}

export!(Legacy);
