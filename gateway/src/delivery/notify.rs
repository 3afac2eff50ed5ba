//! Which DSNs are due after an attempt, as the sender's DSN parameters
//! (RFC 3461) say, and spooling them: a failure report for recipients
//! that did not ask `NOTIFY=NEVER` (or a list without FAILURE), a delay
//! warning only where DELAY applies, and a success report for
//! `NOTIFY=SUCCESS` recipients that were delivered here or relayed to a
//! next hop that does not offer DSN (one that does reports itself).

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::DeliverySettings;
use super::dsn::{Action, DsnKind, Entry, Report, Returned};
use super::error::{Failure, Handoff};
use crate::queue::{RecipientStatus, Spool, SpoolError, StoredMessage};
use crate::smtp::EnhancedCode;
use crate::smtp::dsn::Ret;

/// How much of the original message a report reads to quote its headers.
const HEAD_BYTES: u64 = 64 * 1024;
/// The largest message returned whole for `RET=FULL`; a larger one is
/// returned as its headers (as Postfix's `bounce_size_limit` does).
pub const FULL_RETURN_LIMIT: u64 = 10 * 1024 * 1024;

/// Spools a failure report for `failures` (envelope index, failure), to
/// the recipients that want one; `Ok(None)` when none is due.
pub async fn failures(
    spool: &Spool,
    settings: &DeliverySettings,
    message: &StoredMessage,
    failures: &[(usize, Failure)],
) -> Result<Option<StoredMessage>, SpoolError> {
    let entries = failures
        .iter()
        .filter_map(|(i, failure)| {
            let recipient = message.envelope.recipients.get(*i)?;
            recipient.dsn.wants_failure().then_some(Entry {
                recipient,
                action: Action::Failed,
                failure: Some(failure),
            })
        })
        .collect();
    report(spool, settings, message, DsnKind::Failure, entries).await
}

/// Spools a success report for the recipients delivered in this attempt
/// that asked for one. A failure to spool it is logged, not retried: the
/// mail itself went through.
pub async fn successes(
    spool: &Spool,
    settings: &DeliverySettings,
    message: &StoredMessage,
    delivered: &[(usize, Handoff)],
) -> Option<StoredMessage> {
    let entries = delivered
        .iter()
        .filter_map(|(i, handoff)| {
            let recipient = message.envelope.recipients.get(*i)?;
            let action = match handoff {
                Handoff::Delivered => Action::Delivered,
                Handoff::Relayed { dsn: false, .. } => Action::Relayed,
                // The next hop got NOTIFY and reports from here on.
                Handoff::Relayed { dsn: true, .. } => return None,
            };
            recipient.dsn.wants_success().then_some(Entry {
                recipient,
                action,
                failure: None,
            })
        })
        .collect();
    match report(spool, settings, message, DsnKind::Success, entries).await {
        Ok(notice) => notice,
        Err(e) => {
            warn!(queue_id = %message.id, error = %e, "cannot spool the success report");
            None
        }
    }
}

/// Once per message, when it has waited `delay_warning` and still has
/// pending recipients that want delay reports: a delay DSN to the sender
/// (RFC 3464 `delayed`). Marks the message warned once nothing more is
/// due; the caller saves the state.
pub async fn delay(
    spool: &Spool,
    settings: &DeliverySettings,
    message: &mut StoredMessage,
    age: Duration,
) -> Option<StoredMessage> {
    let after = settings.delay_warning?;
    if message.state.delay_warned || message.state.is_finished() || age < after {
        return None;
    }
    let pending: Vec<(usize, Failure)> = message
        .state
        .recipients
        .iter()
        .enumerate()
        .filter_map(|(index, status)| match status {
            RecipientStatus::Pending { last_error } => Some((
                index,
                Failure {
                    status: EnhancedCode::new(4, 0, 0),
                    diagnostic: last_error.clone().unwrap_or_else(|| "not yet delivered".to_owned()),
                    remote: None,
                    smtp_reply: false,
                },
            )),
            _ => None,
        })
        .collect();
    let entries = pending
        .iter()
        .filter_map(|(i, failure)| {
            let recipient = message.envelope.recipients.get(*i)?;
            recipient.dsn.wants_delay().then_some(Entry {
                recipient,
                action: Action::Delayed,
                failure: Some(failure),
            })
        })
        .collect();
    let until = message.envelope.received_at + settings.retry.max_age;
    match report(spool, settings, message, DsnKind::Delay { until }, entries).await {
        Ok(warning) => {
            // Sent, or not due (null sender, NOTIFY without DELAY): never again.
            message.state.delay_warned = true;
            warning
        }
        Err(e) => {
            warn!(queue_id = %message.id, error = %e, "cannot spool the delay warning; trying again next attempt");
            None
        }
    }
}

/// Builds and spools one report; `Ok(None)` when it is not due.
async fn report(
    spool: &Spool,
    settings: &DeliverySettings,
    message: &StoredMessage,
    kind: DsnKind,
    entries: Vec<Entry<'_>>,
) -> Result<Option<StoredMessage>, SpoolError> {
    if entries.is_empty() || message.envelope.reverse_path.mailbox().is_none() {
        return Ok(None);
    }
    // RFC 3461 section 4.3: RET=FULL asks for the whole message in a
    // failure report; delay and success reports, and messages too large
    // to return, carry the headers.
    let full = kind == DsnKind::Failure
        && message.envelope.dsn.ret == Some(Ret::Full)
        && message.content_len <= FULL_RETURN_LIMIT;
    let limit = if full { message.content_len } else { HEAD_BYTES };
    let original = match spool.read_head(message, limit).await {
        Ok(original) => original,
        Err(e) => {
            warn!(queue_id = %message.id, error = %e, "cannot read the original message for the report");
            Vec::new()
        }
    };
    let report = Report {
        kind,
        reporting_mta: &settings.hostname,
        queue_id: &message.id,
        original: &message.envelope,
        entries,
        returned: if full && !original.is_empty() {
            Returned::Full(&original)
        } else {
            Returned::Headers(&original)
        },
    };
    let Some((envelope, content)) = report.build(SystemTime::now()) else {
        return Ok(None);
    };
    let mut writer = spool.create();
    writer.write(&content).await;
    let stored = spool.commit(writer, envelope).await?;
    let what = match kind {
        DsnKind::Failure => "bounce",
        DsnKind::Delay { .. } => "delay warning",
        DsnKind::Success => "success report",
    };
    info!(queue_id = %stored.id, original = %message.id, dsn = what, "notification queued");
    Ok(Some(stored))
}
