//! One delivery attempt for one message: group the pending recipients by
//! next hop, deliver each group, record the per-recipient outcomes, bounce
//! what failed for good, and persist the new state.

use std::time::{Duration, Instant, SystemTime};

use tokio::task::spawn_blocking;
use tracing::{error, info};

use super::DeliverySettings;
use super::client::SmtpClient;
use super::connect;
use super::error::{DeliveryError, Failure, Handoff, Outcome};
use super::maildir::MaildirDrop;
use super::notify;
use super::outbound;
use super::pool::ConnectionPool;
use super::route::{Destination, NextHop};
use super::tls::SmtpPolicy;
use crate::metrics::{DeliveryResult, metrics};
use crate::queue::{DeliveryState, Recipient, RecipientStatus, Spool, SpoolError, StoredMessage};
use crate::smtp::EnhancedCode;

/// What an attempt left to do.
#[derive(Debug)]
pub enum Next {
    /// Every recipient is finished; the message is gone from the spool.
    Done,
    /// Some recipients are deferred; try again at this time.
    RetryAt(Instant),
}

/// The result of an attempt, for the runner.
#[derive(Debug)]
pub struct AttemptResult {
    /// The message with its updated state.
    pub message: StoredMessage,
    /// What comes next for it.
    pub next: Next,
    /// DSNs (a bounce, a delay warning) that were spooled and now need
    /// delivering.
    pub notices: Vec<StoredMessage>,
}

/// Runs one attempt.
pub async fn attempt(
    spool: &Spool,
    settings: &DeliverySettings,
    pool: &ConnectionPool,
    mut message: StoredMessage,
) -> AttemptResult {
    let started = Instant::now();
    let groups = group_by_hop(settings, &message);
    message.state.attempts += 1;
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    let mut delivered: Vec<(usize, Handoff)> = Vec::new();
    let group_count = groups.len();
    // A retry time a plugin chose (the earliest, when several did).
    let mut retry_at: Option<SystemTime> = None;
    for (n, (hop, indices)) in groups.into_iter().enumerate() {
        let (hop, outcomes, retry) = with_plugins(spool, settings, pool, &mut message, hop, &indices).await;
        retry_at = match (retry_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let relay = hop.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string);
        for (index, outcome) in indices.into_iter().zip(outcomes) {
            if let Outcome::Delivered(handoff) = outcome {
                delivered.push((index, handoff));
            }
            record(&mut message, index, outcome, &relay, &mut failures);
        }
        if n + 1 < group_count {
            // A crash during the next group must not repeat this one's
            // deliveries; failures stay pending on disk until their bounce
            // is spooled, so a crash cannot lose the bounce.
            let interim = unbounced_as_pending(&message.state, &failures);
            if let Err(e) = spool.save_state(&message.id, &interim).await {
                error!(queue_id = %message.id, error = %e, "cannot save delivery state");
            }
        }
    }
    expire_if_too_old(settings, &mut message, &mut failures);
    outbound::before_bounce(settings, &mut message, &mut failures).await;
    let mut notices = Vec::new();
    match notify::failures(spool, settings, &message, &failures).await {
        Ok(bounce) => notices.extend(bounce),
        Err(e) => {
            // Keep the failures pending: the next attempt fails them again
            // and tries the bounce again, rather than losing it.
            error!(queue_id = %message.id, error = %e, "cannot spool the bounce; failed recipients stay queued");
            message.state = unbounced_as_pending(&message.state, &failures);
        }
    }
    notices.extend(notify::successes(spool, settings, &message, &delivered).await);
    let age = age(&message);
    notices.extend(notify::delay(spool, settings, &mut message, age).await);
    let next = if message.state.is_finished() {
        if let Err(e) = spool.discard(&message.id) {
            error!(queue_id = %message.id, error = %e, "cannot remove delivered message from the spool");
        }
        Next::Done
    } else {
        let wait = match retry_at {
            Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
            None => settings.retry.delay(message.state.attempts),
        };
        message.state.next_attempt = Some(SystemTime::now() + wait);
        spool.forget_content(&message.id);
        if let Err(e) = spool.save_state(&message.id, &message.state).await {
            error!(queue_id = %message.id, error = %e, "cannot save delivery state");
        }
        Next::RetryAt(Instant::now() + wait)
    };
    let result = match next {
        Next::RetryAt(_) => DeliveryResult::Deferred,
        Next::Done if failures.is_empty() => DeliveryResult::Delivered,
        Next::Done => DeliveryResult::Failed,
    };
    metrics().delivery(result, started.elapsed().as_secs_f64());
    AttemptResult { message, next, notices }
}

/// Fails every pending recipient of `message` with `reason`, bounces them
/// to the sender and removes the message (the operator's `bounce`). On
/// error the message is handed back unchanged on disk.
pub async fn give_up(
    spool: &Spool,
    settings: &DeliverySettings,
    message: StoredMessage,
    reason: &str,
) -> Result<Option<StoredMessage>, (StoredMessage, SpoolError)> {
    // The message leaves the spool once the bounce is spooled, so its own
    // state needs no update; on error it goes back to the queue as it was.
    let failures = pending_failures(&message.state, |_| {
        local_failure(EnhancedCode::new(5, 0, 0), reason.to_owned())
    });
    let notice = match notify::failures(spool, settings, &message, &failures).await {
        Ok(notice) => notice,
        Err(e) => return Err((message, e)),
    };
    info!(queue_id = %message.id, status = "bounced", reason, "message bounced by the operator");
    if let Err(e) = spool.remove(&message.id).await {
        error!(queue_id = %message.id, error = %e, "cannot remove the bounced message from the spool");
    }
    Ok(notice)
}

/// Pending recipients by next hop, in first-seen order; `None` is "no route".
fn group_by_hop(settings: &DeliverySettings, message: &StoredMessage) -> Vec<(Option<NextHop>, Vec<usize>)> {
    let mut groups: Vec<(Option<NextHop>, Vec<usize>)> = Vec::new();
    for (index, status) in message.state.recipients.iter().enumerate() {
        if !matches!(status, RecipientStatus::Pending { .. }) {
            continue;
        }
        let Some(rcpt) = message.envelope.recipients.get(index) else {
            continue;
        };
        let hop = settings
            .routes
            .next_hop(&rcpt.address.domain_key(), rcpt.route.as_ref());
        match groups.iter_mut().find(|(h, _)| *h == hop) {
            Some((_, members)) => members.push(index),
            None => groups.push((hop, vec![index])),
        }
    }
    groups
}

/// One destination's attempt with the outbound plugins: `on-deliver`
/// first (which may reroute, hold, defer or bounce it), then the delivery,
/// `on-defer` for its temporary failures (which may retry them elsewhere
/// now), and `on-delivered`. The hop used, the outcomes, and a retry time a
/// plugin chose.
async fn with_plugins(
    spool: &Spool,
    settings: &DeliverySettings,
    pool: &ConnectionPool,
    message: &mut StoredMessage,
    hop: Option<NextHop>,
    indices: &[usize],
) -> (Option<NextHop>, Vec<Outcome>, Option<SystemTime>) {
    let planned = hop.clone();
    let hop = match outbound::before(settings, message, hop, indices).await {
        outbound::Before::Attempt(hop) => hop,
        outbound::Before::Decided(outcome, retry) => return (planned, vec![outcome; indices.len()], retry),
    };
    let mut outcomes = deliver_group(spool, settings, pool, message, hop.as_ref(), indices).await;
    let after = outbound::after_defer(settings, message, hop.as_ref(), indices, &mut outcomes).await;
    // The deliveries of the first try, before any reroute's are merged in.
    outbound::delivered(settings, message, hop.as_ref(), indices, &outcomes).await;
    let retry = match after {
        outbound::AfterDefer::Retry(at) => at,
        outbound::AfterDefer::Reroute(other) => {
            let again: Vec<usize> = (0..outcomes.len())
                .filter(|&n| matches!(outcomes[n], Outcome::Deferred(_)))
                .collect();
            let targets: Vec<usize> = again.iter().filter_map(|&n| indices.get(n).copied()).collect();
            let second = deliver_group(spool, settings, pool, message, other.as_ref(), &targets).await;
            outbound::delivered(settings, message, other.as_ref(), &targets, &second).await;
            for (n, outcome) in again.into_iter().zip(second) {
                if let Some(slot) = outcomes.get_mut(n) {
                    *slot = outcome;
                }
            }
            None
        }
    };
    (hop, outcomes, retry)
}

async fn deliver_group(
    spool: &Spool,
    settings: &DeliverySettings,
    pool: &ConnectionPool,
    message: &StoredMessage,
    hop: Option<&NextHop>,
    indices: &[usize],
) -> Vec<Outcome> {
    let recipients: Vec<&Recipient> = indices
        .iter()
        .filter_map(|&i| message.envelope.recipients.get(i))
        .collect();
    match hop {
        None => recipients
            .iter()
            .map(|r| DeliveryError::NoRoute(r.address.domain_key()).outcome(None))
            .collect(),
        Some(NextHop::Smtp { destination, policy }) => {
            deliver_smtp(spool, settings, pool, message, destination, policy, &recipients).await
        }
        Some(NextHop::Maildir(dir)) => {
            let mut outcomes = Vec::with_capacity(recipients.len());
            for rcpt in recipients {
                let (source, offset) = spool.content_at(&message.id);
                let drop = MaildirDrop {
                    dir: dir.clone(),
                    source,
                    offset,
                    content_len: message.content_len,
                    reverse_path: message.envelope.reverse_path.clone(),
                    recipient: rcpt.address.clone(),
                    hostname: settings.hostname.clone(),
                };
                outcomes.push(match spawn_blocking(move || drop.deliver()).await {
                    Ok(Ok(_)) => Outcome::Delivered(Handoff::Delivered),
                    Ok(Err(e)) => e.outcome(None),
                    Err(_) => DeliveryError::Maildir(std::io::Error::other("maildir task cancelled")).outcome(None),
                });
            }
            outcomes
        }
    }
}

async fn deliver_smtp(
    spool: &Spool,
    settings: &DeliverySettings,
    pool: &ConnectionPool,
    message: &StoredMessage,
    destination: &Destination,
    policy: &SmtpPolicy,
    recipients: &[&Recipient],
) -> Vec<Outcome> {
    let requiretls = message.envelope.requiretls;
    if let (true, Destination::Mx(domain)) = (requiretls, destination) {
        // RFC 8689 section 4.2.1: the MX lookup must be DNSSEC-validated or
        // covered by an enforced MTA-STS policy.
        let validated = match &settings.dane {
            Some(dane) => matches!(dane.mx(domain).await, Ok((_, true))),
            None => false,
        };
        let enforced = validated
            || match &settings.mta_sts {
                Some(mta_sts) => mta_sts
                    .policy(&settings.resolver, domain)
                    .await
                    .is_some_and(|p| p.mode == super::mta_sts::Mode::Enforce),
                None => false,
            };
        if !enforced {
            let refusal = DeliveryError::Unsupported {
                status: EnhancedCode::new(5, 7, 30),
                reason: format!(
                    "REQUIRETLS support required: the MX hosts of {domain} cannot be authenticated \
                     ({domain} publishes no MTA-STS policy in enforce mode, and its MX records are not \
                     DNSSEC-validated here)"
                ),
            };
            return vec![refusal.outcome(None); recipients.len()];
        }
    }
    // Connections opened for REQUIRETLS (verified TLS), and for messages
    // that lift recipient TLS policies (`TLS-Required: No`), are pooled
    // apart.
    let key = match (requiretls, message.envelope.tls_optional) {
        (true, _) => format!("{}+requiretls", destination.pool_key(policy)),
        (false, true) => format!("{}+tls-optional", destination.pool_key(policy)),
        (false, false) => destination.pool_key(policy),
    };
    let key = key.as_str();
    // Held until the transaction ends: the per-destination limit.
    let _permit = pool.acquire(key, policy.max_connections).await;
    let pooled = pool.take(key);
    let reused = pooled.is_some();
    let mut sent = send_on(spool, settings, message, destination, policy, recipients, pooled).await;
    if reused && matches!(&sent, Err((e, _)) if e.is_stale_connection()) {
        // The idle connection had gone away; nothing was accepted on it.
        sent = send_on(spool, settings, message, destination, policy, recipients, None).await;
    }
    match sent {
        Ok((client, outcomes)) => {
            // The session is ready for the next MAIL: keep it for reuse.
            pool.put(key, client);
            outcomes
        }
        Err((e, remote)) => vec![e.outcome(remote.as_deref()); recipients.len()],
    }
}

/// Sends the message on `client`, or on a new connection. An error comes
/// with the host it happened on, when one was reached.
async fn send_on(
    spool: &Spool,
    settings: &DeliverySettings,
    message: &StoredMessage,
    destination: &Destination,
    policy: &SmtpPolicy,
    recipients: &[&Recipient],
    client: Option<SmtpClient>,
) -> Result<(SmtpClient, Vec<Outcome>), (DeliveryError, Option<String>)> {
    let mut client = match client {
        Some(client) => client,
        None => connect::open(settings, destination, policy, &message.envelope)
            .await
            .map_err(|e| (e, None))?,
    };
    let remote = Some(client.host().to_owned());
    let content = match spool.open_content(&message.id).await {
        Ok(content) => content,
        Err(e) => return Err((e.into(), remote)),
    };
    match client
        .send(&message.envelope, recipients, content, message.content_len)
        .await
    {
        Ok(outcomes) => Ok((client, outcomes)),
        Err(e) => Err((e, remote)),
    }
}

fn record(
    message: &mut StoredMessage,
    index: usize,
    outcome: Outcome,
    relay: &str,
    failures: &mut Vec<(usize, Failure)>,
) {
    let id = &message.id;
    let attempt = message.state.attempts;
    let Some(rcpt) = message.envelope.recipients.get(index).map(|r| &r.address) else {
        return;
    };
    let status = match outcome {
        Outcome::Delivered(Handoff::Relayed {
            tls: (tls_policy, tls), ..
        }) => {
            info!(queue_id = %id, to = %rcpt, relay, attempt, tls_policy, tls, status = "sent", "delivered");
            RecipientStatus::Delivered
        }
        Outcome::Delivered(_) => {
            info!(queue_id = %id, to = %rcpt, relay, attempt, status = "sent", "delivered");
            RecipientStatus::Delivered
        }
        Outcome::Deferred(failure) => {
            info!(queue_id = %id, to = %rcpt, relay, attempt, status = "deferred", reply = %failure.diagnostic, "delivery deferred");
            RecipientStatus::Pending {
                last_error: Some(failure.diagnostic),
            }
        }
        Outcome::Failed(failure) => {
            info!(queue_id = %id, to = %rcpt, relay, attempt, status = "bounced", reply = %failure.diagnostic, "delivery failed");
            let reason = failure.diagnostic.clone();
            failures.push((index, failure));
            RecipientStatus::Failed { reason }
        }
    };
    if let Some(slot) = message.state.recipients.get_mut(index) {
        *slot = status;
    }
}

/// The state with this attempt's failures still pending.
fn unbounced_as_pending(state: &DeliveryState, failures: &[(usize, Failure)]) -> DeliveryState {
    let mut interim = state.clone();
    for (index, failure) in failures {
        if let Some(slot) = interim.recipients.get_mut(*index) {
            *slot = RecipientStatus::Pending {
                last_error: Some(failure.diagnostic.clone()),
            };
        }
    }
    interim
}

/// Past `max_age`, deferred recipients fail for good (RFC 3463 4.4.7).
fn expire_if_too_old(settings: &DeliverySettings, message: &mut StoredMessage, failures: &mut Vec<(usize, Failure)>) {
    let age = age(message);
    if age < settings.retry.max_age {
        return;
    }
    let expired = pending_failures(&message.state, |last| {
        let last = last.unwrap_or("no attempt succeeded");
        let diagnostic = format!("delivery time expired after {}s; last error: {last}", age.as_secs());
        local_failure(EnhancedCode::new(4, 4, 7), diagnostic)
    });
    for (index, failure) in expired {
        info!(queue_id = %message.id, status = "expired", reply = %failure.diagnostic, "delivery expired");
        if let Some(slot) = message.state.recipients.get_mut(index) {
            *slot = RecipientStatus::Failed {
                reason: failure.diagnostic.clone(),
            };
        }
        failures.push((index, failure));
    }
}

/// How long the message has been queued, not counting time on hold.
fn age(message: &StoredMessage) -> Duration {
    SystemTime::now()
        .duration_since(message.envelope.received_at)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(message.state.held_for)
}

/// A failure for each pending recipient, made from its last error.
fn pending_failures(state: &DeliveryState, failure: impl Fn(Option<&str>) -> Failure) -> Vec<(usize, Failure)> {
    state
        .recipients
        .iter()
        .enumerate()
        .filter_map(|(index, status)| match status {
            RecipientStatus::Pending { last_error } => Some((index, failure(last_error.as_deref()))),
            _ => None,
        })
        .collect()
}

/// A failure decided here rather than by a remote reply.
fn local_failure(status: EnhancedCode, diagnostic: String) -> Failure {
    Failure {
        status,
        diagnostic,
        remote: None,
        smtp_reply: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_state_keeps_unbounced_failures_pending() {
        let mut state = DeliveryState::new(3);
        state.recipients[0] = RecipientStatus::Delivered;
        state.recipients[1] = RecipientStatus::Failed {
            reason: "550 no".into(),
        };
        let failure = Failure {
            status: EnhancedCode::new(5, 1, 1),
            diagnostic: "550 no".into(),
            remote: None,
            smtp_reply: true,
        };
        let interim = unbounced_as_pending(&state, &[(1, failure)]);
        assert_eq!(interim.recipients[0], RecipientStatus::Delivered);
        assert_eq!(
            interim.recipients[1],
            RecipientStatus::Pending {
                last_error: Some("550 no".into())
            }
        );
        assert_eq!(interim.recipients[2], RecipientStatus::Pending { last_error: None });
    }

    /// Time on hold does not count toward `max_age`: a message received
    /// ten days ago and held for nine of them is a day old.
    #[test]
    fn time_on_hold_does_not_age_a_message() {
        use crate::queue::Recipient;
        use crate::smtp::{Mailbox, ReversePath};
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let envelope = crate::queue::Envelope {
            reverse_path: ReversePath::Mailbox(Mailbox::parse("a@x.test").unwrap()),
            recipients: vec![Recipient::new(Mailbox::parse("b@y.test").unwrap())],
            received_at: now - 10 * day,
            size: 0,
            body: crate::smtp::command::BodyType::SevenBit,
            smtputf8: false,
            eight_bit: false,
            client: None,
            quarantine: None,
            quarantined_by: None,
            hold: Some("review".into()),
            dsn: crate::smtp::dsn::MailDsn::default(),
            requiretls: false,
            tls_optional: false,
        };
        let mut state = DeliveryState::for_envelope(&envelope);
        // Held from reception for nine days, then released.
        state.release(now - day);
        let message = StoredMessage {
            id: crate::queue::QueueId::generate(),
            envelope,
            state,
            content_len: 0,
        };
        let age = age(&message);
        assert!(age >= day && age < day + Duration::from_secs(60), "{age:?}");
    }
}
