//! The plugins' outbound stages in a delivery attempt (see
//! `crate::plugin::outbound` for the calls): `on-deliver` before each
//! destination's attempt, `on-defer` after its temporary failures,
//! `on-bounce` before a bounce is written, `on-delivered` after a
//! delivery. Every decision a plugin makes here is logged with the plugin's
//! name; the delivery log lines that follow carry its effect.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::info;

use super::DeliverySettings;
use super::error::{Failure, Outcome};
use super::route::{Destination, NextHop};
use super::tls::SmtpPolicy;
use crate::plugin::transcript::{Journal, RecordedOutbound, record_outbound};
use crate::plugin::{
    Answer, BounceDecision, Chain, DeferDecision, DeliverDecision, DeliveryFacts, FailureFacts, OutboundStage,
};
use crate::queue::{Hold, RecipientStatus, StoredMessage};
use crate::smtp::EnhancedCode;

/// The chain, when some plugin runs at `stage`.
fn chain(settings: &DeliverySettings, stage: OutboundStage) -> Option<&Arc<Chain>> {
    settings.chain.as_ref().filter(|chain| chain.runs_outbound(stage))
}

/// A journal for the host's answers, when outbound calls are recorded.
fn journal(settings: &DeliverySettings) -> Option<Journal> {
    settings.record.as_ref().map(|_| Journal::default())
}

/// Writes the transcript of one outbound call, when recording.
fn record(
    settings: &DeliverySettings,
    journal: Option<&Journal>,
    stage: OutboundStage,
    facts: &DeliveryFacts,
    failure: Option<&FailureFacts>,
    reply: Option<&str>,
    outcome: String,
) {
    let (Some(dir), Some(journal)) = (&settings.record, journal) else {
        return;
    };
    let now_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let entry = RecordedOutbound {
        stage: stage.name().to_owned(),
        delivery: facts.clone(),
        failure: failure.cloned(),
        reply: reply.map(str::to_owned),
        outcome,
    };
    record_outbound(dir, entry, journal, now_ms);
}

/// What plugins see of one destination's delivery.
pub fn facts(message: &StoredMessage, hop: Option<&NextHop>, indices: &[usize]) -> DeliveryFacts {
    let destination = match hop {
        None => "none".to_owned(),
        Some(NextHop::Smtp {
            destination: Destination::Mx(domain),
            ..
        }) => format!("mx:{domain}"),
        Some(NextHop::Smtp {
            destination: Destination::Host { host, port },
            ..
        }) => format!("smarthost:{host}:{port}"),
        Some(NextHop::Maildir(dir)) => format!("maildir:{}", dir.display()),
    };
    let route = indices
        .iter()
        .filter_map(|&i| message.envelope.recipients.get(i))
        .find_map(|r| match &r.route {
            Some(crate::queue::RouteOverride::Named(name)) => Some(name.clone()),
            _ => None,
        });
    DeliveryFacts {
        queue_id: message.id.to_string(),
        reverse_path: message.envelope.reverse_path.to_string(),
        recipients: indices
            .iter()
            .filter_map(|&i| message.envelope.recipients.get(i))
            .map(|r| r.address.to_string())
            .collect(),
        destination,
        route,
        attempt: message.state.attempts,
        age_seconds: SystemTime::now()
            .duration_since(message.envelope.received_at)
            .map_or(0, |d| d.as_secs()),
        size: message.content_len,
    }
}

fn failure_facts(failure: &Failure, permanent: bool) -> FailureFacts {
    let code = failure
        .diagnostic
        .get(..3)
        .filter(|_| failure.smtp_reply)
        .and_then(|c| c.parse().ok());
    FailureFacts {
        code,
        enhanced: Some(failure.status.to_string()),
        text: failure.diagnostic.clone(),
        permanent,
    }
}

fn local(status: EnhancedCode, diagnostic: String) -> Failure {
    Failure {
        status,
        diagnostic,
        remote: None,
        smtp_reply: false,
    }
}

/// What `on-deliver` leaves to do for one destination.
pub enum Before {
    /// Attempt it, at this hop.
    Attempt(Option<NextHop>),
    /// Not now: these outcomes for every recipient, and when to retry
    /// (`None`: the schedule).
    Decided(Outcome, Option<SystemTime>),
}

/// Asks `on-deliver` about `hop`'s recipients `indices`.
pub async fn before(
    settings: &DeliverySettings,
    message: &mut StoredMessage,
    hop: Option<NextHop>,
    indices: &[usize],
) -> Before {
    let Some(chain) = chain(settings, OutboundStage::Deliver) else {
        return Before::Attempt(hop);
    };
    let told = facts(message, hop.as_ref(), indices);
    let journal = journal(settings);
    let answer = chain.on_deliver(&told, journal.as_ref()).await;
    let outcome = answer.describe(OutboundStage::Deliver);
    record(
        settings,
        journal.as_ref(),
        OutboundStage::Deliver,
        &told,
        None,
        None,
        outcome,
    );
    let (decision, by) = match answer {
        Answer::Neutral => return Before::Attempt(hop),
        Answer::Fault(reason) => {
            return Before::Decided(Outcome::Deferred(local(EnhancedCode::new(4, 3, 0), reason)), None);
        }
        Answer::Decided(decision, by) => (decision, by),
    };
    let domain = indices
        .iter()
        .filter_map(|&i| message.envelope.recipients.get(i))
        .map(|r| r.address.domain_key())
        .next()
        .unwrap_or_default();
    match decision {
        DeliverDecision::Continue => Before::Attempt(hop),
        DeliverDecision::Reroute(route) => Before::Attempt(settings.routes.next_hop(&domain, Some(&route))),
        DeliverDecision::Tls(mode) => Before::Attempt(hop.map(|hop| match hop {
            NextHop::Smtp { destination, policy } => NextHop::Smtp {
                destination,
                policy: Arc::new(SmtpPolicy {
                    tls: mode,
                    ..(*policy).clone()
                }),
            },
            other => other,
        })),
        DeliverDecision::Hold(reason) => {
            let reason = format!("{reason} (plugin {by})");
            message.state.held = Some(Hold {
                reason: reason.clone(),
                since: SystemTime::now(),
            });
            Before::Decided(
                Outcome::Deferred(local(EnhancedCode::new(4, 3, 0), format!("held: {reason}"))),
                None,
            )
        }
        DeliverDecision::DeferUntil(at) => Before::Decided(
            Outcome::Deferred(local(EnhancedCode::new(4, 3, 0), format!("deferred by plugin {by}"))),
            Some(at),
        ),
        DeliverDecision::Bounce(reason) => Before::Decided(
            Outcome::Failed(local(EnhancedCode::new(5, 7, 1), format!("{reason} (plugin {by})"))),
            None,
        ),
    }
}

/// What `on-defer` decided for a destination whose recipients failed for
/// now: retry there now, or when.
pub enum AfterDefer {
    /// The schedule (or this time).
    Retry(Option<SystemTime>),
    /// Again now, at this hop.
    Reroute(Option<NextHop>),
}

/// Asks `on-defer` about the temporary failures among `outcomes`; a
/// `bounce` turns them into permanent ones.
pub async fn after_defer(
    settings: &DeliverySettings,
    message: &StoredMessage,
    hop: Option<&NextHop>,
    indices: &[usize],
    outcomes: &mut [Outcome],
) -> AfterDefer {
    let Some(chain) = chain(settings, OutboundStage::Defer) else {
        return AfterDefer::Retry(None);
    };
    let deferred: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::Deferred(_)))
        .map(|(n, _)| n)
        .collect();
    let Some(Outcome::Deferred(first)) = deferred.first().and_then(|&n| outcomes.get(n)) else {
        return AfterDefer::Retry(None);
    };
    let which: Vec<usize> = deferred.iter().filter_map(|&n| indices.get(n).copied()).collect();
    let (told, failure) = (facts(message, hop, &which), failure_facts(first, false));
    let journal = journal(settings);
    let answer = chain.on_defer(&told, &failure, journal.as_ref()).await;
    let outcome = answer.describe(OutboundStage::Defer);
    record(
        settings,
        journal.as_ref(),
        OutboundStage::Defer,
        &told,
        Some(&failure),
        None,
        outcome,
    );
    match answer {
        Answer::Neutral | Answer::Fault(_) => AfterDefer::Retry(None),
        Answer::Decided(DeferDecision::Default, _) => AfterDefer::Retry(None),
        Answer::Decided(DeferDecision::RetryAt(at), _) => AfterDefer::Retry(Some(at)),
        Answer::Decided(DeferDecision::Reroute(route), by) => {
            let domain = which
                .first()
                .and_then(|&i| message.envelope.recipients.get(i))
                .map(|r| r.address.domain_key())
                .unwrap_or_default();
            info!(queue_id = %message.id, plugin = by, "rerouted after a deferral; trying again now");
            AfterDefer::Reroute(settings.routes.next_hop(&domain, Some(&route)))
        }
        Answer::Decided(DeferDecision::Bounce(reason), by) => {
            for n in deferred {
                if let Some(outcome) = outcomes.get_mut(n) {
                    let last = match outcome {
                        Outcome::Deferred(f) => f.diagnostic.clone(),
                        _ => continue,
                    };
                    *outcome = Outcome::Failed(local(
                        EnhancedCode::new(5, 7, 1),
                        format!("{reason} (plugin {by}; last error: {last})"),
                    ));
                }
            }
            AfterDefer::Retry(None)
        }
    }
}

/// Asks `on-bounce` about each failed recipient before the bounce is
/// written: `suppress` drops it from the bounce, `explain` rewrites its
/// reason, `retry` puts the recipient back in the queue.
pub async fn before_bounce(
    settings: &DeliverySettings,
    message: &mut StoredMessage,
    failures: &mut Vec<(usize, Failure)>,
) {
    let Some(chain) = chain(settings, OutboundStage::Bounce).cloned() else {
        return;
    };
    let mut kept = Vec::with_capacity(failures.len());
    for (index, mut failure) in failures.drain(..) {
        let hop = message
            .envelope
            .recipients
            .get(index)
            .and_then(|r| settings.routes.next_hop(&r.address.domain_key(), r.route.as_ref()));
        let facts = facts(message, hop.as_ref(), &[index]);
        let told = failure_facts(&failure, true);
        let journal = journal(settings);
        let answer = chain.on_bounce(&facts, &told, journal.as_ref()).await;
        let outcome = answer.describe(OutboundStage::Bounce);
        record(
            settings,
            journal.as_ref(),
            OutboundStage::Bounce,
            &facts,
            Some(&told),
            None,
            outcome,
        );
        match answer {
            Answer::Neutral | Answer::Fault(_) | Answer::Decided(BounceDecision::Send, _) => {
                kept.push((index, failure))
            }
            Answer::Decided(BounceDecision::Suppress, by) => {
                info!(queue_id = %message.id, to = %facts.recipients.join(","), plugin = by, "bounce suppressed by a plugin");
            }
            Answer::Decided(BounceDecision::Explain(text), _) => {
                failure.diagnostic = text;
                kept.push((index, failure));
            }
            Answer::Decided(BounceDecision::Retry, by) => {
                info!(queue_id = %message.id, to = %facts.recipients.join(","), plugin = by, "permanent failure retried, as a plugin asked");
                if let Some(slot) = message.state.recipients.get_mut(index) {
                    *slot = RecipientStatus::Pending {
                        last_error: Some(failure.diagnostic.clone()),
                    };
                }
            }
        }
    }
    *failures = kept;
}

/// Tells `on-delivered` about the recipients of `indices` that `outcomes`
/// shows delivered.
pub async fn delivered(
    settings: &DeliverySettings,
    message: &StoredMessage,
    hop: Option<&NextHop>,
    indices: &[usize],
    outcomes: &[Outcome],
) {
    let Some(chain) = chain(settings, OutboundStage::Delivered) else {
        return;
    };
    let done: Vec<usize> = indices
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Delivered(_)))
        .map(|(&i, _)| i)
        .collect();
    if done.is_empty() {
        return;
    }
    let reply = match hop {
        Some(NextHop::Smtp { .. }) => "250 accepted",
        Some(NextHop::Maildir(_)) => "delivered to the maildir",
        None => "",
    };
    let told = facts(message, hop, &done);
    let journal = journal(settings);
    let faults = chain.on_delivered(&told, reply, journal.as_ref()).await;
    let outcome = match faults.is_empty() {
        true => "continue".to_owned(),
        false => format!("fault {}", faults.join("; ")),
    };
    record(
        settings,
        journal.as_ref(),
        OutboundStage::Delivered,
        &told,
        None,
        Some(reply),
        outcome,
    );
}
