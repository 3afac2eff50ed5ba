//! The JSON a scanner is sent: the draft's request object (`stage`,
//! `action`, `timestamp`, `protocol`, `client`, `envelope`, and at `data`
//! the message's header fields in JMAP's form plus `rawMessage` in
//! base64), and for the outbound stages the queue id, the envelope, the
//! attempt (`delivery`) and the downstream's answer (`response`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::plugin::{DeliveryFacts, FailureFacts, HookContext, StageCall};
use crate::smtp::ReversePath;

/// What an inbound request may carry, as registration asks for it.
pub const INBOUND_PROPERTIES: &[&str] = &[
    "/stage",
    "/action",
    "/timestamp",
    "/protocol",
    "/client",
    "/envelope",
    "/message",
    "/rawMessage",
];

/// What an outbound request may carry.
pub const OUTBOUND_PROPERTIES: &[&str] = &[
    "/stage",
    "/action",
    "/timestamp",
    "/protocol",
    "/queue",
    "/envelope",
    "/delivery",
    "/response",
];

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    mail_parser::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).to_rfc3339()
}

/// ESMTP arguments (`SIZE=10`, `SMTPUTF8`) as the draft's `parameters`.
fn parameters<S: AsRef<str>>(args: &[S]) -> Value {
    let map: Map<String, Value> = args
        .iter()
        .map(|arg| {
            let (key, value) = arg.as_ref().split_once('=').unwrap_or((arg.as_ref(), ""));
            (key.to_ascii_uppercase(), Value::String(value.to_owned()))
        })
        .collect();
    Value::Object(map)
}

fn sender(path: &ReversePath, args: Value) -> Value {
    let address = match path {
        ReversePath::Null => Value::Null,
        path => Value::String(path.to_string()),
    };
    json!({"address": address, "parameters": args})
}

fn common(stage: &str, action: &str) -> Value {
    json!({
        "stage": stage,
        "action": action,
        "timestamp": now(),
        "protocol": {"version": "1.0"},
    })
}

/// The request for an inbound stage.
pub fn inbound(call: StageCall<'_>, ctx: &HookContext) -> Value {
    let mut body = common(super::inbound_name(call.stage()), "accept");
    let mut from = ctx.reverse_path.as_ref().map(|path| sender(path, json!({})));
    let mut to: Vec<Value> = ctx
        .recipients
        .iter()
        .map(|rcpt| json!({"address": rcpt.to_string(), "parameters": {}}))
        .collect();
    match call {
        StageCall::Mail(path, args) => from = Some(sender(path, parameters(&args.esmtp_args()))),
        StageCall::Rcpt(rcpt, dsn) => {
            let wire = dsn.wire();
            let args: Vec<&str> = wire.split_whitespace().collect();
            to.push(json!({"address": rcpt.to_string(), "parameters": parameters(&args)}));
        }
        StageCall::Data(message) => {
            let headers: Vec<Value> = message
                .headers()
                .into_iter()
                .map(|h| json!({"name": h.name, "value": h.value}))
                .collect();
            body["message"] = json!({"headers": headers, "size": message.size()});
            body["rawMessage"] = Value::String(BASE64.encode(message.raw()));
        }
        StageCall::Connect | StageCall::Helo(_) => {}
    }
    let helo = match call {
        StageCall::Helo(name) => Some(name.to_owned()),
        _ => ctx.helo.clone(),
    };
    body["client"] = json!({
        "ip": ctx.client.ip().to_canonical().to_string(),
        "port": ctx.client.port(),
        "ehlo": helo,
        "tls": ctx.tls,
        "authenticated": ctx.authenticated,
    });
    if call.stage() != crate::smtp::session::Stage::Connect {
        body["envelope"] = json!({"from": from, "to": to});
    }
    body
}

/// The request for an outbound stage (`route`, `delivery`, `defer`, `dsn`).
pub fn outbound(stage: &str, d: &DeliveryFacts, failure: Option<&FailureFacts>, reply: Option<&str>) -> Value {
    let mut body = common(stage, "continue");
    body["queue"] = json!({"id": d.queue_id});
    let from = if d.reverse_path.is_empty() {
        Value::Null
    } else {
        Value::String(d.reverse_path.clone())
    };
    let to: Vec<Value> = d.recipients.iter().map(|r| json!({"address": r})).collect();
    body["envelope"] = json!({"from": {"address": from}, "to": to});
    body["delivery"] = json!({
        "destination": d.destination,
        "route": d.route,
        "attempt": d.attempt,
        "ageSeconds": d.age_seconds,
        "size": d.size,
    });
    if let Some(f) = failure {
        body["response"] = json!({
            "code": f.code,
            "enhancedCode": f.enhanced,
            "message": f.text,
            "permanent": f.permanent,
        });
    } else if let Some(reply) = reply {
        body["response"] = json!({"message": reply});
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esmtp_arguments_become_parameters() {
        assert_eq!(
            parameters(&["SIZE=10", "smtputf8", "NOTIFY=FAILURE,DELAY"]),
            json!({"SIZE": "10", "SMTPUTF8": "", "NOTIFY": "FAILURE,DELAY"})
        );
    }

    #[test]
    fn an_outbound_request_carries_the_attempt_and_the_answer() {
        let facts = DeliveryFacts {
            queue_id: "Q1".into(),
            reverse_path: String::new(),
            recipients: vec!["a@x.test".into()],
            destination: "mx:x.test".into(),
            route: None,
            attempt: 2,
            age_seconds: 60,
            size: 100,
        };
        let failure = FailureFacts {
            code: Some(451),
            enhanced: Some("4.7.1".into()),
            text: "later".into(),
            permanent: false,
        };
        let body = outbound("defer", &facts, Some(&failure), None);
        assert_eq!(body["stage"], "defer");
        assert_eq!(body["envelope"]["from"]["address"], Value::Null);
        assert_eq!(body["delivery"]["attempt"], 2);
        assert_eq!(body["response"]["code"], 451);
        assert_eq!(body["queue"]["id"], "Q1");
    }
}
