//! The outbound stages' component values: the facts handed to a hook
//! (`delivery`, `failure` records) and the verdict variants read back,
//! checked (a route must be configured, a TLS policy known).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component::Val;

use super::{BounceDecision, DeferDecision, DeliverDecision, DeliveryFacts, FailureFacts};
use crate::delivery::tls::TlsMode;
use crate::plugin::chain::Chain;
use crate::queue::RouteOverride;

pub(super) fn delivery_val(d: &DeliveryFacts) -> Val {
    Val::Record(vec![
        ("queue-id".into(), Val::String(d.queue_id.clone())),
        ("reverse-path".into(), Val::String(d.reverse_path.clone())),
        (
            "recipients".into(),
            Val::List(d.recipients.iter().cloned().map(Val::String).collect()),
        ),
        ("destination".into(), Val::String(d.destination.clone())),
        (
            "route".into(),
            Val::Option(d.route.clone().map(|r| Box::new(Val::String(r)))),
        ),
        ("attempt".into(), Val::U32(d.attempt)),
        ("age-seconds".into(), Val::U64(d.age_seconds)),
        ("size".into(), Val::U64(d.size)),
    ])
}

pub(super) fn failure_val(f: &FailureFacts) -> Val {
    Val::Record(vec![
        ("code".into(), Val::Option(f.code.map(|c| Box::new(Val::U16(c))))),
        (
            "enhanced".into(),
            Val::Option(f.enhanced.clone().map(|e| Box::new(Val::String(e)))),
        ),
        ("text".into(), Val::String(f.text.clone())),
        ("permanent".into(), Val::Bool(f.permanent)),
    ])
}

fn case(val: Val) -> Result<(String, Option<Val>), String> {
    match val {
        Val::Variant(name, payload) => Ok((name, payload.map(|b| *b))),
        other => Err(format!("expected a variant, got {other:?}")),
    }
}

fn string(payload: Option<Val>) -> Result<String, String> {
    match payload {
        Some(Val::String(s)) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn time(payload: Option<Val>) -> Result<SystemTime, String> {
    match payload {
        Some(Val::U64(secs)) => Ok(UNIX_EPOCH + Duration::from_secs(secs)),
        other => Err(format!("expected seconds, got {other:?}")),
    }
}

fn next_hop(payload: Option<Val>, chain: &Chain) -> Result<RouteOverride, String> {
    let (kind, value) = case(payload.ok_or("expected a next-hop")?)?;
    let value = string(value)?;
    let hop = match kind.as_str() {
        "route" => crate::plugin::bindings::mailgate::plugin::types::NextHop::Route(value),
        "smarthost" => crate::plugin::bindings::mailgate::plugin::types::NextHop::Smarthost(value),
        other => return Err(format!("unknown next-hop {other:?}")),
    };
    crate::plugin::convert::next_hop(hop, chain.route_names())
}

pub(super) fn deliver_decision(val: Val, chain: &Chain) -> Result<Option<DeliverDecision>, String> {
    let (name, payload) = case(val)?;
    Ok(Some(match name.as_str() {
        "continue" => return Ok(None),
        "reroute" => DeliverDecision::Reroute(next_hop(payload, chain)?),
        "tls" => DeliverDecision::Tls(match payload {
            Some(Val::Enum(policy)) => match policy.as_str() {
                "auto" => TlsMode::Auto,
                "dane" => TlsMode::Dane,
                "mta-sts" => TlsMode::MtaSts,
                "opportunistic" => TlsMode::Opportunistic,
                "require" => TlsMode::Require,
                "disabled" => TlsMode::Disabled,
                other => return Err(format!("unknown tls-policy {other:?}")),
            },
            other => return Err(format!("expected a tls-policy, got {other:?}")),
        }),
        "hold" => DeliverDecision::Hold(string(payload)?),
        "defer-until" => DeliverDecision::DeferUntil(time(payload)?),
        "bounce" => DeliverDecision::Bounce(string(payload)?),
        other => return Err(format!("unknown deliver-verdict {other:?}")),
    }))
}

pub(super) fn defer_decision(val: Val, chain: &Chain) -> Result<Option<DeferDecision>, String> {
    let (name, payload) = case(val)?;
    Ok(Some(match name.as_str() {
        "default" => return Ok(None),
        "retry-at" => DeferDecision::RetryAt(time(payload)?),
        "reroute" => DeferDecision::Reroute(next_hop(payload, chain)?),
        "bounce" => DeferDecision::Bounce(string(payload)?),
        other => return Err(format!("unknown defer-verdict {other:?}")),
    }))
}

pub(super) fn bounce_decision(val: Val) -> Result<Option<BounceDecision>, String> {
    let (name, payload) = case(val)?;
    Ok(Some(match name.as_str() {
        "send" => return Ok(None),
        "suppress" => BounceDecision::Suppress,
        "explain" => BounceDecision::Explain(string(payload)?),
        "retry" => BounceDecision::Retry,
        other => return Err(format!("unknown bounce-verdict {other:?}")),
    }))
}
