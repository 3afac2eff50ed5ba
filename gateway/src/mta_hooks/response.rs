//! A scanner's answer: operations on the request object (`set`, `add`,
//! `delete`, each at a JSON Pointer), checked as a whole before anything
//! applies, then read as mailgate's verdicts and modifications.
//!
//! Inbound, `/action` is `accept` (go on), `reject` (with `/response`'s
//! code, enhanced code and text; a 4xx tempfails), `discard` and
//! `quarantine` (at `data`) or `disconnect`; at `data` the header fields
//! (`/message/headers`) and the recipients (`/envelope/to`) may be added
//! to and deleted from, and the sender (`/envelope/from/address`) set.
//! Outbound, `/action` is `continue` or `cancel`, with `/response/message`
//! as the reason. Any other path or action is refused, and the whole
//! answer with it (a fault, answered by `on_error`).

use serde::Deserialize;
use serde_json::Value;

use crate::plugin::{HeaderField, Modification, ParsedMessage, Verdict, header_name, mailbox};
use crate::smtp::session::Stage;
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};

/// The most operations one answer may carry.
const MAX_OPERATIONS: usize = 1000;

/// A scanner's operations; empty for `204 No Content`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    set: Vec<Operation>,
    #[serde(default)]
    add: Vec<Operation>,
    #[serde(default)]
    delete: Vec<Operation>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Operation {
    path: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    index: Option<u32>,
}

impl Operation {
    /// The path without a trailing `/N`, and N (or `index`).
    fn target(&self) -> (&str, Option<u32>) {
        if let Some((parent, last)) = self.path.rsplit_once('/')
            && let Ok(n) = last.parse()
        {
            return (parent, Some(n));
        }
        (self.path.as_str(), self.index)
    }
}

/// What a scanner said at an outbound stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on; a `/response/message` it set, if any.
    Continue(Option<String>),
    /// Stop: bounce now (`route`, `defer`) or send no DSN (`dsn`), with
    /// the reason it set, if any.
    Cancel(Option<String>),
}

/// `/action` and `/response` as set.
#[derive(Default)]
struct Answer {
    action: Option<String>,
    response: serde_json::Map<String, Value>,
}

fn answer(set: &[Operation], mut other: impl FnMut(&Operation) -> Result<(), String>) -> Result<Answer, String> {
    let mut answer = Answer::default();
    for op in set {
        match op.path.as_str() {
            "/action" => {
                let action = op.value.as_str().ok_or("`/action` must be a string")?;
                answer.action = Some(action.to_owned());
            }
            "/response" => {
                answer.response = op.value.as_object().cloned().ok_or("`/response` must be an object")?;
            }
            path if path.starts_with("/response/") => {
                let field = &path["/response/".len()..];
                if !matches!(field, "code" | "enhancedCode" | "message") {
                    return Err(format!("`{path}` is not a response field"));
                }
                answer.response.insert(field.to_owned(), op.value.clone());
            }
            _ => other(op)?,
        }
    }
    Ok(answer)
}

fn response_text(response: &serde_json::Map<String, Value>) -> Result<Option<String>, String> {
    match response.get("message") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err("`/response/message` must be a string".to_owned()),
    }
}

/// The reply `/response` describes, `default` filling what it leaves out;
/// its code must be one of `allowed`'s classes.
fn reply(response: &serde_json::Map<String, Value>, default: u16, allowed: &[u16]) -> Result<Reply, String> {
    let code = match response.get("code") {
        None | Some(Value::Null) => default,
        Some(code) => code
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .ok_or("`/response/code` must be a number")?,
    };
    if !allowed.contains(&(code / 100)) || !(400..=599).contains(&code) {
        return Err(format!("reply code {code} does not fit the action"));
    }
    let class = u8::try_from(code / 100).unwrap_or(5);
    let enhanced = match response.get("enhancedCode") {
        None | Some(Value::Null) => EnhancedCode::new(class, 7, 1),
        Some(Value::String(text)) => EnhancedCode::parse(text)
            .filter(|e| e.class() == class)
            .ok_or_else(|| format!("enhanced code {text:?} does not fit reply code {code}"))?,
        Some(_) => return Err("`/response/enhancedCode` must be a string".to_owned()),
    };
    let text = response_text(response)?.unwrap_or_else(|| "Refused by a content scanner".to_owned());
    Ok(Reply::new(code, enhanced, text))
}

fn header_field(value: &Value) -> Result<HeaderField, String> {
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a header needs a `name`")?;
    let text = value
        .get("value")
        .and_then(Value::as_str)
        .ok_or("a header needs a `value`")?;
    if text.len() > 64 * 1024 || text.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "invalid value for header {name}: no CR, LF or NUL, at most 64 KiB"
        ));
    }
    Ok(HeaderField {
        name: header_name(name.to_owned())?,
        value: text.to_owned(),
    })
}

fn address(value: &Value) -> Result<Mailbox, String> {
    let text = value
        .as_str()
        .or_else(|| value.get("address").and_then(Value::as_str))
        .ok_or("a recipient needs an `address`")?;
    mailbox(text)
}

/// The `n`-th header field of `message` as (name, its occurrence among
/// fields of that name).
fn nth_field(message: &ParsedMessage, n: u32) -> Result<(String, u32), String> {
    let headers = message.headers();
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let field = headers.get(n).ok_or_else(|| format!("there is no header field {n}"))?;
    let before = headers[..n]
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(&field.name))
        .count();
    Ok((field.name.clone(), u32::try_from(before).unwrap_or(u32::MAX)))
}

/// The verdict and modifications of an answer at inbound `stage`;
/// `message` at `data`, `recipients` those accepted so far.
pub fn inbound(
    patch: Patch,
    stage: Stage,
    message: Option<&ParsedMessage>,
    recipients: &[Mailbox],
) -> Result<(Verdict, Vec<Modification>), String> {
    if patch.set.len() + patch.add.len() + patch.delete.len() > MAX_OPERATIONS {
        return Err(format!("more than {MAX_OPERATIONS} operations"));
    }
    let at_data = |path: &str| {
        if stage == Stage::Data {
            Ok(())
        } else {
            Err(format!("`{path}` can change only at data"))
        }
    };
    let mut modifications = Vec::new();
    let answer = answer(&patch.set, |op| match op.path.as_str() {
        "/envelope/from/address" if matches!(stage, Stage::Mail | Stage::Data) => {
            let path = match &op.value {
                Value::Null => ReversePath::Null,
                value => ReversePath::Mailbox(address(value)?),
            };
            modifications.push(Modification::SetReversePath(path));
            Ok(())
        }
        path => Err(format!("setting `{path}` is not supported")),
    })?;
    for op in &patch.add {
        match op.path.as_str() {
            "/message/headers" | "/message/headers/-" => {
                at_data(&op.path)?;
                let field = header_field(&op.value)?;
                modifications.push(match op.index {
                    Some(index) => Modification::InsertHeader(index, field),
                    None => Modification::AddHeader(field),
                });
            }
            "/envelope/to" | "/envelope/to/-" => {
                at_data(&op.path)?;
                modifications.push(Modification::AddRecipient(address(&op.value)?, None));
            }
            path => return Err(format!("adding to `{path}` is not supported")),
        }
    }
    for op in &patch.delete {
        match op.target() {
            ("/message/headers", Some(n)) => {
                at_data(&op.path)?;
                let message = message.ok_or("no message to delete a header field from")?;
                let (name, occurrence) = nth_field(message, n)?;
                modifications.push(Modification::RemoveHeaderAt(name, occurrence));
            }
            ("/envelope/to", Some(n)) => {
                at_data(&op.path)?;
                let rcpt = usize::try_from(n)
                    .ok()
                    .and_then(|n| recipients.get(n))
                    .ok_or_else(|| format!("there is no recipient {n}"))?;
                modifications.push(Modification::RemoveRecipient(rcpt.clone()));
            }
            _ => return Err(format!("deleting `{}` is not supported", op.path)),
        }
    }
    let verdict = match (answer.action.as_deref().unwrap_or("accept"), stage) {
        ("accept", _) => Verdict::Continue,
        ("reject", _) => {
            let reply = reply(&answer.response, 550, &[4, 5])?;
            if reply.code() >= 500 {
                Verdict::Reject(reply)
            } else {
                Verdict::Tempfail(reply)
            }
        }
        ("disconnect", _) => Verdict::Disconnect(reply(&answer.response, 421, &[4, 5])?),
        ("discard", Stage::Data) => Verdict::Discard,
        ("quarantine", Stage::Data) => Verdict::Quarantine(
            response_text(&answer.response)?.unwrap_or_else(|| "quarantined by an MTA Hooks scanner".to_owned()),
        ),
        (action, stage) => return Err(format!("{action:?} is not an action at {}", super::inbound_name(stage))),
    };
    Ok((verdict, modifications))
}

/// What an answer at an outbound stage says.
pub fn outbound(patch: Patch) -> Result<Outcome, String> {
    if let Some(op) = patch.add.first().or(patch.delete.first()) {
        return Err(format!("`{}` cannot change at an outbound stage", op.path));
    }
    let answer = answer(&patch.set, |op| Err(format!("setting `{}` is not supported", op.path)))?;
    let text = response_text(&answer.response)?;
    match answer.action.as_deref().unwrap_or("continue") {
        "continue" => Ok(Outcome::Continue(text)),
        "cancel" => Ok(Outcome::Cancel(text)),
        other => Err(format!("{other:?} is not an outbound action (continue or cancel)")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(value: Value) -> Patch {
        serde_json::from_value(value).expect("a patch")
    }

    #[test]
    fn actions_become_verdicts() {
        let rcpt = |v| inbound(patch(v), Stage::Rcpt, None, &[]).map(|(verdict, _)| verdict);
        assert_eq!(rcpt(json!({})), Ok(Verdict::Continue));
        assert_eq!(
            rcpt(json!({"set": [{"path": "/action", "value": "reject"}]})),
            Ok(Verdict::Reject(Reply::new(
                550,
                EnhancedCode::new(5, 7, 1),
                "Refused by a content scanner"
            )))
        );
        assert_eq!(
            rcpt(json!({"set": [
                {"path": "/action", "value": "reject"},
                {"path": "/response", "value": {"code": 451, "enhancedCode": "4.7.1", "message": "later"}}
            ]})),
            Ok(Verdict::Tempfail(Reply::new(451, EnhancedCode::new(4, 7, 1), "later")))
        );
        assert!(rcpt(json!({"set": [{"path": "/action", "value": "discard"}]})).is_err());
        assert!(rcpt(json!({"set": [{"path": "/action", "value": "teleport"}]})).is_err());
        assert!(
            rcpt(json!({"set": [{"path": "/action", "value": "reject"}, {"path": "/response/code", "value": 250}]}))
                .is_err()
        );
        assert!(rcpt(json!({"set": [{"path": "/action", "value": "reject"}, {"path": "/response/enhancedCode", "value": "4.1.1"}]})).is_err());
    }

    #[test]
    fn data_modifications_are_read_and_the_rest_refused() {
        let message = ParsedMessage::new(b"From: a@x.test\r\nX-A: 1\r\nSubject: s\r\nX-A: 2\r\n\r\nbody\r\n".to_vec());
        let rcpts = [mailbox("r@x.test").unwrap()];
        let (verdict, mods) = inbound(
            patch(json!({
                "add": [{"path": "/message/headers", "value": {"name": "X-Scanned", "value": "yes"}},
                        {"path": "/message/headers", "index": 0, "value": {"name": "X-Top", "value": "1"}},
                        {"path": "/envelope/to", "value": {"address": "copy@x.test"}}],
                "delete": [{"path": "/message/headers/3"}, {"path": "/envelope/to", "index": 0}]
            })),
            Stage::Data,
            Some(&message),
            &rcpts,
        )
        .unwrap();
        assert_eq!(verdict, Verdict::Continue);
        let field = |name: &str, value: &str| HeaderField {
            name: name.into(),
            value: value.into(),
        };
        assert_eq!(
            mods,
            vec![
                Modification::AddHeader(field("X-Scanned", "yes")),
                Modification::InsertHeader(0, field("X-Top", "1")),
                Modification::AddRecipient(mailbox("copy@x.test").unwrap(), None),
                Modification::RemoveHeaderAt("X-A".into(), 1),
                Modification::RemoveRecipient(rcpts[0].clone()),
            ]
        );
        for bad in [
            json!({"set": [{"path": "/rawMessage", "value": ""}]}),
            json!({"add": [{"path": "/message/headers", "value": {"name": "X", "value": "a\r\nInjected: b"}}]}),
            json!({"delete": [{"path": "/message/headers/9"}]}),
            json!({"delete": [{"path": "/envelope/to/1"}]}),
        ] {
            assert!(
                inbound(patch(bad.clone()), Stage::Data, Some(&message), &rcpts).is_err(),
                "{bad}"
            );
        }
        let header = json!({"add": [{"path": "/message/headers", "value": {"name": "X", "value": "y"}}]});
        assert!(inbound(patch(header), Stage::Rcpt, None, &rcpts).is_err());
        assert!(serde_json::from_value::<Patch>(json!({"replace": []})).is_err());
    }

    #[test]
    fn outbound_answers_continue_or_cancel() {
        assert_eq!(outbound(Patch::default()), Ok(Outcome::Continue(None)));
        assert_eq!(
            outbound(patch(
                json!({"set": [{"path": "/action", "value": "cancel"}, {"path": "/response/message", "value": "no"}]})
            )),
            Ok(Outcome::Cancel(Some("no".into())))
        );
        assert!(outbound(patch(json!({"set": [{"path": "/action", "value": "reject"}]}))).is_err());
        assert!(outbound(patch(json!({"add": [{"path": "/message/headers", "value": {}}]}))).is_err());
    }
}
